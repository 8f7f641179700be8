//! Scoped keys: the keys file, what each key may do, and the one check every request passes.
//!
//! The master's authkey (`TASKMILL_AUTHKEY`, `--authkey-file`) is the default key, with every
//! right, for clients that send no key id. A keys file adds named keys, each limited to some
//! operations on some queues. Its format, one key a line (blank lines and `#` comments
//! ignored):
//!
//! ```text
//! # name      rights              queues          key
//! producer-1  producer            tasks           file:producer-1.key
//! worker-a    worker              tasks,results   3f0c…64 hex characters…
//! ops         admin,collector     *               file:/run/secrets/ops.key
//! ```
//!
//! `rights` is a comma list of roles and operations; `queues` a comma list of names, each
//! exact or ending in `*` (a prefix; `*` alone is every queue); `key` the key itself as
//! `keygen` prints it, or `file:PATH` (relative to the keys file's folder). A name may appear
//! twice with two keys: both are valid, which is how a key is rotated without a restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use taskmill_protocol::auth::KeyId;
use taskmill_protocol::{AuthKey, Delivery, ErrorKind, Reply, Request};

/// One operation a key may be granted; a request needs one or two (see [`Grants::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// `Put`, `PutOnce`.
    Put = 1,
    /// `Get` with `Remove`: takes tasks for good.
    Take = 1 << 1,
    /// `Get` with a lease, and settling leases: `Ack`, `Touch`, `Nack`.
    Lease = 1 << 2,
    /// `Complete`; `CompleteAndGet` needs `lease` too. Covers the task queue and, unless the
    /// results go to the tasks' reply queues, the results queue.
    Complete = 1 << 3,
    Peek = 1 << 4,
    Inspect = 1 << 5,
    Declare = 1 << 6,
    Purge = 1 << 7,
    Delete = 1 << 8,
    Kick = 1 << 9,
    /// `Stats`, which names every queue.
    Stats = 1 << 10,
}

const OPS: [(&str, Op); 11] = [
    ("put", Op::Put),
    ("take", Op::Take),
    ("lease", Op::Lease),
    ("complete", Op::Complete),
    ("peek", Op::Peek),
    ("inspect", Op::Inspect),
    ("declare", Op::Declare),
    ("purge", Op::Purge),
    ("delete", Op::Delete),
    ("kick", Op::Kick),
    ("stats", Op::Stats),
];

/// The roles, as sets of operations.
const ROLES: [(&str, &[Op]); 5] = [
    ("producer", &[Op::Put, Op::Inspect]),
    ("worker", &[Op::Lease, Op::Complete]),
    ("collector", &[Op::Take, Op::Lease]),
    (
        "admin",
        &[
            Op::Declare,
            Op::Purge,
            Op::Delete,
            Op::Kick,
            Op::Stats,
            Op::Peek,
            Op::Inspect,
        ],
    ),
    ("all", &[]),
];

/// What one key may do: a set of operations, on queues matching its patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    ops: u16,
    /// Exact names, or prefixes ending in `*`.
    queues: Vec<String>,
    /// The key's name, for logs; `None` for the default key.
    name: Option<KeyId>,
}

impl Grants {
    /// Every operation on every queue: the default key's rights.
    pub fn all() -> Self {
        Self {
            ops: u16::MAX,
            queues: vec!["*".into()],
            name: None,
        }
    }

