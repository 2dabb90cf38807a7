//! The agent's HTTP+JSON API on a Unix socket (mode 0600): the only way the CLI changes
//! the agent. Every change is validated completely before a map is written; a rejected
//! request changes nothing and says what is wrong.
//!
//! Endpoints (JSON bodies, stable; see docs/api.md):
//! `GET /v1/status`, `POST /v1/backend/set|add|del`, `POST /v1/apply`,
//! `GET /v1/flows/{vip}?limit=N`, `GET /v1/trace/{vip}?src=IP:PORT`.

use std::{collections::BTreeMap, net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use lb_common::{BACKEND_DOWN, BACKEND_DRAIN, BACKEND_READY, FlowKey, select::PoolChoice};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{net::UnixListener, sync::Mutex, task::JoinHandle};

use crate::{
    agent::Core,
    config::{self, BackendConfig, MAX_WEIGHT},
    state::{AbRules, AdminState, Desired, Split, SplitBy, addr_be, backend_key, family, moved_share, vip_key},
};

pub type Shared = Arc<Mutex<Core>>;

/// An error answer: status code and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad(m: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: m.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: m.into(),
        }
    }
    pub fn internal(m: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: m.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub async fn serve_unix(core: Shared, socket: &Path) -> std::io::Result<JoinHandle<()>> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    // Created 0600 (the agent runs with umask 077: no moment in which others may connect).
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let app = router(core);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(super::limits::Limited::new(listener, "api socket"), app).await {
            tracing::error!("API server: {e}");
        }
    }))
}

/// The optional TCP listener: the same API, every request must carry
/// `Authorization: Bearer <token>` (token read from a file at start).
pub async fn serve_tcp(core: Shared, addr: SocketAddr, token_file: &Path) -> std::io::Result<JoinHandle<()>> {
    let token = std::fs::read_to_string(token_file)?.trim().to_string();
    if token.len() < 16 {
        return Err(std::io::Error::other(format!(
            "{}: the API token must be at least 16 characters",
            token_file.display()
        )));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let expected = Arc::new(format!("Bearer {token}"));
    let app = router(core).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let expected = expected.clone();
            async move {
                let ok = req
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    == Some(expected.as_str());
                if ok {
                    next.run(req).await
                } else {
                    ApiError {
                        status: StatusCode::UNAUTHORIZED,
                        message: "missing or wrong bearer token".into(),
                    }
                    .into_response()
                }
            }
        },
    ));
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(super::limits::Limited::new(listener, "TCP API"), app).await {
            tracing::error!("TCP API server: {e}");
        }
    }))
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
        .route("/v1/flows/{vip}", get(flows))
        .route("/v1/trace/{vip}", get(trace))
        .with_state(core)
}

/// `live` comes from the connection table (see `Core::live_flows`), not the counters;
/// None (unknown) is written as null.
fn counters_json(c: &lb_common::Counters, live: Option<u64>) -> Value {
    json!({
        "packets": c.packets,
        "bytes": c.bytes,
        "new_flows": c.new_flows,
        "live_flows": live,
        "closed_flows": c.closed_flows,
        "answered_flows": c.answered_flows,
        "backend_resets": c.backend_resets,
        "reply_packets": c.reply_packets,
        "reply_bytes": c.reply_bytes,
    })
}

