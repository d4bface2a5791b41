//! Edge commands: `radio` (sensors heard and managed, checkpoints), `device list` (devices
//! discovered with their metadata), `own IMAGE` (run a service
//! on this node's own sensors) and `timeline` (what the orchestrator did).

use std::path::Path;

use agora_api::client::ApiClient;
use agora_api::edge::{OwnReply, OwnRequest};
use agora_orchestrator::TimelineEntry;
use agora_radio::{DeviceList, RadioStatus};

use agora_devnet::output::{print_json, print_table};

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

/// `agora device …`
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Devices this edge discovered: id, kind, firmware, version, lock, mode, manager, last heard.
    List,
}

/// `agora device …`
pub async fn device(dir: &Path, cmd: &DeviceCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
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
