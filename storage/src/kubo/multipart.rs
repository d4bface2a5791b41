//! A streaming `multipart/form-data` body with one file part, built by hand.

use std::hash::{BuildHasher, RandomState};

use futures::stream::{self, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes read from the source per body chunk.
const CHUNK: usize = 256 * 1024;

/// A fresh boundary: 128 random bits from the process-seeded `RandomState`.
fn boundary() -> String {
    let a = RandomState::new().hash_one(0u8);
    let b = RandomState::new().hash_one(1u8);
    format!("agora-{a:016x}{b:016x}")
}

/// Returns the boundary and a body streaming `reader` as the single file part.
pub(super) fn file_body<R: AsyncRead + Send + Unpin + 'static>(
    reader: R,
) -> (String, reqwest::Body) {
    let boundary = boundary();
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"file\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
    let data = stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let mut buf = vec![0u8; CHUNK];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let body = stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(data)
        .chain(stream::once(async move { Ok(tail) }));
    (boundary, reqwest::Body::wrap_stream(body))
}
