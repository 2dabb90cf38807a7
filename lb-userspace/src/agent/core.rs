//! The core: the desired state, the reconciler and the data path behind one door. A change
//! comes in as a [`Change`]; [`Core::apply`] plans it once (the edit, then one reconcile)
//! and either reports what it would do (dry run) or writes the maps and persists it.
//! Readers get [`Core::status`] and [`Core::counters`]. Nothing else reaches the maps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{BACKEND_DOWN, BACKEND_DRAIN, BACKEND_READY, FlowKey, select::PoolChoice};

use crate::{
    api::types::{self, ChangeReport, DataState, Health, PoolRole, Status},
    config::{Config, Scheduler},
    dataplane::{Dataplane, LiveFlows},
    deploy::{self, CanaryPlan},
    state::{
        self, AdminState, Desired, Edit, Observed, Reconciler, Refused, SplitBy, addr_be, backend_key, family,
        moved_share, pool_key, vip_key,
    },
};

/// A change the operator (or the agent's own tasks) asks for, with validated values.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    BackendSet {
        vip: String,
        address: SocketAddr,
        weight: Option<u32>,
        state: Option<AdminState>,
    },
    BackendAdd {
        vip: String,
        pool: String,
        address: SocketAddr,
        weight: u32,
    },
    BackendDel {
        vip: String,
        address: SocketAddr,
    },
    /// A whole new config file.
    Config(Box<Config>),
    Switch {
        vip: String,
        pool: String,
    },
    Split {
        vip: String,
        pool: String,
        bp: u32,
        by: SplitBy,
    },
    Ab {
        vip: String,
        pool: String,
        networks: Vec<(IpAddr, u8)>,
    },
    Rollback {
        vip: String,
    },
    Canary {
        vip: String,
        plan: CanaryPlan,
    },
    /// Pause, resume, promote or gate a running canary.
    CanaryControl {
        vip: String,
        action: deploy::CanaryAction,
    },
    /// The canary ticker's look at running canaries.
    CanaryTick,
    /// What health checks observe now.
    Observed(Observed),
}

/// Why the core refused or failed a change. Not an HTTP type: the API maps it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The change is not valid as asked; nothing changed.
    #[error("{0}")]
    Rejected(String),
    /// It names a VIP, pool or backend that does not exist; nothing changed.
    #[error("{0}")]
    NotFound(String),
    /// Writing the maps or persisting failed.
    #[error("{0}")]
    Failed(String),
}

impl From<Refused> for CoreError {
    fn from(r: Refused) -> CoreError {
        match r {
            Refused::NotFound(m) => CoreError::NotFound(m),
            Refused::Invalid(m) => CoreError::Rejected(m),
        }
    }
}

/// A checked backend's health, as the health checker last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub up: bool,
    /// The last probe's reason.
    pub last: Option<String>,
    /// Since when it is in its state.
    pub since: Instant,
    pub slowstart_pct: Option<u32>,
    /// Probes recorded, and how many failed.
    pub checks: u64,
    pub failures: u64,
}

/// The data path's counters, by name rather than by map index.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub vips: BTreeMap<String, lb_common::Counters>,
    /// By `backend_key`.
    pub backends: BTreeMap<String, lb_common::Counters>,
    /// Live flows by VIP name and by `backend_key`; None when the connection table could
    /// not be read.
    pub live: Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
    pub reasons: BTreeMap<String, u64>,
    /// The flood guard's decisions on new flows (lb_common::FloodGuard::NAMES).
    pub flood_guard: BTreeMap<String, u64>,
}

impl Counters {
    pub fn vip_live(&self, vip: &str) -> Option<u64> {
        self.live.as_ref().map(|(v, _)| v.get(vip).copied().unwrap_or(0))
    }

    pub fn backend_live(&self, key: &str) -> Option<u64> {
        self.live.as_ref().map(|(_, b)| b.get(key).copied().unwrap_or(0))
    }
}

/// A connection-table scan taken from the core (see [`Core::live_scan`]).
pub struct LiveScan {
    scan: Option<crate::dataplane::FlowScan>,
    tcp_idle: std::time::Duration,
    udp_idle: std::time::Duration,
}

/// Live flows a [`LiveScan`] counted, for [`Core::status_with`] (None: unknown).
pub struct Scanned(Option<LiveFlows>);

impl LiveScan {
    fn run(self) -> Option<LiveFlows> {
        Some(self.scan?.live_flows(self.tcp_idle, self.udp_idle))
    }