/// The status document: configuration and state, with every counter under "counters".
/// `live`: the connection table's live flows, scanned without the lock (see
/// [`crate::agent::LiveScan`]).
pub fn status_json(core: &Core, live: Option<crate::dataplane::LiveFlows>) -> Value {
    let mut vips = Vec::new();
    for v in &core.desired.config.vips {
        let vip_id = core.reconciler.ids.vips.get(&v.name).copied();
        let vip_counters = vip_id.and_then(|id| core.dp.vip_counters(id).ok()).unwrap_or_default();
        let mut pools = Vec::new();
        for p in &v.pools {
            let mut backends = Vec::new();
            for b in &p.backends {
                let id = core
                    .reconciler
                    .ids
                    .backends
                    .get(&backend_key(&v.name, b.address))
                    .copied();
                let state = id.and_then(|id| core.reconciler.backend(id)).map(|b| b.state);
                let counters = id.and_then(|id| core.dp.backend_counters(id).ok()).unwrap_or_default();
                let h = core.health.get(&backend_key(&v.name, b.address));
                let now = std::time::Instant::now();
                backends.push(json!({
                    "id": id,
                    "address": b.address.to_string(),
                    "weight": b.weight,
                    "admin": core.desired.admin(&v.name, b.address),
                    "health": match h { None => "unchecked", Some(h) if h.state.up => "up", Some(_) => "down" },
                    "check": h.map(|h| json!({
                        "last": h.state.last.as_ref().map(|r| r.reason.clone()),
                        "in_state_s": now.saturating_duration_since(h.state.since).as_secs_f64(),
                        "slowstart_pct": h.state.slowstart_pct(&h.cfg, now),
                    })),
                    "state": match state {
                        Some(BACKEND_READY) => "ready",
                        Some(BACKEND_DRAIN) => "drain",
                        Some(BACKEND_DOWN) => "down",
                        _ => "unset",
                    },
                    "counters": counters_json(&counters, live.as_ref().map(|l| id.map_or(0, |id| l.backend(id)))),
                }));
            }
            let deploy = core.desired.deploy.get(&v.name).cloned().unwrap_or_default();
            let next = deploy
                .split
                .as_ref()
                .map(|s| s.pool.clone())
                .or(deploy.ab.as_ref().map(|a| a.pool.clone()));
            // None when any backend's count is unknown.
            let pool_live: Option<u64> = backends.iter().map(|b| b["counters"]["live_flows"].as_u64()).sum();
            let role = if p.name == v.active {
                "active"
            } else if next.as_deref() == Some(p.name.as_str()) {
                "next"
            } else if pool_live != Some(0) {
                "draining"
            } else {
                "idle"
            };
            let fail_open = core
                .reconciler
                .fail_open
                .contains(&crate::state::pool_key(&v.name, &p.name));
            pools.push(json!({ "name": p.name, "active": p.name == v.active, "role": role, "all_down_fail_open": fail_open, "backends": backends, "counters": { "live_flows": pool_live } }));
        }
        vips.push(json!({
            "name": v.name,
            "address": v.address.to_string(),
            "protocol": v.protocol,
            "mode": v.mode,
            "scheduler": v.scheduler,
            "active": v.active,
            "split": core.desired.deploy.get(&v.name).and_then(|d| d.split.as_ref()).map(|s| json!({ "pool": s.pool, "percent": s.bp as f64 / 100.0, "by": s.by })),
            "ab": core.desired.deploy.get(&v.name).and_then(|d| d.ab.as_ref()).map(|a| json!({ "pool": a.pool, "cidrs": a.networks.iter().map(|(n, l)| format!("{n}/{l}")).collect::<Vec<_>>() })),
            "previous_active": core.desired.deploy.get(&v.name).and_then(|d| d.previous_active.clone()),
            "canary": core.desired.deploy.get(&v.name).and_then(|d| d.canary.as_ref()).map(|c| json!({
                "pool": c.pool, "steps": c.steps, "step": c.step, "percent": c.steps.get(c.step),
                "interval_ms": c.interval_ms, "max_failing": c.max_failing, "outcome": c.outcome,
            })),
            "pools": pools,
            "counters": counters_json(&vip_counters, live.as_ref().map(|l| vip_id.map_or(0, |id| l.vip(id)))),
        }));
    }
    let reasons: BTreeMap<&str, u64> = core
        .dp
        .reasons()
        .unwrap_or_default()
        .into_iter()
        .map(|(r, n)| (r.name(), n))
        .collect();
    json!({ "vips": vips, "counters": { "reasons": reasons } })
}

async fn status(State(core): State<Shared>) -> Json<Value> {
    // The scan of a large connection table must not hold the lock that API changes and
    // health updates wait for.
    let scan = core.lock().await.live_scan();
    let live = scan.run_blocking().await;
    Json(status_json(&*core.lock().await, live))
}

#[derive(Deserialize)]
pub struct BackendSet {
    pub vip: String,
    pub address: String,
    pub weight: Option<i64>,
    pub state: Option<AdminState>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Deserialize)]
