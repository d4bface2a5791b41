//! Control API routes of fleet deployments (`agora deploy …`, issue #15).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use agora_fleet::{FleetHandle, FleetStats, FleetTaskError};
use agora_fleet_core::upgrade::MAX_WAVE;
use agora_fleet_core::{
    DeploymentSpec, DeploymentView, FleetError, MAX_VARIANTS, Replicas, Selector, Strategy,
    UpgradeConfig, UpgradeTo, Variant,
};
use agora_market::{DeploymentId, Resources};

use super::{ApiError, ApiState, authorize};

/// `POST /v1/fleet/deployments` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateDeploymentRequest {
    /// Name (1..=64 of `a-z 0-9 - _ .`); the same name again re-targets that deployment.
    pub name: String,
    /// Image CID (from `agora service publish`); empty when `variants` are given.
    #[serde(default)]
    pub image: String,
    /// Variants, `NAME=CID[:SELECTOR]` each (at most 8); each target runs one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<String>,
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
    /// This node's deployments (names) that must be healthy before this one is placed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// `POST /v1/fleet/deployments/{id}/upgrade` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The new image CID (from `agora service publish`; this node must hold it), for a
    /// deployment without variants; empty with `variants`.
    #[serde(default)]
    pub image: String,
    /// For a deployment with variants: the new image of each variant that changes, by name
    /// (the others keep theirs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, String>,
    /// Most targets mid-upgrade at once (1..=1024).
    pub max_unavailable: u32,
    /// How long a new instance has to report healthy, ms.
    pub health_timeout_ms: u64,
    /// The failure budget (`--max-failed`, 1 by default as on the command line): targets whose
    /// new instance may fail without rolling every target back.
    #[serde(default = "default_max_failed")]
    pub max_failed: u32,
}

/// A request that gives no budget gets the machine's default, so that a script posting the
/// body does not bring back the one-target veto (THREATS D1).
fn default_max_failed() -> u32 {
    UpgradeConfig::default().max_failed
}

/// Longest `--health-timeout` accepted (a day).
pub const MAX_HEALTH_TIMEOUT_MS: u64 = 86_400_000;

/// The machine's configuration for an upgrade request, or why it is refused.
pub fn upgrade_config(req: &UpgradeRequest) -> Result<UpgradeConfig, ApiError> {
    if req.max_unavailable == 0 || req.max_unavailable > MAX_WAVE {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("--max-unavailable must be 1 to {MAX_WAVE}"),
        ));
    }
    if req.health_timeout_ms == 0 || req.health_timeout_ms > MAX_HEALTH_TIMEOUT_MS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "--health-timeout must be positive and at most 24h".into(),
        ));
    }
    if req.max_failed > MAX_WAVE {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("--max-failed must be 0 to {MAX_WAVE}"),
        ));
    }
    Ok(UpgradeConfig {
        max_unavailable: req.max_unavailable,
        health_timeout_ms: req.health_timeout_ms,
        max_failed: req.max_failed,
    })
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
            | FleetError::UpgradeUnderWay { .. }
            | FleetError::NotUpgradable { .. }
            | FleetError::TooManyOwn { .. }
            | FleetError::VariantsChanged { .. }
            | FleetError::StoreFull { .. }
            | FleetError::NeededBy { .. }
            | FleetError::AfterCycle { .. },
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
    let bad = |text: &str, hint| FleetError::BadVariant {
        text: text.chars().take(80).collect(),
        hint,
    };
    if req.variants.len() > MAX_VARIANTS {
        return Err(bad("--variant", "at most 8 variants"));
    }
    let variants = req
        .variants
        .iter()
        .map(|v| Variant::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    let image = match variants.first() {
        Some(_) if !req.image.is_empty() => {
            return Err(bad(
                &req.image,
                "give the image or --variant NAME=CID[:SELECTOR], not both",
            ));
        }
        Some(first) => first.image.clone(),
        None => req.image,
    };
    agora_fleet_core::variant::check_variants(&variants, &image)
        .map_err(|hint| bad("--variant", hint))?;
    Ok(DeploymentSpec {
        name: req.name,
        image,
        selector,
        variants,
        needs: req.needs,
        replicas: req.replicas.map_or(Replicas::All, Replicas::Count),
        strategy,
        max_price_per_replica: req.max_price,
        duration_ms: req.duration_ms,
        // The node fills in its `[fleet] valid_for_ms`.
        valid_for_ms: 0,
        after: req.after,
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

async fn upgrade(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<UpgradeRequest>,
) -> Result<Json<DeploymentView>, ApiError> {
    authorize(&s, &headers)?;
    let id = parse_id(&id)?;
    let config = upgrade_config(&req)?;
    if req.variants.len() > MAX_VARIANTS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("a deployment has at most {MAX_VARIANTS} variants"),
        ));
    }
    let to = match (req.image.is_empty(), req.variants.is_empty()) {
        (false, true) => UpgradeTo::Image(req.image),
        (true, false) => UpgradeTo::Variants(req.variants),
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give either --image (a deployment without variants) or --variant NAME=CID \
                 (one per variant that changes), not both"
                    .into(),
            ));
        }
    };
    Ok(Json(
        fleet(&s)?.upgrade(id, to, config).await.map_err(refused)?,
    ))
}

