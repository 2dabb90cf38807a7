//! What the operator wants: the config plus runtime changes (admin states, splits, A/B
//! rules, canaries), and what health checks observe.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use crate::config::{Config, VipConfig};

/// Operator's admin state of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new flows.
    #[default]
    Ready,
    /// No new flows; established flows finish where they are.
    Drain,
    /// No new flows; established flows are re-chosen on their next packet.
    Maint,
}

/// How a split keys clients: per connection (canary) or per client address (sticky, A/B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitBy {
    Flow,
    Client,
}

/// Share of new flows, in basis points, that go to `pool` instead of the active pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub pool: String,
    pub bp: u32,
    pub by: SplitBy,
}

/// Client networks that always go to `pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbRules {
    pub pool: String,
    /// (network address, prefix length)
    pub networks: Vec<(IpAddr, u8)>,
}

/// A VIP's deployment state beyond its config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// The pool that was active before the last switch (for rollback).
    pub previous_active: Option<String>,
    pub split: Option<Split>,
    pub ab: Option<AbRules>,
    /// The last (or running) stepped canary.
    #[serde(default)]
    pub canary: Option<Canary>,
}

/// A stepped canary, driven by the agent and persisted, so it resumes after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub pool: String,
    /// Percent of new flows per step, ascending; a step of 100 completes as a switch.
    pub steps: Vec<f64>,
    pub step: usize,
    pub interval_ms: u64,
    /// Unix time (ms) the current step started.
    pub step_started_ms: u64,
    /// Backends of the pool allowed to fail their checks before it rolls back.
    pub max_failing: u32,
    pub by: SplitBy,
    pub outcome: CanaryOutcome,
    /// A client (`veer canary --gate`) judges each step: a step whose interval is over
    /// holds until the client reports its gate's verdict for it.
    #[serde(default)]
    pub gated: bool,
    /// The interval of the current step is over and its gate has not answered yet.
    #[serde(default)]
    pub awaiting_gate: bool,
    /// The step whose gate passed.
    #[serde(default)]
    pub gate_passed: Option<usize>,
    /// Paused (`veer canary pause`) since this Unix time (ms): the step holds.
    #[serde(default)]
    pub paused_since_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum CanaryOutcome {
    Running,
    Done,
    RolledBack(String),
}

/// Config plus runtime changes: what the operator wants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub config: Config,
    /// Admin state per VIP and backend address (absent = ready).
    #[serde(default)]
    pub admin: BTreeMap<String, BTreeMap<SocketAddr, AdminState>>,
    /// Split, A/B rules and rollback target per VIP.
    #[serde(default)]
    pub deploy: BTreeMap<String, Deployment>,
    /// What health checks observe; not persisted (re-observed after a restart).
    #[serde(skip)]
    pub observed: Observed,
}

/// Health as observed: backends (by `backend_key`) that checks found down, and the weight
/// percentage of backends in slow start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub down: BTreeSet<String>,
    pub weight_pct: BTreeMap<String, u32>,
}

impl Desired {
    pub fn new(config: Config) -> Desired {
        Desired {
            config,
            admin: BTreeMap::new(),
            deploy: BTreeMap::new(),
            observed: Observed::default(),
        }
    }

    pub fn admin(&self, vip: &str, addr: SocketAddr) -> AdminState {
        self.admin
            .get(vip)
            .and_then(|m| m.get(&addr))
            .copied()
            .unwrap_or_default()
    }

    pub fn vip(&self, name: &str) -> Option<&VipConfig> {
        self.config.vips.iter().find(|v| v.name == name)
    }

    /// A new configuration over this state (`veer apply -f`, SIGHUP, a restart with an
    /// edited file): deployments (split, A/B rules, rollback target) survive for the VIPs
    /// that remain, admin states for the backends that remain.
    pub fn with_config(&self, config: Config) -> Desired {
        let mut next = Desired::new(config);
        for (vip, d) in &self.deploy {
            if next.vip(vip).is_some() {
                next.deploy.insert(vip.clone(), d.clone());
            }
        }
        for (vip, m) in &self.admin {
            if let Some(v) = next.vip(vip).cloned() {
                let keep: BTreeMap<SocketAddr, AdminState> = m
                    .iter()
                    .filter(|(a, _)| v.pools.iter().flat_map(|p| &p.backends).any(|b| b.address == **a))
                    .map(|(a, s)| (*a, *s))
                    .collect();
                next.admin.insert(vip.clone(), keep);
            }
        }
        next
    }
}
