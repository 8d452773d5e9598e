//! How C holds our objects. Two kinds:
//!
//! - values (`msb_error`, `msb_bytes`, messages, events, entries) are a
//!   `Box` handed out with `Box::into_raw` and taken back by their `_free`;
//! - long-lived handles that several threads may use at once (client,
//!   subscription, exec, file streams) are an `Arc` handed out with
//!   `Arc::into_raw`. Each call borrows a new strong reference for its
//!   duration, so a thread blocked inside a call keeps the object alive even
//!   if another thread frees the handle meanwhile (the free first wakes it).

use std::sync::Arc;

use super::{Fail, FfiResult};

/// Hands a shared handle to C.
pub(crate) fn arc_into_raw<T>(value: T) -> *mut T {
    Arc::into_raw(Arc::new(value)) as *mut T
}

/// Borrows a shared handle for the duration of one call.
///
/// The handle must be NULL or a pointer returned by `arc_into_raw` that has
/// not been released (a documented precondition of every function).
pub(crate) fn arc_borrow<T>(p: *const T, what: &str) -> FfiResult<Arc<T>> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: `p` came from `Arc::into_raw` and C still holds its reference
    // (precondition above), so the count is at least one; we add ours and
    // rebuild an Arc that owns exactly the reference we added.
    unsafe {
        Arc::increment_strong_count(p);
        Ok(Arc::from_raw(p))
    }
}

/// Takes back C's reference to a shared handle; NULL is ignored.
pub(crate) fn arc_release<T>(p: *const T) -> Option<Arc<T>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` came from `Arc::into_raw` and this is C's one release of
    // it (freeing twice is documented as forbidden).
    Some(unsafe { Arc::from_raw(p) })
}

/// Hands a value to C.
pub(crate) fn box_into_raw<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Borrows a value handed out by `box_into_raw`.
pub(crate) fn box_ref<'a, T>(p: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: `p` is NULL or a live pointer from `box_into_raw`, not freed
    // (documented precondition); C does not mutate it concurrently.
    unsafe { p.as_ref() }.ok_or_else(|| Fail::null(what))
}

/// Frees a value handed out by `box_into_raw`; NULL is ignored.
pub(crate) fn free_box<T>(p: *mut T) {
    if p.is_null() {
        return;
    }
    super::run_value((), || {
        // SAFETY: `p` came from `Box::into_raw` and is released once
        // (freeing twice is documented as forbidden).
        drop(unsafe { Box::from_raw(p) })
    });
}
