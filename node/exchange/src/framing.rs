//! Bitswap wire framing: each protobuf message is prefixed with its length as an unsigned varint
//! (as Kubo's msgio does). Lengths are checked before any allocation.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use agora_storage::bitswap::{MAX_MESSAGE_SIZE, Message};

/// Errors reading or writing a framed bitswap message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or closed mid-message.
    #[error("bitswap stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is not a valid varint.
    #[error("bitswap frame has a malformed length prefix; closing the stream")]
    BadLength,
    /// The announced length is over the limit.
    #[error("bitswap frame of {size} bytes exceeds the {limit}-byte limit; closing the stream")]
    TooLarge {
        /// Announced length.
        size: u64,
        /// Limit.
        limit: usize,
    },
    /// The message body did not decode.
    #[error("bitswap message rejected: {0}")]
    Decode(#[from] agora_storage::bitswap::BitswapError),
}

/// Reads one framed message; `Ok(None)` on a clean end of stream.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Message>, FrameError> {
    let Some(len) = read_varint(r).await? else {
        return Ok(None);
    };
    if len > MAX_MESSAGE_SIZE as u64 {
        return Err(FrameError::TooLarge {
            size: len,
            limit: MAX_MESSAGE_SIZE,
        });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(Some(Message::decode(&buf)?))
}

/// Writes one framed message and flushes.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &Message,
) -> Result<(), FrameError> {
    let body = message.encode();
    if body.len() > MAX_MESSAGE_SIZE {
        return Err(FrameError::TooLarge {
            size: body.len() as u64,
            limit: MAX_MESSAGE_SIZE,
        });
    }
    let mut frame = encode_varint(body.len() as u64);
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Unsigned LEB128 encoding.
pub fn encode_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Reads an unsigned varint (at most 9 bytes, as multiformats allows); `None` at end of stream.
async fn read_varint<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<u64>, FrameError> {
    let mut value = 0u64;
    for i in 0..9 {
        let mut byte = [0u8; 1];
        let n = r.read(&mut byte).await?;
        if n == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(FrameError::BadLength)
            };
        }
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(FrameError::BadLength)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn cid() -> agora_storage::Cid {
        agora_storage::hash::cid_v1_blake3(agora_storage::hash::RAW, b"x")
    }

    #[tokio::test]
    async fn round_trip_two_messages() {
        let a = Message::want_blocks(&[cid()]);
        let mut buf = Vec::new();
        write_message(&mut buf, &a).await.unwrap();
        write_message(&mut buf, &Message::default()).await.unwrap();
        let mut r = Cursor::new(buf);
        assert_eq!(read_message(&mut r).await.unwrap(), Some(a));
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some(Message::default())
        );
        assert_eq!(read_message(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_rejected() {
        let mut r = Cursor::new(encode_varint(100 * 1024 * 1024));
        assert!(matches!(
            read_message(&mut r).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut r = Cursor::new(vec![0xff; 12]);
        assert!(matches!(
            read_message(&mut r).await,
            Err(FrameError::BadLength)
        ));
        let mut garbage = encode_varint(4);
        garbage.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff]);
        let mut r = Cursor::new(garbage);
        assert!(matches!(
            read_message(&mut r).await,
            Err(FrameError::Decode(_))
        ));
        // Truncated body.
        let mut short = encode_varint(10);
        short.push(1);
        let mut r = Cursor::new(short);
        assert!(matches!(read_message(&mut r).await, Err(FrameError::Io(_))));
    }
}
