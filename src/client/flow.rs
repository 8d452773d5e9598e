//! Generation-10 exec flow control: the per-exec counters, and when an
//! acknowledgement is due. No I/O here: the exec conversation and the
//! reader call these and send what they return.
//!
//! The rules (PROTOCOL-GENERATIONS.md §9.7): the guest charges every stdout
//! or stderr chunk its payload length plus 256 against a window of
//! `output_limit`; the client acknowledges, with the cumulative total, what
//! the application has consumed (or discarded), and the exit code waits
//! until everything published was acknowledged. Stdin goes out only after
//! `core.exec.started`, in chunks of at most `stdin_chunk_size`, with at most
//! `input_limit` bytes sent and not yet acknowledged by the guest's
//! `core.exec.stdin.ack`, and the empty end-of-input chunk comes last.

use bytes::Bytes;

use crate::protocol::payload::{Data, ExecOutputAck, ExecStdinAck, Payload};

/// What a stdout or stderr chunk costs in the output window beyond its
/// payload.
pub(crate) const OUTPUT_EVENT_OVERHEAD: u64 = 256;

/// The relay's `Ready.exec_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecLimits {
    pub output_limit: u64,
    pub input_limit: u64,
    pub stdin_chunk_size: usize,
}

impl From<&crate::protocol::payload::ExecLimits> for ExecLimits {
    fn from(l: &crate::protocol::payload::ExecLimits) -> ExecLimits {
        ExecLimits {
            output_limit: u64::from(l.output_limit),
            input_limit: u64::from(l.input_limit),
            stdin_chunk_size: l.stdin_chunk_size as usize,
        }
    }
}

impl ExecLimits {
    /// Limits no relay can have made us break: zero sizes are raised to one
    /// byte so that a hostile ready frame cannot make stdin spin forever.
    pub(crate) fn sanitized(self) -> ExecLimits {
        ExecLimits {
            output_limit: self.output_limit.max(1),
            input_limit: self.input_limit.max(1),
            stdin_chunk_size: self.stdin_chunk_size.max(1),
        }
    }
}

/// The output side of one exec: the charge of what the application
/// consumed, and what of it was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutputAcks {
    consumed: u64,
    acked: u64,
    /// Batch size: acknowledge once this much is consumed and unacknowledged.
    batch: u64,
}

impl OutputAcks {
    pub(crate) fn new(limits: &ExecLimits) -> OutputAcks {
        OutputAcks {
            consumed: 0,
            acked: 0,
            batch: (limits.output_limit / 4).max(1),
        }
    }

    /// Counts one stdout or stderr chunk of `payload_len` bytes as consumed.
    pub(crate) fn consume(&mut self, payload_len: usize) {
        self.consumed = self
            .consumed
            .saturating_add(payload_len as u64 + OUTPUT_EVENT_OVERHEAD);
    }

    /// The cumulative total to acknowledge now, if one is due: a quarter of
    /// the window is consumed and unacknowledged, or nothing more is queued
    /// (the application is about to wait, and the guest must not stall
    /// behind consumed output).
    pub(crate) fn due(&mut self, queue_empty: bool) -> Option<u64> {
        let unacked = self.consumed - self.acked;
        if unacked == 0 || (unacked < self.batch && !queue_empty) {
            return None;
        }
        self.acked = self.consumed;
        Some(self.consumed)
    }

    /// Everything consumed, acknowledged at once (the exec is being freed;
    /// whatever was still queued counts as discarded: call `consume` for it
    /// first).
    pub(crate) fn flush(&mut self) -> Option<u64> {
        self.due(true)
    }

    #[cfg(test)]
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }
}

/// Why stdin cannot go out right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StdinBlocked {
    /// `core.exec.started` has not arrived.
    NotStarted,
    /// `input_limit` bytes are in flight; wait for an acknowledgement.
    WindowFull,
    /// The end of input was sent; nothing may follow it.
    Ended,
}

/// The input side of one exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InputWindow {
    started: bool,
    sent: u64,
    acked: u64,
    eof_sent: bool,
    limit: u64,
    chunk: usize,
}

impl InputWindow {
    pub(crate) fn new(limits: &ExecLimits) -> InputWindow {
        InputWindow {
            started: false,
            sent: 0,
            acked: 0,
            eof_sent: false,
            limit: limits.input_limit,
            chunk: limits.stdin_chunk_size,
        }
    }

