//! The fuzz targets' bodies, as plain functions of the input bytes.
//!
//! `fuzz_targets/*.rs` only hand libFuzzer's input to these, so the same code also runs without
//! libFuzzer: the tests below replay the committed corpus (`corpus/<target>/`), write the seed
//! files (`write_seed_corpus`, ignored) and, where cargo-fuzz cannot run at all, mutate the
//! corpus blindly for a while (`blind_fuzz`, ignored; see `scripts/fuzz.sh`).
//!
//! Every target reads its first byte as steering and the rest as the peer's bytes:
//! - `decode_frames`: bits 0-1 pick the session frame cap, bits 2-7 seed the chunk sizes the
//!   stream is fed in.
//! - `master_handshake`, `client_handshake`: bits 0-1 pick the scenario (0: raw bytes; 1: an
//!   honest first message from the harness, then the bytes as they are; 2: an honest handshake,
//!   then the bytes as session frames, each whole frame sealed by the harness with the session
//!   key so the decoder behind the seal is reached; 3: the harness's handshake message with one
//!   bit flipped, which must be refused, then the bytes), bits 2-4 the write size, bits 5-6 the
//!   in-memory pipe's capacity, bit 7 whether the peer half-closes and reads to the end (0) or
//!   drops the whole stream once written (1).
//! - `python_pickle`: bit 0 picks a manager request (0) or a stored payload (1); see
//!   `pickle.rs`.

use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};
use taskmill_protocol::codec::{clamp_max_frame, HANDSHAKE_MAX_FRAME, MAX_FRAME_CEILING};
use taskmill_protocol::handshake::{self, accept, connect, Binding, ClientHello, Limits};
use taskmill_protocol::seal::{FrameKey, Side, TAG_LEN};
use taskmill_protocol::{
    decode_payload, encode_payload, AuthKey, ClientHandshake, ClientMessage, CodecError,
    DeadLetter, MasterHandshake, MasterMessage, MessageCodec, DEFAULT_MAX_FRAME,
};
use taskmill_squares::{SquareResult, SquareTask};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Decoder, Encoder};

/// Frame caps `decode_frames` tries session messages under: the smallest and largest the codec
/// allows, the master's smallest `--max-frame` and its default.
const SESSION_CAPS: [usize; 4] = [
    HANDSHAKE_MAX_FRAME,
    4096,
    DEFAULT_MAX_FRAME,
    MAX_FRAME_CEILING,
];

/// Capacities of the in-memory pipe: from smaller than one handshake frame to roomy.
const PIPE_CAPS: [usize; 4] = [16, 64, 512, 8192];

/// Bytes of the length header in front of every frame.
const HEADER_LEN: usize = 4;

/// What serde's `Vec` visitor preallocates, at most, from a declared element count it cannot
/// check (serde's `MAX_PREALLOC_BYTES`). bincode's budget does not cover it: in serde mode
/// bincode hands the count to serde without claiming it. So any frame, under any cap, can cost
/// this much for a moment (see fuzz/README.md, "Findings").
const SERDE_PREALLOC: usize = 1 << 20;

/// Heap bytes a decoded message may hold per byte of its frame. The worst honest case is a
/// `Vec<Bytes>` of empty items: one byte on the wire, a 32-byte `Bytes` in memory, up to twice
/// that while the vector grows, and the old block while it moves. Anything far past that means
/// a length was believed before it was checked.
const AMPLIFICATION: usize = 128;

/// Virtual time the handshake harness allows. The clock is paused and only moves when every
/// task is stuck, so reaching this means the code under test hung with its peer gone.
const HANG: Duration = Duration::from_secs(60);

/// The master's heartbeat interval in the harness; any value will do.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Ephemeral private keys the harness's honest side uses: their value changes no code path,
/// and fixed ones keep every run of an input the same.
const CLIENT_EPHEMERAL: [u8; 32] = [0x5a; 32];
const MASTER_EPHEMERAL: [u8; 32] = [0xa5; 32];

/// The authkey both honest sides hold.
pub fn key() -> &'static AuthKey {
    static KEY: OnceLock<AuthKey> = OnceLock::new();
    KEY.get_or_init(|| AuthKey::new(b"taskmill-fuzzing-key-0123456789".to_vec()).unwrap())
}

// ---------------------------------------------------------------------------------------------
// decode_frames

/// How a decoded stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// End of input between frames.
    Clean,
    /// The decoder refused a length header over the cap.
    TooLarge,
    /// A frame's body did not decode.
    Undecodable,
    /// The input ended inside a frame.
    Truncated,
}

