//! Desired state (config + runtime changes) and the reconciler that turns it into map
//! writes. Pure: the dataplane executes the [`Op`]s this computes, in order, so the
//! arithmetic and the ordering are tested without a kernel.
//!
//! Ids stay stable across changes (VIP stats index, backend id, table id) and are persisted
//! with the desired state, so a restarted agent keeps writing into the same slots.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::{
    BACKEND_DOWN, BACKEND_DRAIN, BACKEND_READY, BACKEND_UNSET, Backend, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP,
    VIP_F_AB_RULES, VIP_F_HASH_SOURCE, VIP_F_SPLIT_BY_CLIENT, VIP_FILTER_WORDS, VipInfo, VipKey,
    maglev::{TableBackend, build_table},
    vip_filter_slot,
};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Protocol, Scheduler, VipConfig};

/// Address as stored in maps: IPv4 in word 0, or the IPv6 address, network byte order.
pub fn addr_be(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            std::array::from_fn(|i| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]))
        }
    }
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

/// Operator's admin state of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
}

/// The backend value the data path gets for a config weight and admin state.
pub fn backend_state(weight: u32, admin: AdminState) -> u8 {
    match admin {
        AdminState::Ready if weight > 0 => BACKEND_READY,
        AdminState::Ready | AdminState::Drain => BACKEND_DRAIN,
        AdminState::Maint => BACKEND_DOWN,
    }
}

/// Ids in use in the maps. Persisted with the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// VIP name -> VIP_STATS index.
    pub vips: BTreeMap<String, u32>,
    /// "vip|addr" -> BACKENDS index.
    pub backends: BTreeMap<String, u32>,
    /// "vip|pool" -> table id.
    pub tables: BTreeMap<String, u32>,
}

pub fn backend_key(vip: &str, addr: SocketAddr) -> String {
    format!("{vip}|{addr}")
}

pub fn pool_key(vip: &str, pool: &str) -> String {
    format!("{vip}|{pool}")
}

/// One map write, in the order the dataplane must perform them.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Config(lb_common::Config),
    /// Backend slot value; a fresh backend also gets its next-hop cache cleared.
    Backend {
        id: u32,
        value: Backend,
        fresh: bool,
    },
    Table {
        id: u32,
        slots: Vec<u32>,
    },
    Vip(VipKey, VipInfo),
    RemoveVip(VipKey),
    /// (word index, new value) of VIP_FILTER.
    Filter(u32, u64),
    /// Insert (true) or remove (false) an A/B rule: LPM prefix length and data.
    AbRule {
        prefix_len: u32,
        key: lb_common::AbKey,
        insert: bool,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("VIP {vip:?} is {family} but the balancer has no {family} SNAT address: set agent.snat_{suffix}")]
    NoSnat {
        vip: String,
        family: &'static str,
        suffix: &'static str,
    },
    #[error("VIP {vip:?}: {message}")]
    Deploy { vip: String, message: String },
    #[error("no free {what} id (capacity {capacity}): restart the agent with a larger agent.{setting}")]
    Exhausted {
        what: &'static str,
        capacity: u32,
        setting: &'static str,
    },
}

/// Capacities fixed when the maps were created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub ring_size: u32,
    pub max_backends: u32,
    pub max_tables: u32,
    pub max_vips: u32,
}

/// Hands out the lowest free ids from a cursor: O(1) amortised per id, so 10,000 backends
/// are numbered in microseconds.
struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
    first: u32,
    capacity: u32,
    what: &'static str,
    setting: &'static str,
}

impl IdAllocator {
    fn new(
        used: impl IntoIterator<Item = u32>,
        first: u32,
        capacity: u32,
        what: &'static str,
        setting: &'static str,
    ) -> Self {
        IdAllocator {
            used: used.into_iter().collect(),
            next: first,
            first,
            capacity,
            what,
            setting,
        }
    }

