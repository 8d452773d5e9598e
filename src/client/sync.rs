//! Locks for the hot paths: the standard library's futex-based mutex and
//! condvar, without poisoning.
//!
//! Why not parking_lot here: its lock slow path yields the thread to the
//! scheduler (`sched_yield`) several times before parking. With many caller
//! threads on few cores, a yield can cost hundreds of microseconds; the
//! benchmark's eight-thread round trips spent a quarter of their time there.
//! parking_lot stays only for the read state, which is only ever tried
//! (`try_lock`, `is_locked`), never waited for.

use std::sync::PoisonError;
use std::time::Instant;

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

#[derive(Default)]
pub(crate) struct Condvar(std::sync::Condvar);

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(std::sync::Condvar::new())
    }

    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until notified or `deadline`; the flag is true on timeout.
    pub(crate) fn wait_until<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Instant,
    ) -> (MutexGuard<'a, T>, bool) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (guard, result) = self
            .0
            .wait_timeout(guard, left)
            .unwrap_or_else(PoisonError::into_inner);
        (guard, result.timed_out())
    }

    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// A lock that can be waited for with a deadline, built on the two above so
/// that waiting never yields in a loop. Used to keep frames whole on the
/// socket: a sender blocked on a full socket must not hold others past
/// their own deadlines.
#[derive(Default)]
pub(crate) struct TimedLock {
    state: Mutex<TimedLockState>,
    released: Condvar,
}

#[derive(Default)]
struct TimedLockState {
    busy: bool,
    /// Threads waiting for the lock; a release only pays for a futex wake
    /// (a system call, even with nobody waiting) when this is non-zero.
    waiters: usize,
}

impl TimedLock {
    /// Takes the lock, or returns `None` once `deadline` passes.
    pub(crate) fn lock_until(&self, deadline: Instant) -> Option<TimedLockGuard<'_>> {
        let mut st = self.state.lock();
        while st.busy {
            st.waiters += 1;
            let (guard, timed_out) = self.released.wait_until(st, deadline);
            st = guard;
            st.waiters -= 1;
            if timed_out && st.busy {
                return None;
            }
        }
        st.busy = true;
        Some(TimedLockGuard { lock: self })
    }
}

pub(crate) struct TimedLockGuard<'a> {
    lock: &'a TimedLock,
}

impl Drop for TimedLockGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.lock.state.lock();
        st.busy = false;
        let waiters = st.waiters > 0;
        drop(st);
        if waiters {
            self.lock.released.notify_one();
        }
    }
}

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
}
