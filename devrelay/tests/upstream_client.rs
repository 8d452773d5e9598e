//! Upstream's own 0.7.13 agent client, through its public API, against the
//! devrelay's 0.6.14 and 0.7.13 profiles: a command with its stdout and exit
//! code, and a file written and read back through handle-based FS requests.

mod common;

use std::time::Duration;

use common::*;
use microsandbox_agent_client::{AgentClient, TypedMessage};
use microsandbox_protocol::exec::{ExecExited, ExecOutputAck, ExecRequest, ExecStdout};
use microsandbox_protocol::fs::{
    FsData, FsOp, FsOpenOptions, FsRequest, FsResponse, FsResponseData,
};
use microsandbox_protocol::message::MessageType;

fn open_options(read: bool) -> FsOpenOptions {
    FsOpenOptions {
        read,
        write: !read,
        append: false,
        create: !read,
        truncate: !read,
        create_new: false,
        mode: Some(0o644),
        user: None,
    }
}

async fn fs(client: &AgentClient, op: FsOp) -> FsResponse {
    let request = FsRequest { op, bulk: None };
    let reply = client
        .request(TypedMessage::new(MessageType::FsRequest, &request))
        .await
        .unwrap();
    assert_eq!(reply.t, "core.fs.response");
    let response: FsResponse = reply.payload().unwrap();
    assert!(response.ok, "{:?}", response.error);
    response
}

async fn open(client: &AgentClient, path: &str, read: bool) -> u64 {
    let op = FsOp::OpenFile {
        path: path.into(),
        options: open_options(read),
    };
    match fs(client, op).await.data {
        Some(FsResponseData::Handle(handle)) => handle,
        other => panic!("open {path}: {other:?}"),
    }
}

async fn run_command(client: &AgentClient, controlled: bool) -> (Vec<u8>, i32) {
    let request = ExecRequest {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), "echo upstream says hi; exit 3".into()],
        env: vec![],
        cwd: None,
        user: None,
        tty: false,
        rows: 24,
        cols: 80,
        rlimits: vec![],
    };
    let stream = client
        .stream(TypedMessage::new(MessageType::ExecRequest, &request))
        .await
        .unwrap();
    let id = stream.id();
    let (_sender, mut receiver) = stream.into_parts();
    let mut stdout = Vec::new();
    let mut code = None;
    let mut ack = ExecOutputAck::default();
    while let Some(message) = receiver.recv().await.unwrap() {
        match message.t.as_str() {
            "core.exec.started" => {}
            "core.exec.stdout" => {
                let data = message.payload::<ExecStdout>().unwrap().data;
                if controlled {
                    // The generic client leaves acknowledgements to its
                    // caller; without them a 0.7.13 exit code never comes.
                    ack.consume(data.len()).unwrap();
                    client
                        .send(id, TypedMessage::new(MessageType::ExecOutputAck, &ack))
                        .await
                        .unwrap();
                }
                stdout.extend(data);
            }
            "core.exec.exited" => code = Some(message.payload::<ExecExited>().unwrap().code),
            other => panic!("unexpected {other}"),
        }
    }
    (stdout, code.expect("an exit code"))
}

async fn file_round_trip(client: &AgentClient, root: &std::path::Path) {
    let content: Vec<u8> = (0..5_000_000u32).map(|i| (i % 241) as u8).collect();
    // Write: OpenFile, Write + data chunks + empty chunk, CloseHandle.
    let handle = open(client, "/up.bin", false).await;
    let write = FsRequest {
        op: FsOp::Write {
            handle,
            offset: 0,
            len: Some(content.len() as u64),
        },
        bulk: None,
    };
    let stream = client
        .stream(TypedMessage::new(MessageType::FsRequest, &write))
        .await
        .unwrap();
    let id = stream.id();
    let (_sender, mut receiver) = stream.into_parts();
    for piece in content.chunks(3 * 1024 * 1024).chain([&[][..]]) {
        let data = FsData {
            data: piece.to_vec(),
        };
        client
            .send(id, TypedMessage::new(MessageType::FsData, &data))
            .await
            .unwrap();
    }
    let reply = receiver.recv().await.unwrap().unwrap();
    assert_eq!(reply.t, "core.fs.response");
    let response: FsResponse = reply.payload().unwrap();
    assert!(response.ok, "{:?}", response.error);
    fs(client, FsOp::CloseHandle { handle }).await;
    assert_eq!(std::fs::read(root.join("up.bin")).unwrap(), content);

    // Read: OpenFile, Read streaming fs.data then the response, CloseHandle.
    let handle = open(client, "/up.bin", true).await;
    let read = FsRequest {
        op: FsOp::Read {
            handle,
            offset: 0,
            len: None,
        },
        bulk: None,
    };
    let stream = client
        .stream(TypedMessage::new(MessageType::FsRequest, &read))
        .await
        .unwrap();
    let (_sender, mut receiver) = stream.into_parts();
    let mut back = Vec::new();
    let mut ended = false;
    while let Some(message) = receiver.recv().await.unwrap() {
        match message.t.as_str() {
            "core.fs.data" => back.extend(message.payload::<FsData>().unwrap().data),
            "core.fs.response" => {
                assert!(message.payload::<FsResponse>().unwrap().ok);
                ended = true;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ended);
    assert_eq!(back, content);
    fs(client, FsOp::CloseHandle { handle }).await;
}

fn against(profile: &str, expected_generation: u8, controlled: bool) {
    let relay = Relay::start_profile("upstream", profile, &["--quiet"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let client = AgentClient::connect(&relay.socket).await.unwrap();
            let ready = client.ready();
            assert_eq!(ready.agent_version(), profile);
            assert_eq!(ready.negotiated_version, expected_generation);
            assert!(!ready.is_legacy_protocol());
            let (stdout, code) = run_command(&client, controlled).await;
            assert_eq!(stdout, b"upstream says hi\n");
            assert_eq!(code, 3);
            file_round_trip(&client, &relay.root).await;
            client.close().await;
        })
        .await
        .expect("upstream client deadline");
    });
}

#[test]
fn upstream_client_against_0_6_14() {
    against("0.6.14", 7, false);
}

#[test]
fn upstream_client_against_0_7_13() {
    against("0.7.13", 10, true);
}
