//! An item's opcodes made a standalone pickle, and a stored item spliced into a reply.
//!
//! A raw slice of a request is not a pickle of the item: its memo indices count from the
//! request's start, and it may read memo entries defined before it (CPython writes `q.put('put')`
//! as a BINGET of the method name's entry, the same interned string). So the copy renumbers
//! the memo entries it defines from 0, writes any string or number it reads from before its
//! start literally, drops FRAME hints, and is scanned again as a whole before it is stored.

use std::collections::HashMap;
use std::ops::Range;

use super::reader::Reader;
use super::scan::{scan, Kind, Scanned};
use super::write::Writer;
use super::{op, Limits, PickleError};

/// The opcodes at `span` of `data` (scanned as `scanned`) as a pickle of their own.
pub(super) fn standalone(
    data: &[u8],
    scanned: &Scanned,
    span: Range<usize>,
) -> Result<Vec<u8>, PickleError> {
    let mut out = Writer::with_capacity(span.len() + 8);
    out.proto(scanned.proto);
    let mut local: HashMap<u32, u32> = HashMap::new();
    let mut r = Reader {
        data: &data[..span.end],
        pos: span.start,
    };
    while r.pos < span.end {
        let at = r.pos;
        let opcode = r.u8()?;
        let index = match opcode {
            op::FRAME => {
                r.u64()?;
                continue;
            }
            op::BINPUT | op::BINGET => Some(u32::from(r.u8()?)),
            op::LONG_BINPUT | op::LONG_BINGET => Some(r.u32()?),
            op::PUT | op::GET => {
                let line = r.line()?;
                let text = std::str::from_utf8(line).ok();
                Some(
                    text.and_then(|t| t.trim().parse().ok())
                        .ok_or(PickleError::BadArgument(at))?,
                )
            }
            op::MEMOIZE => {
                let i = scanned
                    .defs
                    .binary_search_by_key(&at, |&(pos, _)| pos)
                    .map_err(|_| PickleError::BadMemo(at))?;
                Some(scanned.defs[i].1)
            }
            _ => None,
        };
        match (opcode, index) {
            (op::BINPUT | op::LONG_BINPUT | op::PUT | op::MEMOIZE, Some(index)) => {
                let next = u32::try_from(local.len()).map_err(|_| PickleError::Limit("memo"))?;
                local.insert(index, next);
                out.put(next);
            }
            (op::BINGET | op::LONG_BINGET | op::GET, Some(index)) => match local.get(&index) {
                Some(&mine) => out.get(mine),
                None => {
                    let def = scanned.memo.get(&index).ok_or(PickleError::BadMemo(at))?;
                    if def.at >= span.start {
                        return Err(PickleError::Unsplittable);
                    }
                    literal(&mut out, data, &def.kind)?;
                }
            },
            _ => {
                r.skip_arg(opcode)?;
                out.raw(&data[at..r.pos]);
            }
        }
    }
    out.stop();
    let item = out.finish();
    // The copy must stand alone: one value, every memo read defined inside it.
    let limits = Limits {
        max_bytes: usize::MAX,
        ..Limits::default()
    };
    scan(&item, limits).map_err(|_| PickleError::Unsplittable)?;
    Ok(item)
}

/// A value read from before the item, written out in full: only scalars qualify.
fn literal(out: &mut Writer, data: &[u8], kind: &Kind) -> Result<(), PickleError> {
    match kind {
        Kind::None => out.none(),
        Kind::Bool(b) => out.bool(*b),
        Kind::Int(n) => out.int(i128::from(*n)),
        Kind::Float(f) => out.float(*f),
        // Raw bytes, so text Rust cannot read as UTF-8 (lone surrogates) survives too.
        Kind::Str { at, .. } => out.str_bytes(&data[at.clone()]),
        Kind::Bytes { at } => out.bytes(&data[at.clone()]),
        _ => return Err(PickleError::Unsplittable),
    }
    Ok(())
}

/// `('#RETURN', item)` around a standalone pickle: its PROTO, the kind as BINUNICODE (no memo
/// entry, so the item's memo indices stay valid), its body, TUPLE2, STOP.
pub(super) fn splice_return(payload: &[u8]) -> Vec<u8> {
    let body = &payload[2..payload.len() - 1];
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&payload[..2]);
    out.push(op::BINUNICODE);
    out.extend_from_slice(&7u32.to_le_bytes());
    out.extend_from_slice(b"#RETURN");
    out.extend_from_slice(body);
    out.push(op::TUPLE2);
    out.push(op::STOP);
    out
}
