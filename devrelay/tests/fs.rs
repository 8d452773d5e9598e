//! Filesystem requests inside the relay's root.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};

use common::*;
use microsandbox_agent::protocol::payload::legacy::{FsOp, FsResponse, FsResponseData};
use microsandbox_agent::protocol::payload::Payload;
use microsandbox_agent::protocol::{MessageType, FS_CHUNK_SIZE};

fn stat(c: &mut Client, path: &str) -> FsResponse {
    c.fs(FsOp::Stat { path: path.into() })
}

fn assert_ok(resp: &FsResponse) {
    assert!(resp.ok, "expected ok, got {:?}", resp.error);
    assert_eq!(resp.error, None);
}

fn assert_err(resp: &FsResponse, needle: &str) {
    assert!(!resp.ok, "expected an error mentioning {needle:?}");
    let error = resp.error.as_deref().unwrap_or("");
    assert!(error.contains(needle), "{error:?} mentions {needle:?}");
}

#[test]
fn stat_reports_kind_mode_size_and_mtime_without_following_symlinks() {
    let relay = Relay::start("stat");
    let mut c = relay.connect();
    let file = relay.root.join("a.txt");
    std::fs::write(&file, b"12345").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(relay.root.join("d")).unwrap();
    symlink("a.txt", relay.root.join("link")).unwrap();

    let resp = stat(&mut c, "/a.txt");
    assert_ok(&resp);
    let Some(FsResponseData::Stat(info)) = resp.data else {
        panic!("no stat data")
    };
    assert_eq!(info.path, "/a.txt");
    assert_eq!(info.kind, "file");
    assert_eq!(info.size, 5);
    assert_eq!(info.mode, 0o100644);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - info.modified.unwrap()).abs() < 60);

    let Some(FsResponseData::Stat(dir)) = stat(&mut c, "/d").data else {
        panic!()
    };
    assert_eq!(dir.kind, "dir");
    assert_eq!(dir.mode & 0o170000, 0o040000);
    let Some(FsResponseData::Stat(link)) = stat(&mut c, "/link").data else {
        panic!()
    };
    assert_eq!(link.kind, "symlink");
    assert_eq!(link.mode & 0o170000, 0o120000);
    let Some(FsResponseData::Stat(root)) = stat(&mut c, "/").data else {
        panic!()
    };
    assert_eq!(root.kind, "dir");
    assert_err(&stat(&mut c, "/missing"), "/missing");
}

#[test]
fn list_gives_immediate_children_with_guest_paths() {
    let relay = Relay::start("list");
    let mut c = relay.connect();
    std::fs::create_dir_all(relay.root.join("dir/sub/deeper")).unwrap();
    std::fs::write(relay.root.join("dir/f1"), b"x").unwrap();
    symlink("/etc", relay.root.join("dir/ln")).unwrap();
    let resp = c.fs(FsOp::List {
        path: "/dir".into(),
    });
    assert_ok(&resp);
    let Some(FsResponseData::List(mut entries)) = resp.data else {
        panic!("no list data")
    };
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let summary: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("/dir/f1", "file"),
            ("/dir/ln", "symlink"),
            ("/dir/sub", "dir")
        ]
    );
    let Some(FsResponseData::List(root)) = c.fs(FsOp::List { path: "/".into() }).data else {
        panic!()
    };
    assert_eq!(root.len(), 1);
    assert_eq!(root[0].path, "/dir");
    assert_err(
        &c.fs(FsOp::List {
            path: "/dir/f1".into(),
        }),
        "/dir/f1",
    );
    assert_err(
        &c.fs(FsOp::List {
            path: "/nope".into(),
        }),
        "/nope",
    );
}

