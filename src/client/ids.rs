//! Correlation ids: the range the relay gave this connection, and how ids
//! are handed out of it.
//!
//! Legacy relays (0.3/0.4) check nothing and reuse is harmless, so ids walk
//! the range from a random start and wrap, skipping live ones. Current
//! relays (0.5+) disconnect a client that sends outside its range, and the
//! 0.7 relays also disconnect one that reuses an id within a connection, so
//! there ids are handed out once each, in order from the range's start, and
//! running out is an error that only a new connection cures.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{Error, Result};
use super::peer::Form;
use crate::protocol::{MessageType, LEGACY_ID_RANGE_STEP as ID_RANGE_STEP};

/// A half-open range `[start, end)` of usable correlation ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub end: u32,
}

impl IdRange {
    /// The range of a legacy handshake's `id_offset`:
    /// `[offset + 1, offset + 268435455)`.
    pub(crate) fn legacy(offset: u32) -> Result<IdRange> {
        let end = offset as u64 + ID_RANGE_STEP as u64;
        if end > u32::MAX as u64 {
            return Err(Error::Handshake(format!(
                "legacy id offset {offset} leaves no room for a full id range"
            )));
        }
        Ok(IdRange {
            start: offset + 1,
            end: end as u32,
        })
    }

    /// The range of a current handshake, `[start, end)`, without id 0 (which
    /// only `core.shutdown` may use).
    pub(crate) fn current(start: u32, end: u32) -> Result<IdRange> {
        if start >= end {
            return Err(Error::Handshake(format!(
                "invalid relay id range: start={start}, end={end}"
            )));
        }
        let start = start.max(1);
        if start >= end {
            return Err(Error::Handshake(format!(
                "relay id range [0, {end}) holds no usable id"
            )));
        }
        Ok(IdRange { start, end })
    }

    pub fn contains(&self, id: u32) -> bool {
        self.start <= id && id < self.end
    }

    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// How many ids from `alloc_id` stay reserved for their caller on a current
/// relay until subscribed; older ones are forgotten (and then refused).
const HANDED_OUT_KEPT: usize = 4096;

/// Hands out the ids of one connection.
pub(crate) struct IdAllocator {
    range: IdRange,
    single_use: bool,
    /// Legacy: a free-running counter mapped into the range. Current: the
    /// offset from `range.start` of the next never-used id.
    next: AtomicU64,
    /// Current relays: ids given out by `alloc_id` that no subscription has
    /// claimed yet, the only ids below `next` that may still be subscribed.
    handed_out: parking_lot::Mutex<BTreeSet<u32>>,
}

impl IdAllocator {
    pub(crate) fn new(range: IdRange, form: Form) -> IdAllocator {
        let single_use = form == Form::Current;
        let next = if single_use {
            0
        } else {
            // A recycled legacy slot may still get late frames addressed to
            // the previous client's first ids: start somewhere else.
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                >> 32
        };
        IdAllocator {
            range,
            single_use,
            next: AtomicU64::new(next),
            handed_out: parking_lot::Mutex::new(BTreeSet::new()),
        }
    }

    pub(crate) fn range(&self) -> IdRange {
        self.range
    }

    /// A fresh id for which `is_live` is false. On current relays it was
    /// never handed out before on this connection.
    pub(crate) fn next_id(&self, is_live: impl Fn(u32) -> bool) -> Result<u32> {
        if self.single_use {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= self.range.len() {
                // Keep the counter from creeping towards overflow.
                self.next.store(self.range.len(), Ordering::Relaxed);
                return Err(Error::IdsExhausted);
            }
            return Ok(self.range.start + n as u32);
        }
        // The range holds 268 million ids; live subscriptions are bounded by
        // memory, so a free id is found within a few probes.
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let id = self.range.start + (n % self.range.len()) as u32;
            if !is_live(id) {
                return Ok(id);
            }
        }
    }

    /// [`next_id`](Self::next_id) for a caller that subscribes later: on a
    /// current relay the id stays claimable until then.
    pub(crate) fn hand_out(&self, is_live: impl Fn(u32) -> bool) -> Result<u32> {
        let id = self.next_id(is_live)?;
        if self.single_use {
            let mut handed = self.handed_out.lock();
            if handed.len() >= HANDED_OUT_KEPT {
                handed.pop_first();
            }
            handed.insert(id);
        }
        Ok(id)
    }

