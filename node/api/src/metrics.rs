//! Prometheus metrics, liveness and readiness.
//!
//! One `prometheus-client` registry per node ([`Metrics`]): the node's own series live under
//! the `agora_` prefix, and [`Metrics::with_registry`] hands the same registry to other crates
//! (e.g. libp2p's metrics under `libp2p_`). Most `agora_` series are read at scrape time from
//! what the node already keeps (the swarm's counters, the ledger view, the market book and its
//! event counts, the radio, the bitswap counters, the service host's metering): a scrape costs
//! one query per task and nothing is counted twice. Orchestrator phases and handover latencies
//! arrive as they happen through a [`agora_orchestrator::Timeline`] observer.
//!
//! Served on `[metrics] listen` (off by default) by [`serve`]: `GET /metrics` (text format),
//! `GET /health` and `GET /ready`, all without the API token (the data is operational, not
//! secret, and Prometheus cannot present a bearer token read from a 0600 file). `/health` and
//! `/ready` are also on the control API port, likewise unauthenticated.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::ApiState;
use agora_orchestrator::{TimelineEntry, TimelineObserver};

/// The content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// File in the data directory with the metrics listener's `host:port` (when enabled).
pub const METRICS_ADDR_FILE: &str = "metrics.addr";

/// Most distinct orchestrator phases tracked; further names are counted as `other` (phases are
/// code literals, so this only guards against a future bug turning them into data).
const MAX_PHASES: usize = 64;

