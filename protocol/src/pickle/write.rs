//! The pickles the master writes: protocol 4 without FRAME or MEMOIZE (both optional for a
//! reader), so every reply is a fixed template around its values.

use super::op;

/// Writes opcodes.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn proto(&mut self, version: u8) {
        self.buf.extend_from_slice(&[op::PROTO, version]);
    }

    pub fn stop(&mut self) {
        self.buf.push(op::STOP);
    }

    pub fn none(&mut self) {
        self.buf.push(op::NONE);
    }

    pub fn bool(&mut self, b: bool) {
        self.buf.push(if b { op::NEWTRUE } else { op::NEWFALSE });
    }

    /// The shortest of BININT1, BININT2, BININT and LONG1 that holds `n`.
    pub fn int(&mut self, n: i128) {
        if let Ok(small) = u8::try_from(n) {
            self.buf.extend_from_slice(&[op::BININT1, small]);
        } else if let Ok(small) = u16::try_from(n) {
            self.buf.push(op::BININT2);
            self.buf.extend_from_slice(&small.to_le_bytes());
        } else if let Ok(small) = i32::try_from(n) {
            self.buf.push(op::BININT);
            self.buf.extend_from_slice(&small.to_le_bytes());
        } else {
            let bytes = n.to_le_bytes();
            // Drop high bytes that only repeat the sign.
            let mut len = bytes.len();
            while len > 1 {
                let (top, next) = (bytes[len - 1], bytes[len - 2]);
                let redundant = (top == 0 && next & 0x80 == 0) || (top == 0xff && next & 0x80 != 0);
                if !redundant {
                    break;
                }
                len -= 1;
            }
            self.buf.extend_from_slice(&[op::LONG1, len as u8]);
            self.buf.extend_from_slice(&bytes[..len]);
        }
    }

    pub fn float(&mut self, f: f64) {
        self.buf.push(op::BINFLOAT);
        self.buf.extend_from_slice(&f.to_be_bytes());
    }

    pub fn str(&mut self, s: &str) {
        self.str_bytes(s.as_bytes());
    }

    /// A str from its UTF-8 bytes (Python reads them with `surrogatepass`).
    pub fn str_bytes(&mut self, b: &[u8]) {
        if let Ok(n) = u8::try_from(b.len()) {
            self.buf.extend_from_slice(&[op::SHORT_BINUNICODE, n]);
        } else if let Ok(n) = u32::try_from(b.len()) {
            self.buf.push(op::BINUNICODE);
            self.buf.extend_from_slice(&n.to_le_bytes());
        } else {
            self.buf.push(op::BINUNICODE8);
            self.buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        }
        self.buf.extend_from_slice(b);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        if let Ok(n) = u8::try_from(b.len()) {
            self.buf.extend_from_slice(&[op::SHORT_BINBYTES, n]);
        } else if let Ok(n) = u32::try_from(b.len()) {
            self.buf.push(op::BINBYTES);
            self.buf.extend_from_slice(&n.to_le_bytes());
        } else {
            self.buf.push(op::BINBYTES8);
            self.buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        }
        self.buf.extend_from_slice(b);
    }

    /// Opens a tuple of any length, closed by `tuple(n, true)`.
    pub fn mark(&mut self) {
        self.buf.push(op::MARK);
    }

    /// Closes a tuple: TUPLE after a MARK, or TUPLE1-3 / EMPTY_TUPLE when `marked` is false.
    pub fn tuple(&mut self, n: usize, marked: bool) {
        match (marked, n) {
            (true, _) => self.buf.push(op::TUPLE),
            (false, 0) => self.buf.push(op::EMPTY_TUPLE),
            (false, 1) => self.buf.push(op::TUPLE1),
            (false, 2) => self.buf.push(op::TUPLE2),
            (false, 3) => self.buf.push(op::TUPLE3),
            (false, _) => unreachable!("tuples of 4 or more need a MARK"),
        }
    }

    /// An exception instance `module.name(msg)` (or with no arguments), as
    /// `BaseException.__reduce__` writes it: the class, its args, REDUCE.
    pub fn exception(&mut self, module: &str, name: &str, msg: Option<&str>) {
        self.str(module);
        self.str(name);
        self.buf.push(op::STACK_GLOBAL);
        match msg {
            Some(msg) => {
                self.str(msg);
                self.buf.push(op::TUPLE1);
            }
            None => self.buf.push(op::EMPTY_TUPLE),
        }
        self.buf.push(op::REDUCE);
    }

    pub fn put(&mut self, index: u32) {
        match u8::try_from(index) {
            Ok(i) => self.buf.extend_from_slice(&[op::BINPUT, i]),
            Err(_) => {
                self.buf.push(op::LONG_BINPUT);
                self.buf.extend_from_slice(&index.to_le_bytes());
            }
        }
    }

    pub fn get(&mut self, index: u32) {
        match u8::try_from(index) {
            Ok(i) => self.buf.extend_from_slice(&[op::BINGET, i]),
            Err(_) => {
                self.buf.push(op::LONG_BINGET);
                self.buf.extend_from_slice(&index.to_le_bytes());
            }
        }
    }
}

/// A manager reply `(kind, value)`, the value written by `value`.
pub fn reply(kind: &str, value: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.proto(4);
    w.str(kind);
    value(&mut w);
    w.tuple(2, false);
    w.stop();
    w.finish()
}

/// `pickle.dumps(n, 4)` without the frame: a Rust worker's result for a Python reader.
pub fn int_pickle(n: i128) -> Vec<u8> {
    standalone(|w| w.int(n))
}

/// A pickled str.
pub fn str_pickle(s: &str) -> Vec<u8> {
    standalone(|w| w.str(s))
}

/// A pickled bytes object.
pub fn bytes_pickle(b: &[u8]) -> Vec<u8> {
    standalone(|w| w.bytes(b))
}

fn standalone(value: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::with_capacity(16);
    w.proto(4);
    value(&mut w);
    w.stop();
    w.finish()
}