    pub(crate) fn start(&mut self) {
        self.started = true;
    }

    /// How many of `wanted` bytes may be sent in the next chunk.
    pub(crate) fn allowance(&self, wanted: usize) -> Result<usize, StdinBlocked> {
        if self.eof_sent {
            return Err(StdinBlocked::Ended);
        }
        if !self.started {
            return Err(StdinBlocked::NotStarted);
        }
        let room = self.limit.saturating_sub(self.sent - self.acked);
        if room == 0 {
            return Err(StdinBlocked::WindowFull);
        }
        Ok(wanted
            .min(self.chunk)
            .min(room.min(usize::MAX as u64) as usize))
    }

    pub(crate) fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// Takes back `n` bytes counted by [`sent`](Self::sent) that never went
    /// out (the send failed before writing anything).
    pub(crate) fn unsent(&mut self, n: usize) {
        self.sent = self.sent.saturating_sub(n as u64).max(self.acked);
    }

    /// The guest's cumulative `consumed`. Totals that go backwards or past
    /// what was sent are ignored: the relay validates acks before it
    /// forwards them, so this only guards against a hostile peer.
    pub(crate) fn acknowledged(&mut self, consumed: u64) -> bool {
        if consumed < self.acked || consumed > self.sent {
            return false;
        }
        self.acked = consumed;
        true
    }

    /// Whether the empty end-of-input chunk may go now (started, not sent).
    pub(crate) fn may_end(&self) -> Result<(), StdinBlocked> {
        if self.eof_sent {
            return Err(StdinBlocked::Ended);
        }
        if !self.started {
            return Err(StdinBlocked::NotStarted);
        }
        Ok(())
    }

    pub(crate) fn ended(&mut self) {
        self.eof_sent = true;
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u64 {
        self.sent - self.acked
    }
}

/// Both sides of one exec's flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecFlow {
    pub output: OutputAcks,
    pub input: InputWindow,
}

impl ExecFlow {
    pub(crate) fn new(limits: &ExecLimits) -> ExecFlow {
        ExecFlow {
            output: OutputAcks::new(limits),
            input: InputWindow::new(limits),
        }
    }
}

/// The `{consumed: uint}` payload of an output acknowledgement.
pub(crate) fn encode_consumed(consumed: u64) -> Vec<u8> {
    ExecOutputAck { consumed }.to_bytes()
}

/// `consumed` of a stdin acknowledgement's payload.
pub(crate) fn decode_consumed(payload: &Bytes) -> Option<u64> {
    ExecStdinAck::decode(payload).ok().map(|a| a.consumed)
}

