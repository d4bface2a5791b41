//! A small client for the Kubo (go-ipfs) RPC API (`/api/v0`, plain HTTP): add, cat, block
//! get/put, pins, repo stat/gc and DAG (CAR) export/import. Uploads and downloads stream; no file
//! is buffered whole.

mod multipart;
mod repo;

pub use repo::RepoStat;

use cid::Cid;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::hash::verify_block;
use crate::unixfs::CidVersion;

/// Largest reply read whole from the daemon (pin lists, stats, add and block/put answers).
pub const MAX_REPLY_BYTES: usize = 16 << 20;
/// Longest line accepted in a streamed newline-delimited JSON reply (pin/add, repo/gc, dag/import).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most bytes of an error reply kept for the message.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Errors talking to a Kubo daemon.
#[derive(Debug, thiserror::Error)]
pub enum KuboError {
    /// Nothing listens at the API address.
    #[error(
        "cannot reach the Kubo RPC API at {api}: {reason}; start the daemon (`ipfs daemon`) or set storage.api to its address"
    )]
    Unreachable {
        /// The API base URL.
        api: String,
        /// The transport error.
        reason: String,
    },
    /// The daemon answered with an error status.
    #[error("Kubo daemon returned HTTP {status}: {message}")]
    Daemon {
        /// HTTP status code.
        status: u16,
        /// The daemon's `Message` field (or body text).
        message: String,
    },
    /// The daemon's answer could not be understood.
    #[error(
        "unexpected answer from Kubo {endpoint}: {reason}; check storage.api points at a Kubo RPC API"
    )]
    BadResponse {
        /// Endpoint called.
        endpoint: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A block from the daemon did not match its CID.
    #[error("Kubo returned bytes for block {cid} that do not match it; its repo may be corrupted")]
    HashMismatch {
        /// The block.
        cid: Cid,
    },
    /// Other HTTP failure mid-transfer.
    #[error("HTTP error talking to Kubo at {api}: {reason}")]
    Http {
        /// The API base URL.
        api: String,
        /// The error.
        reason: String,
    },
    /// A fetch made no progress within the idle timeout (content not found by the daemon).
    #[error(
        "Kubo {endpoint} of {cid} made no progress for {secs} s; the daemon cannot find the content (is a provider online and connected?) or raise storage.fetch_idle_timeout_ms"
    )]
    Stalled {
        /// Endpoint called.
        endpoint: &'static str,
        /// The root asked for.
        cid: Cid,
        /// The idle timeout, seconds.
        secs: u64,
    },
    /// Local I/O failure while streaming.
    #[error("I/O error while streaming to/from Kubo: {0}")]
    Io(#[from] std::io::Error),
}

/// Options for [`KuboClient::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddOptions {
    /// CID version (`--cid-version`; v1 implies raw leaves in Kubo).
    pub cid_version: CidVersion,
    /// Pin recursively after adding.
    pub pin: bool,
}

impl Default for AddOptions {
    fn default() -> Self {
        AddOptions {
            cid_version: CidVersion::V0,
            pin: true,
        }
    }
}

/// A Kubo RPC API client.
#[derive(Debug, Clone)]
pub struct KuboClient {
    http: reqwest::Client,
    api: String,
    idle: Option<std::time::Duration>,
}

#[derive(Deserialize)]
struct AddLine {
    #[serde(rename = "Hash")]
    hash: Option<String>,
}

#[derive(Deserialize)]
struct KeyLine {
    #[serde(rename = "Key")]
    key: String,
}

#[derive(Deserialize)]
struct DaemonError {
    #[serde(rename = "Message")]
    message: String,
}

impl KuboClient {
    /// A client for the API at `api`, e.g. `http://127.0.0.1:5001`.
    pub fn new(api: impl Into<String>) -> Self {
        KuboClient {
            http: reqwest::Client::new(),
            api: api.into().trim_end_matches('/').to_owned(),
            idle: None,
        }
    }