pub struct BackendAdd {
    pub vip: String,
    pub pool: String,
    pub address: String,
    pub weight: Option<i64>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Deserialize)]
pub struct BackendDel {
    pub vip: String,
    pub address: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Deserialize)]
pub struct Apply {
    pub config: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Serialize)]
pub struct ChangeReport {
    applied: bool,
    pub changes: Vec<String>,
    /// Per VIP: percent of the new-flow hash space whose backend changes.
    moved_pct: BTreeMap<String, f64>,
}

fn parse_addr(s: &str) -> Result<SocketAddr, ApiError> {
    s.parse::<SocketAddr>()
        .map_err(|_| ApiError::bad(format!("{s:?} is not IP:PORT or [IPv6]:PORT")))
}

fn weight(w: i64) -> Result<u32, ApiError> {
    if !(0..=MAX_WEIGHT as i64).contains(&w) {
        return Err(ApiError::bad(format!("weight {w} is out of range (0..={MAX_WEIGHT})")));
    }
    Ok(w as u32)
}

fn find_backend<'a>(d: &'a mut Desired, vip: &str, addr: SocketAddr) -> Result<&'a mut BackendConfig, ApiError> {
    let v = d
        .config
        .vips
        .iter_mut()
        .find(|v| v.name == vip)
        .ok_or_else(|| ApiError::not_found(format!("unknown VIP {vip:?}")))?;
    v.pools
        .iter_mut()
        .flat_map(|p| p.backends.iter_mut())
        .find(|b| b.address == addr)
        .ok_or_else(|| ApiError::not_found(format!("VIP {vip:?} has no backend {addr}")))
}

/// Validates `next`, then (unless a dry run) applies it; reports what moves.
fn change(core: &mut Core, next: Desired, changes: Vec<String>, dry_run: bool) -> Result<Json<ChangeReport>, ApiError> {
    let mut rec = core.reconciler.clone();
    rec.reconcile(&next, core.snat_v4, core.snat_v6)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let mut moved_pct = BTreeMap::new();
    for v in &next.config.vips {
        let pct = moved_share(&core.reconciler, &rec, &v.name) * 100.0;
        moved_pct.insert(v.name.clone(), pct);
    }
    if !dry_run {
        core.set_desired(next)?;
        for c in &changes {
            tracing::info!(change = %c, "applied");
        }
    }
    Ok(Json(ChangeReport {
        applied: !dry_run,
        changes,
        moved_pct,
    }))
}

async fn backend_set(State(core): State<Shared>, Json(req): Json<BackendSet>) -> Result<Json<ChangeReport>, ApiError> {
    let addr = parse_addr(&req.address)?;
    let mut core = core.lock().await;
    let mut next = core.desired.clone();
    let mut changes = Vec::new();
    if let Some(w) = req.weight {
        let w = weight(w)?;
        let b = find_backend(&mut next, &req.vip, addr)?;
        changes.push(format!("{} {addr}: weight {} -> {w}", req.vip, b.weight));
        b.weight = w;
    }
    if let Some(s) = req.state {
        find_backend(&mut next, &req.vip, addr)?;
        changes.push(format!(
            "{} {addr}: state {:?} -> {s:?}",
            req.vip,
            next.admin(&req.vip, addr)
        ));
        let per_vip = next.admin.entry(req.vip.clone()).or_default();
        if s == AdminState::Ready {
            per_vip.remove(&addr);
        } else {
            per_vip.insert(addr, s);
        }
    }
    if changes.is_empty() {
        return Err(ApiError::bad("nothing to set: give a weight or a state"));
    }
    change(&mut core, next, changes, req.dry_run)
}

