//! Generation-10 exec flow control (0.7.13, requests stamped `v >= 10`).
//!
//! Output: each stdout/stderr chunk costs `len + 256` of a per-exec window
//! of `output_limit`; the pump waits for room, so a client that does not
//! acknowledge stops the child on its full pipe. `core.exec.output.ack`
//! (cumulative) returns credit, and `core.exec.exited` waits until every
//! charge is acknowledged.
//!
//! Stdin: only between `core.exec.started` and the empty EOF chunk, each
//! payload at most `stdin_chunk_size`, at most `input_limit` unacknowledged;
//! `core.exec.stdin.ack` reports the bytes written into the child.
//!
//! Admission: at most `max_executions` controlled execs sandbox-wide.
//!
//! Rule violations are the relay's: they disconnect the client.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};

use microsandbox_agent::protocol::payload::ExecLimits;

/// Bytes each output chunk costs beyond its payload.
pub const OUTPUT_EVENT_OVERHEAD: u64 = 256;

/// Sandbox-wide count of controlled execs.
pub struct Admission {
    active: Arc<AtomicU32>,
    max: u32,
}

/// Holds one admission until dropped.
pub struct AdmissionSlot(Arc<AtomicU32>);

impl Drop for AdmissionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(max: u32) -> Admission {
        Admission {
            active: Arc::default(),
            max,
        }
    }

    pub fn try_admit(&self) -> Option<AdmissionSlot> {
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(AdmissionSlot(self.active.clone()))
    }
}

#[derive(Default)]
struct Counters {
    output_charged: u64,
    output_acked: u64,
    started: bool,
    stdin_eof: bool,
    stdin_received: u64,
    stdin_written: u64,
}

/// The flow state of one controlled exec.
pub struct ExecFlow {
    pub limits: ExecLimits,
    window: Semaphore,
    counters: Mutex<Counters>,
    acked: Notify,
}

impl ExecFlow {
    pub fn new(limits: ExecLimits) -> Arc<ExecFlow> {
        Arc::new(ExecFlow {
            limits,
            window: Semaphore::new(limits.output_limit as usize),
            counters: Mutex::default(),
            acked: Notify::new(),
        })
    }

    /// Largest output chunk.
    pub fn output_chunk(&self) -> usize {
        self.limits.output_chunk_size as usize
    }

    /// Waits until the window has room for a chunk of `len` bytes, then
    /// charges it. Fails only if the window was closed.
    pub async fn charge_output(&self, len: usize) -> Result<(), ()> {
        let cost = len as u64 + OUTPUT_EVENT_OVERHEAD;
        let permit = self
            .window
            .acquire_many(cost as u32)
            .await
            .map_err(|_| ())?;
        permit.forget();
        self.counters.lock().unwrap().output_charged += cost;
        Ok(())
    }

    /// A client's cumulative acknowledgement of output.
    pub fn on_output_ack(&self, consumed: u64) -> Result<(), String> {
        let mut c = self.counters.lock().unwrap();
        if consumed < c.output_acked {
            return Err(format!(
                "output acknowledgement went backwards: {consumed} after {}",
                c.output_acked
            ));
        }
        if consumed > c.output_charged {
            return Err(format!(
                "output acknowledgement {consumed} exceeds the {} bytes sent",
                c.output_charged
            ));
        }
        let returned = consumed - c.output_acked;
        c.output_acked = consumed;
        drop(c);
        self.window.add_permits(returned as usize);
        self.acked.notify_waiters();
        Ok(())
    }

    /// Waits until every charged output byte is acknowledged.
    pub async fn wait_all_acked(&self) {
        loop {
            let notified = self.acked.notified();
            {
                let c = self.counters.lock().unwrap();
                if c.output_acked == c.output_charged {
                    return;
                }
            }
            notified.await;
        }
    }

    /// `core.exec.started` is on its way to the client: stdin is legal now.
    pub fn mark_started(&self) {
        self.counters.lock().unwrap().started = true;
    }

    /// Checks one stdin payload against the input rules.
    pub fn on_stdin(&self, len: usize) -> Result<(), String> {
        let mut c = self.counters.lock().unwrap();
        if !c.started || c.stdin_eof {
            return Err("stdin arrived before execution acceptance or after EOF".into());
        }
        if len == 0 {
            c.stdin_eof = true;
            return Ok(());
        }
        if len > self.limits.stdin_chunk_size as usize {
            return Err(format!(
                "stdin chunk of {len} bytes exceeds stdin_chunk_size {}",
                self.limits.stdin_chunk_size
            ));
        }
        let in_flight = c.stdin_received + len as u64 - c.stdin_written;
        if in_flight > u64::from(self.limits.input_limit) {
            return Err(format!(
                "{in_flight} unacknowledged stdin bytes exceed input_limit {}",
                self.limits.input_limit
            ));
        }
        c.stdin_received += len as u64;
        Ok(())
    }

    /// `n` more stdin bytes reached the child; returns the cumulative total
    /// to acknowledge.
    pub fn on_stdin_written(&self, n: usize) -> u64 {
        let mut c = self.counters.lock().unwrap();
        c.stdin_written += n as u64;
        c.stdin_written
    }

    /// Wakes a pump waiting for window room: the session is over.
    pub fn close(&self) {
        self.window.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_and_releases() {
        let admission = Admission::new(2);
        let a = admission.try_admit().unwrap();
        let _b = admission.try_admit().unwrap();
        assert!(admission.try_admit().is_none());
        drop(a);
        assert!(admission.try_admit().is_some());
    }

    #[test]
    fn stdin_rules() {
        let flow = ExecFlow::new(ExecLimits::default());
        assert!(flow.on_stdin(1).is_err(), "before started");
        flow.mark_started();
        assert!(flow.on_stdin(16 * 1024 + 1).is_err(), "chunk too big");
        for _ in 0..4 {
            flow.on_stdin(16 * 1024).unwrap();
        }
        assert!(flow.on_stdin(1).is_err(), "over input_limit");
        assert_eq!(flow.on_stdin_written(32 * 1024), 32 * 1024);
        flow.on_stdin(16 * 1024).unwrap();
        flow.on_stdin(0).unwrap();
        assert!(flow.on_stdin(1).is_err(), "after EOF");
    }

    #[tokio::test]
    async fn output_acks_return_credit_and_must_be_sane() {
        let flow = ExecFlow::new(ExecLimits::default());
        flow.charge_output(3).await.unwrap();
        flow.charge_output(5).await.unwrap();
        assert!(flow.on_output_ack(521).is_err(), "above what was sent");
        flow.on_output_ack(259).unwrap();
        assert!(flow.on_output_ack(258).is_err(), "backwards");
        flow.on_output_ack(520).unwrap();
        flow.wait_all_acked().await;
    }
}
