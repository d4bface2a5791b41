//! Binary blake3 Merkle trees with RFC 6962 shape and domain-separated hashing:
//! leaf = blake3(0x00 || data), node = blake3(0x01 || left || right). The prefixes stop a node
//! from being passed off as a leaf (second-preimage attacks). Used by `proof` and `challenge`.

/// A 32-byte blake3 digest.
pub type Hash = [u8; 32];

/// Hash of one leaf's data.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(data);
    *h.finalize().as_bytes()
}

/// Hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// A Merkle tree kept level by level so inclusion paths are cheap.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// `levels[0]` are leaf hashes; the last level holds the root alone.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// Builds the tree over leaf hashes; `None` when there are none.
    ///
    /// Pairing left to right and promoting an unpaired last node gives the RFC 6962 tree.
    pub fn from_leaf_hashes(leaves: Vec<Hash>) -> Option<Self> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let next = last
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [only] => *only,
                    _ => unreachable!("chunks(2) yields one or two items"),
                })
                .collect();
            levels.push(next);
        }
        Some(MerkleTree { levels })
    }

    /// Builds the tree over raw leaf data.
    pub fn from_leaves<T: AsRef<[u8]>>(leaves: &[T]) -> Option<Self> {
        Self::from_leaf_hashes(leaves.iter().map(|l| leaf_hash(l.as_ref())).collect())
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0; 32])
    }

    /// The leaf hashes, in order.
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Always false: a tree has at least one leaf.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sibling hashes from leaf `index` up to the root (RFC 6962 audit path).
    pub fn path(&self, index: u64) -> Option<Vec<Hash>> {
        let mut i = usize::try_from(index)
            .ok()
            .filter(|i| (*i as u64) < self.len())?;
        let mut path = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            i /= 2;
        }
        Some(path)
    }
}

/// Checks that `leaf` (a leaf hash) sits at `index` of a `count`-leaf tree with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_path(root: &Hash, leaf: &Hash, index: u64, count: u64, path: &[Hash]) -> bool {
    if index >= count {
        return false;
    }
    let (mut f, mut s, mut r) = (index, count - 1, *leaf);
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 MTH, written recursively as in the RFC.
    fn mth(leaves: &[Vec<u8>]) -> Hash {
        if leaves.len() == 1 {
            return leaf_hash(&leaves[0]);
        }
        // Largest power of two strictly below n.
        let k = 1usize << (usize::BITS - 1 - (leaves.len() - 1).leading_zeros());
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    #[test]
    fn root_matches_rfc_and_every_path_verifies() {
        for n in 1..40usize {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; i % 5]).collect();
            let tree = MerkleTree::from_leaves(&leaves).unwrap();
            assert_eq!(tree.root(), mth(&leaves), "n={n}");
            for i in 0..n as u64 {
                let path = tree.path(i).unwrap();
                let leaf = leaf_hash(&leaves[i as usize]);
                assert!(
                    verify_path(&tree.root(), &leaf, i, n as u64, &path),
                    "n={n} i={i}"
                );
                assert!(!verify_path(
                    &tree.root(),
                    &leaf_hash(b"forged"),
                    i,
                    n as u64,
                    &path
                ));
            }
            assert!(tree.path(n as u64).is_none());
        }
    }

    #[test]
    fn node_cannot_pose_as_leaf() {
        let tree = MerkleTree::from_leaves(&[b"a".to_vec(), b"b".to_vec()]).unwrap();
        let mut fake = Vec::new();
        fake.extend_from_slice(&leaf_hash(b"a"));
        fake.extend_from_slice(&leaf_hash(b"b"));
        assert_ne!(
            MerkleTree::from_leaves(&[fake]).unwrap().root(),
            tree.root()
        );
    }
}
