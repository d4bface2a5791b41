//! The provider's checks before it countersigns: every field of the proposed contract against
//! its own agreed terms, auction view, ledger view and [`DealPolicy`].

use agora_market::{Domain, NodeId, Signature, verify};

use super::{
    DealContext, DealPolicy, DealRefusal, TermsField, contract_image, deal_nonce, interfaces_of,
    kind_of, stake_of,
};
use crate::contract::{ActivationClause, Contract, ContractKind};

/// Checks the contract `sender` proposed for `ctx.terms` (this provider's own copy of the
/// award's agreed terms) before `me` countersigns. `ctx.committee` is this provider's own
/// ledger view ([`super::CommitteeView::of`]), `ctx.auction` its own market book's view of the
/// auction, `ctx.now` its clock. The customer signature is checked last.
pub fn check_proposal(
    ctx: &DealContext<'_>,
    policy: &DealPolicy,
    me: NodeId,
    sender: NodeId,
    contract: &Contract,
    customer_sig: &Signature,
) -> Result<(), DealRefusal> {
    check_parties(ctx, me, sender, contract)?;
    check_terms(ctx, contract)?;
    check_image_and_activation(ctx, policy, contract)?;
    check_qos_and_stakes(ctx, policy, contract)?;
    check_committee(ctx, contract)?;
    let skew = ctx.now.abs_diff(contract.created_at);
    if skew > policy.max_clock_skew_ms {
        return Err(DealRefusal::CreatedAtOutOfBounds {
            now: ctx.now,
            got: contract.created_at,
            max_skew_ms: policy.max_clock_skew_ms,
        });
    }
    let expected = deal_nonce(&ctx.terms.award);
    if contract.nonce != expected {
        return Err(DealRefusal::WrongNonce {
            expected,
            got: contract.nonce,
        });
    }
    contract.validate().map_err(|e| DealRefusal::Malformed {
        reason: e.to_string(),
    })?;
    let bytes = contract
        .canonical_bytes()
        .map_err(|e| DealRefusal::Malformed {
            reason: e.to_string(),
        })?;
    verify(&contract.customer, Domain::CONTRACT, &bytes, customer_sig)
        .map_err(|_| DealRefusal::BadCustomerSignature)
}

fn check_parties(
    ctx: &DealContext<'_>,
    me: NodeId,
    sender: NodeId,
    c: &Contract,
) -> Result<(), DealRefusal> {
    if sender != c.customer {
        return Err(DealRefusal::SenderNotCustomer {
            sender,
            customer: c.customer,
        });
    }
    if c.customer != ctx.terms.customer {
        return Err(DealRefusal::WrongCustomer {
            expected: ctx.terms.customer,
            got: c.customer,
        });
    }
    if c.provider != me || ctx.terms.provider != me {
        return Err(DealRefusal::WrongProvider {
            expected: me,
            got: c.provider,
        });
    }
    Ok(())
}

fn check_terms(ctx: &DealContext<'_>, c: &Contract) -> Result<(), DealRefusal> {
    let t = ctx.terms;
    let expected_kind = kind_of(t.kind);
    if c.kind != expected_kind {
        return Err(DealRefusal::WrongKind {
            expected: expected_kind,
            got: c.kind,
        });
    }
    let numbers = [
        (TermsField::Payment, t.price, c.payment),
        (TermsField::Price, t.price, c.terms.price),
        (TermsField::Duration, t.duration_ms, c.duration_ms),
        (
            TermsField::TermsDuration,
            t.duration_ms,
            c.terms.duration_ms,
        ),
        (TermsField::Cpu, t.resources.cpu_millis, c.terms.cpu_millis),
        (
            TermsField::Memory,
            t.resources.memory_bytes,
            c.terms.memory_bytes,
        ),
        (
            TermsField::Storage,
            t.resources.storage_bytes,
            c.terms.storage_bytes,
        ),
    ];
    if let Some((field, expected, got)) = numbers.into_iter().find(|(_, e, g)| e != g) {
        return Err(DealRefusal::TermsDiffer {
            field,
            expected,
            got,
        });
    }
    let interfaces = interfaces_of(&t.resources);
    if c.terms.interfaces != interfaces {
        return Err(DealRefusal::InterfacesDiffer {
            expected: interfaces,
            got: c.terms.interfaces.clone(),
        });
    }
    Ok(())
}

