//! Edge commands: `radio` (sensors heard and managed, checkpoints), `device list` (devices
//! discovered with their metadata), `device flash` / `device job status` (firmware jobs),
//! `device rotate` (a new working key for a device this node owns),
//! `own IMAGE` (run a service
//! on this node's own sensors) and `timeline` (what the orchestrator did).

use std::path::Path;

use agora_api::client::ApiClient;
use agora_api::edge::{OwnReply, OwnRequest};
use agora_orchestrator::TimelineEntry;
use agora_radio::firmware::{JobId, JobList, JobRequest, JobStarted, JobView};
use agora_radio::{DeviceList, RadioStatus, RotationStarted};

use agora_devnet::output::{print_json, print_table};

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

/// `agora device …`
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Devices this edge discovered: id, kind, firmware, version, lock, mode, manager, last heard.
    List,
    /// Flash a firmware image onto the selected devices this edge manages (reboot into the
    /// bootloader, flash, verify, boot; retry, then roll back). Waits and prints progress;
    /// exits non-zero if any device failed.
    Flash(FlashArgs),
    /// Firmware jobs of this edge.
    #[command(subcommand)]
    Job(JobCommand),
    /// Rotate the working key of a device this node owns (its root key is in this node's
    /// sensor keys) now: for a key you think leaked, or as routine. The providers the ledger
    /// names for the device get the next key, then the device is rekeyed under its root; from
    /// then on the old key opens nothing. (A provider whose contract ended is rotated away
    /// without asking.) Waits until the device confirms; exits non-zero on timeout.
    Rotate(RotateArgs),
}

/// `agora device rotate`
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The device id (see `agora device list`).
    pub device: u32,
    /// Print the new epoch and return at once (progress: `agora radio`, KEY EPOCH).
    #[arg(long)]
    pub detach: bool,
    /// Give up waiting after this many seconds (the rotation goes on: it retries until the
    /// device answers).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// `agora device flash`
#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// Devices: `all`, or `kind=K,type=T,id=N-M` terms (terms of one key are alternatives).
    #[arg(long)]
    pub devices: String,
    /// The image: a file (added to this node's store first) or the CID of one.
    #[arg(long)]
    pub firmware: String,
    /// Version label the devices report once they run the image.
    #[arg(long)]
    pub version: String,
    /// Devices that may be unavailable (rebooting, flashing) at once.
    #[arg(long, default_value_t = 1)]
    pub max_unavailable: usize,
    /// Firmware type of the image (default: the one type the selected devices share).
    #[arg(long = "type")]
    pub firmware_type: Option<String>,
    /// Print the job id and return at once (follow with `agora device job status ID`).
    #[arg(long)]
    pub detach: bool,
    /// Give up waiting after this many seconds (the job goes on; see `job status`).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

/// `agora device job …`
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// One job: summary and every device's step and outcome.
    Status {
        /// Job id (from `agora device flash`).
        id: JobId,
    },
    /// Every job kept on this edge.
    List,
}

