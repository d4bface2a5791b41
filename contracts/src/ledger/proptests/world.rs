//! The random-operation model behind the ledger property tests.

use std::collections::BTreeMap;

use agora_market::{KeySigner, Signer};
use proptest::prelude::*;

use crate::attestation::Liveness;
use crate::contract::ContractId;
use crate::ledger::*;
use crate::test_utils::{ContractBuilder, genesis_with, test_cid, tx};

pub(super) const ACCOUNTS: usize = 4;
pub(super) const ARBITRATORS: usize = 4;

#[derive(Clone, Debug)]
pub(super) enum Op {
    Advance(u64),
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
    },
    Faucet {
        who: usize,
        amount: u64,
    },
    Register {
        customer: usize,
        provider: usize,
        kind: u8,
        payment: u64,
        stakes: (u64, u64),
        nonce: u64,
    },
    Migrate {
        who: usize,
        c: usize,
    },
    Arm {
        who: usize,
        c: usize,
    },
    Attest {
        arb: usize,
        subject: usize,
        down: bool,
        since_back: u64,
    },
    Activate {
        who: usize,
        c: usize,
        back: u64,
    },
    Heartbeat {
        who: usize,
        c: usize,
        skip: u64,
        len: u64,
    },
    SettleUptime {
        who: usize,
        c: usize,
    },
    Settle {
        who: usize,
        c: usize,
        reason: u8,
    },
    Cancel {
        who: usize,
        c: usize,
    },
    Expire {
        who: usize,
        c: usize,
    },
    Storage {
        who: usize,
        c: usize,
        back: u64,
        passed: bool,
    },
    Probe {
        who: usize,
        c: usize,
        back: u64,
        up: bool,
    },
    /// Three arbitrators report contract `c`'s current probe interval (or audit round).
    QuorumReport {
        c: usize,
        back: u64,
        good: bool,
    },
    /// Account `reporter` reports conflicting votes of signer `voter` (arbitrator or not).
    Equivocate {
        voter: usize,
        reporter: usize,
        height: u64,
    },
    /// An empty block at the current time (time-driven settlement, a new faucet window).
    Block,
    Replay(usize),
    /// Three arbitrators attest contract `c`'s customer unreachable.
    Quorum {
        c: usize,
        since_back: u64,
    },
    Overspend {
        who: usize,
    },
}

fn who() -> impl Strategy<Value = usize> {
    0..ACCOUNTS + ARBITRATORS
}

/// A sender for a contract op: any signer, or (biased) the contract's provider or customer.
fn party() -> impl Strategy<Value = usize> {
    0..ACCOUNTS + ARBITRATORS + 8
}

pub(super) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..15_000).prop_map(Op::Advance),
        2 => (who(), who(), 0u64..12_000).prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        1 => (who(), 0u64..2_000_000).prop_map(|(who, amount)| Op::Faucet { who, amount }),
        1 => (0..ACCOUNTS, 0..ACCOUNTS, 0u8..4, 0u64..5_000, (0u64..2_000, 0u64..8_000), 0u64..4)
            .prop_map(|(customer, provider, kind, payment, stakes, nonce)| Op::Register {
                customer, provider, kind, payment, stakes, nonce
            }),
        3 => (party(), 0usize..8).prop_map(|(who, c)| Op::Migrate { who, c }),
        3 => (party(), 0usize..8).prop_map(|(who, c)| Op::Arm { who, c }),
        1 => (0..ARBITRATORS + 1, 0..ACCOUNTS, any::<bool>(), 0u64..30_000)
            .prop_map(|(arb, subject, down, since_back)| Op::Attest { arb, subject, down, since_back }),
        4 => (party(), 0usize..8, 0u64..10_000).prop_map(|(who, c, back)| Op::Activate { who, c, back }),
        4 => (party(), 0usize..8, 0u64..500, 0u64..40_000)
            .prop_map(|(who, c, skip, len)| Op::Heartbeat { who, c, skip, len }),
        1 => (party(), 0usize..8).prop_map(|(who, c)| Op::SettleUptime { who, c }),
        3 => (party(), 0usize..8, 0u8..3).prop_map(|(who, c, reason)| Op::Settle { who, c, reason }),
        1 => (party(), 0usize..8).prop_map(|(who, c)| Op::Cancel { who, c }),
        1 => (party(), 0usize..8).prop_map(|(who, c)| Op::Expire { who, c }),
        2 => (party(), 0usize..8, 0u64..4, any::<bool>())
            .prop_map(|(who, c, back, passed)| Op::Storage { who, c, back, passed }),
        2 => (party(), 0usize..8, 0u64..4, any::<bool>())
            .prop_map(|(who, c, back, up)| Op::Probe { who, c, back, up }),
        3 => (0usize..8, 0u64..3, any::<bool>())
            .prop_map(|(c, back, good)| Op::QuorumReport { c, back, good }),
        1 => (who(), who(), 0u64..3)
            .prop_map(|(voter, reporter, height)| Op::Equivocate { voter, reporter, height }),
        1 => Just(Op::Block),
        1 => (0usize..64).prop_map(Op::Replay),
        2 => (0usize..8, 0u64..20_000).prop_map(|(c, since_back)| Op::Quorum { c, since_back }),
        1 => who().prop_map(|who| Op::Overspend { who }),
    ]
}

