//! Pins, repo statistics and garbage collection, DAG (CAR) export/import and typed block puts.

use cid::Cid;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{KuboClient, KuboError, MAX_LINE_BYTES, MAX_REPLY_BYTES, multipart};
use crate::hash::{BLAKE3, DAG_CBOR, DAG_PB, RAW, SHA2_256};

/// What `repo/stat` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoStat {
    /// Bytes used by the repo.
    pub repo_size: u64,
    /// Blocks stored.
    pub num_objects: u64,
}

#[derive(Deserialize)]
struct RepoStatLine {
    #[serde(rename = "RepoSize")]
    repo_size: u64,
    #[serde(rename = "NumObjects", default)]
    num_objects: u64,
}

#[derive(Deserialize)]
struct PinLsReply {
    #[serde(rename = "Keys", default)]
    keys: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct PinAddLine {
    #[serde(rename = "Pins")]
    pins: Option<Vec<String>>,
    #[serde(rename = "Progress")]
    progress: Option<u64>,
}

#[derive(Deserialize)]
struct Link {
    #[serde(rename = "/")]
    cid: String,
}

#[derive(Deserialize)]
struct GcLine {
    #[serde(rename = "Key")]
    key: Option<Link>,
    #[serde(rename = "Error", default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ImportRoot {
    #[serde(rename = "Cid")]
    cid: Link,
    #[serde(rename = "PinErrorMsg", default)]
    pin_error: String,
}

#[derive(Deserialize)]
struct ImportStats {
    #[serde(rename = "BlockCount")]
    blocks: u64,
}

#[derive(Deserialize)]
struct ImportLine {
    #[serde(rename = "Root")]
    root: Option<ImportRoot>,
    #[serde(rename = "Stats")]
    stats: Option<ImportStats>,
}

fn bad(endpoint: &'static str, reason: impl std::fmt::Display) -> KuboError {
    KuboError::BadResponse {
        endpoint,
        reason: reason.to_string(),
    }
}

fn parse_cid(endpoint: &'static str, s: &str) -> Result<Cid, KuboError> {
    s.parse()
        .map_err(|e| bad(endpoint, format!("bad CID {s:?}: {e}")))
}

/// Takes the next complete non-blank line of a newline-delimited JSON stream, if one arrived.
fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            return Some(line);
        }
    }
    None
}

/// Errors when the unfinished line in `buf` is already over [`MAX_LINE_BYTES`].
fn check_line(buf: &[u8], endpoint: &'static str) -> Result<(), KuboError> {
    if buf.len() > MAX_LINE_BYTES {
        return Err(bad(
            endpoint,
            format!("a reply line is over {MAX_LINE_BYTES} bytes"),
        ));
    }
    Ok(())
}

impl KuboClient {
    /// Pins `cid` recursively, fetching it if needed. With an idle timeout set, fails once the
    /// daemon's progress counter stops moving for that long (Kubo keeps searching otherwise).
    pub async fn pin_add(&self, cid: &Cid) -> Result<u64, KuboError> {
        let query = [("arg", cid.to_string()), ("progress", "true".to_owned())];
        let resp = self
            .within("pin/add", cid, self.call("pin/add", &query, None, None))
            .await?;
        let mut stream = resp.bytes_stream();
        let (mut buf, mut progress) = (Vec::new(), 0u64);
        loop {
            // Kubo emits a progress line every 500 ms even when stuck, so an idle timeout
            // applies to the counter, not to the arrival of bytes.
            let advance = async {
                loop {
                    while let Some(line) = take_line(&mut buf) {
                        let line: PinAddLine = serde_json::from_slice(&line)
                            .map_err(|e| bad("pin/add", format!("{e}")))?;
                        if line.pins.is_some() {
                            return Ok(Some(None));
                        }
                        if let Some(p) = line.progress.filter(|p| *p > progress) {
                            return Ok(Some(Some(p)));
                        }
                    }
                    check_line(&buf, "pin/add")?;
                    let Some(chunk) = stream.next().await else {
                        return Ok(None);
                    };
                    buf.extend_from_slice(&chunk.map_err(|e| self.transport(e))?);
                }
            };
            match self.within("pin/add", cid, advance).await? {
                Some(Some(p)) => progress = p,
                Some(None) => return Ok(progress),
                None => return Err(bad("pin/add", "stream ended without the Pins line")),
            }
        }
    }

    /// Removes the recursive pin on `cid`.
    pub async fn pin_rm(&self, cid: &Cid) -> Result<(), KuboError> {
        self.call("pin/rm", &[("arg", cid.to_string())], None, None)
            .await?;
        Ok(())
    }

    /// Recursively pinned roots.
    pub async fn pin_ls(&self) -> Result<Vec<Cid>, KuboError> {
        let query = [("type", "recursive".to_owned())];
        let resp = self.call("pin/ls", &query, None, None).await?;
        let text = self.text(resp, "pin/ls", MAX_REPLY_BYTES).await?;
        let reply: PinLsReply =
            serde_json::from_str(&text).map_err(|e| bad("pin/ls", format!("{e} in {text:?}")))?;
        reply.keys.keys().map(|k| parse_cid("pin/ls", k)).collect()
    }