async fn backend_add(State(core): State<Shared>, Json(req): Json<BackendAdd>) -> Result<Json<ChangeReport>, ApiError> {
    let addr = parse_addr(&req.address)?;
    let w = weight(req.weight.unwrap_or(config::DEFAULT_WEIGHT as i64))?;
    let mut core = core.lock().await;
    let mut next = core.desired.clone();
    let v = next
        .config
        .vips
        .iter_mut()
        .find(|v| v.name == req.vip)
        .ok_or_else(|| ApiError::not_found(format!("unknown VIP {:?}", req.vip)))?;
    if addr.is_ipv4() != v.address.is_ipv4() {
        return Err(ApiError::bad(format!(
            "{addr} is not the VIP's address family ({})",
            v.address
        )));
    }
    if v.pools.iter().flat_map(|p| &p.backends).any(|b| b.address == addr) {
        return Err(ApiError::bad(format!("VIP {:?} already has backend {addr}", req.vip)));
    }
    let pool = v
        .pools
        .iter_mut()
        .find(|p| p.name == req.pool)
        .ok_or_else(|| ApiError::not_found(format!("VIP {:?} has no pool {:?}", req.vip, req.pool)))?;
    pool.backends.push(BackendConfig {
        address: addr,
        weight: w,
    });
    let changes = vec![format!("{} {}: add {addr} weight {w}", req.vip, req.pool)];
    change(&mut core, next, changes, req.dry_run)
}

async fn backend_del(State(core): State<Shared>, Json(req): Json<BackendDel>) -> Result<Json<ChangeReport>, ApiError> {
    let addr = parse_addr(&req.address)?;
    let mut core = core.lock().await;
    let mut next = core.desired.clone();
    find_backend(&mut next, &req.vip, addr)?;
    for v in next.config.vips.iter_mut().filter(|v| v.name == req.vip) {
        for p in &mut v.pools {
            p.backends.retain(|b| b.address != addr);
        }
    }
    if let Some(m) = next.admin.get_mut(&req.vip) {
        m.remove(&addr);
    }
    let changes = vec![format!("{}: remove {addr}", req.vip)];
    change(&mut core, next, changes, req.dry_run)
}

async fn apply(State(core): State<Shared>, Json(req): Json<Apply>) -> Result<Json<ChangeReport>, ApiError> {
    let cfg = config::parse(&req.config, "apply").map_err(|e| ApiError::bad(e.to_string()))?;
    let mut core = core.lock().await;
    apply_config(&mut core, cfg, req.dry_run)
}

/// A whole new configuration over the current state (`veer apply -f`, SIGHUP): runtime
/// changes (deployments, admin states) survive for what remains; validated as one step.
pub fn apply_config(core: &mut Core, cfg: config::Config, dry_run: bool) -> Result<Json<ChangeReport>, ApiError> {
    if cfg.agent != core.desired.config.agent {
        return Err(ApiError::bad(
            "[agent] settings cannot change at runtime: restart the agent with the new file",
        ));
    }
    let changes = diff(&core.desired, &cfg);
    let next = core.desired.with_config(cfg);
    change(core, next, changes, dry_run)
}

/// Human-readable differences between the current and a new configuration.
pub fn diff(old: &Desired, new: &config::Config) -> Vec<String> {
    let mut out = Vec::new();
    for v in &new.vips {
        match old.vip(&v.name) {
            None => out.push(format!("+ vip {} {}", v.name, v.address)),
            Some(o) => {
                if o.address != v.address || o.protocol != v.protocol || o.scheduler != v.scheduler {
                    out.push(format!("~ vip {}: address/protocol/scheduler", v.name));
                }
                if o.active != v.active {
                    out.push(format!("~ vip {}: active {} -> {}", v.name, o.active, v.active));
                }
                let old_b: BTreeMap<SocketAddr, (String, u32)> = o
                    .pools
                    .iter()
                    .flat_map(|p| p.backends.iter().map(|b| (b.address, (p.name.clone(), b.weight))))
                    .collect();
                let new_b: BTreeMap<SocketAddr, (String, u32)> = v
                    .pools
                    .iter()
                    .flat_map(|p| p.backends.iter().map(|b| (b.address, (p.name.clone(), b.weight))))
                    .collect();
                for (a, (pool, w)) in &new_b {
                    match old_b.get(a) {
                        None => out.push(format!("+ {} {pool} {a} weight {w}", v.name)),
                        Some((op, ow)) if op != pool || ow != w => {
                            out.push(format!("~ {} {a}: {op}/{ow} -> {pool}/{w}", v.name))
                        }
                        _ => {}
                    }
                }
                for a in old_b.keys().filter(|a| !new_b.contains_key(a)) {
                    out.push(format!("- {} {a}", v.name));
                }
            }
        }
    }
    for v in old
        .config
        .vips
        .iter()
        .filter(|o| !new.vips.iter().any(|v| v.name == o.name))
    {
        out.push(format!("- vip {} {}", v.name, v.address));
    }
    out
}

