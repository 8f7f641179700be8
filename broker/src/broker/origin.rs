//! Puts carried out at most once. A producer that lost its connection before a put's reply
//! cannot know whether its items were queued; it sends the put again with the same producer
//! id and sequence number, and the queue answers with what the first one achieved instead of
//! queueing the items twice.
//!
//! Each queue remembers, per producer, its last [`SEQS_KEPT`] puts, and at most
//! [`PRODUCERS_KEPT`] producers (the least recently seen goes first). Every item a put queues
//! is recorded with its origin, so what a put achieved survives a restart exactly as far as
//! its items did.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use taskmill_protocol::TaskId;

/// A put's identity: its producer and the producer's sequence number for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub producer: u64,
    pub seq: u64,
}

/// Puts remembered per producer: a producer resends only puts whose reply it has not had, so
/// it may keep at most this many unanswered. (With [`PRODUCERS_KEPT`], at most about 2 MiB per
/// queue.)
pub const SEQS_KEPT: usize = 64;

/// Producers remembered per queue.
pub const PRODUCERS_KEPT: usize = 1024;

/// What one put achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub seq: u64,
    /// Its items got the ids `first_id..first_id + accepted`.
    pub first_id: TaskId,
    pub accepted: u32,
    /// False while the put still waits for room.
    pub done: bool,
}

#[derive(Debug, Default)]
struct Producer {
    /// By sequence number, oldest first.
    puts: VecDeque<Outcome>,
    last_seen: u64,
}

/// One queue's memory of puts.
#[derive(Debug, Default)]
pub(super) struct Origins {
    producers: FxHashMap<u64, Producer>,
    clock: u64,
}

impl Origins {
    /// What the put `origin` achieved, if it is remembered.
    pub(super) fn get(&self, origin: Origin) -> Option<Outcome> {
        let producer = self.producers.get(&origin.producer)?;
        // Sequence numbers mostly grow: the put asked about is mostly the last.
        producer
            .puts
            .iter()
            .rev()
            .find(|o| o.seq == origin.seq)
            .copied()
    }

    /// Remembers a new put, not done, that will number its items from `first_id`.
    pub(super) fn begin(&mut self, origin: Origin, first_id: TaskId) {
        self.entry(origin).first_id = first_id;
    }

    /// Counts `n` items of `origin` queued, the first of them as `id`.
    pub(super) fn accepted(&mut self, origin: Origin, id: TaskId, n: u32) {
        let outcome = self.entry(origin);
        if outcome.accepted == 0 {
            outcome.first_id = id;
        }
        outcome.accepted += n;
    }

    /// Marks `origin` done: a resend gets its outcome from now on.
    pub(super) fn finish(&mut self, origin: Origin) {
        self.entry(origin).done = true;
    }

    /// Remembers a put as a snapshot had it; it has ended, whatever it achieved.
    pub(super) fn restore(&mut self, producer: u64, outcome: Outcome) {
        let origin = Origin {
            producer,
            seq: outcome.seq,
        };
        *self.entry(origin) = Outcome {
            done: true,
            ..outcome
        };
    }

    /// Every remembered put, for a snapshot.
    pub(super) fn all(&self) -> Vec<(u64, Outcome)> {
        let mut all: Vec<_> = self
            .producers
            .iter()
            .flat_map(|(&p, producer)| producer.puts.iter().map(move |o| (p, *o)))
            .collect();
        all.sort_unstable_by_key(|(p, o)| (*p, o.seq));
        all
    }

    /// The outcome kept for `origin`, made (not done, nothing accepted) if it is new.
    fn entry(&mut self, origin: Origin) -> &mut Outcome {
        self.clock += 1;
        if !self.producers.contains_key(&origin.producer) && self.producers.len() >= PRODUCERS_KEPT
        {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.last_seen)
                .map(|(&id, _)| id);
            if let Some(oldest) = oldest {
                self.producers.remove(&oldest);
            }
        }
        let producer = self.producers.entry(origin.producer).or_default();
        producer.last_seen = self.clock;
        let at = match producer.puts.iter().rposition(|o| o.seq == origin.seq) {
            Some(at) => at,
            None => {
                if producer.puts.len() >= SEQS_KEPT {
                    producer.puts.pop_front();
                }
                // Sequence numbers mostly grow, so the new one mostly goes last.
                let at = producer.puts.partition_point(|o| o.seq < origin.seq);
                producer.puts.insert(
                    at,
                    Outcome {
                        seq: origin.seq,
                        first_id: 0,
                        accepted: 0,
                        done: false,
                    },
                );
                at
            }
        };
        &mut producer.puts[at]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 7;

    fn origin(seq: u64) -> Origin {
        Origin { producer: P, seq }
    }

    #[test]
    fn a_put_is_remembered_from_its_first_item_to_its_end() {
        let mut origins = Origins::default();
        assert_eq!(origins.get(origin(1)), None);
        origins.begin(origin(1), 100);
        origins.accepted(origin(1), 100, 1);
        origins.accepted(origin(1), 101, 1);
        let outcome = origins.get(origin(1)).unwrap();
        assert_eq!(
            (outcome.first_id, outcome.accepted, outcome.done),
            (100, 2, false)
        );
        origins.finish(origin(1));
        assert!(origins.get(origin(1)).unwrap().done);
    }

    #[test]
    fn old_puts_and_old_producers_are_forgotten_first() {
        let mut origins = Origins::default();
        for seq in 0..SEQS_KEPT as u64 + 10 {
            origins.begin(origin(seq), seq);
        }
        assert_eq!(origins.get(origin(9)), None, "the oldest puts went");
        assert!(origins.get(origin(10)).is_some());
        for producer in 0..PRODUCERS_KEPT as u64 {
            origins.begin(
                Origin {
                    producer: 1000 + producer,
                    seq: 0,
                },
                0,
            );
        }
        assert!(origins.producers.len() <= PRODUCERS_KEPT);
        assert_eq!(
            origins.get(origin(10)),
            None,
            "the least recently seen producer went"
        );
    }
}
