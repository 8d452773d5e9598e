//! Handle-based filesystem requests (0.6.14 and 0.7.13), and what each
//! release does with the other generation's request shapes.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use common::*;
use microsandbox_agent::protocol::payload::{
    legacy, CoreError, CoreErrorKind, Data, FsEntryInfo, FsOp, FsOpenOptions, FsRequest,
    FsResponse, FsResponseData, FsSetAttrs, Payload,
};
use microsandbox_agent::protocol::MessageType;

const CHUNK: usize = 3 * 1024 * 1024;

trait HandleFs {
    fn start_op(&mut self, op: FsOp) -> u32;
    fn op(&mut self, op: FsOp) -> FsResponse;
    fn ok(&mut self, op: FsOp) -> Option<FsResponseData>;
    fn open(&mut self, path: &str, options: FsOpenOptions) -> u64;
    fn read(
        &mut self,
        handle: u64,
        offset: u64,
        len: Option<u64>,
    ) -> (Vec<u8>, Vec<usize>, FsResponse);
    fn write(&mut self, handle: u64, offset: u64, len: Option<u64>, data: &[u8]) -> FsResponse;
}

impl HandleFs for Client {
    fn start_op(&mut self, op: FsOp) -> u32 {
        let id = self.next_id();
        self.send_payload(MessageType::FsRequest, id, &FsRequest::new(op));
        id
    }

    fn op(&mut self, op: FsOp) -> FsResponse {
        let id = self.start_op(op);
        let m = self.recv();
        assert_eq!(
            (m.id, m.message_type.clone()),
            (id, MessageType::FsResponse)
        );
        FsResponse::decode(&m.payload).unwrap()
    }

    fn ok(&mut self, op: FsOp) -> Option<FsResponseData> {
        let what = format!("{op:?}");
        let response = self.op(op);
        assert!(response.ok, "{what}: {:?}", response.error);
        response.data
    }

    fn open(&mut self, path: &str, options: FsOpenOptions) -> u64 {
        match self.ok(FsOp::OpenFile {
            path: path.into(),
            options,
        }) {
            Some(FsResponseData::Handle(h)) => h,
            other => panic!("open {path}: {other:?}"),
        }
    }

