//! Every request and reply of the API as serde types (the JSON of docs/api.md). The agent
//! answers with them and the CLI reads them back: one spelling of the wire format. A leaf:
//! it names only the state's plain enums.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::state::{AdminState, CanaryOutcome, SplitBy};

// ---- requests ----

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendSet {
    pub vip: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AdminState>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendAdd {
    pub vip: String,
    pub pool: String,
    pub address: String,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendDel {
    pub vip: String,
    pub address: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Apply {
    pub config: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchReq {
    pub vip: String,
    pub pool: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitReq {
    pub vip: String,
    pub pool: String,
    pub percent: f64,
    #[serde(default)]
    pub by: Option<SplitBy>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbReq {
    pub vip: String,
    pub pool: String,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackReq {
    pub vip: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryReq {
    pub vip: String,
    pub pool: String,
    pub steps: Vec<f64>,
    /// A duration: `30s`, `2m`, `1m30s`.
    pub interval: String,
    #[serde(default)]
    pub max_failing: u32,
    #[serde(default)]
    pub by: Option<SplitBy>,
    /// The client gates every step (`veer canary --gate`): a step whose interval is over
    /// holds until `POST /v1/canary/gate` reports the verdict.
    #[serde(default)]
    pub gated: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/canary/pause|resume|promote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryControlReq {
    pub vip: String,
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/canary/gate`: a gate's verdict on step `step` (0-based, as in the status).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryGateReq {
    pub vip: String,
    pub step: usize,
    pub passed: bool,
    /// Why it failed (shown in the canary's outcome).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowsQuery {
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceQuery {
    pub src: String,
}

// ---- replies ----

/// `veer check --json` (no API call: the file is checked where the CLI runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub config: String,
    pub ok: bool,
    pub vips: Vec<CheckedVip>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckedVip {
    pub name: String,
    pub address: String,
    pub active: String,
    pub pools: usize,
    pub backends: usize,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: ok", self.config)?;
        for v in &self.vips {
            writeln!(
                f,
                "  vip {} {} active={} pools={} backends={}",
                v.name, v.address, v.active, v.pools, v.backends
            )?;
        }
        Ok(())
    }
}

/// An error answer (any non-2xx status).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// What a change did, or (dry run) would do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeReport {
    pub applied: bool,
    pub changes: Vec<String>,
    /// Per VIP: percent of the new-flow hash space whose backend changes. For the VIPs in
    /// `dealt` (round-robin, least-conn: no flow has a fixed slot) it is instead the least
    /// share of new flows that goes to other backends (how far the backends' shares move).
    pub moved_pct: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dealt: Vec<String>,
}

/// Counters of a VIP or a backend. `live_flows` is counted in the connection table; null
/// when it could not be read (never taken for drained).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub live_flows: Option<u64>,
    pub closed_flows: u64,
    pub answered_flows: u64,
    pub backend_resets: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl Counters {
    pub fn from_map(c: &lb_common::Counters, live: Option<u64>) -> Counters {
        Counters {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            live_flows: live,
            closed_flows: c.closed_flows,
            answered_flows: c.answered_flows,
            backend_resets: c.backend_resets,
            reply_packets: c.reply_packets,
            reply_bytes: c.reply_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Unchecked,
    Up,
    Down,
}

/// The state the data path holds for a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataState {
    Ready,
    Drain,
    Down,
    Unset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The last probe's reason (`L4OK`, `L7STS 503`, ...).
    pub last: Option<String>,
    pub in_state_s: f64,
    pub slowstart_pct: Option<u32>,
    /// Probes recorded since the agent started, and how many of them failed.
    pub checks: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The backend's id in the maps (null before it was first programmed).
    pub id: Option<u32>,
    pub address: String,
    pub weight: u32,
    pub admin: AdminState,
    pub health: Health,
    pub check: Option<Check>,
    pub state: DataState,
    pub counters: Counters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolRole {
    Active,
    Next,
    Draining,
    Idle,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolCounters {
    pub live_flows: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub active: bool,
    pub role: PoolRole,
    pub all_down_fail_open: bool,
    pub backends: Vec<BackendStatus>,
    pub counters: PoolCounters,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitStatus {
    pub pool: String,
    pub percent: f64,
    pub by: SplitBy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbStatus {
    pub pool: String,
    pub cidrs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    pub pool: String,
    pub steps: Vec<f64>,
    pub step: usize,
    pub percent: Option<f64>,
    pub interval_ms: u64,
    pub max_failing: u32,
    pub outcome: CanaryOutcome,
    /// Each step waits for a client's gate verdict.
    #[serde(default)]
    pub gated: bool,
    /// The step's interval is over; it holds until its gate answers.
    #[serde(default)]
    pub awaiting_gate: bool,
    /// Paused by `veer canary pause`.
    #[serde(default)]
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub address: String,
    pub protocol: crate::config::Protocol,
    pub mode: crate::config::Mode,
    pub scheduler: crate::config::Scheduler,
    pub active: String,
    pub split: Option<SplitStatus>,
    pub ab: Option<AbStatus>,
    pub previous_active: Option<String>,
    pub canary: Option<CanaryStatus>,
    pub pools: Vec<PoolStatus>,
    pub counters: Counters,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalCounters {
    /// Packets by the XDP program's verdict reason.
    pub reasons: BTreeMap<String, u64>,
    /// New flows by the flood guard's decision: a free way, an unconfirmed or a confirmed
    /// flow evicted, refused (`drop_flood`); and how many arrived over the budget.
    #[serde(default)]
    pub flood_guard: BTreeMap<String, u64>,
}

/// `GET /v1/status`: configuration and state, every counter under "counters".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub vips: Vec<VipStatus>,
    pub counters: GlobalCounters,
}

impl Status {
    pub fn vip(&self, name: &str) -> Option<&VipStatus> {
        self.vips.iter().find(|v| v.name == name)
    }
}

impl VipStatus {
    pub fn pool(&self, name: &str) -> Option<&PoolStatus> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn backend(&self, address: &str) -> Option<&BackendStatus> {
        self.pools
            .iter()
            .flat_map(|p| &p.backends)
            .find(|b| b.address == address)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    pub client: String,
    pub backend: String,
    pub nat_port: u16,
    pub closing: bool,
}

/// `GET /v1/flows/{vip}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flows {
    pub vip: String,
    pub total: usize,
    pub flows: Vec<FlowRow>,
}

/// `GET /v1/table/{vip}`: the active pool's table as the kernel holds it, as slot ->
/// backend address. `digest` (FNV-1a 64 over every slot's address and port, in slot order)
/// is equal on every node whose table maps each slot to the same address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub vip: String,
    pub pool: String,
    pub mode: String,
    pub ring_size: u32,
    pub digest: String,
    /// Slots per backend address (`none`: empty slots).
    pub slots: std::collections::BTreeMap<String, u32>,
}

/// `GET /v1/trace/{vip}?src=IP:PORT`: the backend a flow from `source` reaches now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub vip: String,
    pub source: String,
    /// The connection table already holds the flow: it stays on its backend.
    pub existing_flow: bool,
    /// Null for an existing flow, or when nothing would take it.
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Null: a new flow would be dropped (no backend takes new flows), or (round-robin,
    /// least-conn) which backend depends on the moment: see `candidates`.
    pub backend: Option<String>,
    /// The VIP's scheduler: maglev, source-hash, round-robin or least-conn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// Round-robin: every backend of the pool's sequence (a new flow takes its CPU's next
    /// turn). Least-conn: the flow's two candidates (it takes the one with fewer live flows
    /// per unit of weight when it arrives). Empty for the hash schedulers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
}
