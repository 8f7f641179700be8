//! The durable log's records: each [`Change`] as bytes, framed with its length and a CRC-32C,
//! and back. `docs/storage.md` specifies the format; this file is its only implementation.
//!
//! A frame is `len: u32` (the body's length), `crc: u32` (CRC-32C of the body), then the body:
//! a kind byte and the change's fields, little-endian. What the log keeps of a lease is only
//! what recovery needs (leases end at a restart): a `Taken` record keeps the holder and the
//! lease's length, not its deadline, and `Touched` is not written at all.

use std::time::Duration;

use bytes::Bytes;
use taskmill_protocol::{Task, TaskId};
use tokio::time::Instant as Deadline;

use super::snapshot::{instant, wall_ms};
use super::{Change, LeaseTerms, QueueRank, Returned};
use crate::broker::Origin;

/// Bytes before a record's body: its length and checksum.
pub const FRAME_HEADER: usize = 8;

/// The largest body a record may have: a payload is at most a frame (64 MiB at most), plus
/// the record's own fields.
pub const MAX_BODY: usize = (64 << 20) + 4096;

mod kind {
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
    }
    let body = &buf[start + FRAME_HEADER..];
    let (len, crc) = (body.len() as u32, crc32c::crc32c(body));
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    true
}

/// A record read back: a [`Change`] that owns its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Created {
        queue: QueueRank,
        name: String,
        capacity: Option<u64>,
    },
    Declared {
        queue: QueueRank,
        capacity: Option<u64>,
    },
    Put {
        queue: QueueRank,
        id: TaskId,
        payload: Bytes,
        origin: Option<Origin>,
    },
    Completed {
        queue: QueueRank,
        task: TaskId,
        target: QueueRank,
        id: TaskId,
        payload: Bytes,
    },
    /// The tasks carry no payload: replay takes them from the front of the queue.
    Taken {
        queue: QueueRank,
        tasks: Vec<Task>,
        lease: Option<(u64, u32)>,
    },
    Untaken {
        queue: QueueRank,
        task: Task,
        leased: bool,
    },
    Acked {
        queue: QueueRank,
        task: TaskId,
    },
    Requeued {
        queue: QueueRank,
        task: TaskId,
        why: Returned,
    },
    /// `until` in milliseconds since the Unix epoch.
    Delayed {
        queue: QueueRank,
        task: TaskId,
        until: u64,
    },
    Undelayed {
        queue: QueueRank,
        task: TaskId,
    },
    Buried {
        queue: QueueRank,
        task: TaskId,
        why: Returned,
        dead: QueueRank,
        id: TaskId,
        letter: Bytes,
    },
}

impl Record {
    /// The change to replay. A lease read back gets a fresh deadline of its length from now,
    /// and a delay its wall-clock end in this process's time.
    pub fn change(&self) -> Change<'_> {
        match self {
            Record::Created {
                queue,
                name,
                capacity,
            } => Change::Created {
                queue: *queue,
                name,
                capacity: *capacity,
            },
            Record::Declared { queue, capacity } => Change::Declared {
                queue: *queue,
                capacity: *capacity,
            },
            Record::Put {
                queue,
                id,
                payload,
                origin,
            } => Change::Put {
                queue: *queue,
                id: *id,
                payload,
                origin: *origin,
            },
            Record::Completed {
                queue,
                task,
                target,
                id,
                payload,
            } => Change::Completed {
                queue: *queue,
                task: *task,
                target: *target,
                id: *id,
                payload,
            },
            Record::Taken {
                queue,
                tasks,
                lease,
            } => Change::Taken {
                queue: *queue,
                tasks,
                lease: lease.map(|(session, length_ms)| LeaseTerms {
                    session,
                    deadline: Deadline::now() + Duration::from_millis(length_ms.into()),
                    length_ms,
                }),
            },
            Record::Untaken {
                queue,
                task,
                leased,
            } => Change::Untaken {
                queue: *queue,
                task,
                leased: *leased,
            },
            Record::Acked { queue, task } => Change::Acked {
                queue: *queue,
                task: *task,
            },
            Record::Requeued { queue, task, why } => Change::Requeued {
                queue: *queue,
                task: *task,
                why: *why,
            },
            Record::Delayed { queue, task, until } => Change::Delayed {
                queue: *queue,
                task: *task,
                until: instant(*until),
            },
            Record::Undelayed { queue, task } => Change::Undelayed {
                queue: *queue,
                task: *task,
            },
            Record::Buried {
                queue,
                task,
                why,
                dead,
                id,
                letter,
            } => Change::Buried {
                queue: *queue,
                task: *task,
                why: *why,
                dead: *dead,
                id: *id,
                letter,
            },
        }
    }
}