#[test]
fn small_write_then_read_roundtrip_with_mode() {
    let relay = Relay::start("rw");
    let mut c = relay.connect();
    assert_ok(&c.write_file("/hello.txt", Some(0o600), b"hi there", 1 << 20));
    let host = relay.root.join("hello.txt");
    assert_eq!(std::fs::read(&host).unwrap(), b"hi there");
    assert_eq!(
        std::fs::metadata(&host).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (data, chunks, resp) = c.read_file("/hello.txt");
    assert_ok(&resp);
    assert_eq!(data, b"hi there");
    assert_eq!(chunks, vec![8]);
    // Overwrite truncates; no mode keeps the existing one.
    assert_ok(&c.write_file("/hello.txt", None, b"x", 1 << 20));
    assert_eq!(std::fs::read(&host).unwrap(), b"x");
    assert_eq!(
        std::fs::metadata(&host).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Empty file: request then EOF only.
    assert_ok(&c.write_file("/empty", None, b"", 1));
    let (data, chunks, resp) = c.read_file("/empty");
    assert_ok(&resp);
    assert!(data.is_empty() && chunks.is_empty());
}

#[test]
fn big_files_go_in_chunks_both_ways() {
    let relay = Relay::start("big");
    let mut c = relay.connect();
    let size = 3 * FS_CHUNK_SIZE + 12_345;
    let content: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
    assert_ok(&c.write_file("/big.bin", None, &content, FS_CHUNK_SIZE));
    assert_eq!(std::fs::read(relay.root.join("big.bin")).unwrap(), content);
    // Larger than the relay's flush threshold, in smaller pieces.
    let size2 = 20 * 1024 * 1024 + 3;
    let content2: Vec<u8> = (0..size2).map(|i| (i % 253) as u8).collect();
    assert_ok(&c.write_file("/big2.bin", None, &content2, 1024 * 1024 + 1));
    assert_eq!(
        std::fs::read(relay.root.join("big2.bin")).unwrap(),
        content2
    );

    let (data, chunks, resp) = c.read_file("/big.bin");
    assert_ok(&resp);
    assert!(data == content, "read back what was written");
    assert!(chunks.len() >= 2);
    assert!(
        chunks.iter().all(|&n| n > 0 && n <= 2 * 1024 * 1024),
        "{chunks:?}"
    );
}

#[test]
fn mkdir_remove_removedir_copy_rename() {
    let relay = Relay::start("ops");
    let mut c = relay.connect();
    assert_ok(&c.fs(FsOp::Mkdir {
        path: "/a/b/c".into(),
    }));
    assert!(relay.root.join("a/b/c").is_dir());
    assert_ok(&c.fs(FsOp::Mkdir {
        path: "/a/b/c".into(),
    }));

    assert_ok(&c.write_file("/a/b/c/f", Some(0o640), b"data", 100));
    assert_ok(&c.fs(FsOp::Copy {
        src: "/a/b/c/f".into(),
        dst: "/a/copy".into(),
    }));
    assert_eq!(std::fs::read(relay.root.join("a/copy")).unwrap(), b"data");
    assert_ok(&c.fs(FsOp::Rename {
        src: "/a/copy".into(),
        dst: "/moved".into(),
    }));
    assert!(!relay.root.join("a/copy").exists());
    assert_eq!(std::fs::read(relay.root.join("moved")).unwrap(), b"data");

    assert_ok(&c.fs(FsOp::Remove {
        path: "/moved".into(),
    }));
    assert!(!relay.root.join("moved").exists());
    assert_err(
        &c.fs(FsOp::Remove {
            path: "/moved".into(),
        }),
        "/moved",
    );
    assert_err(&c.fs(FsOp::Remove { path: "/a".into() }), "/a");

    assert_ok(&c.fs(FsOp::RemoveDir { path: "/a".into() }));
    assert!(!relay.root.join("a").exists());
    assert_err(&c.fs(FsOp::RemoveDir { path: "/a".into() }), "/a");
    assert_err(&c.fs(FsOp::RemoveDir { path: "/".into() }), "root");
    assert!(relay.root.is_dir());
    assert_err(
        &c.fs(FsOp::Copy {
            src: "/none".into(),
            dst: "/x".into(),
        }),
        "/none",
    );
    assert_err(
        &c.fs(FsOp::Rename {
            src: "/none".into(),
            dst: "/x".into(),
        }),
        "/none",
    );
}

#[test]
fn errors_are_ok_false_with_the_path() {
    let relay = Relay::start("errors");
    let mut c = relay.connect();
    let (data, _, resp) = c.read_file("/no/such/file");
    assert!(data.is_empty());
    assert_err(&resp, "/no/such/file");
    std::fs::create_dir(relay.root.join("dir")).unwrap();
    let (_, _, resp) = c.read_file("/dir");
    assert_err(&resp, "directory");
    assert_err(
        &c.write_file("/missing-dir/f", None, b"x", 10),
        "/missing-dir/f",
    );
    assert_err(&c.write_file("/dir", None, b"x", 10), "/dir");
}

#[test]
fn paths_cannot_escape_the_root() {
    let relay = Relay::start("escape");
    let mut c = relay.connect();
    // Something to find if an escape worked.
    std::fs::write(relay.dir.path().join("outside.txt"), b"secret").unwrap();
    symlink("/etc", relay.root.join("etc-link")).unwrap();
    symlink("../outside.txt", relay.root.join("up-link")).unwrap();
    std::fs::create_dir(relay.root.join("inner")).unwrap();
    std::fs::write(relay.root.join("inner/ok.txt"), b"fine").unwrap();
    symlink("inner", relay.root.join("inner-link")).unwrap();

    for path in [
        "/../outside.txt",
        "../../etc/passwd",
        "/inner/../../outside.txt",
    ] {
        let (data, _, resp) = c.read_file(path);
        assert!(data.is_empty());
        assert_err(&resp, "..");
    }
    for path in ["/etc-link/passwd", "/up-link"] {
        let (data, _, resp) = c.read_file(path);
        assert!(data.is_empty(), "{path}");
        assert_err(&resp, "outside");
    }
    assert_err(
        &c.fs(FsOp::List {
            path: "/etc-link".into(),
        }),
        "outside",
    );
    assert_err(&c.write_file("/up-link", None, b"pwned", 10), "outside");
    assert_eq!(
        std::fs::read(relay.dir.path().join("outside.txt")).unwrap(),
        b"secret"
    );
    assert_err(&c.write_file("/etc-link/x", None, b"pwned", 10), "outside");
    assert_err(
        &c.fs(FsOp::Mkdir {
            path: "/etc-link/newdir".into(),
        }),
        "outside",
    );
    assert_err(
        &c.fs(FsOp::Copy {
            src: "/inner/ok.txt".into(),
            dst: "/up-link".into(),
        }),
        "outside",
    );
    // Stat does not follow the final symlink, so it is allowed and says so.
    let Some(FsResponseData::Stat(info)) = stat(&mut c, "/etc-link").data else {
        panic!()
    };
    assert_eq!(info.kind, "symlink");
    // Symlinks that stay inside work.
    let (data, _, resp) = c.read_file("/inner-link/ok.txt");
    assert_ok(&resp);
    assert_eq!(data, b"fine");
    // Relative guest paths are taken from the root.
    let (data, _, _) = c.read_file("inner/ok.txt");
    assert_eq!(data, b"fine");
}

#[test]
fn write_chunks_interleave_with_other_requests() {
    let relay = Relay::start("interleave");
    let mut c = relay.connect();
    std::fs::write(relay.root.join("other"), b"o").unwrap();
    let write_id = c.start_fs(FsOp::Write {
        path: "/w".into(),
        mode: None,
    });
    c.send_data(MessageType::FsData, write_id, b"part1-");
    let stat_resp = stat(&mut c, "/other");
    assert_ok(&stat_resp);
    c.send_data(MessageType::FsData, write_id, b"part2");
    c.send_data(MessageType::FsData, write_id, b"");
    let m = c.recv();
    assert_eq!((m.id, m.message_type), (write_id, MessageType::FsResponse));
    assert_ok(&FsResponse::decode(&m.payload).unwrap());
    assert_eq!(std::fs::read(relay.root.join("w")).unwrap(), b"part1-part2");
    // Data for an id with no Write in progress is ignored.
    c.send_data(MessageType::FsData, write_id + 100, b"stray");
    assert_ok(&stat(&mut c, "/w"));
}

#[test]
fn default_root_is_a_fresh_temporary_directory() {
    let dir = TempDir::new("tmproot");
    let socket = dir.path().join("s.sock");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_msb-devrelay"));
    command
        .args(["--profile", "0.3.14", "--socket"])
        .arg(&socket)
        .env("TMPDIR", dir.path());
    let relay = Relay::spawn(command, dir, socket, Default::default());
    let mut c = relay.connect();
    assert_ok(&c.write_file("/marker", None, b"m", 10));
    let roots: Vec<_> = std::fs::read_dir(relay.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("msb-devrelay-root")
        })
        .collect();
    assert_eq!(roots.len(), 1);
    assert_eq!(std::fs::read(roots[0].join("marker")).unwrap(), b"m");
    let Some(FsResponseData::List(entries)) = c.fs(FsOp::List { path: "/".into() }).data else {
        panic!()
    };
    assert_eq!(entries.len(), 1, "starts empty");
}
