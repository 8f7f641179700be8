//! The opcode scanner: walks a pickle once, simulating the unpickler's stack with spans and
//! simple values only, under limits. Nothing is resolved, called or expanded.
//!
//! Each stack entry records where its opcodes start and end, and its value when it is a
//! simple one (None, bool, int, float, str, bytes, or a small tuple or dict of those); any
//! other object is `Opaque`. A memo read (GET) copies a simple value (strings as ranges into
//! the input) or yields `Opaque`: it never clones a structure, so a pickle of nested
//! `[x, x]` costs what its bytes cost, not the 2^n leaves it unpickles to.

use std::collections::HashMap;
use std::ops::Range;

use super::op;
use super::reader::Reader;
use super::{Limits, PickleError};

/// A value as far as the scanner knows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    None,
    Bool(bool),
    Int(i64),
    /// An int outside i64.
    BigInt {
        negative: bool,
    },
    Float(f64),
    /// UTF-8 text at this range of the input; `utf8` false for text Python can read and Rust
    /// cannot (lone surrogates, raw-unicode-escape, Python 2 strings).
    Str {
        at: Range<usize>,
        utf8: bool,
    },
    Bytes {
        at: Range<usize>,
    },
    Tuple(Vec<Entry>),
    Dict(Vec<Entry>),
    /// Anything else: lists, sets, objects, big containers. Truthiness where known.
    Opaque {
        truthy: bool,
    },
}

/// One stack entry: the opcodes that built it and its value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub span: Range<usize>,
    pub kind: Kind,
}

/// Containers with more elements than this are opaque: the envelope's are tiny.
const MAX_KEPT_CHILDREN: usize = 16;

impl Kind {
    /// A container's value, kept only while small: its children keep their own children
    /// (the envelope's args tuple keeps its arguments), and anything deeper is opaque, so no
    /// entry nests more than three levels and dropping one never recurses further.
    fn container(mut kids: Vec<Entry>, tuple: bool) -> Kind {
        let truthy = !kids.is_empty();
        if kids.len() > MAX_KEPT_CHILDREN {
            return Kind::Opaque { truthy };
        }
        for kid in &mut kids {
            if let Kind::Tuple(grandkids) | Kind::Dict(grandkids) = &mut kid.kind {
                for g in grandkids {
                    g.kind = g.kind.memo();
                }
            }
        }
        if tuple {
            Kind::Tuple(kids)
        } else {
            Kind::Dict(kids)
        }
    }

    /// The value a memo keeps: scalars as they are, containers as opaque.
    fn memo(&self) -> Kind {
        match self {
            Kind::Tuple(kids) | Kind::Dict(kids) => Kind::Opaque {
                truthy: !kids.is_empty(),
            },
            other => other.clone(),
        }
    }
}

/// A memo definition: where it was made and what it holds.
#[derive(Debug, Clone)]
pub(super) struct MemoDef {
    pub at: usize,
    pub kind: Kind,
}

/// A whole pickle, scanned.
#[derive(Debug)]
pub(super) struct Scanned {
    pub proto: u8,
    pub root: Entry,
    pub memo: HashMap<u32, MemoDef>,
    /// Offsets of memo-defining opcodes, in order, with the index each defined.
    pub defs: Vec<(usize, u32)>,
    /// Whether any opcode names a global or builds an object (GLOBAL, REDUCE, BUILD, ...).
    pub objects: bool,
}

/// The scanner's state: the stack, the marks, the memo.
struct Scanner<'a> {
    r: Reader<'a>,
    limits: Limits,
    stack: Vec<Entry>,
    /// Stack depth at each open MARK, and the MARK's offset.
    marks: Vec<(usize, usize)>,
    memo: HashMap<u32, MemoDef>,
    defs: Vec<(usize, u32)>,
    objects: bool,
    /// Where the opcodes of values since discarded (POP, POP_MARK) begin: they may have
    /// defined memo entries the next value reads (CPython writes a recursive tuple as its
    /// parts, POP_MARK, then a memo read), so that value's span starts there.
    popped: Option<usize>,
}