/// Everything one decoder made of one stream.
#[derive(Debug, PartialEq)]
struct Run<T> {
    messages: Vec<T>,
    /// Bytes each message's frame took on the wire, header included.
    frame_lens: Vec<usize>,
    end: End,
}

fn end_of(err: CodecError) -> End {
    match err {
        CodecError::FrameTooLarge { .. } => End::TooLarge,
        CodecError::Decode(_) => End::Undecodable,
        CodecError::Io(_) => End::Truncated,
        CodecError::Encode(e) => panic!("decoding reported an encode error: {e}"),
        // decode_frames reads unsealed frames: a codec with no keys cannot report these.
        CodecError::Tampered | CodecError::CounterExhausted => {
            panic!("an unsealed decoder reported a sealing error: {err}")
        }
    }
}

/// Feeds `stream` to a fresh decoder in pieces of the sizes `sizes` yields (`|| usize::MAX`
/// feeds it whole), as `Framed` would: decode until it wants more, append, repeat, and call
/// `decode_eof` at the end. Stops at the first error, like a connection does.
fn decode_in_pieces<In, Out>(
    stream: &[u8],
    max_frame: usize,
    mut sizes: impl FnMut() -> usize,
) -> Run<In>
where
    In: DeserializeOwned + Debug,
{
    let mut codec = MessageCodec::<In, Out>::new(max_frame);
    let cap = codec.max_frame();
    let mut buf = BytesMut::new();
    let mut run = Run {
        messages: Vec::new(),
        frame_lens: Vec::new(),
        end: End::Clean,
    };
    let mut fed = 0;
    // Where the frame being decoded starts in the stream: the end of the last message returned.
    let mut frame_start = 0;
    while fed < stream.len() {
        let n = sizes().clamp(1, stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let buffered = buf.len();
            let (decoded, heap) = alloc::peak_during(|| codec.decode(&mut buf));
            // A frame this call may have read: a whole one it returned, or at most what is
            // buffered (a partial frame, or a complete one that did not decode).
            let frame_len = match &decoded {
                Ok(Some(_)) => fed - buf.len() - frame_start,
                _ => buffered.min(HEADER_LEN + cap),
            };
            let allowance = 4 * (buffered + HEADER_LEN + cap)
                + bincode_budget(cap)
                + SERDE_PREALLOC
                + AMPLIFICATION * frame_len
                + 4096;
            assert!(
                heap <= allowance,
                "decoding took {heap} bytes of heap for a {frame_len}-byte frame under a cap of {cap}"
            );
            match decoded {
                Ok(Some(msg)) => {
                    if buffered == stream.len() - frame_start {
                        note_amplification::<In>(heap, frame_len);
                    }
                    let end = fed - buf.len();
                    run.frame_lens.push(end - frame_start);
                    frame_start = end;
                    run.messages.push(msg);
                }
                Ok(None) => {
                    // Whatever is left is one incomplete frame: never more than the cap allows.
                    assert!(
                        buf.len() < HEADER_LEN + cap,
                        "decoder sat on {} bytes with a cap of {cap}",
                        buf.len()
                    );
                    break;
                }
                Err(err) => {
                    run.end = end_of(err);
                    return run;
                }
            }
        }
    }
    run.end = match codec.decode_eof(&mut buf) {
        Ok(None) => End::Clean,
        Ok(Some(msg)) => panic!("decode_eof produced {msg:?} that decode did not"),
        Err(err) => end_of(err),
    };
    run
}

/// bincode's allocation limit for a frame cap, as `codec::decode_limited` picks it: the cap
/// times its claim factor of 8, rounded up to one of the limits it has.
fn bincode_budget(cap: usize) -> usize {
    let budget = cap.saturating_mul(8);
    [4 << 10, 8 << 20, 32 << 20, 128 << 20]
        .into_iter()
        .find(|&limit| budget <= limit)
        .unwrap_or(MAX_FRAME_CEILING * 8)
}

/// Under libFuzzer, reports each new record of heap per frame byte for a whole frame decoded
/// from a full buffer (so the buffer's own growth is not counted), for the closing note.
fn note_amplification<T>(heap: usize, frame_len: usize) {
    static RECORD: AtomicUsize = AtomicUsize::new(0);
    if cfg!(fuzzing) && frame_len >= 8 {
        let ratio = heap / frame_len;
        if ratio > RECORD.fetch_max(ratio, Ordering::Relaxed) {
            eprintln!(
                "decode_frames: new heap record: {heap} bytes for a {frame_len}-byte frame \
                 ({ratio}x) decoding {}",
                std::any::type_name::<T>()
            );
        }
    }
}

