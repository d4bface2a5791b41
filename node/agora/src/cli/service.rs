//! `agora service …`: publish service images, stage them by CID, start, stop, inspect.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use agora_api::client::ApiClient;
use agora_api::services::{
    LogsReply, PublishRequest, ReadingsReply, ReadingsRequest, ShowReply, StageRequest, StopReply,
};
use agora_hosting::{ImageInfo, ServiceInfo, StagedInfo};

use agora_devnet::output::{print_json, print_table};
use agora_devnet::progress::Progress;

/// `agora service …`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Store a module and its manifest as a service image; prints the image CID.
    Publish {
        /// The module (`.wasm`, wasm32-wasip1, guest ABI v1).
        module: PathBuf,
        /// The service manifest (TOML). Without it: a wasm service named after the module's
        /// file, version 0.1.0, the runtime's default limits, no devices (the manifest used is
        /// printed, to copy and edit).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// List the services on this node.
    List,
    /// Fetch an image (from peers if needed), verify and compile it, and stage it idle.
    Stage {
        /// The image CID printed by `publish`.
        image: String,
        /// Service id (default: svc- and the end of the image CID).
        #[arg(long)]
        id: Option<String>,
    },
    /// Start a staged or stopped service, after the services its manifest's `depends_on`
    /// names (each started if needed and waited for until it answers).
    Start {
        /// Service id.
        id: String,
    },
    /// Stop a running service and print why it stopped; running services that depend on it
    /// are stopped first.
    Stop {
        /// Service id.
        id: String,
    },
    /// Forget a service that is not running.
    Remove {
        /// Service id.
        id: String,
    },
    /// Queue sensor readings (hex) for a wasm service, in order.
    Push {
        /// Service id.
        id: String,
        /// Readings as hex bytes (e.g. a lora-gateway frame).
        #[arg(required = true)]
        readings: Vec<String>,
    },
    /// Print a service's log tail.
    Logs {
        /// Service id.
        id: String,
    },
    /// Show a service's state, health and metering.
    Show {
        /// Service id.
        id: String,
    },
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve path {}", p.display()))
}

fn path(id: &str, tail: &str) -> String {
    format!("/v1/services/{id}{tail}")
}

