//! What the dashboard shows: one [`Snapshot`] of the node's state, read from what the node
//! already keeps (one query per task, like a metrics scrape). Every list is capped so a
//! snapshot — and so every server-sent event — has a bounded size however large the book, the
//! ledger or the timeline grow.

use serde::{Deserialize, Serialize};

use agora_network::{PeerInfo, PeerPresence};
use agora_orchestrator::TimelineEntry;
use agora_radio::DeviceStatus;

use crate::ApiState;
use crate::ledger::{BalanceReply, EarningView};
use crate::market::{AuctionView, BidView, auction_view, bid_view};

/// Most peers (and presence rows, and radio devices) in a snapshot.
pub const MAX_PEERS: usize = 64;
/// Most auctions in a snapshot (the latest-closing ones).
pub const MAX_AUCTIONS: usize = 40;
/// Most bids shown per auction (the cheapest).
pub const MAX_BIDS: usize = 16;
/// Most contracts in a snapshot (the latest registered).
pub const MAX_CONTRACTS: usize = 40;
/// Most timeline entries in a snapshot (the latest).
pub const MAX_TIMELINE: usize = 60;
/// Most handovers charted (the latest).
pub const MAX_HANDOVERS: usize = 4;

/// This node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    /// Label.
    pub name: String,
    /// Full node id (base58).
    pub node_id: String,
    /// Short node id.
    pub short_id: String,
    /// libp2p peer id.
    pub peer_id: String,
}

/// An auction with the bids this node knows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuctionDash {
    /// The auction as `agora auctions` lists it.
    #[serde(flatten)]
    pub auction: AuctionView,
    /// The cheapest bids (at most [`MAX_BIDS`]).
    pub bid_list: Vec<BidView>,
}

/// A contract on the ledger and the times of its phases.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContractDash {
    /// Id (hex).
    pub id: String,
    /// `service`, `storage`, …
    pub kind: String,
    /// Lifecycle status (`validated`, `armed`, `active`, `settled`, …).
    pub status: String,
    /// Customer node id.
    pub customer: String,
    /// Provider node id.
    pub provider: String,
    /// Agreed payment.
    pub payment: u64,
    /// Paid to the provider so far.
    pub paid: u64,
    /// Registered on the ledger (ms).
    pub registered_at: u64,
    /// Armed (ms).
    pub armed_at: Option<u64>,
    /// Handover attested by the committee (ms).
    pub trigger_at: Option<u64>,
    /// Activated (ms).
    pub activated_at: Option<u64>,
    /// Closed (ms).
    pub closed_at: Option<u64>,
}

/// One point of a handover: a phase and when this node saw it (ms).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HandoverPhase {
    /// `detected`, `attested`, `activated` or `first reading`.
    pub phase: String,
    /// When (ms, Unix).
    pub at: u64,
    /// What it means.
    pub detail: String,
}

/// A handover as this node saw it, from detection to the first reading processed after it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HandoverView {
    /// Contract id (hex).
    pub contract: String,
    /// The phases known to this node, in time order.
    pub phases: Vec<HandoverPhase>,
}

/// The node's account.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccountView {
    /// Balance, locked tokens, reputation.
    pub balance: BalanceReply,
    /// Contracts where this node is the provider.
    pub earnings: Vec<EarningView>,
    /// Sum of what those contracts paid so far.
    pub earned: u64,
    /// Ledger height.
    pub height: u64,
}

/// Everything the dashboard shows, at one moment.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// This node (absent only if the snapshot could not be read).
    pub node: Option<NodeView>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
    /// Peers the presence tracker knows.
    pub presence: Vec<PeerPresence>,
    /// Auctions (open ones first, then the latest-closing).
    pub auctions: Vec<AuctionDash>,
    /// Contracts on the ledger.
    pub contracts: Vec<ContractDash>,
    /// Handovers this node saw.
    pub handovers: Vec<HandoverView>,
    /// The orchestrator's latest timeline entries.
    pub timeline: Vec<TimelineEntry>,
    /// Sensor devices heard by this node's radio and which service manages them.
    pub devices: Vec<DeviceStatus>,
    /// Balance and earnings, when the node has a ledger.
    pub account: Option<AccountView>,
    /// The event stream itself.
    pub stream: Option<StreamStats>,
}