    /// Runs the scan on a blocking thread (the runtime's workers stay free).
    pub async fn run_blocking(self) -> Scanned {
        Scanned(tokio::task::spawn_blocking(move || self.run()).await.ok().flatten())
    }
}

/// Where the core persists its state, and the digest of the config it grew from.
pub(super) struct Persistence {
    pub state_file: PathBuf,
    pub config_hash: String,
}

/// The agent's state behind the API.
pub struct Core {
    desired: Desired,
    reconciler: Reconciler,
    dp: Dataplane,
    snat_v4: Option<Ipv4Addr>,
    snat_v6: Option<Ipv6Addr>,
    persistence: Persistence,
    health: BTreeMap<String, HealthReport>,
    /// The managed neighbour entries, shared with the keeper thread: a backend that a
    /// change adds gets its entry (resolved, or given a moment) before any flow can reach it.
    neighbours: Option<crate::host::SharedNeighbours>,
}

/// How long a change that adds backends waits for their neighbour entries to resolve
/// before it programs the maps anyway (the stack then resolves in band).
const NEIGHBOUR_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Core {
    /// A core over a loaded data path, programmed to `desired` (validated already).
    pub(super) fn start(
        (config, desired): (Config, Desired),
        (reconciler, dp): (Reconciler, Dataplane),
        snat: (Option<Ipv4Addr>, Option<Ipv6Addr>),
        persistence: Persistence,
    ) -> Result<Core, CoreError> {
        let mut core = Core {
            desired: Desired::new(config),
            reconciler,
            dp,
            snat_v4: snat.0,
            snat_v6: snat.1,
            persistence,
            health: BTreeMap::new(),
            neighbours: None,
        };
        core.commit(
            Edit {
                next: desired,
                changes: Vec::new(),
            },
            false,
        )?;
        Ok(core)
    }

    /// The data path, for attaching at startup and stopping at shutdown.
    pub(super) fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    pub(super) fn into_dataplane(self) -> Dataplane {
        self.dp
    }

    /// The desired state (read-only).
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The one door for changes: plans `change` once and, unless `dry_run`, writes the
    /// maps and persists. A refused change changes nothing.
    pub fn apply(&mut self, change: Change, dry_run: bool) -> Result<ChangeReport, CoreError> {
        let d = &self.desired;
        let edit = match change {
            Change::BackendSet {
                vip,
                address,
                weight,
                state,
            } => state::backend_set(d, &vip, address, weight, state)?,
            Change::BackendAdd {
                vip,
                pool,
                address,
                weight,
            } => state::backend_add(d, &vip, &pool, address, weight)?,
            Change::BackendDel { vip, address } => state::backend_del(d, &vip, address)?,
            Change::Config(cfg) => state::apply_config(d, *cfg)?,
            Change::Switch { vip, pool } => deploy::switch(d, &vip, &pool)?,
            Change::Split { vip, pool, bp, by } => deploy::split(d, &vip, &pool, bp, by)?,
            Change::Ab { vip, pool, networks } => deploy::ab(d, &vip, &pool, networks)?,
            Change::Rollback { vip } => deploy::rollback(d, &vip)?,
            Change::Canary { vip, plan } => deploy::canary_start(d, &vip, plan, now_ms())?,
            Change::CanaryControl { vip, action } => deploy::canary_control(d, &vip, action, now_ms())?,
            Change::CanaryTick => match deploy::canary_tick(d, now_ms()) {
                Some(e) => e,
                None => return Ok(ChangeReport::default()),
            },
            Change::Observed(observed) => {
                if observed == d.observed {
                    return Ok(ChangeReport::default());
                }
                let mut next = d.clone();
                next.observed = observed;
                Edit {
                    next,
                    changes: Vec::new(),
                }
            }
        };
        self.commit(edit, dry_run)
    }

    /// Reconciles once; reports what moves; writes, records and persists unless `dry_run`.
    fn commit(&mut self, edit: Edit, dry_run: bool) -> Result<ChangeReport, CoreError> {
        let mut rec = self.reconciler.clone();
        let ops = rec
            .reconcile(&edit.next, self.snat_v4, self.snat_v6)
            .map_err(|e| CoreError::Rejected(e.to_string()))?;
        crate::host::dsr::check_backends(
            &edit.next.config,
            &edit.next.config.agent.interfaces,
            Some(&self.desired.config),
        )
        .map_err(CoreError::Rejected)?;
        let moved_pct = edit
            .next
            .config
            .vips
            .iter()
            .map(|v| (v.name.clone(), moved_share(&self.reconciler, &rec, &v.name) * 100.0))
            .collect();
        let dealt = (edit.next.config.vips.iter())
            .filter(|v| matches!(v.scheduler, Scheduler::RoundRobin | Scheduler::LeastConn))
            .map(|v| v.name.clone())
            .collect();
        if !dry_run {
            // The state file before the maps: it is never behind them, and a failed write
            // changes nothing. (A crash between the two leaves it ahead, which the next
            // agent's adoption converges to.)
            self.write_state(&edit.next, &rec.ids)
                .map_err(|e| CoreError::Failed(format!("persist state: {e}: nothing changed")))?;
            self.prepare_neighbours(&edit.next.config);
            if let Err(e) = self.dp.execute(&ops) {
                let _ = self.persist();
                return Err(CoreError::Failed(format!("map write failed: {e}")));
            }
            self.reconciler = rec;
            self.reconciler.written();
            self.desired = edit.next;
            for c in &edit.changes {
                tracing::info!(change = %c, "applied");
            }
        }
        Ok(ChangeReport {
            applied: !dry_run,
            changes: edit.changes,
            moved_pct,
            dealt,
        })
    }

    /// From now on, changes install neighbour entries through `n` before they program the maps.
    pub fn set_neighbours(&mut self, n: crate::host::SharedNeighbours) {
        self.neighbours = Some(n);
    }

    /// Installs the entries of backends `next` adds (keeping every current one: the keeper
    /// removes unused entries later) and waits briefly for them to resolve.
    fn prepare_neighbours(&self, next: &Config) {
        let Some(n) = &self.neighbours else { return };
        let current = crate::host::backend_addresses(&self.desired.config);
        let wanted = crate::host::backend_addresses(next);
        if wanted.is_subset(&current) {
            return;
        }
        let mut n = n.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        n.sync(&current.union(&wanted).copied().collect());
        let pending = n.wait_resolved(NEIGHBOUR_WAIT);
        if !pending.is_empty() {
            let names: Vec<String> = pending.iter().map(|h| h.addr.to_string()).collect();
            tracing::warn!(unresolved = ?names, "new next hops do not answer ARP/ND yet: their first packets take the stack's path");
        }
    }

    /// The config file's text the desired state now grows from (after a SIGHUP reload).
    pub fn config_source(&mut self, text: &str) {
        self.persistence.config_hash = super::persist::fnv1a(text);
        if let Err(e) = self.persist() {
            tracing::error!("persist state: {e}");
        }
    }

    fn persist(&self) -> std::io::Result<()> {
        self.write_state(&self.desired, &self.reconciler.ids)
    }

    fn write_state(&self, desired: &Desired, ids: &state::Ids) -> std::io::Result<()> {
        let p = super::persist::Persisted {
            config_hash: self.persistence.config_hash.clone(),
            desired: desired.clone(),
            ids: ids.clone(),
        };
        super::persist::write_atomic(&self.persistence.state_file, &serde_json::to_vec_pretty(&p)?)
    }

    /// The health checker's latest view of every checked backend, by `backend_key`.
    pub fn report_health(&mut self, reports: BTreeMap<String, HealthReport>) {
        self.health = reports;
    }

    /// Live flows per backend and VIP, from the connection table; None if it cannot be read
    /// (status then shows null, which `--wait` and rollouts never take for drained).
    fn live_flows(&self) -> Option<LiveFlows> {
        self.live_scan().run()
    }

    /// What a live-flow count needs, to run without the lock: taken under it, then
    /// [`LiveScan::run_blocking`] after letting go (a 1M-flow table takes tens of
    /// milliseconds or more, and API changes and health updates must not wait for it).
    pub fn live_scan(&self) -> LiveScan {
        let a = &self.desired.config.agent;
        LiveScan {
            scan: self
                .dp
                .flow_scan()
                .map_err(|e| tracing::warn!("reading the connection table: {e}"))
                .ok(),
            tcp_idle: a.tcp_idle,
            udp_idle: a.udp_idle,
        }
    }

    /// What a least-conn correction round needs, to run without the lock (see
    /// `agent::loads`); None when no VIP is least-conn.
    pub fn load_scan(&self) -> Option<super::LoadScan> {
        let ids: Vec<u32> = (self.desired.config.vips.iter())
            .filter(|v| v.scheduler == Scheduler::LeastConn)
            .flat_map(|v| {
                v.pools
                    .iter()
                    .flat_map(|p| &p.backends)
                    .map(|b| backend_key(&v.name, b.address))
            })
            .filter_map(|key| self.reconciler.ids.backends.get(&key).copied())
            .collect();
        if ids.is_empty() {
            return None;
        }
        let (scan, loads) = self
            .dp
            .load_scan()
            .map_err(|e| tracing::warn!("least-conn correction: {e}"))
            .ok()?;
        let a = &self.desired.config.agent;
        Some(super::LoadScan {
            scan,
            loads,
            ids,
            tcp_idle: a.tcp_idle,
            udp_idle: a.udp_idle,
        })
    }

    /// The ids the maps use now.
    pub fn ids(&self) -> &state::Ids {
        &self.reconciler.ids
    }

    /// Every counter the data path keeps, by VIP name and backend key (live flows scanned
    /// here, under the caller's lock: see [`Core::counters_with`]).
    pub fn counters(&self) -> Counters {
        self.counters_with(self.live_flows())
    }

    /// Counters without a connection-table scan (live flows unknown).
    pub fn counters_unscanned(&self) -> Counters {
        self.counters_with(None)
    }

    /// [`Core::counters`] with live flows counted elsewhere (None: unknown, or not wanted).
    fn counters_with(&self, live: Option<LiveFlows>) -> Counters {
        let ids = &self.reconciler.ids;
        let live = live.map(|l| {
            let vips = ids.vips.iter().map(|(n, id)| (n.clone(), l.vip(*id))).collect();
            let backends = ids.backends.iter().map(|(k, id)| (k.clone(), l.backend(*id))).collect();
            (vips, backends)
        });
        Counters {
            vips: ids
                .vips
                .iter()
                .map(|(n, id)| (n.clone(), self.dp.vip_counters(*id).unwrap_or_default()))
                .collect(),
            backends: ids
                .backends
                .iter()
                .map(|(k, id)| (k.clone(), self.dp.backend_counters(*id).unwrap_or_default()))
                .collect(),
            live,
            reasons: self
                .dp
                .reasons()
                .unwrap_or_default()
                .into_iter()
                .map(|(r, n)| (r.name().to_string(), n))
                .collect(),
            flood_guard: self
                .dp
                .flood_guard()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
        }
    }

    /// The status document: configuration and state, with every counter.
    pub fn status(&self) -> Status {
        self.status_with(Scanned(self.live_flows()))
    }

    /// [`Core::status`] with live flows from a [`LiveScan`] run without the lock.
    pub fn status_with(&self, live: Scanned) -> Status {
        let counters = self.counters_with(live.0);
        let now = Instant::now();
        let vips = self
            .desired
            .config
            .vips
            .iter()
            .map(|v| {
                let deploy = self.desired.deploy.get(&v.name).cloned().unwrap_or_default();
                let next = deploy
                    .split
                    .as_ref()
                    .map(|s| s.pool.clone())
                    .or(deploy.ab.as_ref().map(|a| a.pool.clone()));
                let pools = v
                    .pools
                    .iter()
                    .map(|p| {
                        let backends: Vec<types::BackendStatus> = p
                            .backends
                            .iter()
                            .map(|b| self.backend_status(&v.name, b, &counters, now))
                            .collect();
                        // None when any backend's count is unknown.
                        let live: Option<u64> = backends.iter().map(|b| b.counters.live_flows).sum();
                        let role = if p.name == v.active {
                            PoolRole::Active
                        } else if next.as_deref() == Some(p.name.as_str()) {
                            PoolRole::Next
                        } else if live != Some(0) {
                            PoolRole::Draining
                        } else {
                            PoolRole::Idle
                        };
                        types::PoolStatus {
                            name: p.name.clone(),
                            active: p.name == v.active,
                            role,
                            all_down_fail_open: self.reconciler.fail_open.contains(&pool_key(&v.name, &p.name)),
                            backends,
                            counters: types::PoolCounters { live_flows: live },
                        }
                    })
                    .collect();
                types::VipStatus {
                    name: v.name.clone(),
                    address: v.address.to_string(),
                    protocol: v.protocol,
                    mode: v.mode,
                    scheduler: v.scheduler,
                    active: v.active.clone(),
                    split: deploy.split.as_ref().map(|s| types::SplitStatus {
                        pool: s.pool.clone(),
                        percent: s.bp as f64 / 100.0,
                        by: s.by,
                    }),
                    ab: deploy.ab.as_ref().map(|a| types::AbStatus {
                        pool: a.pool.clone(),
                        cidrs: a.networks.iter().map(|(n, l)| format!("{n}/{l}")).collect(),
                    }),
                    previous_active: deploy.previous_active.clone(),
                    canary: deploy.canary.as_ref().map(|c| types::CanaryStatus {
                        pool: c.pool.clone(),
                        steps: c.steps.clone(),
                        step: c.step,
                        percent: c.steps.get(c.step).copied(),
                        interval_ms: c.interval_ms,
                        max_failing: c.max_failing,
                        outcome: c.outcome.clone(),
                        gated: c.gated,
                        awaiting_gate: c.awaiting_gate,
                        paused: c.paused_since_ms.is_some(),
                    }),
                    pools,
                    counters: types::Counters::from_map(
                        &counters.vips.get(&v.name).copied().unwrap_or_default(),
                        counters.vip_live(&v.name),
                    ),
                }
            })
            .collect();
        Status {
            vips,
            counters: types::GlobalCounters {
                reasons: counters.reasons,
                flood_guard: counters.flood_guard,
            },
        }
    }

    fn backend_status(
        &self,
        vip: &str,
        b: &crate::config::BackendConfig,
        counters: &Counters,
        now: Instant,
    ) -> types::BackendStatus {
        let key = backend_key(vip, b.address);
        let id = self.reconciler.ids.backends.get(&key).copied();
        let state = id.and_then(|id| self.reconciler.backend(id)).map(|b| b.state);
        let h = self.health.get(&key);
        types::BackendStatus {
            id,
            address: b.address.to_string(),
            weight: b.weight,
            admin: self.desired.admin(vip, b.address),
            health: match h {
                None => Health::Unchecked,
                Some(h) if h.up => Health::Up,
                Some(_) => Health::Down,
            },
            check: h.map(|h| types::Check {
                last: h.last.clone(),
                in_state_s: now.saturating_duration_since(h.since).as_secs_f64(),
                slowstart_pct: h.slowstart_pct,
                checks: h.checks,
                failures: h.failures,
            }),
            state: match state {
                Some(BACKEND_READY) => DataState::Ready,
                Some(BACKEND_DRAIN) => DataState::Drain,
                Some(BACKEND_DOWN) => DataState::Down,
                _ => DataState::Unset,
            },
            counters: types::Counters::from_map(
                &counters.backends.get(&key).copied().unwrap_or_default(),
                counters.backend_live(&key),
            ),
        }
    }

    /// Backend id -> address, for answers that name backends.
    fn backend_addresses(&self) -> BTreeMap<u32, String> {
        self.reconciler
            .ids
            .backends
            .iter()
            .map(|(k, id)| (*id, k.split('|').nth(1).unwrap_or("").to_string()))
            .collect()
    }

    /// Up to `limit` connections of a VIP from the connection table.
    pub fn flows(&self, vip: &str, limit: usize) -> Result<types::Flows, CoreError> {
        let id = *self
            .reconciler
            .ids
            .vips
            .get(vip)
            .ok_or_else(|| CoreError::NotFound(format!("unknown VIP {vip:?}")))?;
        let (entries, total) = self.dp.flows(id, limit).map_err(|e| CoreError::Failed(e.to_string()))?;
        let by_id = self.backend_addresses();
        let flows = entries
            .iter()
            .map(|(k, f)| types::FlowRow {
                client: key_src(k).to_string(),
                backend: by_id.get(&f.backend_id).cloned().unwrap_or_else(|| "?".into()),
                nat_port: u16::from_be(f.snat_port_be),
                closing: f.flags & lb_common::FLOW_F_CLOSED != 0,
            })
            .collect();
        Ok(types::Flows {
            vip: vip.to_string(),
            total,
            flows,
        })
    }

    /// The active pool's table of `vip` read from the kernel (slots from TABLES, addresses
    /// from BACKENDS), with its slot -> address digest.
    pub fn table(&self, vip: &str) -> Result<types::Table, CoreError> {
        let v = self
            .desired
            .vip(vip)
            .ok_or_else(|| CoreError::NotFound(format!("unknown VIP {vip:?}")))?;
        let info = self.reconciler.vip_info(vip).map(|(_, i)| *i).unwrap_or_default();
        let ring = self.reconciler.limits.ring_size;
        let failed = |e: crate::dataplane::DataplaneError| CoreError::Failed(e.to_string());
        let slots = if info.table_current == 0 {
            vec![0; ring as usize]
        } else {
            self.dp.read_table(info.table_current, ring).map_err(failed)?
        };
        let mut by_id: BTreeMap<u32, Option<SocketAddr>> = BTreeMap::new();
        let mut digest = Fnv64::default();
        let mut counts = BTreeMap::new();
        for id in slots {
            let addr = match by_id.get(&id) {
                Some(a) => *a,
                None => {
                    let a = if id == 0 {
                        None
                    } else {
                        let b = self.dp.read_backend(id).map_err(failed)?;
                        Some(backend_socket_addr(&b))
                    };
                    by_id.insert(id, a);
                    a
                }
            };
            match addr {
                Some(a) => {
                    match a.ip() {
                        std::net::IpAddr::V4(ip) => digest.write(&ip.octets()),
                        std::net::IpAddr::V6(ip) => digest.write(&ip.octets()),
                    }
                    digest.write(&a.port().to_be_bytes());
                    *counts.entry(a.to_string()).or_insert(0) += 1;
                }
                None => {
                    digest.write(&[0]);
                    *counts.entry("none".to_string()).or_insert(0) += 1;
                }
            }
        }
        Ok(types::Table {
            vip: vip.to_string(),
            pool: v.active.clone(),
            mode: format!("{:?}", v.mode).to_lowercase(),
            ring_size: ring,
            digest: format!("{:016x}", digest.0),
            slots: counts,
        })
    }

    /// The backend a flow from `src` reaches now: its connection-table entry, else the
    /// data path's own selection over the tables as the agent wrote them.
    pub fn trace(&self, vip: &str, src: SocketAddr) -> Result<types::Trace, CoreError> {
        let v = self
            .desired
            .vip(vip)
            .ok_or_else(|| CoreError::NotFound(format!("unknown VIP {vip:?}")))?;
        if src.is_ipv4() != v.address.is_ipv4() {
            return Err(CoreError::Rejected(format!("{src} is not the VIP's address family")));
        }
        let key = FlowKey {
            src_be: addr_be(src.ip()),
            dst_be: addr_be(v.address.ip()),
            sport_be: src.port().to_be(),
            dport_be: v.address.port().to_be(),
            proto: vip_key(v).proto,
            family: family(src.ip()),
            _pad: [0; 2],
        };
        let by_id = self.backend_addresses();
        if let Ok(Some(flow)) = self.dp.flow(&key) {
            return Ok(types::Trace {
                vip: vip.to_string(),
                source: src.to_string(),
                existing_flow: true,
                pool: None,
                slot: None,
                backend: by_id.get(&flow.backend_id).cloned(),
                scheduler: Some(v.scheduler.name().to_string()),
                candidates: Vec::new(),
            });
        }
        let chosen = self.reconciler.select(vip, &key);
        let deploy = self.desired.deploy.get(vip);
        let pool = match chosen.map(|c| c.pool) {
            Some(PoolChoice::Next) => deploy.and_then(|d| {
                d.split
                    .as_ref()
                    .map(|s| s.pool.clone())
                    .or(d.ab.as_ref().map(|a| a.pool.clone()))
            }),
            _ => Some(v.active.clone()),
        };
        let candidates = chosen.map(|c| self.reconciler.candidates(&c)).unwrap_or_default();
        Ok(types::Trace {
            vip: vip.to_string(),
            source: src.to_string(),
            existing_flow: false,
            pool,
            slot: chosen.and_then(|c| c.slot),
            backend: chosen.and_then(|c| by_id.get(&c.backend_id?).cloned()),
            scheduler: Some(v.scheduler.name().to_string()),
            candidates: candidates.iter().filter_map(|id| by_id.get(id).cloned()).collect(),
        })
    }
}

/// Wall-clock milliseconds: canary steps are persisted and outlive the agent.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn key_src(k: &FlowKey) -> SocketAddr {
    let ip: IpAddr = if k.family == lb_common::FAMILY_V4 {
        Ipv4Addr::from(k.src_be[0].to_ne_bytes()).into()
    } else {
        let mut o = [0u8; 16];
        for (i, w) in k.src_be.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        Ipv6Addr::from(o).into()
    };
    SocketAddr::new(ip, u16::from_be(k.sport_be))
}

/// FNV-1a, 64 bits: a digest an operator compares across nodes (not a security hash).
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A kernel BACKENDS entry as IP:PORT.
fn backend_socket_addr(b: &lb_common::Backend) -> SocketAddr {
    let bytes: Vec<u8> = b.addr_be.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = if b.family == lb_common::FAMILY_V4 {
        std::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&bytes);
        std::net::IpAddr::from(o)
    };
    SocketAddr::new(ip, u16::from_be(b.port_be))
}