/// `agora device …`
pub async fn device(dir: &Path, cmd: &DeviceCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Flash(a) => flash(dir, a, json).await,
        DeviceCommand::Rotate(a) => rotate(dir, a, json).await,
        DeviceCommand::Job(JobCommand::Status { id }) => {
            let v: JobView = ApiClient::for_data_dir(dir)?
                .get(&format!("/v1/devices/jobs/{id}"))
                .await?;
            if json {
                print_json(&v)?;
            } else {
                print_job(&v);
            }
            failed(&v)
        }
        DeviceCommand::Job(JobCommand::List) => {
            let list: JobList = ApiClient::for_data_dir(dir)?
                .get("/v1/devices/jobs")
                .await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .jobs
                .iter()
                .map(|j| {
                    let s = &j.status.summary;
                    vec![
                        j.status.id.to_string(),
                        j.status.version.clone(),
                        j.selector.clone(),
                        if j.finished { "finished" } else { "running" }.into(),
                        format!("{}/{}/{}/{}", s.updated, s.skipped, s.rolled_back, s.lost),
                    ]
                })
                .collect();
            print_table(
                &[
                    "JOB",
                    "VERSION",
                    "DEVICES",
                    "STATE",
                    "UPD/SKIP/ROLLBACK/LOST",
                ],
                &rows,
            );
            let st = &list.stats;
            println!(
                "{} started, {} refused (table full), {} evicted; {} requests sent, {} not sent, {} replies taken",
                st.started,
                st.refused_full,
                st.evicted,
                st.requests_sent,
                st.requests_failed,
                st.replies_taken
            );
            if !list.handoffs.is_empty() {
                println!(
                    "jobs handed here by the devices' owners (resumed if this edge takes them over):"
                );
                let rows: Vec<Vec<String>> = list
                    .handoffs
                    .iter()
                    .map(|k| {
                        vec![
                            k.owner.to_string(),
                            k.handoff.job.to_string(),
                            k.handoff.version.clone(),
                            k.handoff.devices.len().to_string(),
                            if k.resumed { "resumed" } else { "kept" }.into(),
                        ]
                    })
                    .collect();
                print_table(&["OWNER", "JOB", "VERSION", "DEVICES", "STATE"], &rows);
            }
            let h = &list.handoff_stats;
            if h.kept + h.refused_not_owner + h.refused_malformed > 0 {
                println!(
                    "hand-offs: {} kept, {} resumed, {} refused (not the devices' owner), {} malformed, {} retired, {} evicted, {} expired, {} stale copies ignored",
                    h.kept,
                    h.resumed,
                    h.refused_not_owner,
                    h.refused_malformed,
                    h.retired,
                    h.evicted,
                    h.expired,
                    h.stale
                );
            }
            Ok(())
        }
        DeviceCommand::List => {
            let list: DeviceList = ApiClient::for_data_dir(dir)?.get("/v1/devices").await?;
            if json {
                return print_json(&list);
            }
            let now = agora_wire::now_ms();
            let rows: Vec<Vec<String>> = list
                .devices
                .iter()
                .map(|d| {
                    let mut row = vec![d.id.to_string()];
                    match &d.meta {
                        Some(m) => row.extend([
                            m.kind.clone(),
                            m.firmware_type.clone(),
                            m.version.clone(),
                            if m.locked { "locked" } else { "-" }.into(),
                            agora_radio::discovery::mode_name(m.mode).into(),
                        ]),
                        None => row.extend(std::iter::repeat_n("?".to_string(), 5)),
                    }
                    row.extend([
                        d.manager
                            .as_deref()
                            .map_or("-".into(), |n| n.chars().take(8).collect()),
                        format!(
                            "{:.1}s ago",
                            now.saturating_sub(d.last_heard) as f64 / 1000.0
                        ),
                    ]);
                    row
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "KIND",
                    "FIRMWARE",
                    "VERSION",
                    "LOCK",
                    "MODE",
                    "MANAGER",
                    "LAST HEARD",
                ],
                &rows,
            );
            let st = &list.stats;
            println!(
                "{} devices; {} announcements, {} metadata requests, dropped: {} malformed, {} wrong source, {} unsolicited, {} evicted",
                list.devices.len(),
                st.announcements,
                st.requests_sent,
                st.replies_malformed,
                st.replies_wrong_source,
                st.replies_unsolicited,
                st.evicted
            );
            Ok(())
        }
    }
}

/// `agora radio`
pub async fn radio(dir: &Path, json: bool) -> anyhow::Result<()> {
    let st: RadioStatus = ApiClient::for_data_dir(dir)?.get("/v1/radio").await?;
    if json {
        return print_json(&st);
    }
    println!("radio listening on {}", opt(st.addr.as_deref()));
    let rows: Vec<Vec<String>> = st
        .devices
        .iter()
        .map(|d| {
            vec![
                d.device.to_string(),
                d.service
                    .as_deref()
                    .map_or("-".into(), |s| s.chars().take(12).collect()),
                if d.buffering { "standby" } else { "-" }.into(),
                if d.paused { "flashing" } else { "-" }.into(),
                d.received.to_string(),
                d.processed.to_string(),
                d.replayed.to_string(),
                opt(d.last_processed),
                opt(d.peer_covered),
            ]
        })
        .collect();
    print_table(
        &[
            "DEVICE",
            "SERVICE",
            "BUFFER",
            "PAUSED",
            "HEARD",
            "PROCESSED",
            "REPLAYED",
            "LAST SEQ",
            "PEER UP TO",
        ],
        &rows,
    );
    let mine = st.checkpoints.iter().filter(|c| c.mine).count();
    println!(
        "checkpoints: {mine} made here, {} from other edges",
        st.checkpoints.len() - mine
    );
    let r = &st.stats;
    println!(
        "refused: {} checkpoint ranges from non-managers, {} beyond what was heard, {} releases; \
         {} replay coverages clamped; {} devices evicted, {} frames dropped (table full)",
        r.ranges_refused_not_manager,
        r.ranges_refused_beyond_heard,
        r.releases_refused,
        r.replay_covered_clamped,
        r.devices_evicted,
        r.frames_dropped_table_full
    );
    Ok(())
}

/// `agora own IMAGE`
pub async fn own(dir: &Path, image: &str, json: bool) -> anyhow::Result<()> {
    let reply: OwnReply = ApiClient::for_data_dir(dir)?
        .post(
            "/v1/own",
            &OwnRequest {
                image: image.to_string(),
            },
        )
        .await?;
    if json {
        return print_json(&reply);
    }
    println!(
        "running {} on this node's sensors {:?}",
        reply.image, reply.devices
    );
    Ok(())
}

