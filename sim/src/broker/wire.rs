//! Frames in flight: the simulated TCP carries a token per frame, the frame itself waits in an
//! in-process table until its token arrives.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::lock;
use super::protocol::Frame;

/// One direction of one connection: the frames written to it and not yet read, in order.
#[derive(Debug, Default)]
pub(super) struct Pipe {
    frames: Mutex<VecDeque<(u64, Frame)>>,
    next: AtomicU64,
}

impl Pipe {
    /// Queues `frame` and returns the token to put on the simulated wire for it.
    pub(super) fn push(&self, frame: Frame) -> [u8; TOKEN_BYTES] {
        let token = self.next.fetch_add(1, Ordering::SeqCst);
        lock(&self.frames).push_back((token, frame));
        token.to_be_bytes()
    }

    /// The frame whose token just arrived. turmoil TCP delivers in order and never skips a
    /// segment (a lost one stalls the stream for good), so it is always the oldest one.
    pub(super) fn take(&self, token: [u8; TOKEN_BYTES]) -> std::io::Result<Frame> {
        let token = u64::from_be_bytes(token);
        match lock(&self.frames).pop_front() {
            Some((queued, frame)) if queued == token => Ok(frame),
            other => Err(std::io::Error::other(format!(
                "token {token} arrived, but frame {:?} is next",
                other.map(|(t, _)| t)
            ))),
        }
    }
}

/// Both directions of one connection.
#[derive(Debug, Default)]
pub(super) struct Link {
    /// Client → host.
    pub(super) up: Pipe,
    /// Host → client.
    pub(super) down: Pipe,
}

/// Frames in flight between the broker host and its clients, shared by everyone in one run.
///
/// The simulated TCP stream of a connection carries only a small token per frame (plus the link
/// id once, first); the frame itself waits here and is handed to the reader when — and only when —
/// its token arrives. So a frame is lost, delayed or held exactly when its bytes would be, while
/// no frame is ever serialised. Links die with their connection: the registry holds them weakly.
#[derive(Clone, Debug, Default)]
pub struct Wire {
    inner: Arc<WireInner>,
}

#[derive(Debug, Default)]
pub(super) struct WireInner {
    links: Mutex<BTreeMap<u64, Weak<Link>>>,
    next: AtomicU64,
}

impl Wire {
    /// A new link and the id the client sends first on its connection.
    pub(super) fn open(&self) -> (u64, Arc<Link>) {
        let id = self.inner.next.fetch_add(1, Ordering::SeqCst);
        let link = Arc::new(Link::default());
        let mut links = lock(&self.inner.links);
        links.retain(|_, l| l.strong_count() > 0);
        links.insert(id, Arc::downgrade(&link));
        (id, link)
    }

    /// The link a connection announced (once), if its client still exists.
    pub(super) fn accept(&self, id: u64) -> Option<Arc<Link>> {
        lock(&self.inner.links).remove(&id)?.upgrade()
    }
}

/// Bytes of a frame's token on the simulated wire.
pub(super) const TOKEN_BYTES: usize = 8;

pub(super) async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    pipe: &Pipe,
) -> std::io::Result<Frame> {
    let mut token = [0u8; TOKEN_BYTES];
    reader.read_exact(&mut token).await?;
    pipe.take(token)
}

/// Writes queued frames to one direction of a connection until the queue or the stream closes.
pub(super) async fn write_frames<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    link: &Link,
    up: bool,
    queue: &mut mpsc::Receiver<Frame>,
) {
    let pipe = if up { &link.up } else { &link.down };
    while let Some(frame) = queue.recv().await {
        let token = pipe.push(frame);
        if writer.write_all(&token).await.is_err() {
            break;
        }
    }
}
