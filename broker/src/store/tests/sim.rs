//! `SimFs`: a file system in memory that keeps apart what is durable and what is not, per file
//! and per directory entry, and can crash: every call after the chosen one fails, and
//! [`SimFs::after_crash`] gives the file system a power cut would leave. Bytes appended but not
//! synced survive a crash only in part (a prefix, of a length the seed picks); a file created,
//! renamed or removed is so after a crash only if its directory was synced since.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use crate::store::fs::{AppendFile, Fs};

#[derive(Debug, Default, Clone)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash for certain; `data` only ever grows past it by appends.
    synced: usize,
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    /// Names as calls see them, and as the last directory sync made durable.
    live: BTreeMap<PathBuf, usize>,
    durable: BTreeMap<PathBuf, usize>,
    calls: u64,
    /// Every call after this many fails, as if the machine had stopped.
    crash_after: Option<u64>,
    /// One call that fails with this error (a full disk, a failed fsync).
    fail_at: Option<(u64, io::ErrorKind)>,
    /// Bytes the file system holds at most; appends past it fail as a full disk does.
    capacity: Option<usize>,
    locked: bool,
    /// Holds the failing call: says when it is reached, fails once released.
    stall: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.state.lock().unwrap().calls
    }

    /// Makes every call after the `n`th fail.
    pub fn crash_after(&self, n: u64) {
        self.state.lock().unwrap().crash_after = Some(n);
    }

    /// Makes the `n`th call (counting from 1) fail with `kind`.
    pub fn fail_call(&self, n: u64, kind: io::ErrorKind) {
        self.state.lock().unwrap().fail_at = Some((n, kind));
    }

    /// As [`SimFs::fail_call`], but the call first waits (up to a minute) for `release`, after
    /// telling `reached`: what other threads do while a storage call hangs, before it fails.
    pub fn stall_failing_call(&self, reached: mpsc::Sender<()>, release: mpsc::Receiver<()>) {
        self.state.lock().unwrap().stall = Some((reached, release));
    }

    /// Limits the bytes the file system holds.
    pub fn set_capacity(&self, bytes: usize) {
        self.state.lock().unwrap().capacity = Some(bytes);
    }

    /// The file system a power cut would leave now: durable names only, each file with what
    /// was synced plus a prefix, `seed`-chosen, of what was appended since.
    pub fn after_crash(&self, seed: u64) -> SimFs {
        let state = self.state.lock().unwrap();
        let mut inodes = Vec::new();
        let mut durable = BTreeMap::new();
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for (name, &ino) in &state.durable {
            let inode = &state.inodes[ino];
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let tail = inode.data.len() - inode.synced;
            let kept = inode.synced + (rng % (tail as u64 + 1)) as usize;
            inodes.push(Inode {
                data: inode.data[..kept].to_vec(),
                synced: kept,
            });
            durable.insert(name.clone(), inodes.len() - 1);
        }
        SimFs {
            state: Arc::new(Mutex::new(State {
                inodes,
                live: durable.clone(),
                durable,
                ..State::default()
            })),
        }
    }

    /// A file's bytes as reads see them.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.lock().unwrap();
        state
            .live
            .get(path)
            .map(|&ino| state.inodes[ino].data.clone())
    }

    /// Replaces a file's bytes, durably (to damage it on purpose).
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) {
        let mut state = self.state.lock().unwrap();
        let ino = state.live[path];
        state.inodes[ino] = Inode {
            synced: data.len(),
            data,
        };
    }

    /// Removes a file and its directory entry, durably.
    pub fn lose(&self, path: &Path) {
        let mut state = self.state.lock().unwrap();
        state.live.remove(path);
        state.durable.remove(path);
    }

    pub fn names(&self) -> Vec<PathBuf> {
        self.state.lock().unwrap().live.keys().cloned().collect()
    }

    fn call(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        let mut state = self.state.lock().unwrap();
        state.calls += 1;
        if state.crash_after.is_some_and(|n| state.calls > n) {
            return Err(io::Error::other("simulated crash: the machine has stopped"));
        }
        if let Some((n, kind)) = state.fail_at {
            if state.calls == n {
                if let Some((reached, release)) = state.stall.take() {
                    drop(state);
                    let _ = reached.send(());
                    let _ = release.recv_timeout(std::time::Duration::from_secs(60));
                }
                return Err(io::Error::new(kind, "simulated failure"));
            }
        }
        Ok(state)
    }

    fn inode(state: &State, path: &Path) -> io::Result<usize> {
        state
            .live
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }
}

struct SimFile {
    fs: SimFs,
    ino: usize,
}

impl AppendFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.fs.call()?;
        let used: usize = state
            .live
            .values()
            .map(|&i| state.inodes[i].data.len())
            .sum();
        if state.capacity.is_some_and(|cap| used + buf.len() > cap) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        state.inodes[self.ino].data.extend_from_slice(buf);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut state = self.fs.call()?;
        let inode = &mut state.inodes[self.ino];
        inode.synced = inode.data.len();
        Ok(())
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.call().map(drop)
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let mut state = self.call()?;
        if state.locked {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked"));
        }
        state.locked = true;
        Ok(Box::new(Unlock(self.clone())))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.call()?;
        Ok(state
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let state = self.call()?;
        let ino = Self::inode(&state, path)?;
        Ok(Box::new(io::Cursor::new(state.inodes[ino].data.clone())))
    }

    fn size(&self, path: &Path) -> io::Result<u64> {
        let state = self.call()?;
        let ino = Self::inode(&state, path)?;
        Ok(state.inodes[ino].data.len() as u64)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut state = self.call()?;
        state.inodes.push(Inode::default());
        let ino = state.inodes.len() - 1;
        state.live.insert(path.to_owned(), ino);
        Ok(Box::new(SimFile {
            fs: self.clone(),
            ino,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.call()?;
        let ino = Self::inode(&state, from)?;
        state.live.remove(from);
        state.live.insert(to.to_owned(), ino);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.call()?;
        Self::inode(&state, path)?;
        state.live.remove(path);
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.call()?;
        let ino = Self::inode(&state, path)?;
        let inode = &mut state.inodes[ino];
        inode.data.truncate(len as usize);
        inode.synced = inode.data.len();
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.call()?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        state.durable.retain(|p, _| !in_dir(p));
        let live: Vec<_> = state
            .live
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        state.durable.extend(live);
        Ok(())
    }

    fn free_space(&self, _dir: &Path) -> Option<u64> {
        Some(1 << 40)
    }
}

struct Unlock(SimFs);

impl Drop for Unlock {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().locked = false;
    }
}
