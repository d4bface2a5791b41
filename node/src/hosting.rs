//! What the orchestrator and the radio need from the service host: stage an image by CID, start
//! and stop it, feed it readings, ask whether it runs. The node's `ServiceHost` implements it;
//! tests may use a fake.

use async_trait::async_trait;
use cid::Cid;

/// A staged (fetched, verified, compiled, idle) service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StagedService {
    /// Sensor devices the service's manifest takes over.
    pub devices: Vec<u32>,
}

/// Service control as the orchestrator uses it; errors are human-readable reasons.
#[async_trait]
pub trait ServiceControl: Send + Sync + 'static {
    /// Fetches, verifies and compiles `image` as service `id`, idle.
    async fn stage(&self, id: &str, image: Cid) -> Result<StagedService, String>;
    /// Starts the staged service `id`.
    async fn start(&self, id: &str) -> Result<(), String>;
    /// Stops service `id`.
    async fn stop(&self, id: &str) -> Result<(), String>;
    /// Queues one sensor frame for service `id`.
    fn push_reading(&self, id: &str, frame: Vec<u8>) -> Result<(), String>;
    /// Whether service `id` is running.
    async fn running(&self, id: &str) -> bool;
}

/// Service control on a node without a service host: every call fails with a clear reason.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unavailable;

const UNAVAILABLE: &str = "this node has no service host";

#[async_trait]
impl ServiceControl for Unavailable {
    async fn stage(&self, _id: &str, _image: Cid) -> Result<StagedService, String> {
        Err(UNAVAILABLE.into())
    }
    async fn start(&self, _id: &str) -> Result<(), String> {
        Err(UNAVAILABLE.into())
    }
    async fn stop(&self, _id: &str) -> Result<(), String> {
        Err(UNAVAILABLE.into())
    }
    fn push_reading(&self, _id: &str, _frame: Vec<u8>) -> Result<(), String> {
        Err(UNAVAILABLE.into())
    }
    async fn running(&self, _id: &str) -> bool {
        false
    }
}
