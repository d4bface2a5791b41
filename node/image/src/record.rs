//! Service images in content-addressed storage: the module as a UnixFS file (CIDv1, raw
//! leaves), the manifest as a DAG-CBOR block, and an image record (DAG-CBOR) linking both. The
//! record's CID is the image CID; fetching it over bitswap pulls the whole image, since the
//! record links (tag 42) its manifest and module.

use agora_runtime::ModuleId;
use agora_storage::hash::{DAG_CBOR, cid_v1_blake3};
use agora_storage::wire::{put_cbor_cid, put_cbor_head, put_cbor_text};
use agora_storage::{BlockStore, Cid, ImportOptions, StorageError, unixfs};
use serde::Deserialize;

use crate::manifest::{ServiceKind, ServiceManifest};

/// Version of the image record layout.
pub const IMAGE_RECORD_VERSION: u64 = 1;
/// Largest module a node will load (guards memory against hostile images).
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// The decoded image record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    /// How the service runs.
    pub kind: ServiceKind,
    /// Root of the module's UnixFS DAG.
    pub module: Cid,
    /// The manifest block.
    pub manifest: Cid,
    /// Hash of the whole module (what the runtime verifies and caches by).
    pub module_id: ModuleId,
}

/// What went wrong reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The block store failed or a block is missing.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// A block is not what an image should contain.
    #[error(
        "{cid} is not a valid service image: {reason}; check the CID printed by `agora service publish`"
    )]
    Malformed {
        /// The block.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
}

fn malformed(cid: &Cid, reason: impl Into<String>) -> ImageError {
    ImageError::Malformed {
        cid: *cid,
        reason: reason.into(),
    }
}

/// The record as decoded by serde (tags are skipped, links arrive as their bytes).
#[derive(Deserialize)]
struct RawRecord {
    v: u64,
    kind: ServiceKind,
    #[serde(with = "serde_bytes")]
    module: Vec<u8>,
    #[serde(with = "serde_bytes")]
    manifest: Vec<u8>,
    module_id: String,
}

impl ImageRecord {
    /// Canonical DAG-CBOR: keys sorted by length then bytes, links as tag 42.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        put_cbor_head(&mut out, agora_storage::wire::CBOR_MAP, 5);
        put_cbor_text(&mut out, "v");
        put_cbor_head(
            &mut out,
            agora_storage::wire::CBOR_UINT,
            IMAGE_RECORD_VERSION,
        );
        put_cbor_text(&mut out, "kind");
        put_cbor_text(&mut out, self.kind.as_str());
        put_cbor_text(&mut out, "module");
        put_cbor_cid(&mut out, &self.module);
        put_cbor_text(&mut out, "manifest");
        put_cbor_cid(&mut out, &self.manifest);
        put_cbor_text(&mut out, "module_id");
        put_cbor_text(&mut out, &self.module_id.to_string());
        out
    }

    /// Decodes a record block fetched as `cid`.
    pub fn decode(cid: &Cid, bytes: &[u8]) -> Result<Self, ImageError> {
        if cid.codec() != DAG_CBOR {
            return Err(malformed(cid, "an image CID must use the dag-cbor codec"));
        }
        let raw: RawRecord =
            serde_cbor::from_slice(bytes).map_err(|e| malformed(cid, e.to_string()))?;
        if raw.v != IMAGE_RECORD_VERSION {
            return Err(malformed(
                cid,
                format!(
                    "record version {} is not supported; upgrade the node",
                    raw.v
                ),
            ));
        }
        let unlink = |b: &[u8], what: &str| {
            b.strip_prefix(&[0])
                .and_then(|c| Cid::try_from(c).ok())
                .ok_or_else(|| malformed(cid, format!("`{what}` is not a CID link")))
        };
        Ok(Self {
            kind: raw.kind,
            module: unlink(&raw.module, "module")?,
            manifest: unlink(&raw.manifest, "manifest")?,
            module_id: raw
                .module_id
                .parse()
                .map_err(|e: agora_runtime::RuntimeError| malformed(cid, e.to_string()))?,
        })
    }
}

