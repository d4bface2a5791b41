//! Bitswap messages on a stream: each protobuf message is prefixed with its length as an
//! unsigned varint (as Kubo's msgio does). The framing itself is `agora_storage::wire`'s, which
//! checks the length before any allocation and charges the body's buffer, as it grows, to the
//! node's one budget for frames being read (THREATS N16).

use futures::{AsyncRead, AsyncWrite};

use agora_storage::bitswap::{BitswapError, MAX_MESSAGE_SIZE, Message};
use agora_storage::wire::{FrameBudget, FrameError, read_frame_async_within, write_frame_async};

/// Errors reading or writing a bitswap message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The frame around the message: I/O, a malformed or oversized length prefix.
    #[error("bitswap frame: {0}")]
    Frame(#[from] FrameError),
    /// The message body did not decode.
    #[error("bitswap message rejected: {0}")]
    Decode(#[from] BitswapError),
}

/// Reads one framed message within `frames` (a message that cannot grow within it fails with
/// [`FrameError::OverBudget`]); `Ok(None)` on a clean end of stream.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    frames: &FrameBudget,
) -> Result<Option<Message>, MessageError> {
    let Some(body) = read_frame_async_within(r, MAX_MESSAGE_SIZE, frames).await? else {
        return Ok(None);
    };
    Ok(Some(Message::decode(&body)?))
}

/// Writes one framed message and flushes.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &Message,
) -> Result<(), MessageError> {
    Ok(write_frame_async(w, &message.encode(), MAX_MESSAGE_SIZE).await?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_storage::wire::encode_varint;
    use futures::io::Cursor;

    fn cid() -> agora_storage::Cid {
        agora_storage::hash::cid_v1_blake3(agora_storage::hash::RAW, b"x")
    }

    #[tokio::test]
    async fn round_trip_two_messages() {
        let frames = FrameBudget::unbounded();
        let a = Message::want_blocks(&[cid()]);
        let mut buf = Vec::new();
        write_message(&mut buf, &a).await.unwrap();
        write_message(&mut buf, &Message::default()).await.unwrap();
        let mut r = Cursor::new(buf);
        assert_eq!(read_message(&mut r, &frames).await.unwrap(), Some(a));
        assert_eq!(
            read_message(&mut r, &frames).await.unwrap(),
            Some(Message::default())
        );
        assert_eq!(read_message(&mut r, &frames).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_rejected() {
        let frames = FrameBudget::unbounded();
        let mut r = Cursor::new(encode_varint(100 * 1024 * 1024));
        assert!(matches!(
            read_message(&mut r, &frames).await,
            Err(MessageError::Frame(FrameError::TooLarge { .. }))
        ));
        let mut r = Cursor::new(vec![0xff; 12]);
        assert!(matches!(
            read_message(&mut r, &frames).await,
            Err(MessageError::Frame(FrameError::BadLength(_)))
        ));
        let mut garbage = encode_varint(4);
        garbage.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff]);
        let mut r = Cursor::new(garbage);
        assert!(matches!(
            read_message(&mut r, &frames).await,
            Err(MessageError::Decode(_))
        ));
        // Truncated body.
        let mut short = encode_varint(10);
        short.push(1);
        let mut r = Cursor::new(short);
        assert!(matches!(
            read_message(&mut r, &frames).await,
            Err(MessageError::Frame(FrameError::Io(_)))
        ));
    }
}