    /// Parses `rights` (roles and operations, comma-separated) and `queues`.
    pub fn parse(rights: &str, queues: &str) -> Result<Self, String> {
        let mut ops = 0u16;
        for word in rights.split(',') {
            if let Some((_, role)) = ROLES.iter().find(|(name, _)| *name == word) {
                ops |= if role.is_empty() {
                    u16::MAX
                } else {
                    role.iter().fold(0, |acc, &op| acc | op as u16)
                };
            } else if let Some((_, op)) = OPS.iter().find(|(name, _)| *name == word) {
                ops |= *op as u16;
            } else {
                let roles: Vec<_> = ROLES.iter().map(|(n, _)| *n).collect();
                let names: Vec<_> = OPS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown right {word:?}: roles are {}, operations {}",
                    roles.join(", "),
                    names.join(", ")
                ));
            }
        }
        let queues: Vec<String> = queues.split(',').map(str::to_owned).collect();
        if let Some(bad) = queues.iter().find(|q| {
            let stem = q.strip_suffix('*').unwrap_or(q);
            stem.contains('*') || (q.is_empty())
        }) {
            return Err(format!(
                "queue pattern {bad:?}: use a name, or a prefix ending in `*`"
            ));
        }
        Ok(Self {
            ops,
            queues,
            name: None,
        })
    }

    /// The name of the key these rights belong to; `None` for the default key.
    pub fn name(&self) -> Option<&KeyId> {
        self.name.as_ref()
    }

    fn may(&self, op: Op) -> bool {
        self.ops & op as u16 != 0
    }

    fn covers(&self, queue: &str) -> bool {
        self.queues.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => queue.starts_with(prefix),
            None => p == queue,
        })
    }

    /// Whether a session with these rights may make `request`: `Err` is the `Forbidden`
    /// reply. `Ping` is always allowed.
    pub fn check(&self, request: &Request) -> Result<(), Reply> {
        use Request as R;
        let (ops, queues): (&[Op], [Option<&str>; 2]) = match request {
            R::Put { queue, .. } | R::PutOnce { queue, .. } => (&[Op::Put], [Some(queue), None]),
            R::Get {
                queue, delivery, ..
            } => match delivery {
                Delivery::Remove => (&[Op::Take], [Some(queue), None]),
                Delivery::Lease { .. } => (&[Op::Lease], [Some(queue), None]),
            },
            R::Ack { queue, .. } | R::Touch { queue, .. } | R::Nack { queue, .. } => {
                (&[Op::Lease], [Some(queue), None])
            }
            R::Complete {
                queue,
                results,
                reply,
                ..
            } => (&[Op::Complete], [Some(queue), (!reply).then_some(results)]),
            R::CompleteAndGet {
                queue,
                results,
                reply,
                ..
            } => (
                &[Op::Complete, Op::Lease],
                [Some(queue), (!reply).then_some(results)],
            ),
            R::Peek { queue, .. } => (&[Op::Peek], [Some(queue), None]),
            R::Inspect { queue } => (&[Op::Inspect], [Some(queue), None]),
            R::Declare { queue, .. } => (&[Op::Declare], [Some(queue), None]),
            R::Purge { queue } => (&[Op::Purge], [Some(queue), None]),
            R::Delete { queue, .. } => (&[Op::Delete], [Some(queue), None]),
            R::Kick { queue, .. } => (&[Op::Kick], [Some(queue), None]),
            R::Stats => (&[Op::Stats], [None, None]),
            R::Ping => return Ok(()),
        };
        if let Some(op) = ops.iter().find(|&&op| !self.may(op)) {
            let name = OPS.iter().find(|(_, o)| o == op).map_or("?", |(n, _)| *n);
            return Err(forbidden(format!("this key may not {name}")));
        }
        match queues.into_iter().flatten().find(|q| !self.covers(q)) {
            Some(queue) => Err(forbidden(format!("this key may not use queue {queue:?}"))),
            None => Ok(()),
        }
    }
}

fn forbidden(message: String) -> Reply {
    Reply::Error {
        kind: ErrorKind::Forbidden,
        message,
    }
}

/// The named keys a master accepts besides its default key. Cheap to share: the master swaps
/// in a new one on reload, and sessions keep the rights they were opened with.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: HashMap<KeyId, Vec<(AuthKey, Arc<Grants>)>>,
}

impl Keyring {
    /// Adds `key` under `id` with `grants`, beside any key already under that id.
    pub fn add(&mut self, id: KeyId, key: AuthKey, mut grants: Grants) {
        grants.name = Some(id);
        let entry = (key.with_id(id), Arc::new(grants));
        self.keys.entry(id).or_default().push(entry);
    }

