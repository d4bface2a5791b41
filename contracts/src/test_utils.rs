//! Builders for tests and simulations: funded genesis, contracts, signed transactions.

use agora_market::{KeySigner, NodeId, Signer, Timestamp};
use cid::Cid;
use cid::multihash::Multihash;

use crate::contract::{
    ActivationClause, Amount, Contract, ContractKind, Qos, SignedContract, Stakes, Terms,
};
use crate::ledger::{
    Genesis, GenesisAccount, Ledger, LedgerParams, SignedTransaction, Transaction, TxKind,
};

/// Chain id used by test genesis files.
pub const TEST_CHAIN: &str = "agora-test";
/// First seed of the test committee's keys.
pub const COMMITTEE_SEED: u64 = 100;

/// A deterministic key for `seed`.
pub fn signer(seed: u64) -> KeySigner {
    KeySigner::from_seed(seed)
}

/// The node id for `seed`.
pub fn node(seed: u64) -> NodeId {
    signer(seed).node_id()
}

/// The keys of a committee of `n` arbitrators (seeds `COMMITTEE_SEED..`).
pub fn committee_signers(n: usize) -> Vec<KeySigner> {
    (0..n as u64).map(|i| signer(COMMITTEE_SEED + i)).collect()
}

/// What each test arbitrator holds at genesis: its bond, locked at genesis, plus
/// [`ARBITRATOR_SPENDABLE`].
pub fn arbitrator_genesis_balance(params: &LedgerParams) -> Amount {
    params.arbitrator_bond.saturating_add(ARBITRATOR_SPENDABLE)
}

/// Spendable balance of each test arbitrator after its bond is locked.
pub const ARBITRATOR_SPENDABLE: Amount = 1_000;

/// Genesis with `n` accounts (seeds `1..=n`) each holding `balance`, a committee of `c` (funded
/// with [`arbitrator_genesis_balance`]: their bond plus [`ARBITRATOR_SPENDABLE`]), and the
/// faucet enabled. Returns the genesis, account keys and committee keys.
pub fn genesis_with(
    n: usize,
    c: usize,
    balance: Amount,
) -> (Genesis, Vec<KeySigner>, Vec<KeySigner>) {
    let accounts: Vec<KeySigner> = (1..=n as u64).map(signer).collect();
    let committee = committee_signers(c);
    let params = LedgerParams::default();
    let arbitrator_balance = arbitrator_genesis_balance(&params);
    let genesis = Genesis {
        chain_id: TEST_CHAIN.to_string(),
        accounts: accounts
            .iter()
            .map(|s| GenesisAccount {
                id: s.node_id(),
                balance,
            })
            .chain(committee.iter().map(|s| GenesisAccount {
                id: s.node_id(),
                balance: arbitrator_balance,
            }))
            .collect(),
        committee: committee.iter().map(|s| s.node_id()).collect(),
        faucet_enabled: true,
        params,
    };
    (genesis, accounts, committee)
}

/// A CIDv1 (raw codec, blake3 multihash) over `data`.
pub fn test_cid(data: &[u8]) -> Cid {
    let digest = blake3::hash(data);
    match Multihash::wrap(0x1e, digest.as_bytes()) {
        Ok(mh) => Cid::new_v1(0x55, mh),
        Err(_) => Cid::default(),
    }
}

/// Signs `kind` from `signer` with its next nonce on `ledger`.
pub fn tx(ledger: &Ledger, signer: &KeySigner, kind: TxKind) -> SignedTransaction {
    tx_with_nonce(
        ledger.chain_id(),
        signer,
        ledger.next_nonce(&signer.node_id()),
        kind,
    )
}

/// Signs `kind` from `signer` with an explicit nonce.
pub fn tx_with_nonce(
    chain: &str,
    signer: &KeySigner,
    nonce: u64,
    kind: TxKind,
) -> SignedTransaction {
    let body = Transaction {
        chain_id: chain.to_string(),
        sender: signer.node_id(),
        nonce,
        kind,
    };
    match body.sign(signer) {
        Ok(s) => s,
        // Unreachable: the body's sender is the signer.
        Err(e) => panic!("test tx signing failed: {e}"),
    }
}

