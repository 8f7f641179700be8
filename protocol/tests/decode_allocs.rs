//! What decoding one frame costs in heap allocations: payloads are views into the frame, so a
//! frame of thousands of items allocates a handful of times, not once per item.
//!
//! Its own test binary because it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use taskmill_protocol::{
    ClientMessage, MasterMessage, MessageCodec, Reply, Request, Task, Wait, DEFAULT_MAX_FRAME,
};
use tokio_util::codec::{Decoder, Encoder};

struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    // Per thread, so tests running in parallel do not count each other's allocations.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn counted() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

const ITEMS: usize = 4096;

/// A generous bound for the fixed costs: the frame's buffer turning shared, the queue name,
/// the vector of items.
const FEW: usize = 16;

fn payloads() -> Vec<Bytes> {
    (0..ITEMS)
        .map(|i| Bytes::from(format!("payload number {i:>8}")))
        .collect()
}

fn put() -> ClientMessage {
    ClientMessage::Request {
        id: 1,
        request: Request::Put {
            queue: "tasks".into(),
            items: payloads(),
            wait: Wait::No,
            reply_to: None,
        },
    }
}

fn tasks() -> MasterMessage {
    let tasks = payloads()
        .into_iter()
        .zip(1..)
        .map(|(payload, id)| Task {
            id,
            attempt: 1,
            payload,
            reply_to: Bytes::new(),
        })
        .collect();
    MasterMessage::Reply {
        id: 1,
        reply: Reply::Tasks(tasks),
    }
}

fn frame<T: Serialize>(msg: &T) -> BytesMut {
    let mut buf = BytesMut::new();
    MessageCodec::<(), T>::new(DEFAULT_MAX_FRAME)
        .encode(msg, &mut buf)
        .unwrap();
    buf
}

/// Checks that decoding `msg`'s frame gives it back in fewer than [`FEW`] allocations.
fn decodes_in_a_few_allocations<T>(msg: T, what: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut buf = frame(&msg);
    let mut codec = MessageCodec::<T, ()>::new(DEFAULT_MAX_FRAME);
    let before = ALLOCATIONS.with(Cell::get);
    let decoded = codec.decode(&mut buf).unwrap().unwrap();
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    assert_eq!(decoded, msg);
    assert!(
        allocations < FEW,
        "{allocations} allocations to decode a {ITEMS}-item {what}"
    );
}

#[test]
fn a_put_of_thousands_of_items_decodes_in_a_few_allocations() {
    decodes_in_a_few_allocations(put(), "Put");
}

#[test]
fn a_reply_of_thousands_of_tasks_decodes_in_a_few_allocations() {
    decodes_in_a_few_allocations(tasks(), "Tasks reply");
}

/// The time per frame, for comparisons by hand (`cargo test --release -- --ignored`).
#[test]
#[ignore]
fn time_to_decode_a_put_of_thousands_of_items() {
    const ROUNDS: u32 = 2000;
    let encoded = frame(&put());
    let mut codec = MessageCodec::<ClientMessage, ()>::new(DEFAULT_MAX_FRAME);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let mut buf = encoded.clone();
        std::hint::black_box(codec.decode(&mut buf).unwrap().unwrap());
    }
    let per_frame = start.elapsed() / ROUNDS;
    eprintln!("{per_frame:?} to decode a {ITEMS}-item Put frame");
}
