//! [`ErrorKind`], and its encoding by hand: a kind this client does not know decodes as
//! [`ErrorKind::Unknown`] (section 0 of docs/protocol.md), and kinds added within a protocol
//! version take indices after those it began with, which serde's derive (whose catch-all must
//! be the last variant) cannot express.

use std::fmt;

use serde::de::{self, EnumAccess, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a request failed. The connection stays open after any of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A queue name that is empty, too long or has characters outside `[A-Za-z0-9._:-]`.
    BadQueueName,
    /// Creating the queue would pass the master's limit on the number of queues.
    TooManyQueues,
    /// A request field is out of range (for example `max` of 0).
    BadRequest,
    /// This connection already has as many waiting requests as the master allows.
    TooManyWaiting,
    /// `Inspect` named a queue that does not exist.
    NoSuchQueue,
    /// An item is larger than [`max_payload`] allows for this session's frame cap.
    PayloadTooLarge,
    /// The answer would not fit in one frame (e.g. `Stats` with very many queues under a small
    /// frame cap).
    ReplyTooLarge,
    /// The master is draining before it stops: it takes no new tasks and leases none.
    ShuttingDown,
    // Variants are only ever appended.
    /// The master's disk budget is spent: it takes no new tasks until completions and acks
    /// (which still work) free room. Retry later.
    StorageFull,
    /// Writing the master's log failed: nothing more is acknowledged, and it stops.
    StorageFailed,
    /// A put with this producer and sequence number is still waiting for room; retry later.
    InProgress,
    /// `Delete` with `if_empty` of a queue that holds items.
    NotEmpty,
    /// `Delete` of a queue with leased tasks or waiting requests.
    InUse,
    /// The session's key may not make this request on this queue (scoped keys).
    Forbidden,
    /// A kind this client does not know, from a newer master of the same protocol version:
    /// new kinds may be added within a version, and older clients read them as this.
    Unknown,
    /// The master's memory budget is spent: it takes no new tasks or results until tasks are
    /// settled or taken; nothing of the request was carried out. Retry later.
    MemoryFull,
}

/// Every kind, at its index on the wire.
const KINDS: [ErrorKind; 16] = [
    ErrorKind::BadQueueName,
    ErrorKind::TooManyQueues,
    ErrorKind::BadRequest,
    ErrorKind::TooManyWaiting,
    ErrorKind::NoSuchQueue,
    ErrorKind::PayloadTooLarge,
    ErrorKind::ReplyTooLarge,
    ErrorKind::ShuttingDown,
    ErrorKind::StorageFull,
    ErrorKind::StorageFailed,
    ErrorKind::InProgress,
    ErrorKind::NotEmpty,
    ErrorKind::InUse,
    ErrorKind::Forbidden,
    ErrorKind::MemoryFull,
    // Never sent: its index only has to be one no other kind has.
    ErrorKind::Unknown,
];

const NAMES: [&str; 16] = [
    "BadQueueName",
    "TooManyQueues",
    "BadRequest",
    "TooManyWaiting",
    "NoSuchQueue",
    "PayloadTooLarge",
    "ReplyTooLarge",
    "ShuttingDown",
    "StorageFull",
    "StorageFailed",
    "InProgress",
    "NotEmpty",
    "InUse",
    "Forbidden",
    "MemoryFull",
    "Unknown",
];

impl ErrorKind {
    /// Every kind, in wire order.
    pub const ALL: [ErrorKind; 16] = KINDS;

    /// The index this kind has on the wire.
    pub fn index(self) -> u32 {
        KINDS
            .iter()
            .position(|&k| k == self)
            .expect("every kind is listed") as u32
    }

    /// The kind at wire index `index`; `Unknown` for one this version does not know.
    pub fn from_index(index: u64) -> Self {
        usize::try_from(index)
            .ok()
            .and_then(|i| KINDS.get(i).copied())
            .unwrap_or(ErrorKind::Unknown)
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = self.index();
        serializer.serialize_unit_variant("ErrorKind", index, NAMES[index as usize])
    }
}

/// A variant's identifier: its index (bincode) or its name (self-describing formats).
struct Id(ErrorKind);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ErrorKind index or name")
            }
            fn visit_u64<E: de::Error>(self, index: u64) -> Result<Id, E> {
                Ok(Id(ErrorKind::from_index(index)))
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Id, E> {
                let at = NAMES.iter().position(|&n| n == name);
                Ok(Id(at.map_or(ErrorKind::Unknown, |i| KINDS[i])))
            }
        }
        deserializer.deserialize_identifier(IdVisitor)
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl<'de> Visitor<'de> for KindVisitor {
            type Value = ErrorKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ErrorKind")
            }
            fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<ErrorKind, A::Error> {
                let (Id(kind), variant) = data.variant::<Id>()?;
                variant.unit_variant()?;
                Ok(kind)
            }
        }
        deserializer.deserialize_enum("ErrorKind", &NAMES, KindVisitor)
    }
}