/// `agora timeline`
pub async fn timeline(dir: &Path, json: bool) -> anyhow::Result<()> {
    let list: Vec<TimelineEntry> = ApiClient::for_data_dir(dir)?.get("/v1/timeline").await?;
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.at.to_string(),
                e.phase.clone(),
                e.contract
                    .as_deref()
                    .map_or("-".into(), |c| c.chars().take(8).collect()),
                e.detail.clone(),
            ]
        })
        .collect();
    print_table(&["AT (ms)", "PHASE", "CONTRACT", "DETAIL"], &rows);
    Ok(())
}

/// `agora device flash`
async fn rotate(dir: &Path, a: &RotateArgs, json: bool) -> anyhow::Result<()> {
    let api = ApiClient::for_data_dir(dir)?;
    let started: RotationStarted = api
        .post(&format!("/v1/devices/{}/rotate", a.device), &())
        .await?;
    if !json {
        let what = if started.fresh {
            "rotating"
        } else {
            "already rotating"
        };
        println!(
            "device {}: {what} to key epoch {}",
            started.device, started.epoch
        );
        if !started.revoked.is_empty() {
            let revoked: Vec<String> = started.revoked.iter().map(|n| n.short()).collect();
            println!(
                "  not handed the next key (no longer providers for it): {}",
                revoked.join(", ")
            );
        }
    }
    if a.detach {
        return if json { print_json(&started) } else { Ok(()) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.timeout);
    loop {
        let st: RadioStatus = api.get("/v1/radio").await?;
        let epoch = st
            .devices
            .iter()
            .find(|d| d.device == a.device)
            .and_then(|d| d.key_epoch);
        if epoch.is_some_and(|e| e >= started.epoch) {
            if json {
                return print_json(&started);
            }
            println!(
                "device {}: at key epoch {}; the old key opens nothing any more",
                a.device, started.epoch
            );
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "device {} has not confirmed key epoch {} within {} s (it is at {}); the \
                 rotation goes on (rekeys are retried until the device answers): see `agora \
                 radio`",
                a.device,
                started.epoch,
                a.timeout,
                opt(epoch)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn flash(dir: &Path, a: &FlashArgs, json: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let api = ApiClient::for_data_dir(dir)?;
    let path = Path::new(&a.firmware);
    let firmware = if path.is_file() {
        let abs =
            std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
        let added: agora_exchange::AddReply = api
            .post_long(
                "/v1/storage/add",
                &agora_api::storage::AddRequest {
                    path: abs,
                    cid_version: 1,
                },
            )
            .await
            .with_context(|| format!("adding {} to the node's store", path.display()))?;
        if !json {
            println!(
                "firmware {} added as {} ({} bytes)",
                path.display(),
                added.cid,
                added.bytes
            );
        }
        added.cid
    } else {
        a.firmware.clone()
    };
    let req = JobRequest {
        selector: a.devices.clone(),
        firmware,
        version: a.version.clone(),
        max_unavailable: a.max_unavailable,
        firmware_type: a.firmware_type.clone(),
    };
    let started: JobStarted = api.post_long("/v1/devices/jobs", &req).await?;
    if a.detach {
        if json {
            return print_json(&started);
        }
        println!(
            "job {} started on {} devices; follow with `agora device job status {}`",
            started.id, started.devices, started.id
        );
        return Ok(());
    }
    if !json {
        println!(
            "job {}: {} devices, version {}, at most {} unavailable",
            started.id, started.devices, a.version, a.max_unavailable
        );
    }
    let path = format!("/v1/devices/jobs/{}", started.id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.timeout);
    let mut seen: std::collections::BTreeMap<u32, String> = std::collections::BTreeMap::new();
    loop {
        let v: JobView = api.get(&path).await?;
        if !json {
            for d in &v.status.devices {
                let line = progress_line(d);
                if seen.get(&d.device) != Some(&line) {
                    println!("device {}: {line}", d.device);
                    seen.insert(d.device, line);
                }
            }
        }
        if v.finished {
            if json {
                print_json(&v)?;
            } else {
                print_summary(&v);
            }
            return failed(&v);
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "job {} still running after {} s; follow it with `agora device job status {}`",
                started.id,
                a.timeout,
                started.id
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// One device's state as a progress line. The versions and reasons are the device's own word
/// (radio frames), so they are escaped (THREATS L3): the line is printed as it is, not only in
/// a table.
fn progress_line(d: &agora_devices::DeviceProgress) -> String {
    use agora_devices::{Outcome, Step};
    use agora_wire::printable;
    match &d.outcome {
        Some(Outcome::Updated { attempts }) => {
            format!(
                "updated to {} ({attempts} attempt(s))",
                printable(&d.version)
            )
        }
        Some(Outcome::Skipped(r)) => format!("skipped: {}", json_word(r)),
        Some(Outcome::RolledBack { last, attempts }) => format!(
            "FAILED after {attempts} attempt(s) ({}), rolled back to {}",
            json_word(last),
            printable(&d.previous_version)
        ),
        Some(Outcome::Lost { last }) => format!("FAILED and lost ({})", json_word(last)),
        None => match d.step {
            Step::Waiting => "waiting".into(),
            Step::Flashing => format!("flashing (attempt {})", d.attempt),
            step => format!("{} (attempt {})", json_word(&step), d.attempt),
        },
    }
}

/// The snake_case JSON form of a value, for lines, escaped: JSON escapes C0 controls but not
/// DEL or C1 ones, and the value may quote a device.
fn json_word<T: serde::Serialize>(v: &T) -> String {
    let word = match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    };
    agora_wire::printable(&word).into_owned()
}

fn print_summary(v: &JobView) {
    let s = &v.status.summary;
    let secs = v
        .finished_at
        .map_or(0.0, |f| f.saturating_sub(v.started_at) as f64 / 1000.0);
    println!(
        "job {} finished in {secs:.1} s: {} updated, {} skipped, {} rolled back, {} lost (of {})",
        v.status.id, s.updated, s.skipped, s.rolled_back, s.lost, s.total
    );
}

fn print_job(v: &JobView) {
    use agora_wire::printable;
    // A job resumed at a handover carries the devices' owner's words (another node's).
    println!(
        "job {}: version {} of {} ({} bytes, {} chunks), devices {}, {}",
        v.status.id,
        printable(&v.status.version),
        printable(&v.firmware_type),
        v.size,
        v.status.chunks,
        printable(&v.selector),
        if v.finished { "finished" } else { "running" }
    );
    let rows: Vec<Vec<String>> = v
        .status
        .devices
        .iter()
        .map(|d| {
            vec![
                d.device.to_string(),
                d.previous_version.clone(),
                d.version.clone(),
                progress_line(d),
            ]
        })
        .collect();
    print_table(&["DEVICE", "WAS", "NOW", "STATE"], &rows);
    if let Some(r) = &v.resumed_from {
        println!(
            "resumed at a handover: job {} of the devices' owner {}",
            r.job, r.owner
        );
        if !r.done.is_empty() {
            let done: Vec<String> = r
                .done
                .iter()
                .map(|(d, how)| {
                    let how = serde_json::to_value(how).unwrap_or_default();
                    format!("{d} {}", how.as_str().unwrap_or("?"))
                })
                .collect();
            println!(
                "finished by the owner before the handover (left out): {}",
                done.join(", ")
            );
        }
    }
    if !v.handed_to.is_empty() {
        println!(
            "handed to the devices' providers: {}",
            v.handed_to.join(", ")
        );
    }
    if v.finished {
        print_summary(v);
    }
}

/// An error (non-zero exit) if any device failed.
fn failed(v: &JobView) -> anyhow::Result<()> {
    let s = &v.status.summary;
    if s.failed() > 0 {
        let ids: Vec<String> = v
            .status
            .devices
            .iter()
            .filter(|d| {
                matches!(
                    d.outcome,
                    Some(agora_devices::Outcome::RolledBack { .. })
                        | Some(agora_devices::Outcome::Lost { .. })
                )
            })
            .map(|d| d.device.to_string())
            .collect();
        anyhow::bail!(
            "job {}: {} device(s) failed ({} rolled back, {} lost): {}",
            v.status.id,
            s.failed(),
            s.rolled_back,
            s.lost,
            ids.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// THREATS L3: a device's versions (radio frames; unkeyed devices can be impersonated)
    /// reach `agora device flash`'s progress lines escaped.
    #[test]
    fn a_devices_versions_are_printed_escaped() {
        use agora_devices::{DeviceProgress, FailReason, Outcome, SkipReason, Step};
        let evil = "1.0\u{1b}]52;c;cm0gLXJm\u{7}\u{9b}";
        let d = |outcome| DeviceProgress {
            device: 7,
            step: Step::Waiting,
            attempt: 1,
            chunks_done: 0,
            previous_version: evil.into(),
            version: evil.into(),
            last_failure: None,
            outcome: Some(outcome),
        };
        let lines = [
            progress_line(&d(Outcome::Updated { attempts: 1 })),
            progress_line(&d(Outcome::RolledBack {
                last: FailReason::BootedOld {
                    version: evil.into(),
                },
                attempts: 2,
            })),
            progress_line(&d(Outcome::Skipped(SkipReason::WrongType {
                firmware_type: evil.into(),
            }))),
        ];
        for line in &lines {
            assert!(
                !line.contains(char::is_control),
                "raw control bytes: {line:?}"
            );
            assert!(line.contains("\\u{9b}"), "{line:?}");
        }
    }
}