type Labels = Vec<(&'static str, String)>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

fn phase_histogram() -> Histogram {
    // 10 ms … ~41 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// Sets a counter to a total the node already keeps (the source is monotonic; a restart of
/// the node resets both, which Prometheus treats as a counter reset).
fn set_counter(c: &Counter, v: u64) {
    c.inner().store(v, Ordering::Relaxed);
}

fn set_family_counter(f: &Family<Labels, Counter>, l: &[(&'static str, &str)], v: u64) {
    set_counter(&f.get_or_create(&labels(l)), v);
}

fn set_family_gauge(f: &Family<Labels, Gauge>, l: &[(&'static str, &str)], v: i64) {
    f.get_or_create(&labels(l)).set(v);
}

fn int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

struct Series {
    build_info: Family<Labels, Gauge>,
    uptime_seconds: Gauge,
    peers_connected: Gauge,
    vouched_peers: Family<Labels, Gauge>,
    presence_peers: Family<Labels, Gauge>,
    gossip_messages: Family<Labels, Counter>,
    rpc_rejected: Counter,
    frames_over_budget: Counter,
    frame_bytes_held: Gauge,
    inbound_routes: Family<Labels, Counter>,
    gossip_route_dropped: Family<Labels, Counter>,
    rpc_inbound_failed: Family<Labels, Counter>,
    nat_status: Family<Labels, Gauge>,
    relay: Family<Labels, Counter>,
    relay_open: Family<Labels, Gauge>,
    hole_punches: Family<Labels, Counter>,
    ledger_height: Gauge,
    ledger_last_block_age_seconds: Gauge<f64, AtomicU64>,
    ledger_caught_up: Gauge,
    ledger_committee_size: Gauge,
    mempool_transactions: Gauge,
    contracts: Family<Labels, Gauge>,
    account_balance: Family<Labels, Gauge>,
    auctions: Family<Labels, Gauge>,
    auction_bids: Gauge,
    market_events: Family<Labels, Counter>,
    market_book: Family<Labels, Counter>,
    orchestrator_phases: Family<Labels, Counter>,
    orchestrator_phase_latency_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    orchestrator_synced: Gauge,
    readings: Family<Labels, Counter>,
    radio_devices: Family<Labels, Gauge>,
    radio_refused: Family<Labels, Counter>,
    bitswap: Family<Labels, Counter>,
    bitswap_bytes: Family<Labels, Counter>,
    storage_gc: Family<Labels, Counter>,
    probe_image_loads: Family<Labels, Counter>,
    services: Family<Labels, Gauge>,
    service_fuel_used: Family<Labels, Counter>,
    service_peak_memory_bytes: Family<Labels, Gauge>,
    service_readings: Family<Labels, Counter>,
}

impl Series {
    fn new(r: &mut Registry) -> Series {
        let s = Series {
            build_info: Family::default(),
            uptime_seconds: Gauge::default(),
            peers_connected: Gauge::default(),
            vouched_peers: Family::default(),
            presence_peers: Family::default(),
            gossip_messages: Family::default(),
            rpc_rejected: Counter::default(),
            frames_over_budget: Counter::default(),
            frame_bytes_held: Gauge::default(),
            inbound_routes: Family::default(),
            gossip_route_dropped: Family::default(),
            rpc_inbound_failed: Family::default(),
            nat_status: Family::default(),
            relay: Family::default(),
            relay_open: Family::default(),
            hole_punches: Family::default(),
            ledger_height: Gauge::default(),
            ledger_last_block_age_seconds: Gauge::default(),
            ledger_caught_up: Gauge::default(),
            ledger_committee_size: Gauge::default(),
            mempool_transactions: Gauge::default(),
            contracts: Family::default(),
            account_balance: Family::default(),
            auctions: Family::default(),
            auction_bids: Gauge::default(),
            market_events: Family::default(),
            market_book: Family::default(),
            orchestrator_phases: Family::default(),
            orchestrator_phase_latency_seconds: Family::new_with_constructor(phase_histogram),
            orchestrator_synced: Gauge::default(),
            readings: Family::default(),
            radio_devices: Family::default(),
            radio_refused: Family::default(),
            bitswap: Family::default(),
            bitswap_bytes: Family::default(),
            storage_gc: Family::default(),
            probe_image_loads: Family::default(),
            services: Family::default(),
            service_fuel_used: Family::default(),
            service_peak_memory_bytes: Family::default(),
            service_readings: Family::default(),
        };
        r.register(
            "build_info",
            "Always 1; labels carry the software version and node id",
            s.build_info.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since the node started",
            s.uptime_seconds.clone(),
        );
        r.register(
            "peers_connected",
            "Peers with an open connection",
            s.peers_connected.clone(),
        );
        r.register(
            "vouched_peers",
            "Peers that are not strangers (their gossip, requests and streams do not share the \
             strangers' one budget), by who vouches: ledger (a funded account) or operator \
             (network.trusted_peers)",
            s.vouched_peers.clone(),
        );
        r.register(
            "presence_peers",
            "Peers the presence tracker knows, by reachability and whether watched",
            s.presence_peers.clone(),
        );
        r.register(
            "gossip_messages",
            "Gossip messages by outcome (accepted; ignored by the task that judged them; rejected by validation; published; rate_limited: its peer over its byte rate; strangers_limited: all unfunded peers together over their one budget)",
            s.gossip_messages.clone(),
        );
        r.register(
            "rpc_rejected",
            "Inbound requests rejected by validation",
            s.rpc_rejected.clone(),
        );
        r.register(
            "frames_over_budget",
            "Frames read from peers (requests, responses, bitswap messages) whose stream failed \
             because frames still being read held the node's whole budget \
             (network.inbound_frame_bytes)",
            s.frames_over_budget.clone(),
        );
        r.register(
            "frame_bytes_held",
            "Bytes frames still being read from peers hold of that budget now",
            s.frame_bytes_held.clone(),
        );
        r.register(
            "inbound_routes",
            "Inbound traffic the routes refused or merged, by outcome (rpc_busy: the owning \
             task was behind; rpc_unrouted, gossip_unrouted: no task reads it; peer_coalesced, \
             peer_dropped: presence and connection changes)",
            s.inbound_routes.clone(),
        );
        r.register(
            "gossip_route_dropped",
            "Gossip messages dropped because the task reading their topic was behind, by topic",
            s.gossip_route_dropped.clone(),
        );
        r.register(
            "rpc_inbound_failed",
            "Inbound requests that failed as libp2p reports them, by reason",
            s.rpc_inbound_failed.clone(),
        );
        r.register(
            "nat_status",
            "1 for what AutoNAT concluded about this node (status = unknown, public, private)",
            s.nat_status.clone(),
        );
        r.register(
            "relay",
            "Circuit relay v2 server decisions, by kind (reservation, circuit) and outcome \
             (accepted, denied: over a per-peer or total limit, or a rate)",
            s.relay.clone(),
        );
        r.register(
            "relay_open",
            "Relay state now, by kind (circuits: carried for others as a relay server; \
             reservations_held: slots this node holds on relays)",
            s.relay_open.clone(),
        );
        r.register(
            "hole_punches",
            "DCUtR hole punches by outcome (succeeded: the relayed connection became direct)",
            s.hole_punches.clone(),
        );
        r.register(
            "ledger_height",
            "Height of the last applied block",
            s.ledger_height.clone(),
        );
        r.register(
            "ledger_last_block_age_seconds",
            "Seconds since the time of the last applied (final) block",
            s.ledger_last_block_age_seconds.clone(),
        );
        r.register(
            "ledger_caught_up",
            "1 once f+1 arbitrators confirmed this replica is at the chain's tip",
            s.ledger_caught_up.clone(),
        );
        r.register(
            "ledger_committee_size",
            "Arbitrators in the consensus committee",
            s.ledger_committee_size.clone(),
        );
        r.register(
            "mempool_transactions",
            "Transactions waiting in the mempool",
            s.mempool_transactions.clone(),
        );
        r.register(
            "contracts",
            "Contracts on the ledger by kind and status",
            s.contracts.clone(),
        );
        r.register(
            "account_balance_tokens",
            "This node's account: spendable and locked (escrow, stakes, bonds) tokens",
            s.account_balance.clone(),
        );
        r.register(
            "auctions",
            "Auctions in this node's market book by status",
            s.auctions.clone(),
        );
        r.register(
            "auction_bids",
            "Valid bids held in this node's market book",
            s.auction_bids.clone(),
        );
        r.register(
            "market_book",
            "What the market book refused, evicted or let lapse, by event (auctions_refused_quota, \
             auctions_refused_full, auctions_evicted, offers_…, bids_…, holds_lapsed, \
             auto_bids_declined, auto_bids_deferred, replay_evicted, snapshots_refused, \
             balances_dropped, lost_counts_resynced)",
            s.market_book.clone(),
        );
        r.register(
            "market_events",
            "Market events this node saw, by kind (bid-received, auction-closed, awarded, \
             agreed, negotiation-failed, rejected, ...)",
            s.market_events.clone(),
        );
        r.register(
            "orchestrator_phases",
            "Orchestrator steps by phase (migrated, armed, activated, settled, synced, ...)",
            s.orchestrator_phases.clone(),
        );
        r.register(
            "orchestrator_phase_latency_seconds",
            "Latencies measured by orchestrator steps (activated: handover block arrival to \
             service running on the sensors)",
            s.orchestrator_phase_latency_seconds.clone(),
        );
        r.register(
            "orchestrator_synced",
            "1 once the orchestrator has acted on a ledger that caught up",
            s.orchestrator_synced.clone(),
        );
        r.register(
            "readings",
            "Sensor frames by outcome, summed over devices (received, processed, replayed \
             from the standby buffer, duplicate or stale dropped, missing: sequence numbers \
             skipped that neither this edge nor a peer's checkpoint covered)",
            s.readings.clone(),
        );
        r.register(
            "radio_devices",
            "Devices the radio hears, by role here (managed, buffering, paused: in a firmware job)",
            s.radio_devices.clone(),
        );
        r.register(
            "radio_refused",
            "Peer checkpoints and device-table entries the radio refused or evicted, by reason \
             (not_manager, beyond_heard, release, replay_clamped, evicted, table_full, frame_bad_mic, \
             frame_replayed, frame_beyond_window, frame_unsigned, replay_frame, key_request, \
             key_update, claim_taken, claim_share, …)",
            s.radio_refused.clone(),
        );
        r.register(
            "bitswap",
            "Bitswap events (messages_in, rejected, blocks_sent, blocks_received, unwanted, \
             writers_stalled: a peer took nothing for 30 s, wants_deduplicated, wants_timed_out, \
             peers_benched: a peer's wants timed out in a row)",
            s.bitswap.clone(),
        );
        r.register(
            "bitswap_bytes",
            "Bytes of block data sent and received (wanted and stored) over bitswap, by direction",
            s.bitswap_bytes.clone(),
        );
        r.register(
            "storage_gc",
            "Collections of unpinned blocks and what they deleted, by event (runs, deferred, \
             failed, removed_blocks, removed_bytes)",
            s.storage_gc.clone(),
        );
        r.register(
            "probe_image_loads",
            "Loads of probe images refused because too many waited, not started because the \
             same image was loading, or whose fetch took too long, by event (refused, \
             coalesced, timed_out)",
            s.probe_image_loads.clone(),
        );
        r.register("services", "Hosted services by state", s.services.clone());
        r.register(
            "service_fuel_used",
            "Wasm fuel consumed by each running service",
            s.service_fuel_used.clone(),
        );
        r.register(
            "service_peak_memory_bytes",
            "Largest linear memory each service reached",
            s.service_peak_memory_bytes.clone(),
        );
        r.register(
            "service_readings",
            "Readings handed to each service (processed) or dropped on a full queue",
            s.service_readings.clone(),
        );
        s
    }
}

struct Inner {
    registry: Mutex<Registry>,
    series: Series,
    synced: AtomicBool,
    phases: Mutex<std::collections::BTreeSet<String>>,
}

/// The node's metrics: one registry, the `agora_` series and the readiness flags.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the `agora_` series registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let series = Series::new(registry.sub_registry_with_prefix("agora"));
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                series,
                synced: AtomicBool::new(false),
                phases: Mutex::default(),
            }),
        }
    }

    /// Runs `f` on the registry (to register another crate's metrics, e.g. libp2p's under
    /// `registry.sub_registry_with_prefix("libp2p")`).
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut r = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut r)
    }

    /// An observer for the orchestrator's timeline: counts phases, records measured latencies
    /// and notes when the orchestrator synced.
    pub fn timeline_observer(&self) -> TimelineObserver {
        let me = self.clone();
        Arc::new(move |e: &TimelineEntry| me.observe(e))
    }

    fn observe(&self, e: &TimelineEntry) {
        let phase = {
            let mut known = self
                .inner
                .phases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if known.contains(&e.phase) || known.len() < MAX_PHASES {
                known.insert(e.phase.clone());
                e.phase.clone()
            } else {
                "other".to_string()
            }
        };
        let l = vec![("phase", phase)];
        let s = &self.inner.series;
        s.orchestrator_phases.get_or_create(&l).inc();
        if let Some(ms) = e.latency_ms {
            s.orchestrator_phase_latency_seconds
                .get_or_create(&l)
                .observe(ms as f64 / 1000.0);
        }
        if e.phase == "synced" {
            self.inner.synced.store(true, Ordering::Relaxed);
            s.orchestrator_synced.set(1);
        }
    }

    /// Whether the orchestrator reported that it synced.
    pub fn orchestrator_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Relaxed)
    }

    /// The registry in the text exposition format (without refreshing).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.with_registry(|r| {
            if let Err(e) = encode(&mut out, r) {
                tracing::warn!(error = %e, "metrics could not be encoded");
            }
        });
        out
    }

    /// Reads the node's current state into the series, then encodes the registry.
    pub async fn render(&self, state: &ApiState) -> String {
        self.refresh(state).await;
        self.encode()
    }

    /// Reads the node's current state into the series.
    pub async fn refresh(&self, st: &ApiState) {
        let s = &self.inner.series;
        let id = st.network.node_id();
        s.build_info.clear();
        set_family_gauge(
            &s.build_info,
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("node", &id.short()),
                ("name", &st.name),
            ],
            1,
        );
        s.uptime_seconds.set(int(st.started.elapsed().as_secs()));
        if let Ok(peers) = st.network.peers().await {
            s.peers_connected.set(int(peers.len()));
        }
        if let Ok(presence) = st.network.presence().await {
            s.presence_peers.clear();
            for p in &presence {
                let reach = if p.reachable {
                    "reachable"
                } else {
                    "unreachable"
                };
                let watched = if p.watched { "true" } else { "false" };
                s.presence_peers
                    .get_or_create(&labels(&[("state", reach), ("watched", watched)]))
                    .inc();
            }
        }
        if let Ok(n) = st.network.stats().await {
            for (outcome, v) in [
                ("accepted", n.gossip_accepted),
                ("ignored", n.gossip_ignored),
                ("rejected", n.gossip_rejected),
                ("published", n.gossip_published),
                ("rate_limited", n.gossip_rate_limited),
                ("strangers_limited", n.gossip_strangers_limited),
            ] {
                set_family_counter(&s.gossip_messages, &[("outcome", outcome)], v);
            }
            set_counter(&s.rpc_rejected, n.rpc_rejected);
            set_counter(&s.frames_over_budget, n.frames_over_budget);
            s.frame_bytes_held.set(int(n.frame_bytes_held));
            for (by, v) in [("ledger", n.vouched_peers), ("operator", n.trusted_peers)] {
                set_family_gauge(&s.vouched_peers, &[("by", by)], int(v));
            }
            for (outcome, v) in [
                ("rpc_busy", n.rpc_route_busy),
                ("rpc_unrouted", n.rpc_unrouted),
                ("gossip_unrouted", n.gossip_unrouted),
                ("peer_coalesced", n.peer_events_coalesced),
                ("peer_dropped", n.peer_events_dropped),
            ] {
                set_family_counter(&s.inbound_routes, &[("outcome", outcome)], v);
            }
            for (topic, v) in &n.gossip_route_dropped_by_topic {
                set_family_counter(&s.gossip_route_dropped, &[("topic", topic)], *v);
            }
            for (reason, v) in &n.rpc_inbound_failed {
                set_family_counter(&s.rpc_inbound_failed, &[("reason", reason)], *v);
            }
            for status in ["unknown", "public", "private"] {
                let on = i64::from(n.nat_status == status);
                set_family_gauge(&s.nat_status, &[("status", status)], on);
            }
            for (kind, outcome, v) in [
                ("reservation", "accepted", n.relay_reservations_accepted),
                ("reservation", "denied", n.relay_reservations_denied),
                ("circuit", "accepted", n.relay_circuits_accepted),
                ("circuit", "denied", n.relay_circuits_denied),
            ] {
                set_family_counter(&s.relay, &[("kind", kind), ("outcome", outcome)], v);
            }
            set_family_gauge(
                &s.relay_open,
                &[("kind", "circuits")],
                int(n.relay_circuits_open),
            );
            set_family_gauge(
                &s.relay_open,
                &[("kind", "reservations_held")],
                int(n.relay_reservations_held),
            );
            for (outcome, v) in [
                ("succeeded", n.hole_punch_succeeded),
                ("failed", n.hole_punch_failed),
            ] {
                set_family_counter(&s.hole_punches, &[("outcome", outcome)], v);
            }
        }
        self.refresh_ledger(st).await;
        self.refresh_market(st).await;
        self.refresh_edge(st).await;
    }

    async fn refresh_ledger(&self, st: &ApiState) {
        let s = &self.inner.series;
        let Some(ledger) = &st.ledger else { return };
        let view = ledger
            .query(|v| {
                let mut contracts: std::collections::BTreeMap<(String, String), i64> =
                    Default::default();
                for r in v.ledger.contracts().values() {
                    let key = (
                        format!("{:?}", r.contract.kind).to_lowercase(),
                        format!("{:?}", r.status).to_lowercase(),
                    );
                    *contracts.entry(key).or_default() += 1;
                }
                let me = v.ledger.account(&v.me).cloned().unwrap_or_default();
                (
                    v.ledger.height(),
                    v.last_block_at,
                    v.caught_up,
                    v.ledger.committee().len(),
                    v.mempool,
                    contracts,
                    (me.balance, me.locked),
                )
            })
            .await;
        let Ok((height, last_at, caught_up, committee, mempool, contracts, balance)) = view else {
            return;
        };
        s.ledger_height.set(int(height));
        if let Some(at) = last_at {
            let age = agora_wire::now_ms().saturating_sub(at);
            s.ledger_last_block_age_seconds.set(age as f64 / 1000.0);
        }
        s.ledger_caught_up.set(i64::from(caught_up));
        s.ledger_committee_size.set(int(committee));
        s.mempool_transactions.set(int(mempool));
        s.contracts.clear();
        for ((kind, status), n) in &contracts {
            set_family_gauge(&s.contracts, &[("kind", kind), ("status", status)], *n);
        }
        set_family_gauge(&s.account_balance, &[("kind", "spendable")], int(balance.0));
        set_family_gauge(&s.account_balance, &[("kind", "locked")], int(balance.1));
    }

    async fn refresh_market(&self, st: &ApiState) {
        let s = &self.inner.series;
        let Some(market) = &st.market else { return };
        let counts = market
            .query(|m| {
                let (mut open, mut closed, mut awarded, mut bids) = (0i64, 0i64, 0i64, 0i64);
                for e in m.auctions().values() {
                    match e.status {
                        agora_market::AuctionStatus::Open => open += 1,
                        agora_market::AuctionStatus::Closed { .. } => closed += 1,
                        agora_market::AuctionStatus::Awarded { .. } => awarded += 1,
                    }
                    bids += int(e.bids.len());
                }
                (open, closed, awarded, bids, m.book_stats().counters)
            })
            .await;
        if let Ok((open, closed, awarded, bids, c)) = counts {
            for (event, v) in [
                ("auctions_refused_quota", c.auctions_refused_quota),
                ("auctions_refused_full", c.auctions_refused_full),
                ("auctions_evicted", c.auctions_evicted),
                ("offers_refused_quota", c.offers_refused_quota),
                ("offers_refused_full", c.offers_refused_full),
                ("offers_evicted", c.offers_evicted),
                ("bids_refused_duplicate", c.bids_refused_duplicate),
                ("bids_refused_full", c.bids_refused_full),
                ("bids_evicted", c.bids_evicted),
                ("holds_lapsed", c.holds_lapsed),
                ("auto_bids_declined", c.auto_bids_declined),
                ("auto_bids_deferred", c.auto_bids_deferred),
                ("replay_evicted", c.replay_evicted),
                ("snapshots_refused", c.snapshots_refused),
                ("balances_dropped", c.balances_dropped),
                ("lost_counts_resynced", c.lost_counts_resynced),
            ] {
                set_family_counter(&s.market_book, &[("event", event)], v);
            }
            for (status, n) in [("open", open), ("closed", closed), ("awarded", awarded)] {
                set_family_gauge(&s.auctions, &[("status", status)], n);
            }
            s.auction_bids.set(bids);
        }
        for (kind, n) in market.event_counts() {
            set_family_counter(&s.market_events, &[("kind", kind)], n);
        }
    }

    async fn refresh_edge(&self, st: &ApiState) {
        let s = &self.inner.series;
        if let Some(radio) = &st.radio {
            let status = radio.status().await;
            let (mut received, mut processed, mut replayed, mut duplicates) = (0, 0, 0, 0);
            let mut missing = 0u64;
            let (mut managed, mut buffering, mut paused) = (0i64, 0i64, 0i64);
            for d in &status.devices {
                received += d.received;
                processed += d.processed;
                replayed += d.replayed;
                duplicates += d.duplicates;
                missing = missing.saturating_add(d.missing);
                managed += i64::from(d.service.is_some());
                buffering += i64::from(d.buffering);
                paused += i64::from(d.paused);
            }
            for (outcome, v) in [
                ("received", received),
                ("processed", processed),
                ("replayed", replayed),
                ("duplicate", duplicates),
                ("missing", missing),
            ] {
                set_family_counter(&s.readings, &[("outcome", outcome)], v);
            }
            set_family_gauge(&s.radio_devices, &[("role", "managed")], managed);
            set_family_gauge(&s.radio_devices, &[("role", "buffering")], buffering);
            set_family_gauge(&s.radio_devices, &[("role", "paused")], paused);
            let r = &status.stats;
            for (reason, v) in [
                ("not_manager", r.ranges_refused_not_manager),
                ("beyond_heard", r.ranges_refused_beyond_heard),
                ("release", r.releases_refused),
                ("replay_clamped", r.replay_covered_clamped),
                ("evicted", r.devices_evicted),
                ("table_full", r.frames_dropped_table_full),
                ("frame_bad_mic", r.frames_refused_bad_mic),
                ("frame_replayed", r.frames_refused_replayed),
                ("frame_beyond_window", r.frames_refused_beyond_window),
                ("frame_unsigned", r.frames_refused_unsigned),
                ("replay_frame", r.replay_frames_refused),
                ("replay_request_trimmed", r.replay_requests_trimmed),
                ("replay_entry", r.replay_entries_refused),
                ("key_request", r.key_requests_refused),
                ("key_update", r.key_updates_refused),
                ("claim_taken", r.claims_refused_taken),
                ("claim_share", r.claims_refused_share),
                ("checkpoint_ignored", r.checkpoints_ignored),
                ("checkpoint_rejected", r.checkpoints_rejected),
            ] {
                set_family_counter(&s.radio_refused, &[("reason", reason)], v);
            }
        }
        if let Some(e) = st.storage.as_ref().and_then(|x| x.embedded()) {
            let g = e.gc_gate().counters();
            for (event, v) in [
                ("runs", g.runs),
                ("deferred", g.deferred),
                ("failed", g.failed),
                ("removed_blocks", g.removed_blocks),
                ("removed_bytes", g.removed_bytes),
                ("drained", g.drained),
                ("drain_gave_up", g.drain_gave_up),
            ] {
                set_family_counter(&s.storage_gc, &[("event", event)], v);
            }
        }
        if let Some(b) = st.storage.as_ref().and_then(|x| x.bitswap()) {
            let b = b.stats();
            for (event, v) in [
                ("messages_in", b.messages_in),
                ("rejected", b.rejected),
                ("blocks_sent", b.blocks_sent),
                ("blocks_received", b.blocks_received),
                ("unwanted", b.unwanted),
                ("writers_stalled", b.writers_stalled),
                ("wants_deduplicated", b.wants_deduplicated),
                ("wants_timed_out", b.wants_timed_out),
                ("peers_benched", b.peers_benched),
            ] {
                set_family_counter(&s.bitswap, &[("event", event)], v);
            }
            for (direction, v) in [("sent", b.bytes_sent), ("received", b.bytes_received)] {
                set_family_counter(&s.bitswap_bytes, &[("direction", direction)], v);
            }
        }
        if let Some(host) = &st.services {
            let p = host.probe_load_stats();
            for (event, v) in [
                ("refused", p.refused),
                ("coalesced", p.coalesced),
                ("timed_out", p.timed_out),
            ] {
                set_family_counter(&s.probe_image_loads, &[("event", event)], v);
            }
            let list = host.list();
            s.services.clear();
            s.service_fuel_used.clear();
            s.service_peak_memory_bytes.clear();
            s.service_readings.clear();
            let mut by_state: std::collections::BTreeMap<String, i64> = Default::default();
            for svc in &list {
                let state = serde_json::to_value(&svc.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{:?}", svc.state).to_lowercase());
                *by_state.entry(state).or_default() += 1;
                let l = [("service", svc.id.as_str()), ("name", svc.name.as_str())];
                set_family_counter(&s.service_fuel_used, &l, svc.metering.fuel_used);
                set_family_gauge(
                    &s.service_peak_memory_bytes,
                    &l,
                    int(svc.metering.peak_memory_bytes),
                );
                let id = svc.id.as_str();
                set_family_counter(
                    &s.service_readings,
                    &[("service", id), ("outcome", "processed")],
                    svc.metering.readings_processed,
                );
                set_family_counter(
                    &s.service_readings,
                    &[("service", id), ("outcome", "dropped")],
                    svc.metering.readings_dropped,
                );
            }
            for (state, n) in &by_state {
                set_family_gauge(&s.services, &[("state", state)], *n);
            }
        }
    }
}

