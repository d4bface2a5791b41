//! Floods from one peer or many identities: raw streams held open (heartbeat, bitswap) and
//! request-response bursts.

use agora_network::{PeerId, Stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::Adversary;

/// The heartbeat protocol (echoes 8-byte beats).
pub const HEARTBEAT: &str = "/agora/heartbeat/1.0.0";
/// The bitswap protocol we speak first.
pub const BITSWAP: &str = "/ipfs/bitswap/1.2.0";

/// What a flood achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodReport {
    /// Attempts that the target accepted (stream opened, request answered).
    pub accepted: usize,
    /// Attempts refused, reset or timed out.
    pub refused: usize,
}

/// Opens `n` streams on `protocol` to `peer` and keeps the ones that opened; the target sees
/// them as held open until the returned streams are dropped.
pub async fn open_streams(
    adv: &Adversary,
    peer: PeerId,
    protocol: &'static str,
    n: usize,
) -> (Vec<Stream>, FloodReport) {
    let mut opens: FuturesUnordered<_> = (0..n).map(|_| adv.open_stream(peer, protocol)).collect();
    let mut held = Vec::new();
    let mut report = FloodReport::default();
    while let Some(r) = opens.next().await {
        match r {
            Ok(s) => {
                held.push(s);
                report.accepted += 1;
            }
            Err(_) => report.refused += 1,
        }
    }
    (held, report)
}

/// Sends `n` copies of `bytes` to `peer` at once and counts answers and failures.
pub async fn requests(adv: &Adversary, peer: PeerId, bytes: &[u8], n: usize) -> FloodReport {
    let mut sent: FuturesUnordered<_> = (0..n)
        .map(|_| adv.request_raw(peer, bytes.to_vec()))
        .collect();
    let mut report = FloodReport::default();
    while let Some(r) = sent.next().await {
        match r {
            Ok(_) => report.accepted += 1,
            Err(_) => report.refused += 1,
        }
    }
    report
}

/// How many of `streams` a heartbeat server still echoes on (a beat written, the same 8 bytes
/// read back within `wait`); the others were refused (closed by the target).
pub async fn echoing(streams: &mut [Stream], wait: std::time::Duration) -> usize {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let beats = streams.iter_mut().enumerate().map(|(i, s)| async move {
        let beat = (i as u64).to_le_bytes();
        let round = async {
            s.write_all(&beat).await?;
            s.flush().await?;
            let mut back = [0u8; 8];
            s.read_exact(&mut back).await?;
            Ok::<bool, std::io::Error>(back == beat)
        };
        matches!(tokio::time::timeout(wait, round).await, Ok(Ok(true)))
    });
    futures::future::join_all(beats)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count()
}

/// How many of `streams` the target still holds open after `wait`: a stream it refused reads
/// end-of-stream or a reset at once, one it serves stays silent (bitswap answers on a stream
/// of its own).
pub async fn held_open(streams: &mut [Stream], wait: std::time::Duration) -> usize {
    use futures::AsyncReadExt;
    let reads = streams.iter_mut().map(|s| async move {
        let mut buf = [0u8; 1];
        // Timed out: still open and served.
        tokio::time::timeout(wait, s.read(&mut buf)).await.is_err()
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|open| *open)
        .count()
}

/// Keeps only the streams of `streams` (each tagged with its opener) the target still holds
/// open after `wait`, as [`held_open`] judges them.
pub async fn retain_open<T>(streams: &mut Vec<(T, Stream)>, wait: std::time::Duration) {
    use futures::AsyncReadExt;
    let reads = std::mem::take(streams)
        .into_iter()
        .map(|(tag, mut s)| async move {
            let mut buf = [0u8; 1];
            let open = tokio::time::timeout(wait, s.read(&mut buf)).await.is_err();
            open.then_some((tag, s))
        });
    *streams = futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect();
}

/// Like [`requests`], but gives up waiting on answers after `wait` (requests nobody answers
/// time out only after the request-response timeout); what did not finish counts as neither.
pub async fn requests_for(
    adv: &Adversary,
    peer: PeerId,
    bytes: &[u8],
    n: usize,
    wait: std::time::Duration,
) -> FloodReport {
    let mut sent: FuturesUnordered<_> = (0..n)
        .map(|_| adv.request_raw(peer, bytes.to_vec()))
        .collect();
    let mut report = FloodReport::default();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, sent.next()).await {
        match r {
            Ok(_) => report.accepted += 1,
            Err(_) => report.refused += 1,
        }
    }
    report
}