/// Writes module, manifest and record into `store` and pins the record; returns it and its CID.
pub fn store_image(
    store: &dyn BlockStore,
    module: &[u8],
    manifest: &ServiceManifest,
) -> Result<(Cid, ImageRecord), StorageError> {
    let module_root = unixfs::import_file(store, module, ImportOptions::v1())?;
    let manifest_bytes = serde_cbor::to_vec(manifest).map_err(|e| StorageError::Decode {
        what: "service manifest",
        reason: e.to_string(),
    })?;
    let manifest_cid = cid_v1_blake3(DAG_CBOR, &manifest_bytes);
    store.put(&manifest_cid, &manifest_bytes)?;
    let record = ImageRecord {
        kind: manifest.kind,
        module: module_root,
        manifest: manifest_cid,
        module_id: ModuleId::for_bytes(module),
    };
    let bytes = record.encode();
    let cid = cid_v1_blake3(DAG_CBOR, &bytes);
    store.put(&cid, &bytes)?;
    store.pin(&cid)?;
    Ok((cid, record))
}

/// Reads an image's record and validated manifest from `store`, without its module (what a
/// customer needs to know which devices its contract's service takes over).
pub fn read_manifest(
    store: &dyn BlockStore,
    image: &Cid,
) -> Result<(ImageRecord, ServiceManifest), ImageError> {
    let record = ImageRecord::decode(image, &store.get(image)?)?;
    let manifest_bytes = store.get(&record.manifest)?;
    let manifest: ServiceManifest = serde_cbor::from_slice(&manifest_bytes)
        .map_err(|e| malformed(&record.manifest, format!("manifest: {e}")))?;
    manifest
        .validate()
        .map_err(|e| malformed(&record.manifest, e.to_string()))?;
    if manifest.kind != record.kind {
        return Err(malformed(image, "record kind differs from the manifest's"));
    }
    Ok((record, manifest))
}

/// Reads an image whose blocks are all in `store`: record, validated manifest and module bytes.
/// The module bytes are not yet checked against `module_id` (the runtime does that on load).
pub fn read_image(
    store: &dyn BlockStore,
    image: &Cid,
) -> Result<(ImageRecord, ServiceManifest, Vec<u8>), ImageError> {
    let (record, manifest) = read_manifest(store, image)?;
    let mut reader = unixfs::FileReader::new(store, &record.module);
    let mut module = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        module.extend_from_slice(&chunk);
        if module.len() as u64 > MAX_MODULE_BYTES {
            return Err(malformed(
                &record.module,
                format!("module is larger than {MAX_MODULE_BYTES} bytes"),
            ));
        }
    }
    Ok((record, manifest, module))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_storage::MemoryBlockStore;

    #[test]
    fn image_round_trips_and_links_its_parts() {
        let store = MemoryBlockStore::default();
        let module: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let manifest = ServiceManifest::wasm("svc", "1.0.0");
        let (cid, record) = store_image(&store, &module, &manifest).unwrap();
        let bytes = store.get(&cid).unwrap();
        let links = agora_storage::blockstore::block_links(&cid, &bytes).unwrap();
        assert_eq!(links, vec![record.module, record.manifest]);
        let (r, m, bytes) = read_image(&store, &cid).unwrap();
        assert_eq!(r, record);
        assert_eq!(m, manifest);
        assert_eq!(bytes, module);
        r.module_id.verify(&bytes).unwrap();
    }

    #[test]
    fn the_manifest_reads_without_the_module() {
        let store = MemoryBlockStore::default();
        let mut manifest = ServiceManifest::wasm("svc", "1.0.0");
        manifest.devices = vec![201];
        let (cid, record) = store_image(&store, b"module bytes", &manifest).unwrap();
        store.delete(&record.module).unwrap();
        assert!(read_image(&store, &cid).is_err(), "the module is gone");
        let (r, m) = read_manifest(&store, &cid).unwrap();
        assert_eq!(r, record);
        assert_eq!(m.devices, vec![201]);
    }

    #[test]
    fn foreign_blocks_are_rejected() {
        let store = MemoryBlockStore::default();
        let (cid, _) = store_image(&store, b"m", &ServiceManifest::wasm("a", "1")).unwrap();
        let record = ImageRecord::decode(&cid, &store.get(&cid).unwrap()).unwrap();
        // The manifest block is dag-cbor but not a record.
        let manifest = store.get(&record.manifest).unwrap();
        assert!(ImageRecord::decode(&record.manifest, &manifest).is_err());
        // A raw block is not an image.
        assert!(read_image(&store, &record.module).is_err());
    }
}
