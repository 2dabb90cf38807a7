//! The routes: each request is checked with the state's validation rules, turned into a
//! [`Change`] and handed to the core's one door; [`CoreError`]s become status codes here.
//! A rejected request changes nothing and says what is wrong.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};

use super::types::{
    AbReq, Apply, BackendAdd, BackendDel, BackendSet, CanaryControlReq, CanaryGateReq, CanaryReq, ChangeReport,
    ErrorReply, Flows, FlowsQuery, RollbackReq, SplitReq, Status, SwitchReq, Trace, TraceQuery,
};
use crate::{
    agent::{Change, CoreError, Shared},
    config,
    deploy::{CanaryAction, CanaryPlan},
    state::{SplitBy, validate},
};

/// An error answer: status code and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn bad(m: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: m.into(),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        let status = match e {
            CoreError::Rejected(_) => StatusCode::BAD_REQUEST,
            CoreError::NotFound(_) => StatusCode::NOT_FOUND,
            CoreError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<validate::Invalid> for ApiError {
    fn from(e: validate::Invalid) -> ApiError {
        ApiError::bad(e.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorReply { error: self.message })).into_response()
    }
}

pub fn router(core: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/backend/set", post(backend_set))
        .route("/v1/backend/add", post(backend_add))
        .route("/v1/backend/del", post(backend_del))
        .route("/v1/apply", post(apply))
        .route("/v1/switch", post(switch))
        .route("/v1/split", post(split))
        .route("/v1/ab", post(ab))
        .route("/v1/rollback", post(rollback))
        .route("/v1/canary", post(canary))
        .route("/v1/canary/pause", post(canary_pause))
        .route("/v1/canary/resume", post(canary_resume))
        .route("/v1/canary/promote", post(canary_promote))
        .route("/v1/canary/gate", post(canary_gate))
        .route("/v1/flows/{vip}", get(flows))
        .route("/v1/trace/{vip}", get(trace))
        .route("/v1/table/{vip}", get(table))
        .layer(axum::middleware::from_fn(crate::metrics::track_api))
        .layer(axum::middleware::from_fn(super::audit::with_peer))
        .with_state(core)
}

type Reply = Result<Json<ChangeReport>, ApiError>;

async fn change(core: &Shared, change: Change, dry_run: bool) -> Reply {
    let mut core = core.lock().await;
    if dry_run {
        return Ok(Json(core.apply(change, true)?));
    }
    let audit = super::audit::Audit::begin(&core, &change);
    let result = core.apply(change, false);
    audit.end(&core, &result);
    Ok(Json(result?))
}

async fn status(State(core): State<Shared>) -> Json<Status> {
    // The connection-table scan runs without the lock API changes and health wait for.
    let scan = core.lock().await.live_scan();
    let live = scan.run_blocking().await;
    Json(core.lock().await.status_with(live))
}

fn address(s: &str) -> Result<SocketAddr, ApiError> {
    Ok(validate::service_address(s)?)
}

fn weight(w: i64) -> Result<u32, ApiError> {
    validate::weight(w).map_err(|e| ApiError::bad(format!("weight {e}")))
}

async fn backend_set(State(core): State<Shared>, Json(req): Json<BackendSet>) -> Reply {
    let c = Change::BackendSet {
        address: address(&req.address)?,
        weight: req.weight.map(weight).transpose()?,
        state: req.state,
        vip: req.vip,
    };
    change(&core, c, req.dry_run).await
}

async fn backend_add(State(core): State<Shared>, Json(req): Json<BackendAdd>) -> Reply {
    let c = Change::BackendAdd {
        address: address(&req.address)?,
        weight: weight(req.weight.unwrap_or(validate::DEFAULT_WEIGHT as i64))?,
        vip: req.vip,
        pool: req.pool,
    };
    change(&core, c, req.dry_run).await
}

async fn backend_del(State(core): State<Shared>, Json(req): Json<BackendDel>) -> Reply {
    let c = Change::BackendDel {
        address: address(&req.address)?,
        vip: req.vip,
    };
    change(&core, c, req.dry_run).await
}

async fn apply(State(core): State<Shared>, Json(req): Json<Apply>) -> Reply {
    let cfg = config::parse(&req.config, "apply").map_err(|e| ApiError::bad(e.to_string()))?;
    change(&core, Change::Config(Box::new(cfg)), req.dry_run).await
}

