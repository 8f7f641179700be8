//! Replies held until what they acknowledge is durable. A reply made when the log ended at
//! position `p` leaves once everything before `p` is durable: the records of its own request,
//! and of whatever put the tasks it hands out. A master without a durable store holds nothing.
//!
//! Held replies keep their order and do not count against a connection's waiting requests:
//! they wait for one fsync, which all connections share (group commit).

use std::collections::VecDeque;

use taskmill_protocol::{ErrorKind, Reply};
use tokio::sync::watch;

use super::dispatch::error_reply;
use crate::store::{Durability, Store};

/// One connection's held replies.
pub(crate) struct Gate {
    durability: Option<watch::Receiver<Durability>>,
    /// `(position, request id, reply)`, in the order made.
    held: VecDeque<(u64, u64, Reply)>,
}

impl Gate {
    pub fn new(store: &dyn Store) -> Self {
        Self {
            durability: store.durability(),
            held: VecDeque::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The reply to send now, or `None` if it is held until the log is durable up to
    /// `position`.
    pub fn admit(&mut self, position: u64, id: u64, reply: Reply) -> Option<(u64, Reply)> {
        let Some(durability) = &self.durability else {
            return Some((id, reply));
        };
        let durable = durability.borrow();
        if let Some(failure) = &durable.failed {
            return Some((id, failed(failure)));
        }
        if self.held.is_empty() && position <= durable.upto {
            return Some((id, reply));
        }
        drop(durable);
        self.held.push_back((position, id, reply));
        None
    }

    /// Resolves once durability has moved while replies are held; never otherwise.
    pub async fn moved(&mut self) {
        match &mut self.durability {
            Some(durability) if !self.held.is_empty() => {
                if durability.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            _ => std::future::pending().await,
        }
    }

    /// The held replies that may leave now, in order: those now durable, or every one, as an
    /// error, once the log has failed.
    pub fn release(&mut self) -> Vec<(u64, Reply)> {
        let Some(durability) = &self.durability else {
            return Vec::new();
        };
        let durable = durability.borrow();
        let mut out = Vec::new();
        while let Some(&(position, ..)) = self.held.front() {
            if durable.failed.is_none() && position > durable.upto {
                break;
            }
            let (_, id, reply) = self.held.pop_front().expect("just looked");
            out.push(match &durable.failed {
                Some(failure) => (id, failed(failure)),
                None => (id, reply),
            });
        }
        out
    }
}

fn failed(failure: &str) -> Reply {
    error_reply(
        ErrorKind::StorageFailed,
        format!("not acknowledged: {failure}"),
    )
}
