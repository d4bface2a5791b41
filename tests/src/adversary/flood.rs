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