/// Reads the record at the start of `src`: the record and the bytes it took.
pub fn decode(src: &Bytes) -> Result<(Record, usize), RecordError> {
    let header = src.get(..FRAME_HEADER).ok_or(RecordError::Short {
        have: src.len(),
        need: FRAME_HEADER,
    })?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_BODY {
        return Err(RecordError::TooLong(len));
    }
    let need = FRAME_HEADER + len;
    if src.len() < need {
        return Err(RecordError::Short {
            have: src.len(),
            need,
        });
    }
    let body = src.slice(FRAME_HEADER..need);
    if crc32c::crc32c(&body) != crc {
        return Err(RecordError::Checksum);
    }
    let record = Reader { src: body, at: 0 }.record()?;
    Ok((record, need))
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

struct Reader {
    src: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.src.len());
        let end = end.ok_or(RecordError::Malformed("a field runs past the record"))?;
        let bytes = &self.src[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let len = self.u32()? as usize;
        self.take(len)?;
        Ok(self.src.slice(self.at - len..self.at))
    }
    fn capacity(&mut self) -> Result<Option<u64>, RecordError> {
        Ok(Some(self.u64()?).filter(|&c| c > 0))
    }
    fn why(&mut self) -> Result<Returned, RecordError> {
        match self.u8()? {
            0 => Ok(Returned::Closed),
            1 => Ok(Returned::Expired),
            2 => Ok(Returned::Nacked),
            _ => Err(RecordError::Malformed("an unknown reason a lease ended")),
        }
    }

    fn record(mut self) -> Result<Record, RecordError> {
        let record = match self.u8()? {
            kind::CREATED => {
                let (queue, capacity) = (self.u32()?, self.capacity()?);
                let name = String::from_utf8(self.bytes()?.to_vec())
                    .map_err(|_| RecordError::Malformed("a queue name that is not UTF-8"))?;
                Record::Created {
                    queue,
                    name,
                    capacity,
                }
            }
            kind::DECLARED => Record::Declared {
                queue: self.u32()?,
                capacity: self.capacity()?,
            },
            kind::PUT => Record::Put {
                queue: self.u32()?,
                id: self.u64()?,
                payload: self.bytes()?,
                origin: None,
            },
            kind::PUT_ONCE => Record::Put {
                queue: self.u32()?,
                id: self.u64()?,
                payload: self.bytes()?,
                origin: Some(Origin {
                    producer: self.u64()?,
                    seq: self.u64()?,
                }),
            },
            kind::COMPLETED => Record::Completed {
                queue: self.u32()?,
                task: self.u64()?,
                target: self.u32()?,
                id: self.u64()?,
                payload: self.bytes()?,
            },
            kind::TAKEN => {
                let (queue, session, length_ms) = (self.u32()?, self.u64()?, self.u32()?);
                let count = self.u32()? as usize;
                // Each task is 12 bytes: a count the record cannot hold is corrupt.
                if count > (self.src.len() - self.at) / 12 {
                    return Err(RecordError::Malformed("more tasks than the record holds"));
                }
                let mut tasks = Vec::with_capacity(count);
                for _ in 0..count {
                    let (id, attempt) = (self.u64()?, self.u32()?);
                    tasks.push(Task {
                        id,
                        attempt,
                        payload: Bytes::new(),
                    });
                }
                let lease = (session != 0).then_some((session, length_ms));
                Record::Taken {
                    queue,
                    tasks,
                    lease,
                }
            }
            kind::UNTAKEN => {
                let (queue, leased) = (self.u32()?, self.u8()? != 0);
                let (id, attempt, payload) = (self.u64()?, self.u32()?, self.bytes()?);
                Record::Untaken {
                    queue,
                    task: Task {
                        id,
                        attempt,
                        payload,
                    },
                    leased,
                }
            }
            kind::ACKED => Record::Acked {
                queue: self.u32()?,
                task: self.u64()?,
            },
            kind::REQUEUED => Record::Requeued {
                queue: self.u32()?,
                task: self.u64()?,
                why: self.why()?,
            },
            kind::DELAYED => Record::Delayed {
                queue: self.u32()?,
                task: self.u64()?,
                until: self.u64()?,
            },
            kind::UNDELAYED => Record::Undelayed {
                queue: self.u32()?,
                task: self.u64()?,
            },
            kind::BURIED => Record::Buried {
                queue: self.u32()?,
                task: self.u64()?,
                why: self.why()?,
                dead: self.u32()?,
                id: self.u64()?,
                letter: self.bytes()?,
            },
            _ => return Err(RecordError::Malformed("an unknown kind of record")),
        };
        if self.at != self.src.len() {
            return Err(RecordError::Malformed(
                "bytes left after the record's fields",
            ));
        }
        Ok(record)
    }
}

fn returned(why: Returned) -> u8 {
    match why {
        Returned::Closed => 0,
        Returned::Expired => 1,
        Returned::Nacked => 2,
    }
}