#[derive(Deserialize)]
struct FlowsQuery {
    limit: Option<usize>,
}

async fn flows(
    State(core): State<Shared>,
    UrlPath(vip): UrlPath<String>,
    Query(q): Query<FlowsQuery>,
) -> Result<Json<Value>, ApiError> {
    let core = core.lock().await;
    let id = *core
        .reconciler
        .ids
        .vips
        .get(&vip)
        .ok_or_else(|| ApiError::not_found(format!("unknown VIP {vip:?}")))?;
    let (entries, total) = core
        .dp
        .flows(id, q.limit.unwrap_or(100))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let by_id = backend_addresses(&core);
    let rows: Vec<Value> = entries
        .iter()
        .map(|(k, f)| {
            json!({
                "client": key_src(k).to_string(),
                "backend": by_id.get(&f.backend_id).copied().unwrap_or("?"),
                "nat_port": u16::from_be(f.snat_port_be),
                "closing": f.flags & lb_common::FLOW_F_CLOSED != 0,
            })
        })
        .collect();
    Ok(Json(json!({ "vip": vip, "total": total, "flows": rows })))
}

/// Backend id -> address, for answers that name backends.
fn backend_addresses(core: &Core) -> BTreeMap<u32, &str> {
    core.reconciler
        .ids
        .backends
        .iter()
        .map(|(k, id)| (*id, k.split('|').nth(1).unwrap_or("")))
        .collect()
}

fn key_src(k: &FlowKey) -> SocketAddr {
    let ip: std::net::IpAddr = if k.family == lb_common::FAMILY_V4 {
        std::net::Ipv4Addr::from(k.src_be[0].to_ne_bytes()).into()
    } else {
        let mut o = [0u8; 16];
        for (i, w) in k.src_be.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        std::net::Ipv6Addr::from(o).into()
    };
    SocketAddr::new(ip, u16::from_be(k.sport_be))
}

#[derive(Deserialize)]
struct TraceQuery {
    src: String,
}

async fn trace(
    State(core): State<Shared>,
    UrlPath(vip): UrlPath<String>,
    Query(q): Query<TraceQuery>,
) -> Result<Json<Value>, ApiError> {
    let src = parse_addr(&q.src)?;
    let core = core.lock().await;
    let v = core
        .desired
        .vip(&vip)
        .ok_or_else(|| ApiError::not_found(format!("unknown VIP {vip:?}")))?
        .clone();
    if src.is_ipv4() != v.address.is_ipv4() {
        return Err(ApiError::bad(format!("{src} is not the VIP's address family")));
    }
    let key = FlowKey {
        src_be: addr_be(src.ip()),
        dst_be: addr_be(v.address.ip()),
        sport_be: src.port().to_be(),
        dport_be: v.address.port().to_be(),
        proto: vip_key(&v).proto,
        family: family(src.ip()),
        _pad: [0; 2],
    };
    let by_id = backend_addresses(&core);
    if let Ok(Some(flow)) = core.dp.flow(&key) {
        return Ok(Json(json!({
            "vip": vip, "source": src.to_string(), "existing_flow": true,
            "backend": by_id.get(&flow.backend_id).copied(), "pool": Value::Null,
        })));
    }
    let chosen = core.reconciler.select(&vip, &key);
    let deploy = core.desired.deploy.get(&vip);
    let pool = match chosen.map(|c| c.pool) {
        Some(PoolChoice::Next) => deploy.and_then(|d| {
            d.split
                .as_ref()
                .map(|s| s.pool.clone())
                .or(d.ab.as_ref().map(|a| a.pool.clone()))
        }),
        _ => Some(v.active.clone()),
    };
    Ok(Json(json!({
        "vip": vip, "source": src.to_string(), "existing_flow": false,
        "pool": pool, "slot": chosen.map(|c| c.slot),
        "backend": chosen.and_then(|c| by_id.get(&c.backend_id).copied()),
    })))
}

