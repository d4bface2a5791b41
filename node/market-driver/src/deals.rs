//! Deals become contracts: when the market reports agreed terms, the customer builds the
//! contract (`agora_contracts::deal::build_contract`), signs it and asks the provider
//! (request-response, `Kind::Deal`) to countersign; the provider checks every field against its
//! own copy of the agreed terms, its ledger and market views and its [`DealPolicy`]
//! (`agora_contracts::deal::check_proposal`), and countersigns or refuses with the typed
//! [`DealRefusal`]; the customer registers the dual-signed contract on the ledger (payment and
//! both stakes go into escrow). A proposal the provider cannot answer yet (it has not seen the
//! agreement) is retried on a schedule beside the task's loop, which keeps serving meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_contracts::deal::{
    AuctionFacts, CommitteeView, DealContext, DealPolicy, DealRefusal, ProposalPolicy,
    build_contract, check_proposal,
};
use agora_contracts::{Contract, ContractKind, SignedContract, TxKind};
use agora_market::{
    AgreedTerms, AuctionId, AwardId, AwardSubject, KeySigner, MarketState, NodeId, Signature,
    Signer,
};
use cid::Cid;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::MarketHandle;
use agora_exchange::StorageHandle;
use agora_ledger::LedgerHandle;
use agora_network::keys::peer_id_of;
use agora_network::{Inbox, Interest, NetworkEvent, NetworkHandle};
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;

pub use agora_wire::deal::DealMsg;

/// CID of the empty UnixFS file: the service image of deals made before an image is attached.
pub const EMPTY_IMAGE: &str = agora_contracts::deal::EMPTY_IMAGE;

/// How often the customer proposes one contract before giving up (the provider may not have
/// processed the agreement yet); the waits between grow by [`RETRY_STEP`].
pub const PROPOSAL_ATTEMPTS: u64 = 10;
/// Growth of the wait between two proposals of the same contract.
pub const RETRY_STEP: Duration = Duration::from_millis(100);
/// Proposals in flight at once; the customer's own awards beyond it are refused with a log line.
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 32;
/// Agreements remembered as provider; the oldest is dropped beyond it.
pub const MAX_AGREED_AS_PROVIDER: usize = 1_024;

/// How deals are turned into contracts (the `[deals]` config section): what this node proposes
/// as customer (`[deals.customer]`) and what it accepts as provider (`[deals.provider]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DealConfig {
    /// What this node proposes as customer.
    pub customer: CustomerDeals,
    /// What this node countersigns as provider.
    pub provider: DealPolicy,
}

/// `[deals.customer]`: the contract this node proposes for its awards.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CustomerDeals {
    /// Customer stake, permille of the price.
    pub customer_stake_permille: u64,
    /// Provider stake asked for, permille of the price.
    pub provider_stake_permille: u64,
    /// Standby contracts: how long the customer must be unreachable before handover, ms.
    pub handover_after_ms: u64,
    /// QoS: longest delay from trigger to activation, ms.
    pub max_activation_delay_ms: u64,
    /// QoS: minimum uptime, permille.
    pub min_uptime_permille: u16,
    /// QoS: heartbeat interval while active, ms.
    pub heartbeat_interval_ms: u64,
    /// Service image CID used for deals whose auction names none.
    pub service_image: String,
    /// A contract of ours its provider has not armed this long after the registration (and
    /// that names no slot) is called off, every locked token back, ms (THREATS C16).
    pub arm_timeout_ms: u64,
}

impl Default for CustomerDeals {
    fn default() -> Self {
        let p = ProposalPolicy::default();
        CustomerDeals {
            customer_stake_permille: p.customer_stake_permille,
            provider_stake_permille: p.provider_stake_permille,
            handover_after_ms: p.handover_after_ms,
            max_activation_delay_ms: p.max_activation_delay_ms,
            min_uptime_permille: p.min_uptime_permille,
            heartbeat_interval_ms: p.heartbeat_interval_ms,
            service_image: EMPTY_IMAGE.into(),
            // `agora_roles::ARM_TIMEOUT_MS`.
            arm_timeout_ms: 300_000,
        }
    }
}