/// The fleet routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/fleet/deployments", post(create).get(list))
        .route("/v1/fleet/deployments/{id}", get(status))
        .route("/v1/fleet/deployments/{id}/delete", post(delete))
        .route("/v1/fleet/deployments/{id}/upgrade", post(upgrade))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(to: &str, strategy: &str) -> CreateDeploymentRequest {
        CreateDeploymentRequest {
            name: "gw".into(),
            image: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(),
            variants: Vec::new(),
            to: to.into(),
            replicas: None,
            strategy: strategy.into(),
            needs: Resources::default(),
            max_price: 100,
            duration_ms: 60_000,
            after: Vec::new(),
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

    #[test]
    fn an_upgrade_request_is_bounded_and_busy_deployments_conflict() {
        let req = |k, t| UpgradeRequest {
            image: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(),
            variants: BTreeMap::new(),
            max_unavailable: k,
            health_timeout_ms: t,
            max_failed: 0,
        };
        let ok = upgrade_config(&req(2, 60_000)).unwrap();
        assert_eq!((ok.max_unavailable, ok.health_timeout_ms), (2, 60_000));
        let budget = upgrade_config(&UpgradeRequest {
            max_failed: 3,
            ..req(1, 60_000)
        })
        .unwrap();
        assert_eq!(budget.max_failed, 3);
        let e = upgrade_config(&UpgradeRequest {
            max_failed: MAX_WAVE + 1,
            ..req(1, 60_000)
        })
        .unwrap_err();
        assert!(e.1.contains("--max-failed"), "{}", e.1);
        let body = r#"{"image": "bafy", "max_unavailable": 1, "health_timeout_ms": 60000}"#;
        let without: UpgradeRequest = serde_json::from_str(body).unwrap();
        assert_eq!(
            without.max_failed, 1,
            "the default budget, as on the command line"
        );
        for (k, t) in [(0, 60_000), (MAX_WAVE + 1, 60_000), (1, 0), (1, u64::MAX)] {
            let e = upgrade_config(&req(k, t)).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST);
            assert!(e.1.contains("--"), "{}", e.1);
        }
        let busy = refused(FleetTaskError::Fleet(FleetError::UpgradeUnderWay {
            deployment: DeploymentId([7; 32]),
        }));
        assert_eq!(busy.0, StatusCode::CONFLICT);
        assert!(busy.1.contains("deploy status"), "{}", busy.1);
    }

    #[test]
    fn variants_are_parsed_bounded_and_exclusive_with_the_image() {
        let with = |image: &str, variants: &[&str]| CreateDeploymentRequest {
            image: image.into(),
            variants: variants.iter().map(|v| v.to_string()).collect(),
            ..req("site=factory", "push")
        };
        let spec = spec_of(with("", &["a=bafkreia", "b=bafkreib:iface=ble"])).unwrap();
        assert_eq!(spec.image, "bafkreia", "the first variant's image");
        assert_eq!(spec.variants.len(), 2);
        assert_eq!(spec.variants[1].selector.to_string(), "iface=ble");
        let both = spec_of(with("bafkreia", &["a=bafkreia"])).unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let nine: Vec<String> = (0..9).map(|i| format!("v{i}=bafkrei{i}")).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(
            spec_of(with("", &nine))
                .unwrap_err()
                .to_string()
                .contains("at most 8")
        );
        let dup = spec_of(with("", &["a=bafkreia", "a=bafkreib"])).unwrap_err();
        assert!(dup.to_string().contains("unique"), "{dup}");
        let bad = spec_of(with("", &["a=bafkreia:iface=radio"])).unwrap_err();
        assert_eq!(refused(bad.into()).0, StatusCode::BAD_REQUEST);
        let changed = refused(FleetTaskError::Fleet(FleetError::VariantsChanged {
            deployment: DeploymentId([7; 32]),
        }));
        assert_eq!(changed.0, StatusCode::CONFLICT);
        assert!(changed.1.contains("agora deploy delete"), "{}", changed.1);
    }

    #[test]
    fn a_target_s_restarts_are_in_the_json_and_default_to_zero_from_older_nodes() {
        let t = agora_fleet_core::TargetView {
            node: agora_market::NodeId([7; 32]),
            phase: "healthy".into(),
            reason: None,
            variant: None,
            restarts: 3,
            last_failure: None,
        };
        let mut json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["restarts"], 3);
        json.as_object_mut().unwrap().remove("restarts");
        let older: agora_fleet_core::TargetView = serde_json::from_value(json).unwrap();
        assert_eq!(older.restarts, 0);
    }
}