#[derive(Deserialize)]
pub struct SwitchReq {
    pub vip: String,
    pub pool: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Deserialize)]
pub struct SplitReq {
    pub vip: String,
    pub pool: String,
    pub percent: f64,
    pub by: Option<SplitBy>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Deserialize)]
pub struct AbReq {
    pub vip: String,
    pub pool: String,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Deserialize)]
pub struct RollbackReq {
    pub vip: String,
    #[serde(default)]
    pub dry_run: bool,
}

fn vip_pools(d: &Desired, vip: &str, pool: &str) -> Result<String, ApiError> {
    let v = d
        .vip(vip)
        .ok_or_else(|| ApiError::not_found(format!("unknown VIP {vip:?}")))?;
    if !v.pools.iter().any(|p| p.name == pool) {
        return Err(ApiError::not_found(format!("VIP {vip:?} has no pool {pool:?}")));
    }
    Ok(v.active.clone())
}

/// Blue/green: all new flows to `pool` in one map write; the old pool keeps its flows.
async fn switch(State(core): State<Shared>, Json(req): Json<SwitchReq>) -> Result<Json<ChangeReport>, ApiError> {
    let mut core = core.lock().await;
    let mut next = core.desired.clone();
    let old = vip_pools(&next, &req.vip, &req.pool)?;
    if old == req.pool {
        return Err(ApiError::bad(format!(
            "{:?} is already the active pool of {:?}",
            req.pool, req.vip
        )));
    }
    for v in next.config.vips.iter_mut().filter(|v| v.name == req.vip) {
        v.active = req.pool.clone();
    }
    let d = next.deploy.entry(req.vip.clone()).or_default();
    d.previous_active = Some(old.clone());
    d.split = None;
    stop_canary(d, "superseded by a switch");
    if d.ab.as_ref().is_some_and(|a| a.pool == req.pool) {
        d.ab = None;
    }
    let changes = vec![format!(
        "{}: active {old} -> {} (new flows); {old} drains",
        req.vip, req.pool
    )];
    change(&mut core, next, changes, req.dry_run)
}

/// Canary / A-B share: `percent` of new flows to `pool`.
async fn split(State(core): State<Shared>, Json(req): Json<SplitReq>) -> Result<Json<ChangeReport>, ApiError> {
    if !(0.0..=100.0).contains(&req.percent) || !req.percent.is_finite() {
        return Err(ApiError::bad(format!(
            "percent {} is out of range (0..=100)",
            req.percent
        )));
    }
    let bp = (req.percent * 100.0).round() as u32;
    let mut core = core.lock().await;
    let mut next = core.desired.clone();
    let active = vip_pools(&next, &req.vip, &req.pool)?;
    if active == req.pool {
        return Err(ApiError::bad(format!(
            "{:?} is the active pool: split towards another pool",
            req.pool
        )));
    }
    let by = req.by.unwrap_or(SplitBy::Flow);
    let d = next.deploy.entry(req.vip.clone()).or_default();
    stop_canary(d, "superseded by a manual split");
    d.split = (bp > 0).then(|| Split {
        pool: req.pool.clone(),
        bp,
        by,
    });
    let changes = vec![format!(
        "{}: {:.2}% of new flows (by {by:?}) to {}",
        req.vip,
        bp as f64 / 100.0,
        req.pool
    )];
    change(&mut core, next, changes, req.dry_run)
}

/// A/B: client networks that always reach `pool` (an empty list removes the rules).
async fn ab(State(core): State<Shared>, Json(req): Json<AbReq>) -> Result<Json<ChangeReport>, ApiError> {
    let mut networks = Vec::new();
    for c in &req.cidrs {
        let (ip, len) = c
            .split_once('/')
            .ok_or_else(|| ApiError::bad(format!("{c:?} is not a CIDR (ADDR/LEN)")))?;
        let ip: std::net::IpAddr = ip.parse().map_err(|_| ApiError::bad(format!("{c:?}: bad address")))?;
        let len: u8 = len
            .parse()
            .map_err(|_| ApiError::bad(format!("{c:?}: bad prefix length")))?;
        if len > if ip.is_ipv4() { 32 } else { 128 } {
            return Err(ApiError::bad(format!("{c:?}: prefix length too long")));
        }
        networks.push((ip, len));
    }
    let mut core = core.lock().await;
    let mut next = core.desired.clone();
    let active = vip_pools(&next, &req.vip, &req.pool)?;
    if active == req.pool {
        return Err(ApiError::bad(format!(
            "{:?} is the active pool: A/B rules send clients to another pool",
            req.pool
        )));
    }
    let d = next.deploy.entry(req.vip.clone()).or_default();
    d.ab = (!networks.is_empty()).then(|| AbRules {
        pool: req.pool.clone(),
        networks,
    });
    let changes = vec![format!(
        "{}: clients in {:?} always to {}",
        req.vip, req.cidrs, req.pool
    )];
    change(&mut core, next, changes, req.dry_run)
}

