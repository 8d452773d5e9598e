//! Arbitrary bytes fed to our decoders and to upstream's (0.3.14 for the
//! legacy FS shapes, 0.7.13 otherwise): both must reach the same verdict,
//! and when both accept, re-encoding both values must give the same bytes.
//!
//! The deliberate differences are the ones `tests/upstream_differential.rs`
//! lists: unknown failure/error kinds are kept (upstream refuses them),
//! unknown reasons and dispositions keep their name (upstream folds them to
//! "unknown"), `exec_control` is kept in `Ready` (upstream's type drops it),
//! 0.7.13 writes the FS `user` keys always, and the envelope tolerates an
//! unknown `t` and a `v` that is not a `u8`.
//!
//! Input layout: byte 0 picks the decoder pair, the rest is the input.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use microsandbox_agent::protocol::payload::{
    legacy, CoreError, CoreErrorKind, Data, ExecFailed, ExecFailureKind, ExecRequest, FsOp,
    FsRequest, FsResponse, InitFailureReason, Payload, Ready, TcpConnect, WorkloadFailure,
    WorkloadFailureDisposition,
};
use microsandbox_agent::protocol::{MessageType, RawFrame};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

fn compare<O, T>(input: &[u8], normalise: impl Fn(O) -> O, exception: impl Fn(&O) -> bool)
where
    O: Payload + std::fmt::Debug,
    T: Serialize + DeserializeOwned + std::fmt::Debug,
{
    let ours = O::decode(&Bytes::copy_from_slice(input));
    let theirs = ciborium::de::from_reader::<T, _>(input);
    match (ours, theirs) {
        (Ok(o), Ok(t)) => {
            let o = normalise(o);
            assert_eq!(
                o.to_bytes(),
                cbor(&t),
                "{}: ours {o:?}, theirs {t:?}",
                O::NAME
            );
        }
        (Err(_), Err(_)) => {}
        (Ok(o), Err(e)) => assert!(exception(&o), "{}: upstream refuses ({e:?}) {o:?}", O::NAME),
        (Err(e), Ok(t)) => panic!("{}: we refuse ({e}) what upstream accepts: {t:?}", O::NAME),
    }
}

fn with_user_keys(mut r: FsRequest) -> FsRequest {
    match &mut r.op {
        FsOp::Mkdir { user, .. } | FsOp::Symlink { user, .. } => {
            user.get_or_insert(None);
        }
        FsOp::OpenFile { options, .. } => {
            options.user.get_or_insert(None);
        }
        _ => {}
    }
    r
}

fn fold_unknown_names(mut e: CoreError) -> CoreError {
    if let Some(InitFailureReason::Unknown(s)) = &mut e.init_failure {
        *s = "unknown".into();
    }
    if let Some(WorkloadFailure {
        disposition: WorkloadFailureDisposition::Unknown(s),
        ..
    }) = &mut e.workload_failure
    {
        *s = "unknown".into();
    }
    e
}

fn envelope(body: &[u8]) {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        #[allow(dead_code)]
        v: u8,
    }
    let raw = RawFrame {
        id: 1,
        flags: 0,
        body: Bytes::copy_from_slice(body),
    };
    let ours = raw.decode();
    let theirs = ciborium::de::from_reader::<upstream_p07::message::Message, _>(body);
    match (ours, theirs) {
        (Ok(o), Ok(t)) => {
            assert_eq!(o.version, t.v);
            assert_eq!(o.message_type.as_str(), t.t.as_str());
            assert_eq!(&o.payload[..], &t.p[..]);
        }
        (Err(_), Err(_)) => {}
        (Ok(o), Err(e)) => {
            let unknown = matches!(o.message_type, MessageType::Unknown(_));
            let v_not_u8 = ciborium::de::from_reader::<VersionOnly, _>(body).is_err();
            assert!(
                unknown || v_not_u8,
                "envelope: upstream refuses ({e:?}) {o:?}"
            );
        }
        (Err(e), Ok(t)) => panic!("envelope: we refuse ({e}) what upstream accepts: {t:?}"),
    }
}

fn same<O>(o: O) -> O {
    o
}

fn never<O>(_: &O) -> bool {
    false
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    match pick % 8 {
        0 => envelope(input),
        1 => compare::<Data, upstream_p07::exec::ExecStdout>(input, same, never),
        2 => compare::<ExecRequest, upstream_p07::exec::ExecRequest>(input, same, never),
        3 => compare::<ExecFailed, upstream_p07::exec::ExecFailed>(input, same, |f| {
            matches!(f.kind, ExecFailureKind::Unknown(_))
        }),
        4 => compare::<FsRequest, upstream_p07::fs::FsRequest>(input, with_user_keys, never),
        5 => compare::<FsResponse, upstream_p07::fs::FsResponse>(input, same, never),
        6 => {
            compare::<legacy::FsRequest, upstream_p03::fs::FsRequest>(input, same, never);
            compare::<legacy::FsResponse, upstream_p03::fs::FsResponse>(input, same, never);
            compare::<TcpConnect, upstream_p07::tcp::TcpConnect>(input, same, never);
        }
        _ => {
            compare::<Ready, upstream_p07::core::Ready>(
                input,
                |mut r: Ready| {
                    r.exec_control = None;
                    r
                },
                never,
            );
            compare::<CoreError, upstream_p07::core::CoreError>(input, fold_unknown_names, |e| {
                matches!(e.kind, CoreErrorKind::Unknown(_))
            });
        }
    }
});
