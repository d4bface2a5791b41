//! Decision making unit: the rules by which a node bids, awards and negotiates on its own.
//!
//! The config types are serde with `#[serde(default)]` so the node can embed them in its TOML.
//! Prices are computed in milli-tokens per unit-hour and rounded up to whole tokens.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::auction::{AuctionBody, AuctionKind, BidSpec};
use crate::capacity::CapacityLedger;
use crate::resources::Location;
use crate::score::ScoreWeights;

/// Milliseconds in an hour.
const HOUR_MS: u128 = 3_600_000;

/// Provider-side rules: when to bid and at what price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderRules {
    /// Bid automatically on auctions that fit.
    pub auto_bid: bool,
    /// Accept awards for our own bids without countering.
    pub auto_accept_award: bool,
    /// Accept a customer's counter-offer automatically when it does not lower our price.
    pub accept_counter_not_below_bid: bool,
    /// Auction kinds we serve.
    pub kinds: BTreeSet<AuctionKind>,
    /// Lowest total price we ever ask, tokens.
    pub floor_price: u64,
    /// Milli-tokens per millicore-hour.
    pub per_millicore_hour: u64,
    /// Milli-tokens per MiB-hour of memory.
    pub per_mib_hour: u64,
    /// Milli-tokens per GiB-hour of storage.
    pub per_gib_storage_hour: u64,
    /// Milli-tokens per Mbps-hour of bandwidth.
    pub per_mbps_hour: u64,
    /// Milli-tokens per interface-hour (each exclusive radio/port).
    pub per_interface_hour: u64,
    /// Discount for standby contracts in permille (500 = half price).
    pub standby_discount_permille: u16,
    /// Our location, needed to bid on located auctions.
    pub location: Option<Location>,
    /// Reputation we claim in bids (permille); the node should set it from the ledger.
    pub reputation_permille: u16,
    /// How long after an auction's window closes our bid keeps its capacity held while no award
    /// names us, ms (the award grace). The hold also ends at the auction's expiry if sooner; the
    /// bid is then forgotten and an award that comes later is refused (THREATS C30).
    pub hold_grace_ms: u64,
    /// Auto-bid only on auctions whose window closes within this many ms: a bid holds capacity
    /// until the window closes, so a week-long window would hold it for a week.
    pub max_bid_window_ms: u64,
    /// Most tentative holds (open auto-bids) kept for one customer at a time; for a customer
    /// not known to be able to pay, its awarded holds not yet registered count too (THREATS
    /// C31).
    pub max_holds_per_customer: usize,
    /// Auto-bid only on pre-contracted slots starting within this many ms: the winner's
    /// capacity is held from the award until the slot ends, and the price pays for the term,
    /// not the wait (THREATS C34). The market refuses slots beyond `max_slot_lead_ms` of its
    /// limits (a day) whatever this says.
    pub max_slot_lead_ms: u64,
    /// Most holds not paid for yet (open bids, and awards whose contract is not registered)
    /// kept for one customer known to pay for them all: a deployer placing several replicas
    /// here at once gets them, while a key with a large balance still cannot hold everything
    /// for nothing (its balance is not locked until a contract is registered; THREATS C31).
    pub max_holds_per_funded_customer: usize,
    /// Share of our capacity, permille of each dimension (rounded down), that all customers
    /// not known to be able to pay share for their holds, open bids and awards not yet
    /// registered alike: keys are free, so a cap per key alone bounds nothing (THREATS C31).
    /// A customer is known to pay once the node fed its ledger balance
    /// ([`crate::Input::Balances`]) and it covers the quote and the customer stake.
    pub stranger_share_permille: u16,
    /// Most holds not paid for yet that all customers not known to pay keep here together:
    /// their share of the capacity alone does not bound how many tiny holds (a byte each)
    /// they keep, each a bid record and a place in the tables of agreements.
    pub max_stranger_holds: usize,
    /// The least customer stake this node asks as provider, permille of the price: what a
    /// customer's balance must cover beside the price. Keep it at `[deals.provider]
    /// min_customer_stake_permille`.
    pub customer_stake_permille: u64,
}

