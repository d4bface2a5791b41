//! Fleet deployments: `agora deploy create|status|list|delete` (issue #15, docs/FLEETS.md).

use std::path::Path;

use agora_api::client::ApiClient;
use agora_api::fleet::{CreateDeploymentRequest, DeploymentList};
use agora_market::fleet::{DeploymentView, TargetView};
use agora_market::resources::parse_duration_ms;
use anyhow::Context;
use clap::{Args, Subcommand};

use agora_devnet::output::{print_json, print_table};

use super::market::ResourceArgs;

/// `agora deploy …`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Put an image on the providers a selector matches: one hosted contract per replica,
    /// through the market and the ledger.
    Create(Box<CreateArgs>),
    /// Per target: contracting / fetching / staged / running / healthy / unhealthy / failed,
    /// with reasons.
    Status {
        /// Deployment id (from `deploy create` or `deploy list`).
        id: String,
    },
    /// This node's deployments.
    List,
    /// Delete a deployment: every target's contract ends and its replica stops.
    Delete {
        /// Deployment id.
        id: String,
    },
}

/// Options of `deploy create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image CID (from `agora service publish`).
    image: String,
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

/// One target's status as the table shows it: `healthy`, `unhealthy: reason`, `failed: reason`.
fn target_status(t: &TargetView) -> String {
    match &t.reason {
        Some(reason) if !reason.is_empty() => format!("{}: {reason}", t.phase),
        _ => t.phase.clone(),
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
    let rows: Vec<Vec<String>> = v
        .targets
        .iter()
        .map(|t| vec![t.node.to_string(), target_status(t)])
        .collect();
    if rows.is_empty() {
        println!("no targets yet (waiting for matching providers to offer themselves)");
    } else {
        print_table(&["TARGET", "STATUS"], &rows);
    }
}

/// Runs `agora deploy …`.
pub async fn deploy(dir: &Path, cmd: &DeployCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        DeployCommand::Create(a) => {
            let req = CreateDeploymentRequest {
                name: a.name.clone().unwrap_or_else(|| default_name(&a.image)),
                image: a.image.clone(),
                to: a.to.clone(),
                replicas: if a.all { None } else { a.replicas },
                strategy: a.strategy.clone(),
                needs: a.resources.resources()?,
                max_price: a.max_price,
                duration_ms: parse_duration_ms(&a.duration).context("--duration")?,
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
        DeployCommand::Status { id } => {
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
                    let summary = v
                        .summary
                        .iter()
                        .map(|(p, n)| format!("{p} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ");
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
        };
        assert_eq!(target_status(&t("healthy", None)), "healthy");
        assert_eq!(
            target_status(&t(
                "unhealthy",
                Some("the guest's health export returned 1")
            )),
            "unhealthy: the guest's health export returned 1"
        );
        assert_eq!(target_status(&t("running", Some(""))), "running");
    }
}
