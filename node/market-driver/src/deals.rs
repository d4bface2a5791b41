//! Deals become contracts: when the market reports agreed terms, the customer builds the
//! contract, signs it and asks the provider (request-response, `Kind::Deal`) to countersign;
//! the provider checks the contract against its own agreed terms and its stake limit, signs,
//! and the customer registers the dual-signed contract on the ledger (payment and both stakes go
//! into escrow).

use std::collections::HashMap;

use agora_contracts::{
    ActivationClause, Contract, ContractKind, Qos, SignedContract, Stakes, Terms, TxKind,
};
use agora_market::{
    AgreedTerms, AuctionKind, AwardId, AwardSubject, KeySigner, NodeId, Signature, Signer,
};
use cid::Cid;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::MarketHandle;
use agora_exchange::StorageHandle;
use agora_ledger::LedgerHandle;
use agora_network::keys::peer_id_of;
use agora_network::{NetworkEvent, NetworkHandle};
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;

pub use agora_wire::deal::DealMsg;

/// CID of the empty UnixFS file: the service image of deals made before an image is attached.
pub const EMPTY_IMAGE: &str = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH";

/// How deals are turned into contracts (the `[deals]` config section).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DealConfig {
    /// Customer stake, permille of the price.
    pub customer_stake_permille: u64,
    /// Provider stake, permille of the price.
    pub provider_stake_permille: u64,
    /// Largest provider stake this node accepts, permille of the price.
    pub max_provider_stake_permille: u64,
    /// Standby contracts: how long the customer must be unreachable before handover.
    pub handover_after_ms: u64,
    /// QoS: longest delay from trigger to activation.
    pub max_activation_delay_ms: u64,
    /// QoS: minimum uptime, permille.
    pub min_uptime_permille: u16,
    /// QoS: heartbeat interval while active.
    pub heartbeat_interval_ms: u64,
    /// Service image CID used for deals (until the customer attaches one).
    pub service_image: String,
}

impl Default for DealConfig {
    fn default() -> Self {
        DealConfig {
            customer_stake_permille: 100,
            provider_stake_permille: 500,
            max_provider_stake_permille: 1_000,
            handover_after_ms: 3_000,
            max_activation_delay_ms: 5_000,
            min_uptime_permille: 900,
            heartbeat_interval_ms: 1_000,
            service_image: EMPTY_IMAGE.into(),
        }
    }
}

struct DealTask {
    signer: KeySigner,
    config: DealConfig,
    network: NetworkHandle,
    ledger: LedgerHandle,
    storage: StorageHandle,
    market: MarketHandle,
    /// Terms this node agreed to as provider, by award.
    as_provider: HashMap<AwardId, AgreedTerms>,
    seq: u64,
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
    let agreed = market.agreed();
    let events = network.events();
    let task = DealTask {
        signer,
        config,
        network,
        ledger,
        storage,
        market: market.clone(),
        as_provider: HashMap::new(),
        seq: 0,
    };
    tokio::spawn(task.run(agreed, events, cancel).in_current_span())
}

fn kind_of(k: AuctionKind) -> ContractKind {
    match k {
        AuctionKind::Hosted => ContractKind::Hosted,
        AuctionKind::Standby => ContractKind::Standby,
        AuctionKind::Storage => ContractKind::Storage,
    }
}

impl DealTask {
    async fn run(
        mut self,
        mut agreed: broadcast::Receiver<AgreedTerms>,
        mut events: broadcast::Receiver<NetworkEvent>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                t = agreed.recv() => match t {
                    Ok(terms) => self.on_agreed(terms).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => warn!(missed = n, "deal task lagged"),
                    Err(_) => break,
                },
                ev = events.recv() => match ev {
                    Ok(NetworkEvent::Request { id, envelope, .. }) if envelope.kind == Kind::Deal => {
                        let reply = match envelope.body::<DealMsg>(Kind::Deal) {
                            Ok(DealMsg::Propose { award, contract, customer_sig }) => {
                                self.countersign(envelope.sender, award, *contract, customer_sig)
                            }
                            Ok(_) => DealMsg::Refused { reason: "unexpected deal message".into() },
                            Err(e) => DealMsg::Refused { reason: e.to_string() },
                        };
                        self.respond(id, &reply).await;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
            }
        }
    }

    fn seal(&mut self, msg: &DealMsg) -> Option<Envelope> {
        self.seq += 1;
        Envelope::seal_body(&self.signer, Kind::Deal, now_ms(), self.seq, msg).ok()
    }

    async fn respond(&mut self, id: u64, msg: &DealMsg) {
        if let Some(env) = self.seal(msg) {
            let _ = self.network.respond(id, &env).await;
        }
    }

