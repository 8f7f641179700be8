//! [`Wal`]: the durable log, a [`Store`] that keeps every change in segment files in a data
//! directory, makes it durable by group commit, and compacts it into snapshots
//! (`docs/storage.md`).
//!
//! Group commit without a timer: [`Store::record`] appends the encoded change to a buffer (it
//! runs under the callers' queue locks, so there is no I/O there); one writer thread takes
//! everything buffered, writes it, fsyncs, and publishes how far the log is durable. What
//! arrives while it works waits for its next round, so a lone request waits for one fsync and
//! a busy master makes one fsync per many requests. A failed write or fsync is never retried
//! (the kernel may have dropped the pages it could not write): the log stops and says so, and
//! the master stops acknowledging anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use taskmill_protocol::StorageStats;
use tokio::sync::watch;
use tracing::{error, info};

use super::fs::{AppendFile, Fs};
use super::recover::{self, segment_header, segment_name, SEGMENT_HEADER};
use super::{record, Change, Durability, Store, StoreError};
use crate::broker::Broker;

/// When replies may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After their records are fsynced: nothing acknowledged is lost, whatever fails.
    Always,
    /// After their records are written; fsynced at least this often. A crash of the
    /// process loses nothing acknowledged; a crash of the machine may lose up to this long.
    Every(Duration),
}

/// How a [`Wal`] runs.
#[derive(Debug, Clone)]
pub struct WalOptions {
    pub fsync: Fsync,
    /// Disk the log and snapshots may use; `None`: what they use now plus 90% of the free
    /// space when the master starts.
    pub max_disk: Option<u64>,
    /// Cut a damaged log at the damage instead of refusing to start.
    pub repair: bool,
    /// A segment is closed and a new one begun past this size.
    pub segment_bytes: u64,
    /// A snapshot is taken once the log since the last one passes this, or the last
    /// snapshot's size if larger, so the log stays within about the live state's size.
    pub compact_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            fsync: Fsync::Always,
            max_disk: None,
            repair: false,
            segment_bytes: 64 << 20,
            compact_bytes: 64 << 20,
        }
    }
}

/// Disk kept for the settle of each queued task (its `Acked` or `Completed` header), so that
/// a full disk refuses new puts while what is queued can still be settled.
const SETTLE_RESERVE: i64 = 64;

/// The image position of a queue deleted before a snapshot: no record of it applies.
const DELETED: u64 = u64::MAX;

/// The durable log of one data directory.
#[derive(Debug)]
pub struct Wal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) fs: Arc<dyn Fs>,
    pub(super) dir: PathBuf,
    pub(super) options: WalOptions,
    /// The data directory's lock, released by `close`.
    pub(super) lock: Mutex<Option<LockGuard>>,
    pub(super) pending: Mutex<Pending>,
    /// Rung when `pending` gains its first bytes, a rotation or the close.
    pub(super) wake: Condvar,
    /// Where the records appended so far end.
    pub(super) appended: AtomicU64,
    pub(super) durable: watch::Sender<Durability>,
    pub(super) failed: AtomicBool,
    pub(super) disk: Mutex<Disk>,
    /// Disk kept for settling what is queued.
    pub(super) reserved: AtomicI64,
    pub(super) limit: AtomicU64,
    pub(super) records: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    pub(super) recovery_ms: AtomicU64,
    /// The segment the writer starts on, made by `restore`.
    pub(super) first: Mutex<Option<Segment>>,
    pub(super) compactor: Mutex<Compactor>,
    pub(super) compact_wake: Condvar,
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
}

pub(super) struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) buf: Vec<u8>,
    /// The position after the last byte in `buf`.
    pub(super) end: u64,
    pub(super) closing: bool,
    /// A compaction waiting for a new segment to begin: told its first position.
    pub(super) rotate: Option<std::sync::mpsc::Sender<u64>>,
}

