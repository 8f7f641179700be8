//! `Connection`: a framed byte stream that sends and receives whole messages; nothing above it
//! sees bytes.

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, FramedParts};

use crate::codec::MessageCodec;
use crate::error::CodecError;

/// What both buffers start at.
const INITIAL: usize = 1024;

/// An empty buffer larger than this is given back after a frame: one large frame (up to the
/// frame cap) must not leave a long-lived, mostly idle connection holding its size.
const SHRINK_ABOVE: usize = 64 * 1024;

/// One peer's framed stream: receives `In`, sends `Out`.
#[derive(Debug)]
pub struct Connection<S, In, Out> {
    framed: Framed<S, MessageCodec<In, Out>>,
}

impl<S, In, Out> Connection<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: DeserializeOwned,
    Out: Serialize,
{
    pub fn new(stream: S, max_frame: usize) -> Self {
        // Both buffers start small and grow with the frames that pass: an idle connection (most
        // of a master's, at 10,000 held) then keeps about 2 KiB of buffers, not tokio-util's
        // default 8 KiB each way.
        let mut parts = FramedParts::new::<&Out>(stream, MessageCodec::new(max_frame));
        parts.read_buf = BytesMut::with_capacity(INITIAL);
        parts.write_buf = BytesMut::with_capacity(INITIAL);
        Self {
            framed: Framed::from_parts(parts),
        }
    }

    /// The next message; `Ok(None)` on a clean end of stream. A stream that ends in the middle
    /// of a frame is an error. Cancel-safe: a partly read frame stays buffered.
    pub async fn recv(&mut self) -> Result<Option<In>, CodecError> {
        let msg = self.framed.next().await.transpose();
        shrink(self.framed.read_buffer_mut());
        msg
    }

    /// Writes one message and flushes.
    pub async fn send(&mut self, msg: &Out) -> Result<(), CodecError> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queues one message without flushing, so many replies can leave in one write.
    pub async fn feed(&mut self, msg: &Out) -> Result<(), CodecError> {
        self.framed.feed(msg).await
    }

    pub async fn flush(&mut self) -> Result<(), CodecError> {
        SinkExt::<&Out>::flush(&mut self.framed).await?;
        shrink(self.framed.write_buffer_mut());
        Ok(())
    }

    /// What the read and write buffers have allocated, for observers and tests.
    pub fn buffer_capacity(&self) -> (usize, usize) {
        (
            self.framed.read_buffer().capacity(),
            self.framed.write_buffer().capacity(),
        )
    }

    /// Flushes and closes the sending half; receiving still works.
    pub async fn shutdown(&mut self) -> Result<(), CodecError> {
        SinkExt::<&Out>::close(&mut self.framed).await
    }

    /// True when a whole frame may already be buffered, so reading will not wait on the socket.
    pub fn has_buffered_input(&self) -> bool {
        !self.framed.read_buffer().is_empty()
    }

    pub fn max_frame(&self) -> usize {
        self.framed.codec().max_frame()
    }

    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.framed.codec_mut().set_max_frame(max_frame);
    }

    /// Seals every frame sent from now on and requires every frame read to open (`seal.rs`).
    pub fn encrypt(&mut self, seal: crate::seal::FrameKey, open: crate::seal::FrameKey) {
        self.framed.codec_mut().encrypt(seal, open);
    }

    /// Whether frames are sealed (a plaintext transport after the handshake).
    pub fn is_encrypted(&self) -> bool {
        self.framed.codec().is_encrypted()
    }

    /// The same stream and buffers, speaking other message types (handshake → session).
    pub fn retype<In2, Out2>(self) -> Connection<S, In2, Out2> {
        Connection {
            framed: self.framed.map_codec(MessageCodec::retype),
        }
    }

    /// The stream underneath; anything buffered is dropped.
    pub fn into_inner(self) -> S {
        self.framed.into_inner()
    }

    pub fn get_ref(&self) -> &S {
        self.framed.get_ref()
    }
}

/// Gives back an empty buffer's allocation past [`SHRINK_ABOVE`].
fn shrink(buffer: &mut BytesMut) {
    if buffer.is_empty() && buffer.capacity() > SHRINK_ABOVE {
        *buffer = BytesMut::with_capacity(INITIAL);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{ClientMessage, MasterMessage, Reply, Request, Task, Wait};

    #[tokio::test]
    async fn buffers_shrink_back_after_one_large_frame() {
        let (a, b) = tokio::io::duplex(4 << 20);
        let mut client = Connection::<_, MasterMessage, ClientMessage>::new(a, 4 << 20);
        let mut master = Connection::<_, ClientMessage, MasterMessage>::new(b, 4 << 20);
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let put = ClientMessage::Request {
            id: 1,
            request: Request::Put {
                queue: "q".into(),
                items: vec![big.clone()],
                wait: Wait::No,
                reply_to: None,
            },
        };
        client.send(&put).await.unwrap();
        assert_eq!(master.recv().await.unwrap(), Some(put));
        let tasks = MasterMessage::Reply {
            id: 1,
            reply: Reply::Tasks(vec![Task {
                id: 1,
                attempt: 1,
                payload: big,
                reply_to: Bytes::new(),
            }]),
        };
        master.send(&tasks).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), Some(tasks));
        let (read, write) = master.buffer_capacity();
        assert!(read <= SHRINK_ABOVE, "read buffer kept {read} bytes");
        assert!(write <= SHRINK_ABOVE, "write buffer kept {write} bytes");
        assert!(client.buffer_capacity().0 <= SHRINK_ABOVE);
        assert!(client.buffer_capacity().1 <= SHRINK_ABOVE);
    }
}
