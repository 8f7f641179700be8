//! The frame format: a 4-byte big-endian length, then one bincode-encoded message.
//!
//! This is the only file that knows the encoding is bincode, so the format can change here alone.
//! It owns two limits: the frame cap (checked on the length header, before any buffer grows) and
//! bincode's allocation budget, which must track the cap because bincode allocates a declared
//! length before reading it.
//!
//! One allocation escapes that budget: through the serde API, bincode passes a sequence's
//! declared length to serde as a size hint without charging it, and serde's `Vec` visitor
//! preallocates up to 1 MiB from it. So decoding one frame may briefly hold
//! `max(cap × 8, 1 MiB)`; the memory is freed when the frame fails to decode, and handshake
//! messages have no sequences, so only authenticated peers can cause it (found by fuzzing:
//! fuzz/README.md). bincode's own derives would check the count first.
//!
//! Frames are decoded borrowing, so payloads come out as views into the frame (`frame_bytes.rs`)
//! rather than one allocation each; the limits are the same, as bincode claims a borrowed byte
//! string against the budget just as it does one it allocates.

use std::marker::PhantomData;

use bincode::config::{Config, Configuration};
use bytes::{BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::error::CodecError;
use crate::frame_bytes::FrameScope;
use crate::message::{TaskOutcome, TaskReply};
use crate::seal::{FrameKey, TAG_LEN};

/// Frame cap before the peer has authenticated: the handshake's largest message is well under
/// 100 bytes, so an unauthenticated peer can never make us buffer more than this.
pub const HANDSHAKE_MAX_FRAME: usize = 512;

/// Default frame cap after authentication.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// The largest frame cap either side may configure.
pub const MAX_FRAME_CEILING: usize = 64 << 20;

const HEADER_LEN: usize = 4;

/// A decoded value may claim at most this many bytes per input byte: a one-byte varint `u64`
/// is counted by bincode as 8 bytes. Budgets below are `frame cap × CLAIM_FACTOR`.
const CLAIM_FACTOR: usize = 8;

/// The frame cap actually used for a requested one.
pub fn clamp_max_frame(max_frame: usize) -> usize {
    max_frame.clamp(HANDSHAKE_MAX_FRAME, MAX_FRAME_CEILING)
}

fn encode_config() -> Configuration {
    bincode::config::standard()
}

/// Decodes with the smallest bincode limit that still admits every valid frame of `max_frame`
/// bytes, so a lying length inside a frame costs at most a few times the frame cap.
fn decode_limited<T: DeserializeOwned>(src: &[u8], max_frame: usize) -> Result<T, CodecError> {
    fn run<T: DeserializeOwned, C: Config>(src: &[u8], config: C) -> Result<T, CodecError> {
        // Borrowing, so that byte strings reach serde as slices of `src` (see `frame_bytes`).
        let (value, used) = bincode::serde::borrow_decode_from_slice(src, config)
            .map_err(|e| CodecError::Decode(e.to_string()))?;
        if used != src.len() {
            return Err(CodecError::Decode(format!(
                "{} trailing bytes after the message",
                src.len() - used
            )));
        }
        Ok(value)
    }
    let budget = max_frame.saturating_mul(CLAIM_FACTOR);
    let base = bincode::config::standard();
    if budget <= 4 << 10 {
        run(src, base.with_limit::<{ 4 << 10 }>())
    } else if budget <= 8 << 20 {
        run(src, base.with_limit::<{ 8 << 20 }>())
    } else if budget <= 32 << 20 {
        run(src, base.with_limit::<{ 32 << 20 }>())
    } else if budget <= 128 << 20 {
        run(src, base.with_limit::<{ 128 << 20 }>())
    } else {
        run(
            src,
            base.with_limit::<{ MAX_FRAME_CEILING * CLAIM_FACTOR }>(),
        )
    }
}

/// Decodes frames into `In` and encodes `Out` into frames, both under one frame cap.
///
/// Partial input is `Ok(None)`; a frame over the cap, or bytes that do not decode, are errors
/// after which the connection must be closed.
///
/// Decoded payloads are views into their frame and keep alive the whole read-buffer block the
/// frame was split from: copy one (`Bytes::copy_from_slice`) before keeping it long on its own.
#[derive(Debug)]
pub struct MessageCodec<In, Out> {
    frames: LengthDelimitedCodec,
    max_frame: usize,
    /// A length header has been consumed and its frame is not complete yet. The inner codec
    /// keeps that to itself, and its buffer is then empty, so without this a stream that ends
    /// right after a header would look like a clean close.
    mid_frame: bool,
    /// After a plaintext handshake: the keys that seal what we send and open what we read
    /// (`seal.rs`). Each frame then carries a tag after its body, beyond the cap.
    seal: Option<FrameKey>,
    open: Option<FrameKey>,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> MessageCodec<In, Out> {
    pub fn new(max_frame: usize) -> Self {
        let max_frame = clamp_max_frame(max_frame);
        Self {
            frames: LengthDelimitedCodec::builder()
                .length_field_length(HEADER_LEN)
                .max_frame_length(max_frame)
                .new_codec(),
            max_frame,
            mid_frame: false,
            seal: None,
            open: None,
            _types: PhantomData,
        }
    }

    /// From now on, frames sent are sealed with `seal` and frames read must open with `open`.
    pub fn encrypt(&mut self, seal: FrameKey, open: FrameKey) {
        self.seal = Some(seal);
        self.open = Some(open);
        self.set_max_frame(self.max_frame);
    }

    /// Whether frames are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.seal.is_some()
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Raises or lowers the cap, e.g. from the handshake cap to the session cap.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        let max_frame = clamp_max_frame(max_frame);
        let tag = if self.open.is_some() { TAG_LEN } else { 0 };
        self.frames.set_max_frame_length(max_frame + tag);
        self.max_frame = max_frame;
    }

    /// The same limits for other message types (the switch from handshake to session).
    pub fn retype<In2, Out2>(self) -> MessageCodec<In2, Out2> {
        MessageCodec {
            frames: self.frames,
            max_frame: self.max_frame,
            mid_frame: self.mid_frame,
            seal: self.seal,
            open: self.open,
            _types: PhantomData,
        }
    }
}

impl<In: DeserializeOwned, Out> Decoder for MessageCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        let before = src.len();
        match self.frames.decode(src) {
            Ok(Some(mut frame)) => {
                self.mid_frame = false;
                if let Some(open) = &mut self.open {
                    let body = open.open(&mut frame).map_err(CodecError::from_seal)?;
                    frame.truncate(body);
                }
                let frame = frame.freeze();
                let _scope = FrameScope::enter(frame.clone());
                decode_limited(&frame, self.max_frame).map(Some)
            }
            Ok(None) => {
                self.mid_frame |= src.len() < before;
                Ok(None)
            }
            Err(err) => Err(CodecError::from_frame_error(err, self.max_frame)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if self.mid_frame || !src.is_empty() => Err(CodecError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the stream ended inside a frame",
            ))),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<&Out> for MessageCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: &Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0);
        let mut writer = dst.writer();
        let encoded = bincode::serde::encode_into_std_write(item, &mut writer, encode_config());
        let dst = writer.into_inner();
        let len = match encoded {
            Ok(len) => len,
            Err(e) => {
                dst.truncate(start);
                return Err(CodecError::Encode(e.to_string()));
            }
        };
        if len > self.max_frame {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let len = match &mut self.seal {
            Some(seal) => {
                let tag = match seal.seal(&mut dst[start + HEADER_LEN..]) {
                    Ok(tag) => tag,
                    Err(err) => {
                        dst.truncate(start);
                        return Err(CodecError::from_seal(err));
                    }
                };
                dst.extend_from_slice(&tag);
                len + TAG_LEN
            }
            None => len,
        };
        dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// Encodes a job's typed payload (a task's input or result) in the same format as frames.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<bytes::Bytes, CodecError> {
    bincode::serde::encode_to_vec(value, encode_config())
        .map(Into::into)
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Encodes many payloads, as [`encode_payload`] does, into one buffer, and hands them out as
/// slices of it: one allocation per batch instead of one per payload, and clones that share
/// the buffer. For a batch of tasks to put or results to hand in.
#[derive(Debug, Default)]
pub struct PayloadBatch {
    buf: BytesMut,
    ends: Vec<usize>,
}

impl PayloadBatch {
    /// Room for `items` payloads of about `bytes_each` bytes.
    pub fn with_capacity(items: usize, bytes_each: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(items.saturating_mul(bytes_each)),
            ends: Vec::with_capacity(items),
        }
    }

    /// Appends one payload; on an error nothing is appended.
    pub fn push<T: Serialize>(&mut self, value: &T) -> Result<(), CodecError> {
        let start = self.buf.len();
        let mut writer = (&mut self.buf).writer();
        if let Err(e) = bincode::serde::encode_into_std_write(value, &mut writer, encode_config()) {
            self.buf.truncate(start);
            return Err(CodecError::Encode(e.to_string()));
        }
        self.ends.push(self.buf.len());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The payloads, in the order they were pushed.
    pub fn finish(self) -> Vec<bytes::Bytes> {
        let mut all = self.buf.freeze();
        let mut start = 0;
        self.ends
            .into_iter()
            .map(|end| {
                let payload = all.split_to(end - start);
                start = end;
                payload
            })
            .collect()
    }
}

impl TaskReply {
    /// Appends the reply to `out`: a kind byte (0 done, 1 dead), the task id as a bincode
    /// varint, then for `Done` the result's bytes to the end, for `Dead` the attempts as a
    /// varint and the reason's UTF-8 bytes to the end. No length prefix: the item's own length
    /// ends it.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let varint = |out: &mut BytesMut, n: u64| {
            bincode::encode_into_std_write(n, &mut out.writer(), encode_config())
                .expect("writing to memory cannot fail");
        };
        match &self.outcome {
            TaskOutcome::Done(result) => {
                out.put_u8(0);
                varint(out, self.task);
                out.extend_from_slice(result);
            }
            TaskOutcome::Dead { attempts, reason } => {
                out.put_u8(1);
                varint(out, self.task);
                varint(out, u64::from(*attempts));
                out.extend_from_slice(reason.as_bytes());
            }
        }
    }

    /// The reply as one payload.
    pub fn encode(&self) -> bytes::Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Reads a reply made by [`TaskReply::encode_into`]; a `Done` result is a view into
    /// `payload`.
    pub fn decode(payload: &bytes::Bytes) -> Result<Self, CodecError> {
        let bad = |what: &str| CodecError::Decode(format!("not a task reply: {what}"));
        let (&kind, rest) = payload.split_first().ok_or_else(|| bad("empty"))?;
        let config = encode_config();
        let (task, used): (u64, usize) =
            bincode::decode_from_slice(rest, config).map_err(|e| bad(&e.to_string()))?;
        let body = 1 + used;
        let outcome = match kind {
            0 => TaskOutcome::Done(payload.slice(body..)),
            1 => {
                let (attempts, used): (u32, usize) =
                    bincode::decode_from_slice(&payload[body..], config)
                        .map_err(|e| bad(&e.to_string()))?;
                let reason = std::str::from_utf8(&payload[body + used..])
                    .map_err(|_| bad("a reason that is not UTF-8"))?;
                TaskOutcome::Dead {
                    attempts,
                    reason: reason.to_owned(),
                }
            }
            _ => return Err(bad("an unknown kind")),
        };
        Ok(TaskReply { task, outcome })
    }
}

/// Decodes a payload made by [`encode_payload`]; its allocations are bounded by its length.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    decode_limited(payload, payload.len())
}

#[cfg(test)]
mod tests;