/// The length of the data in a `{data: bytes}` payload: what an output
/// chunk is charged for (with the overhead). 0 if it has no such field.
pub(crate) fn data_len(payload: &Bytes) -> usize {
    Data::decode(payload).map_or(0, |d| d.data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits of `flow_control_example.exec_limits_default` in
    /// /work/shared/vectors/protocol-0.7.13.json.
    const DEFAULTS: ExecLimits = ExecLimits {
        output_limit: 1_048_576,
        input_limit: 65_536,
        stdin_chunk_size: 16_384,
    };

    #[test]
    fn output_acks_follow_the_worked_exchange() {
        // `exec_steps`: stdout of 1 and 2 bytes, consumed, acked as 515;
        // then 3 bytes, consumed, acked as 774.
        let mut acks = OutputAcks::new(&DEFAULTS);
        acks.consume(1);
        assert_eq!(acks.consumed(), 257, "window charge so far 257");
        assert_eq!(acks.due(false), None, "more is queued: batch");
        acks.consume(2);
        assert_eq!(acks.due(true), Some(515));
        assert_eq!(acks.due(true), None, "nothing new to acknowledge");
        acks.consume(3);
        assert_eq!(acks.due(true), Some(774));
        // The vector's example of the header: 3 bytes stdout + 5 bytes stderr.
        let mut acks = OutputAcks::new(&DEFAULTS);
        acks.consume(3);
        acks.consume(5);
        assert_eq!(acks.flush(), Some(520));
    }

    #[test]
    fn output_acks_batch_by_a_quarter_of_the_window() {
        let mut acks = OutputAcks::new(&DEFAULTS);
        let chunk = 16_384;
        let mut sent_acks = Vec::new();
        for _ in 0..64 {
            acks.consume(chunk);
            if let Some(total) = acks.due(false) {
                sent_acks.push(total);
            }
        }
        // 64 chunks of 16 KiB + 256 charge 1 064 960 bytes: four quarters
        // of 262 144 each need 16 chunks (16 × 16 640 = 266 240).
        assert_eq!(sent_acks, [266_240, 532_480, 798_720, 1_064_960]);
        // The window is never left more than a quarter unacknowledged.
        assert!(acks.consumed() - sent_acks.last().unwrap() < DEFAULTS.output_limit / 4);
    }

    #[test]
    fn stdin_follows_the_worked_exchange() {
        let mut w = InputWindow::new(&DEFAULTS);
        assert_eq!(w.allowance(100), Err(StdinBlocked::NotStarted));
        assert_eq!(w.may_end(), Err(StdinBlocked::NotStarted));
        w.start();
        // Four chunks of 16 384: input_sent = 65 536, the window is full.
        let mut data = 70_000usize;
        for expected_sent in [16_384u64, 32_768, 49_152, 65_536] {
            let n = w.allowance(data).unwrap();
            assert_eq!(n, 16_384);
            w.sent(n);
            data -= n;
            assert_eq!(w.in_flight(), expected_sent);
        }
        assert_eq!(w.allowance(data), Err(StdinBlocked::WindowFull));
        // stdin.ack{consumed: 32768}: 32 768 more may go, one chunk at a time.
        assert!(w.acknowledged(32_768));
        assert_eq!(w.allowance(data), Ok(data), "the last 4 464 bytes");
        assert_eq!(w.allowance(100_000), Ok(16_384));
        w.sent(16_384);
        assert_eq!(w.allowance(100_000), Ok(16_384));
        w.sent(16_384);
        assert_eq!(w.allowance(1), Err(StdinBlocked::WindowFull));
        // Bad totals are ignored.
        assert!(!w.acknowledged(1_000), "backwards");
        assert!(!w.acknowledged(200_000), "past what was sent");
        assert!(w.acknowledged(98_304));
        assert_eq!(w.in_flight(), 0);
        w.may_end().unwrap();
        w.ended();
        assert_eq!(w.allowance(1), Err(StdinBlocked::Ended));
        assert_eq!(w.may_end(), Err(StdinBlocked::Ended));
    }

    #[test]
    fn ack_payloads_match_the_vector() {
        // The header example of §9.7: consumed = 520 is `a1 68 "consumed" 19 0208`.
        let mut want = vec![0xa1, 0x68];
        want.extend_from_slice(b"consumed");
        want.extend_from_slice(&[0x19, 0x02, 0x08]);
        assert_eq!(encode_consumed(520), want);
        assert_eq!(decode_consumed(&Bytes::from(want)), Some(520));
        // exec_steps' stdin.ack: consumed 32768.
        let ack = [
            0xa1, 0x68, b'c', b'o', b'n', b's', b'u', b'm', b'e', b'd', 0x19, 0x80, 0x00,
        ];
        assert_eq!(decode_consumed(&Bytes::copy_from_slice(&ack)), Some(32_768));
        assert_eq!(decode_consumed(&Bytes::from_static(&[0xa0])), None);
        // stdout "bb" of exec_steps: a1 64 "data" 42 6262.
        let data = [0xa1, 0x64, b'd', b'a', b't', b'a', 0x42, b'b', b'b'];
        assert_eq!(data_len(&Bytes::copy_from_slice(&data)), 2);
        assert_eq!(data_len(&Bytes::from_static(&[0xff])), 0);
    }

    #[test]
    fn a_partial_window_limits_the_next_chunk() {
        let mut w = InputWindow::new(&DEFAULTS);
        w.start();
        w.sent(60_000);
        assert_eq!(w.allowance(16_384), Ok(5_536));
        let zero = ExecLimits {
            output_limit: 0,
            input_limit: 0,
            stdin_chunk_size: 0,
        }
        .sanitized();
        let mut w = InputWindow::new(&zero);
        w.start();
        assert_eq!(w.allowance(10), Ok(1));
    }
}