pub(super) struct World {
    pub ledger: Ledger,
    pub signers: Vec<KeySigner>,
    pub now: Timestamp,
    pub applied: Vec<SignedTransaction>,
    /// Ledger time at which each accepted transaction was applied.
    pub applied_at: Vec<Timestamp>,
    pub minted: u128,
    pub burned: u128,
    pub genesis_supply: u128,
    pub finals: BTreeMap<ContractId, u32>,
    /// Empty blocks applied (the replica test replays only worlds without them).
    pub blocks: u32,
}

impl World {
    pub fn new() -> Self {
        let (genesis, accounts, committee) = genesis_with(ACCOUNTS, ARBITRATORS, 10_000);
        let ledger = Ledger::from_genesis(&genesis).unwrap();
        let genesis_supply = u128::from(ledger.supply().genesis);
        World {
            ledger,
            signers: accounts.into_iter().chain(committee).collect(),
            now: 1_000,
            applied: Vec::new(),
            applied_at: Vec::new(),
            minted: 0,
            burned: 0,
            genesis_supply,
            finals: BTreeMap::new(),
            blocks: 0,
        }
    }

    fn contract(&self, i: usize) -> ContractId {
        let ids: Vec<ContractId> = self.ledger.contracts().keys().copied().collect();
        ids.get(i % ids.len().max(1))
            .copied()
            .unwrap_or(ContractId([7; 32]))
    }

    /// Maps a `party()` draw to a signer index: ≥ 8 picks the contract's provider or customer.
    fn sender(&self, who: usize, c: usize) -> usize {
        let n = ACCOUNTS + ARBITRATORS;
        if who < n {
            return who;
        }
        let Some(rec) = self.ledger.contract(&self.contract(c)) else {
            return who % n;
        };
        let target = if who < n + 5 {
            rec.contract.provider
        } else {
            rec.contract.customer
        };
        self.signers
            .iter()
            .position(|s| s.node_id() == target)
            .unwrap_or(0)
    }

    fn node(&self, i: usize) -> agora_market::NodeId {
        self.signers[i % self.signers.len()].node_id()
    }

