//! Snapshot files: every queue's image, written while traffic goes on, so that old log
//! segments can be removed. `docs/storage.md` specifies the format.
//!
//! A snapshot starts with a header (magic, version, the log position it was begun at), then
//! framed records like the log's (length, CRC-32C, body): per queue a `QUEUE` record, then its
//! queued, leased and delayed tasks in chunks; last an `END` record with the number of queue
//! ranks and the next task id, so a snapshot cut short is never mistaken for a whole one. A
//! rank without a `QUEUE` record was a deleted queue's.

use std::io::{self, Read};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant as Deadline;

use super::record::{FRAME_HEADER, MAX_BODY};
use crate::broker::{ImageItem, ImageLease, PutOutcome, QueueImage, Route};

/// The first bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"TMILSNAP";
/// The format written; format 1 (no routes, no deleted queues) is read too.
pub const VERSION: u32 = 2;
/// Magic, version, flags, base position.
pub const HEADER: usize = 8 + 4 + 4 + 8;

/// Tasks per chunk record, and the bytes past which a chunk takes no more, so that no record
/// grows without bound (one payload may still take it to [`MAX_BODY`]).
const CHUNK: usize = 4096;
const CHUNK_BYTES: usize = 1 << 20;

mod kind {
    pub const QUEUE: u8 = 101;
    pub const ITEMS: u8 = 102;
    pub const LEASED: u8 = 103;
    pub const DELAYED: u8 = 104;
    pub const END: u8 = 105;
    pub const ORIGINS: u8 = 106;
    pub const ROUTES: u8 = 107;
}

/// The header of a snapshot begun at log position `base`: the log it needs starts there.
pub fn encode_header(base: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
    out
}

/// Appends one queue's records to `out`.
pub fn encode_queue(image: &QueueImage, out: &mut Vec<u8>) {
    frame(out, |b| {
        b.push(kind::QUEUE);
        b.extend_from_slice(&image.rank.to_le_bytes());
        put_bytes(b, image.name.as_bytes());
        b.extend_from_slice(&image.capacity.unwrap_or(0).to_le_bytes());
        b.push(u8::from(image.dead_letters));
        b.extend_from_slice(&image.position.to_le_bytes());
        for total in image.totals {
            b.extend_from_slice(&total.to_le_bytes());
        }
    });
    chunked(out, kind::ITEMS, &image.items, put_item);
    chunked(out, kind::LEASED, &image.leased, |b, lease| {
        put_item(b, &lease.item);
        b.extend_from_slice(&lease.session.to_le_bytes());
        b.extend_from_slice(&lease.length_ms.to_le_bytes());
    });
    chunked(out, kind::DELAYED, &image.delayed, |b, (item, until)| {
        put_item(b, item);
        b.extend_from_slice(&wall_ms(*until).to_le_bytes());
    });
    chunked(out, kind::ORIGINS, &image.origins, |b, (producer, put)| {
        for field in [*producer, put.seq, put.first_id] {
            b.extend_from_slice(&field.to_le_bytes());
        }
        b.extend_from_slice(&put.accepted.to_le_bytes());
    });
    chunked(out, kind::ROUTES, &image.routes, |b, (first, route)| {
        b.extend_from_slice(&first.to_le_bytes());
        b.extend_from_slice(&route.end.to_le_bytes());
        b.extend_from_slice(&route.live.to_le_bytes());
        put_bytes(b, &route.reply);
    });
}

/// `tasks` as records of kind `kind`, each holding a count and then at most [`CHUNK`] tasks or
/// about [`CHUNK_BYTES`] of them.
fn chunked<T>(out: &mut Vec<u8>, kind: u8, tasks: &[T], put: impl Fn(&mut Vec<u8>, &T)) {
    let mut rest = tasks;
    while !rest.is_empty() {
        frame(out, |b| {
            b.push(kind);
            let count_at = b.len();
            b.extend_from_slice(&[0; 4]);
            let start = b.len();
            let mut count = 0;
            while let Some((task, tail)) = rest.split_first() {
                if count == CHUNK || b.len() - start >= CHUNK_BYTES {
                    break;
                }
                put(b, task);
                rest = tail;
                count += 1;
            }
            b[count_at..count_at + 4].copy_from_slice(&(count as u32).to_le_bytes());
        });
    }
}