    /// Fails fetches (cat, block/get, pin/add, dag/export) that make no progress for `idle`:
    /// an online Kubo otherwise searches the network for an unknown CID forever.
    pub fn with_idle_timeout(mut self, idle: std::time::Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Awaits `fut` within the idle timeout, if one is set.
    async fn within<T>(
        &self,
        endpoint: &'static str,
        cid: &Cid,
        fut: impl std::future::Future<Output = Result<T, KuboError>>,
    ) -> Result<T, KuboError> {
        match self.idle {
            None => fut.await,
            Some(idle) => {
                tokio::time::timeout(idle, fut)
                    .await
                    .map_err(|_| KuboError::Stalled {
                        endpoint,
                        cid: *cid,
                        secs: idle.as_secs(),
                    })?
            }
        }
    }

    /// The API base URL.
    pub fn api(&self) -> &str {
        &self.api
    }

    fn transport(&self, e: reqwest::Error) -> KuboError {
        if e.is_connect() {
            KuboError::Unreachable {
                api: self.api.clone(),
                reason: e.to_string(),
            }
        } else {
            KuboError::Http {
                api: self.api.clone(),
                reason: e.to_string(),
            }
        }
    }

    /// POSTs to `/api/v0/{endpoint}` and turns error statuses into `KuboError::Daemon`.
    async fn call(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
        body: Option<reqwest::Body>,
        boundary: Option<&str>,
    ) -> Result<reqwest::Response, KuboError> {
        let mut req = self
            .http
            .post(format!("{}/api/v0/{endpoint}", self.api))
            .query(query);
        if let (Some(body), Some(boundary)) = (body, boundary) {
            req = req
                .header(
                    "Content-Type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = self
            .text(resp, endpoint, MAX_ERROR_BYTES)
            .await
            .unwrap_or_default();
        let message = serde_json::from_str::<DaemonError>(&text)
            .map(|d| d.message)
            .unwrap_or(text);
        tracing::debug!(endpoint, status = status.as_u16(), %message, "kubo error");
        Err(KuboError::Daemon {
            status: status.as_u16(),
            message,
        })
    }

    /// Adds a file streamed from `reader` (like `ipfs add`); returns its root CID.
    pub async fn add<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        reader: R,
        options: AddOptions,
    ) -> Result<Cid, KuboError> {
        let (boundary, body) = multipart::file_body(reader);
        let version = match options.cid_version {
            CidVersion::V0 => "0",
            CidVersion::V1 => "1",
        };
        let query = [
            ("cid-version", version.to_owned()),
            ("pin", options.pin.to_string()),
            ("progress", "false".to_owned()),
        ];
        let resp = self
            .call("add", &query, Some(body), Some(&boundary))
            .await?;
        let text = self.text(resp, "add", MAX_REPLY_BYTES).await?;
        let hash = text
            .lines()
            .filter_map(|l| serde_json::from_str::<AddLine>(l).ok()?.hash)
            .next_back()
            .ok_or_else(|| KuboError::BadResponse {
                endpoint: "add",
                reason: format!("no Hash in {text:?}"),
            })?;
        hash.parse().map_err(|e| KuboError::BadResponse {
            endpoint: "add",
            reason: format!("bad CID {hash:?}: {e}"),
        })
    }

    /// Streams the file at `cid` (like `ipfs cat`).
    pub async fn cat(
        &self,
        cid: &Cid,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, KuboError>> + use<>, KuboError> {
        let resp = self
            .within(
                "cat",
                cid,
                self.call("cat", &[("arg", cid.to_string())], None, None),
            )
            .await?;
        let api = self.api.clone();
        Ok(resp
            .bytes_stream()
            .map_ok(|b| b.to_vec())
            .map_err(move |e| KuboError::Http {
                api: api.clone(),
                reason: e.to_string(),
            }))
    }

    /// Streams the file at `cid` into `writer`; returns bytes written.
    pub async fn cat_to<W: AsyncWrite + Unpin>(
        &self,
        cid: &Cid,
        writer: W,
    ) -> Result<u64, KuboError> {
        self.cat_to_with(cid, writer, |_| {}).await
    }

    /// Like [`Self::cat_to`], calling `progress` with the bytes written so far after each chunk.
    pub async fn cat_to_with<W: AsyncWrite + Unpin>(
        &self,
        cid: &Cid,
        writer: W,
        progress: impl FnMut(u64),
    ) -> Result<u64, KuboError> {
        self.stream_to("cat", cid, writer, progress).await
    }

    /// POSTs `endpoint?arg=cid` and streams the body into `writer`, each chunk within the idle
    /// timeout.
    async fn stream_to<W: AsyncWrite + Unpin>(
        &self,
        endpoint: &'static str,
        cid: &Cid,
        mut writer: W,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, KuboError> {
        let resp = self
            .within(
                endpoint,
                cid,
                self.call(endpoint, &[("arg", cid.to_string())], None, None),
            )
            .await?;
        let mut stream = resp.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = self
            .within(endpoint, cid, async { Ok(stream.next().await) })
            .await?
        {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            writer.write_all(&chunk).await?;
            total += chunk.len() as u64;
            progress(total);
        }
        writer.flush().await?;
        Ok(total)
    }

    /// Fetches one raw block and verifies it against `cid`.
    pub async fn block_get(&self, cid: &Cid) -> Result<Vec<u8>, KuboError> {
        let fetch = async {
            let resp = self
                .call("block/get", &[("arg", cid.to_string())], None, None)
                .await?;
            self.body(resp, "block/get", crate::MAX_BLOCK_SIZE).await
        };
        let data = self.within("block/get", cid, fetch).await?;
        verify_block(cid, &data).map_err(|_| KuboError::HashMismatch { cid: *cid })?;
        Ok(data)
    }

    /// Stores one block with `codec` (multicodec name, e.g. "raw", "dag-pb") and sha2-256.
    pub async fn block_put(&self, data: Vec<u8>, codec: &str) -> Result<Cid, KuboError> {
        let (boundary, body) = multipart::file_body(std::io::Cursor::new(data));
        let query = [
            ("cid-codec", codec.to_owned()),
            ("mhtype", "sha2-256".to_owned()),
        ];
        let resp = self
            .call("block/put", &query, Some(body), Some(&boundary))
            .await?;
        parse_key(self.text(resp, "block/put", MAX_REPLY_BYTES).await?)
    }

    /// Reads a whole reply body, refusing one over `limit` bytes (a faulty or hostile daemon
    /// could otherwise stream without end into memory).
    async fn body(
        &self,
        resp: reqwest::Response,
        endpoint: &'static str,
        limit: usize,
    ) -> Result<Vec<u8>, KuboError> {
        let too_large = || KuboError::BadResponse {
            endpoint,
            reason: format!("reply is over {limit} bytes"),
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut stream = resp.bytes_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            if chunk.len() > limit.saturating_sub(out.len()) {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// [`Self::body`] as UTF-8 text.
    async fn text(
        &self,
        resp: reqwest::Response,
        endpoint: &'static str,
        limit: usize,
    ) -> Result<String, KuboError> {
        String::from_utf8(self.body(resp, endpoint, limit).await?).map_err(|_| {
            KuboError::BadResponse {
                endpoint,
                reason: "reply is not UTF-8".into(),
            }
        })
    }
}

/// The CID in a `block/put` reply.
fn parse_key(text: String) -> Result<Cid, KuboError> {
    let key = serde_json::from_str::<KeyLine>(text.trim())
        .map_err(|e| KuboError::BadResponse {
            endpoint: "block/put",
            reason: format!("{e} in {text:?}"),
        })?
        .key;
    key.parse().map_err(|e| KuboError::BadResponse {
        endpoint: "block/put",
        reason: format!("bad CID {key:?}: {e}"),
    })
}

#[cfg(test)]
mod tests;
