//! Persistent guest key-value store: one sled tree in the node's data dir, keys prefixed by the
//! service id, so a restarted service (or node) continues where it left off.

use std::path::Path;

use agora_runtime::io::{MAX_KV_KEY_BYTES, MAX_KV_SCAN_ITEMS, MAX_KV_VALUE_BYTES};
use agora_runtime::{KvEntries, KvStore, KvUnsupported};

/// Keys one service may hold.
pub const MAX_KV_ENTRIES: usize = 1024;

/// A sled-backed [`KvStore`], bounded per namespace like the runtime's `MemoryKv`.
#[derive(Clone, Debug)]
pub struct SledKv {
    tree: sled::Tree,
    max_entries: usize,
}

/// `len(namespace) || namespace`: the prefix of every key of one namespace.
fn prefix(namespace: &str) -> Vec<u8> {
    let ns = namespace.as_bytes();
    let len = u16::try_from(ns.len()).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(2 + ns.len());
    p.extend(len.to_be_bytes());
    p.extend(&ns[..usize::from(len)]);
    p
}

fn full_key(namespace: &str, key: &[u8]) -> Vec<u8> {
    let mut k = prefix(namespace);
    k.extend(key);
    k
}

impl SledKv {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        let db = agora_storage::blockstore::open_sled(dir)?;
        Ok(Self::from_tree(db.open_tree("guest-kv")?, MAX_KV_ENTRIES))
    }

    /// Uses an open tree, holding at most `max_entries` keys per namespace.
    pub fn from_tree(tree: sled::Tree, max_entries: usize) -> Self {
        Self { tree, max_entries }
    }

    /// Keys held by `namespace`.
    pub fn len(&self, namespace: &str) -> usize {
        self.tree.scan_prefix(prefix(namespace)).count()
    }

    /// Whether `namespace` holds no keys.
    pub fn is_empty(&self, namespace: &str) -> bool {
        self.len(namespace) == 0
    }
}

impl KvStore for SledKv {
    fn get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>> {
        match self.tree.get(full_key(namespace, key)) {
            Ok(v) => v.map(|v| v.to_vec()),
            Err(err) => {
                tracing::warn!(service = namespace, %err, "guest kv read failed");
                None
            }
        }
    }

    fn put(&self, namespace: &str, key: &[u8], value: &[u8]) -> bool {
        if key.len() > MAX_KV_KEY_BYTES || value.len() > MAX_KV_VALUE_BYTES {
            return false;
        }
        let k = full_key(namespace, key);
        let exists = self.tree.contains_key(&k).unwrap_or(false);
        if !exists && self.len(namespace) >= self.max_entries {
            return false;
        }
        match self.tree.insert(k, value) {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(service = namespace, %err, "guest kv write failed");
                false
            }
        }
    }

    fn delete(&self, namespace: &str, key: &[u8]) -> Result<bool, KvUnsupported> {
        if key.len() > MAX_KV_KEY_BYTES {
            return Ok(false);
        }
        match self.tree.remove(full_key(namespace, key)) {
            Ok(old) => Ok(old.is_some()),
            Err(err) => {
                tracing::warn!(service = namespace, %err, "guest kv delete failed");
                Ok(false)
            }
        }
    }

    fn scan(
        &self,
        namespace: &str,
        start: &[u8],
        max_items: usize,
    ) -> Result<KvEntries, KvUnsupported> {
        let ns = prefix(namespace);
        let mut out = Vec::new();
        // Keys of one namespace are contiguous in sled's byte order and sorted by the guest's
        // key after the prefix; the host never asks for more than MAX_KV_SCAN_ITEMS.
        for item in self
            .tree
            .range(full_key(namespace, start)..)
            .take(max_items.min(MAX_KV_SCAN_ITEMS))
        {
            match item {
                Ok((k, v)) => match k.strip_prefix(ns.as_slice()) {
                    Some(key) => out.push((key.to_vec(), v.to_vec())),
                    None => break,
                },
                Err(err) => {
                    tracing::warn!(service = namespace, %err, "guest kv scan failed");
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate_bounded_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let kv = SledKv::from_tree(db.open_tree("guest-kv").unwrap(), 2);
            assert!(kv.put("a", b"k1", b"v1"));
            assert!(kv.put("a", b"k2", b"v2"));
            assert!(!kv.put("a", b"k3", b"v3"), "third key over the bound");
            assert!(
                kv.put("a", b"k1", b"v1b"),
                "overwrite stays within the bound"
            );
            assert!(
                kv.put("ab", b"k1", b"other"),
                "a prefix of a name is another namespace"
            );
            assert!(!kv.put("b", &[0; MAX_KV_KEY_BYTES + 1], b""));
            assert!(!kv.put("b", b"k", &vec![0; MAX_KV_VALUE_BYTES + 1]));
            db.flush().unwrap();
        }
        let kv = SledKv::open(dir.path()).unwrap();
        assert_eq!(kv.get("a", b"k1").unwrap(), b"v1b");
        assert_eq!(kv.get("ab", b"k1").unwrap(), b"other");
        assert_eq!(kv.get("b", b"k1"), None);
        assert_eq!(kv.len("a"), 2);
    }

    #[test]
    fn delete_and_scan_stay_inside_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let kv = SledKv::from_tree(db.open_tree("guest-kv").unwrap(), 3);
        for k in [&b"b"[..], b"a", b"c"] {
            assert!(kv.put("svc", k, k));
        }
        // A neighbour whose prefix sorts right after ours, and one that sorts before.
        assert!(kv.put("svd", b"a", b"other"));
        assert!(kv.put("sva", b"z", b"other"));
        let all = kv.scan("svc", b"", 64).unwrap();
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            keys,
            vec![&b"a"[..], b"b", b"c"],
            "key order, own keys only"
        );
        assert_eq!(kv.scan("svc", b"b", 64).unwrap().len(), 2, "from b on");
        assert_eq!(kv.scan("svc", b"b\0", 64).unwrap().len(), 1, "after b");
        assert_eq!(
            kv.scan("svc", b"", 2).unwrap().len(),
            2,
            "at most max_items"
        );
        assert!(kv.scan("nobody", b"", 64).unwrap().is_empty());

        assert_eq!(kv.delete("svc", b"b"), Ok(true));
        assert_eq!(kv.delete("svc", b"b"), Ok(false), "already gone");
        assert_eq!(kv.delete("svc", &[0; MAX_KV_KEY_BYTES + 1]), Ok(false));
        assert_eq!(
            kv.get("svd", b"a").unwrap(),
            b"other",
            "neighbour untouched"
        );
        // Deleting frees a slot under the bound.
        assert!(kv.put("svc", b"d", b"d"));
        assert!(!kv.put("svc", b"e", b"e"), "bound of 3 again");
    }

    #[test]
    fn a_scan_never_returns_more_than_the_abi_allows() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let kv = SledKv::from_tree(db.open_tree("guest-kv").unwrap(), 1000);
        for i in 0..200u32 {
            assert!(kv.put("svc", &i.to_be_bytes(), b"v"));
        }
        assert_eq!(
            kv.scan("svc", b"", usize::MAX).unwrap().len(),
            MAX_KV_SCAN_ITEMS
        );
    }
}