    /// Repo size and block count.
    pub async fn repo_stat(&self) -> Result<RepoStat, KuboError> {
        let resp = self.call("repo/stat", &[], None, None).await?;
        let text = self.text(resp, "repo/stat", MAX_REPLY_BYTES).await?;
        let line: RepoStatLine = serde_json::from_str(text.trim())
            .map_err(|e| bad("repo/stat", format!("{e} in {text:?}")))?;
        Ok(RepoStat {
            repo_size: line.repo_size,
            num_objects: line.num_objects,
        })
    }

    /// Runs the daemon's garbage collector; returns the number of blocks removed.
    pub async fn repo_gc(&self) -> Result<u64, KuboError> {
        let resp = self.call("repo/gc", &[], None, None).await?;
        let mut removed = 0;
        self.each_line(resp, "repo/gc", |line| {
            let line: GcLine =
                serde_json::from_slice(line).map_err(|e| bad("repo/gc", format!("{e}")))?;
            if let Some(message) = line.error.filter(|e| !e.is_empty()) {
                return Err(KuboError::Daemon {
                    status: 200,
                    message,
                });
            }
            removed += u64::from(line.key.is_some());
            Ok(())
        })
        .await?;
        Ok(removed)
    }

    /// Streams the DAG under `cid` as a CAR v1 file into `writer`; returns bytes written.
    pub async fn dag_export_to<W: AsyncWrite + Unpin>(
        &self,
        cid: &Cid,
        writer: W,
    ) -> Result<u64, KuboError> {
        self.stream_to("dag/export", cid, writer, |_| {}).await
    }

    /// Imports a CAR stream and pins its roots; returns the roots and the blocks imported.
    pub async fn dag_import<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        reader: R,
    ) -> Result<(Vec<Cid>, u64), KuboError> {
        let (boundary, body) = multipart::file_body(reader);
        let query = [
            ("pin-roots", "true".to_owned()),
            ("stats", "true".to_owned()),
        ];
        let resp = self
            .call("dag/import", &query, Some(body), Some(&boundary))
            .await?;
        let (mut roots, mut blocks) = (Vec::new(), 0);
        self.each_line(resp, "dag/import", |line| {
            let line: ImportLine =
                serde_json::from_slice(line).map_err(|e| bad("dag/import", format!("{e}")))?;
            if let Some(root) = line.root {
                if !root.pin_error.is_empty() {
                    return Err(KuboError::Daemon {
                        status: 200,
                        message: format!("pinning root {}: {}", root.cid.cid, root.pin_error),
                    });
                }
                roots.push(parse_cid("dag/import", &root.cid.cid)?);
            }
            if let Some(stats) = line.stats {
                blocks = stats.blocks;
            }
            Ok(())
        })
        .await?;
        Ok((roots, blocks))
    }

    /// Feeds each non-blank line of a newline-delimited JSON reply to `f` as it arrives, with
    /// lines capped at [`MAX_LINE_BYTES`] (replies with a line per block can be long).
    async fn each_line(
        &self,
        resp: reqwest::Response,
        endpoint: &'static str,
        mut f: impl FnMut(&[u8]) -> Result<(), KuboError>,
    ) -> Result<(), KuboError> {
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        loop {
            while let Some(line) = take_line(&mut buf) {
                f(&line)?;
            }
            check_line(&buf, endpoint)?;
            match stream.next().await {
                Some(chunk) => buf.extend_from_slice(&chunk.map_err(|e| self.transport(e))?),
                None => break,
            }
        }
        if buf.iter().any(|b| !b.is_ascii_whitespace()) {
            f(&buf)?;
        }
        Ok(())
    }

    /// Stores `data` as the block `cid` (its codec and hash function), optionally pinned, and
    /// checks the daemon computed the same multihash.
    pub async fn block_put_cid(
        &self,
        cid: &Cid,
        data: Vec<u8>,
        pin: bool,
    ) -> Result<(), KuboError> {
        let codec = match cid.codec() {
            RAW => "raw",
            DAG_PB => "dag-pb",
            DAG_CBOR => "dag-cbor",
            other => return Err(bad("block/put", format!("codec {other:#x} not supported"))),
        };
        let mhtype = match cid.hash().code() {
            SHA2_256 => "sha2-256",
            BLAKE3 => "blake3",
            other => {
                return Err(bad(
                    "block/put",
                    format!("multihash {other:#x} not supported"),
                ));
            }
        };
        let (boundary, body) = multipart::file_body(std::io::Cursor::new(data));
        let query = [
            ("cid-codec", codec.to_owned()),
            ("mhtype", mhtype.to_owned()),
            ("pin", pin.to_string()),
        ];
        let resp = self
            .call("block/put", &query, Some(body), Some(&boundary))
            .await?;
        let got = super::parse_key(resp.text().await.map_err(|e| self.transport(e))?)?;
        if got.hash() != cid.hash() || got.codec() != cid.codec() {
            return Err(bad("block/put", format!("stored as {got}, expected {cid}")));
        }
        Ok(())
    }
}