    /// The keys a hello with `id` may have been made with, and their rights.
    pub fn lookup(&self, id: &KeyId) -> Vec<(AuthKey, Arc<Grants>)> {
        self.keys.get(id).cloned().unwrap_or_default()
    }

    /// How many keys there are, counting both keys of a name being rotated.
    pub fn len(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads a keys file (see the module docs). Every error names the line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut ring = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |e: String| format!("{} line {}: {e}", path.display(), n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, rights, queues, key] = fields[..] else {
                return Err(at("expected four fields: name rights queues key".to_owned()));
            };
            let id: KeyId = name.parse().map_err(at)?;
            let grants = Grants::parse(rights, queues).map_err(at)?;
            let key = match key.strip_prefix("file:") {
                Some(file) => {
                    let (key, _) =
                        AuthKey::load(Some(&dir.join(file))).map_err(|e| at(e.to_string()))?;
                    key
                }
                None => AuthKey::new(key).map_err(|e| at(e.to_string()))?,
            };
            ring.add(id, key, grants);
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskmill_protocol::Wait;

    fn get(queue: &str, delivery: Delivery) -> Request {
        Request::Get {
            queue: queue.into(),
            max: 1,
            wait: Wait::No,
            delivery,
        }
    }

    fn allowed(g: &Grants, r: &Request) -> bool {
        match g.check(r) {
            Ok(()) => true,
            Err(Reply::Error { kind, .. }) => {
                assert_eq!(kind, ErrorKind::Forbidden);
                false
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn roles_grant_their_operations_on_their_queues_only() {
        let worker = Grants::parse("worker", "tasks,results").unwrap();
        let lease = Delivery::Lease { millis: None };
        assert!(allowed(&worker, &get("tasks", lease)));
        assert!(!allowed(&worker, &get("tasks", Delivery::Remove)));
        assert!(!allowed(&worker, &get("other", lease)));
        assert!(!allowed(&worker, &Request::Stats));
        assert!(allowed(&worker, &Request::Ping));
        let complete = |results: &str, reply| Request::Complete {
            queue: "tasks".into(),
            results: results.into(),
            outcomes: vec![],
            wait: Wait::No,
            reply,
        };
        assert!(allowed(&worker, &complete("results", false)));
        assert!(!allowed(&worker, &complete("elsewhere", false)));
        assert!(allowed(&worker, &complete("elsewhere", true)));
        let jobs = Grants::parse("put,stats", "jobs.*").unwrap();
        let put = |queue: &str| Request::Purge {
            queue: queue.into(),
        };
        assert!(!allowed(&jobs, &put("jobs.a")));
        assert!(allowed(&jobs, &Request::Stats));
        let all = Grants::parse("all", "*").unwrap();
        assert_eq!(all, Grants::all());
        assert!(allowed(&all, &put("anything")));
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        assert!(Grants::parse("wrker", "*")
            .unwrap_err()
            .contains("roles are"));
        assert!(Grants::parse("worker", "a*b").is_err());
        assert!(Grants::parse("worker", "a,,b").is_err());
        let dir = std::env::temp_dir().join(format!("taskmill-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        let key = "0123456789abcdef0123";
        std::fs::write(
            &path,
            format!("# a comment\n\nw worker tasks {key}\nw worker\n"),
        )
        .unwrap();
        assert!(Keyring::load(&path).unwrap_err().contains("line 4"));
        std::fs::write(dir.join("k"), key).unwrap();
        let text = format!("w worker tasks {key}\nw worker tasks file:k # rotating\n");
        std::fs::write(&path, text).unwrap();
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.len(), 2);
        let id = "w".parse().unwrap();
        assert!(ring.lookup(&id).iter().all(|(k, _)| k.id() == Some(&id)));
        std::fs::write(&path, "w worker tasks short\n").unwrap();
        assert!(Keyring::load(&path).unwrap_err().contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