    fn kind_for(&self, op: &Op) -> Option<(usize, TxKind)> {
        Some(match *op {
            Op::Advance(_)
            | Op::Replay(_)
            | Op::Quorum { .. }
            | Op::QuorumReport { .. }
            | Op::Block => return None,
            Op::Transfer { from, to, amount } => (
                from,
                TxKind::Transfer {
                    to: self.node(to),
                    amount,
                },
            ),
            Op::Faucet { who, amount } => (who, TxKind::Faucet { amount }),
            Op::Register {
                customer,
                provider,
                kind,
                payment,
                stakes,
                nonce,
            } => {
                let mut b = ContractBuilder::new(customer as u64 + 1, provider as u64 + 1)
                    .payment(payment)
                    .stakes(stakes.0, stakes.1)
                    .duration(20_000 + nonce * 10_000)
                    .nonce(nonce)
                    .qos(crate::contract::Qos {
                        max_activation_delay_ms: 5_000,
                        min_uptime_permille: if nonce % 2 == 0 { 0 } else { 900 },
                        heartbeat_interval_ms: 1_000,
                    });
                b = match kind {
                    0 => b,
                    1 => b.standby(3_000),
                    2 => b.storage(),
                    _ => b.at(self.now + 5_000),
                };
                let c = b.build();
                let (cs, ps) = (&self.signers[customer], &self.signers[provider]);
                let signed = c.sign_both(cs, ps).ok()?;
                (customer, TxKind::RegisterContract(Box::new(signed)))
            }
            Op::Migrate { who, c } => (self.sender(who, c), TxKind::MarkMigrated(self.contract(c))),
            Op::Arm { who, c } => (self.sender(who, c), TxKind::MarkArmed(self.contract(c))),
            Op::Attest {
                arb,
                subject,
                down,
                since_back,
            } => {
                let liveness = if down {
                    Liveness::Unreachable {
                        since: self.now.saturating_sub(since_back),
                    }
                } else {
                    Liveness::Reachable
                };
                // arb == ARBITRATORS picks a non-committee account (must be refused).
                let signer = if arb < ARBITRATORS {
                    ACCOUNTS + arb
                } else {
                    subject
                };
                (
                    signer,
                    TxKind::Attest {
                        subject: self.node(subject),
                        liveness,
                    },
                )
            }
            Op::Activate { who, c, back } => {
                let id = self.contract(c);
                // Mostly plausible: `back` after the trigger (late when > 5_000), capped at now.
                let at = match self.ledger.contract(&id).and_then(|r| r.trigger_at) {
                    Some(t) => t.saturating_add(back).min(self.now),
                    None => self.now.saturating_sub(back),
                };
                (
                    self.sender(who, c),
                    TxKind::ReportActivation {
                        contract: id,
                        activated_at: at,
                    },
                )
            }
            Op::Heartbeat { who, c, skip, len } => {
                let id = self.contract(c);
                let start = self
                    .ledger
                    .contract(&id)
                    .and_then(|r| r.last_uptime_end.or(r.activated_at))
                    .unwrap_or(self.now)
                    .saturating_add(skip);
                let batch = HeartbeatBatch {
                    // Mostly valid: clipped to now unless `len` is odd (then possibly in the future).
                    intervals: vec![UptimeInterval {
                        from: start,
                        to: if len % 2 == 0 {
                            start.saturating_add(len).min(self.now)
                        } else {
                            start.saturating_add(len)
                        },
                    }],
                    readings_processed: len,
                    data_proofs: vec![test_cid(&start.to_le_bytes())],
                };
                (
                    self.sender(who, c),
                    TxKind::Heartbeats {
                        contract: id,
                        batch,
                    },
                )
            }
            Op::SettleUptime { who, c } => {
                (self.sender(who, c), TxKind::SettleUptime(self.contract(c)))
            }
            Op::Settle { who, c, reason } => {
                let reason = [
                    SettleReason::CustomerBack,
                    SettleReason::DurationEnded,
                    SettleReason::NoActivation,
                ][usize::from(reason) % 3];
                (
                    self.sender(who, c),
                    TxKind::Settle {
                        contract: self.contract(c),
                        reason,
                    },
                )
            }
            Op::Cancel { who, c } => (self.sender(who, c), TxKind::Cancel(self.contract(c))),
            Op::Expire { who, c } => (self.sender(who, c), TxKind::Expire(self.contract(c))),
            Op::Storage {
                who,
                c,
                back,
                passed,
            } => (
                self.sender(who, c),
                TxKind::StorageProofResult {
                    contract: self.contract(c),
                    round: self.round(c, back),
                    challenge: test_cid(b"c"),
                    passed,
                },
            ),
            Op::Probe { who, c, back, up } => (
                self.sender(who, c),
                TxKind::ProbeResult {
                    contract: self.contract(c),
                    interval: self.round(c, back),
                    up,
                },
            ),
            Op::Equivocate {
                voter,
                reporter,
                height,
            } => {
                let voter = &self.signers[voter % self.signers.len()];
                let evidence = crate::ledger::tests::equivocation(voter, height, 0);
                (reporter, TxKind::ReportEquivocation(Box::new(evidence)))
            }
            Op::Overspend { who } => {
                let amount = self.ledger.spendable(&self.node(who)).saturating_add(1);
                (
                    who,
                    TxKind::Transfer {
                        to: self.node(who + 1),
                        amount,
                    },
                )
            }
        })
    }

    /// The evidence round `back` rounds before the current one of contract `c` (0 if none).
    fn round(&self, c: usize, back: u64) -> u64 {
        self.ledger
            .contract(&self.contract(c))
            .and_then(|r| r.evidence_round(self.now))
            .unwrap_or(0)
            .saturating_sub(back)
    }