/// The event stream's own counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamStats {
    /// Listeners connected now.
    pub listeners: usize,
    /// Listeners dropped since start because they fell behind.
    pub dropped: u64,
}

/// Reads a snapshot of the node's state.
pub async fn read(st: &ApiState) -> Snapshot {
    let id = st.network.node_id();
    let mut snap = Snapshot {
        node: Some(NodeView {
            name: st.name.clone(),
            node_id: id.to_string(),
            short_id: id.short(),
            peer_id: st.network.peer_id().to_string(),
        }),
        ..Snapshot::default()
    };
    if let Ok(mut peers) = st.network.peers().await {
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers.truncate(MAX_PEERS);
        snap.peers = peers;
    }
    if let Ok(mut presence) = st.network.presence().await {
        presence.sort_by_key(|p| p.node.to_string());
        presence.truncate(MAX_PEERS);
        snap.presence = presence;
    }
    if let Some(m) = &st.market
        && let Ok(auctions) = m.query(auctions).await
    {
        snap.auctions = auctions;
    }
    let mut first_readings = Vec::new();
    if let Some(radio) = &st.radio {
        let mut devices = radio.status().await.devices;
        devices.truncate(MAX_PEERS);
        first_readings = devices
            .iter()
            .filter(|d| d.service.is_some())
            .filter_map(|d| d.first_processed_at)
            .collect();
        snap.devices = devices;
    }
    if let Some(o) = &st.orchestrator {
        let entries = o.timeline.entries();
        let skip = entries.len().saturating_sub(MAX_TIMELINE);
        snap.timeline = entries.get(skip..).map(<[_]>::to_vec).unwrap_or_default();
    }
    if let Some(l) = &st.ledger
        && let Ok((contracts, account)) = l.query(ledger_part).await
    {
        snap.handovers = handovers(&contracts, &snap.timeline, &first_readings);
        snap.contracts = contracts;
        snap.account = Some(account);
    }
    snap
}

fn auctions<S: agora_market::Signer + Clone>(m: &agora_market::MarketState<S>) -> Vec<AuctionDash> {
    let mut list: Vec<AuctionDash> = m
        .auctions()
        .iter()
        .map(|(id, e)| {
            let mut bids: Vec<BidView> = e.bids.iter().map(|(b, bid)| bid_view(b, bid)).collect();
            bids.sort_by_key(|b| b.price);
            bids.truncate(MAX_BIDS);
            AuctionDash {
                auction: auction_view(id, e),
                bid_list: bids,
            }
        })
        .collect();
    list.sort_by(|a, b| {
        let open = |x: &AuctionDash| x.auction.status == "open";
        open(b)
            .cmp(&open(a))
            .then(b.auction.window_closes_at.cmp(&a.auction.window_closes_at))
    });
    list.truncate(MAX_AUCTIONS);
    list
}

fn ledger_part(v: &agora_ledger::LedgerView) -> (Vec<ContractDash>, AccountView) {
    let mut contracts: Vec<ContractDash> = v
        .ledger
        .contracts()
        .iter()
        .map(|(id, r)| ContractDash {
            id: id.to_string(),
            kind: format!("{:?}", r.contract.kind).to_lowercase(),
            status: format!("{:?}", r.status).to_lowercase(),
            customer: r.contract.customer.to_string(),
            provider: r.contract.provider.to_string(),
            payment: r.contract.payment,
            paid: r.paid_to_provider,
            registered_at: r.registered_at,
            armed_at: r.armed_at,
            trigger_at: r.trigger_at,
            activated_at: r.activated_at,
            closed_at: r.closed_at,
        })
        .collect();
    contracts.sort_by_key(|c| std::cmp::Reverse(c.registered_at));
    contracts.truncate(MAX_CONTRACTS);
    let a = v.ledger.account(&v.me).cloned().unwrap_or_default();
    let earnings = crate::ledger::earnings_of(v);
    let earned = earnings.iter().fold(0u64, |s, e| s.saturating_add(e.paid));
    let account = AccountView {
        balance: BalanceReply {
            account: v.me.to_string(),
            balance: a.balance,
            locked: a.locked,
            reputation: a.reputation,
            nonce: a.nonce,
        },
        earnings: earnings.into_iter().take(MAX_CONTRACTS).collect(),
        earned,
        height: v.ledger.height(),
    };
    (contracts, account)
}

