//! Request-response framing: one unsigned-varint length prefix, then the envelope bytes
//! (`agora_storage::wire`'s frames). The length is checked against the limit before the body is
//! read, and the body's buffer is charged to the node's one budget for frames being read as it
//! grows (THREATS N16).

use std::sync::Arc;

use agora_storage::wire::{FrameBudget, read_frame_async_within, write_frame_async};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use agora_wire::codec::MAX_RPC_BYTES;

/// Protocol name of agora's request-response exchange.
pub const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/rpc/1.0.0");

/// Length-prefixed opaque bytes; the envelope inside is decoded by the event loop. libp2p clones
/// the codec for every stream, and every clone charges the same budget.
#[derive(Clone, Debug)]
pub struct RpcCodec {
    frames: Arc<FrameBudget>,
}

impl RpcCodec {
    /// A codec whose requests and responses are read within `frames`.
    pub(crate) fn new(frames: Arc<FrameBudget>) -> RpcCodec {
        RpcCodec { frames }
    }
}

/// One frame within `frames`; a frame that cannot grow fails the stream (an I/O error, so
/// libp2p reports the request failed and resets the stream).
async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    frames: &FrameBudget,
) -> std::io::Result<Vec<u8>> {
    match read_frame_async_within(io, MAX_RPC_BYTES, frames).await? {
        Some(body) => Ok(body),
        None => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> std::io::Result<()> {
    write_frame_async(io, data, MAX_RPC_BYTES).await?;
    io.close().await
}

impl libp2p::request_response::Codec for RpcCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, &self.frames).await
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, &self.frames).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}
