//! Which upstream release the relay imitates, and every difference between
//! the releases that is a plain fact about the release (numbers, forms,
//! switches). The behaviour those facts drive lives with the behaviour.

use microsandbox_agent::protocol::payload::{
    BulkTransportReady, ExecControlReady, ExecLimits, MaxFormat, Payload, Ready,
};
use microsandbox_agent::protocol::MessageType;

/// The message types agentd 0.3.14 knew; any other type kills it.
const TYPES_OF_0_3_14: [MessageType; 13] = [
    MessageType::Ready,
    MessageType::Shutdown,
    MessageType::ExecRequest,
    MessageType::ExecStarted,
    MessageType::ExecStdin,
    MessageType::ExecStdout,
    MessageType::ExecStderr,
    MessageType::ExecExited,
    MessageType::ExecResize,
    MessageType::ExecSignal,
    MessageType::FsRequest,
    MessageType::FsData,
    MessageType::FsResponse,
];

/// A microsandbox release whose relay + agentd pair we imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// 0.3.14: legacy handshake, 16 slots, path-based FS, no checks at all.
    V0_3_14,
    /// 0.6.14: current handshake, 128 slots, handle FS, TCP, core.error,
    /// ping/touch; the relay checks id ranges.
    V0_6_14,
    /// 0.7.13: as 0.6.14, plus strict frame validation, single-use ids,
    /// the 5 s stall rule and generation-10 exec flow control.
    V0_7_13,
}

pub const DEFAULT: Profile = Profile::V0_7_13;

/// Half-open range of ids a client may use, as the handshake announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub end_exclusive: u32,
}

impl IdRange {
    pub fn contains(&self, id: u32) -> bool {
        self.start <= id && id < self.end_exclusive
    }
}

impl Profile {
    pub const NAMES: [&'static str; 3] = ["0.3.14", "0.6.14", "0.7.13"];

    pub fn from_name(name: &str) -> Option<Profile> {
        match name {
            "0.3.14" => Some(Profile::V0_3_14),
            "0.6.14" => Some(Profile::V0_6_14),
            "0.7.13" => Some(Profile::V0_7_13),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::V0_3_14 => "0.3.14",
            Profile::V0_6_14 => "0.6.14",
            Profile::V0_7_13 => "0.7.13",
        }
    }

    /// agentd's `PROTOCOL_VERSION`: the `v` of every frame we send.
    pub fn generation(self) -> u8 {
        match self {
            Profile::V0_3_14 => 1,
            Profile::V0_6_14 => 7,
            Profile::V0_7_13 => 10,
        }
    }

    pub fn is_legacy(self) -> bool {
        self == Profile::V0_3_14
    }

    pub fn max_clients(self) -> u32 {
        if self.is_legacy() {
            16
        } else {
            128
        }
    }

    pub fn id_step(self) -> u32 {
        u32::MAX / self.max_clients()
    }

    /// The ids a client in `slot` owns. On the legacy form the handshake
    /// only carries the offset; the range is what upstream clients derive.
    pub fn id_range(self, slot: u32) -> IdRange {
        let offset = slot * self.id_step();
        IdRange {
            start: offset.saturating_add(1),
            end_exclusive: offset.saturating_add(self.id_step()),
        }
    }

    /// Bytes before the ready frame: `[id_offset]` or `[id_start][id_end_exclusive]`.
    pub fn handshake_prologue(self, slot: u32) -> Vec<u8> {
        if self.is_legacy() {
            (slot * self.id_step()).to_be_bytes().to_vec()
        } else {
            let range = self.id_range(slot);
            let mut out = range.start.to_be_bytes().to_vec();
            out.extend_from_slice(&range.end_exclusive.to_be_bytes());
            out
        }
    }

    /// The `core.ready` payload this release's relay hands its clients.
    pub fn ready_payload(self, times: [u64; 3], control_endpoint: &str) -> Vec<u8> {
        let [boot_time_ns, init_time_ns, ready_time_ns] = times;
        let mut ready = Ready {
            boot_time_ns,
            init_time_ns,
            ready_time_ns,
            ..Ready::default()
        };
        match self {
            Profile::V0_3_14 => {}
            Profile::V0_6_14 => ready.agent_version = "0.6.14".into(),
            Profile::V0_7_13 => {
                ready.agent_version = "0.7.13".into();
                ready.bulk_transport = Some(BulkTransportReady {
                    profile: "dual-port-v1".into(),
                    port: "agent-bulk".into(),
                    connection_id: random_token(),
                });
                ready.relay_lease = Some(MaxFormat { max_format: 1 });
                ready.local_transport = Some(MaxFormat { max_format: 1 });
                ready.workload_transport_barrier_version = Some(2);
                ready.exec_limits = Some(ExecLimits::default());
                ready.exec_control = Some(ExecControlReady {
                    version: 1,
                    endpoint: control_endpoint.into(),
                    connection: random_token(),
                });
            }
        }
        ready.to_bytes()
    }

    /// Whether this agentd has handle-based (generation-2) FS shapes.
    pub fn has_handle_fs(self) -> bool {
        !self.is_legacy()
    }

    /// Whether the relay drops clients that use ids outside their range.
    pub fn checks_id_ranges(self) -> bool {
        !self.is_legacy()
    }

    /// Whether the relay validates flags, envelopes and id reuse, and cuts
    /// clients that stop reading (0.7.x).
    pub fn strict_relay(self) -> bool {
        self == Profile::V0_7_13
    }

    /// Whether agentd checks each frame's flags against its type (0.5.6+).
    pub fn checks_flags(self) -> bool {
        !self.is_legacy()
    }

    /// Whether spawn failures are `core.exec.failed` (0.4.4+) rather than
    /// `core.exec.exited {-1}`, and stdin failures are reported (0.4.6+).
    pub fn has_exec_failed(self) -> bool {
        !self.is_legacy()
    }

    /// Whether `core.exec.request` frames with `v >= 10` get flow control.
    pub fn has_exec_flow_control(self) -> bool {
        self == Profile::V0_7_13
    }

    /// Whether a message type exists in this release (an unknown one kills
    /// agentd).
    pub fn knows(self, message_type: &MessageType) -> bool {
        match self {
            Profile::V0_3_14 => TYPES_OF_0_3_14.contains(message_type),
            Profile::V0_6_14 => message_type.is_known() && message_type.min_generation() <= 7,
            Profile::V0_7_13 => message_type.is_known(),
        }
    }
}

/// 16 random bytes for the connection tokens the 0.7 ready payload carries.
fn random_token() -> [u8; 16] {
    let mut token = [0u8; 16];
    // A failed read only leaves zeros, which is a valid (if predictable)
    // token for a development relay.
    crate::platform::fill_random(&mut token);
    token
}
