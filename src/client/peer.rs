//! What the handshake told us about the relay and its agent, and the rules
//! that follow from it: which protocol generation both sides speak, which
//! `v` our frames carry, and which message types may be sent.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{Error, Result};
use super::ids::IdRange;
use crate::protocol::payload::ExecLimits;
use crate::protocol::{MessageType, LEGACY_GENERATION, MAX_GENERATION};

/// The `v` stamped on current relays while exec flow control is off: the
/// highest generation whose every feature we implement without it (a `v`
/// of 10 would switch flow control on in a 0.7.9+ sandbox).
const STAMP_WITHOUT_FLOW_CONTROL: u8 = 7;
/// The `v` stamped on current relays once exec flow control is on.
const STAMP_WITH_FLOW_CONTROL: u8 = 10;

/// Which handshake the relay used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `[id_offset][ready]`: relays 0.3.x and 0.4.x, 16 clients.
    Legacy,
    /// `[id_start][id_end_exclusive][ready]`: relays 0.5.0 and later, 128
    /// clients.
    Current,
}

/// Which shapes filesystem requests take on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsShapes {
    /// 0.3.14's path-based Read/Write/Stat/RemoveDir.
    Legacy,
    /// Generation 2's handle-based conversations.
    Handles,
    /// A current relay speaking generation 1 (0.5.0): upstream refuses
    /// filesystem requests there, and so do we.
    Refused,
}

/// The relay and agent at the other end of one connection.
#[derive(Debug)]
pub struct Peer {
    form: Form,
    peer_generation: u8,
    negotiated: u8,
    agent_version: CString,
    exec_limits: Option<ExecLimits>,
    id_range: IdRange,
    flow_control: AtomicBool,
}

impl Peer {
    pub(crate) fn new(
        form: Form,
        peer_generation: u8,
        agent_version: &str,
        exec_limits: Option<ExecLimits>,
        id_range: IdRange,
    ) -> Peer {
        let negotiated = match form {
            // A legacy relay's agent is generation 1 whatever it says.
            Form::Legacy => LEGACY_GENERATION,
            Form::Current => peer_generation.clamp(1, MAX_GENERATION),
        };
        Peer {
            form,
            peer_generation,
            negotiated,
            // A NUL cannot come from a well-behaved agent; cut the text there.
            agent_version: CString::new(agent_version.split('\0').next().unwrap_or(""))
                .unwrap_or_default(),
            exec_limits,
            id_range,
            flow_control: AtomicBool::new(false),
        }
    }

    pub fn form(&self) -> Form {
        self.form
    }

    pub fn is_legacy(&self) -> bool {
        self.form == Form::Legacy
    }

    /// The `v` of the relay's `core.ready`: the agent's own generation.
    pub fn peer_generation(&self) -> u8 {
        self.peer_generation
    }

    /// The generation both sides speak: 1 on legacy relays, else the
    /// smaller of the peer's and ours.
    pub fn generation(&self) -> u8 {
        self.negotiated
    }

    /// The agent's version from `core.ready` (0.5.5+); empty when absent.
    pub fn agent_version(&self) -> &str {
        self.agent_version.to_str().unwrap_or("")
    }

    pub(crate) fn agent_version_c(&self) -> &std::ffi::CStr {
        &self.agent_version
    }

    /// The sandbox's exec flow-control policy (0.7.9+), when it sent one.
    pub fn exec_limits(&self) -> Option<&ExecLimits> {
        self.exec_limits.as_ref()
    }

    /// The correlation ids this connection may use.
    pub fn id_range(&self) -> IdRange {
        self.id_range
    }

    /// The `v` every frame of this connection carries: 1 on legacy relays;
    /// on current ones 10 once exec flow control is on, else 7.
    pub fn stamped_generation(&self) -> u8 {
        match self.form {
            Form::Legacy => LEGACY_GENERATION,
            Form::Current if self.flow_control.load(Ordering::Acquire) => STAMP_WITH_FLOW_CONTROL,
            Form::Current => STAMP_WITHOUT_FLOW_CONTROL,
        }
    }

    /// True when the sandbox can run exec flow control: generation 10 and
    /// an `exec_limits` policy in its `core.ready`.
    pub fn can_flow_control(&self) -> bool {
        self.form == Form::Current && self.negotiated >= 10 && self.exec_limits.is_some()
    }

    /// Switches exec flow control on for this connection, which stamps 10
    /// from now on. Must happen before the first frame is sent: one `v`
    /// per connection. Returns false (and changes nothing) when the sandbox
    /// cannot do it.
    pub fn enable_flow_control(&self) -> bool {
        if !self.can_flow_control() {
            return false;
        }
        self.flow_control.store(true, Ordering::Release);
        true
    }

    pub fn flow_control(&self) -> bool {
        self.flow_control.load(Ordering::Acquire)
    }