impl Default for ProviderRules {
    fn default() -> Self {
        ProviderRules {
            auto_bid: false,
            auto_accept_award: true,
            accept_counter_not_below_bid: true,
            kinds: [
                AuctionKind::Hosted,
                AuctionKind::Standby,
                AuctionKind::Storage,
            ]
            .into_iter()
            .collect(),
            floor_price: 1,
            per_millicore_hour: 10,
            per_mib_hour: 2,
            per_gib_storage_hour: 50,
            per_mbps_hour: 20,
            per_interface_hour: 1_000,
            standby_discount_permille: 500,
            location: None,
            reputation_permille: 500,
            hold_grace_ms: 120_000,
            max_bid_window_ms: 600_000,
            max_holds_per_customer: 2,
            max_slot_lead_ms: 3_600_000,
            max_holds_per_funded_customer: 8,
            stranger_share_permille: 250,
            max_stranger_holds: 64,
            customer_stake_permille: 50,
        }
    }
}

/// Customer-side rules: how to pick and whether to award on our own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CustomerRules {
    /// Award the best-scoring bid automatically when the window closes.
    pub auto_award: bool,
    /// Score weights for winner selection.
    pub weights: ScoreWeights,
    /// Accept a provider's counter-offer automatically when it is within the auction's max price
    /// (for a taken offer: not above the award price). A counter above it is the provider's
    /// refusal: with `auto_award` and another bid to award, we walk away at once and award that
    /// bid; else the counter waits for an answer by hand. Refused, or left to lapse, on an
    /// auction's first award it ranks the provider last on our auctions for an hour (THREATS
    /// C32).
    pub accept_counter_within_max: bool,
    /// The provider stake this node asks as customer, permille of the price: a bidder whose
    /// ledger balance covers it at the auction's maximum price wins first, then one whose
    /// balance covers it at its own price, then one whose balance is unknown, then the rest
    /// (THREATS C32). Keep it at `[deals.customer] provider_stake_permille`.
    pub provider_stake_permille: u64,
}

impl Default for CustomerRules {
    fn default() -> Self {
        CustomerRules {
            auto_award: true,
            weights: ScoreWeights::default(),
            accept_counter_within_max: true,
            provider_stake_permille: 500,
        }
    }
}

/// Negotiation bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NegotiationRules {
    /// Maximum number of counter-offers after the award.
    pub max_rounds: u32,
    /// Time from award to agreement before the deal lapses, ms. Our awards of bids have at
    /// most a quarter of `provider.hold_grace_ms` (at least 10 s) when a next bid would be
    /// awarded on their lapse, and lapse 10 s before the losers' holds end (`hold_grace_ms`
    /// after the window's close, or the auction's expiry if sooner), so that it is awarded
    /// while the losers still keep their bids (THREATS C32); awards made by hand, or with no
    /// other bid that could win in that time, have all of it.
    pub timeout_ms: u64,
}

impl Default for NegotiationRules {
    fn default() -> Self {
        NegotiationRules {
            max_rounds: 3,
            timeout_ms: 60_000,
        }
    }
}

/// All decision rules (the `[market.dmu]` section of the node config).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DmuConfig {
    /// Provider rules.
    pub provider: ProviderRules,
    /// Customer rules.
    pub customer: CustomerRules,
    /// Negotiation rules.
    pub negotiation: NegotiationRules,
}

