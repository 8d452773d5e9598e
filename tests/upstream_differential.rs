//! Our decoders against upstream's, on the same bytes: every payload of the
//! three vector files plus thousands of mutations of them (truncations,
//! byte changes, byte-string keys, indefinite-length containers, integer
//! arrays for byte strings, missing keys, values of the wrong type, unknown
//! keys holding invalid UTF-8). Both must reach the same verdict, and when
//! both accept, re-encoding the two values must give the same bytes.
//!
//! Where we differ on purpose, the comparison says so (see `Exception`).

use bytes::Bytes;
use ciborium::Value;
use microsandbox_agent::protocol::payload::{self, legacy, Payload};
use microsandbox_agent::protocol::{FrameDecoder, MessageType, FRAME_HEAD_SIZE};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Every recorded payload of a type (by wire name), from all three files.
fn vector_payloads(type_name: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for file in [
        "protocol-0.3.14.json",
        "protocol-0.6.14.json",
        "protocol-0.7.13.json",
    ] {
        let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for m in v["messages"].as_array().unwrap() {
            if m["type"] == type_name {
                out.push(hex(m["payload_cbor_hex"].as_str().unwrap()));
            }
        }
    }
    out
}

/// Every recorded frame body, for the envelope comparison.
fn vector_bodies() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for file in ["protocol-0.6.14.json", "protocol-0.7.13.json"] {
        let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for m in v["messages"].as_array().unwrap() {
            out.push(hex(m["frame_hex"].as_str().unwrap())[FRAME_HEAD_SIZE..].to_vec());
        }
    }
    out
}

// ------------------------------------------------------------ mutations

