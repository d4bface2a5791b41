//! Deals become contracts: when the market reports agreed terms, the customer builds the
//! contract (`agora_contracts::deal::build_contract`), signs it and asks the provider
//! (request-response, `Kind::Deal`) to countersign; the provider checks every field against its
//! own copy of the agreed terms, its ledger and market views and its [`DealPolicy`]
//! (`agora_contracts::deal::check_proposal`), and countersigns or refuses with the typed
//! [`DealRefusal`]; the customer registers the dual-signed contract on the ledger (payment and
//! both stakes go into escrow). A proposal the provider cannot answer yet (it has not seen the
//! agreement) is retried on a schedule beside the task's loop, which keeps serving meanwhile,
//! for at most [`PROPOSAL_DEADLINE`] (`deals/proposal.rs`). Both sides take the auction's image
//! and slot from the agreement, as the market read them when the deal was agreed
//! (`auction_facts`).

mod proposal;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_contracts::deal::{
    AuctionFacts, CommitteeView, DealContext, DealPolicy, DealRefusal, ProposalPolicy,
    build_contract, check_proposal,
};
use agora_contracts::{Contract, ContractKind};
use agora_market::{Agreement, AwardId, DealFault, KeySigner, NodeId, Signature, Signer};
use cid::Cid;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

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
/// Longest the customer proposes one contract, all attempts together; then it gives up
/// without blaming the provider. Each attempt waited for the network's request timeout (30 s),
/// so a provider that agreed and then stayed silent held one of the customer's
/// [`MAX_PROPOSALS_IN_FLIGHT`] slots for 10 of them, 5 minutes, long after the losers of its
/// auction had let go of their bids (review 6, M1). An honest provider answers within a
/// second or two: its agreement reaches its deal task as ours reaches ours, and the attempts
/// while it has not (`UnknownAward`) take about 5 s; the rest is room for a slow link. Kept
/// short because each key that agrees and goes silent costs the auction this long before its
/// next bid is awarded, and only so many fit before the losers let go of their bids (review 10
/// H1: at 20 s two such keys ended every default CLI auction).
pub const PROPOSAL_DEADLINE: Duration = Duration::from_secs(10);
/// The least time a provider is given to countersign, however late it agreed.
pub const MIN_PROPOSAL_DEADLINE: Duration = Duration::from_secs(3);

/// How long the customer waits for the countersignature of a deal agreed with the award's
/// deadline `respond_by`, at `now`: until that deadline, at least [`MIN_PROPOSAL_DEADLINE`]
/// and at most [`PROPOSAL_DEADLINE`]. A key that accepts at the last moment of its award and
/// then goes silent held the auction a whole deadline more, so two such keys still ended every
/// default CLI auction before its next bid fit (review 11, M1).
pub fn proposal_deadline(respond_by: u64, now: u64) -> Duration {
    Duration::from_millis(respond_by.saturating_sub(now))
        .clamp(MIN_PROPOSAL_DEADLINE, PROPOSAL_DEADLINE)
}

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
    /// Deals this node agreed to as provider, by award, with when they arrived.
    as_provider: HashMap<AwardId, (Agreement, u64)>,
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

/// The next agreed deal; never, without a receiver or once the market task is gone.
async fn next_agreed(agreed: &mut Option<mpsc::Receiver<Agreement>>) -> Agreement {
    if let Some(rx) = agreed {
        if let Some(t) = rx.recv().await {
            return t;
        }
        *agreed = None;
    }
    std::future::pending().await
}

