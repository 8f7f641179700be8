//! Reading a data directory back into a broker: the newest snapshot, then the log after it,
//! every record checked. A record cut short at the very end of the log (a crash mid-write) is
//! cut off, with a log line; anything wrong anywhere else stops recovery and names the file
//! and offset, unless repair was asked for, which cuts the log there, loudly.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use tracing::{info, warn};

use super::fs::Fs;
use super::record::{self, RecordError, FRAME_HEADER};
use super::snapshot::{self, Snapshot};
use super::StoreError;
use crate::broker::Broker;

/// The first bytes of every log segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TMILLLOG";
/// The log format written; format 1 (before reply routes, purges and deletes) is read too.
pub const SEGMENT_VERSION: u32 = 2;
/// Magic, version, flags, the position of the segment's first record.
pub const SEGMENT_HEADER: usize = 8 + 4 + 4 + 8;

pub fn segment_header(start: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_HEADER);
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out
}

pub fn segment_name(start: u64) -> String {
    format!("log-{start:020}.tml")
}

pub fn snapshot_name(base: u64) -> String {
    format!("snapshot-{base:020}.tms")
}

fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// What a data directory holds.
#[derive(Debug, Default)]
pub struct Survey {
    /// Log segments by their first position, in order.
    pub segments: Vec<u64>,
    /// Snapshots by the position they were begun at, in order.
    pub snapshots: Vec<u64>,
    /// Files a crash left half made (`*.tmp`).
    pub leftovers: Vec<String>,
}

pub fn survey(fs: &dyn Fs, dir: &Path) -> Result<Survey, StoreError> {
    let mut found = Survey::default();
    for name in fs.list(dir)? {
        if let Some(start) = numbered(&name, "log-", ".tml") {
            found.segments.push(start);
        } else if let Some(base) = numbered(&name, "snapshot-", ".tms") {
            found.snapshots.push(base);
        } else if name.ends_with(".tmp") {
            found.leftovers.push(name);
        }
    }
    found.segments.sort_unstable();
    found.snapshots.sort_unstable();
    Ok(found)
}

/// Reads the newest snapshot, if any.
pub fn load_snapshot(fs: &dyn Fs, dir: &Path, base: u64) -> Result<Snapshot, StoreError> {
    let name = snapshot_name(base);
    let file = fs.read(&dir.join(&name))?;
    snapshot::read(std::io::BufReader::with_capacity(1 << 20, file)).map_err(|err| match err {
        snapshot::SnapshotError::Corrupt { offset, problem } => StoreError::Corrupt {
            file: dir.join(&name),
            offset,
            problem,
        },
        snapshot::SnapshotError::Io(err) => StoreError::Io(err),
    })
}

/// What reading the log found.
#[derive(Debug)]
pub struct LogEnd {
    /// The position after the last good record: the next record goes here.
    pub end: u64,
    pub records: u64,
}

