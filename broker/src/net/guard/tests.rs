//! The guard's unit tests: shedding, the reserved failure budget, the table's bounds, grouping.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use super::*;

fn limits(max: usize, per_ip: u32, failures: u32) -> GuardLimits {
    GuardLimits::new(max, per_ip, failures)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn v6(s: &str) -> IpAddr {
    s.parse::<Ipv6Addr>().unwrap().into()
}

fn admit(g: &Guard, ip: IpAddr) -> Admission {
    g.admit(ip).expect("a shedding guard admits everyone")
}

fn in_flight(g: &Guard) -> usize {
    g.lock().slots.len()
}

fn group_slots(g: &Guard, ip: IpAddr) -> usize {
    let (group, _) = g.group(ip);
    g.lock().groups.get(&group).map_or(0, |e| e.slots.len())
}

#[test]
fn a_full_group_sheds_its_oldest_handshake_not_the_newcomer() {
    let g = Guard::new(limits(100, 2, 10));
    let first = admit(&g, ip(1));
    let second = admit(&g, ip(1));
    assert_eq!((first.shed, second.shed), (None, None));
    let third = admit(&g, ip(1));
    assert_eq!(third.shed, Some(Shed::PerAddress(ip(1))));
    assert!(first.ticket.shed.is_cancelled(), "the oldest was shed");
    assert!(!second.ticket.shed.is_cancelled());
    assert!(!third.ticket.shed.is_cancelled());
    // The shed ticket's drop frees nothing twice: the two live slots stay counted.
    drop(first);
    assert_eq!((in_flight(&g), group_slots(&g, ip(1))), (2, 2));
    let other = admit(&g, ip(2));
    assert_eq!(other.shed, None, "other groups are not touched");
}

#[test]
fn a_full_master_sheds_the_oldest_handshake_of_all() {
    let g = Guard::new(limits(3, 10, 10));
    let a = admit(&g, ip(1));
    let b = admit(&g, ip(2));
    let c = admit(&g, ip(2));
    let d = admit(&g, ip(3));
    assert_eq!(d.shed, Some(Shed::Global(ip(1))));
    assert!(a.ticket.shed.is_cancelled());
    assert!(![&b, &c, &d].iter().any(|x| x.ticket.shed.is_cancelled()));
    assert_eq!(group_slots(&g, ip(1)), 0);
    drop(b);
    assert_eq!(in_flight(&g), 2);
    assert_eq!(admit(&g, ip(4)).shed, None);
}

#[test]
fn a_slot_holders_life_is_bounded_by_the_churn_behind_it() {
    // An honest handshake among hostile ones of its group survives per_ip - 1 newcomers.
    let g = Guard::new(limits(1000, 4, 1000));
    let hostile: Vec<_> = (0..4).map(|_| admit(&g, ip(9))).collect();
    let honest = admit(&g, ip(9));
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(admit(&g, ip(9)));
        assert!(!honest.ticket.shed.is_cancelled());
    }
    assert!(hostile.iter().all(|h| h.ticket.shed.is_cancelled()));
    later.push(admit(&g, ip(9)));
    assert!(honest.ticket.shed.is_cancelled());
}

#[test]
fn the_refusing_guard_turns_newcomers_away_instead() {
    let g = Guard::refusing(limits(3, 2, 10));
    let a1 = g.admit(ip(1)).unwrap();
    let _a2 = g.admit(ip(1)).unwrap();
    assert_eq!(g.admit(ip(1)).unwrap_err(), Refusal::Busy, "per-group cap");
    let _b = g.admit(ip(2)).unwrap();
    assert_eq!(g.admit(ip(3)).unwrap_err(), Refusal::Busy, "global cap");
    drop(a1);
    assert!(g.admit(ip(3)).is_ok());
    let g = Guard::refusing(limits(100, 100, 3));
    drop(g.admit(ip(1)).unwrap());
    assert!(!g.failed(ip(1)));
    assert!(!g.failed(ip(1)));
    assert!(g.failed(ip(1)), "the third failure starts throttling");
    assert!(!g.failed(ip(1)), "and it is reported once");
    assert_eq!(g.admit(ip(1)).unwrap_err(), Refusal::Throttled);
    assert!(g.admit(ip(2)).is_ok(), "other groups are unaffected");
}

