//! Reading opcode arguments: fixed-width numbers, counted strings and text lines, bounds-checked
//! against the input, and skipping an opcode's argument for the rewrite that copies opcodes.

use std::ops::Range;

use super::{op, PickleError};

/// Reads opcode arguments from the input, never past its end.
pub(super) struct Reader<'a> {
    pub data: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(PickleError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A line up to `\n` (not included), as the text opcodes of protocol 0 carry.
    pub fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = self.data.get(self.pos..).ok_or(PickleError::Truncated)?;
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated)?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    /// `n` bytes announced by a length of any width: the range they occupy.
    pub fn counted(&mut self, n: u64) -> Result<Range<usize>, PickleError> {
        let n = usize::try_from(n).map_err(|_| PickleError::Truncated)?;
        let at = self.pos;
        self.take(n)?;
        Ok(at..self.pos)
    }

    /// Skips the argument of `opcode`, for the rewrite, which copies opcodes as they are.
    pub fn skip_arg(&mut self, opcode: u8) -> Result<(), PickleError> {
        match opcode {
            op::BININT1 | op::BINGET | op::BINPUT | op::PROTO => {
                self.take(1)?;
            }
            op::BININT2 => {
                self.take(2)?;
            }
            op::BININT | op::LONG_BINGET | op::LONG_BINPUT => {
                self.take(4)?;
            }
            op::BINFLOAT | op::FRAME => {
                self.take(8)?;
            }
            op::INT | op::LONG | op::FLOAT | op::GET | op::PUT | op::STRING | op::UNICODE => {
                self.line()?;
            }
            op::GLOBAL | op::INST => {
                self.line()?;
                self.line()?;
            }
            op::SHORT_BINUNICODE | op::SHORT_BINBYTES | op::SHORT_BINSTRING | op::LONG1 => {
                let n = self.u8()?;
                self.counted(u64::from(n))?;
            }
            op::BINUNICODE | op::BINBYTES => {
                let n = self.u32()?;
                self.counted(u64::from(n))?;
            }
            op::BINSTRING | op::LONG4 => {
                let n = self.i32_len()?;
                self.counted(n)?;
            }
            op::BINUNICODE8 | op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = self.u64()?;
                self.counted(n)?;
            }
            _ => {}
        }
        Ok(())
    }

    pub fn i32_len(&mut self) -> Result<u64, PickleError> {
        let n = i32::from_le_bytes(self.array()?);
        u64::try_from(n).map_err(|_| PickleError::BadArgument(self.pos))
    }
}
