//! Locks for the hot paths: the standard library's mutex without poisoning,
//! a lock that can be waited for with a deadline, and the word that blocked
//! pullers of one connection sleep on (waited on through `platform`: a
//! futex on Linux, a condition variable elsewhere).
//!
//! Why not parking_lot here: its lock slow path yields the thread to the
//! scheduler (`sched_yield`) several times before parking. With many caller
//! threads on few cores, a yield can cost hundreds of microseconds; the
//! benchmark's eight-thread round trips spent a quarter of their time there.
//! parking_lot stays only for the read state, which is only ever tried
//! (`try_lock`, `is_locked`), never waited for.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::PoisonError;
use std::time::Instant;

use super::platform;

pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

/// A mutex whose `lock` ignores poisoning: every critical section here
/// leaves the data consistent at each step, and the ABI catches panics, so
/// a panic elsewhere must not make the connection unusable.
#[derive(Default)]
pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A value on cache lines of its own. The connection's locks and counters
/// are each hammered by different threads on different cores; packed
/// together, every update would also evict its neighbours' line from the
/// other cores. 128 bytes: x86 fetches cache lines in adjacent pairs.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct CacheAligned<T>(pub(crate) T);

impl<T> std::ops::Deref for CacheAligned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A lock that can be waited for with a deadline. Used to keep frames whole
/// on the socket: a sender blocked on a full socket must not hold others
/// past their own deadlines.
///
/// A word with three states (free, held, held with waiters), so that
/// taking and releasing it uncontended is one atomic operation each, and a
/// release makes a system call only when somebody may be asleep.
#[derive(Default)]
pub(crate) struct TimedLock {
    state: AtomicU32,
}

const FREE: u32 = 0;
const HELD: u32 = 1;
/// Held, and a thread may be asleep waiting for it.
const CONTENDED: u32 = 2;

impl TimedLock {
    /// Takes the lock, or returns `None` once `deadline` passes.
    pub(crate) fn lock_until(&self, deadline: Instant) -> Option<TimedLockGuard<'_>> {
        // The guard is made only once the lock is ours: dropping it releases.
        let guard = || TimedLockGuard { lock: self };
        if self
            .state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(guard());
        }
        loop {
            // Taking it as CONTENDED (we cannot know whether others still
            // wait) costs at most one needless wake at release.
            if self.state.swap(CONTENDED, Ordering::Acquire) == FREE {
                return Some(guard());
            }
            // The clock, not only the wait's verdict, ends the loop: a wait
            // that keeps returning early must not keep us past the deadline.
            if platform::wait(&self.state, CONTENDED, ANY_WAITER, Some(deadline))
                || Instant::now() >= deadline
            {
                return (self.state.swap(CONTENDED, Ordering::Acquire) == FREE).then(guard);
            }
        }
    }
}

pub(crate) struct TimedLockGuard<'a> {
    lock: &'a TimedLock,
}

impl Drop for TimedLockGuard<'_> {
    fn drop(&mut self) {
        if self.lock.state.swap(FREE, Ordering::Release) == CONTENDED {
            platform::wake(&self.lock.state, 1, ANY_WAITER);
        }
    }
}

/// Where the threads blocked in a pull on one connection sleep: one futex
/// word for all of them, each thread waiting on a bit of its own
/// (`FUTEX_WAIT_BITSET`), so that the reader can wake every thread one read
/// delivered to with a single `FUTEX_WAKE_BITSET`.
///
/// Why not a condvar per subscription: waking k threads then takes k system
/// calls, and each woken thread tends to preempt the reader before it has
/// woken the next, so the reader is switched out and back in once per
/// message. Woken by one call, they all become runnable before anyone is
/// switched. In the benchmark's eight-thread round trips this halved the
/// involuntary context switches.
///
/// A wake increments the word before it wakes, so a thread that read the
/// word (its "ticket") before checking its condition, under the lock that
/// the waker also takes, cannot miss a wake: the wait returns at once if the
/// word has moved on. Wakes may be spurious (another subscription's wake
/// moved the word, two threads share a bit); waiters re-check.
#[derive(Default)]
pub(crate) struct WakeGroup {
    word: AtomicU32,
}

impl WakeGroup {
    /// Read under the lock that guards the waited-for condition, before
    /// checking it.
    pub(crate) fn ticket(&self) -> u32 {
        self.word.load(Ordering::SeqCst)
    }

    /// Sleeps until a wake for `bit`, or `deadline`, unless the word has
    /// moved past `ticket`. May return early for no reason; true only when
    /// the deadline passed.
    pub(crate) fn wait(&self, ticket: u32, bit: u32, deadline: Option<Instant>) -> bool {
        platform::wait(&self.word, ticket, bit, deadline)
    }

    /// Wakes every thread waiting on any of `bits`; no system call for none.
    pub(crate) fn wake(&self, bits: u32) {
        if bits == 0 {
            return;
        }
        self.word.fetch_add(1, Ordering::SeqCst);
        platform::wake(&self.word, i32::MAX, bits);
    }
}

/// The calling thread's bit in every [`WakeGroup`]: threads take the 32 bits
/// in turn, so up to 32 threads blocked on one connection never wake each
/// other by mistake.
pub(crate) fn thread_wake_bit() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    thread_local! {
        static BIT: u32 = 1 << (NEXT.fetch_add(1, Ordering::Relaxed) % 32);
    }
    BIT.with(|bit| *bit)
}

/// Any waiter, for words whose waiters all wait alike.
const ANY_WAITER: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timed_lock_excludes_and_times_out() {
        let lock = TimedLock::default();
        let held = lock.lock_until(Instant::now()).expect("free lock");
        let started = Instant::now();
        assert!(lock
            .lock_until(Instant::now() + Duration::from_millis(50))
            .is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(held);
        assert!(lock.lock_until(Instant::now()).is_some());
    }

    #[test]
    fn wake_group_wakes_its_bit_and_times_out() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;

        let group = Arc::new(WakeGroup::default());
        // A stale ticket returns at once, without a timeout.
        let stale = group.ticket().wrapping_sub(1);
        assert!(!group.wait(stale, 1, Some(Instant::now() + Duration::from_secs(5))));
        // Nobody wakes bit 1: the deadline ends the wait.
        let started = Instant::now();
        assert!(group.wait(group.ticket(), 1, Some(started + Duration::from_millis(30))));
        assert!(started.elapsed() >= Duration::from_millis(30));

        let woken = Arc::new(AtomicBool::new(false));
        let sleeper = {
            let (group, woken) = (group.clone(), woken.clone());
            std::thread::spawn(move || {
                let ticket = group.ticket();
                let timed_out = group.wait(
                    ticket,
                    1 << 3,
                    Some(Instant::now() + Duration::from_secs(10)),
                );
                woken.store(true, Ordering::SeqCst);
                timed_out
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        group.wake(1 << 3);
        assert!(!sleeper.join().unwrap());
        assert!(woken.load(Ordering::SeqCst));
    }
}
