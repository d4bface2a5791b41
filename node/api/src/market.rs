//! Control API routes of the market: auctions, bids, offers and the event log.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use agora_market::{
    AuctionId, AuctionKind, AuctionSpec, AuctionStatus, AwardId, BidSpec, Effect, Input,
    MarketMessage, NegotiationInput, OfferId, OfferSpec,
};

use super::{ApiError, ApiState, authorize};
use agora_market_driver::MarketEventRecord;

/// An auction as listed by `agora auctions`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuctionView {
    /// Id (hex).
    pub id: String,
    /// Customer node id.
    pub customer: String,
    /// Region.
    pub region: String,
    /// Kind.
    pub kind: AuctionKind,
    /// Maximum price.
    pub max_price: u64,
    /// Duration, ms.
    pub duration_ms: u64,
    /// When bidding closes (ms).
    pub window_closes_at: u64,
    /// `open`, `closed` or `awarded`.
    pub status: String,
    /// Winner (provider) once awarded.
    pub provider: Option<String>,
    /// Bids known to this node.
    pub bids: usize,
}

/// A bid as listed by `agora bids`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BidView {
    /// Id (hex).
    pub id: String,
    /// Provider node id.
    pub provider: String,
    /// Price.
    pub price: u64,
    /// Claimed reputation, permille.
    pub reputation_permille: u16,
}

/// `POST /v1/market/auctions/{id}/bids` body; the node fills in its capacity and location.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BidRequest {
    /// Total price.
    pub price: u64,
}

/// Reply naming what was created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CreatedReply {
    /// Id of the auction, bid or offer (hex).
    pub id: String,
}

/// `POST /v1/market/awards/{id}/negotiate` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum NegotiateRequest {
    /// Propose a new total price.
    Counter {
        /// The price.
        price: u64,
    },
    /// Accept the counterparty's latest proposal.
    Accept,
    /// End the negotiation without a deal.
    WalkAway,
}

/// `POST /v1/market/offers/{id}/take` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TakeOfferRequest {
    /// Rental duration, ms.
    pub duration_ms: u64,
}

/// `?after=N` for the event log.
#[derive(Clone, Debug, Deserialize)]
pub struct EventsQuery {
    /// Only events with a larger sequence number.
    pub after: Option<u64>,
}

fn market(s: &ApiState) -> Result<&agora_market_driver::MarketHandle, ApiError> {
    s.market.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs no market".into(),
        )
    })
}

/// Parses an id from the URL, or a 400 naming the command that lists valid ones.
fn parse_id<T: std::str::FromStr>(id: &str, what: &str, listed_by: &str) -> Result<T, ApiError> {
    id.parse().map_err(|_| {
        let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("'{id}' is not {article} {what} id (see `{listed_by}`)"),
        )
    })
}

/// The market's refusal of a local input, as a 400 with its reason.
fn refused(effects: &[Effect]) -> Result<(), ApiError> {
    for e in effects {
        if let Effect::Rejected { error, .. } = e {
            return Err(ApiError(StatusCode::BAD_REQUEST, error.to_string()));
        }
    }
    Ok(())
}

/// Turns the effects of a local input into the created id, or the rejection.
fn created(effects: &[Effect]) -> Result<Json<CreatedReply>, ApiError> {
    refused(effects)?;
    for e in effects {
        let id = match e {
            Effect::Broadcast {
                msg: MarketMessage::Auction(a),
                ..
            } => a.id().ok().map(|i| i.to_string()),
            Effect::Broadcast {
                msg: MarketMessage::Offer(o),
                ..
            } => o.id().ok().map(|i| i.to_string()),
            Effect::Send {
                msg: MarketMessage::Bid(b),
                ..
            } => b.id().ok().map(|i| i.to_string()),
            _ => None,
        };
        if let Some(id) = id {
            return Ok(Json(CreatedReply { id }));
        }
    }
    Err(ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the market produced nothing".into(),
    ))
}

async fn create_auction(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(spec): Json<AuctionSpec>,
) -> Result<Json<CreatedReply>, ApiError> {
    authorize(&s, &headers)?;
    if spec.kind == agora_market::AuctionKind::Storage {
        if spec.resources.storage_bytes == 0 {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "a storage auction buys storage: pass --storage SIZE (at least the file's size)"
                    .into(),
            ));
        }
        storage_subject(&s, spec.service.as_deref()).await?;
    }
    let effects = market(&s)?.input(Input::CreateAuction(spec)).await?;
    created(&effects)
}

/// A storage auction must name a file this node holds: the contract commits to its chunks.
async fn storage_subject(s: &ApiState, service: Option<&str>) -> Result<(), ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let cid = service
        .ok_or_else(|| {
            bad("a storage auction names the file to keep: pass --service CID (from `agora storage add`)".into())
        })?
        .parse::<cid::Cid>()
        .map_err(|e| bad(format!("--service is not a CID: {e}")))?;
    let storage = s
        .storage
        .as_ref()
        .ok_or_else(|| bad("this node runs no block storage".into()))?;
    let pins = storage.ls().await.map_err(|e| bad(e.to_string()))?.pins;
    if !pins.contains(&cid.to_string()) {
        return Err(bad(format!(
            "{cid} is not pinned on this node; add the file first (`agora storage add FILE`)"
        )));
    }
    Ok(())
}

