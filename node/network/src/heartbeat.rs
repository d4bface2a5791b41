//! Fast heartbeats to watched peers.
//!
//! Every connection carries a slow libp2p ping (`idle_ping_interval`) that keeps the peer list
//! and round-trip times honest. A peer someone depends on (a standby provider watching its
//! customer, an arbitrator attesting a handover) is *watched*, and only watched peers get a
//! heartbeat every `presence_interval` on a stream of their own: 8 bytes out, the same 8 bytes
//! back. Pinging every direct peer at the fast rate cost O(connections) round trips per interval
//! and was most of an idle node's CPU; now the fast rate costs O(watched peers).
//!
//! Both sides run outside the swarm loop on `libp2p-stream`: a beat task per watched peer, and
//! one accept task that echoes (at most [`MAX_INBOUND_PER_PEER`] streams per remote and
//! [`MAX_INBOUND`] in all at once, each closed after [`INBOUND_IDLE`] of silence; a refused
//! stream is counted in `NetworkStats::heartbeat_streams_refused`). The accept loop never waits
//! on anything but the next stream: libp2p-stream hands inbound streams over a one-slot channel
//! and drops what arrives while it is full.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

/// The heartbeat protocol.
pub const HEARTBEAT_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/heartbeat/1.0.0");
/// Most inbound heartbeat streams served at once; more are closed on arrival.
pub const MAX_INBOUND: usize = 256;
/// Most inbound heartbeat streams one peer may hold (it needs one; a reconnect briefly two).
pub const MAX_INBOUND_PER_PEER: usize = 4;
/// An inbound heartbeat stream silent for this long is closed.
pub const INBOUND_IDLE: Duration = Duration::from_secs(30);

/// Serves heartbeats: echoes each 8-byte beat on every inbound stream until `cancel`.
pub(crate) fn serve(
    mut control: libp2p_stream::Control,
    quota: crate::StreamQuota,
    cancel: CancellationToken,
) {
    let incoming = control.accept(HEARTBEAT_PROTOCOL);
    tokio::spawn(
        async move {
            let Ok(mut incoming) = incoming else {
                debug!("heartbeat protocol already registered");
                return;
            };
            loop {
                let (peer, stream) = tokio::select! {
                    _ = cancel.cancelled() => break,
                    next = incoming.next() => match next {
                        Some(s) => s,
                        None => break,
                    },
                };
                // Refusals are counted and logged by the quota; dropping the stream closes it.
                let Some(slot) = quota.try_acquire(peer) else {
                    continue;
                };
                let cancel = cancel.clone();
                // The peer's last connection closed: end the stream's task (THREATS N14).
                let gone = slot.peer_gone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = gone.cancelled() => {}
                        _ = echo(stream) => {}
                    }
                    drop(slot);
                });
            }
        }
        .in_current_span(),
    );
}

async fn echo(mut stream: Stream) -> std::io::Result<()> {
    let mut beat = [0u8; 8];
    loop {
        match tokio::time::timeout(INBOUND_IDLE, stream.read_exact(&mut beat)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        }
        stream.write_all(&beat).await?;
        stream.flush().await?;
    }
}

/// Sends `peer` a heartbeat every `interval` until `cancel`; each answered beat is reported on
/// `alive` with its round-trip time (none for a round that opened the stream). A beat unanswered within its timeout (`timeout`, or more
/// on a slow link: the presence tracker's [`crate::presence::watched_timeout`] of the rounds
/// measured here, starting from the ping's `known_rtt`; doubled after each unanswered beat, at
/// most [`crate::presence::MAX_TIMEOUT_FACTOR`] × `timeout`), or a stream that cannot be opened, is simply not reported: the presence
/// tracker declares the peer down once it has been silent for its timeout. A broken stream is
/// reopened at the next beat.
pub(crate) fn beat(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    interval: Duration,
    timeout: Duration,
    known_rtt: Option<Duration>,
    alive: mpsc::Sender<(PeerId, Option<Duration>)>,
    cancel: CancellationToken,
) {
    tokio::spawn(
        async move {
            let mut stream: Option<Stream> = None;
            let mut seq = 0u64;
            let mut rtt = known_rtt.map(agora_wire::rtt::RttEstimator::first);
            // Doubles after each unanswered beat (RFC 6298 §5.5), so a link slower than the
            // timeout still gets a round through, and with it a sample.
            let mut backoff = 1u32;
            let cap = timeout * crate::presence::MAX_TIMEOUT_FACTOR;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                seq = seq.wrapping_add(1);
                let round_timeout =
                    (crate::presence::watched_timeout(timeout, interval, rtt.as_ref()) * backoff)
                        .min(cap.max(timeout));
                let started = tokio::time::Instant::now();
                let opened = stream.is_some();
                let round = async {
                    let s = match stream.as_mut() {
                        Some(s) => s,
                        None => stream.insert(
                            control
                                .open_stream(peer, HEARTBEAT_PROTOCOL)
                                .await
                                .map_err(|e| std::io::Error::other(e.to_string()))?,
                        ),
                    };
                    s.write_all(&seq.to_le_bytes()).await?;
                    s.flush().await?;
                    let mut back = [0u8; 8];
                    s.read_exact(&mut back).await?;
                    if back != seq.to_le_bytes() {
                        return Err(std::io::Error::other("heartbeat answered out of order"));
                    }
                    Ok::<_, std::io::Error>(())
                };
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = tokio::time::timeout(round_timeout, round) => r,
                };
                match outcome {
                    Ok(Ok(())) => {
                        backoff = 1;
                        // A round that opened its stream measured the stream's set-up too:
                        // not a round-trip sample.
                        let took = opened.then(|| started.elapsed());
                        if let Some(t) = took {
                            rtt = Some(agora_wire::rtt::RttEstimator::sampled(rtt, t));
                        }
                        // A full queue means the loop is busy; the next beat will do.
                        let _ = alive.try_send((peer, took));
                    }
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "heartbeat failed");
                        stream = None;
                    }
                    Err(_) => {
                        debug!(%peer, ?round_timeout, "heartbeat timed out");
                        backoff = backoff
                            .saturating_mul(2)
                            .min(crate::presence::MAX_TIMEOUT_FACTOR);
                        stream = None;
                    }
                }
            }
        }
        .in_current_span(),
    );
}
