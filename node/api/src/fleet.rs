//! Control API routes of fleet deployments (`agora deploy …`, issue #15).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use agora_fleet::{FleetHandle, FleetStats, FleetTaskError};
use agora_market::fleet::{
    DeploymentSpec, DeploymentView, FleetError, Replicas, Selector, Strategy,
};
use agora_market::{DeploymentId, Resources};

use super::{ApiError, ApiState, authorize};

/// `POST /v1/fleet/deployments` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateDeploymentRequest {
    /// Name (1..=64 of `a-z 0-9 - _ .`); the same name again re-targets that deployment.
    pub name: String,
    /// Image CID (from `agora service publish`).
    pub image: String,
    /// Selector text, e.g. `region=eu-west,site=factory`.
    pub to: String,
    /// Replica count; `None` for every matching provider (`--all`).
    pub replicas: Option<u32>,
    /// `push` or `pull`.
    pub strategy: String,
    /// One replica's needs.
    pub needs: Resources,
    /// Highest price of one replica's contract.
    pub max_price: u64,
    /// Contract duration per replica, ms.
    pub duration_ms: u64,
}

/// `GET /v1/fleet/deployments` reply.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeploymentList {
    /// This node's deployments.
    pub deployments: Vec<DeploymentView>,
    /// The fleet task's counters.
    pub stats: FleetStats,
}

fn fleet(s: &ApiState) -> Result<&FleetHandle, ApiError> {
    s.fleet.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs no fleet task".into(),
        )
    })
}

fn refused(e: FleetTaskError) -> ApiError {
    let code = match &e {
        FleetTaskError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        FleetTaskError::UnknownDeployment(_)
        | FleetTaskError::Fleet(FleetError::NotMine { .. }) => StatusCode::NOT_FOUND,
        FleetTaskError::Fleet(
            FleetError::UpgradeNotSupported { .. }
            | FleetError::TooManyOwn { .. }
            | FleetError::StoreFull { .. },
        ) => StatusCode::CONFLICT,
        FleetTaskError::Fleet(FleetError::Sign(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError(code, e.to_string())
}

fn parse_id(id: &str) -> Result<DeploymentId, ApiError> {
    id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("'{id}' is not a deployment id (64 hex characters; see `agora deploy list`)"),
        )
    })
}

/// Builds the spec a create request asks for (`valid_for_ms` is the node's `[fleet]` one).
pub fn spec_of(req: CreateDeploymentRequest) -> Result<DeploymentSpec, FleetError> {
    let selector = Selector::parse(&req.to)?;
    let strategy: Strategy = req.strategy.parse()?;
    Ok(DeploymentSpec {
        name: req.name,
        image: req.image,
        selector,
        needs: req.needs,
        replicas: req.replicas.map_or(Replicas::All, Replicas::Count),
        strategy,
        max_price_per_replica: req.max_price,
        duration_ms: req.duration_ms,
        // The node fills in its `[fleet] valid_for_ms`.
        valid_for_ms: 0,
    })
}

async fn create(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<CreateDeploymentRequest>,
) -> Result<Json<DeploymentView>, ApiError> {
    authorize(&s, &headers)?;
    let spec = spec_of(req).map_err(|e| refused(e.into()))?;
    Ok(Json(fleet(&s)?.create(spec).await.map_err(refused)?))
}

async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<DeploymentList>, ApiError> {
    authorize(&s, &headers)?;
    let (deployments, stats) = fleet(&s)?.list().await.map_err(refused)?;
    Ok(Json(DeploymentList { deployments, stats }))
}

async fn status(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    authorize(&s, &headers)?;
    let id = parse_id(&id)?;
    Ok(Json(fleet(&s)?.status(id).await.map_err(refused)?))
}

async fn delete(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    authorize(&s, &headers)?;
    let id = parse_id(&id)?;
    Ok(Json(fleet(&s)?.delete(id).await.map_err(refused)?))
}

/// The fleet routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/fleet/deployments", post(create).get(list))
        .route("/v1/fleet/deployments/{id}", get(status))
        .route("/v1/fleet/deployments/{id}/delete", post(delete))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(to: &str, strategy: &str) -> CreateDeploymentRequest {
        CreateDeploymentRequest {
            name: "gw".into(),
            image: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(),
            to: to.into(),
            replicas: None,
            strategy: strategy.into(),
            needs: Resources::default(),
            max_price: 100,
            duration_ms: 60_000,
        }
    }

    #[test]
    fn a_create_request_becomes_a_spec_and_bad_input_says_what_is_accepted() {
        let spec = spec_of(req("site=factory", "pull")).unwrap();
        assert_eq!(spec.replicas, Replicas::All);
        assert_eq!(spec.strategy, Strategy::Pull);
        assert_eq!(
            spec.selector.labels.get("site").map(String::as_str),
            Some("factory")
        );
        let bad = spec_of(req("Site=Fac tory", "push")).unwrap_err();
        assert!(matches!(bad, FleetError::BadSelector { .. }), "{bad}");
        assert_eq!(refused(bad.into()).0, StatusCode::BAD_REQUEST);
        let bad = spec_of(req("site=factory", "shove")).unwrap_err();
        assert!(bad.to_string().contains("--strategy push"), "{bad}");
        let unknown = refused(FleetTaskError::UnknownDeployment(DeploymentId([7; 32])));
        assert_eq!(unknown.0, StatusCode::NOT_FOUND);
        assert!(unknown.1.contains("agora deploy list"));
    }
}
