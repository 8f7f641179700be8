//! Python pickles, as far as a master that must never run Python needs them: reading the
//! request envelopes of `multiprocessing.managers`, keeping the items they carry as opaque
//! standalone pickles, and writing the replies. No global is ever resolved and nothing is
//! called; an item is a span of opcodes, copied, never an object.
//!
//! Why not a crate: `serde-pickle` and `deser-pickle` evaluate a pickle into an object model
//! (which loses classes, or args-plus-state objects) and neither exposes opcode spans; the
//! master needs to lift `args[0]` out of a request and splice it into a reply byte for byte.
//!
//! # Layout
//! - `scan`: the opcode scanner with its limits; `reader`: opcode arguments.
//! - `item`: an item's span made a standalone pickle, and splicing one into a reply.
//! - `write`: the pickles the master writes (replies, ints and strings for workers).
//! - this file: opcodes, limits, errors, and the typed view of an envelope.

mod item;
mod reader;
mod scan;
mod write;

use std::ops::Range;

pub use write::{bytes_pickle, int_pickle, reply, str_pickle, Writer};

use scan::{Kind, Scanned};

/// Bounds on what scanning one pickle may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest pickle scanned.
    pub max_bytes: usize,
    /// Entries on the simulated stack at once (nesting and pending values).
    pub max_stack: usize,
    /// Open MARKs at once.
    pub max_marks: usize,
    /// Memo entries (each a few words, never a copy of a value).
    pub max_memo: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_stack: 10_000,
            max_marks: 10_000,
            max_memo: 1 << 20,
        }
    }
}

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    #[error("the pickle ends early")]
    Truncated,
    #[error("the pickle does not start with a PROTO opcode (protocol 2 or later)")]
    NoProto,
    #[error("pickle protocol {0} is not supported (2 to 5 are)")]
    Protocol(u8),
    #[error("unknown opcode {0:#04x} at byte {1}")]
    UnknownOpcode(u8, usize),
    #[error("{0} not accepted (byte {1})")]
    Refused(&'static str, usize),
    #[error("opcode at byte {0} needs more values than the stack holds")]
    StackUnderflow(usize),
    #[error("opcode at byte {0} needs a MARK and there is none")]
    NoMark(usize),
    #[error("memo read at byte {0} of an entry never written")]
    BadMemo(usize),
    #[error("memo entry written twice (byte {0})")]
    MemoRedefined(usize),
    #[error("bad opcode argument at byte {0}")]
    BadArgument(usize),
    #[error("the pickle does not leave exactly one value")]
    NotOneValue,
    #[error("bytes after the pickle's STOP")]
    Trailing,
    #[error("the pickle passes the scanner's {0} limit")]
    Limit(&'static str),
    #[error("the item refers to a value outside it that cannot be copied in")]
    Unsplittable,
    #[error("{0}")]
    Envelope(&'static str),
}

/// A simple value from an envelope: what the master needs to know of an argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// An int outside i64.
    BigInt {
        negative: bool,
    },
    Float(f64),
    Str(&'a str),
    /// A str Rust cannot hold as UTF-8 (lone surrogates, Python 2 text).
    OddStr,
    Bytes(&'a [u8]),
    /// Any other object; `truthy` is Python's `bool()` of it where the scanner can tell
    /// (empty containers are false), true otherwise.
    Other {
        truthy: bool,
    },
}

impl Value<'_> {
    /// Python's `bool(value)`.
    pub fn truthy(&self) -> bool {
        match *self {
            Value::None => false,
            Value::Bool(b) => b,
            Value::Int(n) => n != 0,
            Value::BigInt { .. } | Value::OddStr => true,
            Value::Float(f) => f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Bytes(b) => !b.is_empty(),
            Value::Other { truthy } => truthy,
        }
    }

    /// Python's type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt { .. } => "int",
            Value::Float(_) => "float",
            Value::Str(_) | Value::OddStr => "str",
            Value::Bytes(_) => "bytes",
            Value::Other { .. } => "object",
        }
    }
}

/// One argument of a request: its value and where its opcodes are.
#[derive(Debug, Clone)]
pub struct Arg<'a> {
    pub value: Value<'a>,
    span: Range<usize>,
}

/// A manager request `(ident, methodname, args, kwds)`, scanned.
#[derive(Debug)]
pub struct Request<'a> {
    pub ident: Option<&'a str>,
    pub method: &'a str,
    pub args: Vec<Arg<'a>>,
    /// Keyword arguments in the order sent; keys are strings (checked).
    pub kwds: Vec<(&'a str, Arg<'a>)>,
    data: &'a [u8],
    scanned: Scanned,
}

