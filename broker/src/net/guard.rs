//! Admission control before authentication: how many handshakes may run at once, overall and
//! per source address, and a per-address budget of failed handshakes.
//!
//! Guessing an authkey of 16+ bytes online is hopeless anyway; this keeps unauthenticated
//! peers from tying up the master. Every limit is per source address or global, and a
//! connection that authenticates releases its slot at once, so a flood from some addresses
//! cannot lock out honest clients elsewhere. TCP source addresses cannot be spoofed past the
//! handshake, so an address is only ever throttled for its own failures (or its NAT
//! neighbours').

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Addresses tracked at once; past this, idle entries are pruned, and if none are idle a new
/// address is admitted without a failure budget (the global limit still holds).
const MAX_TRACKED: usize = 65_536;

/// The limits.
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    /// Handshakes in progress at once, from all addresses.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one address.
    pub max_handshakes_per_ip: u32,
    /// Failed handshakes one address may have per minute (also the burst) before its new
    /// connections are refused until the budget refills.
    pub auth_failures_per_minute: u32,
}

/// Why a connection is refused before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many handshakes in progress (overall or from this address).
    Busy,
    /// This address failed too many handshakes recently.
    Throttled,
}

#[derive(Debug)]
struct Entry {
    in_flight: u32,
    /// Failures this address may still have; refills continuously.
    budget: f64,
    refilled: Instant,
    /// Set while throttled, so the start of throttling is logged once.
    throttled: bool,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    by_ip: HashMap<IpAddr, Entry>,
}

/// Shared admission state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard {
    limits: GuardLimits,
    state: Arc<Mutex<State>>,
}

/// A handshake slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Ticket {
    guard: Guard,
    ip: IpAddr,
}

impl Entry {
    fn refill(&mut self, now: Instant, per_minute: u32) {
        let rate = f64::from(per_minute) / 60.0;
        let gained = now.duration_since(self.refilled).as_secs_f64() * rate;
        self.budget = (self.budget + gained).min(f64::from(per_minute));
        self.refilled = now;
    }

    fn idle(&self, per_minute: u32) -> bool {
        self.in_flight == 0 && self.budget >= f64::from(per_minute)
    }
}

impl Guard {
    pub fn new(limits: GuardLimits) -> Self {
        Self {
            limits,
            state: Arc::new(Mutex::new(State {
                in_flight: 0,
                by_ip: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a handshake from `ip`, or why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refusal> {
        let per_minute = self.limits.auth_failures_per_minute;
        let now = Instant::now();
        let mut state = self.lock();
        if state.in_flight >= self.limits.max_handshakes {
            return Err(Refusal::Busy);
        }
        if !state.by_ip.contains_key(&ip) && state.by_ip.len() >= MAX_TRACKED {
            state.by_ip.retain(|_, e| {
                e.refill(now, per_minute);
                !e.idle(per_minute)
            });
        }
        if state.by_ip.len() < MAX_TRACKED || state.by_ip.contains_key(&ip) {
            let entry = state.by_ip.entry(ip).or_insert_with(|| Entry {
                in_flight: 0,
                budget: f64::from(per_minute),
                refilled: now,
                throttled: false,
            });
            entry.refill(now, per_minute);
            if entry.budget < 1.0 {
                return Err(Refusal::Throttled);
            }
            if entry.in_flight >= self.limits.max_handshakes_per_ip {
                return Err(Refusal::Busy);
            }
            entry.throttled = false;
            entry.in_flight += 1;
        }
        state.in_flight += 1;
        Ok(Ticket {
            guard: self.clone(),
            ip,
        })
    }

    /// Charges a failed handshake to `ip`. Returns true the first time this pushes the address
    /// into throttling, so the caller can log that once.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let per_minute = self.limits.auth_failures_per_minute;
        let mut state = self.lock();
        let Some(entry) = state.by_ip.get_mut(&ip) else {
            return false;
        };
        entry.refill(Instant::now(), per_minute);
        entry.budget = (entry.budget - 1.0).max(0.0);
        let newly = entry.budget < 1.0 && !entry.throttled;
        entry.throttled |= newly;
        newly
    }

    /// How long until `ip` may try again, for the log line.
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs_f64(60.0 / f64::from(self.limits.auth_failures_per_minute.max(1)))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.guard.lock();
        state.in_flight -= 1;
        if let Some(entry) = state.by_ip.get_mut(&self.ip) {
            entry.in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: usize, per_ip: u32, failures: u32) -> Guard {
        Guard::new(GuardLimits {
            max_handshakes: max,
            max_handshakes_per_ip: per_ip,
            auth_failures_per_minute: failures,
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn handshakes_are_capped_overall_and_per_address_and_released_on_drop() {
        let g = guard(3, 2, 10);
        let a1 = g.admit(ip(1)).unwrap();
        let _a2 = g.admit(ip(1)).unwrap();
        assert_eq!(
            g.admit(ip(1)).unwrap_err(),
            Refusal::Busy,
            "per-address cap"
        );
        let _b = g.admit(ip(2)).unwrap();
        assert_eq!(g.admit(ip(3)).unwrap_err(), Refusal::Busy, "global cap");
        drop(a1);
        assert!(g.admit(ip(3)).is_ok());
    }

    #[test]
    fn failures_throttle_only_the_failing_address_and_log_once() {
        let g = guard(100, 100, 3);
        assert!(!g.failed(ip(1)), "untracked addresses are not charged");
        drop(g.admit(ip(1)).unwrap());
        assert!(!g.failed(ip(1)));
        assert!(!g.failed(ip(1)));
        assert!(g.failed(ip(1)), "the third failure starts throttling");
        assert!(!g.failed(ip(1)), "and it is reported once");
        assert_eq!(g.admit(ip(1)).unwrap_err(), Refusal::Throttled);
        assert!(g.admit(ip(2)).is_ok(), "other addresses are unaffected");
    }

    #[test]
    fn the_failure_budget_refills_over_time() {
        let g = guard(100, 100, 60);
        drop(g.admit(ip(1)).unwrap());
        for _ in 0..60 {
            g.failed(ip(1));
        }
        assert_eq!(g.admit(ip(1)).unwrap_err(), Refusal::Throttled);
        // 60 per minute refills one per second; pretend a second passed.
        g.lock().by_ip.get_mut(&ip(1)).unwrap().refilled -= Duration::from_millis(1100);
        assert!(g.admit(ip(1)).is_ok());
    }
}
