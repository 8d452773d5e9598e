//! Liveness checks (generation 6, 0.6.4 and later): `core.ping` is
//! answered with `core.pong` and leaves the sandbox's idle timer alone;
//! `core.touch` is answered with `core.touched` and counts as activity.

use std::time::Duration;

use super::error::{Error, Result};
use super::exec::agent_error;
use super::Client;
use crate::protocol::payload::{Empty, Payload, Touched};
use crate::protocol::{Message, MessageType};

/// Sends `request` on a fresh id and returns the reply if it is `want`.
fn ask(
    client: &Client,
    request: MessageType,
    want: MessageType,
    timeout: Duration,
) -> Result<Message> {
    client.peer().require(&request)?;
    let m = client.request(&request, &Empty {}.to_bytes(), timeout)?;
    if m.message_type == want {
        return Ok(m);
    }
    if m.message_type == MessageType::CoreError {
        return Err(agent_error(&m.payload).map_err(|e| client.fail_protocol(e))?);
    }
    Err(Error::Unexpected(format!(
        "{} answered {request} instead of {want}",
        m.message_type
    )))
}

/// Waits for the agent to answer a ping: proof that the guest's agent loop
/// runs, without counting as activity.
pub fn ping(client: &Client, timeout: Duration) -> Result<()> {
    ask(client, MessageType::Ping, MessageType::Pong, timeout).map(drop)
}

/// Marks the sandbox active (its idle timer restarts) and returns the
/// agent's activity sequence number, which grows with every activity.
pub fn touch(client: &Client, timeout: Duration) -> Result<u64> {
    let m = ask(client, MessageType::Touch, MessageType::Touched, timeout)?;
    let t = Touched::decode(&m.payload).map_err(|e| client.fail_protocol(e))?;
    Ok(t.activity_seq)
}
