//! The durable log's records: each [`Change`] as bytes, framed with its length and a CRC-32C,
//! and back (in `read`). `docs/storage.md` specifies the format; this module is its only
//! implementation.
//!
//! A frame is `len: u32` (the body's length), `crc: u32` (CRC-32C of the body), then the body:
//! a kind byte and the change's fields, little-endian. What the log keeps of a lease is only
//! what recovery needs (leases end at a restart): a `Taken` record keeps the holder and the
//! lease's length, not its deadline, and `Touched` is not written at all.

mod read;

pub use read::{decode, Record};

use super::snapshot::wall_ms;
use super::{Change, Returned};

/// Bytes before a record's body: its length and checksum.
pub const FRAME_HEADER: usize = 8;

/// The largest body a record may have: a payload is at most a frame (64 MiB at most), plus
/// the record's own fields.
pub const MAX_BODY: usize = (64 << 20) + 4096;

pub(super) mod kind {
    pub const CREATED: u8 = 1;
    pub const DECLARED: u8 = 2;
    pub const PUT: u8 = 3;
    pub const COMPLETED: u8 = 4;
    pub const TAKEN: u8 = 5;
    pub const UNTAKEN: u8 = 6;
    pub const ACKED: u8 = 7;
    pub const REQUEUED: u8 = 8;
    pub const DELAYED: u8 = 9;
    pub const UNDELAYED: u8 = 10;
    pub const BURIED: u8 = 11;
    pub const PUT_ONCE: u8 = 12;
    // Format 2:
    pub const ROUTED: u8 = 13;
    pub const PURGED: u8 = 14;
    pub const DELETED: u8 = 15;
}

/// Why the bytes at some offset are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the frame says: a write cut short, if it is at the end of the log.
    #[error("a record cut short ({have} of {need} bytes)")]
    Short { have: usize, need: usize },
    #[error("a record's checksum does not match its bytes")]
    Checksum,
    #[error("a record of {0} bytes, larger than any record written")]
    TooLong(usize),
    #[error("an undecodable record: {0}")]
    Malformed(&'static str),
}

/// Appends `change`'s record to `buf`; `false` (and nothing appended) for a change the log
/// does not keep.
pub fn encode(change: &Change<'_>, buf: &mut Vec<u8>) -> bool {
    if matches!(change, Change::Touched { .. }) {
        return false;
    }
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    let mut w = Writer(buf);
    match *change {
        Change::Created {
            queue,
            name,
            capacity,
        } => {
            w.u8(kind::CREATED).u32(queue).u64(capacity.unwrap_or(0));
            w.bytes(name.as_bytes());
        }
        Change::Declared { queue, capacity } => {
            w.u8(kind::DECLARED).u32(queue).u64(capacity.unwrap_or(0));
        }
        Change::Put {
            queue,
            id,
            payload,
            origin: None,
        } => {
            w.u8(kind::PUT).u32(queue).u64(id).bytes(payload);
        }
        Change::Put {
            queue,
            id,
            payload,
            origin: Some(origin),
        } => {
            w.u8(kind::PUT_ONCE).u32(queue).u64(id).bytes(payload);
            w.u64(origin.producer).u64(origin.seq);
        }
        Change::Completed {
            queue,
            task,
            target,
            id,
            payload,
        } => {
            w.u8(kind::COMPLETED)
                .u32(queue)
                .u64(task)
                .u32(target)
                .u64(id);
            w.bytes(payload);
        }
        Change::Taken {
            queue,
            tasks,
            lease,
        } => {
            // Session 0 (never issued) stands for a removal without a lease.
            let (session, length_ms) = lease.map_or((0, 0), |l| (l.session, l.length_ms));
            w.u8(kind::TAKEN).u32(queue).u64(session).u32(length_ms);
            w.u32(tasks.len() as u32);
            for task in tasks {
                w.u64(task.id).u32(task.attempt);
            }
        }
        Change::Untaken {
            queue,
            task,
            leased,
        } => {
            w.u8(kind::UNTAKEN).u32(queue).u8(u8::from(leased));
            w.u64(task.id).u32(task.attempt).bytes(&task.payload);
            w.bytes(&task.reply_to);
        }
        Change::Acked { queue, task } => {
            w.u8(kind::ACKED).u32(queue).u64(task);
        }
        Change::Touched { .. } => unreachable!("not written"),
        Change::Requeued { queue, task, why } => {
            w.u8(kind::REQUEUED).u32(queue).u64(task).u8(returned(why));
        }
        Change::Delayed { queue, task, until } => {
            w.u8(kind::DELAYED).u32(queue).u64(task).u64(wall_ms(until));
        }
        Change::Undelayed { queue, task } => {
            w.u8(kind::UNDELAYED).u32(queue).u64(task);
        }
        Change::Buried {
            queue,
            task,
            why,
            dead,
            id,
            letter,
        } => {
            w.u8(kind::BURIED).u32(queue).u64(task).u8(returned(why));
            w.u32(dead).u64(id).bytes(letter);
        }
        Change::Routed {
            queue,
            first,
            count,
            reply,
        } => {
            w.u8(kind::ROUTED)
                .u32(queue)
                .u64(first)
                .u32(count)
                .bytes(reply);
        }
        Change::Purged { queue } => {
            w.u8(kind::PURGED).u32(queue);
        }
        Change::Deleted { queue } => {
            w.u8(kind::DELETED).u32(queue);
        }
    }
    let body = &buf[start + FRAME_HEADER..];
    let (len, crc) = (body.len() as u32, crc32c::crc32c(body));
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    true
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
}

fn returned(why: Returned) -> u8 {
    match why {
        Returned::Closed => 0,
        Returned::Expired => 1,
        Returned::Nacked => 2,
    }
}
