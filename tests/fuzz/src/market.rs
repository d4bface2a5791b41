//! Turns fuzzer-chosen operations into validly signed market messages, so a target reaches the
//! book's validation, bounds and capacity logic instead of stopping at signature checks.

use agora_market::auction::{AuctionKind, AuctionSpec, AwardBody, AwardSubject, BidSpec};
use agora_market::identity::{KeySigner, Signer};
use agora_market::resources::{Interface, Location, Near, Resources};
use agora_market::signed::Signed;
use agora_market::{AuctionRequest, Bid, MarketMessage, Offer, OfferBody, Timestamp};
use arbitrary::Arbitrary;

/// Signer for fuzzer-chosen party `n` (a handful of parties, so quotas and replays happen).
pub fn party(n: u8) -> KeySigner {
    KeySigner::from_seed(1 + u64::from(n % 6))
}

/// Resources from a few fuzzer numbers (sometimes absurd, sometimes empty).
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct ResSpec {
    /// Millicores.
    pub cpu: u16,
    /// Memory (bytes, scaled by 1 MiB).
    pub mem_mib: u16,
    /// LoRa radios wanted.
    pub lora: u8,
    /// Use this raw value instead (absurd values on purpose).
    pub raw_cpu: Option<u64>,
}

impl ResSpec {
    /// The resources described.
    pub fn resources(&self) -> Resources {
        let r = Resources {
            cpu_millis: self.raw_cpu.unwrap_or(u64::from(self.cpu)),
            memory_bytes: u64::from(self.mem_mib) << 20,
            ..Resources::default()
        };
        r.with_interface(Interface::LoRa, u32::from(self.lora % 3))
    }
}

/// One step of a market scenario.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// Party `customer` gossips an auction.
    Auction {
        /// Author.
        customer: u8,
        /// Resources wanted.
        res: ResSpec,
        /// Window length, ms.
        window: u32,
        /// Award grace, ms.
        grace: u32,
        /// Max price.
        max_price: u32,
        /// Near constraint (lat, lon, km).
        near: Option<(f64, f64, f64)>,
        /// Standby rather than hosted.
        standby: bool,
        /// Nonce.
        nonce: u16,
    },
    /// Party `provider` bids on the `auction`-th auction the node knows.
    Bid {
        /// Author.
        provider: u8,
        /// Which known auction.
        auction: u8,
        /// Price.
        price: u32,
        /// Advertised capacity.
        capacity: ResSpec,
        /// Location.
        location: Option<(f64, f64)>,
        /// Nonce.
        nonce: u16,
    },
    /// Party `provider` gossips a standing offer.
    Offer {
        /// Author.
        provider: u8,
        /// Resources.
        res: ResSpec,
        /// Price per hour.
        price: u32,
        /// Lifetime, ms.
        ttl: u32,
        /// Nonce.
        nonce: u16,
    },
    /// The customer of the `auction`-th known auction awards it to `provider` (our node's own
    /// bid when `ours`).
    Award {
        /// Which known auction.
        auction: u8,
        /// Award our bid, if we made one.
        ours: bool,
        /// Otherwise this party.
        provider: u8,
        /// Price.
        price: u32,
        /// Expiry, ms from now.
        expires_in: u32,
        /// Nonce.
        nonce: u16,
    },
    /// The node opens an auction of its own.
    Create {
        /// Resources.
        res: ResSpec,
        /// Window, ms.
        window: u16,
    },
    /// Time passes, then a tick.
    Wait(u32),
    /// Raw bytes from a peer.
    Bytes(Vec<u8>),
}

fn near((lat, lon, km): (f64, f64, f64)) -> Near {
    Near {
        center: Location { lat, lon },
        max_km: km,
    }
}

/// A signed auction by `customer` opened at `now`.
#[allow(clippy::too_many_arguments)]
pub fn auction(
    customer: u8,
    res: &ResSpec,
    window: u32,
    grace: u32,
    max_price: u32,
    near_spec: Option<(f64, f64, f64)>,
    standby: bool,
    nonce: u16,
    now: Timestamp,
) -> Option<AuctionRequest> {
    let spec = AuctionSpec {
        region: "eu-west".into(),
        resources: res.resources(),
        duration_ms: 3_600_000,
        max_price: u64::from(max_price),
        window_ms: u64::from(window),
        kind: if standby {
            AuctionKind::Standby
        } else {
            AuctionKind::Hosted
        },
        near: near_spec.map(near),
        award_grace_ms: u64::from(grace),
        service: None,
        start_at: None,
    };
    spec.create(&party(customer), now, u64::from(nonce)).ok()
}

/// A signed bid by `provider` on `req`.
pub fn bid(
    provider: u8,
    req: &AuctionRequest,
    price: u32,
    capacity: &ResSpec,
    location: Option<(f64, f64)>,
    nonce: u16,
) -> Option<Bid> {
    BidSpec {
        price: u64::from(price),
        capacity: capacity.resources(),
        location: location.map(|(lat, lon)| Location { lat, lon }),
        reputation_permille: 500,
    }
    .create(req, &party(provider), u64::from(nonce))
    .ok()
}

/// A signed standing offer by `provider`.
pub fn offer(
    provider: u8,
    res: &ResSpec,
    price: u32,
    ttl: u32,
    nonce: u16,
    now: Timestamp,
) -> Option<Offer> {
    let signer = party(provider);
    let body = OfferBody {
        provider: signer.node_id(),
        region: "eu-west".into(),
        resources: res.resources(),
        price_per_hour: u64::from(price),
        location: None,
        nonce: u64::from(nonce),
        expires_at: now.saturating_add(u64::from(ttl)),
    };
    Signed::sign(body, &signer).ok()
}

/// A signed award of `bid` on `req` by the auction's customer (`signer`).
pub fn award(
    signer: &KeySigner,
    req: &AuctionRequest,
    bid: &Bid,
    price: u64,
    expires_at: Timestamp,
    nonce: u16,
) -> Option<MarketMessage> {
    let body = AwardBody {
        customer: signer.node_id(),
        provider: bid.body.provider,
        subject: AwardSubject::Bid {
            auction: req.id().ok()?,
            bid: bid.id().ok()?,
        },
        price,
        resources: req.body.resources.clone(),
        duration_ms: req.body.duration_ms,
        kind: req.body.kind,
        nonce: u64::from(nonce),
        expires_at,
    };
    Signed::sign(body, signer).ok().map(MarketMessage::Award)
}
