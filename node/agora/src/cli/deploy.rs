//! Fleet deployments: `agora deploy create|status|list|delete|upgrade` (issue #15,
//! docs/FLEETS.md).
//!
//! A target's own text (its reasons, its last failure, and the upgrade's reasons that quote
//! them) is escaped where it enters a line ([`agora_wire::printable`]): a hostile target could
//! otherwise put escape sequences on the operator's terminal, faking the screen or writing the
//! clipboard (OSC 52) (THREATS L3). `print_table` escapes its cells itself.

use std::path::Path;

use agora_api::client::ApiClient;
use agora_api::fleet::{CreateDeploymentRequest, DeploymentList, UpgradeRequest};
use agora_fleet_core::{DeploymentView, TargetView, UpgradeConfig, UpgradeView};
use agora_market::resources::parse_duration_ms;
use agora_wire::printable;
use anyhow::Context;
use clap::{Args, Subcommand};

use agora_devnet::output::{print_json, print_table};

use super::market::ResourceArgs;

/// `agora deploy …`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Put an image (or variants of it: `--variant NAME=CID[:SELECTOR]`, repeatable) on the
    /// providers a selector matches: one hosted contract per replica, through the market and
    /// the ledger.
    Create(Box<CreateArgs>),
    /// Per target: contracting / fetching / staged / running / healthy / unhealthy / failed,
    /// with reasons, and how many times its runtime restarted the replica.
    Status {
        /// Deployment id (from `deploy create` or `deploy list`).
        id: String,
        /// Follow it live until every target is healthy or failed (or Ctrl-C): on a terminal
        /// the table is redrawn in place, otherwise each changed line is printed. Exits 0 when
        /// every target is healthy, non-zero naming the failed ones.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` asks the node, e.g. `1s`, `500ms`.
        #[arg(long, default_value = "1s", requires = "watch")]
        interval: String,
    },
    /// This node's deployments.
    List,
    /// Delete a deployment: every target's contract ends and its replica stops.
    Delete {
        /// Deployment id.
        id: String,
    },
    /// Upgrade a deployment to another image, start-first in waves: on each target the new
    /// image starts beside the old one (its own contract), the old one stops once the new one
    /// is healthy. A new instance unhealthy, failed or not healthy in time rolls every target
    /// back to the old image, unless it is within `--max-failed` (one by default). Waits and
    /// prints each change; exits 0 when every target runs the new image (healthy, but those
    /// failed within the budget, which it names), non-zero with the reason after a rollback.
    Upgrade(UpgradeArgs),
}

/// Options of `deploy upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Deployment id (from `deploy create` or `deploy list`).
    id: String,
    /// The new image CID (from `agora service publish` on this node); for a deployment with
    /// variants give `--variant` instead.
    #[arg(long, required_unless_present = "variant", conflicts_with = "variant")]
    image: Option<String>,
    /// For a deployment with variants: a variant's new image, `NAME=CID`; repeat for each
    /// variant that changes (the others, and every variant's selector, stay as they are).
    #[arg(long, value_name = "NAME=CID")]
    variant: Vec<String>,
    /// Most targets mid-upgrade at once (the wave size).
    #[arg(long, default_value_t = 1)]
    max_unavailable: u32,
    /// How long a new instance has to report healthy (it needs a contract, the image and a
    /// first healthy poll), e.g. `5m`.
    #[arg(long, default_value = "5m")]
    health_timeout: String,
    /// The failure budget: up to this many targets whose new instance fails (unhealthy,
    /// failed or not healthy in time) are held on the old image and named, and the rollout
    /// goes on (never all of them); one more rolls every target back. Once the others are
    /// upgraded the held ones' replicas count as failed and are placed elsewhere. 1 by
    /// default, so one failing target (a hostile one among them) cannot veto the upgrade;
    /// with 0 the first failure rolls every target back.
    #[arg(long, default_value_t = UpgradeConfig::default().max_failed)]
    max_failed: u32,
    /// Give up waiting after this long (the upgrade carries on; follow it with `deploy
    /// status`), e.g. `1h`.
    #[arg(long, default_value = "1h")]
    wait: String,
}

