//! Background `get` jobs: the API starts one and the CLI polls its progress for the progress
//! bar, so no HTTP request stays open for the length of a large fetch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agora_storage::Cid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument;

use super::{FetchConfig, FetchProgress, StorageHandle};

/// Finished jobs kept for polling; older ones are forgotten.
const MAX_JOBS: usize = 256;

/// State of a get job as reported to the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobStatus {
    /// Job id.
    pub id: u64,
    /// Root being fetched.
    pub cid: String,
    /// Output file.
    pub out: String,
    /// Progress so far.
    pub progress: FetchProgress,
    /// Whether the job ended (successfully or not).
    pub finished: bool,
    /// Bytes written to `out`, once finished successfully.
    pub written: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

struct Job {
    status: JobStatus,
    progress: watch::Receiver<FetchProgress>,
}

/// The job table.
#[derive(Clone, Default)]
pub struct Jobs {
    inner: Arc<Mutex<(u64, BTreeMap<u64, Job>)>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jobs")
    }
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Job>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StorageHandle {
    /// Starts fetching `cid` into the store and exporting it to `out`; returns the job id.
    pub fn start_get(&self, cid: Cid, out: PathBuf, cfg: FetchConfig) -> u64 {
        let (tx, rx) = watch::channel(FetchProgress::default());
        let id = {
            let mut jobs = self.jobs.lock();
            let id = jobs.0;
            jobs.0 += 1;
            jobs.1.insert(
                id,
                Job {
                    status: JobStatus {
                        id,
                        cid: cid.to_string(),
                        out: out.display().to_string(),
                        progress: FetchProgress::default(),
                        finished: false,
                        written: None,
                        error: None,
                    },
                    progress: rx,
                },
            );
            while jobs.1.len() > MAX_JOBS {
                jobs.1.pop_first();
            }
            id
        };
        let me = self.clone();
        tokio::spawn(
            async move {
                let res = me.get_file(cid, out, &tx, cfg).await;
                let mut jobs = me.jobs.lock();
                if let Some(job) = jobs.1.get_mut(&id) {
                    job.status.finished = true;
                    job.status.progress = *tx.borrow();
                    match res {
                        Ok(stats) => job.status.written = Some(stats.bytes),
                        Err(e) => job.status.error = Some(e.to_string()),
                    }
                }
            }
            .in_current_span(),
        );
        id
    }

    /// The state of a job, if known.
    pub fn job(&self, id: u64) -> Option<JobStatus> {
        let jobs = self.jobs.lock();
        jobs.1.get(&id).map(|j| {
            let mut status = j.status.clone();
            if !status.finished {
                status.progress = *j.progress.borrow();
            }
            status
        })
    }
}