    pub(crate) fn fs_shapes(&self) -> FsShapes {
        match (self.form, self.negotiated) {
            (Form::Legacy, _) => FsShapes::Legacy,
            (Form::Current, 1) => FsShapes::Refused,
            (Form::Current, _) => FsShapes::Handles,
        }
    }

    /// True if this connection may carry `message_type`. Legacy relays
    /// carry the filesystem types too, in their 0.3.14 shapes, although
    /// those types count as generation 2.
    pub fn supports(&self, message_type: &MessageType) -> bool {
        if !message_type.is_known() {
            return false;
        }
        if self.fs_shapes() == FsShapes::Legacy && is_fs_type(message_type) {
            return true;
        }
        message_type.min_generation() <= self.negotiated
    }

    /// Fails with [`Error::Unsupported`] unless [`supports`](Self::supports).
    pub fn require(&self, message_type: &MessageType) -> Result<()> {
        if self.supports(message_type) {
            return Ok(());
        }
        if !message_type.is_known() {
            return Err(Error::InvalidArgument(format!(
                "{message_type} is not a message type this library knows"
            )));
        }
        Err(Error::Unsupported {
            message_type: message_type.static_name(),
            needs: message_type.min_generation().max(self.negotiated + 1),
            speaks: self.negotiated,
        })
    }

    /// What the raw tier may send on this connection. A current relay's
    /// agent (or the 0.7 relay itself) kills the connection, or the whole
    /// sandbox, on a type it does not know or a frame only the guest sends;
    /// legacy relays keep the old freedom of sending any type name.
    pub(crate) fn check_raw_send(&self, message_type: &MessageType) -> Result<()> {
        if self.form == Form::Current {
            if !message_type.is_known() {
                return Err(Error::InvalidArgument(format!(
                    "{message_type} is not a message type this library knows; \
                     a current sandbox's agent would fail on it"
                )));
            }
            if !message_type.client_may_send() {
                return Err(Error::InvalidArgument(format!(
                    "{message_type} is not a message a client sends"
                )));
            }
        }
        if message_type.is_known() {
            self.require(message_type)?;
        }
        Ok(())
    }
}

fn is_fs_type(message_type: &MessageType) -> bool {
    matches!(
        message_type,
        MessageType::FsRequest | MessageType::FsResponse | MessageType::FsData
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(form: Form, v: u8, limits: bool) -> Peer {
        let limits = limits.then(ExecLimits::default);
        Peer::new(form, v, "", limits, IdRange { start: 1, end: 9 })
    }

    #[test]
    fn negotiation_follows_the_relay_form_and_ready_v() {
        for (form, v, negotiated) in [
            (Form::Legacy, 1, 1),
            (Form::Legacy, 7, 1),
            (Form::Current, 1, 1),
            (Form::Current, 5, 5),
            (Form::Current, 7, 7),
            (Form::Current, 9, 9),
            (Form::Current, 10, 10),
            (Form::Current, 12, 10),
        ] {
            let p = peer(form, v, false);
            assert_eq!(p.generation(), negotiated, "{form:?} v={v}");
            assert_eq!(p.peer_generation(), v);
            assert_eq!(
                p.stamped_generation(),
                if form == Form::Legacy { 1 } else { 7 }
            );
        }
    }

    #[test]
    fn flow_control_needs_generation_ten_and_limits_and_stamps_ten() {
        assert!(!peer(Form::Current, 9, true).enable_flow_control());
        assert!(!peer(Form::Current, 10, false).enable_flow_control());
        assert!(!peer(Form::Legacy, 10, true).enable_flow_control());
        let p = peer(Form::Current, 10, true);
        assert!(p.enable_flow_control());
        assert_eq!(p.stamped_generation(), 10);
    }

    #[test]
    fn gating_by_generation() {
        let legacy = peer(Form::Legacy, 1, false);
        assert!(legacy.supports(&MessageType::FsRequest));
        assert!(!legacy.supports(&MessageType::TcpConnect));
        let quirk = peer(Form::Current, 1, false);
        assert_eq!(quirk.fs_shapes(), FsShapes::Refused);
        match quirk.require(&MessageType::FsRequest) {
            Err(e @ Error::Unsupported { .. }) => assert_eq!(
                e.to_string(),
                "core.fs.request needs protocol generation 2; this sandbox speaks 1"
            ),
            other => panic!("{other:?}"),
        }
        let gen5 = peer(Form::Current, 5, false);
        assert!(gen5.supports(&MessageType::TcpConnect));
        assert!(!gen5.supports(&MessageType::Ping));
        assert!(gen5.check_raw_send(&MessageType::Ready).is_err());
        assert!(gen5
            .check_raw_send(&MessageType::from_wire("core.nope"))
            .is_err());
        assert!(legacy
            .check_raw_send(&MessageType::from_wire("core.nope"))
            .is_ok());
    }
}