impl CustomerDeals {
    /// The pure crate's policy; fails when `service_image` is not a CID.
    pub fn policy(&self) -> Result<ProposalPolicy, String> {
        let service_image: Cid = self.service_image.parse().map_err(|e| {
            format!(
                "deals.customer.service_image '{}' is not a CID: {e}",
                self.service_image
            )
        })?;
        Ok(ProposalPolicy {
            customer_stake_permille: self.customer_stake_permille,
            provider_stake_permille: self.provider_stake_permille,
            handover_after_ms: self.handover_after_ms,
            max_activation_delay_ms: self.max_activation_delay_ms,
            min_uptime_permille: self.min_uptime_permille,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            service_image,
        })
    }
}

struct DealTask {
    signer: KeySigner,
    config: DealConfig,
    network: NetworkHandle,
    ledger: LedgerHandle,
    storage: StorageHandle,
    market: MarketHandle,
    /// Terms this node agreed to as provider, by award, with when they arrived.
    as_provider: HashMap<AwardId, (AgreedTerms, u64)>,
    seq: Arc<AtomicU64>,
    /// Proposals whose retry loop runs beside the task.
    in_flight: Arc<AtomicU64>,
    /// Countersigned contracts whose capacity hold is followed ([`crate::holds::follow`]).
    watching: Arc<AtomicU64>,
    /// To the task that follows them.
    follow: mpsc::Sender<crate::holds::Followed>,
}

/// Starts the deal task.
pub fn spawn(
    signer: KeySigner,
    config: DealConfig,
    market: &MarketHandle,
    network: NetworkHandle,
    ledger: LedgerHandle,
    storage: StorageHandle,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let agreed = market.take_agreed();
    if agreed.is_none() {
        warn!(
            "another deal task already receives the agreed terms; this one only answers proposals"
        );
    }
    let events = network.inbox(Interest::new("deals").requests(Kind::Deal));
    let watching = Arc::new(AtomicU64::new(0));
    let (follow, followed) = mpsc::channel(MAX_AGREED_AS_PROVIDER);
    tokio::spawn(
        crate::holds::follow(
            market.clone(),
            ledger.clone(),
            followed,
            watching.clone(),
            cancel.clone(),
        )
        .in_current_span(),
    );
    let task = DealTask {
        signer,
        config,
        network,
        ledger,
        storage,
        market: market.clone(),
        as_provider: HashMap::new(),
        seq: Arc::new(AtomicU64::new(now_ms())),
        in_flight: Arc::default(),
        watching,
        follow,
    };
    tokio::spawn(task.run(agreed, events, cancel).in_current_span())
}

/// The next agreed terms; never, without a receiver or once the market task is gone.
async fn next_agreed(agreed: &mut Option<mpsc::Receiver<AgreedTerms>>) -> AgreedTerms {
    if let Some(rx) = agreed {
        if let Some(t) = rx.recv().await {
            return t;
        }
        *agreed = None;
    }
    std::future::pending().await
}

/// What `auction` said of the contract's image and slot. As provider, the auction as this node
/// bid on it ([`MarketState::my_bid`], kept while the award holds the capacity): read from the
/// book, it was gone when a customer let its auction expire before proposing, and the image and
/// slot went unchecked (THREATS C36). Without that record the award's hold has lapsed too, and
/// the proposal is refused for it. As customer, its own auction in the book.
fn auction_facts<S: Signer + Clone>(
    market: &MarketState<S>,
    auction: &AuctionId,
    as_provider: bool,
) -> AuctionFacts {
    if as_provider {
        return market
            .my_bid(auction)
            .map(|b| AuctionFacts {
                image: b.image.clone(),
                start_at: b.start_at,
            })
            .unwrap_or_default();
    }
    market
        .auction(auction)
        .map(|a| AuctionFacts {
            image: a.request.body.service.clone(),
            start_at: a.request.body.start_at,
        })
        .unwrap_or_default()
}

