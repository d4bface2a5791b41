//! 32-byte content ids (blake3 of canonical bytes) with hex Display and base58 helpers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A hex string that is not a 32-byte id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an id (expected 64 hex characters)")]
pub struct IdParseError(pub String);

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

fn unhex(s: &str) -> Result<[u8; 32], IdParseError> {
    let err = || IdParseError(s.to_string());
    let raw = s.as_bytes();
    if raw.len() != 64 {
        return Err(err());
    }
    let mut out = [0u8; 32];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        let digit = |c: u8| char::from(c).to_digit(16).ok_or_else(err);
        let v = digit(pair[0])? * 16 + digit(pair[1])?;
        out[i] = u8::try_from(v).map_err(|_| err())?;
    }
    Ok(out)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(#[serde(with = "serde_bytes")] pub [u8; 32]);

        impl $name {
            /// The id of `bytes`: their blake3 hash.
            pub fn of_bytes(bytes: &[u8]) -> Self {
                $name(*blake3::hash(bytes).as_bytes())
            }

            /// The base58 form.
            pub fn to_bs58(&self) -> String {
                bs58::encode(self.0).into_string()
            }

            /// The first 8 hex characters, for logs.
            pub fn short(&self) -> String {
                hex(&self.0[..4])
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(b: [u8; 32]) -> Self {
                $name(b)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                unhex(s).map($name)
            }
        }
    };
}

id_type!(
    /// Id of an auction request.
    AuctionId
);
id_type!(
    /// Id of a bid.
    BidId
);
id_type!(
    /// Id of a standing offer.
    OfferId
);
id_type!(
    /// Id of an award.
    AwardId
);
id_type!(
    /// Id (hash) of agreed terms; what both parties sign in the contract.
    TermsId
);
id_type!(
    /// Id of a negotiation message.
    NegotiationMsgId
);
id_type!(
    /// Id of a fleet deployment: blake3 of its deployer and name, stable across versions.
    DeploymentId
);
id_type!(
    /// Content id of one signed version of a deployment record.
    DeploymentRecordId
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hex_round_trip_and_bad_input() {
        let id = AuctionId::of_bytes(b"x");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<AuctionId>().unwrap(), id);
        assert!("zz".parse::<AuctionId>().is_err());
        assert!("g".repeat(64).parse::<AuctionId>().is_err());
        assert_eq!(
            bs58::decode(id.to_bs58()).into_vec().unwrap(),
            id.0.to_vec()
        );
    }
}
