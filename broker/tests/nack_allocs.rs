//! What one `Nack` naming thousands of tasks allocates: its reason is cut and kept once, so a
//! reason of almost a whole frame costs the master about one reason, not one per task (the
//! review's H1: 3,000 tasks and a 1 MB reason took a master to 2.96 GB).
//!
//! Its own test binary because it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use taskmill_broker::broker::Step;
use taskmill_broker::{Broker, QueueLimits};
use taskmill_protocol::Delivery;

struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    // Per thread, so tests running in parallel do not count each other's allocations.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn counted(bytes: usize) {
    let _ = ALLOCATED.try_with(|n| n.set(n.get() + bytes));
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
}

const TASKS: usize = 3000;
const REASON: usize = 1_000_000;

fn ready<T, W: std::fmt::Debug>(step: Step<T, W>) -> T {
    match step {
        Step::Ready(t) => t,
        Step::Wait(w) => panic!("expected an answer now, got {w:?}"),
    }
}

#[test]
fn a_nack_of_thousands_of_tasks_with_a_frame_long_reason_allocates_about_one_reason() {
    for fatal in [false, true] {
        let br = Broker::new(QueueLimits {
            default_capacity: None,
            max_queues: 8,
            lease_timeout: Duration::from_secs(30),
            max_attempts: 5,
            max_memory: u64::MAX,
        });
        let s = br.open_session();
        ready(
            br.put(s, "q", vec![Bytes::from_static(b"x"); TASKS], false)
                .unwrap(),
        );
        let lease = Delivery::Lease { millis: None };
        let got = ready(br.get(s, "q", TASKS as u32, 1 << 20, lease, false).unwrap());
        let ids: Vec<_> = got.iter().map(|t| t.id).collect();
        let reason = "r".repeat(REASON);
        let (done, bytes) = allocated_by(|| {
            br.nack(s, "q", &ids, Duration::ZERO, &reason, fatal)
                .unwrap()
        });
        assert_eq!(done.done() as usize, TASKS);
        // Per task: a place in the queue (or a dead letter of a few hundred bytes); the
        // reason itself at most a few times.
        let bound = 4 * REASON + TASKS * 1024;
        assert!(
            bytes < bound,
            "fatal {fatal}: the nack allocated {bytes} bytes (bound {bound}); one copy of the \
             reason per task would be {}",
            TASKS * REASON
        );
    }
}