#[test]
fn a_group_in_debt_is_still_admitted_and_only_its_failures_wait() {
    let g = Guard::new(limits(100, 100, 3));
    for _ in 0..3 {
        assert_eq!(admit(&g, ip(1)).ticket.fail().delay, Duration::ZERO);
    }
    let fourth = admit(&g, ip(1)).ticket.fail();
    assert!(fourth.newly_throttled, "{fourth:?}");
    // One unit of debt at 3 a minute: 20 s, held to the cap.
    assert_eq!(fourth.delay, MAX_FAILURE_DELAY);
    assert!(
        !admit(&g, ip(1)).ticket.fail().newly_throttled,
        "logged once"
    );
    // A peer with the key from the same group gets in, and costs nothing.
    let honest = admit(&g, ip(1));
    assert_eq!(honest.shed, None);
    honest.ticket.spare();
    assert_eq!(admit(&g, ip(2)).ticket.fail().delay, Duration::ZERO);
}

#[test]
fn the_budget_is_reserved_at_admission_so_a_burst_cannot_outrun_it() {
    // Before: the budget was only checked at admission, so an address could open as many
    // handshakes as the per-address cap and have them all fail at once for free.
    let g = Guard::new(limits(100, 100, 3));
    let burst: Vec<_> = (0..6).map(|_| admit(&g, ip(1))).collect();
    let delays: Vec<_> = burst.into_iter().map(|a| a.ticket.fail().delay).collect();
    assert!(delays.iter().all(|d| *d > Duration::ZERO), "{delays:?}");
}

#[test]
fn a_handshake_dropped_unsettled_stays_charged_and_a_spared_one_does_not() {
    // The clean-close case (M2): a peer that left part way through used to cost nothing.
    let g = Guard::new(limits(100, 100, 2));
    drop(admit(&g, ip(1)));
    drop(admit(&g, ip(1)));
    assert!(admit(&g, ip(1)).ticket.fail().delay > Duration::ZERO);
    let g = Guard::new(limits(100, 100, 2));
    for _ in 0..10 {
        admit(&g, ip(1)).ticket.spare();
    }
    assert_eq!(admit(&g, ip(1)).ticket.fail().delay, Duration::ZERO);
}

#[test]
fn the_budget_refills_over_time_and_debt_lasts_in_proportion() {
    let g = Guard::new(limits(100, 100, 60));
    for _ in 0..75 {
        let _ = admit(&g, ip(1)).ticket.fail();
    }
    let (group, _) = g.group(ip(1));
    let budget = |g: &Guard| g.lock().groups[&group].budget;
    assert!((budget(&g) + 15.0).abs() < 0.5, "{}", budget(&g));
    // 60 a minute refills one per second; pretend 16 s passed.
    g.lock().groups.get_mut(&group).unwrap().refilled -= Duration::from_secs(16);
    assert_eq!(admit(&g, ip(1)).ticket.fail().delay, Duration::ZERO);
    // Debt stops at a minute's worth: a delay never grows without bound.
    for _ in 0..1000 {
        let _ = admit(&g, ip(1)).ticket.fail();
    }
    assert!((budget(&g) + 60.0).abs() < 0.5, "{}", budget(&g));
}