/// Options of `deploy create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image CID (from `agora service publish`); or give `--variant` instead.
    #[arg(required_unless_present = "variant", conflicts_with = "variant")]
    image: Option<String>,
    /// A variant of the service, `NAME=CID[:SELECTOR]`, e.g. `a=bafy…` or `b=bafy…:iface=ble`
    /// (only targets the selector admits may run it); repeat for up to 8. Every target runs
    /// exactly one variant, the counts as equal as the constraints allow, rebalanced with as
    /// few moves as possible when targets join or leave.
    #[arg(long, value_name = "NAME=CID[:SELECTOR]")]
    variant: Vec<String>,
    /// Which providers: `region=eu-west,iface=lora,site=factory` (any other key is a label
    /// of `[provider] labels`).
    #[arg(long)]
    to: String,
    /// How many replicas.
    #[arg(long, conflicts_with = "all", required_unless_present = "all")]
    replicas: Option<u32>,
    /// One replica on every provider that matches.
    #[arg(long)]
    all: bool,
    /// `push` (targets act on the announcement) or `pull` (targets poll for it).
    #[arg(long, default_value = "push")]
    strategy: String,
    /// Deployment name (default: `deploy-` and the image CID's last 10 characters); the same
    /// name again changes that deployment's selector or count.
    #[arg(long)]
    name: Option<String>,
    /// Dependency order across nodes: place no replica until this node's deployment NAME has
    /// every target healthy (repeat for up to 16); NAME cannot be deleted while this one is
    /// live. A manifest's `depends_on` orders services on one node instead.
    #[arg(long, value_name = "NAME")]
    after: Vec<String>,
    #[command(flatten)]
    resources: ResourceArgs,
    /// Highest price of one replica's contract, in tokens.
    #[arg(long, default_value_t = 1_000)]
    max_price: u64,
    /// Contract duration per replica, e.g. `1h`.
    #[arg(long, default_value = "1h")]
    duration: String,
}

fn client(dir: &Path) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::for_data_dir(dir)?)
}

fn default_name(image: &str) -> String {
    let tail: String = image
        .chars()
        .rev()
        .take(10)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("deploy-{}", tail.to_ascii_lowercase())
}

/// A target's restart count, with why the last restart happened when the target said:
/// `2 (trap: wasm \`unreachable\` instruction executed)`.
fn restarts_cell(t: &TargetView) -> String {
    match (&t.last_failure, t.restarts) {
        (Some(why), n) if n > 0 => format!("{n} ({})", printable(why)),
        (_, n) => n.to_string(),
    }
}

/// One target's status as the table shows it: `healthy`, `unhealthy: reason`, `failed: reason`.
fn target_status(t: &TargetView) -> String {
    match &t.reason {
        Some(reason) if !reason.is_empty() => format!("{}: {}", t.phase, printable(reason)),
        _ => t.phase.clone(),
    }
}

/// The first image a create names: the image, or the first variant's CID.
fn first_image(a: &CreateArgs) -> String {
    match &a.image {
        Some(image) => image.clone(),
        None => a
            .variant
            .first()
            .and_then(|v| v.split_once('=').map(|(_, rest)| rest))
            .map(|rest| rest.split(':').next().unwrap_or(rest).to_string())
            .unwrap_or_default(),
    }
}

fn print_view(v: &DeploymentView) {
    let replicas = v
        .replicas
        .map_or_else(|| "all".to_string(), |n| n.to_string());
    println!(
        "deployment {} ({}) v{}{}",
        v.id,
        v.name,
        v.version,
        if v.deleted { " DELETED" } else { "" }
    );
    println!(
        "image {}  to {}  replicas {replicas}  strategy {}",
        v.image, v.selector, v.strategy
    );
    for variant in &v.variants {
        println!(
            "variant {} image {} on {}  targets {}",
            variant.name,
            variant.image,
            variant.selector,
            v.variant_counts.get(&variant.name).copied().unwrap_or(0)
        );
    }
    if !v.after.is_empty() {
        println!("after {}", v.after.join(", "));
    }
    for why in &v.waiting_for {
        println!("waiting for {}", printable(why));
    }
    let rows: Vec<Vec<String>> = v
        .targets
        .iter()
        .map(|t| {
            let mut row = vec![t.node.to_string()];
            if !v.variants.is_empty() {
                row.push(t.variant.clone().unwrap_or_else(|| "-".into()));
            }
            row.push(restarts_cell(t));
            row.push(target_status(t));
            row
        })
        .collect();
    if rows.is_empty() && !v.waiting_for.is_empty() {
        println!("no targets yet (placed once what it waits for is healthy)");
    } else if rows.is_empty() {
        println!("no targets yet (waiting for matching providers to offer themselves)");
    } else if v.variants.is_empty() {
        print_table(&["TARGET", "RESTARTS", "STATUS"], &rows);
    } else {
        print_table(&["TARGET", "VARIANT", "RESTARTS", "STATUS"], &rows);
    }
    if let Some(u) = &v.upgrade {
        print_upgrade(u);
    }
}

