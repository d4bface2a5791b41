//! CIDs in contract records as text in human-readable formats (JSON from the API and CLI:
//! `bafk…`, as tables print them and CLI arguments take them) and in their own binary form in
//! CBOR (wire, store and signed bytes unchanged). Older JSON (arrays of numbers) still reads.
//!
//! Use with `#[serde(with = "crate::cid_text")]`, or the [`option`] and [`vec`] variants.

use cid::Cid;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes `cid` as text when the format is human-readable.
pub fn serialize<S: Serializer>(cid: &Cid, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.collect_str(cid)
    } else {
        cid.serialize(s)
    }
}

/// Reads a CID written by [`serialize`] (or an older JSON array of its bytes).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
    if d.is_human_readable() {
        d.deserialize_any(CidVisitor)
    } else {
        Cid::deserialize(d)
    }
}

struct CidVisitor;

impl<'de> Visitor<'de> for CidVisitor {
    type Value = Cid;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a CID as text (bafk…, Qm…) or as bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cid, E> {
        Cid::try_from(v).map_err(|e| E::custom(format!("not a CID ({v}): {e}")))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Cid, E> {
        Cid::try_from(v).map_err(|e| E::custom(format!("not a CID: {e}")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cid, A::Error> {
        // A CID is at most a few hundred bytes; refuse longer arrays before collecting them.
        const MAX_CID_BYTES: usize = 512;
        let mut bytes = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            if bytes.len() == MAX_CID_BYTES {
                return Err(de::Error::custom("CID byte array longer than 512"));
            }
            bytes.push(b);
        }
        self.visit_bytes(&bytes)
    }
}

/// A CID that serializes through this module (for the `Option` and `Vec` forms).
#[derive(Serialize, Deserialize)]
struct Text(#[serde(with = "crate::cid_text")] Cid);

/// `Option<Cid>` as text in human-readable formats.
pub mod option {
    use super::*;

    /// Writes `Some(cid)` as text, `None` as null.
    pub fn serialize<S: Serializer>(cid: &Option<Cid>, s: S) -> Result<S::Ok, S::Error> {
        cid.map(Text).serialize(s)
    }

    /// Reads what [`serialize`] wrote.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cid>, D::Error> {
        Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
    }
}

/// `Vec<Cid>` as a list of texts in human-readable formats.
pub mod vec {
    use super::*;

    /// Writes each CID as text.
    pub fn serialize<S: Serializer>(cids: &[Cid], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(cids.iter().map(|c| Text(*c)))
    }

    /// Reads what [`serialize`] wrote.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cid>, D::Error> {
        Ok(Vec::<Text>::deserialize(d)?
            .into_iter()
            .map(|t| t.0)
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        #[serde(with = "crate::cid_text")]
        one: Cid,
        #[serde(with = "crate::cid_text::option")]
        maybe: Option<Cid>,
        #[serde(with = "crate::cid_text::vec")]
        many: Vec<Cid>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        one: Cid,
        maybe: Option<Cid>,
        many: Vec<Cid>,
    }

    fn cid() -> Cid {
        "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
            .parse()
            .unwrap()
    }

    #[test]
    fn cids_are_text_in_json_and_unchanged_in_cbor() {
        let r = Record {
            one: cid(),
            maybe: Some(cid()),
            many: vec![cid(), cid()],
        };
        let json = serde_json::to_string(&r).unwrap();
        let text = cid().to_string();
        assert_eq!(
            json,
            format!(r#"{{"one":"{text}","maybe":"{text}","many":["{text}","{text}"]}}"#)
        );
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
        // CBOR is byte for byte what the plain `Cid` fields wrote (signed bytes unchanged).
        let plain = Plain {
            one: cid(),
            maybe: Some(cid()),
            many: vec![cid(), cid()],
        };
        let cbor = serde_cbor::to_vec(&r).unwrap();
        assert_eq!(cbor, serde_cbor::to_vec(&plain).unwrap());
        assert_eq!(serde_cbor::from_slice::<Record>(&cbor).unwrap(), r);
        // Older JSON (the plain fields' arrays of numbers) still reads.
        let old = serde_json::to_string(&plain).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&old).unwrap(), r);
        let none = Record { maybe: None, ..r };
        let json = serde_json::to_string(&none).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), none);
        assert!(serde_json::from_str::<Record>(r#"{"one":"zz","maybe":null,"many":[]}"#).is_err());
    }
}
