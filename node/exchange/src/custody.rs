//! The data side of storage contracts: the customer's chunk commitment, the provider taking
//! custody of a file, and answers to proof-of-storage challenges (`agora_storage::challenge`).
//!
//! The commitment travels as its own block (CBOR, raw codec, blake3) named by the contract's
//! `config` CID. The raw codec has no links, so an arbitrator that fetches the commitment never
//! pulls the file itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agora_storage::challenge::{Challenge, ChallengeResponse, Prover, StorageCommitment};
use agora_storage::hash::{RAW, cid_v1_blake3, verify_block};
use agora_storage::merkle::Hash;
use agora_storage::{Cid, StorageError};

use super::{Embedded, ExchangeError, StorageHandle};
use crate::holds::Released;

/// Most chunk indices one challenge may ask for (bounds the work a challenger can demand).
pub const MAX_CHALLENGE_INDICES: usize = 64;

/// Most chunk trees kept for answering challenges.
const KEPT_PROVERS: usize = 1_024;
/// Bytes of storage bought per chunk a file may have (honest files chunk at 256 KiB).
const CHUNK_BYTES_BOUGHT: u64 = 64 * 1024;
/// Most chunks over all kept trees (about 100 bytes each in memory: ~27 MB, 64 GiB of files
/// in 256 KiB chunks).
const KEPT_CHUNKS: usize = 262_144;

/// Chunk trees of files this node answers challenges for, so an answer costs the challenged
/// chunks, not a pass over the whole file. Answers still read every challenged chunk from the
/// store, so a dropped chunk fails whatever is cached. Built when custody is taken (the file is
/// read then anyway) and evicted least recently used first: before, the whole cache was
/// cleared at 16 files, so a customer with a large file and fifteen small contracts on one
/// provider made it rebuild the large file's tree inside the 5 s answer deadline, round after
/// round, and lose rounds it had honestly kept (storage audit of session 50).
///
/// Each tree built is also written to `<data-dir>/custody-trees/<file>.tree` (each chunk's
/// block and hash, about 70 bytes a chunk) and read back instead of rebuilt after a restart,
/// when custody is taken again or a challenge finds it not cached: before, a restarted
/// provider's first round for a large file read and hashed the whole file inside the answer
/// deadline (THREATS C25). The file goes with the last custody of its file here, and, once
/// the node has caught up, with every storage contract it provides that ended (also while
/// it was down); at most [`KEPT_PROVERS`] are kept, the least recently used going first.
#[derive(Clone, Debug, Default)]
pub struct Provers {
    cache: Arc<Mutex<ProverCache>>,
    /// Where trees are kept on disk (none: in memory only).
    dir: Option<Arc<PathBuf>>,
}

/// How the holder of a contract's custody is named: `custody:<contract>`.
pub const CUSTODY_HOLDER_PREFIX: &str = "custody:";

/// The folder of the data dir trees are kept in.
pub const TREES_DIR: &str = "custody-trees";
/// A kept tree's file starts with this (bump it whenever the tree's rule changes: a tree
/// read back is trusted to be the file's), then the blake3 hash of the rest (32 bytes), the
/// root (32 bytes), the chunk count (u64 LE), each chunk's hash (32 bytes), and each chunk's
/// CID (its length as u16 LE, then its bytes).
const TREE_MAGIC: &[u8; 8] = b"agoraT2\n";

/// Where a prover came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Built {
    Cached,
    Loaded,
    Fresh,
}

#[derive(Debug, Default)]
struct ProverCache {
    kept: HashMap<Cid, (Arc<Prover>, u64)>,
    chunks: usize,
    clock: u64,
}

