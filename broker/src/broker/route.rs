//! Reply routes: which queue each task's outcome goes to, kept per run of consecutive ids (one
//! put's tasks) rather than per task, so a routed task costs its queue nothing extra.
//!
//! A put naming `reply_to` adds its tasks' ids as they go in; every task that leaves the queue
//! for good (settled, buried, removed, purged) is counted off its run, and a run with no task
//! left is forgotten. So the table holds one entry per put that still has tasks here.

use std::collections::BTreeMap;

use bytes::Bytes;
use taskmill_protocol::TaskId;

/// A run of consecutive task ids with the same reply queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// One past the last id of the run.
    pub end: TaskId,
    /// The reply queue's name (ASCII), shared by every task handed out from the run.
    pub reply: Bytes,
    /// Tasks of the run still in the queue: queued, leased or delayed.
    pub live: u32,
}

#[derive(Debug, Default)]
pub(super) struct Routes {
    /// By first id.
    runs: BTreeMap<TaskId, Route>,
}

impl Routes {
    /// `count` tasks from `first` on went in, their outcomes for `reply`: they extend the run
    /// they follow if it has the same queue.
    pub(super) fn add(&mut self, first: TaskId, count: u32, reply: &Bytes) {
        if count == 0 {
            return;
        }
        if let Some((_, run)) = self.runs.range_mut(..first).next_back() {
            if run.end == first && run.reply == *reply {
                run.end += u64::from(count);
                run.live += count;
                return;
            }
        }
        self.runs.insert(
            first,
            Route {
                end: first + u64::from(count),
                reply: reply.clone(),
                live: count,
            },
        );
    }

    /// The reply queue of task `id`, if its put named one.
    pub(super) fn reply(&self, id: TaskId) -> Option<&Bytes> {
        if self.runs.is_empty() {
            return None;
        }
        let (_, run) = self.runs.range(..=id).next_back()?;
        (id < run.end).then_some(&run.reply)
    }

    /// Task `id` left the queue for good; returns its reply queue, if it had one.
    pub(super) fn left(&mut self, id: TaskId) -> Option<Bytes> {
        if self.runs.is_empty() {
            return None;
        }
        let (&first, run) = self.runs.range_mut(..=id).next_back()?;
        if id >= run.end {
            return None;
        }
        run.live = run.live.saturating_sub(1);
        if run.live > 0 {
            return Some(run.reply.clone());
        }
        self.runs.remove(&first).map(|run| run.reply)
    }

    /// Task `id`, which had left, is back (a removing get whose taker was gone).
    pub(super) fn returned(&mut self, id: TaskId, reply: &Bytes) {
        if reply.is_empty() {
            return;
        }
        match self.runs.range_mut(..=id).next_back() {
            Some((_, run)) if id < run.end => run.live += 1,
            _ => self.add(id, 1, reply),
        }
    }

    /// Every run, for a snapshot.
    pub(super) fn all(&self) -> Vec<(TaskId, Route)> {
        self.runs.iter().map(|(&f, r)| (f, r.clone())).collect()
    }

    pub(super) fn restore(&mut self, first: TaskId, route: Route) {
        self.runs.insert(first, route);
    }

    pub(super) fn clear(&mut self) {
        self.runs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_grow_with_consecutive_puts_to_the_same_queue_and_go_with_their_last_task() {
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        let mut routes = Routes::default();
        routes.add(10, 3, &a);
        routes.add(13, 2, &a);
        routes.add(15, 1, &b);
        assert_eq!(routes.all().len(), 2, "10..15 is one run");
        assert_eq!(routes.reply(9), None);
        assert_eq!(routes.reply(14), Some(&a));
        assert_eq!(routes.reply(15), Some(&b));
        assert_eq!(routes.reply(16), None);
        for id in 10..15 {
            assert_eq!(routes.left(id), Some(a.clone()));
        }
        assert_eq!(
            routes.all().len(),
            1,
            "the first run is gone with its last task"
        );
        routes.returned(12, &a);
        assert_eq!(routes.reply(12), Some(&a));
        assert_eq!(routes.left(12), Some(a));
        assert_eq!(routes.left(15), Some(b));
        assert!(routes.all().is_empty());
    }
}