/// Signs one deal message with the task's sequence numbers.
fn seal(signer: &KeySigner, seq: &AtomicU64, msg: &DealMsg) -> Option<Envelope> {
    let n = seq.fetch_add(1, Ordering::Relaxed);
    Envelope::seal_body(signer, Kind::Deal, now_ms(), n, msg).ok()
}

impl DealTask {
    async fn run(
        mut self,
        mut agreed: Option<mpsc::Receiver<AgreedTerms>>,
        mut events: Inbox,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                terms = next_agreed(&mut agreed) => self.on_agreed(terms, &cancel).await,
                ev = events.recv() => match ev {
                    NetworkEvent::Request { id, envelope, .. } if envelope.kind == Kind::Deal => {
                        self.on_request(id, &envelope).await;
                    }
                    _ => {}
                },
            }
        }
    }

    /// Provider: answers one proposal.
    async fn on_request(&mut self, id: u64, envelope: &Envelope) {
        let reply = match envelope.body::<DealMsg>(Kind::Deal) {
            Ok(DealMsg::Propose {
                award,
                contract,
                customer_sig,
            }) => match self
                .countersign(envelope.sender, award, &contract, &customer_sig)
                .await
            {
                Ok(provider_sig) => DealMsg::Signed { provider_sig },
                Err(reason) => {
                    info!(award = %award.short(), %reason, "refused to countersign");
                    DealMsg::Refused { reason }
                }
            },
            Ok(_) => DealMsg::Refused {
                reason: DealRefusal::Malformed {
                    reason: "expected a proposal".into(),
                },
            },
            Err(e) => DealMsg::Refused {
                reason: DealRefusal::Malformed {
                    reason: e.to_string(),
                },
            },
        };
        if let Some(env) = seal(&self.signer, &self.seq, &reply) {
            let _ = self.network.respond(id, &env).await;
        }
    }

    /// What both sides look up for an award: the auction's image and start time from the local
    /// market ([`auction_facts`]), and the ledger's arbitrators.
    async fn views(&self, t: &AgreedTerms) -> Result<(AuctionFacts, CommitteeView), String> {
        let auction = match t.subject {
            AwardSubject::Bid { auction, .. } => {
                let as_provider = t.provider == self.signer.node_id();
                self.market
                    .query(move |s| auction_facts(s, &auction, as_provider))
                    .await
                    .map_err(|e| e.to_string())?
            }
            AwardSubject::Offer { .. } => AuctionFacts::default(),
        };
        let committee = self
            .ledger
            .query(|v| CommitteeView::of(&v.ledger))
            .await
            .map_err(|e| e.to_string())?;
        Ok((auction, committee))
    }

    /// Customer: the contract for agreed terms `t`.
    async fn contract_for(&self, t: &AgreedTerms) -> Result<Contract, String> {
        let policy = self.config.customer.policy()?;
        let (auction, committee) = self.views(t).await?;
        // A storage contract's config is the customer's chunk commitment to the file, which the
        // arbitrators challenge the provider against.
        let commitment = if agora_contracts::deal::kind_of(t.kind) == ContractKind::Storage {
            let image = agora_contracts::deal::contract_image(&auction, policy.service_image)
                .map_err(|e| e.to_string())?;
            Some(
                self.storage
                    .commit_file(image)
                    .await
                    .map_err(|e| e.to_string())?
                    .0,
            )
        } else {
            None
        };
        let ctx = DealContext {
            terms: t,
            committee: &committee,
            auction: &auction,
            now: now_ms(),
        };
        build_contract(&ctx, &policy, commitment).map_err(|e| match e {
            agora_contracts::deal::DealError::CommitteeTooSmall { .. } => format!(
                "{e}: add arbitrators to the genesis committee (a devnet of 7 nodes makes every \
                 node one: `agora devnet up --nodes 7`)"
            ),
            e => e.to_string(),
        })
    }

    async fn on_agreed(&mut self, terms: AgreedTerms, cancel: &CancellationToken) {
        let me = self.signer.node_id();
        if terms.provider == me {
            if self.as_provider.len() >= MAX_AGREED_AS_PROVIDER {
                let oldest = self
                    .as_provider
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(a, _)| *a);
                if let Some(a) = oldest {
                    self.as_provider.remove(&a);
                    warn!(award = %a.short(), "agreements table full; the oldest is forgotten");
                }
            }
            self.as_provider.insert(terms.award, (terms, now_ms()));
            return;
        }
        if terms.customer != me {
            return;
        }
        let contract = match self.contract_for(&terms).await {
            Ok(c) => c,
            Err(e) => {
                return warn!(award = %terms.award.short(), error = %e, "cannot build contract");
            }
        };
        let customer_sig = match contract.sign_as(&self.signer) {
            Ok((_, s)) => s,
            Err(e) => return warn!(error = %e, "cannot sign contract"),
        };
        let Some(peer) = peer_id_of(&terms.provider) else {
            return;
        };
        if self.in_flight.load(Ordering::Relaxed) >= MAX_PROPOSALS_IN_FLIGHT as u64 {
            return warn!(award = %terms.award.short(), "too many proposals in flight; award dropped");
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let proposal = Proposal {
            award: terms.award,
            provider: terms.provider,
            contract,
            customer_sig,
            peer,
            signer: self.signer.clone(),
            seq: self.seq.clone(),
            network: self.network.clone(),
            ledger: self.ledger.clone(),
            market: self.market.clone(),
        };
        let in_flight = self.in_flight.clone();
        let cancel = cancel.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = proposal.run() => {}
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            .in_current_span(),
        );
    }

    /// Provider: checks a proposal with `check_proposal` against this node's own views and
    /// policy; signs it if it passes.
    async fn countersign(
        &mut self,
        from: NodeId,
        award: AwardId,
        contract: &Contract,
        customer_sig: &Signature,
    ) -> Result<Signature, DealRefusal> {
        let Some((t, _)) = self.as_provider.get(&award).cloned() else {
            return Err(DealRefusal::UnknownAward { award });
        };
        let (auction, committee) = self
            .views(&t)
            .await
            .map_err(|reason| DealRefusal::Malformed { reason })?;
        let ctx = DealContext {
            terms: &t,
            committee: &committee,
            auction: &auction,
            now: now_ms(),
        };
        check_proposal(
            &ctx,
            &self.config.provider,
            self.signer.node_id(),
            from,
            contract,
            customer_sig,
        )?;
        // The award's capacity must still be held here, and is held through the registration
        // window from now on: a contract proposed late must not be registered with no
        // capacity behind it (THREATS C20).
        let held = self
            .market
            .query(move |s| s.holds_award(&award))
            .await
            .unwrap_or(false);
        if !held {
            self.as_provider.remove(&award);
            return Err(DealRefusal::HoldLapsed { award });
        }
        // Every signed contract's registration is followed (its capacity held to its end): at
        // most `MAX_AGREED_AS_PROVIDER` at once, more are refused rather than signed with a
        // short hold (found by the review of C20).
        if self.watching.load(Ordering::Relaxed) >= MAX_AGREED_AS_PROVIDER as u64 {
            return Err(DealRefusal::Busy { award });
        }
        let until = now_ms().saturating_add(agora_market::AGREED_HOLD_MS);
        let _ = self
            .market
            .input(agora_market::Input::HoldAward {
                award,
                until,
                registered: false,
            })
            .await;
        let (_, provider_sig) =
            contract
                .sign_as(&self.signer)
                .map_err(|e| DealRefusal::Malformed {
                    reason: e.to_string(),
                })?;
        info!(award = %award.short(), "countersigned contract");
        self.as_provider.remove(&award);
        // The market holds the award's capacity through the registration window; once the
        // contract is registered, until its end (THREATS C20).
        if let Ok(id) = contract.id() {
            let followed = crate::holds::Followed {
                contract: id,
                award: Some(award),
                start: auction.start_at.unwrap_or(0),
                duration_ms: contract.duration_ms,
                give_up: until,
                held_until: None,
            };
            self.watching.fetch_add(1, Ordering::Relaxed);
            if self.follow.try_send(followed).is_err() {
                // Cannot happen below the bound checked above; the hold then ends by itself.
                self.watching.fetch_sub(1, Ordering::Relaxed);
                warn!(award = %award.short(), "cannot follow the contract's registration");
            }
        }
        Ok(provider_sig)
    }
}