    pub fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if let Op::Advance(ms) = op {
            self.now += ms;
            return Ok(());
        }
        if let Op::Block = op {
            let height = self.ledger.height() + 1;
            let outcome = self.ledger.apply_block(height, self.now, &[]).unwrap();
            self.record_events(&outcome.events)?;
            // A block changes the state the replica test replays against: keep it out of that
            // comparison by recording nothing as applied.
            self.blocks += 1;
            return self.check_conservation();
        }
        if let Op::QuorumReport { c, back, good } = *op {
            let id = self.contract(c);
            let Some(rec) = self.ledger.contract(&id) else {
                return Ok(());
            };
            let kind = |round| match rec.contract.kind {
                crate::contract::ContractKind::Storage => TxKind::StorageProofResult {
                    contract: id,
                    round,
                    challenge: test_cid(b"q"),
                    passed: good,
                },
                _ => TxKind::ProbeResult {
                    contract: id,
                    interval: round,
                    up: good,
                },
            };
            let kind = kind(self.round(c, back));
            for arb in 0..3 {
                let stx = tx(&self.ledger, &self.signers[ACCOUNTS + arb], kind.clone());
                self.submit(op, stx)?;
            }
            return Ok(());
        }
        if let Op::Quorum { c, since_back } = *op {
            let subject = self
                .ledger
                .contract(&self.contract(c))
                .map(|r| r.contract.customer);
            let Some(subject) = subject else {
                return Ok(());
            };
            let since = self.now.saturating_sub(since_back);
            for arb in 0..3 {
                let kind = TxKind::Attest {
                    subject,
                    liveness: Liveness::Unreachable { since },
                };
                self.submit(op, tx(&self.ledger, &self.signers[ACCOUNTS + arb], kind))?;
            }
            return Ok(());
        }
        let stx = match op {
            Op::Replay(i) if !self.applied.is_empty() => {
                self.applied[i % self.applied.len()].clone()
            }
            Op::Replay(_) => return Ok(()),
            _ => match self.kind_for(op) {
                Some((who, kind)) => {
                    tx(&self.ledger, &self.signers[who % self.signers.len()], kind)
                }
                None => return Ok(()),
            },
        };
        self.submit(op, stx)
    }

    fn submit(&mut self, op: &Op, stx: SignedTransaction) -> Result<(), TestCaseError> {
        let before = self.ledger.state_hash().unwrap();
        let result = self.ledger.apply(self.now, &stx);
        match result {
            Err(_) => prop_assert_eq!(
                before,
                self.ledger.state_hash().unwrap(),
                "refused tx changed state"
            ),
            Ok(events) => {
                prop_assert!(!matches!(op, Op::Replay(_)), "replayed tx was accepted");
                prop_assert!(
                    !matches!(op, Op::Overspend { .. }),
                    "overspend was accepted"
                );
                self.record_events(&events)?;
                self.applied.push(stx);
                self.applied_at.push(self.now);
            }
        }
        self.check_conservation()
    }

    /// Tracks minting, burning and final states from accepted events.
    fn record_events(&mut self, events: &[LedgerEvent]) -> Result<(), TestCaseError> {
        for e in events {
            match e {
                LedgerEvent::Minted { amount, .. } => self.minted += u128::from(*amount),
                LedgerEvent::ArbitratorSlashed { amount, .. } => self.burned += u128::from(*amount),
                LedgerEvent::StatusChanged { contract, to, .. } if to.is_final() => {
                    let n = self.finals.entry(*contract).or_default();
                    *n += 1;
                    prop_assert_eq!(*n, 1, "contract reached a final state twice");
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_conservation(&self) -> Result<(), TestCaseError> {
        if let Err(e) = self.ledger.audit() {
            return Err(TestCaseError::fail(e));
        }
        let balances: u128 = self
            .ledger
            .accounts()
            .values()
            .map(|a| u128::from(a.balance))
            .sum();
        let escrow: u128 = self
            .ledger
            .contracts()
            .values()
            .map(|r| r.escrow.total().map_or(u128::MAX, u128::from))
            .sum();
        let bonds: u128 = self
            .ledger
            .accounts()
            .values()
            .map(|a| u128::from(a.bonded))
            .sum();
        prop_assert_eq!(
            balances + escrow + bonds + self.burned,
            self.genesis_supply + self.minted
        );
        prop_assert_eq!(u128::from(self.ledger.supply().burned), self.burned);
        for r in self.ledger.contracts().values() {
            prop_assert!(
                r.paid_to_provider <= r.contract.payment,
                "paid more than the payment"
            );
        }
        Ok(())
    }
}