impl<'a> Request<'a> {
    /// Scans `data` as a request envelope under `limits`.
    pub fn parse(data: &'a [u8], limits: Limits) -> Result<Self, PickleError> {
        let scanned = scan::scan(data, limits)?;
        let bad = PickleError::Envelope;
        let Kind::Tuple(fields) = &scanned.root.kind else {
            return Err(bad("a request must be a tuple (ident, method, args, kwds)"));
        };
        let [ident, method, args, kwds] = fields.as_slice() else {
            return Err(bad(
                "a request must be a tuple of 4: (ident, method, args, kwds)",
            ));
        };
        let ident = match value(data, &ident.kind) {
            Value::None => None,
            Value::Str(s) => Some(s),
            _ => return Err(bad("a request's ident must be None or a str")),
        };
        let Value::Str(method) = value(data, &method.kind) else {
            return Err(bad("a request's method name must be a str"));
        };
        let Kind::Tuple(args) = &args.kind else {
            return Err(bad("a request's args must be a short tuple"));
        };
        let args = args.iter().map(|a| arg(data, a)).collect();
        let kwds = match &kwds.kind {
            Kind::Dict(items) => items
                .chunks_exact(2)
                .map(|kv| match value(data, &kv[0].kind) {
                    Value::Str(key) => Ok((key, arg(data, &kv[1]))),
                    _ => Err(bad("keywords must be strings")),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad("a request's kwds must be a small dict")),
        };
        Ok(Self {
            ident,
            method,
            args,
            kwds,
            data,
            scanned,
        })
    }

    /// `arg` as a standalone pickle: what a `put` stores.
    pub fn item(&self, arg: &Arg<'_>) -> Result<Vec<u8>, PickleError> {
        item::standalone(self.data, &self.scanned, arg.span.clone())
    }
}

fn arg<'a>(data: &'a [u8], entry: &scan::Entry) -> Arg<'a> {
    Arg {
        value: value(data, &entry.kind),
        span: entry.span.clone(),
    }
}

fn value<'a>(data: &'a [u8], kind: &Kind) -> Value<'a> {
    match kind {
        Kind::None => Value::None,
        Kind::Bool(b) => Value::Bool(*b),
        Kind::Int(n) => Value::Int(*n),
        Kind::BigInt { negative } => Value::BigInt {
            negative: *negative,
        },
        Kind::Float(f) => Value::Float(*f),
        Kind::Str { at, utf8: true } => {
            Value::Str(std::str::from_utf8(&data[at.clone()]).expect("checked when scanned"))
        }
        Kind::Str { .. } => Value::OddStr,
        Kind::Bytes { at } => Value::Bytes(&data[at.clone()]),
        Kind::Tuple(kids) | Kind::Dict(kids) => Value::Other {
            truthy: !kids.is_empty(),
        },
        Kind::Opaque { truthy } => Value::Other { truthy: *truthy },
    }
}

/// What a stored payload is to a Python reader.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload<'a> {
    /// A standalone pickle; `value` is its simple value, if it has one.
    Pickle { value: Value<'a>, objects: bool },
    /// Not a pickle this master would splice: hand it to Python as `bytes`.
    Raw,
}

/// Reads `payload` as a standalone pickle, under `limits`.
pub fn inspect(payload: &[u8], limits: Limits) -> Payload<'_> {
    match scan::scan(payload, limits) {
        Ok(scanned) => Payload::Pickle {
            value: value(payload, &scanned.root.kind),
            objects: scanned.objects,
        },
        Err(_) => Payload::Raw,
    }
}

/// The reply `('#RETURN', item)` for a stored payload: a standalone pickle is spliced in as
/// it is; anything else goes as `bytes`.
pub fn return_item(payload: &[u8], limits: Limits) -> Vec<u8> {
    match inspect(payload, limits) {
        Payload::Pickle { .. } => item::splice_return(payload),
        Payload::Raw => reply("#RETURN", |w| w.bytes(payload)),
    }
}

/// An int read from a standalone pickle (a worker's task, a Python result), if it is one.
pub fn read_int(payload: &[u8]) -> Option<i64> {
    match inspect(payload, Limits::default()) {
        Payload::Pickle {
            value: Value::Int(n),
            ..
        } => Some(n),
        Payload::Pickle {
            value: Value::Bool(b),
            ..
        } => Some(i64::from(b)),
        _ => None,
    }
}

/// The opcodes, named as in CPython's `pickletools`.
#[allow(missing_docs)]
pub mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

#[cfg(test)]
mod tests;
