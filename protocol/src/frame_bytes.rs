//! Payloads decoded as views into their frame: which frame is being decoded, and the serde
//! helpers through which payload fields take slices of it instead of copies.
//!
//! serde hands a visitor a bare `&[u8]`, which cannot be turned back into a reference-counted
//! `Bytes`. So while the codec decodes one frame it puts that frame in a thread-local
//! ([`FrameScope`]), and a borrowed slice that lies inside it becomes `frame.slice_ref(..)`: a
//! reference count instead of an allocation per payload. Anything else (another format, a job
//! payload decoded from a plain slice) is copied, as `Bytes`' own `Deserialize` does.
//!
//! A view keeps its whole frame alive (indeed the read-buffer block the frame was split from),
//! so whoever holds a payload for long should copy it.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::value::SeqAccessDeserializer;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, Error, SeqAccess, Visitor};

thread_local! {
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Makes `frame` the buffer borrowed payloads are sliced from until the scope is dropped.
///
/// Dropping restores whatever was in scope before, so neither a decode error nor a panic can
/// leave a frame behind for unrelated decoding on this thread. Not `Send`: it must end on the
/// thread it began on.
pub(crate) struct FrameScope {
    outer: Option<Bytes>,
    _this_thread: PhantomData<*const ()>,
}

impl FrameScope {
    pub(crate) fn enter(frame: Bytes) -> Self {
        Self {
            outer: FRAME.replace(Some(frame)),
            _this_thread: PhantomData,
        }
    }
}

impl Drop for FrameScope {
    fn drop(&mut self) {
        let outer = self.outer.take();
        // Only fails during thread teardown, when nothing can decode any more.
        let _ = FRAME.try_with(|frame| frame.replace(outer));
    }
}

/// Whether a frame is in scope on this thread.
#[cfg(test)]
pub(crate) fn in_scope() -> bool {
    FRAME.with_borrow(Option::is_some)
}

fn contains(outer: &[u8], part: &[u8]) -> bool {
    let (outer, part) = (outer.as_ptr_range(), part.as_ptr_range());
    outer.start <= part.start && part.end <= outer.end
}

/// `#[serde(deserialize_with)]` for a `Bytes` payload.
///
/// Asks for `deserialize_bytes`, not `Bytes`' own `deserialize_byte_buf`: only the former lets
/// a borrowing deserializer hand over a slice of its input instead of a fresh `Vec`.
pub(crate) fn payload<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    // Reading one byte string cannot start another frame's decode, so the borrow is safe to hold.
    FRAME.with_borrow(|frame| Within(frame.as_ref()).deserialize(deserializer))
}

/// `#[serde(deserialize_with)]` for a `Vec<Bytes>` of payloads.
pub(crate) fn payloads<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Bytes>, D::Error> {
    deserializer.deserialize_seq(PayloadsVisitor)
}

/// Reads one payload as a view into the frame it holds, if any and if the payload lies in it.
#[derive(Clone, Copy)]
struct Within<'f>(Option<&'f Bytes>);

impl<'de> DeserializeSeed<'de> for Within<'_> {
    type Value = Bytes;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for Within<'_> {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("byte array")
    }

    fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(match self.0 {
            Some(frame) if contains(frame, v) => frame.slice_ref(v),
            _ => Bytes::copy_from_slice(v),
        })
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Bytes, A::Error> {
        // Formats without a bytes type (JSON's arrays of numbers): exactly as `Bytes` reads them.
        Bytes::deserialize(SeqAccessDeserializer::new(seq))
    }
}

struct PayloadsVisitor;

/// What serde's own `Vec` visitor preallocates at most from an unchecked length hint; the same
/// cap here keeps the decode budget in `codec.rs` (and the fuzz harness's allowance) true.
const MAX_PREALLOC_BYTES: usize = 1 << 20;

impl<'de> Visitor<'de> for PayloadsVisitor {
    type Value = Vec<Bytes>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of byte arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Bytes>, A::Error> {
        let hint = seq.size_hint().unwrap_or(0);
        let mut items = Vec::with_capacity(hint.min(MAX_PREALLOC_BYTES / size_of::<Bytes>()));
        // One look at the thread-local for the whole list, not one per item: the elements are
        // byte strings, which cannot start another frame's decode while the borrow is held.
        FRAME.with_borrow(|frame| {
            while let Some(item) = seq.next_element_seed(Within(frame.as_ref()))? {
                items.push(item);
            }
            Ok(items)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{BorrowedBytesDeserializer, Error as ValueError, SeqDeserializer};

    fn from_borrowed(part: &[u8]) -> Bytes {
        payload(BorrowedBytesDeserializer::<ValueError>::new(part)).unwrap()
    }

    #[test]
    fn a_slice_of_the_frame_in_scope_is_a_view_and_any_other_a_copy() {
        let frame = Bytes::from((0u8..64).collect::<Vec<_>>());
        let elsewhere = frame.to_vec();
        {
            let _scope = FrameScope::enter(frame.clone());
            let view = from_borrowed(&frame[8..24]);
            assert_eq!(view.as_ptr(), frame[8..].as_ptr());
            assert_eq!(view, frame[8..24]);

            let copy = from_borrowed(&elsewhere[8..24]);
            assert_eq!(copy, elsewhere[8..24]);
            assert!(!contains(&frame, &copy) && !contains(&elsewhere, &copy));
        }
        assert!(!in_scope());
        let copy = from_borrowed(&frame[8..24]);
        assert!(!contains(&frame, &copy), "no frame in scope, so a copy");
    }

    #[test]
    fn a_scope_restores_the_outer_one_even_when_unwinding() {
        let outer = Bytes::from_static(b"outer frame");
        let _scope = FrameScope::enter(outer.clone());
        let unwound = std::panic::catch_unwind(|| {
            let _inner = FrameScope::enter(Bytes::from_static(b"inner"));
            panic!("decoding went wrong");
        });
        assert!(unwound.is_err());
        assert_eq!(FRAME.with_borrow(Clone::clone), Some(outer));
    }

    #[test]
    fn a_sequence_of_numbers_reads_as_bytes_does() {
        let seq = SeqDeserializer::<_, ValueError>::new([1u8, 2, 3].into_iter());
        assert_eq!(payload(seq).unwrap(), Bytes::from_static(&[1, 2, 3]));
    }
}
