//! `Client` calls for looking after queues rather than working on them: declare, inspect,
//! peek, purge, kick dead letters back, delete; and the master's stats.

use taskmill_protocol::{QueueStats, Reply, Request, Stats, Task};

use crate::client::{unexpected, Client};
use crate::error::ClientError;

impl Client {
    /// Creates `queue` or sets its capacity (`None` or 0: unbounded).
    pub async fn declare(
        &mut self,
        queue: &str,
        capacity: Option<u64>,
    ) -> Result<QueueStats, ClientError> {
        let request = Request::Declare {
            queue: queue.to_owned(),
            capacity,
        };
        self.queue_reply(request).await
    }

    /// One queue's size, capacity and waiters (Python's `qsize`, `empty`, `full`).
    pub async fn inspect(&mut self, queue: &str) -> Result<QueueStats, ClientError> {
        let request = Request::Inspect {
            queue: queue.to_owned(),
        };
        self.queue_reply(request).await
    }

    async fn queue_reply(&mut self, request: Request) -> Result<QueueStats, ClientError> {
        match self.request(request).await? {
            Reply::Queue(stats) => Ok(*stats),
            other => Err(unexpected("Queue", &other)),
        }
    }

    pub async fn stats(&mut self) -> Result<Stats, ClientError> {
        match self.request(Request::Stats).await? {
            Reply::Stats(stats) => Ok(*stats),
            other => Err(unexpected("Stats", &other)),
        }
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        match self.request(Request::Ping).await? {
            Reply::Pong => Ok(()),
            other => Err(unexpected("Pong", &other)),
        }
    }

    /// Up to `max` queued items from the front of `queue`, left where they are.
    pub async fn peek(&mut self, queue: &str, max: u32) -> Result<Vec<Task>, ClientError> {
        let request = Request::Peek {
            queue: queue.to_owned(),
            max,
        };
        match self.request(request).await? {
            Reply::Tasks(tasks) => Ok(tasks),
            other => Err(unexpected("Tasks", &other)),
        }
    }

    /// Removes every queued and delayed item of `queue` (leased ones stay); returns how many.
    pub async fn purge(&mut self, queue: &str) -> Result<u64, ClientError> {
        let queue = queue.to_owned();
        self.count(Request::Purge { queue }).await
    }

    /// Moves up to `max` dead letters from `<queue>.dead` back to `queue`, each with its
    /// original payload and fresh attempts; returns how many moved.
    pub async fn kick(&mut self, queue: &str, max: u32) -> Result<u64, ClientError> {
        let queue = queue.to_owned();
        self.count(Request::Kick { queue, max }).await
    }

    /// Deletes `queue` with what it holds (refused while it has leased tasks or waiting
    /// requests, and, with `if_empty`, while it holds items); returns how many items went.
    pub async fn delete(&mut self, queue: &str, if_empty: bool) -> Result<u64, ClientError> {
        let queue = queue.to_owned();
        self.count(Request::Delete { queue, if_empty }).await
    }

    async fn count(&mut self, request: Request) -> Result<u64, ClientError> {
        match self.request(request).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected("Count", &other)),
        }
    }
}
