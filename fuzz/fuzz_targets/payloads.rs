//! Payload CBOR from a hostile relay (or a buggy peer), decoded as every
//! payload type of the protocol.
//!
//! Checked beyond "no panic, no unbounded allocation": whatever decodes
//! re-encodes to bytes that decode to an equal value, and re-encoding that
//! value gives the same bytes again (the encoder is canonical).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use microsandbox_agent::protocol::payload::{
    legacy, CoreError, Data, Empty, ExecExited, ExecFailed, ExecOutputAck, ExecRequest, ExecResize,
    ExecSignal, ExecStarted, ExecStdinAck, ExecStdinError, FsRequest, FsResponse, Payload, Ready,
    TcpConnect, TcpFailed, Touched,
};

fn round_trip<P: Payload + PartialEq + std::fmt::Debug>(input: &Bytes) {
    let Ok(value) = P::decode(input) else {
        return;
    };
    let encoded = Bytes::from(value.to_bytes());
    let again = match P::decode(&encoded) {
        Ok(v) => v,
        Err(e) => panic!(
            "{}: canonical encoding of {value:?} does not decode: {e}",
            P::NAME
        ),
    };
    assert_eq!(again, value, "{}: round trip changed the value", P::NAME);
    assert_eq!(
        again.to_bytes(),
        encoded,
        "{}: encoding is not stable",
        P::NAME
    );
}

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    round_trip::<Ready>(&input);
    round_trip::<ExecRequest>(&input);
    round_trip::<ExecStarted>(&input);
    round_trip::<ExecExited>(&input);
    round_trip::<ExecSignal>(&input);
    round_trip::<ExecResize>(&input);
    round_trip::<Data>(&input);
    round_trip::<FsRequest>(&input);
    round_trip::<FsResponse>(&input);
    round_trip::<legacy::FsRequest>(&input);
    round_trip::<legacy::FsResponse>(&input);
    round_trip::<ExecFailed>(&input);
    round_trip::<ExecStdinError>(&input);
    round_trip::<ExecOutputAck>(&input);
    round_trip::<ExecStdinAck>(&input);
    round_trip::<TcpConnect>(&input);
    round_trip::<TcpFailed>(&input);
    round_trip::<Empty>(&input);
    round_trip::<Touched>(&input);
    round_trip::<CoreError>(&input);
});