    fn read(
        &mut self,
        handle: u64,
        offset: u64,
        len: Option<u64>,
    ) -> (Vec<u8>, Vec<usize>, FsResponse) {
        let id = self.start_op(FsOp::Read {
            handle,
            offset,
            len,
        });
        let (mut data, mut chunks) = (Vec::new(), Vec::new());
        loop {
            let m = self.recv();
            assert_eq!(m.id, id);
            match m.message_type {
                MessageType::FsData => {
                    let chunk = Data::decode(&m.payload).unwrap().data;
                    chunks.push(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                MessageType::FsResponse => {
                    return (data, chunks, FsResponse::decode(&m.payload).unwrap())
                }
                other => panic!("{other} in a read"),
            }
        }
    }

    fn write(&mut self, handle: u64, offset: u64, len: Option<u64>, data: &[u8]) -> FsResponse {
        let id = self.start_op(FsOp::Write {
            handle,
            offset,
            len,
        });
        for piece in data.chunks(CHUNK) {
            self.send_data(MessageType::FsData, id, piece);
        }
        self.send_data(MessageType::FsData, id, &[]);
        let m = self.recv();
        assert_eq!((m.id, m.message_type), (id, MessageType::FsResponse));
        FsResponse::decode(&m.payload).unwrap()
    }
}

fn read_only() -> FsOpenOptions {
    FsOpenOptions {
        read: true,
        ..FsOpenOptions::default()
    }
}

fn create(mode: Option<u32>) -> FsOpenOptions {
    FsOpenOptions {
        write: true,
        create: true,
        truncate: true,
        mode,
        ..FsOpenOptions::default()
    }
}

fn stat(c: &mut Client, path: &str, follow_symlink: bool) -> FsEntryInfo {
    match c.ok(FsOp::Stat {
        path: path.into(),
        follow_symlink,
    }) {
        Some(FsResponseData::Stat(info)) => info,
        other => panic!("{other:?}"),
    }
}

fn write_then_read_round_trip(profile: &str) {
    let relay = Relay::start_profile("rw", profile, &["--quiet"]);
    let mut c = relay.connect();
    let content: Vec<u8> = (0..7_500_000u32).map(|i| (i % 253) as u8).collect();
    let h = c.open("/big.bin", create(Some(0o640)));
    let response = c.write(h, 0, Some(content.len() as u64), &content);
    assert!(response.ok, "{:?}", response.error);
    c.ok(FsOp::CloseHandle { handle: h });
    assert_eq!(std::fs::read(relay.root.join("big.bin")).unwrap(), content);
    let meta = std::fs::metadata(relay.root.join("big.bin")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640 & !umask());

    let h = c.open("/big.bin", read_only());
    let (data, chunks, response) = c.read(h, 0, None);
    assert!(response.ok);
    assert_eq!(data, content);
    assert!(chunks.iter().all(|&n| n > 0 && n <= CHUNK), "{chunks:?}");
    // A window of the file.
    let (data, _, _) = c.read(h, 1000, Some(10));
    assert_eq!(data, content[1000..1010]);
    // Past the end: no data, still ok, and no empty chunk.
    let (data, chunks, response) = c.read(h, content.len() as u64 + 5, None);
    assert!(response.ok && data.is_empty() && chunks.is_empty());
    // FStat sees the file.
    let Some(FsResponseData::Stat(info)) = c.ok(FsOp::FStat { handle: h }) else {
        panic!()
    };
    assert_eq!(
        (info.kind.as_str(), info.size),
        ("file", content.len() as u64)
    );
    assert_eq!(info.uid, meta_uid(&meta));
    assert_eq!(info.mtime, info.modified);
    assert!(info.atime.is_some());
    c.ok(FsOp::CloseHandle { handle: h });
    // A closed handle is gone.
    let response = c.op(FsOp::FStat { handle: h });
    assert_eq!(
        response.error.as_deref(),
        Some(format!("fstat: invalid handle: {h}").as_str())
    );
}

for_profiles!(write_then_read_round_trip: round_trip_0_6_14 = "0.6.14", round_trip_0_7_13 = "0.7.13");

fn umask() -> u32 {
    // SAFETY: umask only swaps the process's mask; it is put back at once.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    }
}

fn meta_uid(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::MetadataExt;
    meta.uid()
}

fn write_length_and_mode_rules(profile: &str) {
    let relay = Relay::start_profile("wlen", profile, &["--quiet"]);
    let mut c = relay.connect();
    let h = c.open("/f", create(None));
    let short = c.write(h, 0, Some(10), b"12345");
    assert_eq!(
        short.error.as_deref(),
        Some("write length mismatch: expected 10, wrote 5")
    );
    // Too long: refused at the chunk that overshoots; the end marker that
    // follows then belongs to no session.
    let id = c.start_op(FsOp::Write {
        handle: h,
        offset: 0,
        len: Some(3),
    });
    c.send_data(MessageType::FsData, id, b"12345");
    c.send_data(MessageType::FsData, id, b"");
    for expected in [
        "write length mismatch: expected 3, received at least 5".to_string(),
        format!("unknown write session: {id}"),
    ] {
        let m = c.recv();
        assert_eq!((m.id, m.message_type), (id, MessageType::FsResponse));
        assert_eq!(
            FsResponse::decode(&m.payload).unwrap().error.unwrap(),
            expected
        );
    }
    // Offsets write in place.
    assert!(c.write(h, 0, None, b"abcdef").ok);
    assert!(c.write(h, 2, Some(2), b"XY").ok);
    c.ok(FsOp::CloseHandle { handle: h });
    assert_eq!(std::fs::read(relay.root.join("f")).unwrap(), b"abXYef");
    // Reading needs a read handle, writing a write handle.
    let h = c.open("/f", create(None));
    let response = c.read(h, 0, None).2;
    assert_eq!(
        response.error.unwrap(),
        format!("read: handle {h} is not open for reading")
    );
    let r = c.open("/f", read_only());
    // A Write that fails is answered at once, before any data.
    let response = c.op(FsOp::Write {
        handle: r,
        offset: 0,
        len: None,
    });
    assert_eq!(
        response.error.unwrap(),
        format!("write: handle {r} is not open for writing")
    );
    // Data for no write session.
    let id = c.next_id();
    c.send_data(MessageType::FsData, id, b"stray");
    let m = c.recv();
    let response = FsResponse::decode(&m.payload).unwrap();
    assert_eq!(
        response.error.unwrap(),
        format!("unknown write session: {id}")
    );
}

for_profiles!(write_length_and_mode_rules: wlen_0_6_14 = "0.6.14", wlen_0_7_13 = "0.7.13");

fn path_operations(profile: &str) {
    let relay = Relay::start_profile("paths", profile, &["--quiet"]);
    let mut c = relay.connect();
    c.ok(FsOp::Mkdir {
        path: "/d/e".into(),
        mode: Some(0o700),
        user: None,
    });
    let mode = std::fs::metadata(relay.root.join("d/e"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    std::fs::write(relay.root.join("d/e/file"), b"hello").unwrap();
    c.ok(FsOp::Symlink {
        target: "e/file".into(),
        link_path: "/d/link".into(),
        user: None,
    });
    assert_eq!(
        c.ok(FsOp::ReadLink {
            path: "/d/link".into()
        }),
        Some(FsResponseData::Path("e/file".into()))
    );
    assert_eq!(
        c.ok(FsOp::RealPath {
            path: "/d/link".into()
        }),
        Some(FsResponseData::Path("/d/e/file".into()))
    );
    assert_eq!(stat(&mut c, "/d/link", false).kind, "symlink");
    let followed = stat(&mut c, "/d/link", true);
    assert_eq!((followed.kind.as_str(), followed.size), ("file", 5));
    // SetStat: mode, size and times.
    c.ok(FsOp::SetStat {
        path: "/d/e/file".into(),
        follow_symlink: true,
        attrs: FsSetAttrs {
            mode: Some(0o600),
            size: Some(2),
            mtime: Some(1_000_000_000),
            ..FsSetAttrs::default()
        },
    });
    let info = stat(&mut c, "/d/e/file", true);
    assert_eq!(
        (info.mode & 0o777, info.size, info.mtime),
        (0o600, 2, Some(1_000_000_000))
    );
    // List and ReadDir.
    let Some(FsResponseData::List(entries)) = c.ok(FsOp::List { path: "/d".into() }) else {
        panic!()
    };
    let mut names: Vec<_> = entries.iter().map(|e| e.path.clone()).collect();
    names.sort();
    assert_eq!(names, ["/d/e", "/d/link"]);
    for i in 0..300 {
        std::fs::write(relay.root.join(format!("d/e/n{i}")), b"").unwrap();
    }
    let Some(FsResponseData::Handle(dir)) = c.ok(FsOp::OpenDir {
        path: "/d/e".into(),
    }) else {
        panic!()
    };
    let mut seen = 0;
    let mut batches = Vec::new();
    loop {
        let Some(FsResponseData::List(batch)) = c.ok(FsOp::ReadDir {
            handle: dir,
            limit: None,
        }) else {
            panic!()
        };
        if batch.is_empty() {
            break;
        }
        batches.push(batch.len());
        seen += batch.len();
    }
    assert_eq!(seen, 301);
    assert_eq!(batches[0], 128, "default limit");
    let Some(FsResponseData::List(batch)) = c.ok(FsOp::ReadDir {
        handle: dir,
        limit: Some(5),
    }) else {
        panic!()
    };
    assert!(batch.is_empty(), "still at the end");
    c.ok(FsOp::CloseHandle { handle: dir });
    // Copy, Rename, Remove, RemoveDir (recursive or not).
    c.ok(FsOp::Copy {
        src: "/d/e/file".into(),
        dst: "/copy".into(),
    });
    c.ok(FsOp::Rename {
        src: "/copy".into(),
        dst: "/moved".into(),
    });
    assert_eq!(std::fs::read(relay.root.join("moved")).unwrap(), b"he");
    c.ok(FsOp::Remove {
        path: "/moved".into(),
    });
    let refused = c.op(FsOp::RemoveDir {
        path: "/d".into(),
        recursive: false,
    });
    let error = refused.error.unwrap();
    assert!(
        error.starts_with("remove_dir: ") && error.ends_with("(os error 39)"),
        "{error}"
    );
    c.ok(FsOp::RemoveDir {
        path: "/d".into(),
        recursive: true,
    });
    assert!(!relay.root.join("d").exists());
    // Errors carry agentd's prefix and the errno.
    let missing = c.op(FsOp::Stat {
        path: "/nope".into(),
        follow_symlink: false,
    });
    assert_eq!(
        missing.error.unwrap(),
        "stat: No such file or directory (os error 2)"
    );
    let missing = c.op(FsOp::OpenFile {
        path: "/nope".into(),
        options: read_only(),
    });
    assert_eq!(
        missing.error.unwrap(),
        "open: No such file or directory (os error 2)"
    );
    let missing = c.op(FsOp::OpenDir {
        path: "/nope".into(),
    });
    assert_eq!(
        missing.error.unwrap(),
        "opendir: No such file or directory (os error 2)"
    );
    // Paths cannot leave the root.
    let escape = c.op(FsOp::Stat {
        path: "/../etc/passwd".into(),
        follow_symlink: true,
    });
    assert!(escape.error.unwrap().starts_with("stat: "));
}

for_profiles!(path_operations: paths_0_6_14 = "0.6.14", paths_0_7_13 = "0.7.13");

fn handles_belong_to_their_client(profile: &str) {
    let relay = Relay::start_profile("owner", profile, &["--quiet"]);
    std::fs::write(relay.root.join("f"), b"mine").unwrap();
    let mut a = relay.connect();
    let mut b = relay.connect();
    let h = a.open("/f", read_only());
    let stolen = b.read(h, 0, None).2;
    assert_eq!(
        stolen.error.unwrap(),
        format!("read: handle {h} is owned by a different relay client")
    );
    assert_eq!(a.read(h, 0, None).0, b"mine");
    // A disconnect closes the client's handles: a new client in the same
    // slot cannot use them.
    drop(a);
    let mut again = None;
    assert!(wait_until(TIMEOUT, || {
        let c = relay.connect();
        let first_slot = c.id_start == 1;
        again = Some(c);
        first_slot
    }));
    let mut a2 = again.unwrap();
    let response = a2.op(FsOp::FStat { handle: h });
    assert_eq!(
        response.error.unwrap(),
        format!("fstat: invalid handle: {h}")
    );
}

for_profiles!(handles_belong_to_their_client: owner_0_6_14 = "0.6.14", owner_0_7_13 = "0.7.13");

#[test]
fn a_client_holds_at_most_1024_handles() {
    let relay = Relay::start_profile("limit", "0.7.13", &["--quiet"]);
    std::fs::write(relay.root.join("f"), b"x").unwrap();
    let mut c = relay.connect();
    let mut other = relay.connect();
    let handles: Vec<u64> = (0..1024).map(|_| c.open("/f", read_only())).collect();
    let refused = c.op(FsOp::OpenFile {
        path: "/f".into(),
        options: read_only(),
    });
    assert_eq!(
        refused.error.unwrap(),
        "open: too many open filesystem handles for relay client: 1024"
    );
    // The limit is per client.
    other.open("/f", read_only());
    c.ok(FsOp::CloseHandle { handle: handles[0] });
    c.open("/f", read_only());
}

#[test]
fn legacy_shapes_get_core_error_on_current_agents() {
    for profile in ["0.6.14", "0.7.13"] {
        let relay = Relay::start_profile("legacy-shape", profile, &["--quiet"]);
        let mut c = relay.connect();
        let id = c.next_id();
        let old = legacy::FsRequest {
            op: legacy::FsOp::Read { path: "/f".into() },
        };
        c.send_payload(MessageType::FsRequest, id, &old);
        let m = c.recv();
        assert_eq!((m.id, m.message_type), (id, MessageType::CoreError));
        let error = CoreError::decode(&m.payload).unwrap();
        assert_eq!(error.kind, CoreErrorKind::InvalidPayload);
        assert_eq!(error.offending_type.as_deref(), Some("core.fs.request"));
        assert!(error.message.contains("handle"), "{}", error.message);
        // A 0.3.14 Stat (no follow_symlink) likewise.
        let id = c.next_id();
        let old = legacy::FsRequest {
            op: legacy::FsOp::Stat { path: "/".into() },
        };
        c.send_payload(MessageType::FsRequest, id, &old);
        let m = c.recv();
        assert_eq!((m.id, m.message_type), (id, MessageType::CoreError));
    }
}

#[test]
fn current_shapes_kill_a_0_3_14_agent() {
    let mut relay = Relay::start_profile("new-shape", "0.3.14", &["--quiet"]);
    let mut c = relay.connect();
    let id = c.next_id();
    let new = FsRequest::new(FsOp::OpenFile {
        path: "/f".into(),
        options: read_only(),
    });
    c.send_payload(MessageType::FsRequest, id, &new);
    assert_eq!(relay.wait_exit(TIMEOUT), Some(1));
    assert!(sees_eof(&mut c.stream, TIMEOUT));
}

#[test]
fn a_bulk_offer_is_refused_with_ok_false() {
    let relay = Relay::start_profile("bulk", "0.7.13", &["--quiet"]);
    std::fs::write(relay.root.join("f"), b"x").unwrap();
    let mut c = relay.connect();
    let h = c.open("/f", read_only());
    let id = c.next_id();
    let mut request = FsRequest::new(FsOp::Read {
        handle: h,
        offset: 0,
        len: None,
    });
    request.bulk = Some(microsandbox_agent::protocol::payload::BulkOffer {
        format: 1,
        max_record_payload: 3 * 1024 * 1024,
        guest_to_host_credit_limit: 8 * 1024 * 1024,
    });
    c.send_payload(MessageType::FsRequest, id, &request);
    let m = c.recv();
    assert_eq!((m.id, m.message_type), (id, MessageType::FsResponse));
    assert!(!FsResponse::decode(&m.payload).unwrap().ok);
    c.stream.flush().unwrap();
}
