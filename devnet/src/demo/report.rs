//! What the demo reports: who processed which readings (from the gossiped checkpoints), the
//! failover time split, and with `--devices` A's devices and their manager during each outage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use agora_devices::DeviceMeta;
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

/// How the provider of one failover saw A's devices during A's outage (`devnet demo
/// --devices`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageView {
    /// That failover's provider B (devnet node name).
    pub provider: String,
    /// Each of A's devices → the manager B's `GET /v1/devices` named (node name; `None`: not
    /// listed, or no manager known there).
    pub managers: BTreeMap<u32, Option<String>>,
}

/// Who managed a device during one outage, as that outage's provider said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageManager {
    /// The failover's provider B (node name).
    pub provider: String,
    /// The manager B named (node name; `None`: none).
    pub manager: Option<String>,
}

/// One of A's devices in the report (the JSON field `devices`): what it says about itself,
/// and who managed it during each outage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRow {
    /// Device id.
    pub id: u32,
    /// What it said about itself last (`None`: it never announced itself).
    pub meta: Option<DeviceMeta>,
    /// Per failover, in order: the manager its provider named during A's outage.
    pub outages: Vec<OutageManager>,
}

impl DeviceRow {
    /// Whether, in every failover, the provider named itself the device's manager: B, not
    /// A, manages A's devices after the handover.
    pub fn managed_by_providers(&self) -> bool {
        !self.outages.is_empty()
            && self
                .outages
                .iter()
                .all(|o| o.manager.as_deref() == Some(o.provider.as_str()))
    }
}

/// The report's rows for `devices`: what each says about itself (`metas`) and, per failover,
/// whom its provider named its manager (`outages`).
pub fn device_rows(
    devices: &[u32],
    metas: &BTreeMap<u32, DeviceMeta>,
    outages: &[OutageView],
) -> Vec<DeviceRow> {
    devices
        .iter()
        .map(|id| DeviceRow {
            id: *id,
            meta: metas.get(id).cloned(),
            outages: outages
                .iter()
                .map(|o| OutageManager {
                    provider: o.provider.clone(),
                    manager: o.managers.get(id).cloned().flatten(),
                })
                .collect(),
        })
        .collect()
}

/// The lines of the device section: a header, then one line per device.
pub fn device_lines(rows: &[DeviceRow]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<7} {:<14} {:<8} {:<7} manager during A's outage",
        "device", "firmware", "version", "locked"
    )];
    for r in rows {
        let (firmware, version, locked) = match &r.meta {
            Some(m) => (
                m.firmware_type.as_str(),
                m.version.as_str(),
                if m.locked { "yes" } else { "no" },
            ),
            None => ("-", "-", "-"),
        };
        let managers: Vec<String> = r
            .outages
            .iter()
            .map(|o| match o.manager.as_deref() {
                Some(m) if m == o.provider => format!("{m} (B)"),
                Some(m) => format!("{m}, NOT B ({})", o.provider),
                None => format!("none, NOT B ({})", o.provider),
            })
            .collect();
        let managers = if managers.is_empty() {
            "-".to_string()
        } else {
            managers.join("; ")
        };
        out.push(format!(
            "{:<7} {firmware:<14} {version:<8} {locked:<7} {managers}",
            r.id
        ));
    }
    out
}

/// Prints the device section.
pub fn print_devices(rows: &[DeviceRow]) {
    println!("\nA's devices (what they say about themselves; their manager as B listed it):");
    for l in device_lines(rows) {
        println!("  {l}");
    }
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
    #![allow(clippy::unwrap_used)]
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

    fn meta(id: u32, version: &str, locked: bool) -> DeviceMeta {
        DeviceMeta {
            id,
            kind: "thermo".into(),
            firmware_type: "agora-sensor".into(),
            version: version.into(),
            locked,
            mode: agora_devices::Mode::Running,
            boots: 1,
        }
    }

    fn outage(provider: &str, managers: &[(u32, Option<&str>)]) -> OutageView {
        OutageView {
            provider: provider.into(),
            managers: managers
                .iter()
                .map(|(d, m)| (*d, m.map(String::from)))
                .collect(),
        }
    }

    #[test]
    fn the_device_section_says_b_manages_a_device_only_when_b_named_itself_each_time() {
        let metas = BTreeMap::from([
            (101, meta(101, "2.0.0", false)),
            (103, meta(103, "1.0.0", true)),
        ]);
        let outages = [
            outage(
                "node3",
                &[
                    (101, Some("node3")),
                    (102, Some("node3")),
                    (103, Some("node3")),
                ],
            ),
            outage("node4", &[(101, Some("node4")), (102, Some("node6"))]),
        ];
        let rows = device_rows(&[101, 102, 103], &metas, &outages);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].meta, Some(meta(101, "2.0.0", false)));
        assert_eq!(rows[1].meta, None, "102 never announced itself");
        assert!(rows[2].meta.as_ref().is_some_and(|m| m.locked));
        // 101: each failover's B named itself; 102: the second B named A (node6); 103: the
        // second B did not list it.
        assert!(rows[0].managed_by_providers());
        assert!(!rows[1].managed_by_providers());
        assert!(!rows[2].managed_by_providers());
        assert_eq!(
            rows[2].outages[1],
            OutageManager {
                provider: "node4".into(),
                manager: None
            }
        );
        let no_failover = device_rows(&[101], &metas, &[]);
        assert!(
            !no_failover[0].managed_by_providers(),
            "no outage says nothing about B"
        );

        let lines = device_lines(&rows);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].contains("manager during A's outage"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("101") && lines[1].contains("2.0.0"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("node3 (B); node4 (B)"), "{}", lines[1]);
        assert!(lines[2].contains("node6, NOT B (node4)"), "{}", lines[2]);
        assert!(lines[3].contains("1.0.0    yes"), "{}", lines[3]);
        assert!(lines[3].ends_with("none, NOT B (node4)"), "{}", lines[3]);
        // The JSON field `devices` carries the metadata and each outage's manager.
        let v = serde_json::to_value(&rows).unwrap();
        assert_eq!(v[2]["meta"]["locked"], true);
        assert_eq!(v[0]["outages"][1]["manager"], "node4");
        assert_eq!(v[0]["outages"][1]["provider"], "node4");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v = [5, 1, 3, 2, 4];
        assert_eq!(percentile(&v, 50), 3);
        assert_eq!(percentile(&v, 99), 5);
        assert_eq!(percentile(&[], 50), 0);
    }
}
