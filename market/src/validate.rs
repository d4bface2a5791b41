//! Validation on receipt: signatures, replay, expiry and self-contradiction.
//!
//! Everything from the network passes through these checks before it reaches the book.

mod replay;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use replay::ReplayGuard;

use crate::auction::{AuctionBody, AuctionRequest, Bid, Offer};
use crate::error::MarketError;
use crate::identity::Timestamp;
use crate::ids::{AuctionId, BidId, OfferId};
use crate::resources::Resources;

/// How far ahead of our clock an auction's `created_at` may lie. An honest auction is signed
/// before it is sent, and gossip from a clock more than this far ahead is dropped as
/// future-dated anyway (`agora_wire::GOSSIP_MAX_SKEW_MS`, THREATS N1, which this crate cannot
/// name): the same ±30 s.
pub const MAX_CREATED_AHEAD_MS: u64 = 30_000;

/// Default [`Limits::max_slot_lead_ms`]: a day. A slot holds its winner's capacity from the
/// award until it ends, and the price pays for the term, not the wait (THREATS C34).
pub const DEFAULT_MAX_SLOT_LEAD_MS: u64 = 24 * 3_600_000;

/// Sanity bounds for incoming messages (part of `MarketConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Regions this node accepts; empty accepts any non-empty name.
    pub regions: BTreeSet<String>,
    /// Longest accepted lifetime (expires_at - now) of a message, ms.
    pub max_ttl_ms: u64,
    /// Longest accepted service duration, ms.
    pub max_duration_ms: u64,
    /// Furthest a pre-contracted slot (`start_at`) may start ahead of our clock, ms. Keep it
    /// above 30 s ([`MAX_CREATED_AHEAD_MS`]): a node's own slot auction starts at least that
    /// much short of it, for the clocks of the nodes that relay it, so with 30 s or less the
    /// node opens none (refused with a hint saying so); others' are judged by it as ever.
    pub max_slot_lead_ms: u64,
    /// Largest accepted CPU request, millicores.
    pub max_cpu_millis: u64,
    /// Largest accepted memory/storage request, bytes.
    pub max_bytes: u64,
    /// Largest accepted price, tokens.
    pub max_price: u64,
    /// Nonces remembered per author (older nonces are rejected as replays).
    pub replay_window: usize,
    /// Most bids held per auction (protects the customer's memory from bid floods).
    pub max_bids_per_auction: usize,
    /// Most bids held over all of this node's auctions.
    pub max_bids: usize,
    /// Most auctions held from one customer; more are refused.
    pub max_auctions_per_customer: usize,
    /// Most auctions held in all; beyond it one gives way (see `book::bounds`) or the new one is
    /// refused.
    pub max_auctions: usize,
    /// Most standing offers held from one provider; more are refused.
    pub max_offers_per_provider: usize,
    /// Most standing offers held in all, evicted like auctions.
    pub max_offers: usize,
    /// Most nonces the replay guard remembers in all; beyond it the soonest to expire is dropped.
    pub max_replay_nonces: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            regions: BTreeSet::new(),
            max_ttl_ms: 7 * 24 * 3_600_000,
            max_duration_ms: 365 * 24 * 3_600_000,
            max_slot_lead_ms: DEFAULT_MAX_SLOT_LEAD_MS,
            max_cpu_millis: 1_024_000,
            max_bytes: 1 << 50,
            max_price: 1 << 48,
            replay_window: 1024,
            max_bids_per_auction: 4096,
            max_bids: 16_384,
            max_auctions_per_customer: 32,
            max_auctions: 4096,
            max_offers_per_provider: 16,
            max_offers: 4096,
            max_replay_nonces: 65_536,
        }
    }
}

fn absurd(
    kind: &'static str,
    id: String,
    field: &'static str,
    value: impl ToString,
    hint: &'static str,
) -> MarketError {
    MarketError::Absurd {
        kind,
        id,
        field,
        value: value.to_string(),
        hint,
    }
}

fn check_region(limits: &Limits, region: &str) -> Result<(), MarketError> {
    let known = if limits.regions.is_empty() {
        !region.is_empty() && region.len() <= 64
    } else {
        limits.regions.contains(region)
    };
    if known {
        Ok(())
    } else {
        Err(MarketError::UnknownRegion {
            region: region.to_string(),
        })
    }
}

fn check_expiry(
    kind: &'static str,
    id: String,
    expires_at: Timestamp,
    now: Timestamp,
    limits: &Limits,
) -> Result<(), MarketError> {
    if expires_at <= now {
        return Err(MarketError::Expired {
            kind,
            id,
            expires_at,
            now,
        });
    }
    if expires_at - now > limits.max_ttl_ms {
        return Err(absurd(
            kind,
            id,
            "expires_at",
            expires_at,
            "expiry is further ahead than market.limits.max_ttl_ms",
        ));
    }
    Ok(())
}

