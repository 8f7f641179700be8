//! A queued task as the queue keeps it: its id, delivery count and payload, small payloads
//! inline.

use bytes::Bytes;
use taskmill_protocol::TaskId;

/// A queued task: its id, how often it was handed out, and its payload.
#[derive(Debug)]
pub(super) struct Item {
    pub(super) id: TaskId,
    pub(super) stored: Stored,
}

// The memory target (64 bytes per queued small task, with a deque's growth slack) needs this.
const _: () = assert!(std::mem::size_of::<Item>() <= 32);

/// Payloads up to this long are kept inside the [`Item`].
pub(super) const INLINE: usize = 18;

/// An item's delivery count and payload as the queue keeps them. Most payloads are a few bytes
/// (an encoded `SquareTask` is at most 8 for the usual inputs, its result about 15), so they
/// are stored inline: a queued small task costs a 32-byte slot and no allocation of its own.
/// The count sits inside each variant so that it shares the alignment padding of the boxed
/// one, which leaves 18 bytes inline. Larger payloads are a copy of their own (never a view
/// into a frame), boxed so the inline case sets the size.
#[derive(Debug)]
pub(super) enum Stored {
    Inline {
        deliveries: u32,
        len: u8,
        data: [u8; INLINE],
    },
    Boxed {
        deliveries: u32,
        bytes: Box<Bytes>,
    },
}

impl Item {
    pub(super) fn new(id: TaskId, deliveries: u32, payload: &[u8]) -> Self {
        let stored = if payload.len() > INLINE {
            // A decoded payload is a view into its whole frame (up to the frame cap); a queue
            // that kept views would hold every frame one item of it still sits in.
            Stored::Boxed {
                deliveries,
                bytes: Box::new(Bytes::copy_from_slice(payload)),
            }
        } else {
            let mut data = [0; INLINE];
            data[..payload.len()].copy_from_slice(payload);
            Stored::Inline {
                deliveries,
                len: payload.len() as u8,
                data,
            }
        };
        Self { id, stored }
    }

    /// Times handed out so far.
    pub(super) fn deliveries(&self) -> u32 {
        match self.stored {
            Stored::Inline { deliveries, .. } | Stored::Boxed { deliveries, .. } => deliveries,
        }
    }

    pub(super) fn deliveries_mut(&mut self) -> &mut u32 {
        match &mut self.stored {
            Stored::Inline { deliveries, .. } | Stored::Boxed { deliveries, .. } => deliveries,
        }
    }

    pub(super) fn payload_len(&self) -> usize {
        match &self.stored {
            Stored::Inline { len, .. } => usize::from(*len),
            Stored::Boxed { bytes, .. } => bytes.len(),
        }
    }

    /// The payload when it is stored inline.
    pub(super) fn inline(&self) -> Option<&[u8]> {
        match &self.stored {
            Stored::Inline { len, data, .. } => Some(&data[..usize::from(*len)]),
            Stored::Boxed { .. } => None,
        }
    }

    #[cfg(test)]
    pub(super) fn payload(&self) -> &[u8] {
        match &self.stored {
            Stored::Inline { len, data, .. } => &data[..usize::from(*len)],
            Stored::Boxed { bytes, .. } => bytes,
        }
    }

    /// The payload as `Bytes`: a copy if it is inline, shared if not.
    pub(super) fn payload_bytes(&self) -> Bytes {
        match &self.stored {
            Stored::Inline { len, data, .. } => Bytes::copy_from_slice(&data[..usize::from(*len)]),
            Stored::Boxed { bytes, .. } => Bytes::clone(bytes),
        }
    }

    pub(super) fn into_payload(self) -> Bytes {
        match self.stored {
            Stored::Inline { len, data, .. } => Bytes::copy_from_slice(&data[..usize::from(len)]),
            Stored::Boxed { bytes, .. } => *bytes,
        }
    }
}
