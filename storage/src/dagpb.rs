//! dag-pb node encoding (`PBNode`/`PBLink`) by hand, in the canonical form Kubo writes:
//! links (field 2) before data (field 1), and each link as Hash, Name, Tsize.

use cid::Cid;

use crate::protobuf::{Reader, WIRE_LEN, put_bytes, put_key, put_uint, put_varint};
use crate::{Result, StorageError};

/// A dag-pb link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    /// The child's CID.
    pub cid: Cid,
    /// Link name; Kubo writes `Some("")` for file chunks.
    pub name: Option<String>,
    /// Cumulative size of the child DAG (block bytes).
    pub tsize: Option<u64>,
}

/// A dag-pb node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PbNode {
    /// Ordered links.
    pub links: Vec<PbLink>,
    /// Opaque data (UnixFS `Data` message for files).
    pub data: Option<Vec<u8>>,
}

impl PbNode {
    /// Encodes the node canonically.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.data.as_ref().map_or(0, |d| d.len() + 8) + self.links.len() * 48,
        );
        let mut link_buf = Vec::with_capacity(64);
        for link in &self.links {
            link_buf.clear();
            put_bytes(&mut link_buf, 1, &link.cid.to_bytes());
            if let Some(name) = &link.name {
                put_bytes(&mut link_buf, 2, name.as_bytes());
            }
            if let Some(tsize) = link.tsize {
                put_uint(&mut link_buf, 3, tsize);
            }
            put_key(&mut out, 2, WIRE_LEN);
            put_varint(&mut out, link_buf.len() as u64);
            out.extend_from_slice(&link_buf);
        }
        if let Some(data) = &self.data {
            put_bytes(&mut out, 1, data);
        }
        out
    }

    /// Decodes a dag-pb block; `cid` is used only for error messages.
    pub fn decode(cid: &Cid, bytes: &[u8]) -> Result<Self> {
        Self::decode_inner(bytes).map_err(|e| StorageError::Malformed {
            cid: *cid,
            reason: e.to_string(),
        })
    }

    fn decode_inner(bytes: &[u8]) -> Result<Self> {
        let mut node = PbNode::default();
        let mut r = Reader::new(bytes, "dag-pb node");
        while let Some((field, value)) = r.next_field()? {
            match field {
                1 => node.data = Some(value.bytes("dag-pb Data")?.to_vec()),
                2 => node.links.push(decode_link(value.bytes("dag-pb Links")?)?),
                _ => {
                    return Err(StorageError::decode(
                        "dag-pb node",
                        format!("unknown field {field}"),
                    ));
                }
            }
        }
        Ok(node)
    }
}

fn decode_link(bytes: &[u8]) -> Result<PbLink> {
    let mut cid = None;
    let mut name = None;
    let mut tsize = None;
    let mut r = Reader::new(bytes, "dag-pb link");
    while let Some((field, value)) = r.next_field()? {
        match field {
            1 => {
                let raw = value.bytes("dag-pb link Hash")?;
                cid = Some(
                    Cid::try_from(raw)
                        .map_err(|e| StorageError::decode("dag-pb link Hash", e.to_string()))?,
                );
            }
            2 => {
                let raw = value.bytes("dag-pb link Name")?;
                name = Some(
                    String::from_utf8(raw.to_vec())
                        .map_err(|_| StorageError::decode("dag-pb link Name", "not UTF-8"))?,
                );
            }
            3 => tsize = Some(value.varint("dag-pb link Tsize")?),
            _ => {
                return Err(StorageError::decode(
                    "dag-pb link",
                    format!("unknown field {field}"),
                ));
            }
        }
    }
    let cid = cid.ok_or_else(|| StorageError::decode("dag-pb link", "missing Hash"))?;
    Ok(PbLink { cid, name, tsize })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{RAW, cid_v0, cid_v1_sha256};

    #[test]
    fn round_trip_with_links_and_data() {
        let node = PbNode {
            links: vec![
                PbLink {
                    cid: cid_v0(b"a"),
                    name: Some(String::new()),
                    tsize: Some(10),
                },
                PbLink {
                    cid: cid_v1_sha256(RAW, b"b"),
                    name: None,
                    tsize: None,
                },
            ],
            data: Some(vec![8, 2, 24, 0]),
        };
        let bytes = node.encode();
        // Links are written before data, as Kubo does.
        assert_eq!(bytes[0], 0x12);
        assert_eq!(PbNode::decode(&cid_v0(&bytes), &bytes).unwrap(), node);
    }

    #[test]
    fn garbage_is_malformed_not_panic() {
        let cid = cid_v0(b"x");
        assert!(matches!(
            PbNode::decode(&cid, &[0x12, 0x03, 0x0a, 0x01]),
            Err(StorageError::Malformed { .. })
        ));
        assert!(matches!(
            PbNode::decode(&cid, &[0x1a, 0x00]),
            Err(StorageError::Malformed { .. })
        ));
    }
}