    /// Checks that a caller-chosen id may be subscribed now (the caller
    /// checks that it is not live). On a current relay the id must never
    /// have carried a conversation: either `alloc_id` gave it out and nobody
    /// claimed it yet, or the allocator has not reached it (it then moves
    /// past it, giving up the ids in between).
    pub(crate) fn claim(&self, id: u32) -> Result<()> {
        if !self.range.contains(id) {
            return Err(Error::IdUnavailable(id));
        }
        if !self.single_use {
            return Ok(());
        }
        if self.handed_out.lock().remove(&id) {
            return Ok(());
        }
        let offset = (id - self.range.start) as u64;
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            if offset < next {
                return Err(Error::IdUnavailable(id));
            }
            match self.next.compare_exchange_weak(
                next,
                offset + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => next = seen,
            }
        }
    }

    /// Checks the id of an outgoing frame: in the range, or 0 for
    /// `core.shutdown` only. Current relays disconnect on anything else.
    pub(crate) fn check_send(&self, message_type: &MessageType, id: u32) -> Result<()> {
        if id == 0 && *message_type == MessageType::Shutdown {
            return Ok(());
        }
        if self.range.contains(id) {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "id {id} is outside this client's id range [{}, {}){}",
            self.range.start,
            self.range.end,
            if id == 0 {
                "; only core.shutdown may use id 0"
            } else {
                ""
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_ids_wrap_inside_the_range_and_never_hit_its_edges() {
        for slot in [0u32, 1, 15] {
            let r = IdRange::legacy(slot * ID_RANGE_STEP).unwrap();
            assert_eq!(r.start, slot * ID_RANGE_STEP + 1);
            assert_eq!(r.end as u64, (slot as u64 + 1) * ID_RANGE_STEP as u64);
            let a = IdAllocator::new(r, Form::Legacy);
            a.next.store(r.len() - 1, Ordering::Relaxed);
            let last = a.next_id(|_| false).unwrap();
            assert_eq!(last, r.end - 1);
            assert_eq!(a.next_id(|_| false).unwrap(), r.start, "wraps");
            assert!(a.next_id(|id| id == r.start + 1).unwrap() == r.start + 2);
            a.claim(r.start + 5).unwrap();
            a.claim(r.start + 5).unwrap();
            assert!(a.claim(r.end).is_err() && a.claim(r.start - 1).is_err());
        }
        assert!(IdRange::legacy(u32::MAX - ID_RANGE_STEP).is_ok());
        assert!(IdRange::legacy(u32::MAX - ID_RANGE_STEP + 1).is_err());
    }

    #[test]
    fn current_ids_are_single_use_and_run_out() {
        let r = IdRange::current(5, 8).unwrap();
        let a = IdAllocator::new(r, Form::Current);
        assert_eq!(a.next_id(|_| false).unwrap(), 5);
        assert_eq!(a.hand_out(|_| false).unwrap(), 6);
        assert!(a.claim(5).is_err(), "5 was used");
        a.claim(6).unwrap();
        assert!(a.claim(6).is_err(), "6 is claimed once");
        assert_eq!(a.next_id(|_| false).unwrap(), 7);
        assert!(matches!(a.next_id(|_| false), Err(Error::IdsExhausted)));
        assert!(matches!(a.next_id(|_| false), Err(Error::IdsExhausted)));
        assert!(a.claim(8).is_err());
    }

    #[test]
    fn claiming_ahead_skips_the_ids_in_between() {
        let a = IdAllocator::new(IdRange::current(1, 100).unwrap(), Form::Current);
        a.claim(50).unwrap();
        assert_eq!(a.next_id(|_| false).unwrap(), 51);
        assert!(a.claim(10).is_err());
    }

    #[test]
    fn current_ranges_start_at_start_and_drop_id_zero() {
        assert_eq!(
            IdRange::current(0, 10).unwrap(),
            IdRange { start: 1, end: 10 }
        );
        assert!(IdRange::current(10, 10).is_err());
        assert!(IdRange::current(0, 1).is_err());
    }

    #[test]
    fn sends_stay_in_range_and_only_shutdown_uses_id_zero() {
        let a = IdAllocator::new(IdRange::current(5, 8).unwrap(), Form::Current);
        a.check_send(&MessageType::Shutdown, 0).unwrap();
        a.check_send(&MessageType::ExecRequest, 7).unwrap();
        assert!(a.check_send(&MessageType::ExecRequest, 0).is_err());
        assert!(a.check_send(&MessageType::ExecRequest, 8).is_err());
    }
}