impl Provers {
    /// A cache that keeps its trees in `dir` as well.
    pub(crate) fn kept_in(dir: PathBuf) -> Self {
        Provers {
            cache: Arc::default(),
            dir: Some(Arc::new(dir)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProverCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tree_path(&self, file: &Cid) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{file}.tree")))
    }

    /// `file`'s prover for a custody taken or renewed: as [`Self::load_or_build`], and a
    /// cached tree is written again if an ended custody of the same file removed it. Challenge
    /// answers skip this, so one served from the cache touches no file (before, each paid a
    /// `stat`). Blocking.
    fn for_custody<S: agora_storage::BlockStore + ?Sized>(
        &self,
        store: &S,
        file: &Cid,
    ) -> agora_storage::Result<(Arc<Prover>, Built)> {
        let (p, built) = self.load_or_build(store, file)?;
        if built == Built::Cached
            && let Some(path) = self.tree_path(file)
            && !path.exists()
            && let Err(e) = write_tree(&path, &p)
        {
            tracing::warn!(path = %path.display(), error = %e, "chunk tree not kept on disk");
        }
        Ok((p, built))
    }

    /// `file`'s prover: cached, or from its kept tree (checked against the root kept with it),
    /// or built from the file's chunks and kept on disk. Whether it is the commitment a
    /// contract claims is the caller's check: the tree depends on the file alone, so a contract
    /// naming the file with a wrong commitment cannot make it read the file again. Blocking.
    fn load_or_build<S: agora_storage::BlockStore + ?Sized>(
        &self,
        store: &S,
        file: &Cid,
    ) -> agora_storage::Result<(Arc<Prover>, Built)> {
        if let Some(p) = self.get(file) {
            return Ok((p, Built::Cached));
        }
        if let Some(path) = self.tree_path(file)
            && let Some((root, leaves, hashes)) = read_tree(&path)
        {
            match Prover::from_parts(file, leaves, hashes) {
                Ok(p) if p.commitment().root == root => {
                    // Used: the last to go when the folder is bounded.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    return Ok((Arc::new(p), Built::Loaded));
                }
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "kept chunk tree does not fit its file: built again")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "kept chunk tree unusable: built again")
                }
            }
        }
        let p = Arc::new(Prover::new(store, file)?);
        if let Some(path) = self.tree_path(file) {
            if let Err(e) = write_tree(&path, &p) {
                tracing::warn!(path = %path.display(), error = %e, "chunk tree not kept on disk");
            }
            self.bound_dir();
        }
        Ok((p, Built::Fresh))
    }

    /// Keeps on disk only the trees of `files` (the files of the storage contracts this node
    /// provides that have not ended): a custody that ended while the node was down left its
    /// tree behind. Temporary files of a write a crash cut short go too. Blocking.
    fn retain(&self, files: &std::collections::BTreeSet<Cid>) -> usize {
        let Some(dir) = &self.dir else { return 0 };
        let Ok(entries) = std::fs::read_dir(dir.as_path()) else {
            return 0;
        };
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let mut removed = 0;
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = match name.strip_suffix(".tree") {
                Some(stem) => stem.parse::<Cid>().map_or(true, |c| !files.contains(&c)),
                None => {
                    name.ends_with(".tmp")
                        && e.metadata()
                            .and_then(|m| m.modified())
                            .is_ok_and(|t| t < old)
                }
            };
            if stale && std::fs::remove_file(&path).is_ok() {
                tracing::debug!(path = %path.display(), "kept chunk tree of no custody here removed");
                removed += 1;
            }
        }
        removed
    }

    /// Keeps at most [`KEPT_PROVERS`] trees on disk, the least recently written or read back
    /// first.
    fn bound_dir(&self) {
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir.as_path()) else {
            return;
        };
        let mut trees: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "tree"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if trees.len() <= KEPT_PROVERS {
            return;
        }
        trees.sort();
        for (_, path) in &trees[..trees.len() - KEPT_PROVERS] {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Forgets `file`'s tree on disk (its last custody ended); the cache lets it age out.
    fn forget(&self, file: &Cid) {
        if let Some(path) = self.tree_path(file) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(%file, "kept chunk tree removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "kept chunk tree not removed")
                }
            }
        }
    }

    fn get(&self, file: &Cid) -> Option<Arc<Prover>> {
        let mut cache = self.lock();
        cache.clock += 1;
        let now = cache.clock;
        let (prover, used) = cache.kept.get_mut(file)?;
        *used = now;
        Some(prover.clone())
    }

    fn keep(&self, file: Cid, prover: Arc<Prover>) {
        let mut cache = self.lock();
        cache.clock += 1;
        let now = cache.clock;
        if let Some((_, used)) = cache.kept.get_mut(&file) {
            *used = now;
            return;
        }
        let chunks = prover.chunks();
        while !cache.kept.is_empty()
            && (cache.kept.len() >= KEPT_PROVERS || cache.chunks + chunks > KEPT_CHUNKS)
        {
            let oldest = cache
                .kept
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(cid, _)| *cid);
            let Some(oldest) = oldest else { break };
            if let Some((gone, _)) = cache.kept.remove(&oldest) {
                cache.chunks -= gone.chunks();
            }
        }
        cache.chunks += chunks;
        cache.kept.insert(file, (prover, now));
    }

    /// Whether `file`'s tree is kept (tests).
    #[cfg(test)]
    fn holds(&self, file: &Cid) -> bool {
        let cache = self.lock();
        cache.kept.contains_key(file)
    }
}

