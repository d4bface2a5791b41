//! Handy constructors for tests in this and other crates (feature `test-utils`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};

pub use sim::{SIM_BALANCE, SimNet};

use crate::auction::{AuctionKind, AuctionRequest, AuctionSpec, Bid, BidSpec, Offer, OfferBody};
use crate::book::MarketConfig;
use crate::identity::{KeySigner, Signer, Timestamp};
use crate::resources::{Interface, Location, Near, Resources, Uptime};
use crate::signed::Signed;

static NONCE: AtomicU64 = AtomicU64::new(1);

/// A fresh nonce (process-wide counter).
pub fn fresh_nonce() -> u64 {
    NONCE.fetch_add(1, Ordering::Relaxed)
}

/// A deterministic signer for seed `n`.
pub fn signer(n: u64) -> KeySigner {
    KeySigner::from_seed(n)
}

/// A generous provider capacity: 4 cores, 4 GiB, 100 GiB, 1 Gbps, one of each interface.
pub fn big_capacity() -> Resources {
    let mut r = Resources {
        cpu_millis: 4000,
        memory_bytes: 4 << 30,
        storage_bytes: 100 << 30,
        bandwidth_bps: 1_000_000_000,
        uptime: Some(Uptime {
            duration_ms: 30 * 24 * 3_600_000,
            min_availability_permille: 999,
        }),
        ..Resources::default()
    };
    for i in Interface::ALL {
        r = r.with_interface(i, 1);
    }
    r
}

/// A provider's book config that bids on its own (`auto_bid`) with `capacity`; every other
/// setting is the default, so a test that changes one states it beside the call.
pub fn provider_config(capacity: Resources) -> MarketConfig {
    let mut c = MarketConfig {
        capacity,
        ..MarketConfig::default()
    };
    c.dmu.provider.auto_bid = true;
    c
}

/// Builds signed auction requests with sensible defaults (region `eu-west`, 500m CPU, 256 MiB).
#[derive(Clone, Debug)]
pub struct AuctionBuilder {
    spec: AuctionSpec,
    nonce: Option<u64>,
}

impl Default for AuctionBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AuctionBuilder {
    /// Defaults: hosted, 1 h, max price 1000, 10 s window, 60 s award grace.
    pub fn new() -> Self {
        AuctionBuilder {
            spec: AuctionSpec {
                region: "eu-west".to_string(),
                resources: Resources {
                    cpu_millis: 500,
                    memory_bytes: 256 << 20,
                    ..Resources::default()
                },
                duration_ms: 3_600_000,
                max_price: 1000,
                window_ms: 10_000,
                kind: AuctionKind::Hosted,
                near: None,
                award_grace_ms: 60_000,
                service: None,
                start_at: None,
            },
            nonce: None,
        }
    }
    /// Sets the region.
    pub fn region(mut self, r: &str) -> Self {
        self.spec.region = r.to_string();
        self
    }
    /// Sets the resources needed.
    pub fn resources(mut self, r: Resources) -> Self {
        self.spec.resources = r;
        self
    }
    /// Sets the duration.
    pub fn duration_ms(mut self, d: u64) -> Self {
        self.spec.duration_ms = d;
        self
    }
    /// Sets the max price.
    pub fn max_price(mut self, p: u64) -> Self {
        self.spec.max_price = p;
        self
    }
    /// Sets the window length.
    pub fn window_ms(mut self, w: u64) -> Self {
        self.spec.window_ms = w;
        self
    }
    /// Sets the kind.
    pub fn kind(mut self, k: AuctionKind) -> Self {
        self.spec.kind = k;
        self
    }
    /// Sets the location constraint.
    pub fn near(mut self, n: Near) -> Self {
        self.spec.near = Some(n);
        self
    }
    /// Sets the nonce (default: a fresh one).
    pub fn nonce(mut self, n: u64) -> Self {
        self.nonce = Some(n);
        self
    }
    /// The spec as configured.
    pub fn spec(&self) -> AuctionSpec {
        self.spec.clone()
    }
    /// Signs the request as opened at `now`.
    pub fn build(self, signer: &dyn Signer, now: Timestamp) -> AuctionRequest {
        let nonce = self.nonce.unwrap_or_else(fresh_nonce);
        self.spec
            .create(signer, now, nonce)
            .expect("builder signs with its own author")
    }
}

/// Builds signed bids on an auction (default price 100, `big_capacity`, reputation 500).
#[derive(Clone, Debug)]
pub struct BidBuilder {
    auction: AuctionRequest,
    spec: BidSpec,
    nonce: Option<u64>,
}

impl BidBuilder {
    /// A bid on `auction`.
    pub fn new(auction: &AuctionRequest) -> Self {
        BidBuilder {
            auction: auction.clone(),
            spec: BidSpec {
                price: 100,
                capacity: big_capacity(),
                location: None,
                reputation_permille: 500,
            },
            nonce: None,
        }
    }
    /// Sets the price.
    pub fn price(mut self, p: u64) -> Self {
        self.spec.price = p;
        self
    }
    /// Sets the advertised capacity.
    pub fn capacity(mut self, c: Resources) -> Self {
        self.spec.capacity = c;
        self
    }
    /// Sets the location.
    pub fn location(mut self, l: Location) -> Self {
        self.spec.location = Some(l);
        self
    }
    /// Sets the reputation claim.
    pub fn reputation(mut self, r: u16) -> Self {
        self.spec.reputation_permille = r;
        self
    }
    /// Sets the nonce.
    pub fn nonce(mut self, n: u64) -> Self {
        self.nonce = Some(n);
        self
    }
    /// Signs the bid.
    pub fn build(self, signer: &dyn Signer) -> Bid {
        let nonce = self.nonce.unwrap_or_else(fresh_nonce);
        self.spec
            .create(&self.auction, signer, nonce)
            .expect("builder signs with its own author")
    }
}

/// A signed standing offer in `region` at `price_per_hour`, valid for an hour from `now`.
pub fn offer(
    signer: &dyn Signer,
    region: &str,
    resources: Resources,
    price_per_hour: u64,
    now: Timestamp,
) -> Offer {
    let body = OfferBody {
        provider: signer.node_id(),
        region: region.to_string(),
        resources,
        price_per_hour,
        location: None,
        nonce: fresh_nonce(),
        expires_at: now + 3_600_000,
    };
    Signed::sign(body, signer).expect("signs with its own author")
}

/// A signed award by `customer` of a (fictional) bid to `provider` at `price`, expiring at `expires_at`.
pub fn award(
    customer: &dyn Signer,
    provider: crate::identity::NodeId,
    price: u64,
    expires_at: Timestamp,
) -> crate::auction::Award {
    use crate::auction::{AwardBody, AwardSubject};
    use crate::ids::{AuctionId, BidId};
    let body = AwardBody {
        customer: customer.node_id(),
        provider,
        subject: AwardSubject::Bid {
            auction: AuctionId::of_bytes(b"test auction"),
            bid: BidId::of_bytes(b"test bid"),
        },
        price,
        resources: Resources {
            cpu_millis: 500,
            ..Resources::default()
        },
        duration_ms: 3_600_000,
        kind: AuctionKind::Hosted,
        nonce: fresh_nonce(),
        expires_at,
    };
    Signed::sign(body, customer).expect("signs with its own author")
}