/// Replays the segments in `segments` (their first positions, in order) into `broker`,
/// skipping for each queue the changes before `positions[rank]` (its image's position; 0 for
/// a queue not in the snapshot). The log must begin at `base` and run without gaps.
pub fn replay(
    fs: &dyn Fs,
    dir: &Path,
    segments: &[u64],
    base: u64,
    positions: &[u64],
    broker: &Broker,
    repair: bool,
) -> Result<LogEnd, StoreError> {
    let mut end = LogEnd {
        end: base,
        records: 0,
    };
    let applies =
        |pos: u64| move |rank: u32| pos >= positions.get(rank as usize).copied().unwrap_or(0);
    for (i, &start) in segments.iter().enumerate() {
        let name = dir.join(segment_name(start));
        let last = i + 1 == segments.len();
        let corrupt = |offset: usize, problem: String| StoreError::Corrupt {
            file: name.clone(),
            offset: offset as u64,
            problem,
        };
        if start != end.end {
            let problem = format!(
                "the log has a gap: this segment starts at position {start}, the one before it ends at {}",
                end.end
            );
            if repair {
                warn!(file = %name.display(), %problem, "repair: dropping this segment and every later one");
                drop_from(fs, dir, &segments[i..])?;
                break;
            }
            return Err(corrupt(0, problem));
        }
        let mut bytes = Vec::new();
        fs.read(&name)?.read_to_end(&mut bytes)?;
        let bytes = Bytes::from(bytes);
        if bytes.len() < SEGMENT_HEADER || bytes[..8] != SEGMENT_MAGIC {
            if last && bytes.len() < SEGMENT_HEADER {
                // Created, then cut off before its header was synced: nothing in it.
                warn!(file = %name.display(), "an empty log segment left by a crash; removing it");
                fs.remove(&name)?;
                fs.sync_dir(dir)?;
                end.end = start;
                break;
            }
            return Err(corrupt(0, "not a taskmill log segment (bad header)".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if !(1..=SEGMENT_VERSION).contains(&version) {
            return Err(corrupt(
                8,
                format!("log format {version}, this master reads 1 to {SEGMENT_VERSION}"),
            ));
        }
        let named = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        if named != start {
            return Err(corrupt(
                16,
                format!("a segment of position {named} under the name of {start}"),
            ));
        }
        let mut at = SEGMENT_HEADER;
        while at < bytes.len() {
            let begins = at;
            let pos = start + (at - SEGMENT_HEADER) as u64;
            let record = match record::decode(&bytes.slice(at..)) {
                Ok((record, used)) => {
                    at += used;
                    record
                }
                Err(err) if last && torn(&bytes[at..], &err) => {
                    warn!(
                        file = %name.display(), offset = at, cause = %err,
                        "the log ends in a record cut short by a crash; cutting it off"
                    );
                    fs.truncate(&name, at as u64)?;
                    break;
                }
                Err(err) if repair => {
                    warn!(file = %name.display(), offset = at, cause = %err, "{CUT}");
                    return cut(fs, dir, &segments[i..], at, end);
                }
                Err(err) => return Err(corrupt(at, err.to_string())),
            };
            if let Err(err) = broker.apply_where(&record.change(), applies(pos)) {
                let problem = format!("a record that does not fit the queues: {err}");
                if repair {
                    warn!(file = %name.display(), offset = begins, %problem, "{CUT}");
                    return cut(fs, dir, &segments[i..], begins, end);
                }
                return Err(corrupt(begins, problem));
            }
            end.records += 1;
        }
        let kept = at.min(bytes.len());
        end.end = start + (kept - SEGMENT_HEADER) as u64;
    }
    info!(records = end.records, end = end.end, "replayed the log");
    Ok(end)
}

/// Whether a record that failed to read at the end of the log is one a crash cut short: it
/// runs past the end of the file, or it is the last one and everything from it on is either
/// it or zeros (space the file system allotted but never wrote). A record whose checksum
/// holds was written whole: if it cannot be read (an unknown kind, from a newer master), that
/// is never a torn write.
fn torn(rest: &[u8], err: &RecordError) -> bool {
    match err {
        RecordError::Short { .. } => true,
        RecordError::Malformed(_) => false,
        RecordError::Checksum | RecordError::TooLong(_) => {
            let declared = rest
                .get(..4)
                .map(|len| u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize);
            let ends_file = declared.is_some_and(|len| FRAME_HEADER + len == rest.len());
            ends_file || rest.iter().all(|&b| b == 0)
        }
    }
}

const CUT: &str = "repair: cutting the log here; everything after is lost";

/// Cuts the log at byte `at` of the first of `segments` (the rest go): where [`replay`] stopped.
fn cut(
    fs: &dyn Fs,
    dir: &Path,
    segments: &[u64],
    at: usize,
    mut end: LogEnd,
) -> Result<LogEnd, StoreError> {
    fs.truncate(&dir.join(segment_name(segments[0])), at as u64)?;
    drop_from(fs, dir, &segments[1..])?;
    end.end = segments[0] + (at - SEGMENT_HEADER) as u64;
    Ok(end)
}

fn drop_from(fs: &dyn Fs, dir: &Path, segments: &[u64]) -> Result<(), StoreError> {
    for &start in segments {
        fs.remove(&dir.join(segment_name(start)))?;
    }
    fs.sync_dir(dir)?;
    Ok(())
}