/// A small deterministic generator of piece sizes, 1..=64 bytes, from a 6-bit seed.
fn piece_sizes(seed: u8) -> impl FnMut() -> usize {
    let mut state = 0x9e37_79b9_u32 ^ u32::from(seed).wrapping_mul(0x0100_0193);
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + (state % 64) as usize
    }
}

/// Decodes `stream` as `In` under `max_frame`, whole and in pieces, and checks that: nothing
/// panics, both ways agree, each message re-encodes (canonically, so no longer than it came) and
/// decodes to itself, and an end of input inside a frame is never a clean end.
fn check_stream<In, Out>(stream: &[u8], max_frame: usize, seed: u8)
where
    In: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let whole = decode_in_pieces::<In, Out>(stream, max_frame, || usize::MAX);
    let pieces = decode_in_pieces::<In, Out>(stream, max_frame, piece_sizes(seed));
    assert_eq!(
        whole, pieces,
        "feeding the stream in pieces changed what it decodes to"
    );

    let consumed: usize = whole.frame_lens.iter().sum();
    if whole.end == End::Clean {
        // A stream that ends inside a frame, even right after a length header, must not look
        // like a clean close (docs/protocol.md section 1).
        let left = stream.len() - consumed;
        assert!(
            left == 0,
            "{left} bytes of an unfinished frame were taken for a clean end of stream"
        );
    }

    let mut encoder = MessageCodec::<(), In>::new(max_frame);
    let mut decoder = MessageCodec::<In, ()>::new(max_frame);
    for (msg, &len) in whole.messages.iter().zip(&whole.frame_lens) {
        let mut buf = BytesMut::new();
        encoder
            .encode(msg, &mut buf)
            .unwrap_or_else(|e| panic!("decoded {msg:?} does not re-encode: {e}"));
        assert!(
            buf.len() <= len,
            "{msg:?} re-encodes to {} bytes, more than the {len} it came in",
            buf.len()
        );
        let again = decoder
            .decode(&mut buf)
            .expect("a re-encoded frame decodes");
        assert_eq!(again.as_ref(), Some(msg), "re-encoding changed the message");
        assert!(buf.is_empty());
    }
}

/// `decode_payload` never panics, and what it decodes re-encodes to a payload that decodes to
/// the same value.
fn check_payload<T>(bytes: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(value) = decode_payload::<T>(bytes) {
        let again = encode_payload(&value).expect("a decoded payload re-encodes");
        assert!(again.len() <= bytes.len(), "{value:?} grew when re-encoded");
        assert_eq!(decode_payload::<T>(&again).ok(), Some(value));
    }
}

/// Target `decode_frames`: the input's bytes, past the steering byte, as a stream of frames
/// read by each side in each phase, and as a job payload.
pub fn decode_frames(data: &[u8]) {
    let Some((&steer, stream)) = data.split_first() else {
        return;
    };
    let cap = SESSION_CAPS[usize::from(steer & 3)];
    let seed = steer >> 2;
    // The master's view of a session, then a client's.
    check_stream::<ClientMessage, MasterMessage>(stream, cap, seed);
    check_stream::<MasterMessage, ClientMessage>(stream, cap, seed);
    // Both views of the handshake, always under the pre-auth cap.
    check_stream::<ClientHandshake, MasterHandshake>(stream, HANDSHAKE_MAX_FRAME, seed);
    check_stream::<MasterHandshake, ClientHandshake>(stream, HANDSHAKE_MAX_FRAME, seed);
    // Payloads the master and workers decode from each other.
    check_payload::<SquareTask>(stream);
    check_payload::<SquareResult>(stream);
    check_payload::<DeadLetter>(stream);
}

// ---------------------------------------------------------------------------------------------
// The handshake harness

thread_local! {
    /// One current-thread runtime for every input, on a paused clock: time moves only when all
    /// tasks wait, so the hang check costs no wall-clock time.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(future))
}

/// What the steering byte asks of the harness's side of the stream.
#[derive(Debug, Clone, Copy)]
struct Steer {
    scenario: u8,
    write_size: usize,
    pipe: usize,
    /// Drop the whole stream once written, instead of half-closing and reading to the end.
    drop_after: bool,
}

impl Steer {
    fn from_byte(b: u8) -> Self {
        Steer {
            scenario: b & 3,
            write_size: 1 << ((b >> 2) & 7),
            pipe: PIPE_CAPS[usize::from((b >> 5) & 3)],
            drop_after: b & 0x80 != 0,
        }
    }
}