    fn alloc(&mut self) -> Result<u32, StateError> {
        while self.next < self.capacity && self.used.contains(&self.next) {
            self.next += 1;
        }
        if self.next >= self.capacity {
            // ids freed below the cursor are reused only when the top is exhausted
            let free = (self.first..self.capacity).find(|i| !self.used.contains(i));
            let id = free.ok_or(StateError::Exhausted {
                what: self.what,
                capacity: self.capacity,
                setting: self.setting,
            })?;
            self.used.insert(id);
            return Ok(id);
        }
        let id = self.next;
        self.used.insert(id);
        Ok(id)
    }
}

/// The reconciler: what the maps hold now, and how to get them to a new desired state.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub limits: Limits,
    pub ids: Ids,
    /// Slots of every table in use (needed to rebuild with minimal disruption).
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// The members each table was built from: an unchanged pool is not rebuilt.
    members: BTreeMap<u32, Vec<TableBackend>>,
    backends: BTreeMap<u32, Backend>,
    vips: BTreeMap<String, (VipKey, VipInfo)>,
    filter: Vec<u64>,
    /// The A/B rules' LPM entries: (prefix length, key words as in `AbKey`).
    pub(super) ab_rules: BTreeSet<(u32, [u32; 5])>,
    /// Pools whose every backend is down by health: served anyway (fail open).
    pub fail_open: BTreeSet<String>,
    config: Option<lb_common::Config>,
}

impl Reconciler {
    pub fn new(limits: Limits) -> Reconciler {
        Reconciler {
            limits,
            ids: Ids::default(),
            tables: BTreeMap::new(),
            members: BTreeMap::new(),
            backends: BTreeMap::new(),
            vips: BTreeMap::new(),
            filter: vec![0; VIP_FILTER_WORDS as usize],
            ab_rules: BTreeSet::new(),
            fail_open: BTreeSet::new(),
            config: None,
        }
    }

    /// A reconciler that knows the ids and table contents already in the (adopted) maps.
    pub fn adopt(limits: Limits, ids: Ids, tables: BTreeMap<u32, Vec<u32>>) -> Reconciler {
        Reconciler {
            ids,
            tables,
            ..Reconciler::new(limits)
        }
    }

    /// Computes the writes that take the maps from what they hold to `desired`, and
    /// records the result as the new current state. On error nothing is recorded.
    pub fn reconcile(
        &mut self,
        desired: &Desired,
        snat_v4: Option<Ipv4Addr>,
        snat_v6: Option<Ipv6Addr>,
    ) -> Result<Vec<Op>, StateError> {
        let mut next = self.clone();
        let ops = next.plan(desired, snat_v4, snat_v6)?;
        *self = next;
        Ok(ops)
    }