async fn list_auctions(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<AuctionView>>, ApiError> {
    authorize(&s, &headers)?;
    let views = market(&s)?
        .query(|m| {
            m.auctions()
                .iter()
                .map(|(id, e)| auction_view(id, e))
                .collect()
        })
        .await?;
    Ok(Json(views))
}

/// The listed form of one auction of the book.
pub(crate) fn auction_view(id: &AuctionId, e: &agora_market::AuctionEntry) -> AuctionView {
    let b = &e.request.body;
    let (status, provider) = match &e.status {
        AuctionStatus::Open => ("open", None),
        AuctionStatus::Closed { .. } => ("closed", None),
        AuctionStatus::Awarded { provider, .. } => ("awarded", Some(provider.to_string())),
    };
    AuctionView {
        id: id.to_string(),
        customer: b.customer.to_string(),
        region: b.region.clone(),
        kind: b.kind,
        max_price: b.max_price,
        duration_ms: b.duration_ms,
        window_closes_at: b.window_closes_at,
        status: status.into(),
        provider,
        bids: e.bids.len(),
    }
}

/// The listed form of one bid.
pub(crate) fn bid_view(id: &agora_market::BidId, b: &agora_market::Bid) -> BidView {
    BidView {
        id: id.to_string(),
        provider: b.body.provider.to_string(),
        price: b.body.price,
        reputation_permille: b.body.reputation_permille,
    }
}

async fn submit_bid(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<BidRequest>,
) -> Result<Json<CreatedReply>, ApiError> {
    authorize(&s, &headers)?;
    let auction: AuctionId = parse_id(&id, "auction", "agora auctions")?;
    let m = market(&s)?;
    let spec = m
        .query(move |m| {
            let cfg = m.config();
            let free = m.ledger().available().clone();
            BidSpec {
                price: req.price,
                capacity: free,
                location: cfg.dmu.provider.location,
                reputation_permille: cfg.dmu.provider.reputation_permille,
            }
        })
        .await?;
    let effects = m.input(Input::PlaceBid { auction, spec }).await?;
    created(&effects)
}

async fn list_bids(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<BidView>>, ApiError> {
    authorize(&s, &headers)?;
    let auction: AuctionId = parse_id(&id, "auction", "agora auctions")?;
    let bids = market(&s)?
        .query(move |m| {
            m.auction(&auction).map(|e| {
                e.bids
                    .iter()
                    .map(|(bid, b)| bid_view(bid, b))
                    .collect::<Vec<_>>()
            })
        })
        .await?
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("auction {id} is unknown to this node"),
            )
        })?;
    Ok(Json(bids))
}

async fn create_offer(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(spec): Json<OfferSpec>,
) -> Result<Json<CreatedReply>, ApiError> {
    authorize(&s, &headers)?;
    let effects = market(&s)?.input(Input::PublishOffer(spec)).await?;
    created(&effects)
}

async fn list_offers(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    authorize(&s, &headers)?;
    let offers = market(&s)?
        .query(|m| {
            m.offers()
                .iter()
                .map(|(id, o)| {
                    serde_json::json!({
                        "id": id.to_string(),
                        "provider": o.body.provider.to_string(),
                        "region": o.body.region,
                        "price_per_hour": o.body.price_per_hour,
                        "resources": o.body.resources,
                        "expires_at": o.body.expires_at,
                    })
                })
                .collect()
        })
        .await?;
    Ok(Json(offers))
}

async fn negotiate(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<NegotiateRequest>,
) -> Result<Json<Vec<String>>, ApiError> {
    authorize(&s, &headers)?;
    let award: AwardId = parse_id(&id, "award", "agora market watch")?;
    let input = match req {
        NegotiateRequest::Counter { price } => NegotiationInput::Counter { price },
        NegotiateRequest::Accept => NegotiationInput::Accept,
        NegotiateRequest::WalkAway => NegotiationInput::WalkAway,
    };
    let effects = market(&s)?.input(Input::Negotiate { award, input }).await?;
    refused(&effects)?;
    Ok(Json(
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Agreed(a) => Some(format!("agreed at {}", a.terms.price)),
                Effect::NegotiationFailed { .. } => Some("negotiation ended".to_string()),
                Effect::Send { msg, .. } => Some(format!("sent {}", msg.kind())),
                _ => None,
            })
            .collect(),
    ))
}

async fn take_offer(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<TakeOfferRequest>,
) -> Result<Json<Vec<String>>, ApiError> {
    authorize(&s, &headers)?;
    let offer: OfferId = parse_id(&id, "offer", "agora offers")?;
    let effects = market(&s)?
        .input(Input::TakeOffer {
            offer,
            duration_ms: req.duration_ms,
        })
        .await?;
    refused(&effects)?;
    Ok(Json(
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Awarded { award, price, .. } => Some(format!("award {award} at {price}")),
                Effect::Send { msg, .. } => Some(format!("sent {}", msg.kind())),
                _ => None,
            })
            .collect(),
    ))
}

async fn events(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<MarketEventRecord>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(market(&s)?.events_after(q.after)))
}

/// The market routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/market/auctions",
            post(create_auction).get(list_auctions),
        )
        .route(
            "/v1/market/auctions/{id}/bids",
            post(submit_bid).get(list_bids),
        )
        .route("/v1/market/offers", post(create_offer).get(list_offers))
        .route("/v1/market/offers/{id}/take", post(take_offer))
        .route("/v1/market/awards/{id}/negotiate", post(negotiate))
        .route("/v1/market/events", get(events))
}
