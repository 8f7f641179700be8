//! Admission control before authentication: how many handshakes may run at once, overall and
//! per address group, and a per-group budget of failed handshakes.
//!
//! Guessing an authkey of 16+ bytes online is hopeless anyway; this keeps unauthenticated
//! peers from tying up the master, without letting them lock out an honest peer that shares
//! their address (a NAT gateway, Docker's port proxy, a node's SNAT). So on the taskmill port
//! nothing is refused before its proof:
//! - when the handshake slots (overall, or of the newcomer's group) are full, the oldest
//!   handshake holding one is shed and the newcomer takes its place. An honest handshake ends
//!   in a round trip or two; it is shed only if a full group's worth of newer handshakes
//!   arrives meanwhile, while a slot held on purpose lasts only as long as the attacker's own
//!   churn lets it (OpenSSH's `MaxStartups` drops newcomers at random instead, which an
//!   attacker sharing the address turns against the honest peer);
//! - every admitted handshake reserves one unit of its group's failure budget, refunded if it
//!   authenticates (or was a probe: sent nothing, left at once). A group in debt is not
//!   refused: its failures are answered late, which costs a guesser time and an honest peer
//!   nothing.
//!
//! Addresses are grouped as an operator thinks of them: IPv4 by address (a v4-mapped IPv6
//! address is its IPv4 address), IPv6 by a prefix (/64 by default, what one host or subnet
//! usually gets). Trusted networks are exempt from per-group limits. The HTTP port uses the
//! refusing variant ([`Guard::refusing`]): a full or throttled group is turned away.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Groups tracked at once. Past this, a few of the oldest entries are looked at per new group
/// (a clock sweep: constant work under the lock) and an idle one is reused; if none is idle the
/// newcomer is admitted untracked, under the global limit only.
const MAX_TRACKED: usize = 65_536;

/// Entries a new group may look at to find an idle one to replace.
const SWEEP: usize = 8;

/// The longest a failure reply is held back, however deep a group's debt.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(10);

/// The limits.
#[derive(Debug, Clone)]
pub struct GuardLimits {
    /// Handshakes in progress at once, from all addresses.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one address group.
    pub max_handshakes_per_ip: u32,
    /// Failed handshakes one group may have per minute (also the burst); past that its failure
    /// replies are delayed until the budget refills.
    pub auth_failures_per_minute: u32,
    /// IPv6 addresses sharing this many leading bits are one group (0 to 128).
    pub ipv6_prefix: u8,
    /// Sources in these networks are exempt from the per-group limits and budget.
    pub trusted_networks: Vec<IpNet>,
}

impl GuardLimits {
    /// The defaults around the three counts.
    pub fn new(max_handshakes: usize, per_ip: u32, failures_per_minute: u32) -> Self {
        Self {
            max_handshakes,
            max_handshakes_per_ip: per_ip,
            auth_failures_per_minute: failures_per_minute,
            ipv6_prefix: 64,
            trusted_networks: Vec::new(),
        }
    }
}

/// Why a refusing guard turns a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections in progress (overall or from this group).
    Busy,
    /// This group failed too many times recently.
    Throttled,
}

/// Which limit made room for a newcomer by shedding an older handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The global limit: the oldest handshake of all was shed; its group is given.
    Global(IpAddr),
    /// The newcomer's group was full: its oldest handshake was shed.
    PerAddress(IpAddr),
}

/// The outcome of a handshake that did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// How long to hold back the failure reply: zero unless the group is in debt.
    pub delay: Duration,
    /// True the first time this failure put the group in debt, so the caller logs it once.
    pub newly_throttled: bool,
}

#[derive(Debug)]
struct Entry {
    /// Distinguishes this entry from a later one for the same group (L1 in REVIEW.md: a
    /// ticket must never settle with an entry created after it).
    id: u64,
    /// Handshakes in progress, oldest first.
    slots: VecDeque<u64>,
    /// Failures this group may still have; negative is debt. Refills continuously.
    budget: f64,
    refilled: Instant,
    /// Set while in debt, so the start of throttling is logged once.
    throttled: bool,
}

#[derive(Debug)]
struct Slot {
    /// The group and the entry id it was admitted under, if tracked.
    entry: Option<(IpAddr, u64)>,
    group: IpAddr,
    shed: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Every handshake in progress, by admission order.
    slots: BTreeMap<u64, Slot>,
    groups: HashMap<IpAddr, Entry>,
    /// Each tracked group once, for the sweep.
    sweep: VecDeque<IpAddr>,
}

/// Shared admission state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard {
    limits: Arc<GuardLimits>,
    /// Shed old handshakes and reserve budget (the taskmill port), or refuse newcomers.
    shedding: bool,
    state: Arc<Mutex<State>>,
}