/// The record that closes a snapshot of `queues` queues, taken when no task id below
/// `next_task` had been handed out.
pub fn encode_end(queues: u32, next_task: u64, out: &mut Vec<u8>) {
    frame(out, |b| {
        b.push(kind::END);
        b.extend_from_slice(&queues.to_le_bytes());
        b.extend_from_slice(&next_task.to_le_bytes());
    });
}

fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    body(out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

fn put_item(b: &mut Vec<u8>, item: &ImageItem) {
    b.extend_from_slice(&item.id.to_le_bytes());
    b.extend_from_slice(&item.deliveries.to_le_bytes());
    put_bytes(b, &item.payload);
}

/// A snapshot read back.
#[derive(Debug)]
pub struct Snapshot {
    /// The log position it was begun at.
    pub base: u64,
    /// No task id below this had been handed out.
    pub next_task: u64,
    /// Queue ranks taken when it was begun: `queues` holds those not deleted, by rank.
    pub ranks: u32,
    pub queues: Vec<QueueImage>,
}

/// Why a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("at byte {offset}: {problem}")]
    Corrupt { offset: u64, problem: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads a whole snapshot from `src`.
pub fn read(mut src: impl Read) -> Result<Snapshot, SnapshotError> {
    let mut head = [0u8; HEADER];
    read_exact(&mut src, &mut head, 0)?;
    let corrupt = |offset: u64, problem: &str| SnapshotError::Corrupt {
        offset,
        problem: problem.to_owned(),
    };
    if head[..8] != MAGIC {
        return Err(corrupt(0, "not a taskmill snapshot (bad magic)"));
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if !(1..=VERSION).contains(&version) {
        return Err(corrupt(
            8,
            &format!("snapshot format {version}, this master reads {VERSION}"),
        ));
    }
    let base = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    let mut offset = HEADER as u64;
    let mut queues: Vec<QueueImage> = Vec::new();
    loop {
        let at = offset;
        let mut frame = [0u8; FRAME_HEADER];
        read_exact(&mut src, &mut frame, at)?;
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_BODY + CHUNK_BYTES {
            return Err(corrupt(at, "a record of impossible length"));
        }
        let mut body = vec![0u8; len];
        read_exact(&mut src, &mut body, at)?;
        if crc32c::crc32c(&body) != crc {
            return Err(corrupt(at, "a record's checksum does not match its bytes"));
        }
        offset += (FRAME_HEADER + len) as u64;
        let mut r = Cursor {
            body: Bytes::from(body),
            at: 1,
        };
        let bad = |problem: &str| corrupt(at, problem);
        match r.body[0] {
            kind::QUEUE => {
                let rank = r.u32().ok_or_else(|| bad("a short queue record"))?;
                let name = r.bytes().ok_or_else(|| bad("a short queue record"))?;
                let name = String::from_utf8(name.to_vec())
                    .map_err(|_| bad("a queue name that is not UTF-8"))?;
                let capacity = r.u64().ok_or_else(|| bad("a short queue record"))?;
                let dead_letters = r.u8().ok_or_else(|| bad("a short queue record"))? != 0;
                let position = r.u64().ok_or_else(|| bad("a short queue record"))?;
                let mut totals = [0; 6];
                for total in &mut totals {
                    *total = r.u64().ok_or_else(|| bad("a short queue record"))?;
                }
                if queues.last().is_some_and(|q| q.rank >= rank) {
                    return Err(bad("queues out of order"));
                }
                queues.push(QueueImage {
                    rank,
                    name,
                    capacity: Some(capacity).filter(|&c| c > 0),
                    dead_letters,
                    position,
                    totals,
                    items: Vec::new(),
                    leased: Vec::new(),
                    delayed: Vec::new(),
                    origins: Vec::new(),
                    routes: Vec::new(),
                });
            }
            kind::ORIGINS => {
                let image = queues
                    .last_mut()
                    .ok_or_else(|| bad("puts before any queue"))?;
                let count = r.u32().ok_or_else(|| bad("a short chunk"))?;
                for _ in 0..count {
                    let mut field = || r.u64().ok_or_else(|| bad("a short chunk"));
                    let (producer, seq, first_id) = (field()?, field()?, field()?);
                    let accepted = r.u32().ok_or_else(|| bad("a short chunk"))?;
                    let put = PutOutcome {
                        seq,
                        first_id,
                        accepted,
                        done: true,
                    };
                    image.origins.push((producer, put));
                }
            }
            kind::ROUTES => {
                let image = queues
                    .last_mut()
                    .ok_or_else(|| bad("routes before any queue"))?;
                let count = r.u32().ok_or_else(|| bad("a short chunk"))?;
                for _ in 0..count {
                    let mut field = || r.u64().ok_or_else(|| bad("a short chunk"));
                    let (first, end) = (field()?, field()?);
                    let live = r.u32().ok_or_else(|| bad("a short chunk"))?;
                    let reply = r.bytes().ok_or_else(|| bad("a short chunk"))?;
                    image.routes.push((first, Route { end, reply, live }));
                }
            }
            kind::ITEMS | kind::LEASED | kind::DELAYED => {
                let image = queues
                    .last_mut()
                    .ok_or_else(|| bad("tasks before any queue"))?;
                let count = r.u32().ok_or_else(|| bad("a short chunk"))?;
                for _ in 0..count {
                    let item = r.item().ok_or_else(|| bad("a short chunk"))?;
                    match r.body[0] {
                        kind::ITEMS => image.items.push(item),
                        kind::LEASED => {
                            let session = r.u64().ok_or_else(|| bad("a short chunk"))?;
                            let length_ms = r.u32().ok_or_else(|| bad("a short chunk"))?;
                            image.leased.push(ImageLease {
                                item,
                                session,
                                length_ms,
                            });
                        }
                        _ => {
                            let until = r.u64().ok_or_else(|| bad("a short chunk"))?;
                            image.delayed.push((item, instant(until)));
                        }
                    }
                }
            }
            kind::END => {
                let count = r.u32().ok_or_else(|| bad("a short end record"))?;
                let next_task = r.u64().ok_or_else(|| bad("a short end record"))?;
                if queues.last().is_some_and(|q| q.rank >= count) {
                    return Err(bad(
                        "the end record counts fewer queues than the snapshot holds",
                    ));
                }
                return Ok(Snapshot {
                    base,
                    next_task,
                    ranks: count,
                    queues,
                });
            }
            _ => return Err(bad("an unknown kind of record")),
        }
        if r.at != r.body.len() {
            return Err(corrupt(at, "bytes left after a record's fields"));
        }
    }
}

fn read_exact(src: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<(), SnapshotError> {
    src.read_exact(buf).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::Corrupt {
            offset,
            problem: "the file ends before the snapshot does".into(),
        },
        _ => SnapshotError::Io(err),
    })
}

struct Cursor {
    body: Bytes,
    at: usize,
}

impl Cursor {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.body.len())?;
        let bytes = &self.body[self.at..end];
        self.at = end;
        Some(bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.u32()? as usize;
        self.take(len)?;
        Some(self.body.slice(self.at - len..self.at))
    }
    fn item(&mut self) -> Option<ImageItem> {
        Some(ImageItem {
            id: self.u64()?,
            deliveries: self.u32()?,
            payload: self.bytes()?,
        })
    }
}

/// A moment of this process as milliseconds since the Unix epoch.
pub(crate) fn wall_ms(at: Deadline) -> u64 {
    let now = Deadline::now();
    let wall_now = SystemTime::now();
    let wall = match at.checked_duration_since(now) {
        Some(ahead) => wall_now + ahead,
        None => wall_now - now.duration_since(at),
    };
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The moment of this process that `ms` since the Unix epoch stands for.
pub(crate) fn instant(ms: u64) -> Deadline {
    let wall = UNIX_EPOCH + Duration::from_millis(ms);
    let now = Deadline::now();
    match wall.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(past) => now.checked_sub(past.duration()).unwrap_or(now),
    }
}