/// The handovers of `contracts` (those whose handover was attested) as this node saw them:
/// detection (its own `attested-down` entry, when it is an arbitrator of the contract), the
/// committee's attestation on the ledger, activation (its own `activated` entry, else the
/// ledger's), and the first reading its radio processed for a service after the attestation.
pub fn handovers(
    contracts: &[ContractDash],
    timeline: &[TimelineEntry],
    first_readings: &[u64],
) -> Vec<HandoverView> {
    let mut out: Vec<HandoverView> = Vec::new();
    for c in contracts {
        let Some(trigger) = c.trigger_at else {
            continue;
        };
        let after_arm = c.armed_at.unwrap_or(c.registered_at);
        let mine = |phase: &str| {
            timeline
                .iter()
                .filter(|e| e.phase == phase && e.contract.as_deref() == Some(c.id.as_str()))
                .filter(|e| e.at >= after_arm)
                .map(|e| e.at)
                .min()
        };
        let mut phases = Vec::new();
        if let Some(at) = mine("attested-down").filter(|at| *at <= trigger) {
            phases.push(phase(
                "detected",
                at,
                "liveness checks: provider unreachable",
            ));
        }
        phases.push(phase(
            "attested",
            trigger,
            "handover attested by a 2f+1 quorum on the ledger",
        ));
        if let Some(at) = mine("activated").or(c.activated_at) {
            phases.push(phase("activated", at, "replacement runs the service"));
        }
        if let Some(at) = first_readings
            .iter()
            .copied()
            .filter(|t| *t >= trigger)
            .min()
        {
            phases.push(phase(
                "first reading",
                at,
                "first sensor reading processed after the handover",
            ));
        }
        phases.sort_by_key(|p| p.at);
        out.push(HandoverView {
            contract: c.id.clone(),
            phases,
        });
    }
    out.sort_by_key(|h| std::cmp::Reverse(h.phases.first().map_or(0, |p| p.at)));
    out.truncate(MAX_HANDOVERS);
    out
}

fn phase(name: &str, at: u64, detail: &str) -> HandoverPhase {
    HandoverPhase {
        phase: name.to_string(),
        at,
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(id: &str, trigger: Option<u64>) -> ContractDash {
        ContractDash {
            id: id.into(),
            kind: "service".into(),
            status: "active".into(),
            customer: "c".into(),
            provider: "p".into(),
            payment: 10,
            paid: 0,
            registered_at: 100,
            armed_at: Some(200),
            trigger_at: trigger,
            activated_at: trigger.map(|t| t + 50),
            closed_at: None,
        }
    }

    fn entry(phase: &str, contract: &str, at: u64) -> TimelineEntry {
        TimelineEntry {
            at,
            phase: phase.into(),
            contract: Some(contract.into()),
            detail: String::new(),
            latency_ms: None,
        }
    }

    #[test]
    fn a_handover_is_charted_from_detection_to_first_reading() {
        let cs = [contract("aa", Some(1_000)), contract("bb", None)];
        let tl = [
            entry("attested-down", "aa", 150), // before arming: an older episode
            entry("attested-down", "aa", 900),
            entry("activated", "aa", 1_040),
            entry("attested-down", "bb", 950),
        ];
        let h = handovers(&cs, &tl, &[500, 1_100, 1_200]);
        assert_eq!(h.len(), 1, "only the contract with an attested handover");
        let got: Vec<(&str, u64)> = h[0].phases.iter().map(|p| (&*p.phase, p.at)).collect();
        assert_eq!(
            got,
            [
                ("detected", 900),
                ("attested", 1_000),
                ("activated", 1_040),
                ("first reading", 1_100)
            ]
        );
    }

    #[test]
    fn without_own_entries_the_ledger_times_are_used() {
        let h = handovers(&[contract("aa", Some(1_000))], &[], &[]);
        let got: Vec<(&str, u64)> = h[0].phases.iter().map(|p| (&*p.phase, p.at)).collect();
        assert_eq!(got, [("attested", 1_000), ("activated", 1_050)]);
    }

    #[test]
    fn handovers_are_capped_latest_first() {
        let cs: Vec<ContractDash> = (0..10u64)
            .map(|i| contract(&format!("{i:02}"), Some(1_000 + i)))
            .collect();
        let h = handovers(&cs, &[], &[]);
        assert_eq!(h.len(), MAX_HANDOVERS);
        assert_eq!(h[0].contract, "09");
    }
}