/// A handshake slot; settling or dropping it frees the slot.
#[derive(Debug)]
pub struct Ticket {
    guard: Guard,
    seq: u64,
    entry: Option<(IpAddr, u64)>,
    shed: CancellationToken,
    reserved: bool,
}

/// An admitted connection's ticket, and the handshake shed to make room for it, if any.
#[derive(Debug)]
pub struct Admission {
    pub ticket: Ticket,
    pub shed: Option<Shed>,
}

impl Entry {
    fn new(id: u64, per_minute: u32, now: Instant) -> Self {
        Self {
            id,
            slots: VecDeque::new(),
            budget: f64::from(per_minute),
            refilled: now,
            throttled: false,
        }
    }

    fn refill(&mut self, now: Instant, per_minute: u32) {
        let rate = f64::from(per_minute) / 60.0;
        let gained = now.duration_since(self.refilled).as_secs_f64() * rate;
        self.budget = (self.budget + gained).min(f64::from(per_minute));
        self.refilled = now;
        if self.budget >= 1.0 {
            self.throttled = false;
        }
    }

    fn idle(&self, per_minute: u32) -> bool {
        self.slots.is_empty() && self.budget >= f64::from(per_minute)
    }

    fn charge(&mut self, per_minute: u32) {
        self.budget = (self.budget - 1.0).max(-f64::from(per_minute));
    }

    fn refund(&mut self, now: Instant, per_minute: u32) {
        self.refill(now, per_minute);
        self.budget = (self.budget + 1.0).min(f64::from(per_minute));
        self.refill(now, per_minute);
    }
}

impl Guard {
    /// The taskmill port's guard: sheds old handshakes, never refuses.
    pub fn new(limits: GuardLimits) -> Self {
        Self::build(limits, true)
    }

    /// A guard that refuses newcomers when full or throttled (the HTTP port, whose
    /// credentials come with each request rather than in a handshake).
    pub fn refusing(limits: GuardLimits) -> Self {
        Self::build(limits, false)
    }

    fn build(limits: GuardLimits, shedding: bool) -> Self {
        Self {
            limits: Arc::new(limits),
            shedding,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group `ip` is counted under, and whether it is trusted.
    pub fn group(&self, ip: IpAddr) -> (IpAddr, bool) {
        let ip = ip.to_canonical();
        let trusted = self.limits.trusted_networks.iter().any(|n| n.contains(&ip));
        let group = match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                let bits = u32::from(self.limits.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        (group, trusted)
    }

    /// A slot for a handshake from `ip`. A shedding guard always admits, shedding the oldest
    /// handshake of the newcomer's group (if that is full) or of all (if those are).
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Refusal> {
        let per_minute = self.limits.auth_failures_per_minute;
        let per_ip = self.limits.max_handshakes_per_ip as usize;
        let (group, trusted) = self.group(ip);
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        let entry_id = if trusted {
            None
        } else {
            state.track(group, now, per_minute)
        };
        let mut shed = None;
        if let Some(id) = entry_id {
            let entry = state.groups.get_mut(&group).expect("tracked just now");
            entry.refill(now, per_minute);
            if !self.shedding {
                if entry.budget < 1.0 {
                    return Err(Refusal::Throttled);
                }
                if entry.slots.len() >= per_ip {
                    return Err(Refusal::Busy);
                }
            } else if entry.slots.len() >= per_ip {
                if let Some(oldest) = entry.slots.pop_front() {
                    if let Some(slot) = state.slots.remove(&oldest) {
                        slot.shed.cancel();
                    }
                    shed = Some(Shed::PerAddress(group));
                }
            }
            debug_assert_eq!(entry.id, id);
        }
        if shed.is_none() && state.slots.len() >= self.limits.max_handshakes {
            if !self.shedding {
                return Err(Refusal::Busy);
            }
            if let Some((seq, slot)) = state.slots.pop_first() {
                state.forget(seq, slot.entry);
                slot.shed.cancel();
                shed = Some(Shed::Global(slot.group));
            }
        }
        let reserved = self.shedding && entry_id.is_some();
        let entry = entry_id.map(|id| (group, id));
        if let (true, Some(entry)) = (reserved, state.groups.get_mut(&group)) {
            entry.charge(per_minute);
        }
        let seq = state.next;
        state.next += 1;
        let token = CancellationToken::new();
        state.slots.insert(
            seq,
            Slot {
                entry,
                group,
                shed: token.clone(),
            },
        );
        if let Some(e) = state.groups.get_mut(&group).filter(|_| entry.is_some()) {
            e.slots.push_back(seq);
        }
        Ok(Admission {
            ticket: Ticket {
                guard: self.clone(),
                seq,
                entry,
                shed: token,
                reserved,
            },
            shed,
        })
    }

    /// Charges a failure to `ip`'s group (for a guard that reserves nothing: HTTP). Returns
    /// true the first time this puts the group in debt, so the caller can log that once.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let per_minute = self.limits.auth_failures_per_minute;
        let (group, _) = self.group(ip);
        let mut state = self.lock();
        let Some(entry) = state.groups.get_mut(&group) else {
            return false;
        };
        entry.refill(Instant::now(), per_minute);
        entry.charge(per_minute);
        let newly = entry.budget < 1.0 && !entry.throttled;
        entry.throttled |= newly;
        newly
    }

    /// How long a group in debt waits for one failure's worth of budget, for the log line.
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs_f64(60.0 / f64::from(self.limits.auth_failures_per_minute.max(1)))
    }
}

impl State {
    /// The id of `group`'s entry, made if need be; `None` if the table is full of groups in use.
    fn track(&mut self, group: IpAddr, now: Instant, per_minute: u32) -> Option<u64> {
        if let Some(entry) = self.groups.get(&group) {
            return Some(entry.id);
        }
        if self.groups.len() >= MAX_TRACKED && !self.evict_one(now, per_minute) {
            return None;
        }
        let id = self.next;
        self.next += 1;
        self.groups.insert(group, Entry::new(id, per_minute, now));
        self.sweep.push_back(group);
        Some(id)
    }

