//! Frames in flight: the simulated TCP carries a token per frame, the frame itself waits in an
//! in-process table until its token arrives.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aether::clock::SharedRng;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::lock;
use super::protocol::Frame;

/// When a frame written to a pipe may be read.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    /// Not before this virtual time (`None`: no added latency).
    at: Option<Duration>,
    /// Not before its link's hold is released (`None`: not held).
    hold: Option<Arc<HoldGate>>,
}

/// Where a held link's frames wait for the release. Not a `tokio::sync::watch`: a watch
/// spreads its waiters over several lists picked by tokio's thread-local generator, whose seed
/// differs from run to run in one process, so the order in which a release woke them — and so
/// madsim's schedule — did too. `Notify` wakes its waiters in the order they came.
#[derive(Debug, Default)]
pub(super) struct HoldGate {
    released: AtomicBool,
    notify: tokio::sync::Notify,
}

impl HoldGate {
    fn open(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn passed(&self) {
        loop {
            let notified = self.notify.notified();
            if self.released.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// One direction of one connection: the frames written to it and not yet read, in order, each
/// with when it may be read.
#[derive(Debug, Default)]
pub(super) struct Pipe {
    frames: Mutex<VecDeque<(u64, Frame, Delivery)>>,
    next: AtomicU64,
    /// A frame was dropped here (sent while the link was cut): nothing is sent after it, as
    /// a TCP stream that lost a segment delivers nothing after the gap.
    stalled: AtomicBool,
    /// The latest delivery time handed out (frames arrive in order).
    last_delivery: Mutex<Duration>,
}

impl Pipe {
    /// Queues `frame` and returns the token to put on the simulated wire for it.
    pub(super) fn push(&self, frame: Frame, deliver_at: Delivery) -> [u8; TOKEN_BYTES] {
        let token = self.next.fetch_add(1, Ordering::SeqCst);
        lock(&self.frames).push_back((token, frame, deliver_at));
        token.to_be_bytes()
    }

    /// The frame whose token just arrived, and when it may be read. The engines' TCP delivers
    /// in order and never skips a segment (a lost one stalls the stream for good), so it is
    /// always the oldest one.
    pub(super) fn take(&self, token: [u8; TOKEN_BYTES]) -> std::io::Result<(Frame, Delivery)> {
        let token = u64::from_be_bytes(token);
        match lock(&self.frames).pop_front() {
            Some((queued, frame, at)) if queued == token => Ok((frame, at)),
            other => Err(std::io::Error::other(format!(
                "token {token} arrived, but frame {:?} is next",
                other.map(|(t, _, _)| t)
            ))),
        }
    }
}

/// Both directions of one connection.
#[derive(Debug)]
pub(super) struct Link {
    /// Client → host.
    pub(super) up: Pipe,
    /// Host → client.
    pub(super) down: Pipe,
    /// The node whose connection this is.
    node: String,
    wire: Weak<WireInner>,
}

/// What the wire does to one node's link (only the madsim engine sets any of it: turmoil's
/// network does all of this itself).
#[derive(Clone, Copy, Debug, Default)]
struct LinkFaults {
    /// Frames towards the broker are lost.
    cut_up: bool,
    /// Frames from the broker are lost.
    cut_down: bool,
    /// Each frame takes between these two, one way.
    latency: Option<(Duration, Duration)>,
}

/// What happens to a frame about to be written.
enum Admit {
    /// Write it; it may be read as this says.
    Send(Delivery),
    /// Lose it (and stall its pipe).
    Drop,
}

impl Link {
    fn admit(&self, up: bool) -> Admit {
        let pipe = if up { &self.up } else { &self.down };
        if pipe.stalled.load(Ordering::SeqCst) {
            return Admit::Drop;
        }
        let Some(wire) = self.wire.upgrade() else {
            return Admit::Send(Delivery::default());
        };
        let hold = lock(&wire.holds).get(&self.node).cloned();
        let faults = lock(&wire.faults).get(&self.node).copied();
        let Some(faults) = faults else {
            return Admit::Send(Delivery { at: None, hold });
        };
        if (up && faults.cut_up) || (!up && faults.cut_down) {
            pipe.stalled.store(true, Ordering::SeqCst);
            return Admit::Drop;
        }
        let Some((min, max)) = faults.latency else {
            return Admit::Send(Delivery { at: None, hold });
        };
        let rng = lock(&wire.rng).clone();
        let latency = match rng {
            Some(rng) if max > min => rng.duration_between(min, max),
            _ => min,
        };
        let now = crate::engine::sim_elapsed();
        let mut last = lock(&pipe.last_delivery);
        *last = (*last).max(now + latency);
        Admit::Send(Delivery {
            at: Some(*last),
            hold,
        })
    }
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
    /// Per node: what the wire does to its links.
    faults: Mutex<BTreeMap<String, LinkFaults>>,
    /// Draws latencies (set by the engine that uses them).
    rng: Mutex<Option<SharedRng>>,
    /// Per held node: the gate its held frames wait on (opened on release).
    holds: Mutex<BTreeMap<String, Arc<HoldGate>>>,
}

impl Wire {
    /// Draws the latencies set with [`Wire::set_latency`] from `rng`.
    pub fn set_rng(&self, rng: SharedRng) {
        *lock(&self.inner.rng) = Some(rng);
    }

    /// From now on, frames sent by (`ToBroker`) or to (`FromBroker`) `node`, or both, are lost,
    /// and the connection that lost one stalls for good. Replaces the node's earlier cut.
    pub fn cut(&self, node: &str, direction: crate::faults::Direction) {
        use crate::faults::Direction;
        let mut faults = lock(&self.inner.faults);
        let entry = faults.entry(node.to_owned()).or_default();
        entry.cut_up = matches!(direction, Direction::Both | Direction::ToBroker);
        entry.cut_down = matches!(direction, Direction::Both | Direction::FromBroker);
    }

    /// Ends `node`'s cut (connections that stalled stay stalled).
    pub fn heal(&self, node: &str) {
        let mut faults = lock(&self.inner.faults);
        let entry = faults.entry(node.to_owned()).or_default();
        entry.cut_up = false;
        entry.cut_down = false;
    }

    /// From now on, frames on `node`'s links (both ways) are held: read only after
    /// [`Wire::release`], in order.
    pub fn hold(&self, node: &str) {
        lock(&self.inner.holds).entry(node.to_owned()).or_default();
    }

    /// Delivers what `node`'s links held, and holds nothing more.
    pub fn release(&self, node: &str) {
        if let Some(gate) = lock(&self.inner.holds).remove(node) {
            gate.open();
        }
    }

    /// Every frame on `node`'s links takes between `min` and `max` more, one way (on top of
    /// the engine's own latency), in order; `None`: nothing more.
    pub fn set_latency(&self, node: &str, latency: Option<(Duration, Duration)>) {
        let mut faults = lock(&self.inner.faults);
        faults.entry(node.to_owned()).or_default().latency = latency;
    }

    /// A new link of `node`'s and the id the client sends first on its connection.
    pub(super) fn open(&self, node: &str) -> (u64, Arc<Link>) {
        let id = self.inner.next.fetch_add(1, Ordering::SeqCst);
        let link = Arc::new(Link {
            up: Pipe::default(),
            down: Pipe::default(),
            node: node.to_owned(),
            wire: Arc::downgrade(&self.inner),
        });
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
    let (frame, delivery) = pipe.take(token)?;
    if let Some(hold) = delivery.hold {
        hold.passed().await;
    }
    if let Some(at) = delivery.at {
        let now = crate::engine::sim_elapsed();
        if at > now {
            aether::rt::sleep(at - now).await;
        }
    }
    Ok(frame)
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
        let Admit::Send(deliver_at) = link.admit(up) else {
            continue;
        };
        let token = pipe.push(frame, deliver_at);
        // madsim's TCP sends on flush only.
        if writer.write_all(&token).await.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
}