/// `GET /ready` answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    /// Whether every check passed.
    pub ready: bool,
    /// At least one peer is connected.
    pub connected: bool,
    /// A network of one (no bootstrap peers, nobody else in the genesis): ready without peers.
    #[serde(default)]
    pub alone: bool,
    /// The ledger replica knows it is at the chain's tip (true when the node has no ledger).
    pub ledger_at_tip: bool,
    /// The orchestrator has synced (true when the node has none).
    pub orchestrator_synced: bool,
    /// The market holds the capacity of the contracts this node runs, so it takes work (true
    /// when the node has no market; THREATS C35).
    #[serde(default)]
    pub market_restored: bool,
    /// What is missing, as sentences naming what to check.
    pub waiting_for: Vec<String>,
}

/// Checks readiness: connected, ledger at the tip, orchestrator synced, market taking work.
pub async fn readiness(st: &ApiState, metrics: Option<&Metrics>) -> Readiness {
    let mut waiting_for = Vec::new();
    let connected = st.network.peers().await.is_ok_and(|p| !p.is_empty());
    if !connected && !st.alone {
        waiting_for.push(
            "no peer is connected: check network.bootstrap in config.toml or run \
             `agora peers` to see who answers"
                .to_string(),
        );
    }
    let ledger_at_tip = match &st.ledger {
        None => true,
        Some(l) => l.query(|v| v.caught_up).await.unwrap_or(false),
    };
    if !ledger_at_tip {
        waiting_for.push(
            "the ledger has not confirmed it is at the chain's tip (f+1 arbitrators must \
             answer): check `agora ledger status` and that arbitrators are reachable"
                .to_string(),
        );
    }
    let orchestrator_synced = match (&st.orchestrator, metrics) {
        (None, _) => true,
        (Some(_), Some(m)) => m.orchestrator_synced(),
        (Some(o), None) => o.timeline.entries().iter().any(|e| e.phase == "synced"),
    };
    if !orchestrator_synced {
        waiting_for.push(
            "the orchestrator has not synced with the ledger yet: see `agora timeline`".into(),
        );
    }
    let market_restored = match &st.market {
        None => true,
        Some(m) => m.query(|s| s.capacity_restored()).await.unwrap_or(false),
    };
    if !market_restored {
        waiting_for.push(
            "the market takes no work until it holds the capacity of this node's running \
             contracts, which it reads once the ledger is current: see `agora ledger status`"
                .into(),
        );
    }
    Readiness {
        ready: waiting_for.is_empty(),
        connected,
        alone: st.alone,
        ledger_at_tip,
        orchestrator_synced,
        market_restored,
        waiting_for,
    }
}

