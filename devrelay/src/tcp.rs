//! TCP streams (generation 4: agentd 0.5.5 and later), connected from the
//! host since there is no guest network.
//!
//! `core.tcp.connect` → `tcp.connected` or `tcp.failed` (30 s timeout);
//! `tcp.data` both ways in chunks of at most 64 KiB; `tcp.eof` half-closes
//! either way; once both directions are closed the stream ends with
//! `tcp.closed`. `tcp.close` from the client aborts the stream with no reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::outbox::Outbox;
use microsandbox_agent::protocol::payload::{Empty, TcpConnect, TcpFailed};
use microsandbox_agent::protocol::MessageType;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;

enum ToRemote {
    Data(Bytes),
    Eof,
}

struct Stream {
    to_remote: mpsc::UnboundedSender<ToRemote>,
    task: JoinHandle<()>,
}

/// The TCP streams of one client connection; dropping it aborts them all.
#[derive(Default)]
pub struct TcpStreams {
    streams: Arc<Mutex<HashMap<u32, Stream>>>,
}

impl Drop for TcpStreams {
    fn drop(&mut self) {
        for (_, stream) in self.streams.lock().unwrap().drain() {
            stream.task.abort();
        }
    }
}

impl TcpStreams {
    pub fn connect(&self, outbox: &Outbox, id: u32, request: TcpConnect) {
        let (to_remote, rx) = mpsc::unbounded_channel();
        let outbox = outbox.clone();
        let streams = self.streams.clone();
        // Held until the entry is in the table, so the task cannot remove
        // it before it exists.
        let mut table = self.streams.lock().unwrap();
        let task = tokio::spawn(async move {
            run(&outbox, id, request, rx).await;
            streams.lock().unwrap().remove(&id);
        });
        if let Some(old) = table.insert(id, Stream { to_remote, task }) {
            old.task.abort();
        }
    }

    /// `tcp.data` or `tcp.eof` from the client; `false` if there is no such
    /// stream.
    pub fn forward(&self, id: u32, data: Option<Bytes>) -> bool {
        let streams = self.streams.lock().unwrap();
        let Some(stream) = streams.get(&id) else {
            return false;
        };
        let item = match data {
            Some(d) => ToRemote::Data(d),
            None => ToRemote::Eof,
        };
        let _ = stream.to_remote.send(item);
        true
    }

    /// `tcp.close`: abort, no reply.
    pub fn close(&self, id: u32) {
        if let Some(stream) = self.streams.lock().unwrap().remove(&id) {
            stream.task.abort();
        }
    }
}

/// Answers `tcp.data` for a stream that does not exist.
pub async fn unknown_stream(outbox: &Outbox, id: u32) {
    let failed = TcpFailed {
        error: format!("unknown tcp session: {id}"),
    };
    let _ = outbox
        .send_payload(MessageType::TcpFailed, id, &failed)
        .await;
}

async fn run(
    outbox: &Outbox,
    id: u32,
    request: TcpConnect,
    mut from_client: mpsc::UnboundedReceiver<ToRemote>,
) {
    let target = (request.host.as_str(), request.port);
    let socket = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => return fail(outbox, id, format!("connect: {e}")).await,
        Err(_) => return fail(outbox, id, "connect: timed out".into()).await,
    };
    if outbox
        .send_payload(MessageType::TcpConnected, id, &Empty {})
        .await
        .is_err()
    {
        return;
    }
    let (mut remote_rx, mut remote_tx) = socket.into_split();
    let mut buf = vec![0u8; CHUNK];
    let (mut remote_done, mut client_done) = (false, false);
    while !(remote_done && client_done) {
        tokio::select! {
            read = remote_rx.read(&mut buf), if !remote_done => match read {
                Ok(0) => {
                    remote_done = true;
                    if outbox.send_payload(MessageType::TcpEof, id, &Empty {}).await.is_err() {
                        return;
                    }
                }
                Ok(n) => {
                    if outbox.send_data(MessageType::TcpData, id, &buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(e) => return fail(outbox, id, format!("read: {e}")).await,
            },
            item = from_client.recv(), if !client_done => match item {
                Some(ToRemote::Data(data)) => {
                    if let Err(e) = remote_tx.write_all(&data).await {
                        return fail(outbox, id, format!("write: {e}")).await;
                    }
                }
                Some(ToRemote::Eof) => {
                    client_done = true;
                    let _ = remote_tx.shutdown().await;
                }
                None => return,
            },
        }
    }
    let _ = outbox
        .send_payload(MessageType::TcpClosed, id, &Empty {})
        .await;
}

async fn fail(outbox: &Outbox, id: u32, error: String) {
    let _ = outbox
        .send_payload(MessageType::TcpFailed, id, &TcpFailed { error })
        .await;
}
