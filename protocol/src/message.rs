//! Every message on the wire, one enum per sender and phase; no encoding and no behaviour.
//!
//! Handshake messages hold only fixed-size fields, so an unauthenticated peer cannot make the
//! decoder allocate. Variant order is part of the wire format: versions 1-3's variants keep
//! their places so that old and new peers can tell each other their versions. After the handshake, clients send [`ClientMessage`] and the master sends
//! [`MasterMessage`]. `docs/protocol.md` is the prose form of this file.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::error_kind::ErrorKind;
use crate::frame_bytes;

/// First four bytes of a client's hello: a cheap "is this even taskmill?" check.
pub const MAGIC: [u8; 4] = *b"TMIL";

/// The protocol version this crate speaks. Both sides must agree exactly. Version 4 made the
/// handshake Noise `NNpsk0` and the session encrypted (see `handshake.rs`).
pub const PROTOCOL_VERSION: u16 = 4;

/// Random bytes each side contributed to versions 1-3's handshake.
pub type Nonce = [u8; 32];

/// An HMAC-SHA256 tag (versions 1-3's proofs).
pub type Mac = [u8; 32];

/// An X25519 public key: each side's ephemeral key in the Noise handshake.
pub type PublicKey = [u8; 32];

/// An AEAD tag (16 bytes): proves the sender holds the key, and that nothing was altered.
pub type Tag = [u8; 16];

/// Master-assigned identity of one queued item; unique for the master's lifetime.
pub type TaskId = u64;

/// Sent by the connecting client before it is authenticated. Every variant has a fixed size,
/// so an unauthenticated peer cannot make the decoder allocate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientHandshake {
    /// Versions 1-3's hello, kept so that an older client is told the master's version
    /// (`Rejected(UnsupportedVersion)`) instead of being cut off.
    LegacyHello {
        magic: [u8; 4],
        version: u16,
        nonce: Nonce,
    },
    /// Versions 1-3's proof; never valid now.
    LegacyProof { mac: Mac },
    /// Opens the connection: who we are, and the first Noise `NNpsk0` message (`psk, e`): the
    /// client's ephemeral key and an empty payload sealed under a key mixed from the authkey,
    /// so the tag proves the client holds it, for this transport (see `handshake.rs`).
    Hello {
        magic: [u8; 4],
        version: u16,
        ephemeral: PublicKey,
        tag: Tag,
    },
    /// `Hello` with a scoped key: `key_id` names the master's key the tag was made with
    /// (zero-padded, see [`crate::auth::KeyId`]), and it is bound into both proofs.
    ScopedHello {
        magic: [u8; 4],
        version: u16,
        key_id: [u8; crate::auth::KEY_ID_LEN],
        ephemeral: PublicKey,
        tag: Tag,
    },
}

/// The Welcome's payload as sealed in the second Noise message: `max_frame` and
/// `heartbeat_ms`, each a big-endian u32, then the tag.
pub type SealedWelcome = [u8; 24];

/// Sent by the master while a connection is not yet authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterHandshake {
    /// Versions 1-3's challenge: a client that receives it talks to an older master.
    LegacyChallenge { version: u16, nonce: Nonce },
    /// Versions 1-3's welcome; never valid now.
    LegacyWelcome {
        mac: Mac,
        max_frame: u32,
        heartbeat_ms: u32,
    },
    /// The handshake failed; the master closes the connection after sending this. Not
    /// authenticated: anyone on the path can send one, so clients retry rather than obey.
    Rejected(Rejection),
    /// The client's hello verified. The second Noise message (`e, ee`): the master's ephemeral
    /// key and, sealed under keys that need both ephemeral secrets and the authkey, the limits
    /// the session will enforce (largest frame either side may send; the liveness interval,
    /// after which a silent side sends a heartbeat and a peer silent for two is presumed
    /// dead). Opening it proves the master holds the key; no field can be altered on the way.
    Welcome {
        ephemeral: PublicKey,
        sealed: SealedWelcome,
    },
}

