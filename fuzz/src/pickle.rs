//! `python_pickle`: the pickle scanner of the Python listener on hostile bytes.
//!
//! Steering byte bit 0: 0 reads the rest as a manager request (as the listener reads each
//! frame after authentication) and makes a standalone item of every argument; 1 reads it as a
//! stored payload (as a `get` does before splicing it into a reply).

use taskmill_protocol::pickle::{self, Limits, Payload, Request};

/// Small limits, so the fuzzer reaches them.
const LIMITS: Limits = Limits {
    max_bytes: 1 << 16,
    max_stack: 64,
    max_marks: 16,
    max_memo: 64,
};

/// No limits: what a Python reader of the result would accept.
const UNLIMITED: Limits = Limits {
    max_bytes: usize::MAX,
    max_stack: usize::MAX,
    max_marks: usize::MAX,
    max_memo: usize::MAX,
};

pub fn python_pickle(data: &[u8]) {
    let Some((&steer, body)) = data.split_first() else {
        return;
    };
    for limits in [LIMITS, Limits::default()] {
        if steer & 1 == 0 {
            request(body, limits);
        } else {
            payload(body, limits);
        }
    }
}

fn request(body: &[u8], limits: Limits) {
    let Ok(req) = Request::parse(body, limits) else {
        return;
    };
    let args = req.args.iter().chain(req.kwds.iter().map(|(_, a)| a));
    for arg in args {
        let _ = arg.value.truthy();
        if let Ok(item) = req.item(arg) {
            // An item the listener would store stands alone and splices into a reply that
            // scans again.
            assert!(
                matches!(pickle::inspect(&item, UNLIMITED), Payload::Pickle { .. }),
                "an extracted item does not stand alone: {item:02x?}"
            );
            payload(&item, UNLIMITED);
        }
    }
}

fn payload(body: &[u8], limits: Limits) {
    let reply = pickle::return_item(body, limits);
    assert!(
        matches!(pickle::inspect(&reply, UNLIMITED), Payload::Pickle { .. }),
        "a reply does not scan: {reply:02x?}"
    );
    let _ = pickle::read_int(body);
}