#[derive(Clone)]
struct ProbeState {
    api: ApiState,
    metrics: Option<Metrics>,
    /// One scrape renders at a time (each asks the ledger task for every contract).
    scrapes: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Whether `host` (a request's `Host` header) names this machine's loopback: `localhost` or a
/// loopback IP literal, with or without a port. A listener on loopback answers only those, so a
/// web page that rebinds its own name to 127.0.0.1 cannot read it (THREATS L4).
pub fn loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn loopback_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if loopback_host(host) {
        next.run(req).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this listener is on loopback and answers only Host: localhost or a loopback address",
        )
            .into_response()
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(p): State<ProbeState>) -> Response {
    let r = readiness(&p.api, p.metrics.as_ref()).await;
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

async fn metrics_text(State(p): State<ProbeState>) -> Response {
    match &p.metrics {
        Some(m) => {
            let Ok(_one) = p.scrapes.acquire().await else {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            };
            (
                [(header::CONTENT_TYPE, TEXT_FORMAT)],
                m.render(&p.api).await,
            )
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "metrics are off; set [metrics] listen in config.toml",
        )
            .into_response(),
    }
}

/// `/health` and `/ready` (no token), for the control API router.
pub fn probe_routes(api: ApiState, metrics: Option<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(ProbeState {
            api,
            metrics,
            scrapes: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        })
}

/// Serves `/metrics`, `/health` and `/ready` (no token) until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: ApiState,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let on_loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let mut app = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(ProbeState {
            api: api.clone(),
            metrics: Some(metrics.clone()),
            scrapes: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        })
        .merge(probe_routes(api, Some(metrics)));
    if on_loopback {
        app = app.layer(axum::middleware::from_fn(loopback_only));
    }
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, "metrics listener stopped with an error");
    }
}

