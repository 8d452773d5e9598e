//! The relay's own checks on what a client sends, before agentd sees it.
//!
//! A violation disconnects the client (its execs are SIGKILLed, its FS
//! handles and TCP streams released), exactly as the upstream relay breaks
//! its reader loop. What each release checks:
//! - 0.3.14: nothing; every frame is forwarded.
//! - 0.6.14: ids must lie in the client's range (id 0 only with SHUTDOWN).
//! - 0.7.13: also the flags byte, the envelope's shape, `control.*` types
//!   and single-use correlation ids.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::profile::{IdRange, Profile};
use microsandbox_agent::protocol::{FLAG_BULK, FLAG_SHUTDOWN, FLAG_TERMINAL};

use crate::wire::Envelope;

/// Types whose id the 0.7 relay registers as a correlation.
const CORRELATED: [&str; 3] = ["core.exec.request", "core.fs.request", "core.tcp.connect"];

pub struct RelayRules {
    profile: Profile,
    range: IdRange,
}

impl RelayRules {
    pub fn new(profile: Profile, range: IdRange) -> RelayRules {
        RelayRules { profile, range }
    }

    /// Checks one client frame. `Err` carries why the client is cut off.
    pub fn check(
        &self,
        id: u32,
        flags: u8,
        body: &[u8],
        correlations: &Correlations,
    ) -> Result<(), String> {
        if self.profile.strict_relay() {
            if ![0, 1, 2, 4, FLAG_BULK].contains(&flags) {
                return Err(format!("invalid flags byte {flags:#04x} (id {id})"));
            }
            if flags == FLAG_BULK {
                // No bulk operation is ever accepted here, so every raw
                // record belongs to none.
                return Err(format!("raw bulk record for no active operation (id {id})"));
            }
            let empty_shutdown = flags == FLAG_SHUTDOWN && body.is_empty();
            if !empty_shutdown {
                check_envelope(body).map_err(|why| format!("{why} (id {id})"))?;
            }
        }
        if self.profile.checks_id_ranges() {
            let shutdown = flags & FLAG_SHUTDOWN != 0 && id == 0;
            if !shutdown && !self.range.contains(id) {
                return Err(format!(
                    "sent out-of-range id {id} (range {}..{})",
                    self.range.start, self.range.end_exclusive
                ));
            }
        }
        if self.profile.strict_relay() {
            if let Some(t) = Envelope::read(body).and_then(|e| e.t) {
                if CORRELATED.contains(&t.as_str()) {
                    correlations.register(id)?;
                }
            }
        }
        Ok(())
    }
}

/// The 0.7 relay's envelope rule: a CBOR map with exactly one text `t`,
/// not a `control.*` type, and nothing after it.
fn check_envelope(body: &[u8]) -> Result<(), String> {
    let envelope = Envelope::read(body).ok_or("frame body is not CBOR")?;
    if !envelope.is_map {
        return Err("frame body is not a CBOR map".into());
    }
    if envelope.trailing {
        return Err("trailing bytes after the frame body".into());
    }
    if envelope.t_keys != 1 || envelope.t.is_none() {
        return Err("frame body needs exactly one text \"t\"".into());
    }
    if envelope
        .t
        .as_deref()
        .is_some_and(|t| t.starts_with("control."))
    {
        return Err("control.* types are not allowed on the agent socket".into());
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Correlation {
    Active,
    Retired,
}

/// Correlation ids of one connection (0.7.13): a request id is active until
/// its terminal frame goes out, then retired for good.
#[derive(Default)]
pub struct Correlations {
    ids: Mutex<HashMap<u32, Correlation>>,
}

impl Correlations {
    fn register(&self, id: u32) -> Result<(), String> {
        let mut ids = self.ids.lock().unwrap();
        if ids.insert(id, Correlation::Active).is_some() {
            return Err(format!(
                "correlation {id} was reused within one client incarnation"
            ));
        }
        Ok(())
    }

    /// Called for every frame the relay sends the client.
    pub fn on_sent(&self, id: u32, flags: u8) {
        if flags & FLAG_TERMINAL == 0 {
            return;
        }
        if let Some(state) = self.ids.lock().unwrap().get_mut(&id) {
            *state = Correlation::Retired;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn body(t: &str) -> Vec<u8> {
        wire::frame(10, t, 1, 0, &[0xa0])[9..].to_vec()
    }

    #[test]
    fn envelope_rule() {
        assert!(check_envelope(&body("core.ping")).is_ok());
        assert!(check_envelope(&body("control.exec.signal")).is_err());
        let mut trailing = body("core.ping");
        trailing.push(0);
        assert!(check_envelope(&trailing).is_err());
        assert!(check_envelope(&[0x82, 0x01, 0x02]).is_err());
        // {"v": 10, "p": h''}: no t.
        assert!(check_envelope(&[0xa2, 0x61, b'v', 0x0a, 0x61, b'p', 0x40]).is_err());
    }

    #[test]
    fn ids_are_single_use_after_their_terminal() {
        let c = Correlations::default();
        c.register(5).unwrap();
        assert!(c.register(5).is_err(), "active id reused");
        c.register(6).unwrap();
        c.on_sent(6, FLAG_TERMINAL);
        assert!(c.register(6).is_err(), "retired id reused");
    }
}