/// Writes `prover`'s tree to `path` (through a temporary file, so a crash leaves the old one
/// or none).
fn write_tree(path: &Path, prover: &Prover) -> std::io::Result<()> {
    let hashes = prover.leaf_hashes();
    let mut body = Vec::with_capacity(40 + 72 * hashes.len());
    body.extend_from_slice(&prover.commitment().root);
    body.extend_from_slice(&(hashes.len() as u64).to_le_bytes());
    for h in hashes {
        body.extend_from_slice(h);
    }
    for leaf in prover.leaves() {
        let cid = leaf.to_bytes();
        let len = u16::try_from(cid.len()).map_err(std::io::Error::other)?;
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(&cid);
    }
    let mut bytes = Vec::with_capacity(40 + body.len());
    bytes.extend_from_slice(TREE_MAGIC);
    bytes.extend_from_slice(blake3::hash(&body).as_bytes());
    bytes.extend_from_slice(&body);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A name of its own: two builds of one file may write at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tree.{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}

/// A kept tree: its root, chunks and their hashes.
type KeptTree = (Hash, Vec<Cid>, Vec<Hash>);

/// The tree kept at `path`, if it holds a whole, undamaged tree file.
fn read_tree(path: &Path) -> Option<KeptTree> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(TREE_MAGIC)?;
    let (sum, body) = rest.split_first_chunk::<32>()?;
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let (root, rest) = body.split_first_chunk::<32>()?;
    let (count, rest) = rest.split_first_chunk::<8>()?;
    let count = usize::try_from(u64::from_le_bytes(*count)).ok()?;
    let (hashes, mut rest) = rest.split_at_checked(count.checked_mul(32)?)?;
    let hashes = hashes
        .chunks_exact(32)
        .filter_map(|h| <Hash>::try_from(h).ok())
        .collect();
    let mut leaves = Vec::with_capacity(count);
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let (cid, tail) = tail.split_at_checked(usize::from(u16::from_le_bytes(*len)))?;
        leaves.push(Cid::try_from(cid).ok()?);
        rest = tail;
    }
    (rest.is_empty() && leaves.len() == count).then_some((*root, leaves, hashes))
}

fn invalid(msg: String) -> ExchangeError {
    ExchangeError::Invalid(msg)
}

/// Encodes a commitment as its block.
pub fn commitment_block(commitment: &StorageCommitment) -> Result<(Cid, Vec<u8>), String> {
    let bytes = serde_cbor::to_vec(commitment).map_err(|e| e.to_string())?;
    Ok((cid_v1_blake3(RAW, &bytes), bytes))
}

/// Whether `cid` can name a commitment block: raw codec (no links), blake3.
pub fn check_commitment_cid(cid: &Cid) -> Result<(), String> {
    if cid.codec() != RAW || cid.hash().code() != agora_storage::hash::BLAKE3 {
        return Err(format!(
            "commitment {cid} is not a raw blake3 block (a commitment has no links)"
        ));
    }
    Ok(())
}

