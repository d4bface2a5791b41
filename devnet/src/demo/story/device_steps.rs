//! The story's steps on A's devices with endpoints (`agora devnet demo --devices`, issue #16):
//! A flashes its unlocked devices before its first contract, and the provider says whom it
//! names their manager during A's outage.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::{DEVICES, Story, api, short, wait_for};
use agora_api::storage::AddRequest;
use agora_devices::{Outcome, SkipReason};
use agora_radio::firmware::{JobRequest, JobStarted, JobView};
use agora_radio::{DeviceList, RadioStatus};
use agora_wire::now_ms;

/// The version A's unlocked devices run after the demo's firmware job (they start on
/// [`crate::devices::START_VERSION`]).
pub const DEMO_FIRMWARE_VERSION: &str = "2.0.0";

/// Size of the demo's firmware image: six 1 KiB chunks, so the two reboots, not the link,
/// take most of a device's flash (about a second at the default 500 ms reboot).
const FIRMWARE_BYTES: u32 = 6_144;

/// `POST /v1/storage/add` answer: the field the story reads.
#[derive(Deserialize)]
struct Added {
    cid: String,
}

impl Story {
    /// A flashes [`DEMO_FIRMWARE_VERSION`] onto its devices with endpoints through the same
    /// control API `agora device flash` uses, and waits up to `secs` for the job to finish.
    /// It first waits until A knows each device's metadata (the job selects by it) and has
    /// processed a reading of each (the job's readings pause then has readings before it, as
    /// in `devices_flash`). Fails unless exactly the unlocked devices were updated and the
    /// locked ones skipped.
    pub async fn flash_devices(&self, secs: u64) -> anyhow::Result<JobView> {
        let an = &self.m.nodes[self.a];
        wait_for(
            "A to discover its devices with their metadata",
            60,
            async || {
                let l: DeviceList = api(an).ok()?.get("/v1/devices").await.ok()?;
                DEVICES
                    .iter()
                    .all(|d| l.devices.iter().any(|x| x.id == *d && x.meta.is_some()))
                    .then_some(())
            },
        )
        .await?;
        wait_for("A to process a reading of each device", 60, async || {
            let st: RadioStatus = api(an).ok()?.get("/v1/radio").await.ok()?;
            DEVICES
                .iter()
                .all(|d| {
                    st.devices
                        .iter()
                        .any(|x| x.device == *d && x.last_processed.is_some())
                })
                .then_some(())
        })
        .await?;
        let version = DEMO_FIRMWARE_VERSION;
        let file = self.m.dir.join(format!("firmware-{version}.bin"));
        let image: Vec<u8> = (0..FIRMWARE_BYTES)
            .map(|i| u8::try_from(i.wrapping_mul(13) % 251).unwrap_or(0))
            .collect();
        std::fs::write(&file, image).context("writing the demo's firmware image")?;
        let client = api(an)?;
        let added: Added = client
            .post(
                "/v1/storage/add",
                &AddRequest {
                    path: file.canonicalize()?,
                    cid_version: 1,
                },
            )
            .await
            .context("adding the firmware image to A's store")?;
        let (first, last) = (DEVICES[0], DEVICES[DEVICES.len() - 1]);
        let req = JobRequest {
            selector: format!("id={first}-{last}"),
            firmware: added.cid,
            version: version.into(),
            max_unavailable: 1,
            firmware_type: None,
        };
        let started: JobStarted = client
            .post("/v1/devices/jobs", &req)
            .await
            .context("starting A's firmware job")?;
        self.clock.line(
            "firmware job",
            now_ms(),
            format!(
                "A flashes {version} onto its {} devices (job {})",
                started.devices, started.id
            ),
        );
        let path = format!("/v1/devices/jobs/{}", started.id);
        let done = wait_for("A's firmware job to finish", secs, async || {
            let v: JobView = api(an).ok()?.get(&path).await.ok()?;
            v.finished.then_some(v)
        })
        .await?;
        let metas = self.device_metas();
        let locked = |id: u32| metas.get(&id).is_some_and(|m| m.locked);
        let wrong: Vec<String> = done
            .status
            .devices
            .iter()
            .filter(|d| match &d.outcome {
                Some(Outcome::Updated { .. }) => locked(d.device),
                Some(Outcome::Skipped(SkipReason::Locked)) => !locked(d.device),
                _ => true,
            })
            .map(|d| format!("device {}: {:?}", d.device, d.outcome))
            .collect();
        if !wrong.is_empty() {
            bail!(
                "A's firmware job {} did not update exactly its unlocked devices ({}); see \
                 `agora device job status {} --data-dir {}`",
                started.id,
                wrong.join(", "),
                started.id,
                an.data_dir.display()
            );
        }
        let (skipped, updated): (Vec<u32>, Vec<u32>) = done
            .status
            .devices
            .iter()
            .map(|d| d.device)
            .partition(|d| locked(*d));
        self.clock.line(
            "  flashed",
            done.finished_at.unwrap_or_else(now_ms),
            format!("A updated {updated:?} to {version}; locked {skipped:?} not touched"),
        );
        Ok(done)
    }

    /// Whom node `b`'s `GET /v1/devices` names the manager of each of A's devices (devnet node
    /// names; `None`: not listed, or no manager known there): as soon as it names itself for
    /// every one, else as it last named them after `secs`. A timeout is no error here: the
    /// demo reports what B said and fails on it.
    pub async fn managers_seen_by(&self, b: usize, secs: u64) -> BTreeMap<u32, Option<String>> {
        let bn = &self.m.nodes[b];
        let mut seen: BTreeMap<u32, Option<String>> = BTreeMap::new();
        let named_itself = wait_for(
            "B to name itself manager of A's devices",
            secs,
            async || {
                let l: DeviceList = api(bn).ok()?.get("/v1/devices").await.ok()?;
                seen = DEVICES
                    .iter()
                    .map(|d| {
                        let row = l.devices.iter().find(|x| x.id == *d);
                        (*d, row.and_then(|x| x.manager.clone()))
                    })
                    .collect();
                seen.values()
                    .all(|m| m.as_deref() == Some(bn.node_id.as_str()))
                    .then_some(())
            },
        )
        .await;
        if let Err(e) = named_itself {
            eprintln!("{e}: {} named {seen:?}", bn.name);
        }
        seen.into_iter()
            .map(|(d, m)| (d, m.map(|id| self.node_name(&id))))
            .collect()
    }

    /// The devnet name of node `id` (base58), else its short form.
    pub fn node_name(&self, id: &str) -> String {
        self.m
            .nodes
            .iter()
            .find(|n| n.node_id == id)
            .map_or_else(|| short(id), |n| n.name.clone())
    }
}
