//! Client for the microsandbox agent relay, with a C ABI.
//!
//! - [`protocol`]: the wire format (frames, message types, payloads); no I/O.
//! - [`client`]: the connection engine (handshake, id ranges, routing,
//!   backpressure) on a private tokio runtime; no C in it.
//! - `ffi`: the `extern "C"` surface, a thin layer over the two above.

pub mod client;
pub mod ffi;
pub mod protocol;