/// Decodes a commitment block after checking it hashes to `cid`.
pub fn decode_commitment(cid: &Cid, bytes: &[u8]) -> Result<StorageCommitment, String> {
    check_commitment_cid(cid)?;
    if bytes.len() > agora_wire::storage::MAX_COMMITMENT_BLOCK {
        return Err(format!(
            "commitment {cid} is {} bytes; at most {}",
            bytes.len(),
            agora_wire::storage::MAX_COMMITMENT_BLOCK
        ));
    }
    verify_block(cid, bytes).map_err(|e| e.to_string())?;
    serde_cbor::from_slice(bytes).map_err(|e| format!("commitment {cid} is malformed: {e}"))
}

impl StorageHandle {
    fn custody_store(&self) -> Result<&Embedded, ExchangeError> {
        self.embedded().ok_or_else(|| {
            invalid(
                "storage contracts need the embedded store (storage.backend = \"embedded\"): \
                 proofs of storage are answered from the node's own blocks"
                    .into(),
            )
        })
    }

    /// Customer: computes the chunk commitment of `file` (held locally), stores and pins its
    /// block, and returns the block's CID with the commitment.
    pub async fn commit_file(&self, file: Cid) -> Result<(Cid, StorageCommitment), ExchangeError> {
        let store = self.custody_store()?;
        let commitment = store
            .blocking(move |s| StorageCommitment::for_file(s, &file))
            .await
            .map_err(|e| {
                invalid(format!(
                    "cannot commit to {file}: {e}; add the file to this node first (`agora storage add`)"
                ))
            })?;
        let (cid, block) = commitment_block(&commitment).map_err(invalid)?;
        store
            .blocking(move |s| {
                s.put(&cid, &block)?;
                s.add_pin(&cid)
            })
            .await?;
        store.provide(cid).await;
        Ok((cid, commitment))
    }

    /// A commitment block, fetched if needed, verified and decoded. Only a raw blake3 block
    /// of at most [`agora_wire::storage::MAX_COMMITMENT_BLOCK`] bytes is fetched: a contract's
    /// `config` naming a large DAG would otherwise be fetched whole, links and all, before the
    /// commitment's checks and the contract's byte limit apply.
    pub async fn commitment(&self, cid: Cid) -> Result<StorageCommitment, ExchangeError> {
        check_commitment_cid(&cid).map_err(invalid)?;
        let mut cfg = self.fetch_config();
        cfg.max_bytes = Some(agora_wire::storage::MAX_COMMITMENT_BLOCK as u64);
        let block = self.backend.get_block(cid, cfg).await?;
        decode_commitment(&cid, &block).map_err(invalid)
    }

