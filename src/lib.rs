//! Client for the microsandbox agent relay, with a C ABI.
//!
//! - [`protocol`]: the wire format (frames, message types, payloads); no I/O.
//! - [`client`]: the connection engine (handshake, id ranges, routing,
//!   backpressure, exec and fs conversations); blocking and async (tokio)
//!   forms, a private runtime thread only for passive waiters; no C in it.
//! - `ffi`: the `extern "C"` surface, a thin layer over the two above.

pub mod client;
pub mod ffi;
pub mod protocol;