/// Why the master refused a connection during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The hello did not start with [`MAGIC`].
    NotTaskmill,
    /// The client speaks another protocol version.
    UnsupportedVersion { supported: u16 },
    /// The client's proof did not verify: it holds a different authkey.
    AuthenticationFailed,
    /// The master is stopping and takes no new connections.
    ShuttingDown,
    /// The master is at its connection or handshake limit; try again later.
    Overloaded,
    /// This address failed too many handshakes recently; it may try again after a while.
    Throttled,
}

impl Rejection {
    /// A sentence for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Rejection::NotTaskmill => "not a taskmill client (bad magic)",
            Rejection::UnsupportedVersion { .. } => "unsupported protocol version",
            Rejection::AuthenticationFailed => "authentication failed",
            Rejection::ShuttingDown => "the master is shutting down",
            Rejection::Overloaded => {
                "the master is overloaded (connection or handshake limit); retry later"
            }
            Rejection::Throttled => {
                "too many failed handshakes from this address; check the authkey and retry later"
            }
        }
    }
}

/// Sent by an authenticated client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// A request; the master answers with a [`MasterMessage::Reply`] carrying the same `id`.
    /// Requests may be pipelined; replies to requests that wait can arrive out of order.
    Request { id: u64, request: Request },
    /// "Still here": sent when the client has sent nothing for a heartbeat interval. No reply.
    Heartbeat,
}

/// Sent by the master to an authenticated client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MasterMessage {
    /// The answer to the request with the same `id`.
    Reply { id: u64, reply: Reply },
    /// Unsolicited: the master is draining before it stops. From now on it refuses new work
    /// (`Put`, leasing `Get`) with `ErrorKind::ShuttingDown` but still settles leases and serves
    /// `Remove` gets, for a bounded grace period; then it closes the connection.
    ShuttingDown,
    /// Unsolicited: sent when the master has sent nothing for a heartbeat interval.
    Heartbeat,
}

/// How long a `put` or `get` may wait for room or for an item (Python's `block`/`timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// Answer at once (`put_nowait` / `get_nowait`).
    No,
    /// Wait up to this many milliseconds.
    Millis(u64),
    /// Wait until it can be done or the connection closes.
    Forever,
}

/// What `get` does with the items it hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// The items stay owned by this connection until acknowledged ([`Request::Ack`] or
    /// [`Request::Complete`]), for `millis` (default: the master's lease timeout), extended by
    /// [`Request::Touch`]. If the lease expires or the connection ends first, they go back to
    /// the queue.
    Lease { millis: Option<u64> },
    /// The items are removed as they are sent, like Python's `Queue.get` (at most once).
    Remove,
}

/// An item as handed out by `get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    /// 1 on first delivery, incremented each time the item is handed out again.
    pub attempt: u32,
    /// Decoded from a frame, a view into it: copy it to keep it long.
    #[serde(deserialize_with = "frame_bytes::payload")]
    pub payload: Bytes,
    /// The queue the task's outcome goes to, as [`TaskReply`] items: the `reply_to` of the put
    /// that queued it, as ASCII bytes; empty when it had none. See [`Task::reply_queue`].
    #[serde(deserialize_with = "frame_bytes::payload")]
    pub reply_to: Bytes,
}

impl Task {
    /// A task with no reply queue.
    pub fn new(id: TaskId, attempt: u32, payload: Bytes) -> Self {
        Self {
            id,
            attempt,
            payload,
            reply_to: Bytes::new(),
        }
    }

    /// The queue this task's outcome goes to, if its producer named one.
    pub fn reply_queue(&self) -> Option<&str> {
        std::str::from_utf8(&self.reply_to)
            .ok()
            .filter(|q| !q.is_empty())
    }
}

/// What became of a task whose put named a reply queue: the item a worker (or the master, for
/// a task it buries) appends to that queue. Its encoding is compact, so that a small result
/// with its task id still fits the master's inline item: see [`TaskReply::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReply {
    /// The task's id, as the put's reply gave it.
    pub task: TaskId,
    pub outcome: TaskOutcome,
}

/// A task's end, as its [`TaskReply`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Completed with this result.
    Done(Bytes),
    /// Moved to the dead-letter queue after `attempts` deliveries (or at once, by a fatal
    /// nack), for `reason`.
    Dead { attempts: u32, reason: String },
}