/// Parses the text exposition into `series → value`, where a series is written as in the text
/// (`name{label="v",...}`); checks that every sample belongs to a family declared by a `# TYPE`
/// line. For tests (ours and the process tests) — not a general parser.
pub fn parse_exposition(text: &str) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let mut families = std::collections::BTreeSet::new();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest
                .split_whitespace()
                .next()
                .ok_or("TYPE without a name")?;
            families.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("sample without a value: {line}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value in: {line}"))?,
        };
        let name = series.split('{').next().unwrap_or(series);
        let family = ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(name);
        if !families.contains(family) {
            return Err(format!("sample {name} has no # TYPE line"));
        }
        out.insert(series.to_string(), value);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(phase: &str, latency_ms: Option<u64>) -> TimelineEntry {
        TimelineEntry {
            at: 0,
            phase: phase.into(),
            contract: None,
            detail: String::new(),
            latency_ms,
        }
    }

    #[test]
    fn exposition_parses_back_with_prefixed_series() {
        let m = Metrics::new();
        let observe = m.timeline_observer();
        assert!(!m.orchestrator_synced());
        observe(&entry("migrated", None));
        observe(&entry("activated", Some(250)));
        observe(&entry("activated", Some(3_000)));
        observe(&entry("synced", None));
        assert!(m.orchestrator_synced());
        let s = &m.inner.series;
        s.ledger_height.set(42);
        set_family_gauge(&s.auctions, &[("status", "open")], 3);
        set_family_counter(&s.market_events, &[("kind", "awarded")], 7);
        // Re-setting a total keeps the latest value (it mirrors a counter the node keeps).
        set_family_counter(&s.market_events, &[("kind", "awarded")], 9);

        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let v = parse_exposition(&text).unwrap();
        assert_eq!(v["agora_ledger_height"], 42.0);
        assert_eq!(v["agora_auctions{status=\"open\"}"], 3.0);
        assert_eq!(v["agora_market_events_total{kind=\"awarded\"}"], 9.0);
        assert_eq!(
            v["agora_orchestrator_phases_total{phase=\"activated\"}"],
            2.0
        );
        assert_eq!(v["agora_orchestrator_synced"], 1.0);
        let hist = "agora_orchestrator_phase_latency_seconds";
        assert_eq!(v[&format!("{hist}_count{{phase=\"activated\"}}")], 2.0);
        assert!((v[&format!("{hist}_sum{{phase=\"activated\"}}")] - 3.25).abs() < 1e-9);
        // 0.25 s falls in the 0.32 s bucket, 3 s only from the 5.12 s bucket on.
        assert_eq!(
            v[&format!("{hist}_bucket{{le=\"0.32\",phase=\"activated\"}}")],
            1.0
        );
        assert_eq!(
            v[&format!("{hist}_bucket{{le=\"5.12\",phase=\"activated\"}}")],
            2.0
        );
        // Every family of ours carries the prefix.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(line.starts_with("# TYPE agora_"), "{line}");
        }
    }

    #[test]
    fn phases_beyond_the_bound_are_counted_as_other() {
        let m = Metrics::new();
        let observe = m.timeline_observer();
        for i in 0..(MAX_PHASES + 5) {
            observe(&entry(&format!("phase-{i}"), None));
        }
        let v = parse_exposition(&m.encode()).unwrap();
        let phases = v
            .keys()
            .filter(|k| k.starts_with("agora_orchestrator_phases_total"))
            .count();
        assert_eq!(phases, MAX_PHASES + 1);
        assert_eq!(v["agora_orchestrator_phases_total{phase=\"other\"}"], 5.0);
    }

    #[test]
    fn the_parser_refuses_samples_without_a_type() {
        assert!(parse_exposition("foo 1\n").is_err());
        assert!(parse_exposition("# TYPE foo gauge\nfoo 1\n").is_ok());
        assert!(parse_exposition("# TYPE foo gauge\nfoo one\n").is_err());
    }
}

#[cfg(test)]
mod host_tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_names_pass() {
        for ok in [
            "localhost",
            "LOCALHOST:9100",
            "127.0.0.1",
            "127.0.0.1:9100",
            "[::1]:9100",
            "[::1]",
            "127.3.4.5:1",
        ] {
            assert!(loopback_host(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9100",
            "10.0.0.1:9100",
            "localhost.evil.example",
            "[2001:db8::1]:80",
            "",
        ] {
            assert!(!loopback_host(Some(bad)), "{bad}");
        }
        assert!(!loopback_host(None));
    }
}
