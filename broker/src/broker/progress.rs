//! How far a put or complete got, and what it has still to queue.

use std::collections::VecDeque;

use bytes::Bytes;
use taskmill_protocol::{Outcome, TaskId};

use super::origin::Origin;

/// What a put or complete has still to queue, as the request brought it: its items, or its
/// outcomes, each of which also settles the lease on its task in the queue that `fill` is
/// given as the source (or this queue, without one). The item `processed` from the start of
/// the batch gets the id `first_id + processed` (see [`Progress`]).
#[derive(Debug)]
pub(super) enum Batch {
    /// A put's items, where it comes from when it must be carried out at most once, and the
    /// queue its tasks' outcomes go to.
    Items {
        items: VecDeque<Bytes>,
        origin: Option<Origin>,
        reply: Option<Bytes>,
    },
    Outcomes(VecDeque<Outcome>),
    /// What a request that waits keeps of either: the rest of its payloads copied into one
    /// buffer with where each ends, and the tasks an outcome settles (none for a put), so a
    /// waiting batch costs its payloads plus 4 bytes an item (12 an outcome), not a 32-byte
    /// handle an item pinning the whole frame it came in.
    Packed {
        data: Bytes,
        ends: Vec<u32>,
        tasks: Vec<TaskId>,
        /// The items before it are done.
        next: usize,
        origin: Option<Origin>,
        reply: Option<Bytes>,
    },
}

impl Batch {
    /// The put this batch is, when it is to be carried out at most once.
    pub(super) fn origin(&self) -> Option<Origin> {
        match self {
            Batch::Items { origin, .. } | Batch::Packed { origin, .. } => *origin,
            Batch::Outcomes(_) => None,
        }
    }

    /// Keeps what is left in the compact form a waiting request holds (see [`Batch::Packed`]).
    pub(super) fn pack(&mut self) {
        let (payloads, tasks, origin, reply): (Vec<&[u8]>, Vec<TaskId>, _, _) = match self {
            Batch::Packed { .. } => return,
            Batch::Items {
                items,
                origin,
                reply,
            } => (
                items.iter().map(|b| &b[..]).collect(),
                Vec::new(),
                *origin,
                reply.take(),
            ),
            Batch::Outcomes(outcomes) => (
                outcomes.iter().map(|o| &o.result[..]).collect(),
                outcomes.iter().map(|o| o.task).collect(),
                None,
                None,
            ),
        };
        let mut data = Vec::with_capacity(payloads.iter().map(|p| p.len()).sum());
        let mut ends = Vec::with_capacity(payloads.len());
        for payload in payloads {
            data.extend_from_slice(payload);
            // A frame is at most 64 MiB, so its payloads' ends fit.
            ends.push(data.len() as u32);
        }
        *self = Batch::Packed {
            data: data.into(),
            ends,
            tasks,
            next: 0,
            origin,
            reply,
        };
    }

    /// The next payload, and the lease it settles.
    pub(super) fn front(&self) -> Option<(&[u8], Option<TaskId>)> {
        match self {
            Batch::Items { items, .. } => items.front().map(|item| (&item[..], None)),
            Batch::Outcomes(outcomes) => outcomes.front().map(|o| (&o.result[..], Some(o.task))),
            Batch::Packed {
                data,
                ends,
                tasks,
                next,
                ..
            } => {
                let end = *ends.get(*next)? as usize;
                let start = next.checked_sub(1).map_or(0, |i| ends[i] as usize);
                Some((&data[start..end], tasks.get(*next).copied()))
            }
        }
    }

    pub(super) fn pop_front(&mut self) {
        match self {
            Batch::Items { items, .. } => drop(items.pop_front()),
            Batch::Outcomes(outcomes) => drop(outcomes.pop_front()),
            Batch::Packed { ends, next, .. } => *next = (*next + 1).min(ends.len()),
        }
    }

    /// The tasks whose leases a completion's outcomes settle.
    pub(super) fn settles(&self) -> Vec<TaskId> {
        match self {
            Batch::Items { .. } => Vec::new(),
            Batch::Outcomes(outcomes) => outcomes.iter().map(|o| o.task).collect(),
            Batch::Packed { tasks, next, .. } => tasks.get(*next..).unwrap_or_default().to_vec(),
        }
    }

    /// The queue a put's tasks name for their outcomes.
    pub(super) fn reply(&self) -> Option<&Bytes> {
        match self {
            Batch::Items { reply, .. } | Batch::Packed { reply, .. } => reply.as_ref(),
            Batch::Outcomes(_) => None,
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Batch::Items { items, .. } => items.len(),
            Batch::Outcomes(outcomes) => outcomes.len(),
            Batch::Packed { ends, next, .. } => ends.len() - next,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How far a put or complete got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Ids of the items of a put are `first_id..first_id + total`, accepted or not.
    pub first_id: TaskId,
    pub total: u32,
    /// Items consumed from the front of the batch: queued, or (completions only) stale.
    pub processed: u32,
    /// Completions whose lease this session no longer held; their results were dropped.
    pub stale: Vec<TaskId>,
}

impl Progress {
    /// Items that were queued (or, for a completion, settled with their result queued).
    pub fn done(&self) -> u32 {
        self.processed - self.stale.len() as u32
    }

    /// Items at the end of the batch that were never processed.
    pub fn pending(&self) -> u32 {
        self.total - self.processed
    }
}

/// The progress of a request that handles every named task at once.
pub(super) fn settled(total: usize, stale: Vec<TaskId>) -> Progress {
    Progress {
        first_id: 0,
        total: total as u32,
        processed: total as u32,
        stale,
    }
}

/// Either the answer now, or a future that yields it.
#[derive(Debug)]
pub enum Step<T, W> {
    Ready(T),
    Wait(W),
}