/// A worker's answer to one leased task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub task: TaskId,
    /// Decoded from a frame, a view into it: copy it to keep it long.
    #[serde(deserialize_with = "frame_bytes::payload")]
    pub result: Bytes,
}

/// The operations a client can ask of the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Append items, in order, waiting for room per `wait`. With `reply_to`, each task is
    /// handed out naming that queue ([`Task::reply_to`]), where its outcome is expected (and
    /// where the master puts a [`TaskOutcome::Dead`] reply if it buries the task). Answer:
    /// [`Reply::Put`].
    Put {
        queue: String,
        /// Decoded from a frame, views into it: copy one to keep it long.
        #[serde(deserialize_with = "frame_bytes::payloads")]
        items: Vec<Bytes>,
        wait: Wait,
        reply_to: Option<String>,
    },
    /// Take up to `max` items (at least one unless the wait ends). Answer: [`Reply::Tasks`].
    Get {
        queue: String,
        max: u32,
        wait: Wait,
        delivery: Delivery,
    },
    /// Settle leased tasks without a result. Answer: [`Reply::Settled`].
    Ack { queue: String, tasks: Vec<TaskId> },
    /// For each outcome, in order and atomically per task: settle the lease on `queue` and
    /// append the result to `results`, waiting for room there per `wait`. A result whose lease
    /// this connection no longer holds is dropped and reported stale. With `reply`, `results`
    /// is the tasks' reply queue ([`Task::reply_to`]): if it no longer exists its producer has
    /// gone, and the tasks are settled with their results dropped. Answer: [`Reply::Settled`].
    Complete {
        queue: String,
        results: String,
        outcomes: Vec<Outcome>,
        wait: Wait,
        reply: bool,
    },
    /// Create a queue or change its capacity; `None` or `Some(0)` means unbounded.
    /// Answer: [`Reply::Queue`].
    Declare {
        queue: String,
        capacity: Option<u64>,
    },
    /// One queue's state (Python's `qsize`, `empty`, `full`). Answer: [`Reply::Queue`].
    Inspect { queue: String },
    /// The master's state. Answer: [`Reply::Stats`].
    Stats,
    /// Answer: [`Reply::Pong`].
    Ping,
    // Variants are only ever appended, so existing indices stay valid on the wire.
    /// Extend leases this connection holds to `millis` from now (default: each lease's own
    /// duration). Answer: [`Reply::Settled`], `done` counting the leases extended.
    Touch {
        queue: String,
        tasks: Vec<TaskId>,
        millis: Option<u64>,
    },
    /// Give leased tasks back: they return to the front of the queue after `delay_ms`, or to
    /// the dead-letter queue if they have used up their attempts or `fatal` is set. `reason` (cut to
    /// [`MAX_REASON`] bytes) is kept with a dead letter. Answer: [`Reply::Settled`].
    Nack {
        queue: String,
        tasks: Vec<TaskId>,
        delay_ms: u64,
        reason: String,
        /// The tasks can never succeed: bury them at once, whatever their attempts (and
        /// `delay_ms`).
        fatal: bool,
    },
    /// A worker's step in one round trip: [`Request::Complete`], then, once every outcome has
    /// been processed, a leasing [`Request::Get`] of up to `max` tasks from `queue` (lease
    /// `lease_ms`, default the master's). One deadline, from `wait`, covers both parts. No
    /// get is made if outcomes are left pending (the results queue stayed full) or the master
    /// is draining. Answer: [`Reply::Worked`].
    CompleteAndGet {
        queue: String,
        results: String,
        outcomes: Vec<Outcome>,
        max: u32,
        wait: Wait,
        lease_ms: Option<u64>,
        reply: bool,
    },
    /// [`Request::Put`] carried out at most once: a put sent again with the same `producer`
    /// and `seq` (because the connection died before its reply) gets the first one's answer
    /// instead of queueing its items again; while the first still waits for room the answer
    /// is `Error(InProgress)`. A producer picks a random id and numbers its puts; the master
    /// remembers each producer's last 64 puts per queue (so a producer keeps at most 64
    /// unanswered), and the last 1,024 producers per queue. Answer: [`Reply::Put`].
    PutOnce {
        queue: String,
        /// Decoded from a frame, views into it: copy one to keep it long.
        #[serde(deserialize_with = "frame_bytes::payloads")]
        items: Vec<Bytes>,
        wait: Wait,
        producer: u64,
        seq: u64,
        reply_to: Option<String>,
    },
    /// Up to `max` queued items from the front, left where they are (attempt: the delivery
    /// each would be). Answer: [`Reply::Tasks`].
    Peek { queue: String, max: u32 },
    /// Removes every queued and delayed item (leased ones stay, to be settled). Answer:
    /// [`Reply::Count`], the items removed.
    Purge { queue: String },
    /// Moves up to `max` dead letters from `<queue>.dead` back to the end of `queue`, with
    /// their original payloads and a fresh delivery count. Answer: [`Reply::Count`], the
    /// tasks moved.
    Kick { queue: String, max: u32 },
    /// Removes a queue and what it holds (queued and delayed items). Refused with `InUse`
    /// while tasks of it are leased or requests wait on it, and with `NotEmpty` if
    /// `if_empty` and it holds items. The name is free again afterwards. Answer:
    /// [`Reply::Count`], the items discarded.
    Delete { queue: String, if_empty: bool },
}