// An award's capacity is held at least as long as its contract may still be registered.
const _: () = assert!(agora_market::AGREED_HOLD_MS > agora_contracts::ledger::MAX_REGISTER_AGE_MS);

pub use crate::holds::CONTRACT_HOLD_SLACK_MS;

/// One proposal with its retry schedule, run beside the deal task.
struct Proposal {
    award: AwardId,
    /// Who is asked to countersign.
    provider: NodeId,
    contract: Contract,
    customer_sig: Signature,
    peer: agora_network::PeerId,
    signer: KeySigner,
    seq: Arc<AtomicU64>,
    network: NetworkHandle,
    ledger: LedgerHandle,
    /// Told when the provider does not countersign (`Input::DealFailed`).
    market: MarketHandle,
}

impl Proposal {
    async fn run(self) {
        let msg = DealMsg::Propose {
            award: self.award,
            contract: Box::new(self.contract.clone()),
            customer_sig: self.customer_sig,
        };
        for attempt in 0..PROPOSAL_ATTEMPTS {
            let last = attempt + 1 == PROPOSAL_ATTEMPTS;
            let Some(env) = seal(&self.signer, &self.seq, &msg) else {
                return warn!("cannot encode the proposal");
            };
            match self
                .network
                .request(self.peer, &env)
                .await
                .map(|r| r.body::<DealMsg>(Kind::Deal))
            {
                Ok(Ok(DealMsg::Signed { provider_sig })) => {
                    return self.register(provider_sig).await;
                }
                Ok(Ok(DealMsg::Refused {
                    reason: DealRefusal::UnknownAward { .. },
                })) if !last => {
                    debug!(award = %self.award.short(), "provider has not seen the agreement yet; retrying");
                }
                Ok(Ok(DealMsg::Refused { reason })) => {
                    warn!(award = %self.award.short(), %reason, "provider refused to sign the contract");
                    return self.failed().await;
                }
                Ok(Ok(DealMsg::Propose { .. })) | Ok(Err(_)) | Err(_) if !last => {}
                other => {
                    warn!(award = %self.award.short(), result = ?other.err(), "contract not countersigned");
                    return self.failed().await;
                }
            }
            tokio::time::sleep(RETRY_STEP * u32::try_from(attempt + 1).unwrap_or(1)).await;
        }
    }

