//! Gives the system back the memory the allocator keeps after the program freed it.
//!
//! glibc's malloc keeps what a thread freed in that thread's arena and returns pages to the
//! system only from the top of a heap, so after a burst of network traffic (gossip, Kademlia
//! lookups, connection upgrades) an idle node stays resident at the burst's high-water mark.
//! On a loopback devnet that retention grew with the size of the network: an idle node held
//! 7.4 MiB of anonymous memory among 10 nodes and 13.3 MiB among 60, of which only 1.3 MiB
//! more was live (docs/PERFORMANCE.md, "Idle memory"). `agora node run` calls [`release_freed`]
//! every [`RELEASE_EVERY`].

use std::time::Duration;

/// How often the node hands freed memory back: rare enough that the walk over every arena
/// (a few hundred microseconds for an idle node) costs nothing, often enough that a burst's
/// pages do not stay resident for long.
pub const RELEASE_EVERY: Duration = Duration::from_secs(15);

/// Asks glibc to return the free pages of every arena to the system (`malloc_trim(0)`), and
/// says whether it gave anything back. Live allocations are untouched. Elsewhere (musl, other
/// systems) it does nothing and returns `false`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and owns no caller state; glibc locks each
    // arena while it walks it, like any other allocator call.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Not glibc: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident anonymous memory of this process, in KiB.
    fn anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn freed_memory_below_a_live_allocation_goes_back_to_the_system() {
        // On a thread of its own (its own arena): 32 MiB in 4 KiB blocks, then one block
        // allocated last stays live on top while everything below it is freed — memory that
        // glibc's normal free path keeps resident.
        let (before, after) = std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..8192).map(|i| vec![i as u8; 4096]).collect();
            let top = vec![1u8; 4096];
            blocks.clear();
            blocks.shrink_to_fit();
            let before = anon_kib();
            let released = release_freed();
            let after = anon_kib();
            assert!(released, "malloc_trim released nothing");
            drop(top);
            (before, after)
        })
        .join()
        .unwrap_or((0, 0));
        assert!(
            after + 16 * 1024 < before,
            "resident anonymous memory went from {before} KiB to {after} KiB"
        );
    }
}