fn upgrade_state(u: &UpgradeView) -> String {
    match &u.reason {
        Some(reason) => format!("{}: {}", u.state, printable(reason)),
        None => u.state.clone(),
    }
}

fn print_upgrade(u: &UpgradeView) {
    println!(
        "upgrade {} -> {}  {}  (max-unavailable {}, health-timeout {} s, max-failed {})",
        u.from,
        u.to,
        upgrade_state(u),
        u.max_unavailable,
        u.health_timeout_ms / 1000,
        u.max_failed
    );
    let rows: Vec<Vec<String>> = u
        .targets
        .iter()
        .map(|t| {
            vec![
                t.node.to_string(),
                match &t.failed {
                    Some(why) => format!("{} (failed: {why})", t.step),
                    None => t.step.clone(),
                },
                t.old.clone().unwrap_or_else(|| "-".into()),
                t.new.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print_table(&["TARGET", "STEP", "OLD IMAGE", "NEW IMAGE"], &rows);
    }
}

/// The lines of an upgrade's progress not printed yet (one per target whose step or phases
/// changed, one when the state changes); `seen` remembers what was printed.
fn progress_lines(u: &UpgradeView, seen: &mut Vec<String>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut now = vec![upgrade_state(u)];
    for t in &u.targets {
        now.push(format!(
            "  {} {}: old {}, new {}{}",
            t.node.short(),
            t.step,
            printable(t.old.as_deref().unwrap_or("-")),
            printable(t.new.as_deref().unwrap_or("-")),
            t.failed.as_deref().map_or_else(String::new, |why| format!(
                " (failed within --max-failed: {})",
                printable(why)
            ))
        ));
    }
    for (i, line) in now.iter().enumerate() {
        if seen.get(i) != Some(line) {
            lines.push(if i == 0 {
                format!("upgrade {line}")
            } else {
                line.clone()
            });
        }
    }
    *seen = now;
    lines
}

/// The targets held within the failure budget, with why: `NODE (new image unhealthy on …)`.
fn held_targets(u: &UpgradeView) -> Vec<String> {
    u.targets
        .iter()
        .filter_map(|t| Some(format!("{} ({})", t.node, printable(t.failed.as_ref()?))))
        .collect()
}

/// The error `deploy upgrade` exits with after a rollback (its reason quotes a target's).
fn rolled_back(u: &UpgradeView) -> anyhow::Error {
    anyhow::anyhow!(
        "upgrade rolled back: {}; every target is back on {}",
        printable(u.reason.as_deref().unwrap_or("no reason given")),
        u.from
    )
}

/// True once `--watch` has nothing more to wait for: every target (as many as the count asks
/// for) is healthy or failed and no upgrade is under way, or a deleted deployment has no
/// targets left.
fn settled(v: &DeploymentView) -> bool {
    if v.deleted {
        return v.targets.is_empty();
    }
    let enough = v
        .replicas
        .is_none_or(|n| v.targets.len() >= usize::try_from(n).unwrap_or(usize::MAX));
    enough
        && !v.targets.is_empty()
        && v.targets
            .iter()
            .all(|t| t.phase == "healthy" || t.phase == "failed")
        && v.upgrade.as_ref().is_none_or(UpgradeView::is_final)
}

/// A deployment's targets per phase on one line: `running 2, healthy 1`.
fn summary_line(v: &DeploymentView) -> String {
    v.summary
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lines of `--watch` without a terminal: a summary, then one per target; `seen` keeps
/// what was printed, so only the lines that changed are returned.
fn watch_lines(
    v: &DeploymentView,
    seen: &mut std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let summary = summary_line(v);
    let mut now = vec![(
        String::new(),
        format!(
            "deployment {} v{}: {}",
            v.name,
            v.version,
            if summary.is_empty() {
                "no targets yet"
            } else {
                &summary
            }
        ),
    )];
    for t in &v.targets {
        now.push((
            t.node.to_string(),
            format!(
                "  {} {} (restarts {})",
                t.node.short(),
                target_status(t),
                restarts_cell(t)
            ),
        ));
    }
    let mut lines = Vec::new();
    for (key, line) in &now {
        if seen.get(key) != Some(line) {
            lines.push(line.clone());
        }
    }
    let gone: Vec<String> = seen
        .keys()
        .filter(|k| !now.iter().any(|(key, _)| key == *k))
        .cloned()
        .collect();
    for k in gone {
        lines.push(format!("  {} released", &k[..k.len().min(8)]));
    }
    *seen = now.into_iter().collect();
    lines
}

/// `deploy status ID --watch`.
async fn watch(dir: &Path, id: &str, interval: &str, json: bool) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let every = parse_duration_ms(interval).context("--interval")?.max(100);
    let client = client(dir)?;
    let path = format!("/v1/fleet/deployments/{id}");
    let terminal = !json && std::io::stdout().is_terminal();
    let mut seen = std::collections::BTreeMap::new();
    loop {
        let view: DeploymentView = client.get(&path).await?;
        let done = settled(&view);
        if terminal {
            // Home and clear, then the same table `deploy status` prints.
            print!("\x1b[H\x1b[2J");
            print_view(&view);
            if !done {
                println!("(every {every} ms; Ctrl-C to stop)");
            }
        } else if !json {
            for line in watch_lines(&view, &mut seen) {
                println!("{line}");
            }
        }
        std::io::stdout().flush().ok();
        if done {
            if json {
                print_json(&view)?;
            }
            let failed: Vec<String> = view
                .targets
                .iter()
                .filter(|t| t.phase == "failed")
                .map(|t| format!("{}: {}", t.node.short(), target_status(t)))
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
            anyhow::bail!("{} target(s) failed: {}", failed.len(), failed.join("; "));
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(std::time::Duration::from_millis(every)) => {}
        }
    }
}

async fn upgrade(dir: &Path, a: &UpgradeArgs, json: bool) -> anyhow::Result<()> {
    let mut variants = std::collections::BTreeMap::new();
    for v in &a.variant {
        let Some((name, cid)) = v
            .split_once('=')
            .filter(|(n, c)| !n.is_empty() && !c.is_empty())
        else {
            anyhow::bail!("--variant {v}: expected NAME=CID, e.g. b=bafy…");
        };
        if variants.insert(name.to_string(), cid.to_string()).is_some() {
            anyhow::bail!("--variant {name}=… given twice");
        }
    }
    let req = UpgradeRequest {
        image: a.image.clone().unwrap_or_default(),
        variants,
        max_unavailable: a.max_unavailable,
        health_timeout_ms: parse_duration_ms(&a.health_timeout).context("--health-timeout")?,
        max_failed: a.max_failed,
    };
    let wait_ms = parse_duration_ms(&a.wait).context("--wait")?;
    let client = client(dir)?;
    let path = format!("/v1/fleet/deployments/{}", a.id);
    let mut view: DeploymentView = client.post(&format!("{path}/upgrade"), &req).await?;
    if !json {
        let (from, to) = match &view.upgrade {
            Some(u) => (u.from.clone(), u.to.clone()),
            None => (
                view.previous_image.clone().unwrap_or_else(|| "?".into()),
                view.image.clone(),
            ),
        };
        println!("upgrading deployment {} from {from} to {to}", view.id);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    let mut seen = Vec::new();
    loop {
        let Some(u) = view.upgrade.clone() else {
            anyhow::bail!(
                "deployment {} shows no upgrade; see `agora deploy status`",
                a.id
            );
        };
        if !json {
            for line in progress_lines(&u, &mut seen) {
                println!("{line}");
            }
        }
        if u.is_final() {
            if json {
                print_json(&view)?;
            }
            return match u.state.as_str() {
                "succeeded" => {
                    if !json {
                        let failed = held_targets(&u);
                        if failed.is_empty() {
                            println!("every target runs {} and is healthy", u.to);
                        } else {
                            println!(
                                "every other target runs {} healthy; {} failed within \
                                 --max-failed {} (placed elsewhere): {}",
                                u.to,
                                failed.len(),
                                u.max_failed,
                                failed.join(", ")
                            );
                        }
                    }
                    Ok(())
                }
                _ => Err(rolled_back(&u)),
            };
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the upgrade is still {} after --wait {}; it carries on: follow it with \
                 `agora deploy status {}`",
                u.state,
                a.wait,
                a.id
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        view = client.get(&path).await?;
    }
}

/// Runs `agora deploy …`.
pub async fn deploy(dir: &Path, cmd: &DeployCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        DeployCommand::Create(a) => {
            let req = CreateDeploymentRequest {
                name: a
                    .name
                    .clone()
                    .unwrap_or_else(|| default_name(&first_image(a))),
                image: a.image.clone().unwrap_or_default(),
                variants: a.variant.clone(),
                to: a.to.clone(),
                replicas: if a.all { None } else { a.replicas },
                strategy: a.strategy.clone(),
                needs: a.resources.resources()?,
                max_price: a.max_price,
                duration_ms: parse_duration_ms(&a.duration).context("--duration")?,
                after: a.after.clone(),
            };
            let view: DeploymentView = client(dir)?.post("/v1/fleet/deployments", &req).await?;
            if json {
                print_json(&view)
            } else {
                print_view(&view);
                println!("follow it with: agora deploy status {}", view.id);
                Ok(())
            }
        }
        DeployCommand::Status {
            id,
            watch: true,
            interval,
        } => watch(dir, id, interval, json).await,
        DeployCommand::Status { id, .. } => {
            let view: DeploymentView = client(dir)?
                .get(&format!("/v1/fleet/deployments/{id}"))
                .await?;
            if json {
                print_json(&view)
            } else {
                print_view(&view);
                Ok(())
            }
        }
        DeployCommand::List => {
            let list: DeploymentList = client(dir)?.get("/v1/fleet/deployments").await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .deployments
                .iter()
                .map(|v| {
                    let summary = summary_line(v);
                    vec![
                        v.id.clone(),
                        v.name.clone(),
                        v.image.clone(),
                        v.selector.clone(),
                        v.replicas
                            .map_or_else(|| "all".to_string(), |n| n.to_string()),
                        v.strategy.clone(),
                        if v.deleted { "deleted".into() } else { summary },
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "NAME", "IMAGE", "TO", "REPLICAS", "STRATEGY", "TARGETS",
                ],
                &rows,
            );
            Ok(())
        }
        DeployCommand::Upgrade(a) => upgrade(dir, a, json).await,
        DeployCommand::Delete { id } => {
            let view: DeploymentView = client(dir)?
                .post(
                    &format!("/v1/fleet/deployments/{id}/delete"),
                    &serde_json::json!({}),
                )
                .await?;
            if json {
                print_json(&view)
            } else {
                println!(
                    "deployment {} deleted: its targets' contracts end and their replicas stop",
                    view.id
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_a_valid_deployment_name() {
        let name = default_name("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy");
        assert_eq!(name, "deploy-7aqa4s52zy");
    }

    #[test]
    fn a_target_shows_its_phase_and_why() {
        let node = agora_market::NodeId([7; 32]);
        let t = |phase: &str, reason: Option<&str>| TargetView {
            node,
            phase: phase.into(),
            reason: reason.map(str::to_string),
            variant: None,
            restarts: 0,
            last_failure: None,
        };
        assert_eq!(target_status(&t("healthy", None)), "healthy");
        assert_eq!(restarts_cell(&t("healthy", None)), "0");
        let restarted = TargetView {
            restarts: 2,
            last_failure: Some("exited with 3".into()),
            ..t("healthy", None)
        };
        assert_eq!(restarts_cell(&restarted), "2 (exited with 3)");
        assert_eq!(
            target_status(&t(
                "unhealthy",
                Some("the guest's health export returned 1")
            )),
            "unhealthy: the guest's health export returned 1"
        );
        assert_eq!(target_status(&t("running", Some(""))), "running");
    }

    #[test]
    fn upgrade_progress_prints_only_what_changed() {
        let node = agora_market::NodeId([7; 32]);
        let mut u = UpgradeView {
            from: "old".into(),
            to: "new".into(),
            state: "in-progress".into(),
            reason: None,
            max_unavailable: 1,
            health_timeout_ms: 60_000,
            max_failed: 1,
            targets: vec![agora_fleet_core::UpgradeTargetView {
                node,
                step: "starting".into(),
                old: Some("healthy".into()),
                new: None,
                failed: None,
            }],
        };
        let mut seen = Vec::new();
        let first = progress_lines(&u, &mut seen);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(first[0].contains("in-progress"));
        assert!(progress_lines(&u, &mut seen).is_empty());
        u.targets[0].new = Some("unhealthy: the guest's health export returned 1".into());
        let next = progress_lines(&u, &mut seen);
        assert_eq!(next.len(), 1);
        assert!(next[0].contains("new unhealthy"), "{next:?}");
        // Switched anyway within the failure budget: said once.
        u.targets[0].step = "upgraded".into();
        u.targets[0].failed = Some("new image unhealthy".into());
        let budget = progress_lines(&u, &mut seen);
        assert_eq!(budget.len(), 1);
        assert!(
            budget[0].contains("failed within --max-failed"),
            "{budget:?}"
        );
        assert!(progress_lines(&u, &mut seen).is_empty());
    }

    fn view(phases: &[(&str, u32)], replicas: Option<u32>) -> DeploymentView {
        DeploymentView {
            id: "id".into(),
            name: "gw".into(),
            image: "img".into(),
            previous_image: None,
            selector: "site=factory".into(),
            replicas,
            strategy: "push".into(),
            version: 1,
            deleted: false,
            variants: Vec::new(),
            targets: phases
                .iter()
                .enumerate()
                .map(|(i, (phase, restarts))| TargetView {
                    node: agora_market::NodeId([u8::try_from(i).unwrap_or(u8::MAX); 32]),
                    phase: (*phase).into(),
                    reason: None,
                    variant: None,
                    restarts: *restarts,
                    last_failure: None,
                })
                .collect(),
            summary: Default::default(),
            variant_counts: Default::default(),
            after: Vec::new(),
            waiting_for: Vec::new(),
            upgrade: None,
        }
    }

    #[test]
    fn watch_ends_when_every_target_is_healthy_or_failed() {
        assert!(!settled(&view(&[], None)), "no targets yet");
        assert!(!settled(&view(&[("healthy", 0), ("running", 0)], None)));
        assert!(!settled(&view(&[("healthy", 0)], Some(2))), "one of two");
        assert!(settled(&view(&[("healthy", 0), ("failed", 3)], Some(2))));
        assert!(!settled(&view(&[("unhealthy", 0)], None)), "may recover");
    }

    /// THREATS L3: a hostile target's reasons (OSC 52 writes the operator's clipboard) reach
    /// every line `deploy status --watch` and `deploy upgrade` print escaped.
    #[test]
    fn a_targets_reason_is_printed_escaped() {
        let osc = "\u{1b}]52;c;cm0gLXJm\u{7}";
        let mut v = view(&[("unhealthy", 1)], None);
        v.targets[0].reason = Some(osc.into());
        v.targets[0].last_failure = Some(osc.into());
        let node = v.targets[0].node;
        let u = UpgradeView {
            from: "old".into(),
            to: "new".into(),
            state: "rolled-back".into(),
            reason: Some(format!("new image unhealthy on {}: {osc}", node.short())),
            max_unavailable: 1,
            health_timeout_ms: 60_000,
            max_failed: 1,
            targets: vec![agora_fleet_core::UpgradeTargetView {
                node,
                step: "held".into(),
                old: Some(format!("unhealthy: {osc}")),
                new: Some(format!("unhealthy: {osc}")),
                failed: Some(osc.into()),
            }],
        };
        let mut lines = watch_lines(&v, &mut Default::default());
        lines.extend(progress_lines(&u, &mut Vec::new()));
        lines.extend(held_targets(&u));
        lines.push(rolled_back(&u).to_string());
        assert_eq!(lines.len(), 6, "{lines:?}");
        for line in &lines {
            assert!(
                !line.contains(['\u{1b}', '\u{7}']),
                "raw control bytes: {line:?}"
            );
        }
        // What the target said is still there, legibly.
        let quoted = "\\u{1b}]52;c;cm0gLXJm\\u{7}";
        let quoting = lines.iter().filter(|l| l.contains(quoted)).count();
        assert_eq!(quoting, lines.len() - 1, "all but the summary: {lines:?}");
    }

    /// THREATS D1: without `--max-failed` one failing target is held, not a veto.
    #[test]
    fn the_failure_budget_is_one_by_default() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let line = ["agora", "deploy", "upgrade", "id", "--image", "bafy"];
        match Cli::try_parse_from(line).map(|cli| cli.command) {
            Ok(Command::Deploy(DeployCommand::Upgrade(a))) => assert_eq!(a.max_failed, 1),
            other => panic!("not parsed as an upgrade: {other:?}"),
        }
    }

    #[test]
    fn watch_prints_only_the_lines_that_changed() {
        let mut seen = Default::default();
        let first = watch_lines(&view(&[("running", 0), ("running", 0)], None), &mut seen);
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(watch_lines(&view(&[("running", 0), ("running", 0)], None), &mut seen).is_empty());
        let next = watch_lines(&view(&[("running", 0), ("running", 2)], None), &mut seen);
        assert_eq!(next.len(), 1, "{next:?}");
        assert!(next[0].contains("restarts 2"), "{next:?}");
    }
}
