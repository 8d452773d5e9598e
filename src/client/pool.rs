//! Reuse of large frame buffers.
//!
//! A large frame is read into a buffer of its own and handed to the caller
//! without copying; when the caller frees it, the buffer comes back here.
//! Without reuse, every multi-megabyte frame would be a fresh mapping from
//! the allocator, paid for again in page faults on every frame.

use std::sync::{Arc, Weak};

use super::sync::Mutex;
use bytes::Bytes;

/// Buffers kept for reuse, at most.
const MAX_POOLED: usize = 4;
/// Bytes kept for reuse, at most, so an idle connection returns memory.
const MAX_POOLED_BYTES: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub(crate) struct FramePool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FramePool {
    /// An empty buffer with room for at least `len` bytes: the smallest
    /// pooled one that fits, unless even that is more than twice the size
    /// (a queued message is charged its buffer's capacity, so a small frame
    /// must not sit in a large buffer).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self.free.lock();
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => free.swap_remove(i),
            None => Vec::with_capacity(len),
        }
    }

    /// Hands `buf` out as `Bytes` that return it to the pool when the last
    /// reference is dropped.
    pub(crate) fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(&self.free),
        })
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut free = pool.lock();
        let pooled: usize = free.iter().map(Vec::capacity).sum();
        if free.len() < MAX_POOLED && pooled + self.buf.capacity() <= MAX_POOLED_BYTES {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_the_pool_is_bounded() {
        let pool = FramePool::default();
        let mut b = pool.take(1000);
        b.extend_from_slice(&[7; 1000]);
        let ptr = b.as_ptr();
        let bytes = pool.freeze(b);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(&slice[..], &[7; 10], "a slice keeps the buffer alive");
        drop(slice);
        let again = pool.take(500);
        assert_eq!(again.as_ptr(), ptr, "the buffer was reused");
        assert!(again.is_empty());
        drop(pool.freeze(again));
        // Far larger than asked for: a fresh buffer instead.
        let small = pool.take(100);
        assert_ne!(small.as_ptr(), ptr);
        assert!(small.capacity() < 1000);
        for _ in 0..10 {
            drop(pool.freeze(vec![0; 3 * 1024 * 1024]));
        }
        let held: usize = pool.free.lock().iter().map(Vec::capacity).sum();
        assert!(held <= MAX_POOLED_BYTES && pool.free.lock().len() <= MAX_POOLED);
    }
}
