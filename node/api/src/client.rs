//! Client side of the control API, used by the CLI and the devnet tooling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{ApiErrorBody, StatusReply};
use crate::{API_ADDR_FILE, API_TOKEN_FILE};
use agora_network::{PeerInfo, PeerPresence};

/// Errors talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node is running for this data dir.
    #[error(
        "no node is running for {0} (no api.addr); start one with `agora node run --data-dir {0}`"
    )]
    NotRunning(PathBuf),
    /// The node did not answer.
    #[error(
        "node at {addr} is not answering ({reason}); is `agora node run --data-dir {dir}` still running?"
    )]
    Unreachable {
        /// API address tried.
        addr: String,
        /// Data dir.
        dir: PathBuf,
        /// Cause.
        reason: String,
    },
    /// The node answered with an error.
    #[error("node answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error text from the node.
        message: String,
    },
    /// A file in the data dir is unreadable.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
}

/// A client for one node's control API.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    dir: PathBuf,
    http: reqwest::Client,
}

impl ApiClient {
    /// Finds the node running on `data_dir` (reads `api.addr` and `api.token`).
    pub fn for_data_dir(data_dir: &Path) -> Result<ApiClient, ClientError> {
        let addr_path = data_dir.join(API_ADDR_FILE);
        let addr = std::fs::read_to_string(&addr_path)
            .map_err(|_| ClientError::NotRunning(data_dir.to_path_buf()))?;
        let token_path = data_dir.join(API_TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| ClientError::Read(token_path.clone(), e))?;
        Ok(Self::new(addr.trim(), token.trim(), data_dir))
    }

    /// A client for an explicit address and token.
    pub fn new(addr: &str, token: &str, data_dir: &Path) -> ApiClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .unwrap_or_default();
        ApiClient {
            base: format!("http://{addr}"),
            token: token.to_string(),
            dir: data_dir.to_path_buf(),
            http,
        }
    }

    /// The API address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.base.trim_start_matches("http://").parse().ok()
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        if !status.is_success() {
            let message = match resp.json::<ApiErrorBody>().await {
                Ok(b) => b.error,
                Err(_) => status.to_string(),
            };
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        resp.json::<T>().await.map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            addr: self.base.clone(),
            dir: self.dir.clone(),
            reason: e.to_string(),
        }
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.decode(resp).await
    }

    /// POST a JSON body.
    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.decode(resp).await
    }

    /// POST a JSON body for a long operation (import, fetch, export): no 30 s limit.
    pub async fn post_long<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(24 * 3600))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.decode(resp).await
    }

    /// Node status.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        self.get("/v1/status").await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ClientError> {
        self.get("/v1/peers").await
    }

    /// Dials `addr` (ending in `/p2p/<peer id>`) and waits until connected.
    pub async fn connect(&self, addr: &str) -> Result<crate::PeerChangeReply, ClientError> {
        let body = crate::ConnectRequest { addr: addr.into() };
        self.post("/v1/peers/connect", &body).await
    }

    /// Closes the connections to `peer` (peer id or multiaddr with `/p2p/`).
    pub async fn disconnect(&self, peer: &str) -> Result<crate::PeerChangeReply, ClientError> {
        let body = crate::DisconnectRequest { peer: peer.into() };
        self.post("/v1/peers/disconnect", &body).await
    }

    /// Presence table.
    pub async fn presence(&self) -> Result<Vec<PeerPresence>, ClientError> {
        self.get("/v1/presence").await
    }

    /// `GET /ready`: the readiness checks, whether they pass (200) or not (503).
    pub async fn readiness(&self) -> Result<crate::metrics::Readiness, ClientError> {
        let resp = self
            .http
            .get(format!("{}/ready", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        resp.json().await.map_err(|e| self.unreachable(e))
    }

    /// Asks the node to stop.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let _: serde_json::Value = self.post("/v1/shutdown", &serde_json::json!({})).await?;
        Ok(())
    }
}