fn frame<T: Serialize>(msg: &T) -> BytesMut {
    let mut buf = BytesMut::new();
    MessageCodec::<(), T>::new(HANDSHAKE_MAX_FRAME)
        .encode(msg, &mut buf)
        .expect("handshake messages fit the pre-auth cap");
    buf
}

/// Reads one handshake frame; `None` on end of stream or anything undecodable.
async fn read_frame<T, R>(r: &mut R, buf: &mut BytesMut) -> Option<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut codec = MessageCodec::<T, ()>::new(HANDSHAKE_MAX_FRAME);
    loop {
        match codec.decode(buf) {
            Ok(Some(msg)) => return Some(msg),
            Ok(None) => {}
            Err(_) => return None,
        }
        if r.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn drain<R: AsyncRead + Unpin>(r: &mut R) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Sends `bytes` in `steer.write_size` pieces while reading whatever comes back, then either
/// half-closes and reads to the end, or drops everything at once.
async fn send_rest<R, W>(r: &mut R, w: &mut W, bytes: &[u8], steer: Steer)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let writing = async {
        for piece in bytes.chunks(steer.write_size) {
            if w.write_all(piece).await.is_err() {
                return;
            }
        }
        if !steer.drop_after {
            let _ = w.shutdown().await;
        }
    };
    if steer.drop_after {
        // Keep reading while writing so neither side can block on a full pipe, but stop as
        // soon as the writes are done.
        tokio::select! {
            biased;
            () = writing => {}
            () = drain(r) => {}
        }
    } else {
        tokio::join!(writing, drain(r));
    }
}

/// Runs `side` (the code under test) against `peer` (the harness) and panics if they are still
/// stuck when the peer has long gone.
async fn against<A, B>(side: A, peer: B) -> (A::Output, B::Output)
where
    A: Future,
    B: Future,
{
    match tokio::time::timeout(HANG, async { tokio::join!(side, peer) }).await {
        Ok(outputs) => outputs,
        Err(_) => panic!("hang: the handshake did not end although its peer closed"),
    }
}

