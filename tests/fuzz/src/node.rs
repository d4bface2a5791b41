//! Helpers for the node decoder targets (`wire_envelope`, `wire_bodies`, `consensus`): decode
//! peer bytes as a serde_cbor body, and check that what decoded re-encodes stably.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `data` as a CBOR body of type `T` (as [`agora_wire::Envelope::body`] does); when it
/// decodes, its encoding must decode again to the same encoding.
pub fn cbor_body<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let value: T = serde_cbor::from_slice(data).ok()?;
    crate::assert_stable_encoding(
        &value,
        |v| serde_cbor::to_vec(v).unwrap_or_default(),
        |b| serde_cbor::from_slice(b).ok(),
    );
    Some(value)
}
