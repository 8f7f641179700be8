//! Compaction: a snapshot of the live state, taken while traffic goes on, then every log
//! segment before it removed. Its cost is what is live, whatever its age: one old task never
//! keeps old segments on disk.
//!
//! The log first begins a new segment at position `base`. Each queue is then captured under
//! its own lock, together with the log position at that moment: every change to the queue
//! before it is in the image, every later one in the log after `base` (recovery skips, per
//! queue, what its image already holds). Only the copy of one queue's tasks happens under its
//! lock; encoding and writing do not. The snapshot takes its place only once the log is durable
//! past every image in it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::recover::{segment_name, snapshot_name};
use super::snapshot::{encode_end, encode_header, encode_queue};
use super::wal::{lock, Inner};
use crate::broker::Broker;

/// How long to wait before trying again after a compaction failed (the log itself is
/// unharmed: a snapshot that was not completed is never used).
const RETRY: Duration = Duration::from_secs(10);

impl Inner {
    /// The compaction thread: takes a snapshot whenever the writer asks for one.
    pub(super) fn compact_loop(&self, broker: Broker) {
        loop {
            {
                let mut compactor = lock(&self.compactor);
                while !compactor.due && !compactor.stop {
                    compactor = self
                        .compact_wake
                        .wait(compactor)
                        .unwrap_or_else(|p| p.into_inner());
                }
                if compactor.stop {
                    return;
                }
                (compactor.due, compactor.running) = (false, true);
            }
            let started = Instant::now();
            let outcome = self.compact(&broker);
            lock(&self.compactor).running = false;
            match outcome {
                Ok(Some(bytes)) => debug!(bytes, took = ?started.elapsed(), "snapshot written"),
                Ok(None) => return, // the log has stopped
                Err(err) => {
                    warn!(cause = %err, retry_in = ?RETRY, "compaction failed; the log keeps everything meanwhile");
                    let compactor = lock(&self.compactor);
                    let _ = self.compact_wake.wait_timeout(compactor, RETRY);
                    self.compact_due();
                }
            }
        }
    }

    /// Takes one snapshot; `None` if the log stopped first.
    fn compact(&self, broker: &Broker) -> std::io::Result<Option<u64>> {
        let (fs, dir) = (&*self.fs, &self.dir);
        let Some(base) = self.begin_new_segment() else {
            return Ok(None);
        };
        if lock(&self.disk).snapshot.is_some_and(|(b, _, _)| b == base) {
            return Ok(Some(0)); // nothing was logged since the last snapshot
        }
        let tmp = dir.join(format!("snapshot-{base:020}.tmp"));
        let written = (|| {
            let mut file = fs.create(&tmp)?;
            let mut buf = encode_header(base);
            let queues = broker.queue_count() as u32;
            for rank in 0..queues {
                let position = || self.appended.load(Ordering::Acquire);
                if let Some(image) = broker.capture(rank, position) {
                    encode_queue(&image, &mut buf);
                }
                if buf.len() >= 1 << 20 {
                    file.write_all(&buf)?;
                    buf.clear();
                }
            }
            encode_end(queues, broker.next_task_id(), &mut buf);
            file.write_all(&buf)?;
            file.sync()
        })();
        if let Err(err) = written {
            let _ = fs.remove(&tmp);
            return Err(err);
        }
        // The images hold changes up to where the log was when each was taken, which may not
        // be durable yet (still buffered, or written and not synced under --fsync DURATION).
        // A snapshot ahead of the log would make queues disagree after a crash, so the log is
        // made durable past every image first: a rotation syncs the segment it leaves.
        if self.begin_new_segment().is_none() {
            let _ = fs.remove(&tmp);
            return Ok(None);
        }
        let name = dir.join(snapshot_name(base));
        fs.rename(&tmp, &name)?;
        fs.sync_dir(dir)?;
        let bytes = fs.size(&name)?;
        // The snapshot is durable: what it replaces can go.
        let (old_snapshot, old_segments) = {
            let mut disk = lock(&self.disk);
            let old = disk.snapshot.replace((base, bytes, Instant::now()));
            let keep = disk.segments.split_off(&base);
            let old_segments = std::mem::replace(&mut disk.segments, keep);
            (old, old_segments)
        };
        if let Some((old, _, _)) = old_snapshot {
            fs.remove(&dir.join(snapshot_name(old)))?;
        }
        for start in old_segments.keys() {
            fs.remove(&dir.join(segment_name(*start)))?;
        }
        fs.sync_dir(dir)?;
        Ok(Some(bytes))
    }

    /// Has the writer begin a new segment and returns its first position; `None` if the log
    /// has stopped.
    fn begin_new_segment(&self) -> Option<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.closing || self.failed.load(Ordering::Relaxed) {
                return None;
            }
            pending.rotate = Some(tx);
        }
        self.wake.notify_one();
        rx.recv().ok()
    }
}
