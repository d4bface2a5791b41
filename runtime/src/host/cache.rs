//! On-disk artifact cache keyed by (module CID, engine compatibility hash). Each artifact has a
//! sibling `.mac` file: blake3 keyed hash under the node's artifact key. Files without a valid
//! MAC are deleted and recompiled, never deserialized.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use wasmtime::{Engine, Module};

use crate::{ModuleId, RuntimeError};

/// Domain string so the artifact key is never usable for another MAC.
const MAC_CONTEXT: &[u8] = b"agora/v1/runtime-artifact\0";

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
    compat: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::CacheIo {
        path: path.to_path_buf(),
        source,
    }
}

impl ArtifactCache {
    pub(crate) fn open(dir: PathBuf, key: [u8; 32], compat: String) -> Result<Self, RuntimeError> {
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self { dir, key, compat })
    }

    fn paths(&self, id: &ModuleId) -> (PathBuf, PathBuf) {
        let stem = format!("{id}-{}", self.compat);
        (
            self.dir.join(format!("{stem}.cwasm")),
            self.dir.join(format!("{stem}.mac")),
        )
    }

    fn mac(&self, id: &ModuleId, artifact: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(MAC_CONTEXT)
            .update(&id.cid().to_bytes())
            .update(self.compat.as_bytes())
            .update(artifact);
        h.finalize()
    }

    /// The cached module, or `None` if absent, unauthenticated or unloadable.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        id: &ModuleId,
    ) -> Result<Option<Module>, RuntimeError> {
        let (art_path, mac_path) = self.paths(id);
        let artifact = match fs::read(&art_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&art_path)(e)),
        };
        let stored_mac = match fs::read(&mac_path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).ok(),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&mac_path)(e)),
        };
        // `blake3::Hash` equality is constant time.
        let authentic = stored_mac
            .map(blake3::Hash::from_bytes)
            .is_some_and(|mac| mac == self.mac(id, &artifact));
        if !authentic {
            tracing::warn!(module = %id, path = %art_path.display(), "cached artifact fails its MAC; discarding and recompiling");
            self.discard(&art_path, &mac_path);
            return Ok(None);
        }
        // SAFETY: `Module::deserialize` trusts its input to be an artifact produced by a
        // compatible wasmtime. These bytes carry a MAC under this node's secret artifact key, and
        // this cache computes such MACs only over artifacts this process serialized itself
        // (`store`) from bytes verified against `id`; the compatibility hash is part of both the
        // file name and the MAC, and wasmtime additionally checks version and engine settings.
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(engine, &artifact) };
        match module {
            Ok(module) => Ok(Some(module)),
            Err(err) => {
                tracing::warn!(module = %id, %err, "cached artifact rejected by wasmtime; recompiling");
                self.discard(&art_path, &mac_path);
                Ok(None)
            }
        }
    }

    /// Serializes `module` and writes it with its MAC (each via a temp file and rename).
    pub(crate) fn store(&self, id: &ModuleId, module: &Module) -> Result<(), RuntimeError> {
        let (art_path, mac_path) = self.paths(id);
        let artifact = module.serialize().map_err(|e| RuntimeError::Compile {
            module: id.to_string(),
            reason: format!("serializing the artifact: {e:#}"),
        })?;
        let mac = self.mac(id, &artifact);
        write_atomic(&art_path, &artifact)?;
        write_atomic(&mac_path, mac.as_bytes())?;
        let gone = trim(&self.dir, MAX_CACHE_BYTES, &art_path);
        if gone > 0 {
            tracing::info!(
                removed = gone,
                "artifact cache over its bound: oldest artifacts removed"
            );
        }
        Ok(())
    }

    fn discard(&self, art: &Path, mac: &Path) {
        let _ = fs::remove_file(art);
        let _ = fs::remove_file(mac);
    }
}

/// Bytes of artifacts the cache keeps; beyond that the least recently written go (each one a
/// hostile customer's module could leave, THREATS G3). A removed artifact is compiled again
/// when next needed.
pub(crate) const MAX_CACHE_BYTES: u64 = 512 << 20;

/// Removes the oldest artifacts (and their MACs) in `dir` until their sizes add up to at most
/// `cap`, never `keep`; returns how many went.
fn trim(dir: &Path, cap: u64, keep: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut artifacts: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = artifacts.iter().map(|a| a.1).sum();
    artifacts.sort();
    let mut gone = 0;
    for (_, len, path) in artifacts {
        if total <= cap {
            break;
        }
        if path == keep {
            continue;
        }
        let _ = fs::remove_file(&path);
        let _ = fs::remove_file(path.with_extension("mac"));
        total = total.saturating_sub(len);
        gone += 1;
    }
    gone
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    // Unique per write, not only per process: two writers of one artifact in this process
    // must not rename each other's temp file away (the loser saw ENOENT).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache keeps at most its bound: the oldest artifacts (and their MACs) go first, never
    /// the one just written.
    #[test]
    fn the_oldest_artifacts_go_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        let mut paths = Vec::new();
        for i in 0..5u64 {
            let art = dir.path().join(format!("m{i}.cwasm"));
            fs::write(&art, vec![0u8; 100]).unwrap();
            fs::write(art.with_extension("mac"), b"mac").unwrap();
            let f = fs::File::options().write(true).open(&art).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i))
                .unwrap();
            paths.push(art);
        }
        // The oldest is the one just written: kept; the next two oldest go.
        assert_eq!(trim(dir.path(), 300, &paths[0]), 2);
        let left: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
        assert_eq!(left, [true, false, false, true, true]);
        assert!(!paths[1].with_extension("mac").exists());
        assert_eq!(trim(dir.path(), 300, &paths[0]), 0);
    }

    fn cache(dir: &Path, key: u8) -> ArtifactCache {
        ArtifactCache::open(dir.to_path_buf(), [key; 32], "c0ffee".into()).unwrap()
    }

    #[test]
    fn artifacts_round_trip_and_tampering_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let wat = "(module (func (export \"f\")))";
        let id = ModuleId::for_bytes(wat.as_bytes());
        let module = Module::new(&engine, wat).unwrap();
        let c = cache(dir.path(), 7);
        assert!(c.load(&engine, &id).unwrap().is_none());
        c.store(&id, &module).unwrap();
        assert!(c.load(&engine, &id).unwrap().is_some());

        // Another node key (e.g. a copied cache dir) must not be trusted.
        assert!(cache(dir.path(), 8).load(&engine, &id).unwrap().is_none());
        // ...and the untrusted files were removed.
        assert!(c.load(&engine, &id).unwrap().is_none());

        c.store(&id, &module).unwrap();
        let (art, _) = c.paths(&id);
        let mut bytes = fs::read(&art).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&art, bytes).unwrap();
        assert!(c.load(&engine, &id).unwrap().is_none());
    }
}
