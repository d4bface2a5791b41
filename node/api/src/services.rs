//! Control API routes of the service host. The module and manifest files named in a publish
//! request are read by the node: the API is loopback-only and the CLI sends absolute paths.

use std::path::PathBuf;

use agora_runtime::{Health, LimitsSide, RuntimeError, StopReason};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, authorize};
use agora_exchange::{ExchangeError, parse_cid};
use agora_hosting::{
    ImageInfo, ServiceError, ServiceHost, ServiceInfo, ServiceManifest, StagedInfo,
};

/// `POST /v1/services/publish`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Absolute path of the module (`.wasm`, or `.wat` text).
    pub module: PathBuf,
    /// Absolute path of the manifest (`svc.toml`); without it, the defaults of
    /// `ServiceManifest::for_module` (a wasm service named after the module's file).
    #[serde(default)]
    pub manifest: Option<PathBuf>,
}

/// `POST /v1/services/stage`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageRequest {
    /// The image CID.
    pub image: String,
    /// Service id (default: `svc-` and the last 10 characters of the image CID).
    pub id: Option<String>,
}

/// `POST /v1/services/{id}/readings`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadingsRequest {
    /// Readings, hex-encoded, queued in order.
    pub readings: Vec<String>,
}

/// Reply of `readings`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadingsReply {
    /// The service id.
    pub id: String,
    /// Readings queued.
    pub queued: usize,
}

/// Reply of `stop`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopReply {
    /// The service id.
    pub id: String,
    /// Why it stopped.
    pub reason: StopReason,
    /// Every service this request stopped, in order: the running services that depend on
    /// `id` first, `id` last.
    #[serde(default)]
    pub stopped: Vec<StoppedService>,
}

/// One service a `stop` stopped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoppedService {
    /// The service id.
    pub id: String,
    /// Why it stopped.
    pub reason: StopReason,
}

/// Reply of `logs`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogsReply {
    /// The service id.
    pub id: String,
    /// The kept log tail.
    pub logs: String,
}

/// Reply of `GET /v1/services/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShowReply {
    /// State, image and metering.
    pub service: ServiceInfo,
    /// Health check.
    pub health: Health,
    /// `start` only: the services this request started, in order (dependencies that were not
    /// running first, this service last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started: Vec<String>,
}

fn services(s: &ApiState) -> Result<&ServiceHost, ApiError> {
    s.services.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service host is not running on this node".into(),
        )
    })
}

/// The runtime's limit refusals as full sentences that say what to change.
fn limits_message(e: &ServiceError) -> Option<String> {
    match e {
        ServiceError::Runtime(RuntimeError::BadLimits { service, source }) => {
            let fix = match source.side {
                LimitsSide::Requested => {
                    "Fix the [limits] section of the service's manifest and publish it again."
                }
                LimitsSide::Ceiling => {
                    "The contract did not buy enough for any service to run; buy the service \
                     with more memory (--memory) or CPU (--cpu)."
                }
            };
            Some(format!(
                "Service {service} cannot run: its {} limit `{}` = {} is unusable ({}). {fix}",
                source.side, source.field, source.value, source.reason
            ))
        }
        ServiceError::Runtime(RuntimeError::OverHostMemory {
            service,
            asked,
            max,
        }) => Some(format!(
            "Service {service} asks for {asked} bytes of memory, but this node allows at \
                 most {max} bytes per service. Lower limits.memory_bytes in its manifest, or \
                 raise [services] max_memory_mb in this node's config.toml."
        )),
        _ => None,
    }
}

fn bad(e: ServiceError) -> ApiError {
    if let Some(message) = limits_message(&e) {
        return ApiError(StatusCode::BAD_REQUEST, message);
    }
    let code = match &e {
        ServiceError::Unknown(_) | ServiceError::Runtime(RuntimeError::UnknownService(_)) => {
            StatusCode::NOT_FOUND
        }
        ServiceError::Manifest(_)
        | ServiceError::Image(_)
        | ServiceError::BadId(_)
        | ServiceError::OverHostLimit { .. }
        | ServiceError::Io { .. }
        | ServiceError::Runtime(
            RuntimeError::Compile { .. }
            | RuntimeError::MissingExport { .. }
            | RuntimeError::ModuleHashMismatch { .. }
            | RuntimeError::UnsupportedHash { .. }
            | RuntimeError::BadReading { .. },
        ) => StatusCode::BAD_REQUEST,
        ServiceError::AlreadyStaged(_)
        | ServiceError::ContractEnded { .. }
        | ServiceError::Order(_)
        | ServiceError::AmbiguousDependency { .. }
        | ServiceError::DependencyFailed { .. }
        | ServiceError::DependencyNotReady { .. }
        | ServiceError::Runtime(
            RuntimeError::WrongState { .. }
            | RuntimeError::InstanceLimit { .. }
            | RuntimeError::DuplicateService(_),
        ) => StatusCode::CONFLICT,
        ServiceError::Storage(s) if matches!(**s, ExchangeError::Fetch(_)) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        ServiceError::Container(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(code, e.to_string())
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("cannot read {}: {e}; check the path", path.display()),
        )
    })
}