    /// The contract both parties derive from the same agreed terms.
    async fn contract_for(&self, t: &AgreedTerms) -> Result<Contract, String> {
        let (customer, provider) = (t.customer, t.provider);
        // The contract's arbitrators: every arbitrator of the committee but the two parties.
        let (committee, min) = self
            .ledger
            .query(|v| {
                (
                    v.ledger.committee().iter().copied().collect::<Vec<_>>(),
                    v.ledger.params().min_committee,
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        let arbitrators: Vec<NodeId> = committee
            .iter()
            .copied()
            .filter(|c| *c != customer && *c != provider)
            .collect();
        if arbitrators.len() < min {
            return Err(format!(
                "only {} of the ledger's {} arbitrators are not parties to this deal; a \
                 contract needs at least {min}: add arbitrators to the genesis committee (a \
                 devnet of 7 nodes makes every node one: `agora devnet up --nodes 7`)",
                arbitrators.len(),
                committee.len()
            ));
        }
        // The auction names the service image; without one the configured default is used.
        let (named, start_at) = match t.subject {
            AwardSubject::Bid { auction, .. } => self
                .market
                .query(move |s| {
                    s.auction(&auction)
                        .map(|a| (a.request.body.service.clone(), a.request.body.start_at))
                        .unwrap_or_default()
                })
                .await
                .map_err(|e| e.to_string())?,
            AwardSubject::Offer { .. } => (None, None),
        };
        let image: Cid = match named {
            Some(cid) => cid
                .parse()
                .map_err(|e| format!("the auction's service image {cid} is not a CID: {e}"))?,
            None => self
                .config
                .service_image
                .parse()
                .map_err(|e| format!("deals.service_image is not a CID: {e}"))?,
        };
        let kind = kind_of(t.kind);
        // A storage contract's config is the customer's chunk commitment to the file, which the
        // arbitrators challenge the provider against.
        let config = match kind {
            ContractKind::Storage => {
                self.storage
                    .commit_file(image)
                    .await
                    .map_err(|e| e.to_string())?
                    .0
            }
            _ => image,
        };
        let activation = match kind {
            ContractKind::Standby => ActivationClause::OnHandover {
                unreachable_for_ms: self.config.handover_after_ms,
            },
            _ => match start_at {
                Some(t) => ActivationClause::At(t),
                None => ActivationClause::Immediately,
            },
        };
        let permille = |p: u64| t.price.saturating_mul(p) / 1000;
        Ok(Contract {
            customer,
            provider,
            terms: Terms {
                cpu_millis: t.resources.cpu_millis,
                memory_bytes: t.resources.memory_bytes,
                storage_bytes: t.resources.storage_bytes,
                interfaces: t
                    .resources
                    .interfaces
                    .iter()
                    .map(|(i, n)| format!("{i:?}:{n}").to_lowercase())
                    .collect(),
                price: t.price,
                duration_ms: t.duration_ms,
            },
            service_image: image,
            config,
            activation,
            kind,
            duration_ms: t.duration_ms,
            qos: Qos {
                max_activation_delay_ms: self.config.max_activation_delay_ms,
                min_uptime_permille: self.config.min_uptime_permille,
                heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            },
            stakes: Stakes {
                customer_stake: permille(self.config.customer_stake_permille),
                provider_stake: permille(self.config.provider_stake_permille),
            },
            payment: t.price,
            committee: arbitrators,
            created_at: now_ms(),
            // Deterministic per award so a retry proposes the same contract.
            nonce: u64::from_le_bytes(t.award.0[..8].try_into().unwrap_or_default()),
        })
    }

    async fn on_agreed(&mut self, terms: AgreedTerms) {
        let me = self.signer.node_id();
        if terms.provider == me {
            self.as_provider.insert(terms.award, terms);
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
        let msg = DealMsg::Propose {
            award: terms.award,
            contract: Box::new(contract.clone()),
            customer_sig,
        };
        let Some(env) = self.seal(&msg) else { return };
        // The provider may not have processed the agreement yet: retry a few times.
        for attempt in 0..10u64 {
            match self
                .network
                .request(peer, &env)
                .await
                .map(|r| r.body::<DealMsg>(Kind::Deal))
            {
                Ok(Ok(DealMsg::Signed { provider_sig })) => {
                    let signed = SignedContract {
                        contract,
                        customer_sig,
                        provider_sig,
                    };
                    match signed.verify() {
                        Ok(id) => match self
                            .ledger
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
                        Err(e) => warn!(error = %e, "provider's signature does not verify"),
                    }
                    return;
                }
                Ok(Ok(DealMsg::Refused { reason }))
                    if reason.contains("unknown award") && attempt < 9 =>
                {
                    debug!(%reason, "provider not ready, retrying");
                }
                Ok(Ok(DealMsg::Refused { reason })) => {
                    return warn!(%reason, "provider refused to sign the contract");
                }
                Ok(Ok(DealMsg::Propose { .. })) | Ok(Err(_)) | Err(_) if attempt < 9 => {}
                other => return warn!(result = ?other.err(), "contract not countersigned"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100 * (attempt + 1))).await;
        }
    }

    fn countersign(
        &mut self,
        from: NodeId,
        award: AwardId,
        contract: Contract,
        customer_sig: Signature,
    ) -> DealMsg {
        let refuse = |reason: String| DealMsg::Refused { reason };
        let Some(t) = self.as_provider.get(&award) else {
            return refuse(format!("unknown award {}", award.short()));
        };
        let me = self.signer.node_id();
        if contract.customer != from || contract.customer != t.customer || contract.provider != me {
            return refuse("contract parties differ from the deal".into());
        }
        if contract.payment != t.price
            || contract.terms.price != t.price
            || contract.duration_ms != t.duration_ms
            || contract.terms.cpu_millis != t.resources.cpu_millis
            || contract.terms.memory_bytes != t.resources.memory_bytes
            || contract.kind != kind_of(t.kind)
        {
            return refuse("contract terms differ from the agreed terms".into());
        }
        let max_stake = t
            .price
            .saturating_mul(self.config.max_provider_stake_permille)
            / 1000;
        if contract.stakes.provider_stake > max_stake {
            return refuse(format!(
                "provider stake {} exceeds this node's limit {max_stake}",
                contract.stakes.provider_stake
            ));
        }
        if agora_market::verify(
            &from,
            agora_market::Domain::CONTRACT,
            &contract.canonical_bytes().unwrap_or_default(),
            &customer_sig,
        )
        .is_err()
        {
            return refuse("customer signature does not verify".into());
        }
        match contract.sign_as(&self.signer) {
            Ok((_, provider_sig)) => {
                info!(award = %award.short(), "countersigned contract");
                self.as_provider.remove(&award);
                DealMsg::Signed { provider_sig }
            }
            Err(e) => refuse(e.to_string()),
        }
    }
}