/// What the auction behind `agreement` said of the contract's image and slot, as the market
/// read it when the deal was agreed ([`Agreement::auction`]): as provider, the auction as this
/// node bid on it (read from the book when the proposal came, it was gone once a customer let
/// its auction expire first, and the image and slot went unchecked: THREATS C36); as customer,
/// its own auction. The customer read its book when it got to the deal, by when the auction
/// could be gone (a CLI auction expires 60 s after its window by default, and this task builds one
/// contract at a time), and then proposed the default image and no slot, which the honest
/// provider refused and was marked for (review 7, M3). Facts the market did not have are an
/// error: nothing is built or signed from defaults.
fn auction_facts(agreement: &Agreement) -> Result<AuctionFacts, String> {
    agreement.auction.clone().ok_or_else(|| {
        format!(
            "the auction of award {} was not in this node's book when the deal was agreed; \
             no contract is built from defaults",
            agreement.terms.award.short()
        )
    })
}

/// Signs one deal message with the task's sequence numbers.
fn seal(signer: &KeySigner, seq: &AtomicU64, msg: &DealMsg) -> Option<Envelope> {
    let n = seq.fetch_add(1, Ordering::Relaxed);
    Envelope::seal_body(signer, Kind::Deal, now_ms(), n, msg).ok()
}