#[derive(Debug, Default)]
pub(super) struct Disk {
    /// Segment sizes by first position.
    pub(super) segments: BTreeMap<u64, u64>,
    /// The newest snapshot: its base position, bytes, and when it was written.
    pub(super) snapshot: Option<(u64, u64, Instant)>,
}

#[derive(Debug, Default)]
pub(super) struct Compactor {
    pub(super) due: bool,
    pub(super) running: bool,
    pub(super) stop: bool,
}

pub(super) struct Segment {
    pub(super) start: u64,
    pub(super) bytes: u64,
    pub(super) file: Box<dyn AppendFile>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Segment({}, {} bytes)", self.start, self.bytes)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wal {
    /// Takes `dir` (created if missing) for this master alone; its contents are read by
    /// [`Store::restore`].
    pub fn open(
        fs: Arc<dyn Fs>,
        dir: impl Into<PathBuf>,
        options: WalOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let dir = dir.into();
        fs.create_dir_all(&dir)?;
        let guard = fs.lock(&dir.join("LOCK")).map_err(|err| match err.kind() {
            std::io::ErrorKind::WouldBlock => StoreError::Locked(dir.clone()),
            _ => StoreError::Io(err),
        })?;
        let (durable, _) = watch::channel(Durability::default());
        Ok(Arc::new(Self {
            inner: Arc::new(Inner {
                fs,
                dir,
                options,
                lock: Mutex::new(Some(LockGuard(guard))),
                pending: Mutex::default(),
                wake: Condvar::new(),
                appended: AtomicU64::new(0),
                durable,
                failed: AtomicBool::new(false),
                disk: Mutex::default(),
                reserved: AtomicI64::new(0),
                limit: AtomicU64::new(u64::MAX),
                records: AtomicU64::new(0),
                fsyncs: AtomicU64::new(0),
                recovery_ms: AtomicU64::new(0),
                first: Mutex::new(None),
                compactor: Mutex::default(),
                compact_wake: Condvar::new(),
                threads: Mutex::default(),
            }),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes of log and snapshot on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes()
    }

    /// Asks for a snapshot now (tests and benchmarks; the log asks for its own otherwise).
    pub fn compact_soon(&self) {
        self.inner.compact_due();
    }

    /// True while a compaction waits for the writer to begin a new segment.
    #[cfg(test)]
    pub(super) fn rotation_asked(&self) -> bool {
        lock(&self.inner.pending).rotate.is_some()
    }
}

impl Store for Wal {
    fn record(&self, change: &Change<'_>) {
        let inner = &*self.inner;
        if inner.failed.load(Ordering::Relaxed) {
            return; // nothing will be acknowledged again; keep no more
        }
        let mut pending = lock(&inner.pending);
        let before = pending.buf.len();
        if !record::encode(change, &mut pending.buf) {
            return;
        }
        pending.end += (pending.buf.len() - before) as u64;
        inner.appended.store(pending.end, Ordering::Release);
        if before == 0 {
            inner.wake.notify_one();
        }
        drop(pending);
        inner.records.fetch_add(1, Ordering::Relaxed);
        let reserve = match *change {
            Change::Put { .. } => SETTLE_RESERVE,
            Change::Untaken { leased: false, .. } => SETTLE_RESERVE,
            Change::Acked { .. } => -SETTLE_RESERVE,
            Change::Taken {
                tasks, lease: None, ..
            } => -SETTLE_RESERVE * tasks.len() as i64,
            _ => 0,
        };
        if reserve != 0 {
            inner.reserved.fetch_add(reserve, Ordering::Relaxed);
        }
    }

    fn restore(&self, broker: &Broker) -> Result<(), StoreError> {
        self.inner.restore(broker)
    }

    fn start(&self, broker: &Broker) {
        let inner = &self.inner;
        let Some(segment) = lock(&inner.first).take() else {
            return;
        };
        let writer = {
            let inner = Arc::clone(inner);
            std::thread::Builder::new()
                .name("taskmill-log".into())
                .spawn(move || inner.write_loop(segment))
        };
        let compactor = {
            let (inner, broker) = (Arc::clone(inner), broker.clone());
            std::thread::Builder::new()
                .name("taskmill-snapshot".into())
                .spawn(move || inner.compact_loop(broker))
        };
        let mut threads = lock(&inner.threads);
        for spawned in [writer, compactor] {
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(err) => inner.fail("starting a thread", &err),
            }
        }
    }

    fn position(&self) -> u64 {
        self.inner.appended.load(Ordering::Acquire)
    }

    fn durability(&self) -> Option<watch::Receiver<Durability>> {
        Some(self.inner.durable.subscribe())
    }

    fn has_room(&self) -> bool {
        let inner = &self.inner;
        let reserved = inner.reserved.load(Ordering::Relaxed).max(0) as u64;
        inner.disk_bytes() + reserved + inner.headroom() <= inner.limit.load(Ordering::Relaxed)
    }

    fn stats(&self) -> Option<StorageStats> {
        let inner = &self.inner;
        let disk = lock(&inner.disk);
        let snapshot = disk.snapshot;
        Some(StorageStats {
            data_dir: inner.dir.display().to_string(),
            disk_bytes: disk.bytes(),
            disk_limit: inner.limit.load(Ordering::Relaxed),
            log_bytes: disk.segments.values().sum(),
            log_files: disk.segments.len() as u64,
            snapshot_bytes: snapshot.map_or(0, |s| s.1),
            snapshot_age_ms: snapshot.map(|s| s.2.elapsed().as_millis() as u64),
            records_total: inner.records.load(Ordering::Relaxed),
            fsyncs_total: inner.fsyncs.load(Ordering::Relaxed),
            recovery_ms: inner.recovery_ms.load(Ordering::Relaxed),
            fsync_interval_ms: match inner.options.fsync {
                Fsync::Always => None,
                Fsync::Every(every) => Some(every.as_millis() as u64),
            },
        })
    }

    fn close(&self) {
        let inner = &self.inner;
        lock(&inner.pending).closing = true;
        inner.wake.notify_all();
        lock(&inner.compactor).stop = true;
        inner.compact_wake.notify_all();
        let threads = std::mem::take(&mut *lock(&inner.threads));
        for thread in threads {
            let _ = thread.join();
        }
        lock(&inner.lock).take();
    }
}

impl Disk {
    fn bytes(&self) -> u64 {
        self.segments.values().sum::<u64>() + self.snapshot.map_or(0, |s| s.1)
    }
}

impl Inner {
    fn disk_bytes(&self) -> u64 {
        lock(&self.disk).bytes()
    }

    /// Room kept for the next snapshot and segment, so compaction can always run.
    fn headroom(&self) -> u64 {
        let snapshot = lock(&self.disk).snapshot.map_or(0, |s| s.1);
        snapshot + self.options.segment_bytes
    }

    fn restore(&self, broker: &Broker) -> Result<(), StoreError> {
        let started = Instant::now();
        let (fs, dir) = (&*self.fs, &self.dir);
        let survey = recover::survey(fs, dir)?;
        for leftover in &survey.leftovers {
            fs.remove(&dir.join(leftover))?;
        }
        let mut disk = Disk::default();
        let (base, positions) = match survey.snapshots.last() {
            Some(&base) => {
                let snapshot = recover::load_snapshot(fs, dir, base)?;
                let name = dir.join(recover::snapshot_name(base));
                if snapshot.base != base {
                    return Err(StoreError::Corrupt {
                        file: name,
                        offset: 16,
                        problem: format!(
                            "a snapshot of position {} under the name of {base}",
                            snapshot.base
                        ),
                    });
                }
                for image in &snapshot.queues {
                    broker.restore(image).map_err(|err| StoreError::Corrupt {
                        file: name.clone(),
                        offset: 0,
                        problem: err.to_string(),
                    })?;
                }
                broker.advance_ids(snapshot.next_task);
                let bytes = file_size(fs, &name)?;
                disk.snapshot = Some((base, bytes, Instant::now()));
                broker.reserve_ranks(snapshot.ranks as usize);
                // A rank with no image was deleted: every record of it is behind it.
                let mut positions = vec![DELETED; snapshot.ranks as usize];
                for image in &snapshot.queues {
                    positions[image.rank as usize] = image.position;
                }
                (base, positions)
            }
            None => (0, Vec::new()),
        };
        // Left by a compaction cut short after its snapshot was made: already in it.
        for &old in survey.snapshots.iter().filter(|&&b| b < base) {
            fs.remove(&dir.join(recover::snapshot_name(old)))?;
        }
        for &old in survey.segments.iter().filter(|&&s| s < base) {
            fs.remove(&dir.join(segment_name(old)))?;
        }
        let segments: Vec<u64> = survey.segments.into_iter().filter(|&s| s >= base).collect();
        let repair = self.options.repair;
        let end = recover::replay(fs, dir, &segments, base, &positions, broker, repair)?;
        // A snapshot is written only once the log is durable past it: a log that ends before
        // it lost synced data, and continuing would reuse positions the snapshot counts as seen.
        let taken = positions.iter().filter(|&&p| p != DELETED);
        if let Some(&ahead) = taken.max().filter(|&&p| p > end.end) {
            return Err(StoreError::Corrupt {
                file: dir.join(recover::snapshot_name(base)),
                offset: 0,
                problem: format!(
                    "the snapshot holds changes up to log position {ahead}, but the log ends at \
                     {}: log files after the snapshot were lost or cut",
                    end.end
                ),
            });
        }
        self.reserved.store(
            SETTLE_RESERVE * broker.task_count() as i64,
            Ordering::Relaxed,
        );
        for name in fs.list(dir)? {
            if let Some(start) = name
                .strip_prefix("log-")
                .and_then(|n| n.strip_suffix(".tml"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                disk.segments
                    .insert(start, file_size(fs, &dir.join(&name))?);
            }
        }
        // Every restart begins a segment of its own, so nothing is ever appended after a
        // record that recovery had to cut.
        let segment = self.begin_segment(end.end)?;
        disk.segments.insert(end.end, SEGMENT_HEADER as u64);
        fs.sync_dir(dir)?;
        let used = disk.bytes();
        *lock(&self.disk) = disk;
        *lock(&self.first) = Some(segment);
        lock(&self.pending).end = end.end;
        self.appended.store(end.end, Ordering::Release);
        self.durable.send_modify(|d| d.upto = end.end);
        let limit = match self.options.max_disk {
            Some(limit) => limit,
            None => {
                used + fs
                    .free_space(dir)
                    .map_or(u64::MAX / 2, |free| free / 10 * 9)
            }
        };
        self.limit.store(limit, Ordering::Relaxed);
        let took = started.elapsed();
        self.recovery_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
        info!(
            dir = %dir.display(),
            queues = broker.queue_count(),
            records = end.records,
            ?took,
            disk_bytes = used,
            disk_limit = limit,
            "recovered the queues from the data directory"
        );
        if end.end - base >= self.compaction_threshold() {
            self.compact_due();
        }
        Ok(())
    }

    /// Creates the segment whose first record will be at `start`, durable before anything is
    /// written to it.
    pub(super) fn begin_segment(&self, start: u64) -> std::io::Result<Segment> {
        let mut file = self.fs.create(&self.dir.join(segment_name(start)))?;
        file.write_all(&segment_header(start))?;
        file.sync()?;
        self.fs.sync_dir(&self.dir)?;
        Ok(Segment {
            start,
            bytes: SEGMENT_HEADER as u64,
            file,
        })
    }

    pub(super) fn fail(&self, what: &str, err: &dyn std::fmt::Display) {
        let message = format!("{what} the log in {} failed: {err}", self.dir.display());
        error!("{message}; nothing more is acknowledged, and the master stops");
        {
            // Under the lock a compaction checks `failed` under, and dropping its request:
            // it must not wait for a rotation that will never come.
            let mut pending = lock(&self.pending);
            self.failed.store(true, Ordering::Relaxed);
            pending.rotate = None;
        }
        self.durable
            .send_modify(|d| d.failed = Some(Arc::from(message.as_str())));
    }

    pub(super) fn compaction_threshold(&self) -> u64 {
        let snapshot = lock(&self.disk).snapshot.map_or(0, |s| s.1);
        self.options.compact_bytes.max(snapshot)
    }

    pub(super) fn compact_due(&self) {
        lock(&self.compactor).due = true;
        self.compact_wake.notify_all();
    }

    /// The writer thread: see the module doc.
    fn write_loop(self: Arc<Self>, mut segment: Segment) {
        let mut batch = Vec::with_capacity(1 << 20);
        let mut dirty = false;
        let mut synced = Instant::now();
        loop {
            let (end, rotate, closing) = {
                let mut pending = lock(&self.pending);
                loop {
                    if !pending.buf.is_empty() || pending.rotate.is_some() || pending.closing {
                        break;
                    }
                    pending = match self.options.fsync {
                        Fsync::Every(every) if dirty => {
                            let left = every.saturating_sub(synced.elapsed());
                            if left.is_zero() {
                                break;
                            }
                            let waited = self.wake.wait_timeout(pending, left);
                            waited.map_or_else(|p| p.into_inner().0, |(p, _)| p)
                        }
                        _ => self.wake.wait(pending).unwrap_or_else(|p| p.into_inner()),
                    };
                }
                std::mem::swap(&mut pending.buf, &mut batch);
                (pending.end, pending.rotate.take(), pending.closing)
            };
            if !batch.is_empty() {
                if let Err(err) = segment.file.write_all(&batch) {
                    return self.fail("writing", &err);
                }
                segment.bytes += batch.len() as u64;
                *lock(&self.disk).segments.entry(segment.start).or_default() = segment.bytes;
                batch.clear();
                dirty = true;
            }
            // A segment is synced before it is left: later fsyncs only reach the next one.
            let rotating = rotate.is_some() || segment.bytes >= self.options.segment_bytes;
            let sync = dirty
                && match self.options.fsync {
                    Fsync::Always => true,
                    Fsync::Every(every) => synced.elapsed() >= every || closing || rotating,
                };
            if sync {
                if let Err(err) = segment.file.sync() {
                    return self.fail("syncing", &err);
                }
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                (dirty, synced) = (false, Instant::now());
            }
            self.durable.send_if_modified(|d| {
                let moved = d.upto < end;
                d.upto = d.upto.max(end);
                moved
            });
            if rotating {
                match self.begin_segment(end) {
                    Ok(next) => {
                        lock(&self.disk).segments.insert(end, next.bytes);
                        segment = next;
                    }
                    Err(err) => return self.fail("beginning a segment of", &err),
                }
                if let Some(tx) = rotate {
                    let _ = tx.send(end);
                }
            }
            let since_snapshot = end - lock(&self.disk).snapshot.map_or(0, |s| s.0);
            if since_snapshot >= self.compaction_threshold() {
                let compactor = lock(&self.compactor);
                if !compactor.running && !compactor.due {
                    drop(compactor);
                    self.compact_due();
                }
            }
            if closing && lock(&self.pending).buf.is_empty() && !dirty {
                return;
            }
        }
    }
}

fn file_size(fs: &dyn Fs, path: &Path) -> Result<u64, StoreError> {
    Ok(fs.size(path)?)
}