impl ProviderRules {
    /// Total price by the price rules for `auction`, in tokens, before floor and cap.
    pub fn computed_price(&self, auction: &AuctionBody) -> u64 {
        let r = &auction.resources;
        let mib = u128::from(r.memory_bytes).div_ceil(1 << 20);
        let gib = u128::from(r.storage_bytes).div_ceil(1 << 30);
        let mbps = u128::from(r.bandwidth_bps).div_ceil(1_000_000);
        let ifaces: u128 = r.interfaces.values().map(|n| u128::from(*n)).sum();
        let per_hour_milli = u128::from(self.per_millicore_hour) * u128::from(r.cpu_millis)
            + u128::from(self.per_mib_hour) * mib
            + u128::from(self.per_gib_storage_hour) * gib
            + u128::from(self.per_mbps_hour) * mbps
            + u128::from(self.per_interface_hour) * ifaces;
        let mut milli = per_hour_milli.saturating_mul(u128::from(auction.duration_ms)) / HOUR_MS;
        if auction.kind == AuctionKind::Standby {
            let keep =
                1000u128.saturating_sub(u128::from(self.standby_discount_permille.min(1000)));
            milli = milli * keep / 1000;
        }
        u64::try_from(milli.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// The price we would ask: `max(floor, computed)`, or `None` if that exceeds `max_price`.
    pub fn quote(&self, auction: &AuctionBody) -> Option<u64> {
        let price = self.computed_price(auction).max(self.floor_price).max(1);
        (price <= auction.max_price).then_some(price)
    }

    /// Whether to bid on `auction` given free capacity, and with what bid.
    pub fn decide_bid(&self, auction: &AuctionBody, ledger: &CapacityLedger) -> Option<BidSpec> {
        if !self.auto_bid || !self.kinds.contains(&auction.kind) {
            return None;
        }
        if !ledger.can_reserve(&auction.resources) {
            return None;
        }
        if let Some(near) = &auction.near {
            near.admits(self.location.as_ref()?)?;
        }
        let price = self.quote(auction)?;
        Some(BidSpec {
            price,
            capacity: ledger.available().clone(),
            location: self.location,
            reputation_permille: self.reputation_permille.min(1000),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resources::{Interface, Near, Resources};
    use crate::test_utils::{AuctionBuilder, signer};

    fn rules() -> ProviderRules {
        ProviderRules {
            auto_bid: true,
            floor_price: 5,
            ..ProviderRules::default()
        }
    }

    #[test]
    fn price_follows_rules_floor_and_cap() {
        // 1000 millicores * 10 + 1 LoRa * 1000 = 11000 milli-tokens/hour; 2 h = 22 tokens.
        let res = Resources {
            cpu_millis: 1000,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1);
        let a = AuctionBuilder::new()
            .resources(res)
            .duration_ms(7_200_000)
            .max_price(100)
            .build(&signer(1), 0);
        assert_eq!(rules().computed_price(&a.body), 22);
        assert_eq!(rules().quote(&a.body), Some(22));
        let mut standby = a.body.clone();
        standby.kind = AuctionKind::Standby;
        assert_eq!(rules().computed_price(&standby), 11);
        let mut tiny = a.body.clone();
        tiny.duration_ms = 1000;
        assert_eq!(rules().quote(&tiny), Some(5), "floor applies");
        let mut cheap = a.body.clone();
        cheap.max_price = 21;
        assert_eq!(rules().quote(&cheap), None, "never above max_price");
    }

    #[test]
    fn bids_only_when_capacity_and_distance_fit() {
        let need = Resources::default().with_interface(Interface::LoRa, 1);
        let near = Near {
            center: Location {
                lat: 48.85,
                lon: 2.35,
            },
            max_km: 50.0,
        };
        let a = AuctionBuilder::new()
            .resources(need.clone())
            .near(near)
            .max_price(1000)
            .build(&signer(1), 0);
        let ledger = CapacityLedger::new(need.clone());
        let mut r = rules();
        assert!(r.decide_bid(&a.body, &ledger).is_none(), "no location");
        r.location = Some(Location {
            lat: 48.9,
            lon: 2.4,
        });
        assert!(r.decide_bid(&a.body, &ledger).is_some());
        r.location = Some(Location {
            lat: 51.5,
            lon: -0.12,
        });
        assert!(r.decide_bid(&a.body, &ledger).is_none(), "too far");
        r.location = Some(Location {
            lat: 48.9,
            lon: 2.4,
        });
        let empty = CapacityLedger::new(Resources::default().with_interface(Interface::Ble, 1));
        assert!(r.decide_bid(&a.body, &empty).is_none(), "no radio");
        r.auto_bid = false;
        assert!(r.decide_bid(&a.body, &ledger).is_none());
    }
}
