//! Storage contracts: the provider keeps the customer's file (custody), the arbitrators
//! challenge it periodically and put each outcome on the ledger, where settlement judges the
//! provider by the share of challenges it passed.

use agora_contracts::{Contract, ContractId, ContractStatus, Duty, TxKind};
use agora_market::NodeId;
use cid::Cid;
use tracing::{Instrument, debug};

use super::{Audit, Done, Orchestrator};
use agora_exchange::audit::Verdict;
use agora_wire::now_ms;

impl Orchestrator {
    /// Provider: fetches, pins and checks the file and its commitment in the background; a
    /// file larger than the storage the contract buys is refused.
    pub(super) fn take_custody(&mut self, contract: ContractId, c: &Contract) {
        if !self.taking_custody.insert(contract) {
            return;
        }
        let (file, commitment, max) = (c.service_image, c.config, c.terms.storage_bytes);
        let storage = self.storage.clone();
        let done = self.done_tx.clone();
        tokio::spawn(
            async move {
                let result = storage
                    .take_custody(file, commitment, max)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = done
                    .send(Done::Custody {
                        contract,
                        file,
                        commitment,
                        result,
                    })
                    .await;
            }
            .in_current_span(),
        );
    }

    /// Provider: custody taken (or refused); moves the contract on from where the ledger has it.
    pub(super) async fn on_custody(
        &mut self,
        contract: ContractId,
        file: Cid,
        commitment: Cid,
        result: Result<(), String>,
    ) {
        self.taking_custody.remove(&contract);
        let Some(rec) = self.record(contract).await else {
            return;
        };
        if let Err(e) = result {
            // A commitment that does not describe the file would fail every honest answer:
            // call the contract off before activation instead of being slashed for it.
            self.timeline.push("custody-refused", Some(&contract), e);
            self.storage.challenge_gate().remove(&contract.0);
            if matches!(
                rec.status,
                ContractStatus::Validated | ContractStatus::Migrated | ContractStatus::Armed
            ) {
                self.submit(TxKind::Cancel(contract), "cancel").await;
            }
            return;
        }
        self.stored.insert(contract, (file, commitment));
        self.timeline.push(
            "stored",
            Some(&contract),
            format!("file {file} fetched, verified against commitment {commitment}, pinned"),
        );
        match rec.status {
            ContractStatus::Validated => {
                self.submit(TxKind::MarkMigrated(contract), "migrated")
                    .await;
            }
            ContractStatus::Migrated => self.on_duty(Duty::Arm { contract }).await,
            ContractStatus::Armed | ContractStatus::Active => {
                if let Some(t) = rec.trigger_at {
                    self.activate_at(contract, t).await;
                }
            }
            _ => {}
        }
    }

    /// Provider: the file is held; report the activation once.
    pub(super) async fn activate_storage(&mut self, contract: ContractId, file: Cid) {
        let reported = self
            .record(contract)
            .await
            .and_then(|r| r.activated_at)
            .is_some();
        if reported {
            return;
        }
        let at = now_ms();
        if self
            .submit(
                TxKind::ReportActivation {
                    contract,
                    activated_at: at,
                },
                "activation",
            )
            .await
        {
            self.timeline.push(
                "activated",
                Some(&contract),
                format!("holding {file}; answering storage challenges"),
            );
        }
    }

    /// Provider: the contract closed; the file may go.
    pub(super) async fn release_custody(
        &mut self,
        contract: ContractId,
        file: Cid,
        commitment: Cid,
    ) {
        for cid in [file, commitment] {
            if let Err(e) = self.storage.unpin(cid).await {
                debug!(%cid, error = %e, "unpin after storage contract");
            }
        }
        self.timeline.push(
            "released",
            Some(&contract),
            format!("storage contract closed; {file} unpinned"),
        );
    }

    /// Arbitrator: starts challenging the provider of `contract`.
    pub(super) fn start_audit(
        &mut self,
        contract: ContractId,
        provider: NodeId,
        file: Cid,
        commitment: Cid,
        every_ms: u64,
    ) {
        if self.audits.contains_key(&contract) {
            return;
        }
        self.audits.insert(
            contract,
            Audit {
                provider,
                file,
                commitment_cid: commitment,
                commitment: None,
                every_ms,
                next_at: now_ms().saturating_add(every_ms),
                running: false,
            },
        );
        self.timeline.push(
            "auditing",
            Some(&contract),
            format!(
                "challenging {} for {file} every {every_ms} ms",
                provider.short()
            ),
        );
    }

    /// Arbitrator: starts the challenges that are due, each in the background.
    pub(super) fn run_due_audits(&mut self, now: u64) {
        for (contract, a) in self.audits.iter_mut() {
            if a.running || now < a.next_at {
                continue;
            }
            a.running = true;
            let (contract, provider, cid, known) =
                (*contract, a.provider, a.commitment_cid, a.commitment);
            let (storage, network, signer) = (
                self.storage.clone(),
                self.network.clone(),
                self.signer.clone(),
            );
            let done = self.done_tx.clone();
            tokio::spawn(
                async move {
                    let commitment = match known {
                        Some(c) => Some(c),
                        None => storage.commitment(cid).await.ok(),
                    };
                    let verdict = match &commitment {
                        Some(c) => Some(
                            agora_exchange::audit::challenge(&network, &signer, provider, c).await,
                        ),
                        None => None,
                    };
                    let _ = done
                        .send(Done::Audited {
                            contract,
                            verdict,
                            commitment,
                        })
                        .await;
                }
                .in_current_span(),
            );
        }
    }

    /// Arbitrator: records one challenge's outcome on the ledger.
    pub(super) async fn on_audited(
        &mut self,
        contract: ContractId,
        verdict: Option<Verdict>,
        commitment: Option<agora_storage::challenge::StorageCommitment>,
    ) {
        let rec = self.record(contract).await;
        let now = now_ms();
        let round = rec.as_ref().and_then(|r| r.evidence_round(now));
        // The next challenge falls in the middle of the next round, so every arbitrator reports
        // each round once and the rounds reach their quorum.
        let next_mid = round
            .and_then(|r| rec.as_ref()?.round_span(r.saturating_add(1)))
            .map(|(s, e)| s.saturating_add(e.saturating_sub(s) / 2));
        let Some(a) = self.audits.get_mut(&contract) else {
            return; // ended meanwhile
        };
        a.running = false;
        a.next_at = next_mid.unwrap_or_else(|| now.saturating_add(a.every_ms));
        if a.commitment.is_none() {
            a.commitment = commitment;
        }
        let file = a.file;
        let Some(verdict) = verdict else {
            self.timeline.push(
                "audit-skipped",
                Some(&contract),
                "commitment block not reachable from this node",
            );
            return;
        };
        let passed = verdict == Verdict::Passed;
        // The ledger counts results per evidence round; a challenge outside the contract's
        // service window has no round and is not reported.
        let Some(round) = round else {
            return;
        };
        if self
            .submit(
                TxKind::StorageProofResult {
                    contract,
                    round,
                    challenge: file,
                    passed,
                },
                "storage proof result",
            )
            .await
        {
            let detail = match verdict {
                Verdict::Passed => "passed".to_string(),
                Verdict::Failed(why) => format!("failed: {why}"),
            };
            self.timeline
                .push("storage-challenge", Some(&contract), detail);
        }
    }
}