async fn publish(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<PublishRequest>,
) -> Result<Json<ImageInfo>, ApiError> {
    authorize(&s, &headers)?;
    let host = services(&s)?;
    let manifest = match &req.manifest {
        Some(path) => {
            let text = String::from_utf8(read(path)?).map_err(|_| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("{} is not UTF-8 TOML", path.display()),
                )
            })?;
            ServiceManifest::from_toml(&text)
        }
        None => ServiceManifest::for_module(&req.module),
    }
    .map_err(|e| bad(e.into()))?;
    let module = read(&req.module)?;
    Ok(Json(host.publish(module, manifest).await.map_err(bad)?))
}

async fn stage(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<StageRequest>,
) -> Result<Json<StagedInfo>, ApiError> {
    authorize(&s, &headers)?;
    let cid = parse_cid(&req.image).map_err(|e| bad(e.into()))?;
    let id = req.id.unwrap_or_else(|| {
        let text = cid.to_string();
        let tail = &text[text.len().saturating_sub(10)..];
        format!("svc-{tail}")
    });
    Ok(Json(services(&s)?.stage(&id, cid).await.map_err(bad)?))
}

async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<ServiceInfo>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(services(&s)?.list()))
}

async fn show(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ShowReply>, ApiError> {
    authorize(&s, &headers)?;
    let host = services(&s)?;
    let health = host.health(&id).map_err(bad)?;
    let service = host
        .list()
        .into_iter()
        .find(|i| i.id == id)
        .ok_or_else(|| bad(ServiceError::Unknown(id.clone())))?;
    Ok(Json(ShowReply {
        service,
        health,
        started: Vec::new(),
    }))
}

async fn start(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ShowReply>, ApiError> {
    authorize(&s, &headers)?;
    let started = services(&s)?.start_in_order(&id).await.map_err(bad)?;
    let Json(mut reply) = show(State(s), headers, Path(id)).await?;
    reply.started = started;
    Ok(Json(reply))
}

async fn stop(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<StopReply>, ApiError> {
    authorize(&s, &headers)?;
    let stopped: Vec<StoppedService> = services(&s)?
        .stop_in_order(&id)
        .await
        .map_err(bad)?
        .into_iter()
        .map(|(id, reason)| StoppedService { id, reason })
        .collect();
    let reason = stopped
        .last()
        .map(|s| s.reason.clone())
        .ok_or_else(|| bad(ServiceError::Unknown(id.clone())))?;
    Ok(Json(StopReply {
        id,
        reason,
        stopped,
    }))
}

async fn remove(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    services(&s)?.remove(&id).await.map_err(bad)?;
    Ok(Json(serde_json::json!({ "removed": id })))
}

async fn logs(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<LogsReply>, ApiError> {
    authorize(&s, &headers)?;
    let logs = services(&s)?.logs(&id).await.map_err(bad)?;
    Ok(Json(LogsReply { id, logs }))
}

async fn readings(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<ReadingsRequest>,
) -> Result<Json<ReadingsReply>, ApiError> {
    authorize(&s, &headers)?;
    let host = services(&s)?;
    let mut decoded = Vec::with_capacity(req.readings.len());
    for r in &req.readings {
        decoded.push(hex::decode(r.trim()).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("reading `{r}` is not hex ({e}); pass bytes as hex, e.g. a70100…"),
            )
        })?);
    }
    let queued = decoded.len();
    for r in decoded {
        host.push_reading(&id, r).map_err(bad)?;
    }
    Ok(Json(ReadingsReply { id, queued }))
}

/// The service routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/services", get(list))
        .route("/v1/services/publish", post(publish))
        .route("/v1/services/stage", post(stage))
        .route("/v1/services/{id}", get(show))
        .route("/v1/services/{id}/start", post(start))
        .route("/v1/services/{id}/stop", post(stop))
        .route("/v1/services/{id}/remove", post(remove))
        .route("/v1/services/{id}/logs", get(logs))
        .route("/v1/services/{id}/readings", post(readings))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limit_refusals_are_400s_with_full_sentences() {
        let bad_limits = ServiceError::Runtime(RuntimeError::BadLimits {
            service: "gw1".into(),
            source: agora_runtime::LimitsError {
                side: LimitsSide::Requested,
                field: "fuel_per_second",
                value: 5,
                reason: "must be at least 10000 (a guest needs fuel to run at all)",
            },
        });
        let ApiError(code, msg) = bad(bad_limits);
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(msg.starts_with("Service gw1 cannot run"), "{msg}");
        assert!(msg.contains("`fuel_per_second` = 5"), "{msg}");
        assert!(msg.contains("publish it again."), "{msg}");

        let ceiling = ServiceError::Runtime(RuntimeError::BadLimits {
            service: "c1".into(),
            source: agora_runtime::LimitsError {
                side: LimitsSide::Ceiling,
                field: "memory_bytes",
                value: 0,
                reason: "must be at least 65536 (one wasm page)",
            },
        });
        let ApiError(code, msg) = bad(ceiling);
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(msg.contains("ceiling (contract)"), "{msg}");
        assert!(msg.contains("--memory"), "{msg}");

        let over = ServiceError::Runtime(RuntimeError::OverHostMemory {
            service: "gw1".into(),
            asked: 1 << 30,
            max: 128 << 20,
        });
        let ApiError(code, msg) = bad(over);
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(msg.contains("max_memory_mb"), "{msg}");
        assert!(msg.ends_with('.'), "{msg}");
    }
}