/// A CBOR writer for test inputs, able to write what ciborium never does:
/// indefinite lengths, byte-string keys, integer arrays for bytes.
#[derive(Clone, Copy, Default)]
struct Style {
    indefinite: bool,
    byte_keys: bool,
    bytes_as_arrays: bool,
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn write(v: &Value, style: Style, out: &mut Vec<u8>) {
    match v {
        Value::Integer(i) => {
            let i: i128 = (*i).into();
            if i >= 0 {
                head(out, 0, i as u64);
            } else {
                head(out, 1, (-1 - i) as u64);
            }
        }
        Value::Bytes(b) if style.bytes_as_arrays => {
            head(out, 4, b.len() as u64);
            for x in b {
                head(out, 0, *x as u64);
            }
        }
        Value::Bytes(b) if style.indefinite => {
            out.push(0x5f);
            for chunk in b.chunks(3) {
                head(out, 2, chunk.len() as u64);
                out.extend_from_slice(chunk);
            }
            out.push(0xff);
        }
        Value::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Text(s) if style.indefinite => {
            out.push(0x7f);
            head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
            out.push(0xff);
        }
        Value::Text(s) => {
            head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            if style.indefinite {
                out.push(0x9f);
            } else {
                head(out, 4, items.len() as u64);
            }
            for item in items {
                write(item, style, out);
            }
            if style.indefinite {
                out.push(0xff);
            }
        }
        Value::Map(entries) => {
            if style.indefinite {
                out.push(0xbf);
            } else {
                head(out, 5, entries.len() as u64);
            }
            for (k, val) in entries {
                match k {
                    Value::Text(s) if style.byte_keys => {
                        head(out, 2, s.len() as u64);
                        out.extend_from_slice(s.as_bytes());
                    }
                    _ => write(k, style, out),
                }
                write(val, style, out);
            }
            if style.indefinite {
                out.push(0xff);
            }
        }
        Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Value::Null => out.push(0xf6),
        Value::Tag(t, inner) => {
            head(out, 6, *t);
            write(inner, style, out);
        }
        Value::Float(f) => {
            out.push(0xfb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        other => panic!("unexpected value {other:?}"),
    }
}

/// The entries of one CBOR map.
type Entries = Vec<(Value, Value)>;

/// Each map in `v`, depth first, for targeted changes.
fn visit_maps(v: &mut Value, f: &mut dyn FnMut(&mut Entries)) {
    match v {
        Value::Map(entries) => {
            f(entries);
            for (_, val) in entries.iter_mut() {
                visit_maps(val, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| visit_maps(i, f)),
        Value::Tag(_, inner) => visit_maps(inner, f),
        _ => {}
    }
}

/// Number of map entries in `v`, all levels.
fn count_entries(v: &Value) -> usize {
    let mut v = v.clone();
    let mut n = 0;
    visit_maps(&mut v, &mut |e| n += e.len());
    n
}

/// Applies `change` to the `target`-th map entry (depth first).
fn change_entry(v: &Value, target: usize, change: &dyn Fn(&mut Entries, usize)) -> Value {
    let mut v = v.clone();
    let mut seen = 0;
    visit_maps(&mut v, &mut |entries| {
        if target >= seen && target < seen + entries.len() {
            change(entries, target - seen);
        }
        seen += entries.len();
    });
    v
}

fn encode(v: &Value, style: Style) -> Vec<u8> {
    let mut out = Vec::new();
    write(v, style, &mut out);
    out
}

/// The inputs derived from one canonical payload.
fn mutations(canonical: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![canonical.to_vec()];
    for len in 0..canonical.len() {
        out.push(canonical[..len].to_vec());
    }
    for i in 0..canonical.len().min(96) {
        for b in [
            0x00, 0x01, 0x17, 0x18, 0x20, 0x40, 0x41, 0x5f, 0x60, 0x61, 0x7f, 0x80, 0x81, 0x9f,
            0xa0, 0xa1, 0xbf, 0xc0, 0xf4, 0xf5, 0xf6, 0xf7, 0xfb, 0xff,
        ] {
            let mut changed = canonical.to_vec();
            changed[i] = b;
            out.push(changed);
        }
        let mut flipped = canonical.to_vec();
        flipped[i] ^= 0x01;
        out.push(flipped);
    }
    let mut trailing = canonical.to_vec();
    trailing.extend_from_slice(b"\xff\x00");
    out.push(trailing);

    let Ok(value) = ciborium::de::from_reader::<Value, _>(canonical) else {
        return out;
    };
    for style in [
        Style {
            indefinite: true,
            ..Style::default()
        },
        Style {
            byte_keys: true,
            ..Style::default()
        },
        Style {
            bytes_as_arrays: true,
            ..Style::default()
        },
        Style {
            indefinite: true,
            byte_keys: true,
            bytes_as_arrays: true,
        },
    ] {
        out.push(encode(&value, style));
    }
    let plain = Style::default();
    for target in 0..count_entries(&value) {
        // Missing key; value replaced by null, 0, -1, text, bytes, a map, a
        // large integer; an unknown key with invalid UTF-8 beside it; a
        // duplicate key; the key written as bytes.
        out.push(encode(
            &change_entry(&value, target, &|e, i| drop(e.remove(i))),
            plain,
        ));
        for replacement in [
            Value::Null,
            Value::Integer(0.into()),
            Value::Integer((-1).into()),
            Value::Integer(u64::MAX.into()),
            Value::Integer(70_000.into()),
            Value::Text("x".into()),
            Value::Text("not_found".into()),
            Value::Bytes(b"x".to_vec()),
            Value::Bool(true),
            Value::Map(vec![]),
            Value::Array(vec![]),
            Value::Map(vec![(Value::Text("x".into()), Value::Null)]),
        ] {
            out.push(encode(
                &change_entry(&value, target, &|e, i| e[i].1 = replacement.clone()),
                plain,
            ));
        }
        out.push(encode(
            &change_entry(&value, target, &|e, i| {
                let dup = e[i].clone();
                e.push(dup)
            }),
            plain,
        ));
        out.push(encode(
            &change_entry(&value, target, &|e, i| {
                let inner = Value::Tag(0, Box::new(e[i].1.clone()));
                e[i].1 = Value::Tag(0, Box::new(inner));
            }),
            plain,
        ));
        out.push(encode(
            &change_entry(&value, target, &|e, i| {
                if let Value::Text(k) = &e[i].0 {
                    e[i].0 = Value::Bytes(k.as_bytes().to_vec());
                }
            }),
            plain,
        ));
    }
    // An unknown key whose text value is not UTF-8: both decoders must read
    // it to skip it. Written by hand (ciborium's Value cannot hold it).
    if let Some((&first, rest)) = canonical.split_first() {
        if (0xa0..0xb7).contains(&first) {
            let mut with_junk = vec![first + 1, 0x61, b'~', 0x62, 0xff, 0xfe];
            with_junk.extend_from_slice(rest);
            out.push(with_junk);
            let mut with_skippable =
                vec![first + 1, 0x61, b'~', 0x82, 0x41, 0x00, 0xa1, 0x01, 0x02];
            with_skippable.extend_from_slice(rest);
            out.push(with_skippable);
        }
    }
    out
}

// ------------------------------------------------------------ comparison

/// Why a verdict may differ from upstream's: the only accepted differences.
#[derive(Debug, Default)]
struct Tally {
    agreed_accept: usize,
    agreed_reject: usize,
    /// We accept, upstream rejects, for a documented reason.
    exceptions: usize,
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

/// Compares one input. `normalise` maps our value onto what the upstream
/// type can hold (keys it does not have, names it folds); `exception` says
/// whether our acceptance of an input upstream refuses is intended, and
/// `newer_refuses` whether our refusal of an input it accepts is (see
/// `refused_by`).
fn compare<O, T>(
    label: &str,
    input: &[u8],
    normalise: &dyn Fn(O) -> O,
    exception: &dyn Fn(&O) -> bool,
    newer_refuses: &dyn Fn(&[u8]) -> bool,
    tally: &mut Tally,
) where
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
                "{label}: values differ on {input:02x?}\n ours {o:?}\n theirs {t:?}"
            );
            tally.agreed_accept += 1;
        }
        (Err(_), Err(_)) => tally.agreed_reject += 1,
        (Ok(o), Err(e)) => {
            assert!(
                exception(&o),
                "{label}: we accept what upstream refuses ({e:?}) on {input:02x?}: {o:?}"
            );
            tally.exceptions += 1;
        }
        (Err(e), Ok(t)) => {
            assert!(
                newer_refuses(input),
                "{label}: we refuse ({e}) what upstream accepts on {input:02x?}: {t:?}"
            );
            tally.exceptions += 1;
        }
    }
}

/// Exception for comparisons with an older upstream: it ignores keys that
/// later versions added, so it accepts them with values of any type. We
/// decode those keys as 0.7.13 does, so we refuse such an input exactly when
/// 0.7.13 (type `N`) refuses it too.
fn refused_by<N: DeserializeOwned>(input: &[u8]) -> bool {
    ciborium::de::from_reader::<N, _>(input).is_err()
}

fn run<O, T>(
    label: &str,
    types: &[&str],
    normalise: &dyn Fn(O) -> O,
    exception: &dyn Fn(&O) -> bool,
) -> Tally
where
    O: Payload + std::fmt::Debug,
    T: Serialize + DeserializeOwned + std::fmt::Debug,
{
    run_older::<O, T>(label, types, normalise, exception, &|_| false)
}

fn run_older<O, T>(
    label: &str,
    types: &[&str],
    normalise: &dyn Fn(O) -> O,
    exception: &dyn Fn(&O) -> bool,
    newer_refuses: &dyn Fn(&[u8]) -> bool,
) -> Tally
where
    O: Payload + std::fmt::Debug,
    T: Serialize + DeserializeOwned + std::fmt::Debug,
{
    let mut tally = Tally::default();
    let mut seeds = Vec::new();
    for t in types {
        seeds.extend(vector_payloads(t));
    }
    assert!(!seeds.is_empty(), "{label}: no vectors");
    for seed in &seeds {
        for input in mutations(seed) {
            compare::<O, T>(
                label,
                &input,
                normalise,
                exception,
                newer_refuses,
                &mut tally,
            );
        }
    }
    assert!(
        tally.agreed_accept > 0 && tally.agreed_reject > 0,
        "{label}: {tally:?}"
    );
    eprintln!("{label}: {tally:?}");
    tally
}

fn same<O>(o: O) -> O {
    o
}

fn never<O>(_: &O) -> bool {
    false
}

const DATA_TYPES: &[&str] = &[
    "core.exec.stdin",
    "core.exec.stdout",
    "core.exec.stderr",
    "core.fs.data",
    "core.tcp.data",
];

#[test]
fn exec_payloads_agree_with_every_upstream() {
    use payload::*;
    macro_rules! three {
        ($ours:ty, $theirs:ident, $types:expr) => {
            run::<$ours, upstream_p03::exec::$theirs>(
                concat!("0.3.14 ", stringify!($theirs)),
                $types,
                &same,
                &never,
            );
            run::<$ours, upstream_p06::exec::$theirs>(
                concat!("0.6.14 ", stringify!($theirs)),
                $types,
                &same,
                &never,
            );
            run::<$ours, upstream_p07::exec::$theirs>(
                concat!("0.7.13 ", stringify!($theirs)),
                $types,
                &same,
                &never,
            );
        };
    }
    three!(ExecRequest, ExecRequest, &["core.exec.request"]);
    three!(ExecStarted, ExecStarted, &["core.exec.started"]);
    three!(ExecExited, ExecExited, &["core.exec.exited"]);
    three!(ExecResize, ExecResize, &["core.exec.resize"]);
    three!(ExecSignal, ExecSignal, &["core.exec.signal"]);
    three!(Data, ExecStdout, DATA_TYPES);

    run::<ExecStdinError, upstream_p06::exec::ExecStdinError>(
        "0.6.14 ExecStdinError",
        &["core.exec.stdin.error"],
        &same,
        &never,
    );
    run::<ExecStdinError, upstream_p07::exec::ExecStdinError>(
        "0.7.13 ExecStdinError",
        &["core.exec.stdin.error"],
        &same,
        &never,
    );
    // Exception: a failure kind upstream does not know is kept as
    // `Unknown` (the exec still failed; refusing the frame would lose that).
    let unknown_kind = |f: &ExecFailed| matches!(f.kind, ExecFailureKind::Unknown(_));
    let t = run::<ExecFailed, upstream_p06::exec::ExecFailed>(
        "0.6.14 ExecFailed",
        &["core.exec.failed"],
        &same,
        &unknown_kind,
    );
    assert!(t.exceptions > 0, "the unknown-kind exception is exercised");
    run::<ExecFailed, upstream_p07::exec::ExecFailed>(
        "0.7.13 ExecFailed",
        &["core.exec.failed"],
        &same,
        &unknown_kind,
    );
    run::<ExecOutputAck, upstream_p07::exec::ExecOutputAck>(
        "0.7.13 ExecOutputAck",
        &["core.exec.output.ack"],
        &same,
        &never,
    );
    run::<ExecStdinAck, upstream_p07::exec::ExecStdinAck>(
        "0.7.13 ExecStdinAck",
        &["core.exec.stdin.ack"],
        &same,
        &never,
    );
}

#[test]
fn ready_agrees_with_every_upstream() {
    use payload::Ready;
    // Upstream's `Ready` has no `exec_control` (the relay adds it through a
    // wrapper type that upstream's decoder ignores); older ones lack the
    // 0.7 keys, and 0.3.14 `agent_version` too: those keys are cleared
    // before the values are compared.
    let up_to_0_7 = |mut r: Ready| {
        r.exec_control = None;
        r
    };
    let up_to_0_6 = |r: Ready| Ready {
        boot_time_ns: r.boot_time_ns,
        init_time_ns: r.init_time_ns,
        ready_time_ns: r.ready_time_ns,
        agent_version: r.agent_version,
        ..Ready::default()
    };
    let up_to_0_3 = |r: Ready| Ready {
        agent_version: String::new(),
        ..up_to_0_6(r)
    };
    let ready = &["core.ready"];
    let newer = refused_by::<upstream_p07::core::Ready>;
    run_older::<Ready, upstream_p03::core::Ready>(
        "0.3.14 Ready",
        ready,
        &up_to_0_3,
        &never,
        &newer,
    );
    run_older::<Ready, upstream_p06::core::Ready>(
        "0.6.14 Ready",
        ready,
        &up_to_0_6,
        &never,
        &newer,
    );
    run::<Ready, upstream_p07::core::Ready>("0.7.13 Ready", ready, &up_to_0_7, &never);
}

#[test]
fn legacy_fs_payloads_agree_with_0_3_14() {
    run::<legacy::FsRequest, upstream_p03::fs::FsRequest>(
        "0.3.14 FsRequest",
        &["core.fs.request"],
        &same,
        &never,
    );
    run::<legacy::FsResponse, upstream_p03::fs::FsResponse>(
        "0.3.14 FsResponse",
        &["core.fs.response"],
        &same,
        &never,
    );
}

/// Our FS request as 0.6.14 holds it: no `user` keys, no bulk offer.
fn without_0_7_keys(mut r: payload::FsRequest) -> payload::FsRequest {
    use payload::FsOp;
    r.bulk = None;
    match &mut r.op {
        FsOp::Mkdir { user, .. } | FsOp::Symlink { user, .. } => *user = None,
        FsOp::OpenFile { options, .. } => options.user = None,
        _ => {}
    }
    r
}

/// Our FS request as 0.7.13 writes it: the `user` keys always present.
fn with_user_keys(mut r: payload::FsRequest) -> payload::FsRequest {
    use payload::FsOp;
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

#[test]
fn current_fs_payloads_agree_with_0_6_14_and_0_7_13() {
    use payload::*;
    let request = &["core.fs.request"];
    run_older::<FsRequest, upstream_p06::fs::FsRequest>(
        "0.6.14 FsRequest",
        request,
        &without_0_7_keys,
        &never,
        &refused_by::<upstream_p07::fs::FsRequest>,
    );
    run::<FsRequest, upstream_p07::fs::FsRequest>(
        "0.7.13 FsRequest",
        request,
        &with_user_keys,
        &never,
    );
    let response = &["core.fs.response"];
    run::<FsResponse, upstream_p06::fs::FsResponse>("0.6.14 FsResponse", response, &same, &never);
    run::<FsResponse, upstream_p07::fs::FsResponse>("0.7.13 FsResponse", response, &same, &never);
}

#[test]
fn tcp_and_core_payloads_agree_with_0_6_14_and_0_7_13() {
    use payload::*;
    let connect = &["core.tcp.connect"];
    let no_bulk = |mut c: TcpConnect| {
        c.bulk = None;
        c
    };
    run_older::<TcpConnect, upstream_p06::tcp::TcpConnect>(
        "0.6.14 TcpConnect",
        connect,
        &no_bulk,
        &never,
        &refused_by::<upstream_p07::tcp::TcpConnect>,
    );
    run::<TcpConnect, upstream_p07::tcp::TcpConnect>("0.7.13 TcpConnect", connect, &same, &never);
    let failed = &["core.tcp.failed"];
    run::<TcpFailed, upstream_p06::tcp::TcpFailed>("0.6.14 TcpFailed", failed, &same, &never);
    run::<TcpFailed, upstream_p07::tcp::TcpFailed>("0.7.13 TcpFailed", failed, &same, &never);
    let empty = &[
        "core.tcp.connected",
        "core.tcp.eof",
        "core.tcp.close",
        "core.tcp.closed",
        "core.ping",
        "core.pong",
        "core.touch",
    ];
    run::<Empty, upstream_p06::tcp::TcpConnected>("0.6.14 {}", empty, &same, &never);
    run::<Empty, upstream_p07::core::Ping>("0.7.13 {}", empty, &same, &never);
    let touched = &["core.touched"];
    run::<Touched, upstream_p06::core::Touched>("0.6.14 Touched", touched, &same, &never);
    run::<Touched, upstream_p07::core::Touched>("0.7.13 Touched", touched, &same, &never);

    // Exceptions: a kind unknown to that upstream version is kept as
    // `Unknown` (0.6.14 also lacks the two kinds 0.7 added). 0.6.14 has no
    // `init_failure` or `workload_failure`; 0.7.13 folds unknown reasons
    // and dispositions into "unknown", which we keep as received.
    let new_in_0_7 = |e: &CoreError| {
        matches!(
            e.kind,
            CoreErrorKind::Unknown(_)
                | CoreErrorKind::InitializationFailed
                | CoreErrorKind::CapabilityUnavailable
        )
    };
    let unknown_kind = |e: &CoreError| matches!(e.kind, CoreErrorKind::Unknown(_));
    let as_0_6 = |mut e: CoreError| {
        e.init_failure = None;
        e.workload_failure = None;
        e
    };
    let as_0_7 = |mut e: CoreError| {
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
    };
    let error = &["core.error"];
    let t = run_older::<CoreError, upstream_p06::core::CoreError>(
        "0.6.14 CoreError",
        error,
        &as_0_6,
        &new_in_0_7,
        &refused_by::<upstream_p07::core::CoreError>,
    );
    assert!(t.exceptions > 0);
    let t = run::<CoreError, upstream_p07::core::CoreError>(
        "0.7.13 CoreError",
        error,
        &as_0_7,
        &unknown_kind,
    );
    assert!(t.exceptions > 0);
}

/// The envelope: our frame decoder (fast path and serde path) against the
/// 0.7.13 `Message`. Exceptions: we keep unknown `t` as `Unknown` where
/// upstream refuses the frame, and we tolerate a `v` that is missing or not
/// a `u8` (kept as 0 or saturated), as earlier releases of this library did.
#[test]
fn the_envelope_agrees_with_0_7_13() {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        #[allow(dead_code)]
        v: u8,
    }
    let mut tally = Tally::default();
    for seed in vector_bodies() {
        for body in mutations(&seed) {
            let mut frame = ((body.len() + 5) as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&[0, 0, 0, 7, 0]);
            frame.extend_from_slice(&body);
            let mut d = FrameDecoder::new();
            d.extend(&frame);
            let ours = d.next_frame().unwrap().unwrap().decode();
            let theirs = ciborium::de::from_reader::<upstream_p07::message::Message, _>(&body[..]);
            match (ours, theirs) {
                (Ok(o), Ok(t)) => {
                    assert_eq!(o.version, t.v, "{body:02x?}");
                    assert_eq!(o.message_type.as_str(), t.t.as_str(), "{body:02x?}");
                    assert_eq!(&o.payload[..], &t.p[..], "{body:02x?}");
                    tally.agreed_accept += 1;
                }
                (Err(_), Err(_)) => tally.agreed_reject += 1,
                (Ok(o), Err(e)) => {
                    let v_not_u8 = ciborium::de::from_reader::<VersionOnly, _>(&body[..]).is_err();
                    assert!(
                        o.message_type == MessageType::Unknown(o.message_type.as_str().into())
                            || v_not_u8,
                        "we accept what upstream refuses ({e:?}) on {body:02x?}: {o:?}"
                    );
                    tally.exceptions += 1;
                }
                (Err(e), Ok(t)) => {
                    panic!("we refuse ({e}) what upstream accepts on {body:02x?}: {t:?}")
                }
            }
        }
    }
    assert!(
        tally.agreed_accept > 200 && tally.agreed_reject > 1000,
        "{tally:?}"
    );
    eprintln!("envelope: {tally:?}");
}