/// Seals each whole frame in `bytes` (length header, then body) as the codec does after a
/// plaintext handshake; whatever follows the last whole frame is passed on as it is.
fn seal_frames(key: &mut FrameKey, mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    while bytes.len() >= HEADER_LEN {
        let len = u32::from_be_bytes(bytes[..HEADER_LEN].try_into().unwrap()) as usize;
        if bytes.len() - HEADER_LEN < len {
            break;
        }
        let mut body = bytes[HEADER_LEN..HEADER_LEN + len].to_vec();
        let Ok(tag) = key.seal(&mut body) else {
            break;
        };
        out.extend_from_slice(&((len + TAG_LEN) as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        bytes = &bytes[HEADER_LEN + len..];
    }
    out.extend_from_slice(bytes);
    out
}

/// Flips one bit of a handshake frame's body, chosen by `pick`.
fn flip_bit(frame: &mut BytesMut, pick: u8) {
    let body = frame.len() - HEADER_LEN;
    let at = HEADER_LEN + usize::from(pick) % body;
    frame[at] ^= 1 << (pick % 8);
}

/// Target `master_handshake`: `handshake::accept` against a client made of the input.
pub fn master_handshake(data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let steer = Steer::from_byte(b);
    block_on(async {
        let (master_end, client_end) = tokio::io::duplex(steer.pipe);
        let master = async {
            match accept(master_end, key(), DEFAULT_MAX_FRAME, HEARTBEAT).await {
                Ok(mut conn) => {
                    assert_eq!(conn.max_frame(), DEFAULT_MAX_FRAME);
                    assert!(conn.is_encrypted(), "a plaintext session must be sealed");
                    // Past the handshake: the rest of the input is session frames.
                    while let Ok(Some(_)) = conn.recv().await {}
                    true
                }
                Err(_) => false,
            }
        };
        let (accepted, client) = against(master, fake_client(client_end, steer, rest)).await;
        match client {
            Client::Honest => assert!(accepted, "an honest client was refused"),
            Client::Tampered => assert!(!accepted, "a hello altered on the way was accepted"),
            Client::Other => {}
        }
    });
}

/// What the harness's client did, and so what the master must have made of it.
enum Client {
    Honest,
    Tampered,
    Other,
}

/// The client side of `master_handshake`.
async fn fake_client(stream: DuplexStream, steer: Steer, mut rest: &[u8]) -> Client {
    let (mut r, mut w) = tokio::io::split(stream);
    let mut buf = BytesMut::new();
    let (state, hello) = ClientHello::start(key(), &Binding::Plain, Some(&CLIENT_EPHEMERAL));
    let mut hello = frame(&hello);
    let mut client = Client::Other;
    if steer.scenario == 3 {
        let Some((&pick, tail)) = rest.split_first() else {
            return Client::Other;
        };
        rest = tail;
        flip_bit(&mut hello, pick);
        client = Client::Tampered;
    }
    if steer.scenario != 0 && w.write_all(&hello).await.is_err() {
        return Client::Other;
    }
    if matches!(steer.scenario, 1 | 2) && !steer.drop_after {
        client = Client::Honest;
    }
    if steer.scenario == 2 {
        let (ephemeral, sealed) = match read_frame(&mut r, &mut buf).await {
            Some(MasterHandshake::Welcome { ephemeral, sealed }) => (ephemeral, sealed),
            other => panic!("an honest hello was answered with {other:?}"),
        };
        let (_, keys) = state
            .finish(&ephemeral, &sealed)
            .expect("the master's welcome opens");
        let (mut seal, _) = keys.for_side(Side::Client);
        let sealed = seal_frames(&mut seal, rest);
        send_rest(&mut r, &mut w, &sealed, steer).await;
        return client;
    }
    send_rest(&mut r, &mut w, rest, steer).await;
    client
}

/// Target `client_handshake`: `handshake::connect` against a master made of the input.
pub fn client_handshake(data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let steer = Steer::from_byte(b);
    block_on(async {
        let (client_end, master_end) = tokio::io::duplex(steer.pipe);
        let client = async {
            match connect(client_end, key(), "fuzz").await {
                Ok((mut conn, heartbeat)) => {
                    assert!(heartbeat >= Duration::from_millis(1));
                    assert!(conn.is_encrypted(), "a plaintext session must be sealed");
                    let cap = conn.max_frame();
                    while let Ok(Some(_)) = conn.recv().await {}
                    Some(cap)
                }
                Err(_) => None,
            }
        };
        let (cap, welcomed) = against(client, fake_master(master_end, steer, rest)).await;
        match welcomed {
            Welcomed::Honest(max_frame) => assert_eq!(
                cap,
                Some(clamp_max_frame(max_frame as usize)),
                "an honest master was refused, or its frame cap was not taken"
            ),
            Welcomed::Tampered => assert_eq!(cap, None, "an altered welcome was taken"),
            Welcomed::No => {}
        }
    });
}

/// What the harness's master sent, and so what the client must have made of it.
enum Welcomed {
    /// A genuine welcome with this `max_frame`.
    Honest(u32),
    Tampered,
    No,
}

/// The master side of `client_handshake`.
async fn fake_master(stream: DuplexStream, steer: Steer, mut rest: &[u8]) -> Welcomed {
    let (mut r, mut w) = tokio::io::split(stream);
    let mut buf = BytesMut::new();
    let mut welcomed = Welcomed::No;
    if steer.scenario != 0 {
        let (ephemeral, tag) = match read_frame(&mut r, &mut buf).await {
            Some(ClientHandshake::Hello { ephemeral, tag, .. }) => (ephemeral, tag),
            other => panic!("the client opened with {other:?}"),
        };
        if steer.scenario >= 2 {
            // The session's limits come from the input too.
            let mut word = || {
                let (head, tail) = rest.split_at(rest.len().min(4));
                rest = tail;
                let mut le = [0u8; 4];
                le[..head.len()].copy_from_slice(head);
                u32::from_le_bytes(le)
            };
            let limits = Limits {
                max_frame: word(),
                heartbeat_ms: word(),
            };
            let (welcome, keys) = handshake::answer(
                key(),
                &Binding::Plain,
                &ephemeral,
                &tag,
                limits,
                Some(&MASTER_EPHEMERAL),
            )
            .expect("the client's hello verifies");
            let mut welcome = frame(&welcome);
            if steer.scenario == 3 {
                let pick = rest.first().copied().unwrap_or(0);
                rest = rest.get(1..).unwrap_or_default();
                flip_bit(&mut welcome, pick);
            }
            if w.write_all(&welcome).await.is_err() {
                return Welcomed::No;
            }
            if steer.scenario == 3 {
                welcomed = Welcomed::Tampered;
            } else {
                welcomed = Welcomed::Honest(limits.max_frame);
                let (mut seal, _) = keys.for_side(Side::Master);
                let sealed = seal_frames(&mut seal, rest);
                send_rest(&mut r, &mut w, &sealed, steer).await;
                return welcomed;
            }
        }
    }
    send_rest(&mut r, &mut w, rest, steer).await;
    welcomed
}

mod pickle;
pub use pickle::python_pickle;

#[cfg(test)]
mod tests;

mod alloc;