    /// The provider refused the contract or never countersigned it: the market awards the
    /// auction's next bid, as when an award lapses, and ranks the provider last on our
    /// auctions (THREATS C32). Before, an award accepted and never countersigned was never
    /// awarded again (fourth review of session 52). A registration the ledger refuses is not
    /// reported: the fault may be ours (our balance).
    async fn failed(&self) {
        deal_failed(&self.market, self.award, self.provider).await;
    }

    async fn register(self, provider_sig: Signature) {
        let Proposal {
            award,
            provider,
            contract,
            customer_sig,
            ledger,
            market,
            ..
        } = self;
        let signed = SignedContract {
            contract,
            customer_sig,
            provider_sig,
        };
        match signed.verify() {
            Ok(id) => match ledger
                .submit(TxKind::RegisterContract(Box::new(signed)))
                .await
            {
                Ok(_) => {
                    info!(contract = %id.short(), "contract signed by both parties and submitted")
                }
                Err(e) => {
                    warn!(contract = %id.short(), error = %e, "contract registration refused")
                }
            },
            Err(e) => {
                warn!(error = %e, "provider's signature does not verify");
                deal_failed(&market, award, provider).await;
            }
        }
    }
}

/// Tells the market that `provider` did not countersign the contract of our `award`
/// ([`Proposal::failed`]).
async fn deal_failed(market: &MarketHandle, award: AwardId, provider: NodeId) {
    let input = agora_market::Input::DealFailed { award, provider };
    if market.input(input).await.is_err() {
        debug!(award = %award.short(), "market gone: deal failure not reported");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agora_market::signed::Signed;
    use agora_market::{
        AuctionKind, AuctionSpec, AwardBody, Effect, Input, MarketConfig, MarketMessage, Resources,
    };

    /// THREATS C36: a customer that lets its auction expire before proposing does not make the
    /// provider check the contract against nothing: the image and slot come from what the
    /// provider bid on.
    #[test]
    fn a_provider_checks_the_auction_it_bid_on_after_the_auction_left_the_book() {
        let mut config = MarketConfig {
            capacity: Resources {
                cpu_millis: 4_000,
                memory_bytes: 4 << 30,
                ..Resources::default()
            },
            ..MarketConfig::default()
        };
        config.dmu.provider.auto_bid = true;
        let mut provider = MarketState::new(KeySigner::from_seed(2), config);
        let customer = KeySigner::from_seed(1);
        let from = customer.node_id();
        let spec = AuctionSpec {
            region: "eu-west".into(),
            resources: Resources {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
                ..Resources::default()
            },
            duration_ms: 3_600_000,
            max_price: 1_000,
            window_ms: 1_000,
            kind: AuctionKind::Hosted,
            near: None,
            award_grace_ms: 1_000,
            service: Some(EMPTY_IMAGE.into()),
            start_at: Some(5_000),
        };
        let req = spec.create(&customer, 0, 1).unwrap();
        let auction = req.id().unwrap();
        let msg = MarketMessage::Auction(req.clone());
        let out = provider.handle(0, Input::Remote { from, msg });
        let bid = out
            .iter()
            .find_map(|e| match e {
                Effect::Send {
                    msg: MarketMessage::Bid(b),
                    ..
                } => Some(b.clone()),
                _ => None,
            })
            .expect("the provider bid");
        let award = AwardBody {
            customer: from,
            provider: provider.node_id(),
            subject: AwardSubject::Bid {
                auction,
                bid: bid.id().unwrap(),
            },
            price: bid.body.price,
            resources: req.body.resources.clone(),
            duration_ms: req.body.duration_ms,
            kind: req.body.kind,
            nonce: 2,
            expires_at: 2_000,
        };
        let msg = MarketMessage::Award(Signed::sign(award, &customer).unwrap());
        let out = provider.handle(1_000, Input::Remote { from, msg });
        assert!(
            out.iter().any(|e| matches!(e, Effect::Agreed(_))),
            "{out:?}"
        );
        // The auction expired at 2 s; the customer proposes after that.
        provider.handle(3_000, Input::Tick);
        assert!(provider.auction(&auction).is_none());
        let bid_on = AuctionFacts {
            image: Some(EMPTY_IMAGE.into()),
            start_at: Some(5_000),
        };
        assert_eq!(auction_facts(&provider, &auction, true), bid_on);
        // The customer's view is its own book (here: gone).
        assert_eq!(
            auction_facts(&provider, &auction, false),
            AuctionFacts::default()
        );
    }
}
