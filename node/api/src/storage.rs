//! Control API routes of the node's storage (blocks, files, CAR) and data proofs. File paths in requests are
//! read/written by the node: the API is loopback-only and the CLI sends absolute paths.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, authorize};
use agora_exchange::{
    AddReply, ExchangeError, FetchProgress, JobStatus, LsReply, ProofCreated, ProofVerified,
    StorageHandle, parse_cid, read_readings,
};

/// `POST /v1/storage/add`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddRequest {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// 0 (Kubo default) or 1 (`--cid-version 1`: raw leaves).
    pub cid_version: u8,
}

/// `POST /v1/storage/get`: starts a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GetRequest {
    /// Root CID.
    pub cid: String,
    /// Absolute output path.
    pub out: PathBuf,
    /// Give up after this long without progress (default: the node's config).
    pub timeout_ms: Option<u64>,
}

/// A request naming one CID.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CidRequest {
    /// The CID.
    pub cid: String,
}

/// `POST /v1/storage/car/export`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CarExportRequest {
    /// Root CID.
    pub cid: String,
    /// Absolute output path.
    pub out: PathBuf,
}

/// A request naming one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PathRequest {
    /// Absolute path.
    pub path: PathBuf,
}

/// `POST /v1/proof/verify`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Data file (one reading per line).
    pub data: PathBuf,
    /// Proof block CID.
    pub proof: String,
    /// Check only this reading (0-based line index).
    pub reading: Option<u64>,
}

/// Reply of `/v1/storage/get`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobReply {
    /// Poll `/v1/storage/jobs/{job}`.
    pub job: u64,
}

/// Reply of pin/unpin/gc/import.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DoneReply {
    /// The CIDs concerned.
    pub cids: Vec<String>,
    /// Blocks involved (fetched, removed or imported).
    pub blocks: u64,
    /// Bytes involved.
    pub bytes: u64,
}

fn storage(s: &ApiState) -> Result<&StorageHandle, ApiError> {
    s.storage.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node's storage is not running".into(),
        )
    })
}

fn bad(e: ExchangeError) -> ApiError {
    let code = match &e {
        ExchangeError::Invalid(_) | ExchangeError::File { .. } | ExchangeError::Proof(_) => {
            StatusCode::BAD_REQUEST
        }
        ExchangeError::Store(agora_storage::StorageError::NotFound { .. }) => StatusCode::NOT_FOUND,
        ExchangeError::Fetch(_) | ExchangeError::Kubo(agora_storage::KuboError::Stalled { .. }) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        ExchangeError::Kubo(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(code, e.to_string())
}

async fn add(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<AddRequest>,
) -> Result<Json<AddReply>, ApiError> {
    authorize(&s, &headers)?;
    let version = match req.cid_version {
        0 => agora_storage::CidVersion::V0,
        1 => agora_storage::CidVersion::V1,
        v => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("--cid-version {v} is not supported; use 0 or 1"),
            ));
        }
    };
    Ok(Json(
        storage(&s)?
            .add_file(req.path, version)
            .await
            .map_err(bad)?,
    ))
}

async fn start_get(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<GetRequest>,
) -> Result<Json<JobReply>, ApiError> {
    authorize(&s, &headers)?;
    let st = storage(&s)?;
    let cid = parse_cid(&req.cid).map_err(bad)?;
    let mut cfg = st.fetch_config();
    if let Some(ms) = req.timeout_ms {
        cfg.idle_timeout = Duration::from_millis(ms.max(100));
    }
    Ok(Json(JobReply {
        job: st.start_get(cid, req.out, cfg),
    }))
}

async fn job(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<JobStatus>, ApiError> {
    authorize(&s, &headers)?;
    storage(&s)?
        .job(id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no get job {id}")))
}

async fn pin(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<CidRequest>,
) -> Result<Json<DoneReply>, ApiError> {
    authorize(&s, &headers)?;
    let cid = parse_cid(&req.cid).map_err(bad)?;
    let p: FetchProgress = storage(&s)?.pin(cid).await.map_err(bad)?;
    Ok(Json(DoneReply {
        cids: vec![cid.to_string()],
        blocks: p.blocks,
        bytes: p.bytes,
    }))
}

async fn unpin(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<CidRequest>,
) -> Result<Json<DoneReply>, ApiError> {
    authorize(&s, &headers)?;
    let cid = parse_cid(&req.cid).map_err(bad)?;
    storage(&s)?.unpin(cid).await.map_err(bad)?;
    Ok(Json(DoneReply {
        cids: vec![cid.to_string()],
        blocks: 0,
        bytes: 0,
    }))
}

async fn ls(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<LsReply>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(storage(&s)?.ls().await.map_err(bad)?))
}

async fn gc(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<DoneReply>, ApiError> {
    authorize(&s, &headers)?;
    let stats = storage(&s)?.gc().await.map_err(bad)?;
    Ok(Json(DoneReply {
        cids: Vec::new(),
        blocks: stats.removed_blocks as u64,
        bytes: stats.removed_bytes,
    }))
}

async fn stats(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(storage(&s)?.stats().await.map_err(bad)?))
}

async fn car_export(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<CarExportRequest>,
) -> Result<Json<DoneReply>, ApiError> {
    authorize(&s, &headers)?;
    let cid = parse_cid(&req.cid).map_err(bad)?;
    storage(&s)?.car_export(cid, req.out).await.map_err(bad)?;
    Ok(Json(DoneReply {
        cids: vec![cid.to_string()],
        blocks: 0,
        bytes: 0,
    }))
}

async fn car_import(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<PathRequest>,
) -> Result<Json<DoneReply>, ApiError> {
    authorize(&s, &headers)?;
    let import = storage(&s)?.car_import(req.path).await.map_err(bad)?;
    Ok(Json(DoneReply {
        cids: import.roots.iter().map(|c| c.to_string()).collect(),
        blocks: import.blocks,
        bytes: 0,
    }))
}

async fn proof_create(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<PathRequest>,
) -> Result<Json<ProofCreated>, ApiError> {
    authorize(&s, &headers)?;
    let readings = read_readings(&req.path).map_err(bad)?;
    Ok(Json(
        storage(&s)?.proof_create(readings).await.map_err(bad)?,
    ))
}

async fn proof_verify(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<VerifyRequest>,
) -> Result<Json<ProofVerified>, ApiError> {
    authorize(&s, &headers)?;
    let cid = parse_cid(&req.proof).map_err(bad)?;
    let readings = read_readings(&req.data).map_err(bad)?;
    Ok(Json(
        storage(&s)?
            .proof_verify(cid, readings, req.reading)
            .await
            .map_err(bad)?,
    ))
}

/// The storage and proof routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/storage/add", post(add))
        .route("/v1/storage/get", post(start_get))
        .route("/v1/storage/jobs/{id}", get(job))
        .route("/v1/storage/pin", post(pin))
        .route("/v1/storage/unpin", post(unpin))
        .route("/v1/storage/ls", get(ls))
        .route("/v1/storage/gc", post(gc))
        .route("/v1/storage/stats", get(stats))
        .route("/v1/storage/car/export", post(car_export))
        .route("/v1/storage/car/import", post(car_import))
        .route("/v1/proof/create", post(proof_create))
        .route("/v1/proof/verify", post(proof_verify))
}