fn check_image_and_activation(
    ctx: &DealContext<'_>,
    policy: &DealPolicy,
    c: &Contract,
) -> Result<(), DealRefusal> {
    // An auction that named an image binds the contract to it; without one (a taken offer) the
    // image is the customer's choice, checked by hash when the provider fetches it.
    if let Some(text) = &ctx.auction.image {
        let expected = contract_image(ctx.auction, c.service_image).map_err(|_| {
            DealRefusal::AuctionImageInvalid {
                image: text.clone(),
            }
        })?;
        if c.service_image != expected {
            return Err(DealRefusal::ImageDiffers {
                expected: Box::new(expected),
                got: Box::new(c.service_image),
            });
        }
    }
    // A storage contract's config is the customer's chunk commitment to the file, which the
    // provider checks when it takes custody; any other contract's config is its image.
    if c.kind != ContractKind::Storage && c.config != c.service_image {
        return Err(DealRefusal::ConfigDiffers {
            kind: c.kind,
            expected: Box::new(c.service_image),
            got: Box::new(c.config),
        });
    }
    let start_at = ctx.auction.start_at;
    let fits = match (c.kind, c.activation) {
        (ContractKind::Standby, ActivationClause::OnHandover { unreachable_for_ms }) => {
            let (min, max) = (policy.min_handover_after_ms, policy.max_handover_after_ms);
            if !(min..=max).contains(&unreachable_for_ms) {
                return Err(DealRefusal::HandoverDelayOutOfBounds {
                    min,
                    max,
                    got: unreachable_for_ms,
                });
            }
            true
        }
        (ContractKind::Standby, _) => false,
        (_, ActivationClause::Immediately) => start_at.is_none(),
        (_, ActivationClause::At(t)) => start_at == Some(t),
        (_, ActivationClause::OnHandover { .. }) => false,
    };
    if !fits {
        return Err(DealRefusal::WrongActivation {
            kind: c.kind,
            start_at,
            got: c.activation,
        });
    }
    Ok(())
}

fn check_qos_and_stakes(
    ctx: &DealContext<'_>,
    policy: &DealPolicy,
    c: &Contract,
) -> Result<(), DealRefusal> {
    let q = &c.qos;
    if q.min_uptime_permille > policy.max_min_uptime_permille {
        return Err(DealRefusal::UptimeTooStrict {
            max: policy.max_min_uptime_permille,
            got: q.min_uptime_permille,
        });
    }
    if q.max_activation_delay_ms < policy.min_activation_delay_ms {
        return Err(DealRefusal::ActivationDelayTooShort {
            min: policy.min_activation_delay_ms,
            got: q.max_activation_delay_ms,
        });
    }
    // A pre-contracted slot's deadline runs from its start, whether or not the contract
    // exists yet: one that leaves less than this provider's own activation time from now
    // (a slot that began before the award) would be settled `NoActivation` at once. One far
    // ahead would hold this provider's capacity and stake until it ends, for the price of
    // its term alone (THREATS C34).
    if let ActivationClause::At(start_at) = c.activation {
        let deadline = start_at.saturating_add(q.max_activation_delay_ms);
        if deadline < ctx.now.saturating_add(policy.min_activation_delay_ms) {
            return Err(DealRefusal::SlotAlreadyDue {
                start_at,
                deadline,
                now: ctx.now,
                min: policy.min_activation_delay_ms,
            });
        }
        if start_at > ctx.now.saturating_add(policy.max_slot_lead_ms) {
            return Err(DealRefusal::SlotTooFarAhead {
                start_at,
                now: ctx.now,
                max_lead_ms: policy.max_slot_lead_ms,
            });
        }
    }
    let (min, max) = (
        policy.min_heartbeat_interval_ms,
        policy.max_heartbeat_interval_ms,
    );
    if !(min..=max).contains(&q.heartbeat_interval_ms) {
        return Err(DealRefusal::HeartbeatIntervalOutOfBounds {
            min,
            max,
            got: q.heartbeat_interval_ms,
        });
    }
    let price = ctx.terms.price;
    let max = stake_of(price, policy.max_provider_stake_permille);
    if c.stakes.provider_stake > max {
        return Err(DealRefusal::ProviderStakeTooHigh {
            max,
            got: c.stakes.provider_stake,
        });
    }
    let min = stake_of(price, policy.min_customer_stake_permille);
    if c.stakes.customer_stake < min {
        return Err(DealRefusal::CustomerStakeTooLow {
            min,
            got: c.stakes.customer_stake,
        });
    }
    Ok(())
}

fn check_committee(ctx: &DealContext<'_>, c: &Contract) -> Result<(), DealRefusal> {
    let min = ctx.committee.min_size;
    if c.committee.len() < min {
        return Err(DealRefusal::CommitteeTooSmall {
            min,
            got: c.committee.len(),
        });
    }
    let expected = ctx.committee.for_parties(c.customer, c.provider);
    let mut got = c.committee.clone();
    got.sort();
    // Same members, none twice (a duplicate would make `got` longer than the sorted set).
    if got != expected {
        return Err(DealRefusal::CommitteeDiffers {
            expected,
            got: c.committee.clone(),
        });
    }
    Ok(())
}