#[test]
fn an_untracked_ticket_never_settles_with_a_newer_entry() {
    // L1: with the table full, X is admitted untracked; once room is made X gets an entry,
    // and the old ticket's drop must not count against it (it used to underflow a u32).
    let g = Guard::new(limits(usize::MAX, 1, 60));
    let fillers: Vec<_> = (0..MAX_TRACKED as u32)
        .map(|i| admit(&g, IpAddr::from((i | 0x0b00_0000).to_be_bytes())))
        .collect();
    let x = ip(200);
    let untracked = admit(&g, x);
    assert_eq!(group_slots(&g, x), 0, "admitted without an entry");
    // Free the groups the next sweep looks at (the last one moved the first SWEEP to the
    // back), and let their reserved failures refill.
    let mut fillers = fillers.into_iter();
    for _ in 0..2 * SWEEP {
        drop(fillers.next());
    }
    for e in g.lock().groups.values_mut() {
        e.refilled -= Duration::from_secs(2);
    }
    let tracked = admit(&g, x);
    assert_eq!(group_slots(&g, x), 1);
    drop(untracked);
    assert_eq!(
        group_slots(&g, x),
        1,
        "the untracked ticket left the entry alone"
    );
    assert!(!tracked.ticket.shed.is_cancelled());
    drop(tracked);
    assert_eq!(group_slots(&g, x), 0);
    let again = admit(&g, x);
    assert_eq!(again.shed, None, "the group's one slot is free again");
}

#[test]
fn trusted_networks_are_exempt_from_per_group_limits() {
    let mut l = limits(100, 1, 1);
    l.trusted_networks = vec!["10.0.0.0/24".parse().unwrap()];
    let g = Guard::new(l);
    let many: Vec<_> = (0..5).map(|_| admit(&g, ip(7))).collect();
    assert!(many.iter().all(|a| a.shed.is_none()));
    for a in many {
        assert_eq!(a.ticket.fail().delay, Duration::ZERO);
    }
    // Outside the network the limits hold.
    let outside = IpAddr::from([10, 0, 1, 7]);
    let _a = admit(&g, outside);
    assert_eq!(admit(&g, outside).shed, Some(Shed::PerAddress(outside)));
    // The global limit still counts trusted handshakes.
    let g = Guard::new(GuardLimits {
        trusted_networks: vec!["10.0.0.0/8".parse().unwrap()],
        ..limits(2, 1, 1)
    });
    let _t = (admit(&g, ip(1)), admit(&g, ip(1)));
    assert_eq!(admit(&g, ip(1)).shed, Some(Shed::Global(ip(1))));
}

#[test]
fn ipv6_addresses_are_grouped_by_prefix() {
    let g = Guard::new(limits(100, 1, 10));
    let a = admit(&g, v6("2001:db8:1:2::1"));
    let b = admit(&g, v6("2001:db8:1:2:ffff::9"));
    assert_eq!(b.shed, Some(Shed::PerAddress(v6("2001:db8:1:2::"))));
    assert!(
        a.ticket.shed.is_cancelled(),
        "one /64 shares one group's slots"
    );
    assert_eq!(admit(&g, v6("2001:db8:1:3::1")).shed, None, "another /64");
    let g = Guard::new(GuardLimits {
        ipv6_prefix: 48,
        ..limits(100, 1, 10)
    });
    let _a = admit(&g, v6("2001:db8:1:2::1"));
    assert!(admit(&g, v6("2001:db8:1:3::1")).shed.is_some(), "one /48");
    let g = Guard::new(GuardLimits {
        ipv6_prefix: 128,
        ..limits(100, 1, 10)
    });
    let _a = admit(&g, v6("2001:db8::1"));
    assert_eq!(admit(&g, v6("2001:db8::2")).shed, None, "/128: per address");
    let g = Guard::new(GuardLimits {
        ipv6_prefix: 0,
        ..limits(100, 1, 10)
    });
    assert_eq!(g.group(v6("2001:db8::1")).0, v6("::"));
}

#[test]
fn v4_mapped_addresses_count_as_their_ipv4_address() {
    let mut l = limits(100, 1, 10);
    l.trusted_networks = vec!["192.0.2.0/24".parse().unwrap()];
    let g = Guard::new(l);
    assert_eq!(g.group(v6("::ffff:10.0.0.1")), (ip(1), false));
    assert_eq!(
        g.group(v6("::ffff:192.0.2.5")),
        (IpAddr::from([192, 0, 2, 5]), true),
        "and trusted as such"
    );
    let _a = admit(&g, ip(1));
    assert_eq!(
        admit(&g, v6("::ffff:10.0.0.1")).shed,
        Some(Shed::PerAddress(ip(1)))
    );
}
