//! Control API routes of the edge: the sensor radio, the devices it discovered, the node's own service and the
//! orchestrator's timeline.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, authorize};
use agora_orchestrator::{OrchestratorHandle, TimelineEntry};
use agora_radio::firmware::{FirmwareError, JobId, JobList, JobRequest, JobStarted, JobView};
use agora_radio::{DeviceList, RadioHandle, RadioStatus, RotateRefused, RotationStarted};

/// `POST /v1/own` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OwnRequest {
    /// Image CID (from `agora service publish`).
    pub image: String,
}

/// `POST /v1/own` answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnReply {
    /// Image CID.
    pub image: String,
    /// Sensors the service now manages.
    pub devices: Vec<u32>,
}

fn radio(s: &ApiState) -> Result<&RadioHandle, ApiError> {
    s.radio.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node has no radio: set radio.listen in config.toml (devnet nodes have one)"
                .into(),
        )
    })
}

fn orchestrator(s: &ApiState) -> Result<&OrchestratorHandle, ApiError> {
    s.orchestrator.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs no orchestrator: it needs a genesis file (join a devnet with \
             `agora node run --join DIR`)"
                .into(),
        )
    })
}

async fn radio_status(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<RadioStatus>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(radio(&s)?.status().await))
}

async fn devices(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<DeviceList>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(radio(&s)?.devices().await))
}

fn job_error(e: FirmwareError) -> ApiError {
    let code = match &e {
        FirmwareError::NoRadio => StatusCode::SERVICE_UNAVAILABLE,
        FirmwareError::TableFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        FirmwareError::Image { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError(code, e.to_string())
}

/// `POST /v1/devices/jobs`: loads the image from the blockstore (fetching it from peers if
/// needed) and starts a firmware job on the selected devices this edge manages.
async fn start_job(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<JobRequest>,
) -> Result<Json<JobStarted>, ApiError> {
    authorize(&s, &headers)?;
    let radio = radio(&s)?;
    let storage = s.storage.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node's storage is not running".into(),
        )
    })?;
    let image = agora_radio::firmware::load_image(storage, &req.firmware)
        .await
        .map_err(job_error)?;
    Ok(Json(radio.start_job(req, image).await.map_err(job_error)?))
}

async fn jobs(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<JobList>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(radio(&s)?.jobs().await))
}

async fn job(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<JobId>,
) -> Result<Json<JobView>, ApiError> {
    authorize(&s, &headers)?;
    radio(&s)?.job(id).await.map(Json).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no firmware job {id} on this edge (finished jobs are evicted once 16 are kept); see GET /v1/devices/jobs"
            ),
        )
    })
}

/// `POST /v1/devices/{id}/rotate`: rotates the working key of a device this node owns now
/// (`agora device rotate`).
async fn rotate(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(device): Path<u32>,
) -> Result<Json<RotationStarted>, ApiError> {
    authorize(&s, &headers)?;
    radio(&s)?.rotate(device).await.map(Json).map_err(|e| {
        let code = match e {
            RotateRefused::NotOwned { .. } => StatusCode::NOT_FOUND,
            RotateRefused::LastEpoch { .. } => StatusCode::CONFLICT,
            RotateRefused::NoRadio => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(code, e.to_string())
    })
}

async fn timeline(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<TimelineEntry>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(orchestrator(&s)?.timeline.entries()))
}

async fn set_own(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<OwnRequest>,
) -> Result<Json<OwnReply>, ApiError> {
    authorize(&s, &headers)?;
    let image = req.image.parse().map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{} is not a CID: {e}", req.image),
        )
    })?;
    let devices = orchestrator(&s)?
        .set_own(image)
        .await
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    Ok(Json(OwnReply {
        image: req.image,
        devices,
    }))
}

/// The routes of this module.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/radio", get(radio_status))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/jobs", get(jobs).post(start_job))
        .route("/v1/devices/jobs/{id}", get(job))
        .route("/v1/devices/{id}/rotate", post(rotate))
        .route("/v1/timeline", get(timeline))
        .route("/v1/own", post(set_own))
}