    /// Provider: fetches and holds `file` (at most `max_bytes`, the storage the contract buys)
    /// and its commitment for `holder` (the contract; [`crate::holds`]), and checks that the
    /// commitment really describes the file (a wrong one would make every honest answer
    /// fail). Refused custody holds nothing.
    pub async fn take_custody(
        &self,
        file: Cid,
        commitment: Cid,
        max_bytes: u64,
        holder: &str,
    ) -> Result<StorageCommitment, ExchangeError> {
        #[cfg(feature = "test-utils")]
        if self.skip_custody.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(%file, %commitment, "byzantine: custody claimed, nothing fetched");
            return Ok(StorageCommitment {
                file,
                root: Default::default(),
                chunks: 0,
            });
        }
        let taken = self.hold_custody(file, commitment, max_bytes, holder).await;
        if taken.is_err() {
            self.release_custody(file, commitment, holder).await;
        }
        taken
    }

    /// Provider: keeps on disk only the chunk trees of `files` (the files of the storage
    /// contracts it provides that have not ended; THREATS C25); how many went.
    pub async fn retain_custody_trees(&self, files: std::collections::BTreeSet<Cid>) -> usize {
        let provers = self.provers.clone();
        tokio::task::spawn_blocking(move || provers.retain(&files))
            .await
            .unwrap_or(0)
    }

    /// Provider: the contract closed; `holder` lets go of its file and commitment (unpinned
    /// unless something else here holds or keeps them).
    pub async fn release_custody(&self, file: Cid, commitment: Cid, holder: &str) {
        for cid in [file, commitment] {
            match self.release(cid, holder).await {
                Err(e) => tracing::debug!(%cid, holder, error = %e, "custody hold not released"),
                // This holder never held it (its custody was refused before the hold): whoever
                // holds it still needs the tree.
                Ok(Released::NotHeld) => {}
                // The file's tree on disk goes with its last custody here; asked again just
                // before the removal, so a custody of the same file taken meanwhile keeps it.
                Ok(_) if cid == file => {
                    let me = self.clone();
                    // Under the hold table's lock: a custody of the file taken after it finds
                    // the tree gone and writes it again.
                    let _ = tokio::task::spawn_blocking(move || {
                        me.read_holds(|t| {
                            if !t.held_by_a(&file, CUSTODY_HOLDER_PREFIX) {
                                me.provers.forget(&file);
                            }
                        });
                    })
                    .await;
                }
                Ok(_) => {}
            }
        }
    }

    async fn hold_custody(
        &self,
        file: Cid,
        commitment: Cid,
        max_bytes: u64,
        holder: &str,
    ) -> Result<StorageCommitment, ExchangeError> {
        let store = self.custody_store()?;
        let claimed = self.commitment(commitment).await?;
        if claimed.file != file {
            return Err(invalid(format!(
                "commitment {commitment} is for {}, not for the contract's file {file}",
                claimed.file
            )));
        }
        self.hold(file, holder, Some(max_bytes)).await?;
        self.hold(
            commitment,
            holder,
            Some(agora_wire::storage::MAX_COMMITMENT_BLOCK as u64),
        )
        .await?;
        // What the file declares, not what it took to fetch: a DAG of a few MiB whose links
        // repeat one block declares terabytes, which building the commitment (and later each
        // challenge's prover) would read and hash (THREATS C19).
        let declared = store
            .blocking(move |s| agora_storage::unixfs::declared_size(s, &file))
            .await?;
        if declared > max_bytes {
            return Err(invalid(format!(
                "file {file} declares {declared} bytes, more than the contract's {max_bytes}"
            )));
        }
        // One pass over the file builds the tree the challenges are answered from (or it is
        // read back as kept by an earlier run); it must give the claimed commitment.
        let provers = self.provers.clone();
        let (prover, _) = store
            .blocking(move |s| provers.for_custody(s, &file))
            .await?;
        // Chunks are what an answer's tree holds in memory: at most one per 64 KiB bought
        // (honest files chunk at 256 KiB), so a DAG of one-byte leaves declaring little cannot
        // build a tree of a million chunks that pushes every other file's out of the cache;
        // filling the whole cache (KEPT_CHUNKS) takes 16 GiB bought.
        let most = usize::try_from(max_bytes / CHUNK_BYTES_BOUGHT)
            .unwrap_or(usize::MAX)
            .max(1);
        if prover.chunks() > most {
            return Err(invalid(format!(
                "file {file} has {} chunks, more than one per {} KiB of the {max_bytes} bytes bought",
                prover.chunks(),
                CHUNK_BYTES_BOUGHT / 1024
            )));
        }
        let actual = prover.commitment();
        if actual != claimed {
            return Err(invalid(format!(
                "commitment {commitment} does not match the chunks of {file}"
            )));
        }
        self.provers.keep(file, prover);
        Ok(actual)
    }

    /// Provider: the commitment block `cid` of the contract keeping `file`, as taken into
    /// custody, for a committee member that does not hold it (THREATS P4). Read from this
    /// node's own store only (never fetched on demand: a provider that did not keep it cannot
    /// show it), and only a pinned raw block that decodes as a commitment to `file`.
    pub async fn show_commitment(&self, file: Cid, cid: Cid) -> Result<Vec<u8>, ExchangeError> {
        let store = self.custody_store()?;
        let block = store
            .blocking(move |s| {
                if !s.pins()?.contains(&cid) {
                    return Err(StorageError::NotFound { cid });
                }
                s.get(&cid)
            })
            .await?;
        if block.len() > agora_wire::storage::MAX_COMMITMENT_BLOCK {
            return Err(invalid(format!(
                "block {cid} is {} bytes, too large for a commitment",
                block.len()
            )));
        }
        let shown = decode_commitment(&cid, &block).map_err(invalid)?;
        if shown.file != file {
            return Err(invalid(format!(
                "commitment {cid} is for {}, not for {file}",
                shown.file
            )));
        }
        Ok(block)
    }

    /// Provider: answers `challenge` from the blocks held now. Refuses files this node has not
    /// pinned and oversized challenges.
    pub async fn prove(&self, challenge: Challenge) -> Result<ChallengeResponse, ExchangeError> {
        if challenge.indices.len() > MAX_CHALLENGE_INDICES {
            return Err(invalid(format!(
                "challenge asks for {} chunks; at most {MAX_CHALLENGE_INDICES}",
                challenge.indices.len()
            )));
        }
        let store = self.custody_store()?;
        let file = challenge.file;
        let provers = self.provers.clone();
        let (answer, prover, built) = store
            .blocking(move |s| {
                if !s.pins()?.contains(&file) {
                    return Err(StorageError::NotFound { cid: file });
                }
                // `get` marks a cached one used.
                let (p, built) = provers.load_or_build(s, &file)?;
                Ok((p.respond(s, &challenge)?, p, built))
            })
            .await?;
        if built != Built::Cached {
            self.provers.keep(file, prover);
        }
        Ok(answer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use agora_storage::challenge::StorageCommitment;
    use agora_storage::hash::cid_v1_blake3;

    use super::*;

    /// A file of `chunks` 1 KiB chunks in `store`, and its prover.
    fn prover(
        store: &agora_storage::MemoryBlockStore,
        seed: u32,
        chunks: usize,
    ) -> (Cid, Arc<Prover>) {
        // Distinct per seed: the seed's bytes start every chunk.
        let data: Vec<u8> = (0..chunks * 1024)
            .map(|i| match i % 1024 {
                k @ 0..4 => seed.to_le_bytes()[k],
                k => k as u8,
            })
            .collect();
        let options = agora_storage::ImportOptions {
            chunk_size: 1024,
            ..Default::default()
        };
        let file = agora_storage::import_file(store, &data[..], options).unwrap();
        (file, Arc::new(Prover::new(store, &file).unwrap()))
    }

    /// Storage audit of session 50: the prover cache evicts the least recently used tree, not
    /// everything, and a tree used again is not rebuilt; the chunk budget bounds its memory.
    #[test]
    fn kept_provers_are_evicted_least_recently_used_within_the_chunk_budget() {
        let store = agora_storage::MemoryBlockStore::new();
        let provers = Provers::default();
        let (big, big_prover) = prover(&store, 7, 40);
        assert_eq!(big_prover.chunks(), 40);
        provers.keep(big, big_prover.clone());
        // Many small files, the big one challenged between them: it stays.
        let mut small = Vec::new();
        for seed in 0..(KEPT_PROVERS as u32 + 40) {
            let (file, p) = prover(&store, 1_000 + seed, 1);
            provers.keep(file, p);
            small.push(file);
            assert!(provers.get(&big).is_some(), "the tree in use was evicted");
        }
        assert!(
            !provers.holds(&small[0]),
            "the oldest small file is evicted"
        );
        assert!(provers.holds(small.last().unwrap()));
        let cache = provers.cache.lock().unwrap();
        assert!(cache.kept.len() <= KEPT_PROVERS);
        assert_eq!(
            cache.chunks,
            cache.kept.values().map(|(p, _)| p.chunks()).sum::<usize>()
        );
        drop(cache);
        // Keeping a kept tree again changes nothing.
        provers.keep(big, big_prover);
        assert!(provers.holds(&big));
    }

    /// THREATS C25: a tree built once is kept on disk and read back after a restart without
    /// reading the file's chunks; a damaged tree file is not used; a tree served from the
    /// cache to a renewal is written again when an ended custody removed it, one served to a
    /// challenge answer is not (mutant: the write-back in `load_or_build` again); only the
    /// trees of files still in custody are kept.
    #[test]
    fn a_kept_tree_is_read_back_without_the_chunks_and_a_damaged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = agora_storage::MemoryBlockStore::new();
        let (file, built) = prover(&store, 3, 40);
        let want = built.commitment();
        let first = Provers::kept_in(dir.path().to_path_buf());
        let (p, how) = first.load_or_build(&store, &file).unwrap();
        assert_eq!((how, p.commitment()), (Built::Fresh, want));
        first.keep(file, p);
        // An ended custody of the file removed its tree; a challenge answer served from the
        // cache leaves the disk alone, a renewal served from it writes the tree again.
        let path = first.tree_path(&file).unwrap();
        first.forget(&file);
        assert!(!path.exists());
        let (_, how) = first.load_or_build(&store, &file).unwrap();
        assert_eq!(how, Built::Cached);
        assert!(!path.exists(), "an answer from the cache wrote the tree");
        let (_, how) = first.for_custody(&store, &file).unwrap();
        assert_eq!(how, Built::Cached);
        assert!(path.exists(), "the renewal's tree is on disk again");
        // The next run: its cache is empty and the chunks are gone, only the DAG is left.
        for leaf in agora_storage::unixfs::file_leaves(&store, &file).unwrap() {
            agora_storage::BlockStore::delete(&store, &leaf).unwrap();
        }
        let restarted = Provers::kept_in(dir.path().to_path_buf());
        let (p, how) = restarted.load_or_build(&store, &file).unwrap();
        assert_eq!((how, p.commitment()), (Built::Loaded, want));
        // Only the trees of files in custody stay.
        let other = cid_v1_blake3(RAW, b"another file");
        assert_eq!(restarted.retain(&[file].into()), 0);
        assert_eq!(restarted.retain(&[other].into()), 1);
        assert!(!path.exists());
        write_tree(&path, &p).unwrap();
        // A damaged tree file is not used (and the chunks are gone: nothing to build from).
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            Provers::kept_in(dir.path().to_path_buf())
                .load_or_build(&store, &file)
                .is_err()
        );
        std::fs::write(&path, &bytes[..last]).unwrap();
        assert!(read_tree(&path).is_none(), "a truncated tree file");
        restarted.forget(&file);
        assert!(!path.exists());
    }

    #[test]
    fn a_dag_cannot_name_a_commitment() {
        let store = agora_storage::MemoryBlockStore::new();
        let (file, _) = prover(&store, 3, 4);
        assert!(check_commitment_cid(&file).is_err(), "{file}");
        let raw = cid_v1_blake3(RAW, b"x");
        assert!(check_commitment_cid(&raw).is_ok());
        assert!(decode_commitment(&raw, &vec![0; 2_000]).is_err());
    }

    #[test]
    fn commitment_blocks_round_trip_and_reject_tampering() {
        let file = cid_v1_blake3(RAW, b"file");
        let c = StorageCommitment::from_chunks(file, &[b"a".to_vec(), b"b".to_vec()]).unwrap();
        let (cid, block) = commitment_block(&c).unwrap();
        assert_eq!(decode_commitment(&cid, &block).unwrap(), c);
        let mut bad = block.clone();
        bad[3] ^= 1;
        assert!(decode_commitment(&cid, &bad).is_err());
        let not_raw = cid_v1_blake3(agora_storage::hash::DAG_CBOR, &block);
        assert!(decode_commitment(&not_raw, &block).is_err());
    }
}