impl Request {
    /// How long this request may wait at the master: `Wait::No` for requests that never wait.
    pub fn wait(&self) -> Wait {
        match self {
            Request::Put { wait, .. }
            | Request::PutOnce { wait, .. }
            | Request::Get { wait, .. }
            | Request::Complete { wait, .. }
            | Request::CompleteAndGet { wait, .. } => *wait,
            Request::Ack { .. }
            | Request::Touch { .. }
            | Request::Nack { .. }
            | Request::Peek { .. }
            | Request::Purge { .. }
            | Request::Kick { .. }
            | Request::Delete { .. }
            | Request::Declare { .. }
            | Request::Inspect { .. }
            | Request::Stats
            | Request::Ping => Wait::No,
        }
    }
}

/// The master's answers, one per [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// `accepted` items, a prefix of those sent, were appended and got the consecutive ids
    /// `first_id..first_id + accepted`. `accepted` below the count sent means the queue stayed
    /// full until the wait ended (Python's `Full`); the rest were not queued.
    Put {
        first_id: TaskId,
        accepted: u32,
    },
    /// The items taken; empty means the queue stayed empty until the wait ended (`Empty`).
    Tasks(Vec<Task>),
    /// `done` tasks settled (a prefix of those named, minus `stale`). `stale` were not leased by
    /// this connection (already settled, or requeued). `pending` tasks at the end were not
    /// touched because the results queue stayed full; their leases are still held.
    Settled {
        done: u32,
        stale: Vec<TaskId>,
        pending: u32,
    },
    /// A queue's state. (Boxed to keep `Reply` small; the encoding is the same.)
    Queue(Box<QueueStats>),
    /// The master's state.
    Stats(Box<Stats>),
    Pong,
    /// The request could not be carried out; the connection stays usable.
    Error {
        kind: ErrorKind,
        message: String,
    },
    // Variants are only ever appended.
    /// The answer to [`Request::CompleteAndGet`]: the completion's `Settled` fields, then the
    /// tasks leased (empty if the wait ended first, or no get was made).
    Worked {
        done: u32,
        stale: Vec<TaskId>,
        pending: u32,
        tasks: Vec<Task>,
    },
    /// How many items a [`Request::Purge`], [`Request::Kick`] or [`Request::Delete`] moved.
    Count(u64),
}

/// Bytes a frame needs around one item: message tags, ids and lengths, and room to wrap the
/// item in a [`DeadLetter`]. Rounded up.
pub const ITEM_ENVELOPE: usize = 512;

/// Longest reason kept with a nack or dead letter; longer ones are cut.
pub const MAX_REASON: usize = 256;

/// Suffix of the queue where a queue's tasks go once they have used up their attempts.
pub const DEAD_SUFFIX: &str = ".dead";

