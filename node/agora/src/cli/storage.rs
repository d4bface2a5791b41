//! `agora storage …` and `agora proof …`. Paths are made absolute and handed to the local node,
//! which reads/writes them itself (the control API is loopback only).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;

use agora_api::client::ApiClient;
use agora_api::storage::{
    AddRequest, CarExportRequest, CidRequest, DoneReply, GetRequest, JobReply, PathRequest,
    VerifyRequest,
};
use agora_exchange::{AddReply, FetchProgress, JobStatus, LsReply, ProofCreated, ProofVerified};

use agora_devnet::output::{print_json, print_table};
use agora_devnet::progress::Progress;

/// `agora storage …`
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Import a file (prints the CID `ipfs add` would print), pin and announce it.
    Add {
        /// The file.
        file: PathBuf,
        /// 0 = CIDv0 (Kubo default), 1 = CIDv1 with raw leaves.
        #[arg(long, default_value_t = 0)]
        cid_version: u8,
    },
    /// Fetch a file by CID (from the local store or the network) and write it out.
    Get {
        /// Root CID.
        cid: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Fail after this many seconds without progress (default: node config).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Fetch (if needed) and pin a DAG so GC keeps it; announces it as provider.
    Pin {
        /// Root CID.
        cid: String,
    },
    /// Remove a pin.
    Unpin {
        /// Root CID.
        cid: String,
    },
    /// List pinned roots and the number of stored blocks.
    Ls,
    /// Delete every block not reachable from a pin.
    Gc,
    /// Show bitswap counters.
    Stats,
    /// CAR v1 files (compatible with `ipfs dag export/import`).
    #[command(subcommand)]
    Car(CarCommand),
}