    /// Removes one idle entry among the [`SWEEP`] oldest in sweep order; true if it found one.
    fn evict_one(&mut self, now: Instant, per_minute: u32) -> bool {
        for _ in 0..SWEEP {
            let Some(group) = self.sweep.pop_front() else {
                return false;
            };
            let idle = self.groups.get_mut(&group).is_none_or(|e| {
                e.refill(now, per_minute);
                e.idle(per_minute)
            });
            if idle {
                self.groups.remove(&group);
                return true;
            }
            self.sweep.push_back(group);
        }
        false
    }

    /// Takes slot `seq` out of its group's entry, if that entry is still the one it joined.
    fn forget(&mut self, seq: u64, entry: Option<(IpAddr, u64)>) {
        let Some((group, id)) = entry else { return };
        if let Some(e) = self.groups.get_mut(&group).filter(|e| e.id == id) {
            if let Some(at) = e.slots.iter().position(|&s| s == seq) {
                e.slots.remove(at);
            }
        }
    }

    /// The entry `entry` names, if it is still the one the ticket was admitted under.
    fn entry(&mut self, entry: Option<(IpAddr, u64)>) -> Option<&mut Entry> {
        let (group, id) = entry?;
        self.groups.get_mut(&group).filter(|e| e.id == id)
    }
}

impl Ticket {
    /// Resolves when this handshake has been shed to make room for a newer one.
    pub fn shed(&self) -> WaitForCancellationFuture<'_> {
        self.shed.cancelled()
    }

    /// The handshake authenticated (or was a probe: nothing sent, gone at once): its reserved
    /// failure is refunded.
    pub fn spare(self) {
        if self.reserved {
            let per_minute = self.guard.limits.auth_failures_per_minute;
            let mut state = self.guard.lock();
            if let Some(e) = state.entry(self.entry) {
                e.refund(Instant::now(), per_minute);
            }
        }
    }

    /// The handshake failed: its reserved failure stays charged. Says how long to hold back
    /// the failure reply.
    pub fn fail(self) -> Failure {
        let limits = &self.guard.limits;
        let per_minute = limits.auth_failures_per_minute;
        let mut state = self.guard.lock();
        let Some(e) = state.entry(self.entry).filter(|_| self.reserved) else {
            return Failure {
                delay: Duration::ZERO,
                newly_throttled: false,
            };
        };
        e.refill(Instant::now(), per_minute);
        if e.budget >= 0.0 {
            return Failure {
                delay: Duration::ZERO,
                newly_throttled: false,
            };
        }
        let rate = f64::from(per_minute.max(1)) / 60.0;
        let delay = Duration::from_secs_f64(-e.budget / rate).min(MAX_FAILURE_DELAY);
        let newly_throttled = !e.throttled;
        e.throttled = true;
        Failure {
            delay,
            newly_throttled,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.guard.lock();
        // A shed slot was taken out already; nothing to free twice.
        if let Some(slot) = state.slots.remove(&self.seq) {
            state.forget(self.seq, slot.entry);
        }
    }
}

#[cfg(test)]
mod tests;