fn check_resources(
    kind: &'static str,
    id: &str,
    r: &Resources,
    limits: &Limits,
) -> Result<(), MarketError> {
    if r.is_empty() {
        return Err(absurd(
            kind,
            id.to_string(),
            "resources",
            "nothing",
            "request at least one resource",
        ));
    }
    if r.cpu_millis > limits.max_cpu_millis {
        return Err(absurd(
            kind,
            id.to_string(),
            "cpu_millis",
            r.cpu_millis,
            "above market.limits.max_cpu_millis",
        ));
    }
    if r.memory_bytes > limits.max_bytes || r.storage_bytes > limits.max_bytes {
        return Err(absurd(
            kind,
            id.to_string(),
            "bytes",
            r.memory_bytes.max(r.storage_bytes),
            "above market.limits.max_bytes",
        ));
    }
    if let Some(u) = r.uptime
        && u.min_availability_permille > 1000
    {
        return Err(absurd(
            kind,
            id.to_string(),
            "uptime",
            u.min_availability_permille,
            "availability is permille, 0..=1000",
        ));
    }
    Ok(())
}

/// Checks that an auction was created at most [`MAX_CREATED_AHEAD_MS`] ahead of our clock and
/// lives at most `max_ttl_ms` from its creation, as its creator's own check required: one
/// relayed late (in a snapshot, days after) passes while it lives, and nothing reads
/// `created_at` as a clock (THREATS C34).
fn check_created_at(
    id: &str,
    b: &AuctionBody,
    now: Timestamp,
    limits: &Limits,
) -> Result<(), MarketError> {
    let hint = if b.created_at > now.saturating_add(MAX_CREATED_AHEAD_MS) {
        "created more than 30 s ahead of this node's clock; check the customer's clock"
    } else if b.expires_at.saturating_sub(b.created_at) > limits.max_ttl_ms {
        "created longer before its expiry than market.limits.max_ttl_ms"
    } else {
        return Ok(());
    };
    Err(absurd(
        "auction",
        id.to_string(),
        "created_at",
        b.created_at,
        hint,
    ))
}

/// Checks an auction request's signature and content; returns its id. No replay check.
pub fn check_auction(
    req: &AuctionRequest,
    now: Timestamp,
    limits: &Limits,
) -> Result<AuctionId, MarketError> {
    let id = req.verify()?;
    let b = &req.body;
    let ids = id.to_string();
    check_region(limits, &b.region)?;
    if let Some(service) = &b.service
        && (service.is_empty() || service.len() > 128 || !service.is_ascii())
    {
        return Err(absurd(
            "auction",
            ids,
            "service",
            service.len(),
            "the service image must be a CID string of at most 128 ASCII characters",
        ));
    }
    check_expiry("auction", ids.clone(), b.expires_at, now, limits)?;
    if b.window_closes_at <= now {
        return Err(MarketError::WindowClosed {
            auction: id,
            closed_at: b.window_closes_at,
            now,
        });
    }
    if b.window_closes_at > b.expires_at {
        return Err(absurd(
            "auction",
            ids,
            "window_closes_at",
            b.window_closes_at,
            "window must close before the request expires",
        ));
    }
    // A pre-contracted slot starts after bidding closes (one that began before the award
    // would be due before its contract exists) and within `max_slot_lead_ms` of our clock,
    // not of the auction's own `created_at`, which its customer signs as it likes (a slot far
    // ahead holds the winner's capacity and stake until it ends; THREATS C7, C34).
    if let Some(start_at) = b.start_at
        && (start_at < b.window_closes_at || start_at > now.saturating_add(limits.max_slot_lead_ms))
    {
        return Err(absurd(
            "auction",
            ids,
            "start_at",
            start_at,
            "a slot starts after the bidding window closes and within market.limits.max_slot_lead_ms of now",
        ));
    }
    check_created_at(&ids, b, now, limits)?;
    check_resources("auction", &ids, &b.resources, limits)?;
    if b.duration_ms == 0 || b.duration_ms > limits.max_duration_ms {
        return Err(absurd(
            "auction",
            ids,
            "duration_ms",
            b.duration_ms,
            "1 ms ..= market.limits.max_duration_ms",
        ));
    }
    if b.max_price == 0 || b.max_price > limits.max_price {
        return Err(absurd(
            "auction",
            ids,
            "max_price",
            b.max_price,
            "1 ..= market.limits.max_price tokens",
        ));
    }
    if b.only.len() > crate::auction::MAX_AUCTION_ONLY {
        return Err(absurd(
            "auction",
            ids,
            "only",
            b.only.len(),
            "an auction names at most 64 providers it is restricted to",
        ));
    }
    if let Some(near) = &b.near
        && !near.is_valid()
    {
        return Err(absurd(
            "auction",
            ids,
            "near",
            format!("{near:?}"),
            "lat -90..90, lon -180..180, 0 < km <= 20100",
        ));
    }
    Ok(id)
}