/// The payload of an item in a dead-letter queue (`<queue>.dead`), encoded like a job payload
/// (`decode_payload`). Dead letters are never retried automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The task's id in its original queue.
    pub task: TaskId,
    pub queue: String,
    /// Deliveries it had.
    pub attempts: u32,
    /// Why its last delivery failed (lease expired, connection closed, or a nack's reason).
    pub reason: String,
    /// The original payload, untouched.
    #[serde(deserialize_with = "frame_bytes::payload")]
    pub payload: Bytes,
}

/// The largest item a session with frame cap `max_frame` accepts: one item must always fit in
/// a `Tasks` reply on its own.
pub fn max_payload(max_frame: usize) -> usize {
    max_frame.saturating_sub(ITEM_ENVELOPE)
}

/// A snapshot of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub name: String,
    /// Items waiting to be handed out (Python's `qsize`).
    pub len: u64,
    /// `None` when unbounded.
    pub capacity: Option<u64>,
    /// Items handed out under a lease and not yet settled.
    pub leased: u64,
    /// Nacked items waiting out their delay before they return.
    pub delayed: u64,
    pub waiting_getters: u64,
    pub waiting_putters: u64,
    pub put_total: u64,
    pub delivered_total: u64,
    pub settled_total: u64,
    /// Leases given back to this queue (connection closed, lease expired, nacked); those
    /// dead-lettered instead count in `dead_total`.
    pub requeued_total: u64,
    /// Leases that ran out, whether requeued or dead-lettered.
    pub expired_total: u64,
    /// Tasks moved to the dead-letter queue.
    pub dead_total: u64,
}

impl QueueStats {
    /// Python's `empty()`: nothing waiting to be handed out.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Python's `full()`: a `put` would have to wait. Leased items do not count against the
    /// capacity; a requeued lease may push `len` past it, since a task is never dropped.
    pub fn is_full(&self) -> bool {
        self.capacity.is_some_and(|cap| self.len >= cap)
    }
}

/// A snapshot of the whole master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub uptime_ms: u64,
    /// Authenticated connections now open. These connection counts cover the Python
    /// listener's too, when the master runs one (its `/metrics` tell the ports apart).
    pub clients: u64,
    /// Connections accepted since start, authenticated or not.
    pub connections_total: u64,
    /// Handshakes that did not authenticate (wrong key, bad version, garbage, a deadline, TLS,
    /// left part way, shed for a newer one), probes aside.
    pub handshake_failures: u64,
    /// Connections that ended within 100 ms without sending a byte: port probes and TCP health
    /// checks. They are neither failed handshakes nor charged to their address.
    pub probes: u64,
    /// Distinct connections that completed (with a result) at least one task since start.
    pub completing_clients_total: u64,
    pub queues: Vec<QueueStats>,
    /// The durable log, for a master with a data directory.
    pub storage: Option<StorageStats>,
    /// Requests refused with `Forbidden` since start: a scoped key asked beyond its rights.
    pub forbidden_total: u64,
    /// The memory budget and what it is charged.
    pub memory: MemoryStats,
}

/// The master's memory budget (`--max-memory`) and what it is charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Charged for the items the queues hold: queued, leased, delayed, dead letters.
    pub held_bytes: u64,
    /// Charged for requests waiting for room.
    pub waiting_bytes: u64,
    /// The budget; `None` for no limit.
    pub limit_bytes: Option<u64>,
}

/// What a master keeps on disk, and how its log is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStats {
    pub data_dir: String,
    /// Log and snapshot bytes on disk.
    pub disk_bytes: u64,
    /// Past this (less room kept for settling what is queued and for the next snapshot),
    /// puts are refused with `StorageFull`.
    pub disk_limit: u64,
    pub log_bytes: u64,
    pub log_files: u64,
    pub snapshot_bytes: u64,
    /// Since the newest snapshot was written; `None` before the first.
    pub snapshot_age_ms: Option<u64>,
    /// Records appended and fsyncs made since start: their ratio is the records per fsync.
    pub records_total: u64,
    pub fsyncs_total: u64,
    /// How long recovering the queues took at start.
    pub recovery_ms: u64,
    /// `None`: every reply waits for its records' fsync; otherwise the longest interval
    /// between fsyncs.
    pub fsync_interval_ms: Option<u64>,
}