/// Scans a whole pickle: PROTO 2-5 first, exactly one value on the stack at STOP, nothing
/// after it.
pub(super) fn scan(data: &[u8], limits: Limits) -> Result<Scanned, PickleError> {
    if data.len() > limits.max_bytes {
        return Err(PickleError::Limit("bytes"));
    }
    let mut s = Scanner {
        r: Reader { data, pos: 0 },
        limits,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        defs: Vec::new(),
        objects: false,
        popped: None,
    };
    if s.r.u8()? != op::PROTO {
        return Err(PickleError::NoProto);
    }
    let proto = s.r.u8()?;
    if !(2..=5).contains(&proto) {
        return Err(PickleError::Protocol(proto));
    }
    loop {
        let at = s.r.pos;
        let opcode = s.r.u8()?;
        if opcode == op::STOP {
            if !s.marks.is_empty() || s.stack.len() != 1 {
                return Err(PickleError::NotOneValue);
            }
            if s.r.pos != data.len() {
                return Err(PickleError::Trailing);
            }
            let root = s.stack.pop().expect("one value");
            return Ok(Scanned {
                proto,
                root,
                memo: s.memo,
                defs: s.defs,
                objects: s.objects,
            });
        }
        s.step(at, opcode)?;
    }
}

impl Scanner<'_> {
    /// Entries above the innermost MARK: all an opcode may consume.
    fn available(&self) -> usize {
        self.stack.len() - self.marks.last().map_or(0, |m| m.0)
    }

    fn push(&mut self, start: usize, kind: Kind) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(PickleError::Limit("stack"));
        }
        let start = self.popped.take().map_or(start, |p| p.min(start));
        let span = start..self.r.pos;
        self.stack.push(Entry { span, kind });
        Ok(())
    }

    fn pop(&mut self, n: usize, at: usize) -> Result<Vec<Entry>, PickleError> {
        if self.available() < n {
            return Err(PickleError::StackUnderflow(at));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    /// Everything above the innermost MARK, and the MARK's offset.
    fn pop_mark(&mut self, at: usize) -> Result<(Vec<Entry>, usize), PickleError> {
        let (depth, mark_at) = self.marks.pop().ok_or(PickleError::NoMark(at))?;
        let kids = self.stack.split_off(depth);
        let from = kids.first().map_or(mark_at, |k| k.span.start.min(mark_at));
        Ok((kids, from))
    }

    /// An opcode that consumes `kids` (or a MARK at `from`) and pushes one value spanning them.
    fn combine(&mut self, from: usize, kind: Kind) -> Result<(), PickleError> {
        self.push(from, kind)
    }

    /// The entry an in-place opcode (APPEND, SETITEM, BUILD, a memo put) changes: now ends
    /// here, and its value is opaque unless it is a dict taking items.
    fn top_mut(&mut self, at: usize) -> Result<&mut Entry, PickleError> {
        if self.available() == 0 {
            return Err(PickleError::StackUnderflow(at));
        }
        let end = self.r.pos;
        // Anything discarded since the top was pushed lies inside its span now.
        self.popped = None;
        let top = self.stack.last_mut().expect("available");
        top.span.end = end;
        Ok(top)
    }

    fn opaque_top(&mut self, at: usize) -> Result<(), PickleError> {
        let top = self.top_mut(at)?;
        top.kind = Kind::Opaque { truthy: true };
        Ok(())
    }

    fn memo_put(&mut self, at: usize, index: u32) -> Result<(), PickleError> {
        if self.memo.len() >= self.limits.max_memo {
            return Err(PickleError::Limit("memo"));
        }
        let kind = self.top_mut(at)?.kind.memo();
        if self.memo.insert(index, MemoDef { at, kind }).is_some() {
            // CPython never redefines a memo index; a stream that does could make a span
            // mean something else standalone.
            return Err(PickleError::MemoRedefined(at));
        }
        self.defs.push((at, index));
        Ok(())
    }

    fn memo_get(&mut self, at: usize, index: u32) -> Result<(), PickleError> {
        let kind = self
            .memo
            .get(&index)
            .ok_or(PickleError::BadMemo(at))?
            .kind
            .clone();
        self.push(at, kind)
    }

    fn step(&mut self, at: usize, opcode: u8) -> Result<(), PickleError> {
        let text_index = |line: &[u8]| -> Result<u32, PickleError> {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(PickleError::BadArgument(at))
        };
        match opcode {
            op::MARK => {
                if self.marks.len() >= self.limits.max_marks {
                    return Err(PickleError::Limit("marks"));
                }
                self.marks.push((self.stack.len(), at));
            }
            op::POP => {
                let gone = self.pop(1, at)?;
                self.popped = Some(gone[0].span.start);
            }
            op::POP_MARK => {
                let (_, from) = self.pop_mark(at)?;
                self.popped = Some(from);
            }
            op::DUP => {
                let top = self.stack.last().filter(|_| self.available() > 0);
                let top = top.ok_or(PickleError::StackUnderflow(at))?;
                let kind = top.kind.memo();
                // Standalone, the copy needs the opcodes of what it copies.
                let from = top.span.start;
                self.push(from, kind)?;
            }
            op::FRAME => drop(self.r.u64()?),
            op::PROTO => return Err(PickleError::Refused("PROTO after the start", at)),
            op::PERSID | op::BINPERSID => return Err(PickleError::Refused("persistent id", at)),
            op::EXT1 | op::EXT2 | op::EXT4 => {
                return Err(PickleError::Refused("extension code", at))
            }
            op::NEXT_BUFFER | op::READONLY_BUFFER => {
                return Err(PickleError::Refused("out-of-band buffer", at))
            }
            op::PUT => {
                let index = text_index(self.r.line()?)?;
                self.memo_put(at, index)?;
            }
            op::BINPUT => {
                let index = u32::from(self.r.u8()?);
                self.memo_put(at, index)?;
            }
            op::LONG_BINPUT => {
                let index = self.r.u32()?;
                self.memo_put(at, index)?;
            }
            op::MEMOIZE => {
                let index =
                    u32::try_from(self.memo.len()).map_err(|_| PickleError::Limit("memo"))?;
                self.memo_put(at, index)?;
            }
            op::GET => {
                let index = text_index(self.r.line()?)?;
                self.memo_get(at, index)?;
            }
            op::BINGET => {
                let index = u32::from(self.r.u8()?);
                self.memo_get(at, index)?;
            }
            op::LONG_BINGET => {
                let index = self.r.u32()?;
                self.memo_get(at, index)?;
            }
            _ => return self.value(at, opcode),
        }
        Ok(())
    }

    /// Opcodes that push or combine values.
    fn value(&mut self, at: usize, opcode: u8) -> Result<(), PickleError> {
        let kind = match opcode {
            op::NONE => Kind::None,
            op::NEWTRUE => Kind::Bool(true),
            op::NEWFALSE => Kind::Bool(false),
            op::BININT1 => Kind::Int(i64::from(self.r.u8()?)),
            op::BININT2 => Kind::Int(i64::from(u16::from_le_bytes(
                self.r.take(2)?.try_into().expect("2 bytes"),
            ))),
            op::BININT => Kind::Int(i64::from(i32::from_le_bytes(
                self.r.take(4)?.try_into().expect("4 bytes"),
            ))),
            op::LONG1 => {
                let n = self.r.u8()?;
                let at = self.r.counted(u64::from(n))?;
                long(&self.r.data[at])
            }
            op::LONG4 => {
                let n = self.r.i32_len()?;
                let at = self.r.counted(n)?;
                long(&self.r.data[at])
            }
            op::INT => match self.r.line()? {
                b"00" => Kind::Bool(false),
                b"01" => Kind::Bool(true),
                text => decimal(text).ok_or(PickleError::BadArgument(at))?,
            },
            op::LONG => {
                let text = self.r.line()?;
                let text = text.strip_suffix(b"L").unwrap_or(text);
                decimal(text).ok_or(PickleError::BadArgument(at))?
            }
            op::BINFLOAT => Kind::Float(f64::from_be_bytes(
                self.r.take(8)?.try_into().expect("8 bytes"),
            )),
            op::FLOAT => {
                let text = self.r.line()?;
                let value = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.trim().parse::<f64>().ok());
                Kind::Float(value.ok_or(PickleError::BadArgument(at))?)
            }
            op::SHORT_BINUNICODE => {
                let n = self.r.u8()?;
                self.text(u64::from(n))?
            }
            op::BINUNICODE => {
                let n = self.r.u32()?;
                self.text(u64::from(n))?
            }
            op::BINUNICODE8 => {
                let n = self.r.u64()?;
                self.text(n)?
            }
            op::UNICODE | op::STRING => {
                let line = self.r.line()?;
                Kind::Opaque {
                    truthy: line.len() > 2 || (opcode == op::UNICODE && !line.is_empty()),
                }
            }
            op::SHORT_BINSTRING => {
                let n = self.r.u8()?;
                self.r.counted(u64::from(n))?;
                Kind::Opaque { truthy: n > 0 }
            }
            op::BINSTRING => {
                let n = self.r.i32_len()?;
                self.r.counted(n)?;
                Kind::Opaque { truthy: n > 0 }
            }
            op::SHORT_BINBYTES => {
                let n = self.r.u8()?;
                Kind::Bytes {
                    at: self.r.counted(u64::from(n))?,
                }
            }
            op::BINBYTES => {
                let n = self.r.u32()?;
                Kind::Bytes {
                    at: self.r.counted(u64::from(n))?,
                }
            }
            op::BINBYTES8 => {
                let n = self.r.u64()?;
                Kind::Bytes {
                    at: self.r.counted(n)?,
                }
            }
            op::BYTEARRAY8 => {
                let n = self.r.u64()?;
                self.r.counted(n)?;
                Kind::Opaque { truthy: n > 0 }
            }
            op::EMPTY_TUPLE => Kind::Tuple(Vec::new()),
            op::EMPTY_LIST | op::EMPTY_SET => Kind::Opaque { truthy: false },
            op::EMPTY_DICT => Kind::Dict(Vec::new()),
            op::GLOBAL => {
                self.r.line()?;
                self.r.line()?;
                self.objects = true;
                Kind::Opaque { truthy: true }
            }
            _ => return self.combining(at, opcode),
        };
        self.push(at, kind)
    }

    fn text(&mut self, n: u64) -> Result<Kind, PickleError> {
        let at = self.r.counted(n)?;
        let utf8 = std::str::from_utf8(&self.r.data[at.clone()]).is_ok();
        Ok(Kind::Str { at, utf8 })
    }

    /// Opcodes that consume entries: building containers and objects, and changing them in
    /// place.
    fn combining(&mut self, at: usize, opcode: u8) -> Result<(), PickleError> {
        match opcode {
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let kids = self.pop(usize::from(opcode - op::TUPLE1 + 1), at)?;
                let from = kids[0].span.start;
                self.combine(from, Kind::container(kids, true))
            }
            op::TUPLE => {
                let (kids, from) = self.pop_mark(at)?;
                self.combine(from, Kind::container(kids, true))
            }
            op::LIST | op::FROZENSET => {
                let (kids, from) = self.pop_mark(at)?;
                let truthy = !kids.is_empty();
                self.combine(from, Kind::Opaque { truthy })
            }
            op::DICT => {
                let (kids, from) = self.pop_mark(at)?;
                if kids.len() % 2 != 0 {
                    return Err(PickleError::BadArgument(at));
                }
                self.combine(from, Kind::container(kids, false))
            }
            op::APPEND => {
                self.pop(1, at)?;
                self.opaque_top(at)
            }
            op::APPENDS | op::ADDITEMS => {
                self.pop_mark(at)?;
                self.opaque_top(at)
            }
            op::SETITEM | op::SETITEMS => {
                let kids = if opcode == op::SETITEM {
                    self.pop(2, at)?
                } else {
                    self.pop_mark(at)?.0
                };
                if kids.len() % 2 != 0 {
                    return Err(PickleError::BadArgument(at));
                }
                let top = self.top_mut(at)?;
                let kind = std::mem::replace(&mut top.kind, Kind::None);
                top.kind = match kind {
                    Kind::Dict(mut items) => {
                        items.extend(kids);
                        Kind::container(items, false)
                    }
                    _ => Kind::Opaque { truthy: true },
                };
                Ok(())
            }
            op::BUILD => {
                self.objects = true;
                self.pop(1, at)?;
                self.opaque_top(at)
            }
            op::STACK_GLOBAL | op::REDUCE | op::NEWOBJ | op::NEWOBJ_EX => {
                self.objects = true;
                let n = if opcode == op::NEWOBJ_EX { 3 } else { 2 };
                let kids = self.pop(n, at)?;
                self.combine(kids[0].span.start, Kind::Opaque { truthy: true })
            }
            op::INST | op::OBJ => {
                self.objects = true;
                if opcode == op::INST {
                    self.r.line()?;
                    self.r.line()?;
                }
                let (kids, from) = self.pop_mark(at)?;
                if opcode == op::OBJ && kids.is_empty() {
                    return Err(PickleError::StackUnderflow(at));
                }
                self.combine(from, Kind::Opaque { truthy: true })
            }
            other => Err(PickleError::UnknownOpcode(other, at)),
        }
    }
}

/// A LONG1/LONG4 value: little-endian two's complement.
fn long(bytes: &[u8]) -> Kind {
    if bytes.len() <= 8 {
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let mut buf = [if negative { 0xff } else { 0 }; 8];
        buf[..bytes.len()].copy_from_slice(bytes);
        return Kind::Int(i64::from_le_bytes(buf));
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    // Wider encodings of a small number are legal; only the value matters.
    let fill = if negative { 0xff } else { 0 };
    if bytes[8..].iter().all(|&b| b == fill) && (bytes[7] & 0x80 != 0) == negative {
        return long(&bytes[..8]);
    }
    Kind::BigInt { negative }
}

/// A protocol-0 integer's text.
fn decimal(text: &[u8]) -> Option<Kind> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Some(Kind::Int(n));
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| Kind::BigInt {
        negative: text.starts_with('-'),
    })
}