/// Checks that `bid` could satisfy `auction` (price, capacity, distance); no signature check.
pub fn check_bid_constraints(
    auction: &AuctionRequest,
    auction_id: AuctionId,
    bid: &Bid,
    bid_id: BidId,
) -> Result<(), MarketError> {
    let (a, b) = (&auction.body, &bid.body);
    if b.auction != auction_id {
        return Err(MarketError::UnknownAuction { auction: b.auction });
    }
    if b.provider == a.customer {
        return Err(MarketError::SelfBid {
            auction: auction_id,
            provider: b.provider,
        });
    }
    // Nobody else can win an auction open only to some providers, so nobody else's bid is
    // kept: 4,096 junk bids on a fleet placement's auction left its target's own bid refused
    // `BookFull` (THREATS C32).
    if !a.only.is_empty() && !a.only.contains(&b.provider) {
        return Err(MarketError::NotChosen {
            auction: auction_id,
            provider: b.provider,
        });
    }
    if b.price == 0 {
        return Err(absurd(
            "bid",
            bid_id.to_string(),
            "price",
            0,
            "price must be at least 1 token",
        ));
    }
    if b.price > a.max_price {
        return Err(MarketError::PriceAboveMax {
            auction: auction_id,
            bid: bid_id,
            price: b.price,
            max_price: a.max_price,
        });
    }
    if b.reputation_permille > 1000 {
        return Err(absurd(
            "bid",
            bid_id.to_string(),
            "reputation_permille",
            b.reputation_permille,
            "0..=1000",
        ));
    }
    if !a.resources.fits_in(&b.capacity) {
        return Err(MarketError::ExceedsCapacity {
            auction: auction_id,
            bid: bid_id,
            provider: b.provider,
        });
    }
    if let Some(near) = &a.near {
        let reason = match &b.location {
            None => Some("bid has no location".to_string()),
            Some(loc) if !loc.is_valid() => Some("bid location is not a valid lat/lon".to_string()),
            Some(loc) => match near.admits(loc) {
                Some(_) => None,
                None => Some(format!(
                    "{:.1} km away, limit {} km",
                    near.center.distance_km(loc),
                    near.max_km
                )),
            },
        };
        if let Some(reason) = reason {
            return Err(MarketError::OutOfRange {
                auction: auction_id,
                bid: bid_id,
                reason,
            });
        }
    }
    Ok(())
}

/// Checks a bid's signature, expiry, window and constraints against its auction; returns its id.
pub fn check_bid(
    bid: &Bid,
    auction: &AuctionRequest,
    auction_id: AuctionId,
    now: Timestamp,
    limits: &Limits,
) -> Result<BidId, MarketError> {
    let id = bid.verify()?;
    check_expiry("bid", id.to_string(), bid.body.expires_at, now, limits)?;
    if auction.body.window_closes_at <= now {
        return Err(MarketError::WindowClosed {
            auction: auction_id,
            closed_at: auction.body.window_closes_at,
            now,
        });
    }
    check_bid_constraints(auction, auction_id, bid, id)?;
    Ok(id)
}

/// Checks a standing offer's signature and content; returns its id.
pub fn check_offer(offer: &Offer, now: Timestamp, limits: &Limits) -> Result<OfferId, MarketError> {
    let id = offer.verify()?;
    let b = &offer.body;
    check_region(limits, &b.region)?;
    check_expiry("offer", id.to_string(), b.expires_at, now, limits)?;
    check_resources("offer", &id.to_string(), &b.resources, limits)?;
    if b.price_per_hour == 0 || b.price_per_hour > limits.max_price {
        return Err(absurd(
            "offer",
            id.to_string(),
            "price_per_hour",
            b.price_per_hour,
            "1 ..= market.limits.max_price tokens",
        ));
    }
    if let Some(loc) = &b.location
        && !loc.is_valid()
    {
        return Err(absurd(
            "offer",
            id.to_string(),
            "location",
            format!("{loc:?}"),
            "lat -90..90, lon -180..180",
        ));
    }
    Ok(id)
}

#[cfg(test)]
#[path = "validate/tests.rs"]
mod tests;