/// Builds contracts with sensible defaults: hosted, immediate, 4-arbitrator committee.
#[derive(Clone, Debug)]
pub struct ContractBuilder {
    contract: Contract,
    customer_seed: u64,
    provider_seed: u64,
}

impl ContractBuilder {
    /// A hosted contract between the keys of two seeds.
    pub fn new(customer_seed: u64, provider_seed: u64) -> Self {
        let contract = Contract {
            customer: node(customer_seed),
            provider: node(provider_seed),
            terms: Terms {
                cpu_millis: 250,
                memory_bytes: 64 << 20,
                storage_bytes: 16 << 20,
                interfaces: vec!["temp0".into()],
                price: 1_000,
                duration_ms: 60_000,
            },
            service_image: test_cid(b"image"),
            config: test_cid(b"config"),
            activation: ActivationClause::Immediately,
            kind: ContractKind::Hosted,
            duration_ms: 60_000,
            qos: Qos {
                max_activation_delay_ms: 5_000,
                min_uptime_permille: 900,
                heartbeat_interval_ms: 1_000,
            },
            stakes: Stakes {
                customer_stake: 100,
                provider_stake: 500,
            },
            payment: 1_000,
            committee: committee_signers(4).iter().map(|s| s.node_id()).collect(),
            created_at: 0,
            nonce: 0,
        };
        ContractBuilder {
            contract,
            customer_seed,
            provider_seed,
        }
    }

    /// A standby contract that activates after `unreachable_for_ms` of attested outage.
    pub fn standby(mut self, unreachable_for_ms: u64) -> Self {
        self.contract.kind = ContractKind::Standby;
        self.contract.activation = ActivationClause::OnHandover { unreachable_for_ms };
        self
    }

    /// A storage contract.
    pub fn storage(mut self) -> Self {
        self.contract.kind = ContractKind::Storage;
        self.contract.activation = ActivationClause::Immediately;
        self
    }

    /// Activation at a fixed time.
    pub fn at(mut self, t: Timestamp) -> Self {
        self.contract.activation = ActivationClause::At(t);
        self
    }

    /// Payment for the full duration.
    pub fn payment(mut self, payment: Amount) -> Self {
        self.contract.payment = payment;
        self.contract.terms.price = payment;
        self
    }

    /// Both stakes.
    pub fn stakes(mut self, customer: Amount, provider: Amount) -> Self {
        self.contract.stakes = Stakes {
            customer_stake: customer,
            provider_stake: provider,
        };
        self
    }

    /// Service duration.
    pub fn duration(mut self, ms: u64) -> Self {
        self.contract.duration_ms = ms;
        self.contract.terms.duration_ms = ms;
        self
    }

    /// QoS obligations.
    pub fn qos(mut self, qos: Qos) -> Self {
        self.contract.qos = qos;
        self
    }

    /// The arbitrator committee.
    pub fn committee(mut self, committee: Vec<NodeId>) -> Self {
        self.contract.committee = committee;
        self
    }

    /// The distinguishing nonce.
    pub fn nonce(mut self, nonce: u64) -> Self {
        self.contract.nonce = nonce;
        self
    }

    /// When the parties signed it (`created_at`; 0 by default).
    pub fn created(mut self, t: Timestamp) -> Self {
        self.contract.created_at = t;
        self
    }

    /// The unsigned body.
    pub fn build(self) -> Contract {
        self.contract
    }

    /// The body signed by both parties' seed keys.
    pub fn signed(self) -> SignedContract {
        let (c, p) = (signer(self.customer_seed), signer(self.provider_seed));
        match self.contract.sign_both(&c, &p) {
            Ok(s) => s,
            // Unreachable: the builder's parties are exactly these keys.
            Err(e) => panic!("test contract signing failed: {e}"),
        }
    }
}
