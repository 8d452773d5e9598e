//! The single writer of a connection, fed through a byte-bounded queue.
//!
//! Every producer (the request reader, exec pumps, fs workers) hands whole
//! encoded frames to one [`Outbox`]; one writer task drains it and coalesces
//! whatever is queued into vectored writes, so small frames do not cost a
//! syscall each. The queue is bounded in bytes, not frames: when the client
//! stops reading, producers wait in [`Outbox::send`], which in turn stops
//! exec pumps from reading their pipes and so backpressures the child.

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify, Semaphore};

use microsandbox_agent::protocol::payload::{Data, Payload};
use microsandbox_agent::protocol::{
    encode_frame, encode_frame_with, MessageType, LEGACY_GENERATION,
};

use crate::log;
use crate::rules::Correlations;
use crate::wire;

/// Bytes a connection may have queued but not yet written.
const QUEUE_BUDGET: usize = 8 * 1024 * 1024;
/// Stop gathering queued frames into one write beyond this many bytes.
const COALESCE_BYTES: usize = 1024 * 1024;
/// ...or this many frames (the kernel's IOV_MAX is 1024).
const COALESCE_FRAMES: usize = 256;

enum Item {
    Frame(Vec<u8>),
    /// Write everything before this, then shut the connection down.
    Close,
}

/// The connection is gone; nothing more can be sent on it.
#[derive(Debug)]
pub struct Closed;

/// Set once a connection must stop: the client left, the writer failed, or
/// a fault closed it. Everything working for the connection watches it.
#[derive(Default)]
pub struct Hangup {
    flag: AtomicBool,
    notify: Notify,
}

impl Hangup {
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

/// How a connection's frames leave.
pub struct OutboxSettings {
    /// The `v` stamped on every frame.
    pub v: u8,
    /// Told of every frame sent, to retire ids (0.7.13).
    pub correlations: Option<Arc<Correlations>>,
    /// Cut the client off after this long without write progress.
    pub stall_limit: Option<Duration>,
}

#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::UnboundedSender<Item>,
    budget: Arc<Semaphore>,
    v: u8,
    correlations: Option<Arc<Correlations>>,
}

impl Outbox {
    /// Starts the writer task for `socket`. It ends when every `Outbox`
    /// clone is dropped, on a write error, or after [`Outbox::close`]; in
    /// the last two cases it triggers `hangup`.
    pub fn start(socket: OwnedWriteHalf, hangup: Arc<Hangup>, settings: OutboxSettings) -> Outbox {
        let (queue, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(QUEUE_BUDGET));
        tokio::spawn(write_loop(
            socket,
            rx,
            budget.clone(),
            hangup,
            settings.stall_limit,
        ));
        Outbox {
            queue,
            budget,
            v: settings.v,
            correlations: settings.correlations,
        }
    }

    /// Queues one encoded frame, waiting while the queue is over budget.
    pub async fn send(&self, mut frame: Vec<u8>) -> Result<(), Closed> {
        wire::stamp(&mut frame, self.v);
        if let Some(correlations) = &self.correlations {
            let id = u32::from_be_bytes(frame[4..8].try_into().unwrap());
            correlations.on_sent(id, frame[8]);
        }
        let cost = frame_cost(frame.len());
        let permit = self.budget.acquire_many(cost).await.map_err(|_| Closed)?;
        // The writer gives the bytes back once they are on the socket.
        permit.forget();
        self.queue.send(Item::Frame(frame)).map_err(|_| Closed)
    }

    /// Encodes and queues a message with a typed payload.
    pub async fn send_payload(
        &self,
        message_type: MessageType,
        id: u32,
        payload: &impl Payload,
    ) -> Result<(), Closed> {
        self.send(typed_frame(message_type, id, payload)).await
    }

    /// Encodes and queues a `{data}` message (exec output, fs data).
    pub async fn send_data(
        &self,
        message_type: MessageType,
        id: u32,
        data: &[u8],
    ) -> Result<(), Closed> {
        self.send(data_frame(message_type, id, data)).await
    }

    /// Has the writer flush what is queued, then close the connection.
    pub fn close(&self) {
        let _ = self.queue.send(Item::Close);
    }
}

fn frame_cost(len: usize) -> u32 {
    len.min(QUEUE_BUDGET) as u32
}

pub fn typed_frame(message_type: MessageType, id: u32, payload: &impl Payload) -> Vec<u8> {
    raw_frame(
        message_type.as_str(),
        id,
        message_type.flags(),
        &payload.to_bytes(),
    )
}

pub fn raw_frame(message_type: &str, id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 48);
    encode_frame(
        &mut out,
        message_type,
        id,
        flags,
        LEGACY_GENERATION,
        payload,
    );
    out
}

pub fn data_frame(message_type: MessageType, id: u32, data: &[u8]) -> Vec<u8> {
    let payload_len = Data::encoded_len(data.len());
    let mut out = Vec::with_capacity(payload_len + 48);
    encode_frame_with(
        &mut out,
        message_type.as_str(),
        id,
        message_type.flags(),
        LEGACY_GENERATION,
        payload_len,
        |o| Data::encode_slice(data, o),
    );
    out
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Item>,
    budget: Arc<Semaphore>,
    hangup: Arc<Hangup>,
    stall_limit: Option<Duration>,
) {
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(COALESCE_FRAMES);
    let mut close_after = false;
    'outer: while !close_after {
        let first = tokio::select! {
            item = rx.recv() => item,
            _ = hangup.wait() => break,
        };
        match first {
            None => break,
            Some(Item::Close) => close_after = true,
            Some(Item::Frame(f)) => batch.push(f),
        }
        let mut gathered: usize = batch.iter().map(Vec::len).sum();
        while !close_after && gathered < COALESCE_BYTES && batch.len() < COALESCE_FRAMES {
            match rx.try_recv() {
                Ok(Item::Frame(f)) => {
                    gathered += f.len();
                    batch.push(f);
                }
                Ok(Item::Close) => close_after = true,
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = write_all_vectored(&mut socket, &batch, stall_limit) => r,
            _ = hangup.wait() => break 'outer,
        };
        if written.is_err() {
            break;
        }
        let returned: usize = batch.iter().map(|f| frame_cost(f.len()) as usize).sum();
        budget.add_permits(returned);
        batch.clear();
    }
    if close_after {
        let _ = socket.shutdown().await;
    }
    // Wake and fail every producer waiting for room: nobody will write again.
    budget.close();
    hangup.trigger();
}

async fn write_all_vectored(
    socket: &mut OwnedWriteHalf,
    frames: &[Vec<u8>],
    stall_limit: Option<Duration>,
) -> std::io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < frames.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&frames[index][offset..])
            .chain(frames[index + 1..].iter().map(Vec::as_slice))
            .map(IoSlice::new)
            .collect();
        let write = socket.write_vectored(&slices);
        let mut n = match stall_limit {
            None => write.await?,
            Some(limit) => match tokio::time::timeout(limit, write).await {
                Ok(written) => written?,
                Err(_) => {
                    log!("client made no write progress for {limit:?}: disconnecting it");
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            },
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = frames[index].len() - offset;
            if n >= left {
                n -= left;
                index += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    Ok(())
}
