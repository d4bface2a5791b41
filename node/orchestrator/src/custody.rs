//! Storage contracts, the provider's side: keep the customer's file (custody). The arbitrators
//! challenge it once per audit round and put each outcome on the ledger, where settlement
//! judges the provider by the share of challenges it passed (decided by the role machine,
//! performed in `roles`).

use agora_contracts::{Contract, ContractId, ContractStatus, Duty, TxKind};
use cid::Cid;
use tracing::Instrument;

use super::{Done, Orchestrator};
use agora_wire::now_ms;

/// The name a storage contract's custody holds its file under ([`agora_exchange::holds`]).
fn custody_holder(contract: &ContractId) -> String {
    format!(
        "{}{contract}",
        agora_exchange::custody::CUSTODY_HOLDER_PREFIX
    )
}

impl Orchestrator {
    /// Provider: fetches, pins and checks the file and its commitment in the background; a
    /// file larger than the storage the contract buys is refused. With `give_up_at` (Unix ms:
    /// a slot's, half the report grace past its activation deadline), custody still not taken
    /// then is given up (what it holds let go of) and refused, so the contract is called off
    /// while the provider still may: a customer serving its file slowly, never idle long
    /// enough for the fetch to fail, no longer gets the provider slashed `NoActivation`
    /// (THREATS C15).
    pub(super) fn take_custody(
        &mut self,
        contract: ContractId,
        c: &Contract,
        give_up_at: Option<u64>,
    ) {
        if !self.taking_custody.insert(contract) {
            return;
        }
        let (file, commitment, max) = (c.service_image, c.config, c.terms.storage_bytes);
        let storage = self.storage.clone();
        let done = self.done_tx.clone();
        tokio::spawn(
            async move {
                let holder = custody_holder(&contract);
                let taking = storage.take_custody(file, commitment, max, &holder);
                let taken = match give_up_at {
                    None => Some(taking.await),
                    Some(t) => {
                        let left = std::time::Duration::from_millis(t.saturating_sub(now_ms()));
                        tokio::time::timeout(left, taking).await.ok()
                    }
                };
                let result = match taken {
                    Some(r) => r.map(|_| ()).map_err(|e| e.to_string()),
                    None => {
                        storage.release_custody(file, commitment, &holder).await;
                        Err(format!(
                            "file {file} not fetched by {}, half the report grace past the \
                             slot's activation deadline: given up",
                            give_up_at.unwrap_or_default()
                        ))
                    }
                };
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
            // call the contract off while the ledger allows it instead of being slashed for it
            // (the role machine's rule).
            self.timeline.push("custody-refused", Some(&contract), e);
            self.storage.challenge_gate().remove(&contract.0);
            if agora_roles::custody_refusal_cancels(rec.status) {
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

    /// Provider: the file is held; report the activation (sent again by
    /// [`Self::resend_storage_activations`] until the ledger shows it).
    pub(super) async fn activate_storage(&mut self, contract: ContractId, file: Cid) {
        let reported = self
            .record(contract)
            .await
            .and_then(|r| r.activated_at)
            .is_some();
        if reported || self.storage_activation.contains_key(&contract) {
            return;
        }
        let at = now_ms();
        self.storage_activation.insert(contract, (at, at));
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

    /// Provider: sends again each storage activation report the ledger has not applied
    /// [`super::ACTIVATION_RESEND_MS`] after it was last sent, with the activation time first
    /// reported (a report refused in its block, e.g. by a block stamped behind this node's
    /// clock, used its nonce and is not retried by anyone else: THREATS C10); forgets those
    /// the ledger shows activated or no longer armed.
    pub(super) async fn resend_storage_activations(&mut self, now: u64) {
        let due: Vec<(ContractId, u64)> = self
            .storage_activation
            .iter()
            .filter(|(_, (_, sent))| now >= sent.saturating_add(super::ACTIVATION_RESEND_MS))
            .map(|(id, (at, _))| (*id, *at))
            .collect();
        for (contract, at) in due {
            let pending = self
                .record(contract)
                .await
                .is_some_and(|r| r.activated_at.is_none() && r.status == ContractStatus::Armed);
            if !pending {
                self.storage_activation.remove(&contract);
                continue;
            }
            tracing::warn!(contract = %contract.short(), "storage activation not on the ledger yet: reporting it again");
            self.storage_activation.insert(contract, (at, now));
            self.submit(
                TxKind::ReportActivation {
                    contract,
                    activated_at: at,
                },
                "activation",
            )
            .await;
        }
    }

    /// Provider: the contract closed; no more challenges are answered for it, and the file it
    /// kept here, if any, may go. Whether it was a storage contract this node kept a file for.
    pub(super) async fn end_custody(&mut self, contract: ContractId) -> bool {
        self.storage.challenge_gate().remove(&contract.0);
        self.storage_activation.remove(&contract);
        let Some((file, commitment)) = self.stored.remove(&contract) else {
            return false;
        };
        self.storage
            .release_custody(file, commitment, &custody_holder(&contract))
            .await;
        self.timeline.push(
            "released",
            Some(&contract),
            format!("storage contract closed; {file} let go of"),
        );
        true
    }
}
