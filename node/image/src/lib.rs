//! Service images: the manifest a customer writes (`svc.toml`, [`manifest`]) and the image
//! record that links it to the module in content-addressed storage ([`record`]). Everything
//! here reads bytes a peer or a customer chose (a manifest file, blocks fetched over bitswap),
//! so it is validated field by field and fuzzed (`tests/fuzz`: `manifest`, `image_record`).
//!
//! Owns: the manifest format and its validation (including the limits a manifest may ask for),
//! the image record's DAG-CBOR layout, and reading/writing an image in a [`agora_storage::BlockStore`].
//! May depend on `agora-runtime` (limits, module ids), `agora-storage` and `agora-market`; never
//! on the network, the exchange or any other node crate — so decoders can be fuzzed cheaply.
#![forbid(unsafe_code)]

pub mod deps;
pub mod manifest;
pub mod record;

pub use deps::{
    DepGraph, MAX_DEPENDS_ON, OrderError, check_acyclic, shutdown_order, start_order, stop_order,
};
pub use manifest::{
    Activation, ContainerImage, ManifestError, ManifestLimits, ManifestResources, ManifestRestart,
    RestartOn, ServiceKind, ServiceManifest,
};
pub use record::{
    IMAGE_RECORD_VERSION, ImageError, ImageRecord, MAX_MODULE_BYTES, read_image, read_manifest,
    store_image,
};
