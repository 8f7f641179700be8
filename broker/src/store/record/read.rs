//! Records read back: [`decode`] turns a frame into a [`Record`], a [`Change`] that owns its
//! bytes. It reads format 1 and 2 records alike (see `docs/storage.md`).

use std::time::Duration;

use bytes::Bytes;
use taskmill_protocol::{Task, TaskId};
use tokio::time::Instant as Deadline;

use super::super::snapshot::instant;
use super::super::{Change, LeaseTerms, QueueRank, Returned};
use super::{kind, RecordError, FRAME_HEADER, MAX_BODY};
use crate::broker::Origin;

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
    Routed {
        queue: QueueRank,
        first: TaskId,
        count: u32,
        reply: Bytes,
    },
    Purged {
        queue: QueueRank,
    },
    Deleted {
        queue: QueueRank,
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
            Record::Routed {
                queue,
                first,
                count,
                reply,
            } => Change::Routed {
                queue: *queue,
                first: *first,
                count: *count,
                reply,
            },
            Record::Purged { queue } => Change::Purged { queue: *queue },
            Record::Deleted { queue } => Change::Deleted { queue: *queue },
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
                    tasks.push(Task::new(id, attempt, Bytes::new()));
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
                // Format 1 has no reply queue.
                let reply_to = if self.at < self.src.len() {
                    self.bytes()?
                } else {
                    Bytes::new()
                };
                Record::Untaken {
                    queue,
                    task: Task {
                        id,
                        attempt,
                        payload,
                        reply_to,
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
            kind::ROUTED => Record::Routed {
                queue: self.u32()?,
                first: self.u64()?,
                count: self.u32()?,
                reply: self.bytes()?,
            },
            kind::PURGED => Record::Purged { queue: self.u32()? },
            kind::DELETED => Record::Deleted { queue: self.u32()? },
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