    fn plan(
        &mut self,
        desired: &Desired,
        snat_v4: Option<Ipv4Addr>,
        snat_v6: Option<Ipv6Addr>,
    ) -> Result<Vec<Op>, StateError> {
        let m = self.limits.ring_size;
        let mut raise = Vec::new(); // backends becoming (more) available: before tables
        let mut table_ops = Vec::new();
        let mut vip_ops = Vec::new();
        let mut lower = Vec::new(); // drain/down/removed: after the tables stop naming them
        let mut config_op = Vec::new();

        let cfg = lb_common::Config {
            snat_v4_be: snat_v4.map(|a| addr_be(a.into())[0]).unwrap_or(0),
            ring_size: m,
            snat_v6_be: snat_v6.map(|a| addr_be(a.into())).unwrap_or([0; 4]),
        };
        if self.config != Some(cfg) {
            config_op.push(Op::Config(cfg));
            self.config = Some(cfg);
        }

        let mut filter_addrs: Vec<[u32; 4]> = snat_v4
            .map(|a| addr_be(a.into()))
            .into_iter()
            .chain(snat_v6.map(|a| addr_be(a.into())))
            .collect();
        let mut vip_ids = IdAllocator::new(
            self.ids.vips.values().copied(),
            0,
            self.limits.max_vips,
            "VIP",
            "max_vips",
        );
        let mut backend_ids = IdAllocator::new(
            self.ids.backends.values().copied(),
            1,
            self.limits.max_backends,
            "backend",
            "max_backends",
        );
        let mut table_ids = IdAllocator::new(
            self.tables.keys().copied(),
            1,
            self.limits.max_tables,
            "table",
            "max_tables",
        );
        let mut live_vips = BTreeSet::new();
        let mut ab_wanted: BTreeSet<(u32, [u32; 5])> = BTreeSet::new();
        let mut live_backends = BTreeSet::new();
        let mut live_tables = BTreeSet::new();
        for v in &desired.config.vips {
            if v.family_is_v4() && snat_v4.is_none() {
                return Err(StateError::NoSnat {
                    vip: v.name.clone(),
                    family: "IPv4",
                    suffix: "v4",
                });
            }
            if !v.family_is_v4() && snat_v6.is_none() {
                return Err(StateError::NoSnat {
                    vip: v.name.clone(),
                    family: "IPv6",
                    suffix: "v6",
                });
            }
            let vip_id = match self.ids.vips.get(&v.name) {
                Some(&id) => id,
                None => {
                    let id = vip_ids.alloc()?;
                    self.ids.vips.insert(v.name.clone(), id);
                    id
                }
            };
            live_vips.insert(v.name.clone());
            let mut active_table = 0;
            let deploy = desired.deploy.get(&v.name).cloned().unwrap_or_default();
            let next_pool = match (&deploy.split, &deploy.ab) {
                (Some(s), Some(a)) if s.pool != a.pool => {
                    return Err(StateError::Deploy {
                        vip: v.name.clone(),
                        message: format!(
                            "split goes to {:?} and A/B rules to {:?}: one next pool at a time",
                            s.pool, a.pool
                        ),
                    });
                }
                (Some(s), _) => Some(s.pool.clone()),
                (None, Some(a)) => Some(a.pool.clone()),
                (None, None) => None,
            };
            if let Some(np) = &next_pool {
                if *np == v.active {
                    return Err(StateError::Deploy {
                        vip: v.name.clone(),
                        message: format!("{np:?} is already the active pool"),
                    });
                }
                if !v.pools.iter().any(|p| p.name == *np) {
                    return Err(StateError::Deploy {
                        vip: v.name.clone(),
                        message: format!("no pool named {np:?}"),
                    });
                }
            }
            let mut next_table = 0;
            for p in &v.pools {
                let mut members = Vec::new();
                // All-down policy: when checks find every serving backend of a pool down,
                // the pool keeps its last-known set rather than black-holing the VIP.
                let serving: Vec<String> = p
                    .backends
                    .iter()
                    .filter(|b| b.weight > 0 && desired.admin(&v.name, b.address) == AdminState::Ready)
                    .map(|b| backend_key(&v.name, b.address))
                    .collect();
                let fail_open = !serving.is_empty() && serving.iter().all(|k| desired.observed.down.contains(k));
                let pkey_ = pool_key(&v.name, &p.name);
                if fail_open {
                    self.fail_open.insert(pkey_);
                } else {
                    self.fail_open.remove(&pkey_);
                }
                for b in &p.backends {
                    let key = backend_key(&v.name, b.address);
                    let id = match self.ids.backends.get(&key) {
                        Some(&id) => id,
                        None => {
                            let id = backend_ids.alloc()?;
                            self.ids.backends.insert(key.clone(), id);
                            id
                        }
                    };
                    live_backends.insert(key);
                    let admin = desired.admin(&v.name, b.address);
                    let bkey = backend_key(&v.name, b.address);
                    let health_down = !fail_open && desired.observed.down.contains(&bkey);
                    let value = Backend {
                        addr_be: addr_be(b.address.ip()),
                        port_be: b.address.port().to_be(),
                        family: family(b.address.ip()),
                        state: if health_down {
                            BACKEND_DOWN
                        } else {
                            backend_state(b.weight, admin)
                        },
                        vip_id,
                    };
                    let pct = desired
                        .observed
                        .weight_pct
                        .get(&bkey)
                        .copied()
                        .unwrap_or(100)
                        .clamp(1, 100);
                    // Weights are scaled by 100 so that slow start can ramp even a weight of 1.
                    let effective = if value.state == BACKEND_READY {
                        b.weight * pct
                    } else {
                        0
                    };
                    members.push(TableBackend {
                        id,
                        addr_be: value.addr_be,
                        port_be: value.port_be,
                        weight: effective,
                    });
                    let old = self.backends.get(&id).copied();
                    if old != Some(value) {
                        let fresh = old.is_none_or(|o| o.addr_be != value.addr_be || o.port_be != value.port_be);
                        let op = Op::Backend { id, value, fresh };
                        if value.state == BACKEND_READY {
                            raise.push(op)
                        } else {
                            lower.push(op)
                        }
                        self.backends.insert(id, value);
                    }
                }
                let pkey = pool_key(&v.name, &p.name);
                let old_id = self.ids.tables.get(&pkey).copied();
                let table_id = if members.iter().all(|b| b.weight == 0) {
                    0
                } else if let Some(id) = old_id.filter(|id| self.members.get(id) == Some(&members)) {
                    id
                } else {
                    let previous = old_id.and_then(|id| self.tables.get(&id));
                    let slots = build_table(&members, m, previous.map(|v| v.as_slice()));
                    let id = match old_id {
                        Some(old) if previous == Some(&slots) => old,
                        _ => {
                            // A table in use is never rewritten: build in a free id, then flip.
                            let id = table_ids.alloc()?;
                            table_ops.push(Op::Table {
                                id,
                                slots: slots.clone(),
                            });
                            self.tables.insert(id, slots);
                            id
                        }
                    };
                    self.members.insert(id, members.clone());
                    id
                };
                if table_id == 0 {
                    self.ids.tables.remove(&pkey);
                } else {
                    self.ids.tables.insert(pkey, table_id);
                    live_tables.insert(table_id);
                }
                if p.name == v.active {
                    active_table = table_id;
                }
                if next_pool.as_deref() == Some(p.name.as_str()) {
                    next_table = table_id;
                }
            }
            let key = vip_key(v);
            let mut flags = if v.scheduler == Scheduler::SourceHash {
                VIP_F_HASH_SOURCE
            } else {
                0
            };
            if deploy.split.as_ref().is_some_and(|s| s.by == SplitBy::Client) {
                flags |= VIP_F_SPLIT_BY_CLIENT;
            }
            if let Some(ab) = &deploy.ab {
                for (net, len) in &ab.networks {
                    if net.is_ipv4() != v.family_is_v4() {
                        return Err(StateError::Deploy {
                            vip: v.name.clone(),
                            message: format!("{net}/{len} is not the VIP's address family"),
                        });
                    }
                    let a = addr_be(*net);
                    ab_wanted.insert((32 + *len as u32, [vip_id.to_be(), a[0], a[1], a[2], a[3]]));
                }
                if !ab.networks.is_empty() {
                    flags |= VIP_F_AB_RULES;
                }
            }
            let info = VipInfo {
                vip_id,
                table_current: active_table,
                table_next: next_table,
                split_bp: deploy.split.as_ref().map(|s| s.bp).unwrap_or(0),
                flags,
                _pad: 0,
            };
            match self.vips.get(&v.name) {
                Some((old_key, old_info)) if *old_key == key && *old_info == info => {}
                Some((old_key, _)) if *old_key != key => {
                    vip_ops.push(Op::RemoveVip(*old_key));
                    vip_ops.push(Op::Vip(key, info));
                }
                _ => vip_ops.push(Op::Vip(key, info)),
            }
            self.vips.insert(v.name.clone(), (key, info));
            filter_addrs.push(key.addr_be);
        }
        // Whatever the desired state no longer names goes, after the flips.
        let gone_vips: Vec<String> = self.vips.keys().filter(|n| !live_vips.contains(*n)).cloned().collect();
        for name in gone_vips {
            if let Some((key, _)) = self.vips.remove(&name) {
                vip_ops.push(Op::RemoveVip(key));
            }
            self.ids.vips.remove(&name);
        }
        let gone_backends: Vec<String> = self
            .ids
            .backends
            .keys()
            .filter(|k| !live_backends.contains(*k))
            .cloned()
            .collect();
        for key in gone_backends {
            if let Some(id) = self.ids.backends.remove(&key) {
                self.backends.remove(&id);
                lower.push(Op::Backend {
                    id,
                    value: Backend {
                        state: BACKEND_UNSET,
                        ..Default::default()
                    },
                    fresh: true,
                });
            }
        }
        self.ids.tables.retain(|_, id| live_tables.contains(id));
        self.tables.retain(|id, _| live_tables.contains(id));
        self.members.retain(|id, _| live_tables.contains(id));

        let mut filter = vec![0u64; VIP_FILTER_WORDS as usize];
        for a in &filter_addrs {
            let (word, bit) = vip_filter_slot(a);
            filter[word as usize] |= bit;
        }
        // New bits before the VIPs appear; stale bits only after they are gone.
        let mut filter_add = Vec::new();
        let mut filter_clear = Vec::new();
        for (i, (&new, &old)) in filter.iter().zip(&self.filter).enumerate() {
            if new != old {
                let merged = new | old;
                if merged != old {
                    filter_add.push(Op::Filter(i as u32, merged));
                }
                if merged != new {
                    filter_clear.push(Op::Filter(i as u32, new));
                }
            }
        }
        self.filter = filter;

        let ab_key = |(len, d): &(u32, [u32; 5])| {
            (
                *len,
                lb_common::AbKey {
                    vip_id_be: d[0],
                    addr_be: [d[1], d[2], d[3], d[4]],
                },
            )
        };
        let ab_add: Vec<Op> = ab_wanted
            .difference(&self.ab_rules)
            .map(|r| {
                let (prefix_len, key) = ab_key(r);
                Op::AbRule {
                    prefix_len,
                    key,
                    insert: true,
                }
            })
            .collect();
        let ab_del: Vec<Op> = self
            .ab_rules
            .difference(&ab_wanted)
            .map(|r| {
                let (prefix_len, key) = ab_key(r);
                Op::AbRule {
                    prefix_len,
                    key,
                    insert: false,
                }
            })
            .collect();
        self.ab_rules = ab_wanted;

        let mut ops = config_op;
        ops.extend(raise);
        ops.extend(table_ops);
        ops.extend(filter_add);
        ops.extend(ab_add);
        ops.extend(vip_ops);
        ops.extend(ab_del);
        ops.extend(lower);
        ops.extend(filter_clear);
        Ok(ops)
    }

