//! A provider that runs nothing (THREATS P1): a [`Twist`] of the node's real service host
//! ([`ServiceControl`]) that stages a contract's image as usual (fetched, verified, compiled)
//! but never starts it, while telling the orchestrator it runs, so the provider activates the
//! contract and claims uptime in every heartbeat as an honest one would. Only its answer to the
//! arbitrators' probes differs between the two kinds ([`HostNothing`]).
//!
//! `agora-byzantine --host-nothing[=honest|lie]` runs a real node behind it
//! (`agora_daemon::start_wrapped`). Each service it pretends to start prints
//! `byzantine: host-nothing pretends to start service=…` and each probe it answers
//! `byzantine: probe answered service=… running=…` to stdout (the devnet's `node.log`).

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use agora_hosting::control::{ProbeWitness, ServiceControl};
use async_trait::async_trait;

use super::twist::Twist;

/// How a provider that runs nothing answers the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostNothing {
    /// "Not running": the truth about its hosting layer (yet its heartbeats claim uptime).
    Honest,
    /// "Running", with a made-up `agora_probe` value (the nonce): a lie about its hosting
    /// layer, which only the guest value can expose.
    Lie,
}

/// Its twist.
pub struct NothingHost {
    kind: HostNothing,
    /// Services it pretends to run.
    pretended: Mutex<BTreeSet<String>>,
}

impl NothingHost {
    /// Runs nothing of what it is asked to start; answers probes as `kind` says.
    pub fn new(kind: HostNothing) -> Self {
        NothingHost {
            kind,
            pretended: Mutex::new(BTreeSet::new()),
        }
    }

    fn pretends(&self, id: &str) -> bool {
        self.pretended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }
}

#[async_trait]
impl Twist for NothingHost {
    async fn start(&self, _inner: &dyn ServiceControl, id: &str) -> Result<(), String> {
        self.pretended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string());
        println!("byzantine: host-nothing pretends to start service={id}");
        Ok(())
    }

    async fn stop(&self, inner: &dyn ServiceControl, id: &str) -> Result<(), String> {
        let was = self
            .pretended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        match inner.stop(id).await {
            Err(_) if was => Ok(()),
            other => other,
        }
    }

    fn push_reading(
        &self,
        inner: &dyn ServiceControl,
        id: &str,
        frame: Vec<u8>,
    ) -> Result<(), String> {
        if self.pretends(id) {
            return Err(format!("service {id} runs nowhere"));
        }
        inner.push_reading(id, frame)
    }

    /// What the orchestrator's heartbeats read: "running", so it claims uptime.
    async fn running(&self, inner: &dyn ServiceControl, id: &str) -> bool {
        self.pretends(id) || inner.running(id).await
    }

    async fn active(&self, inner: &dyn ServiceControl, id: &str) -> bool {
        self.pretends(id) || inner.active(id).await
    }

    async fn probe(&self, inner: &dyn ServiceControl, id: &str, nonce: i64) -> ProbeWitness {
        if !self.pretends(id) {
            return inner.probe(id, nonce).await;
        }
        let running = self.kind == HostNothing::Lie;
        // No instance to ask: the liar makes a value up (the nonce itself).
        let guest = running.then_some(nonce);
        println!("byzantine: probe answered service={id} running={running}");
        ProbeWitness { running, guest }
    }
}