/// All new flows back: a split or A/B rules are removed; otherwise the previous active
/// pool becomes active again.
async fn rollback(State(core): State<Shared>, Json(req): Json<RollbackReq>) -> Result<Json<ChangeReport>, ApiError> {
    let mut core = core.lock().await;
    let mut next = core.desired.clone();
    let active = next
        .vip(&req.vip)
        .ok_or_else(|| ApiError::not_found(format!("unknown VIP {:?}", req.vip)))?
        .active
        .clone();
    let d = next.deploy.entry(req.vip.clone()).or_default();
    stop_canary(d, "manual rollback");
    let changes = if d.split.is_some() || d.ab.is_some() {
        d.split = None;
        d.ab = None;
        vec![format!(
            "{}: split and A/B rules removed; all new flows to {active}",
            req.vip
        )]
    } else if let Some(prev) = d.previous_active.take() {
        d.previous_active = Some(active.clone());
        for v in next.config.vips.iter_mut().filter(|v| v.name == req.vip) {
            v.active = prev.clone();
        }
        vec![format!("{}: active {active} -> {prev}", req.vip)]
    } else {
        return Err(ApiError::bad(format!("VIP {:?} has nothing to roll back", req.vip)));
    };
    change(&mut core, next, changes, req.dry_run)
}

fn stop_canary(d: &mut crate::state::Deployment, why: &str) {
    if let Some(c) = d.canary.as_mut()
        && c.outcome == crate::state::CanaryOutcome::Running
    {
        c.outcome = crate::state::CanaryOutcome::RolledBack(why.to_string());
    }
}

#[derive(Deserialize)]
pub struct CanaryReq {
    pub vip: String,
    pub pool: String,
    pub steps: Vec<f64>,
    pub interval: String,
    #[serde(default)]
    pub max_failing: u32,
    pub by: Option<SplitBy>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Starts a stepped canary (the agent drives it; see `deploy`).
async fn canary(State(core): State<Shared>, Json(req): Json<CanaryReq>) -> Result<Json<ChangeReport>, ApiError> {
    if req.steps.is_empty()
        || req.steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0))
        || req.steps.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(ApiError::bad(format!(
            "steps {:?}: ascending percentages in (0, 100]",
            req.steps
        )));
    }
    let interval = crate::health::parse_duration(&req.interval)
        .ok_or_else(|| ApiError::bad(format!("interval {:?}: expected e.g. 30s", req.interval)))?;
    let mut core = core.lock().await;
    let mut next = core.desired.clone();
    let active = vip_pools(&next, &req.vip, &req.pool)?;
    if active == req.pool {
        return Err(ApiError::bad(format!("{:?} is already the active pool", req.pool)));
    }
    let d = next.deploy.entry(req.vip.clone()).or_default();
    d.ab = None;
    d.canary = Some(crate::state::Canary {
        pool: req.pool.clone(),
        steps: req.steps.clone(),
        step: 0,
        interval_ms: interval.as_millis() as u64,
        step_started_ms: 0,
        max_failing: req.max_failing,
        by: req.by.unwrap_or(SplitBy::Flow),
        outcome: crate::state::CanaryOutcome::Running,
    });
    crate::deploy::enter_step(&mut next, &req.vip, 0);
    let changes = vec![format!(
        "{}: canary to {} in steps {:?} every {}",
        req.vip, req.pool, req.steps, req.interval
    )];
    change(&mut core, next, changes, req.dry_run)
}