/// `agora storage car …`
#[derive(Debug, Subcommand)]
pub enum CarCommand {
    /// Write a DAG as a CAR file.
    Export {
        /// Root CID.
        cid: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Import a CAR file (verifies every block) and pin its roots.
    Import {
        /// The CAR file.
        file: PathBuf,
    },
}

/// `agora proof …`
#[derive(Debug, Subcommand)]
pub enum ProofCommand {
    /// Sign a data proof over a file of readings (one per line); prints the proof CID.
    Create {
        /// Readings file.
        #[arg(long)]
        data: PathBuf,
    },
    /// Verify readings against a proof block (fetched from the network if needed).
    Verify {
        /// Readings file.
        #[arg(long)]
        data: PathBuf,
        /// Proof block CID.
        #[arg(long)]
        proof: String,
        /// Check only this reading (0-based line number).
        #[arg(long)]
        reading: Option<u64>,
    },
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve path {}", p.display()))
}

fn print_done(verb: &str, r: &DoneReply, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    println!(
        "{verb} {} ({} blocks, {} bytes)",
        r.cids.join(" "),
        r.blocks,
        r.bytes
    );
    Ok(())
}

/// Runs `agora storage …`.
pub async fn storage(dir: &Path, cmd: &StorageCommand, json: bool) -> anyhow::Result<()> {
    let api = ApiClient::for_data_dir(dir)?;
    match cmd {
        StorageCommand::Add { file, cid_version } => {
            let req = AddRequest {
                path: absolute(file)?,
                cid_version: *cid_version,
            };
            let progress = Progress::start(format!("adding {}", file.display()), json);
            let r: AddReply = api.post_long("/v1/storage/add", &req).await?;
            progress.finish();
            if json {
                print_json(&r)?;
            } else {
                println!("added {} {}", r.cid, file.display());
            }
        }
        StorageCommand::Get {
            cid,
            output,
            timeout,
        } => get(&api, cid, output, *timeout, json).await?,
        StorageCommand::Pin { cid } => {
            let progress = Progress::start(format!("pinning {cid}"), json);
            let r: DoneReply = api
                .post_long("/v1/storage/pin", &CidRequest { cid: cid.clone() })
                .await?;
            progress.finish();
            print_done("pinned", &r, json)?;
        }
        StorageCommand::Unpin { cid } => {
            let r: DoneReply = api
                .post("/v1/storage/unpin", &CidRequest { cid: cid.clone() })
                .await?;
            print_done("unpinned", &r, json)?;
        }
        StorageCommand::Ls => {
            let r: LsReply = api.get("/v1/storage/ls").await?;
            if json {
                print_json(&r)?;
            } else {
                let rows: Vec<Vec<String>> = r
                    .pins
                    .iter()
                    .map(|p| {
                        let held = r.held.get(p).map(|h| h.join(", ")).unwrap_or_default();
                        vec![p.clone(), held]
                    })
                    .collect();
                print_table(&["PINNED ROOT", "HELD BY"], &rows);
                println!("{} blocks stored", r.blocks);
            }
        }
        StorageCommand::Gc => {
            let r: DoneReply = api
                .post_long("/v1/storage/gc", &serde_json::json!({}))
                .await?;
            print_done("removed", &r, json)?;
        }
        StorageCommand::Stats => {
            let r: serde_json::Value = api.get("/v1/storage/stats").await?;
            if json {
                print_json(&r)?;
            } else if let Some(map) = r.as_object() {
                // Groups (`challenges`, `gc`) print one row per counter: `gc.runs`.
                let mut rows: Vec<Vec<String>> = Vec::new();
                for (k, v) in map {
                    match v.as_object() {
                        Some(group) => rows.extend(
                            group
                                .iter()
                                .map(|(sub, v)| vec![format!("{k}.{sub}"), v.to_string()]),
                        ),
                        None => rows.push(vec![k.clone(), v.to_string()]),
                    }
                }
                print_table(&["COUNTER", "VALUE"], &rows);
            }
        }
        StorageCommand::Car(CarCommand::Export { cid, output }) => {
            let req = CarExportRequest {
                cid: cid.clone(),
                out: absolute(output)?,
            };
            let r: DoneReply = api.post_long("/v1/storage/car/export", &req).await?;
            print_done("exported", &r, json)?;
        }
        StorageCommand::Car(CarCommand::Import { file }) => {
            let req = PathRequest {
                path: absolute(file)?,
            };
            let r: DoneReply = api.post_long("/v1/storage/car/import", &req).await?;
            print_done("imported", &r, json)?;
        }
    }
    Ok(())
}

async fn get(
    api: &ApiClient,
    cid: &str,
    output: &Path,
    timeout: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let req = GetRequest {
        cid: cid.to_string(),
        out: absolute(output)?,
        timeout_ms: timeout.map(|s| s.saturating_mul(1000)),
    };
    let job: JobReply = api.post("/v1/storage/get", &req).await?;
    // Only on a terminal and never in --json: piped output stays clean.
    let mut bar = ProgressBar::new(agora_devnet::progress::wanted(
        json,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    ));
    let status = loop {
        let st: JobStatus = api.get(&format!("/v1/storage/jobs/{}", job.job)).await?;
        bar.draw(&st.progress);
        if st.finished {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish();
    if let Some(e) = &status.error {
        bail!("{e}");
    }
    if json {
        print_json(&status)?;
    } else {
        println!(
            "saved {} ({} bytes) to {}",
            status.cid,
            status.written.unwrap_or(0),
            output.display()
        );
    }
    Ok(())
}

/// A one-line progress bar on stderr.
struct ProgressBar {
    enabled: bool,
    drawn: bool,
}

impl ProgressBar {
    fn new(enabled: bool) -> Self {
        ProgressBar {
            enabled,
            drawn: false,
        }
    }

    fn draw(&mut self, p: &FetchProgress) {
        if !self.enabled {
            return;
        }
        let mib = p.bytes as f64 / 1_048_576.0;
        let line = match p.total_bytes {
            // Block bytes include a little DAG overhead, so cap the bar at 100 %.
            Some(total) if total > 0 => {
                let frac = (p.bytes as f64 / total as f64).min(1.0);
                let filled = (frac * 30.0) as usize;
                format!(
                    "[{}{}] {:5.1}% {mib:.1}/{:.1} MiB  {} blocks  {} providers",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    frac * 100.0,
                    total as f64 / 1_048_576.0,
                    p.blocks,
                    p.providers
                )
            }
            _ => format!(
                "{mib:.1} MiB  {} blocks  {} providers",
                p.blocks, p.providers
            ),
        };
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}

/// Runs `agora proof …`.
pub async fn proof(dir: &Path, cmd: &ProofCommand, json: bool) -> anyhow::Result<()> {
    let api = ApiClient::for_data_dir(dir)?;
    match cmd {
        ProofCommand::Create { data } => {
            let req = PathRequest {
                path: absolute(data)?,
            };
            let r: ProofCreated = api.post("/v1/proof/create", &req).await?;
            if json {
                print_json(&r)?;
            } else {
                println!("{}", r.cid);
                eprintln!("{} readings, merkle root {}", r.count, r.root);
            }
        }
        ProofCommand::Verify {
            data,
            proof,
            reading,
        } => {
            let req = VerifyRequest {
                data: absolute(data)?,
                proof: proof.clone(),
                reading: *reading,
            };
            let r: ProofVerified = api.post_long("/v1/proof/verify", &req).await?;
            if json {
                print_json(&r)?;
            } else {
                match r.reading {
                    Some(i) => println!("valid: reading {i} is in the batch signed by {}", r.edge),
                    None => println!("valid: {} readings signed by {}", r.count, r.edge),
                }
            }
        }
    }
    Ok(())
}
