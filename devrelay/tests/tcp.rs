//! TCP streams through the relay (0.6.14 and 0.7.13), against loopback
//! listeners of the test.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::time::Duration;

use common::*;
use microsandbox_agent::protocol::payload::{Data, Empty, Payload, TcpConnect, TcpFailed};
use microsandbox_agent::protocol::MessageType;

fn connect(c: &mut Client, port: u16) -> u32 {
    let id = c.next_id();
    let request = TcpConnect {
        host: "127.0.0.1".into(),
        port,
        bulk: None,
    };
    c.send_payload(MessageType::TcpConnect, id, &request);
    id
}

/// Collects `tcp.data` until `tcp.eof`; returns the bytes and chunk sizes.
fn read_until_eof(c: &mut Client, id: u32) -> (Vec<u8>, Vec<usize>) {
    let (mut data, mut chunks) = (Vec::new(), Vec::new());
    loop {
        let m = c.recv();
        assert_eq!(m.id, id);
        match m.message_type {
            MessageType::TcpData => {
                let chunk = Data::decode(&m.payload).unwrap().data;
                chunks.push(chunk.len());
                data.extend_from_slice(&chunk);
            }
            MessageType::TcpEof => return (data, chunks),
            other => panic!("{other} before tcp.eof"),
        }
    }
}

fn echo_through_a_loopback_listener(profile: &str) {
    let relay = Relay::start_profile("tcp-echo", profile, &["--quiet"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // An echo server that half-closes after the client's EOF.
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        socket.read_to_end(&mut got).unwrap();
        socket.write_all(&got).unwrap();
        socket.shutdown(Shutdown::Write).unwrap();
        got.len()
    });
    let mut c = relay.connect();
    let id = connect(&mut c, port);
    let m = c.recv();
    assert_eq!((m.id, m.message_type), (id, MessageType::TcpConnected));
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
    for piece in payload.chunks(50_000) {
        c.send_data(MessageType::TcpData, id, piece);
    }
    c.send_payload(MessageType::TcpEof, id, &Empty {});
    let (echoed, chunks) = read_until_eof(&mut c, id);
    assert_eq!(echoed, payload);
    assert!(chunks.iter().all(|&n| n <= 64 * 1024), "{chunks:?}");
    let closed = c.recv();
    assert_eq!(
        (closed.id, closed.message_type, closed.flags),
        (id, MessageType::TcpClosed, 1)
    );
    assert_eq!(server.join().unwrap(), payload.len());
}

for_profiles!(echo_through_a_loopback_listener: echo_0_6_14 = "0.6.14", echo_0_7_13 = "0.7.13");

#[test]
fn refused_connection_fails() {
    let relay = Relay::start_profile("tcp-refused", "0.7.13", &["--quiet"]);
    // A port nobody listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = relay.connect();
    let id = connect(&mut c, port);
    let m = c.recv();
    assert_eq!(
        (m.id, m.message_type, m.flags),
        (id, MessageType::TcpFailed, 1)
    );
    let failed = TcpFailed::decode(&m.payload).unwrap();
    assert!(failed.error.contains("refused"), "{}", failed.error);
}

#[test]
fn data_for_an_unknown_stream_fails() {
    let relay = Relay::start_profile("tcp-unknown", "0.6.14", &["--quiet"]);
    let mut c = relay.connect();
    let id = c.next_id();
    c.send_data(MessageType::TcpData, id, b"hello?");
    let m = c.recv();
    assert_eq!((m.id, m.message_type), (id, MessageType::TcpFailed));
    assert!(TcpFailed::decode(&m.payload)
        .unwrap()
        .error
        .contains(&id.to_string()));
}

#[test]
fn close_aborts_without_a_reply_and_disconnect_closes_streams() {
    let relay = Relay::start_profile("tcp-close", "0.7.13", &["--quiet"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = relay.connect();
    // tcp.close: the remote sees the connection end, the client hears nothing.
    let id = connect(&mut c, port);
    let (mut first, _) = listener.accept().unwrap();
    assert_eq!(c.recv().message_type, MessageType::TcpConnected);
    c.send_payload(MessageType::TcpClose, id, &Empty {});
    first.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(first.read(&mut buf).unwrap(), 0, "remote sees EOF");
    assert!(
        stays_silent(&mut c.stream, Duration::from_millis(300)),
        "no reply to tcp.close"
    );
    // Disconnecting the client closes its streams.
    let _ = connect(&mut c, port);
    let (mut second, _) = listener.accept().unwrap();
    assert_eq!(c.recv().message_type, MessageType::TcpConnected);
    drop(c);
    second.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(
        second.read(&mut buf).unwrap(),
        0,
        "remote sees EOF after disconnect"
    );
}

#[test]
fn remote_data_arrives_before_the_client_sends_anything() {
    let relay = Relay::start_profile("tcp-banner", "0.7.13", &["--quiet"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        socket.write_all(b"220 hello\r\n").unwrap();
        socket.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        socket.read_to_end(&mut rest).unwrap();
        rest
    });
    let mut c = relay.connect();
    let id = connect(&mut c, port);
    assert_eq!(c.recv().message_type, MessageType::TcpConnected);
    let (banner, _) = read_until_eof(&mut c, id);
    assert_eq!(banner, b"220 hello\r\n");
    c.send_data(MessageType::TcpData, id, b"QUIT\r\n");
    c.send_payload(MessageType::TcpEof, id, &Empty {});
    let closed = c.recv();
    assert_eq!(
        (closed.id, closed.message_type),
        (id, MessageType::TcpClosed)
    );
    assert_eq!(server.join().unwrap(), b"QUIT\r\n");
}