/// Blue/green: all new flows to `pool`; the old pool keeps its flows.
async fn switch(State(core): State<Shared>, Json(req): Json<SwitchReq>) -> Reply {
    let c = Change::Switch {
        vip: req.vip,
        pool: req.pool,
    };
    change(&core, c, req.dry_run).await
}

/// Canary / A-B share: `percent` of new flows to `pool`.
async fn split(State(core): State<Shared>, Json(req): Json<SplitReq>) -> Reply {
    let c = Change::Split {
        bp: validate::percent(req.percent)?,
        by: req.by.unwrap_or(SplitBy::Flow),
        vip: req.vip,
        pool: req.pool,
    };
    change(&core, c, req.dry_run).await
}

/// A/B: client networks that always reach `pool` (an empty list removes the rules).
async fn ab(State(core): State<Shared>, Json(req): Json<AbReq>) -> Reply {
    let networks = req
        .cidrs
        .iter()
        .map(|c| validate::cidr(c))
        .collect::<Result<Vec<_>, _>>()?;
    let c = Change::Ab {
        vip: req.vip,
        pool: req.pool,
        networks,
    };
    change(&core, c, req.dry_run).await
}

async fn rollback(State(core): State<Shared>, Json(req): Json<RollbackReq>) -> Reply {
    change(&core, Change::Rollback { vip: req.vip }, req.dry_run).await
}

/// Starts a stepped canary (the agent drives it; see `deploy`).
async fn canary(State(core): State<Shared>, Json(req): Json<CanaryReq>) -> Reply {
    validate::canary_steps(&req.steps)?;
    let interval = validate::duration(&req.interval).map_err(|e| ApiError::bad(format!("interval: {e}")))?;
    let c = Change::Canary {
        vip: req.vip,
        plan: CanaryPlan {
            pool: req.pool,
            steps: req.steps,
            interval,
            max_failing: req.max_failing,
            by: req.by.unwrap_or(SplitBy::Flow),
            gated: req.gated,
        },
    };
    change(&core, c, req.dry_run).await
}

async fn canary_action(core: &Shared, req: CanaryControlReq, action: CanaryAction) -> Reply {
    change(core, Change::CanaryControl { vip: req.vip, action }, req.dry_run).await
}

/// Holds the running canary's step (health checks still roll it back).
async fn canary_pause(State(core): State<Shared>, Json(req): Json<CanaryControlReq>) -> Reply {
    canary_action(&core, req, CanaryAction::Pause).await
}

/// Continues a paused canary with what was left of its step.
async fn canary_resume(State(core): State<Shared>, Json(req): Json<CanaryControlReq>) -> Reply {
    canary_action(&core, req, CanaryAction::Resume).await
}

/// Skips the remaining steps: the canary's pool becomes active.
async fn canary_promote(State(core): State<Shared>, Json(req): Json<CanaryControlReq>) -> Reply {
    canary_action(&core, req, CanaryAction::Promote).await
}

/// A gating client's verdict on a step.
async fn canary_gate(State(core): State<Shared>, Json(req): Json<CanaryGateReq>) -> Reply {
    let verdict = if req.passed {
        Ok(())
    } else {
        Err(req.reason.unwrap_or_else(|| "the gate failed".into()))
    };
    let c = Change::CanaryControl {
        vip: req.vip,
        action: CanaryAction::Gate {
            step: req.step,
            verdict,
        },
    };
    change(&core, c, false).await
}

async fn flows(
    State(core): State<Shared>,
    UrlPath(vip): UrlPath<String>,
    Query(q): Query<FlowsQuery>,
) -> Result<Json<Flows>, ApiError> {
    Ok(Json(core.lock().await.flows(&vip, q.limit.unwrap_or(100))?))
}

async fn table(
    State(core): State<Shared>,
    UrlPath(vip): UrlPath<String>,
) -> Result<Json<super::types::Table>, ApiError> {
    Ok(Json(core.lock().await.table(&vip)?))
}

async fn trace(
    State(core): State<Shared>,
    UrlPath(vip): UrlPath<String>,
    Query(q): Query<TraceQuery>,
) -> Result<Json<Trace>, ApiError> {
    let src = q
        .src
        .parse::<SocketAddr>()
        .map_err(|_| ApiError::bad(format!("{:?} is not IP:PORT or [IPv6]:PORT", q.src)))?;
    Ok(Json(core.lock().await.trace(&vip, src)?))
}