    /// The backend values currently programmed, by id.
    pub fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(&id)
    }

    pub fn vip_info(&self, name: &str) -> Option<&(VipKey, VipInfo)> {
        self.vips.get(name)
    }
}

pub fn vip_key(v: &VipConfig) -> VipKey {
    VipKey {
        addr_be: addr_be(v.address.ip()),
        port_be: v.address.port().to_be(),
        proto: match v.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family: family(v.address.ip()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const CFG: &str = r#"
[agent]
snat_v4 = "10.0.0.2"
ring_size = 251
[[vip]]
name = "web"
address = "10.0.0.100:80"
active = "blue"
[[vip.pool]]
name = "blue"
backends = [ { address = "10.0.1.1:80" }, { address = "10.0.1.2:80", weight = 300 } ]
[[vip.pool]]
name = "green"
backends = [ { address = "10.0.2.1:80" } ]
[[vip.pool]]
name = "empty"
"#;

    fn limits() -> Limits {
        Limits {
            ring_size: 251,
            max_backends: 64,
            max_tables: 16,
            max_vips: 8,
        }
    }

    fn desired(text: &str) -> Desired {
        Desired::new(parse(text, "t.toml").unwrap())
    }

    fn snat() -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(10, 0, 0, 2))
    }

    fn position(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).expect("op present")
    }

    #[test]
    fn first_plan_writes_backends_then_tables_then_vips() {
        let mut r = Reconciler::new(limits());
        let ops = r.reconcile(&desired(CFG), snat(), None).unwrap();
        let backend = position(&ops, |o| matches!(o, Op::Backend { .. }));
        let table = position(&ops, |o| matches!(o, Op::Table { .. }));
        let vip = position(&ops, |o| matches!(o, Op::Vip(..)));
        assert!(backend < table && table < vip, "{ops:?}");
        assert_eq!(r.ids.backends.len(), 3);
        let (_, info) = r.vip_info("web").unwrap();
        let blue = r.ids.tables[&pool_key("web", "blue")];
        assert_eq!(info.table_current, blue);
        let slots = &r.tables[&blue];
        let heavy = slots
            .iter()
            .filter(|&&id| id == r.ids.backends[&backend_key("web", "10.0.1.2:80".parse().unwrap())])
            .count();
        assert_eq!(heavy, (251.0f64 * 0.75).round() as usize, "weights 100:300");
        assert!(!r.ids.tables.contains_key(&pool_key("web", "empty")));
    }

    #[test]
    fn reconciling_the_same_state_writes_nothing() {
        let mut r = Reconciler::new(limits());
        let d = desired(CFG);
        r.reconcile(&d, snat(), None).unwrap();
        assert_eq!(r.reconcile(&d, snat(), None).unwrap(), vec![]);
    }

    #[test]
    fn weight_change_builds_a_new_table_and_flips_without_touching_the_old_one() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let old_id = r.vip_info("web").unwrap().1.table_current;
        let ops = r
            .reconcile(&desired(&CFG.replace("weight = 300", "weight = 100")), snat(), None)
            .unwrap();
        let Some(Op::Table { id: new_id, .. }) = ops.iter().find(|o| matches!(o, Op::Table { .. })) else {
            panic!("{ops:?}")
        };
        assert_ne!(*new_id, old_id, "the table in use is never rewritten");
        let flip = position(&ops, |o| matches!(o, Op::Vip(_, info) if info.table_current == *new_id));
        assert!(position(&ops, |o| matches!(o, Op::Table { .. })) < flip);
        assert!(!r.tables.contains_key(&old_id), "old table freed after the flip");
    }

    #[test]
    fn drain_and_maint_leave_the_table_before_their_state_changes() {
        let mut r = Reconciler::new(limits());
        let mut d = desired(CFG);
        r.reconcile(&d, snat(), None).unwrap();
        let addr: SocketAddr = "10.0.1.2:80".parse().unwrap();
        let id = r.ids.backends[&backend_key("web", addr)];
        for (admin, state) in [(AdminState::Drain, BACKEND_DRAIN), (AdminState::Maint, BACKEND_DOWN)] {
            d.admin.entry("web".into()).or_default().insert(addr, admin);
            let ops = r.reconcile(&d, snat(), None).unwrap();
            let state_op = position(
                &ops,
                |o| matches!(o, Op::Backend { id: i, value, .. } if *i == id && value.state == state),
            );
            if admin == AdminState::Drain {
                let flip = position(&ops, |o| matches!(o, Op::Vip(..)));
                assert!(flip < state_op, "{ops:?}");
            }
            let table = r.vip_info("web").unwrap().1.table_current;
            assert!(
                r.tables[&table].iter().all(|&s| s != id),
                "{admin:?} backend takes no new flows"
            );
        }
    }

    #[test]
    fn weight_zero_drains_and_removing_a_backend_unsets_it_last() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let ops = r
            .reconcile(&desired(&CFG.replace("weight = 300", "weight = 0")), snat(), None)
            .unwrap();
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::Backend { value, .. } if value.state == BACKEND_DRAIN))
        );
        let removed = CFG.replace(", { address = \"10.0.1.2:80\", weight = 300 }", "");
        let ops = r.reconcile(&desired(&removed), snat(), None).unwrap();
        let Some(Op::Backend { value, .. }) = ops.last() else {
            panic!("{ops:?}")
        };
        assert_eq!(value.state, BACKEND_UNSET);
    }

    #[test]
    fn ids_are_stable_and_reused_only_after_release() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let before = r.ids.backends.clone();
        let added = CFG.replace(
            "{ address = \"10.0.2.1:80\" }",
            "{ address = \"10.0.2.1:80\" }, { address = \"10.0.2.2:80\" }",
        );
        r.reconcile(&desired(&added), snat(), None).unwrap();
        for (k, id) in &before {
            assert_eq!(r.ids.backends[k], *id, "{k} keeps its id");
        }
        assert_eq!(r.ids.backends.len(), 4);
    }

    #[test]
    fn health_down_takes_a_backend_out_and_all_down_fails_open() {
        let mut r = Reconciler::new(limits());
        let mut d = desired(CFG);
        r.reconcile(&d, snat(), None).unwrap();
        let a: SocketAddr = "10.0.1.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.1.2:80".parse().unwrap();
        let (ida, idb) = (
            r.ids.backends[&backend_key("web", a)],
            r.ids.backends[&backend_key("web", b)],
        );
        d.observed.down.insert(backend_key("web", a));
        r.reconcile(&d, snat(), None).unwrap();
        let t = r.vip_info("web").unwrap().1.table_current;
        assert!(
            r.tables[&t].iter().all(|&s| s == idb),
            "a down backend leaves the table"
        );
        assert_eq!(r.backend(ida).unwrap().state, BACKEND_DOWN, "its flows are re-chosen");
        d.observed.down.insert(backend_key("web", b));
        r.reconcile(&d, snat(), None).unwrap();
        assert!(r.fail_open.contains(&pool_key("web", "blue")));
        let t = r.vip_info("web").unwrap().1.table_current;
        assert!(
            r.tables[&t].contains(&ida) && r.tables[&t].contains(&idb),
            "all down: the pool keeps its set"
        );
        assert_eq!(r.backend(ida).unwrap().state, BACKEND_READY);
    }

    #[test]
    fn slow_start_scales_the_table_share() {
        let mut r = Reconciler::new(limits());
        let mut d = desired(CFG);
        let b: SocketAddr = "10.0.1.2:80".parse().unwrap();
        d.observed.weight_pct.insert(backend_key("web", b), 10);
        r.reconcile(&d, snat(), None).unwrap();
        let id = r.ids.backends[&backend_key("web", b)];
        let t = r.vip_info("web").unwrap().1.table_current;
        let share = r.tables[&t].iter().filter(|&&s| s == id).count() as f64 / 251.0;
        assert!(
            (share - 30.0 / 130.0).abs() < 0.01,
            "weight 300 at 10% = 30 against 100: {share}"
        );
    }

    #[test]
    fn failed_reconcile_changes_nothing() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let ids = r.ids.clone();
        assert!(r.reconcile(&desired(CFG), None, None).is_err());
        assert_eq!(r.ids, ids);
        assert_eq!(r.reconcile(&desired(CFG), snat(), None).unwrap(), vec![]);
    }
}