impl DealTask {
    async fn run(
        mut self,
        mut agreed: Option<mpsc::Receiver<Agreement>>,
        mut events: Inbox,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                agreement = next_agreed(&mut agreed) => self.on_agreed(agreement, &cancel).await,
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

    /// What both sides look up for an award: the auction's image and start time as agreed
    /// ([`auction_facts`]), and the ledger's arbitrators.
    async fn views(&self, a: &Agreement) -> Result<(AuctionFacts, CommitteeView), String> {
        let auction = auction_facts(a)?;
        let committee = self
            .ledger
            .query(|v| CommitteeView::of(&v.ledger))
            .await
            .map_err(|e| e.to_string())?;
        Ok((auction, committee))
    }

    /// Customer: the contract for the agreed deal `a`.
    async fn contract_for(&self, a: &Agreement) -> Result<Contract, String> {
        let policy = self.config.customer.policy()?;
        let (auction, committee) = self.views(a).await?;
        let t = &a.terms;
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

    async fn on_agreed(&mut self, agreement: Agreement, cancel: &CancellationToken) {
        let me = self.signer.node_id();
        let terms = &agreement.terms;
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
            let award = terms.award;
            self.as_provider.insert(award, (agreement, now_ms()));
            return;
        }
        if terms.customer != me {
            return;
        }
        // Each early return below is our side's doing: the market is told (nobody marked), so
        // the auction's next bid is still awarded (review 8, L3).
        let (market, award, provider) = (self.market.clone(), terms.award, terms.provider);
        let ours = || proposal::deal_failed(&market, award, provider, DealFault::Ours);
        let contract = match self.contract_for(&agreement).await {
            Ok(c) => c,
            Err(e) => {
                warn!(award = %terms.award.short(), error = %e, "cannot build contract");
                return ours().await;
            }
        };
        let customer_sig = match contract.sign_as(&self.signer) {
            Ok((_, s)) => s,
            Err(e) => {
                warn!(error = %e, "cannot sign contract");
                return ours().await;
            }
        };
        let Some(peer) = peer_id_of(&terms.provider) else {
            return ours().await;
        };
        if self.in_flight.load(Ordering::Relaxed) >= MAX_PROPOSALS_IN_FLIGHT as u64 {
            warn!(award = %terms.award.short(), "too many proposals in flight; award dropped");
            return ours().await;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let proposal = proposal::Proposal {
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
            deadline: proposal_deadline(agreement.respond_by, now_ms()),
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
        let Some((agreed, _)) = self.as_provider.get(&award).cloned() else {
            return Err(DealRefusal::UnknownAward { award });
        };
        let (auction, committee) = self
            .views(&agreed)
            .await
            .map_err(|reason| DealRefusal::Malformed { reason })?;
        let ctx = DealContext {
            terms: &agreed.terms,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agora_market::{
        AuctionKind, AuctionSpec, Effect, Input, MarketConfig, MarketState, Resources,
    };

    /// What `to` makes of every market message in `out`, sent by `from` at `now`.
    fn deliver(
        to: &mut MarketState<KeySigner>,
        from: NodeId,
        now: u64,
        out: &[Effect],
    ) -> Vec<Effect> {
        let msgs: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Send { msg, .. } | Effect::Broadcast { msg, .. } => Some(msg.clone()),
                _ => None,
            })
            .collect();
        msgs.into_iter()
            .flat_map(|msg| to.handle(now, Input::Remote { from, msg }))
            .collect()
    }

    /// The deal agreed in `out`.
    fn agreed(out: &[Effect]) -> Agreement {
        out.iter()
            .find_map(|e| match e {
                Effect::Agreed(a) => Some(a.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no deal agreed: {out:?}"))
    }

    /// THREATS C36 and review 7, M3: the contract's image and slot come with the agreement, as
    /// the market read them when the deal was agreed, on both sides. Here both books have let
    /// the auction go by the time the deal task gets to the deal (as a backlog of contracts to
    /// build, or a customer proposing late, makes it), and both still have the image and slot
    /// the auction named; an agreement without them builds no contract. Mutants — the customer
    /// reading its book when it builds the contract (as at 94e7ef4: the auction is gone, so the
    /// default image and no slot); `auction_facts` falling back to the defaults: the last
    /// assert fails.
    /// Review 11 M1: the countersignature is awaited until the award's own deadline, within
    /// a floor and a ceiling. Mutants — the fixed `PROPOSAL_DEADLINE`: 10 s for a deal agreed
    /// 1 s before its deadline; no floor: nothing for one agreed past it.
    #[test]
    fn a_late_agreement_gets_until_its_awards_deadline_to_be_countersigned() {
        let s = Duration::from_secs;
        assert_eq!(proposal_deadline(50_000, 45_000), s(5));
        assert_eq!(proposal_deadline(50_000, 49_000), MIN_PROPOSAL_DEADLINE);
        assert_eq!(proposal_deadline(50_000, 60_000), MIN_PROPOSAL_DEADLINE);
        assert_eq!(proposal_deadline(90_000, 30_000), PROPOSAL_DEADLINE);
    }

    #[test]
    fn the_contract_is_built_from_what_the_auction_said_when_the_deal_was_agreed() {
        let mut customer = MarketState::new(KeySigner::from_seed(1), MarketConfig::default());
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
        let (c, p) = (customer.node_id(), provider.node_id());
        let spec = AuctionSpec {
            region: "eu-west".into(),
            resources: Resources {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
                ..Resources::default()
            },
            duration_ms: 3_600_000,
            max_price: 1_000,
            window_ms: 10_000,
            kind: AuctionKind::Hosted,
            near: None,
            award_grace_ms: 60_000,
            service: Some(EMPTY_IMAGE.into()),
            start_at: Some(30_000),
        };
        let out = customer.handle(0, Input::CreateAuction(spec));
        let auction = *customer.auctions().keys().next().unwrap();
        let bid = deliver(&mut provider, c, 1, &out);
        deliver(&mut customer, p, 2, &bid);
        let award = customer.handle(10_000, Input::Tick);
        let accept = deliver(&mut provider, c, 10_001, &award);
        let as_provider = agreed(&accept);
        let as_customer = agreed(&deliver(&mut customer, p, 10_002, &accept));
        // Long after: the auction has expired and the award's deal is forgotten.
        for now in [1_000_000, 1_000_001] {
            customer.handle(now, Input::Tick);
            provider.handle(now, Input::Tick);
        }
        assert!(customer.auction(&auction).is_none());
        assert!(provider.auction(&auction).is_none());
        let said = AuctionFacts {
            image: Some(EMPTY_IMAGE.into()),
            start_at: Some(30_000),
        };
        assert_eq!(auction_facts(&as_customer), Ok(said.clone()));
        assert_eq!(auction_facts(&as_provider), Ok(said));
        let gone = Agreement {
            auction: None,
            ..as_customer
        };
        assert!(auction_facts(&gone).is_err());
    }
}