/// Runs `agora service …`.
pub async fn service(dir: &Path, cmd: &ServiceCommand, json: bool) -> anyhow::Result<()> {
    let api = ApiClient::for_data_dir(dir)?;
    match cmd {
        ServiceCommand::Publish { module, manifest } => {
            let req = PublishRequest {
                module: absolute(module)?,
                manifest: manifest.as_deref().map(absolute).transpose()?,
            };
            let progress = Progress::start("publishing (compiling the module)", json);
            let r: ImageInfo = api.post_long("/v1/services/publish", &req).await?;
            progress.finish();
            if json {
                return print_json(&r);
            }
            println!("published {} {} {}", r.image, r.name, r.version);
            if manifest.is_none() {
                // The node derived the same manifest from the same path.
                let derived = agora_hosting::manifest::ServiceManifest::for_module(&req.module)?;
                println!(
                    "no --manifest: published with defaults derived from the module; to set \
                     devices, limits or activation, save this as svc.toml, edit it and publish \
                     again with --manifest svc.toml:\n\n{}",
                    derived.to_toml()
                );
            }
        }
        ServiceCommand::List => {
            let r: Vec<ServiceInfo> = api.get("/v1/services").await?;
            if json {
                return print_json(&r);
            }
            let rows: Vec<Vec<String>> = r
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        format!("{}@{}", s.name, s.version),
                        s.kind.as_str().to_string(),
                        state_text(&s.state),
                        s.metering.published.to_string(),
                        s.image.clone(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "SERVICE", "KIND", "STATE", "PUBLISHED", "IMAGE"],
                &rows,
            );
        }
        ServiceCommand::Stage { image, id } => {
            let req = StageRequest {
                image: image.clone(),
                id: id.clone(),
            };
            let progress =
                Progress::start(format!("staging {image} (fetch, verify, compile)"), json);
            let r: StagedInfo = api.post_long("/v1/services/stage", &req).await?;
            progress.finish();
            if json {
                return print_json(&r);
            }
            let cached = if r.from_cache {
                " (cached artifact)"
            } else {
                ""
            };
            println!(
                "staged {} {}@{} from {}{cached}",
                r.id, r.manifest.name, r.manifest.version, r.image
            );
        }
        ServiceCommand::Start { id } => {
            // Long: each dependency that is not running is started and waited for first.
            let r: ShowReply = api
                .post_long(&path(id, "/start"), &serde_json::json!({}))
                .await?;
            if json {
                return print_json(&r);
            }
            for dep in r.started.iter().filter(|d| *d != id) {
                println!("started {dep} (a dependency of {id})");
            }
            println!("started {} ({})", id, state_text(&r.service.state));
        }
        ServiceCommand::Stop { id } => {
            // Long: each running dependent is stopped and waited for first.
            let r: StopReply = api
                .post_long(&path(id, "/stop"), &serde_json::json!({}))
                .await?;
            if json {
                return print_json(&r);
            }
            for s in r.stopped.iter().filter(|s| s.id != r.id) {
                println!("stopped {}: {:?} (it depends on {})", s.id, s.reason, r.id);
            }
            println!("stopped {}: {:?}", r.id, r.reason);
        }
        ServiceCommand::Remove { id } => {
            let r: serde_json::Value = api
                .post(&path(id, "/remove"), &serde_json::json!({}))
                .await?;
            if json {
                return print_json(&r);
            }
            println!("removed {id}");
        }
        ServiceCommand::Push { id, readings } => {
            let req = ReadingsRequest {
                readings: readings.clone(),
            };
            let r: ReadingsReply = api.post(&path(id, "/readings"), &req).await?;
            if json {
                return print_json(&r);
            }
            println!("queued {} readings for {}", r.queued, r.id);
        }
        ServiceCommand::Logs { id } => {
            let r: LogsReply = api.get(&path(id, "/logs")).await?;
            if json {
                return print_json(&r);
            }
            print!("{}", r.logs);
        }
        ServiceCommand::Show { id } => {
            let r: ShowReply = api.get(&path(id, "")).await?;
            if json {
                return print_json(&r);
            }
            let s = &r.service;
            let m = &s.metering;
            println!("id:        {}", s.id);
            println!(
                "service:   {}@{} ({})",
                agora_wire::printable(&s.name),
                agora_wire::printable(&s.version),
                s.kind.as_str()
            );
            println!("image:     {}", s.image);
            if r.health.restarting {
                let why = s.last_failure.as_ref().map_or_else(String::new, |f| {
                    format!(" after {}", agora_wire::printable(&f.to_string()))
                });
                println!("state:     active, restarting{why}");
            } else {
                println!("state:     {}", state_text(&s.state));
            }
            if !s.depends_on.is_empty() {
                println!("needs:     {}", s.depends_on.join(", "));
            }
            println!("healthy:   {}", r.health.healthy);
            println!("uptime:    {} ms", m.uptime_ms);
            println!("fuel used: {}", m.fuel_used);
            println!("peak mem:  {} bytes", m.peak_memory_bytes);
            println!(
                "readings:  {} processed, {} dropped",
                m.readings_processed, m.readings_dropped
            );
            println!("published: {}", m.published);
            println!("restarts:  {}", m.restarts);
            // A customer's guest on a provider: its failure text may quote the guest.
            if let Some(f) = &s.last_failure {
                println!("last fail: {}", agora_wire::printable(&f.to_string()));
            }
        }
    }
    Ok(())
}

fn state_text(state: &agora_runtime::ServiceState) -> String {
    match state {
        agora_runtime::ServiceState::Staged => "staged".into(),
        agora_runtime::ServiceState::Active => "active".into(),
        agora_runtime::ServiceState::Stopped(r) => format!("stopped ({r:?})"),
    }
}
