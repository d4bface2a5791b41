//! What the demo reports: who processed which readings (from the gossiped checkpoints), and
//! the failover time split.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use agora_radio::CheckpointRecord;

/// Readings accounting over all devices of the story.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Readings the sensors sent.
    pub sent: u64,
    /// Readings covered by each edge's checkpoints (edge name → count).
    pub by_edge: BTreeMap<String, u64>,
    /// Sent readings no checkpoint covers.
    pub missing: u64,
    /// Readings covered by more than one checkpoint.
    pub duplicated: u64,
    /// Signed data-integrity proofs behind the checkpoints.
    pub proofs: u64,
    /// The missing readings per device, as inclusive ranges of sequence numbers (at most
    /// [`MAX_GAPS`] per device), so a failure says where they fell.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gaps: BTreeMap<u32, Vec<(u32, u32)>>,
    /// The readings more than one checkpoint covers, per device, as inclusive ranges (at most
    /// [`MAX_GAPS`] per device), so a failure says where they fell.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub doubled: BTreeMap<u32, Vec<(u32, u32)>>,
}

/// Most gaps listed per device in [`Coverage::gaps`].
pub const MAX_GAPS: usize = 16;

/// Accounts the readings `1..=sent[device]` of each device against `checkpoints`, naming edges
/// with `name`. Ranges are taken as contiguous when their count says so; a range whose count is
/// smaller than its span (the edge skipped numbers) counts only its ends as covered.
pub fn coverage(
    sent: &BTreeMap<u32, u32>,
    checkpoints: &[CheckpointRecord],
    name: impl Fn(&str) -> String,
) -> Coverage {
    let mut hits: BTreeMap<u32, Vec<u8>> = sent
        .iter()
        .map(|(d, n)| (*d, vec![0u8; *n as usize + 1]))
        .collect();
    let mut c = Coverage {
        sent: sent.values().map(|n| u64::from(*n)).sum(),
        ..Coverage::default()
    };
    for rec in checkpoints {
        if !rec.checkpoint.proof.is_empty() {
            c.proofs += 1;
        }
        for r in &rec.checkpoint.ranges {
            let Some(h) = hits.get_mut(&r.device) else {
                continue;
            };
            *c.by_edge.entry(name(&rec.edge)).or_default() += u64::from(r.count);
            let span = r.last.saturating_sub(r.first) + 1;
            let seqs: Vec<u32> = if r.count == span {
                (r.first..=r.last).collect()
            } else {
                vec![r.first, r.last]
            };
            for s in seqs {
                if let Some(x) = h.get_mut(s as usize) {
                    *x = x.saturating_add(1);
                }
            }
        }
    }
    for (device, h) in &hits {
        for (seq, x) in h.iter().enumerate().skip(1) {
            let seq = u32::try_from(seq).unwrap_or(u32::MAX);
            match x {
                0 => {
                    c.missing += 1;
                    add_to_ranges(c.gaps.entry(*device).or_default(), seq);
                }
                1 => {}
                _ => {
                    c.duplicated += 1;
                    add_to_ranges(c.doubled.entry(*device).or_default(), seq);
                }
            }
        }
    }
    c
}

/// Adds `seq` to ascending inclusive `ranges`, extending the last one when it follows it; at
/// most [`MAX_GAPS`] ranges.
fn add_to_ranges(ranges: &mut Vec<(u32, u32)>, seq: u32) {
    let full = ranges.len() >= MAX_GAPS;
    match ranges.last_mut() {
        Some((_, last)) if last.saturating_add(1) == seq => *last = seq,
        _ if !full => ranges.push((seq, seq)),
        _ => {}
    }
}

/// One failover, in ms from the kill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverSplit {
    /// Kill → first arbitrator attests the customer unreachable.
    pub detection_ms: u64,
    /// First attestation → the block that attests the handover (quorum and delay clause).
    pub attestation_ms: u64,
    /// That block's time → it reached B (consensus rounds and gossip).
    pub commit_ms: u64,
    /// The block reached B → B's service started and A's sensors assigned to it.
    pub activation_ms: u64,
    /// Kill → B's service processed its first reading of A's sensors.
    pub end_to_end_ms: u64,
}

/// Prints who processed which readings.
pub fn print_coverage(c: &Coverage, sensors: usize) {
    println!("\nreadings: {} sent by {sensors} sensors", c.sent);
    for (edge, n) in &c.by_edge {
        println!("  processed by {edge:<12} {n}");
    }
    println!(
        "  missing {}  duplicated {}  (signed data-integrity proofs: {})",
        c.missing, c.duplicated, c.proofs
    );
}

/// Prints p50/p99 of each failover phase.
pub fn print_splits(s: &[FailoverSplit]) {
    let col = |f: fn(&FailoverSplit) -> u64| -> Vec<u64> { s.iter().map(f).collect() };
    let rows = [
        ("detection", col(|x| x.detection_ms)),
        ("attestation", col(|x| x.attestation_ms)),
        ("commit", col(|x| x.commit_ms)),
        ("activation", col(|x| x.activation_ms)),
        ("end to end", col(|x| x.end_to_end_ms)),
    ];
    println!("\nfailover (ms from the kill), {} run(s):", s.len());
    println!("  {:<12} {:>8} {:>8}", "phase", "p50", "p99");
    for (name, v) in rows {
        println!(
            "  {name:<12} {:>8} {:>8}",
            percentile(&v, 50),
            percentile(&v, 99)
        );
    }
}

/// `p`-th percentile (0–100) of `v`, nearest rank.
pub fn percentile(v: &[u64], p: u64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = (p * s.len() as u64).div_ceil(100).max(1) as usize;
    s[rank.min(s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_radio::{Checkpoint, SeqRange};

    fn cp(edge: &str, device: u32, first: u32, last: u32) -> CheckpointRecord {
        CheckpointRecord {
            edge: edge.into(),
            mine: false,
            checkpoint: Checkpoint {
                service: "s".into(),
                ranges: vec![SeqRange {
                    device,
                    first,
                    last,
                    count: last - first + 1,
                }],
                proof: "p".into(),
                released: vec![],
                at: 0,
            },
            verified: true,
        }
    }

    #[test]
    fn coverage_counts_missing_and_duplicates() {
        let sent = BTreeMap::from([(1, 10)]);
        let c = coverage(&sent, &[cp("a", 1, 1, 4), cp("b", 1, 4, 8)], |e| {
            e.to_string()
        });
        assert_eq!(c.sent, 10);
        assert_eq!(c.by_edge["a"], 4);
        assert_eq!(c.by_edge["b"], 5);
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.missing, 2);
        assert_eq!(c.gaps, BTreeMap::from([(1, vec![(9, 10)])]));
        assert_eq!(c.doubled, BTreeMap::from([(1, vec![(4, 4)])]));
        assert_eq!(c.proofs, 2);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v = [5, 1, 3, 2, 4];
        assert_eq!(percentile(&v, 50), 3);
        assert_eq!(percentile(&v, 99), 5);
        assert_eq!(percentile(&[], 50), 0);
    }
}
