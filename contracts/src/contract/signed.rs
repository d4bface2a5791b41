//! Dual-signed contracts: both parties sign the canonical bytes under `Domain::CONTRACT`.

use agora_market::{Domain, NodeId, Signature, SignatureError, Signer, verify};
use serde::{Deserialize, Serialize};

use super::{Contract, ContractId};

/// Errors from building, signing or verifying a contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContractError {
    /// A contract id string did not parse.
    #[error("'{0}' is not a contract id (64 hex characters, see `agora contract list`)")]
    BadId(String),
    /// CBOR encoding failed (should not happen for well-formed values).
    #[error("could not encode contract to CBOR: {0}")]
    Encoding(String),
    /// The body is inconsistent.
    #[error("contract {contract} is malformed: {reason}; fix the terms and sign again")]
    Malformed {
        /// The contract.
        contract: ContractId,
        /// What is wrong.
        reason: String,
    },
    /// Someone other than the two parties tried to sign.
    #[error("node {signer} is not a party to contract {contract}; only customer and provider sign")]
    NotAParty {
        /// The contract.
        contract: ContractId,
        /// Who tried.
        signer: NodeId,
    },
    /// A party's signature does not verify.
    #[error("the {role} signature on contract {contract} does not verify; re-sign the exact body")]
    BadSignature {
        /// The contract.
        contract: ContractId,
        /// "customer" or "provider".
        role: &'static str,
        /// The underlying check.
        source: SignatureError,
    },
}

/// Which side of the contract a signature belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Party {
    /// The customer.
    Customer,
    /// The provider.
    Provider,
}

impl Contract {
    /// Signs the canonical bytes as `signer`, which must be one of the parties.
    pub fn sign_as(&self, signer: &dyn Signer) -> Result<(Party, Signature), ContractError> {
        let me = signer.node_id();
        let party = if me == self.customer {
            Party::Customer
        } else if me == self.provider {
            Party::Provider
        } else {
            return Err(ContractError::NotAParty {
                contract: self.id()?,
                signer: me,
            });
        };
        Ok((
            party,
            signer.sign(Domain::CONTRACT, &self.canonical_bytes()?),
        ))
    }

    /// Convenience: both parties sign, producing a `SignedContract` (tests, simulations).
    pub fn sign_both(
        self,
        customer: &dyn Signer,
        provider: &dyn Signer,
    ) -> Result<SignedContract, ContractError> {
        let (_, customer_sig) = self.sign_as(customer)?;
        let (_, provider_sig) = self.sign_as(provider)?;
        Ok(SignedContract {
            contract: self,
            customer_sig,
            provider_sig,
        })
    }
}

/// A contract with both parties' signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedContract {
    /// The signed body.
    pub contract: Contract,
    /// The customer's signature over the canonical bytes.
    pub customer_sig: Signature,
    /// The provider's signature over the canonical bytes.
    pub provider_sig: Signature,
}

impl SignedContract {
    /// Checks the body and both signatures; returns the contract id.
    pub fn verify(&self) -> Result<ContractId, ContractError> {
        let c = &self.contract;
        c.validate()?;
        let contract = c.id()?;
        let bytes = c.canonical_bytes()?;
        let check = |who: &NodeId, sig: &Signature, role: &'static str| {
            verify(who, Domain::CONTRACT, &bytes, sig).map_err(|source| {
                ContractError::BadSignature {
                    contract,
                    role,
                    source,
                }
            })
        };
        check(&c.customer, &self.customer_sig, "customer")?;
        check(&c.provider, &self.provider_sig, "provider")?;
        Ok(contract)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::ContractBuilder;
    use agora_market::KeySigner;

    #[test]
    fn dual_signed_contract_verifies() {
        let c = ContractBuilder::new(1, 2).build();
        let id = c.id().unwrap();
        let signed = c
            .sign_both(&KeySigner::from_seed(1), &KeySigner::from_seed(2))
            .unwrap();
        assert_eq!(signed.verify().unwrap(), id);
    }

    #[test]
    fn outsider_cannot_sign() {
        let c = ContractBuilder::new(1, 2).build();
        let err = c.sign_as(&KeySigner::from_seed(3)).unwrap_err();
        assert!(matches!(err, ContractError::NotAParty { .. }));
    }

    #[test]
    fn tampered_body_fails_verification() {
        let c = ContractBuilder::new(1, 2).build();
        let mut signed = c
            .sign_both(&KeySigner::from_seed(1), &KeySigner::from_seed(2))
            .unwrap();
        signed.contract.payment += 1;
        let err = signed.verify().unwrap_err();
        assert!(matches!(
            err,
            ContractError::BadSignature {
                role: "customer",
                ..
            }
        ));
    }

    #[test]
    fn swapped_signatures_fail() {
        let c = ContractBuilder::new(1, 2).build();
        let mut signed = c
            .sign_both(&KeySigner::from_seed(1), &KeySigner::from_seed(2))
            .unwrap();
        std::mem::swap(&mut signed.customer_sig, &mut signed.provider_sig);
        assert!(signed.verify().is_err());
    }
}
