//! Runs the checks: one task per checked backend (concurrency bounded by a semaphore, so
//! thousands of backends do not open thousands of sockets at once), and a supervisor that
//! follows config changes, drives slow start and passive observation. The checks' state is
//! the checker's own; it reports to the core, which reconciles the data path when health
//! changes, and reads the data path's counters only through the core.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{Mutex, Semaphore},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{HealthConfig, HealthState, jittered, probe::probe};
use crate::{
    agent::{Change, HealthReport, Shared},
    state::{Observed, backend_key},
};

/// Probes in flight at once, whatever the number of backends.
const MAX_CONCURRENT_PROBES: usize = 256;

/// Every checked backend's health, by `backend_key`: the checker's own state.
type Checks = Arc<Mutex<BTreeMap<String, BackendHealth>>>;

/// A checked backend's health as the checker keeps it.
pub struct BackendHealth {
    pub vip: String,
    pub address: SocketAddr,
    pub cfg: HealthConfig,
    pub state: HealthState,
    /// (resets, new flows, answered flows) at the last passive look.
    passive: Option<(u64, u64, u64)>,
}

/// Spawns the supervisor; it runs until aborted.
pub fn spawn(core: Shared) -> JoinHandle<()> {
    tokio::spawn(async move {
        let checks: Checks = Arc::default();
        let sem = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let mut probes: HashMap<String, (JoinHandle<()>, HealthConfig)> = HashMap::new();
        let mut first = true;
        let mut last_passive = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let wanted = wanted_checks(&core).await;
            probes.retain(|key, (handle, cfg)| {
                let keep = wanted.get(key).is_some_and(|(_, _, c)| c == cfg);
                if !keep {
                    handle.abort();
                }
                keep
            });
            let passive = if last_passive.elapsed() >= Duration::from_secs(1) {
                last_passive = Instant::now();
                // Backend counters only: no connection-table scan under the lock.
                Some(core.lock().await.counters_unscanned().backends)
            } else {
                None
            };
            {
                let mut c = checks.lock().await;
                c.retain(|k, _| wanted.contains_key(k));
                let now = Instant::now();
                for (key, (vip, addr, cfg)) in &wanted {
                    let fresh = !c.contains_key(key);
                    let entry = c.entry(key.clone()).or_insert_with(|| BackendHealth {
                        vip: vip.clone(),
                        address: *addr,
                        cfg: cfg.clone(),
                        state: HealthState::new(now),
                        passive: None,
                    });
                    entry.cfg = cfg.clone();
                    if fresh && !first {
                        // a backend added at runtime ramps up like one that came back
                        entry.state.up_since = Some(now);
                    }
                }
                if let Some(counters) = passive {
                    passive_look(&mut c, &counters);
                }
            }
            report(&core, &checks).await;
            first = false;
            for (key, (_, addr, cfg)) in wanted {
                if let std::collections::hash_map::Entry::Vacant(slot) = probes.entry(key.clone()) {
                    let handle = tokio::spawn(probe_loop(
                        core.clone(),
                        checks.clone(),
                        sem.clone(),
                        key,
                        addr,
                        cfg.clone(),
                    ));
                    slot.insert((handle, cfg));
                }
            }
        }
    })
}

/// Tells the core what the checks see: each backend's health (for status) and what the
/// data path must know (backends down, slow-start weights), which it reconciles if changed.
async fn report(core: &Shared, checks: &Checks) {
    let now = Instant::now();
    let mut observed = Observed::default();
    let mut reports = BTreeMap::new();
    for (key, h) in checks.lock().await.iter() {
        let slowstart_pct = h.state.slowstart_pct(&h.cfg, now);
        if !h.state.up {
            observed.down.insert(key.clone());
        } else if let Some(pct) = slowstart_pct {
            observed.weight_pct.insert(key.clone(), pct);
        }
        reports.insert(
            key.clone(),
            HealthReport {
                up: h.state.up,
                last: h.state.last.as_ref().map(|r| r.reason.clone()),
                since: h.state.since,
                slowstart_pct,
                checks: h.state.checks,
                failures: h.state.failures,
            },
        );
    }
    let mut c = core.lock().await;
    c.report_health(reports);
    if let Err(e) = c.apply(Change::Observed(observed), false) {
        tracing::error!("applying health changes: {e}");
    }
}

/// Backends that have health settings (pool override, else the VIP's).
async fn wanted_checks(core: &Shared) -> BTreeMap<String, (String, SocketAddr, HealthConfig)> {
    let c = core.lock().await;
    let mut out = BTreeMap::new();
    for v in &c.desired().config.vips {
        for p in &v.pools {
            let Some(cfg) = p.health.as_ref().or(v.health.as_ref()) else {
                continue;
            };
            for b in &p.backends {
                out.insert(
                    backend_key(&v.name, b.address),
                    (v.name.clone(), b.address, cfg.clone()),
                );
            }
        }
    }
    out
}

async fn probe_loop(
    core: Shared,
    checks: Checks,
    sem: Arc<Semaphore>,
    key: String,
    addr: SocketAddr,
    cfg: HealthConfig,
) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ key.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ b as u64);
    // spread the first probes over one interval so they do not synchronise
    tokio::time::sleep(jittered(cfg.interval / 2, 100, &mut rng)).await;
    loop {
        let result = {
            let Ok(_permit) = sem.acquire().await else { return };
            let started = Instant::now();
            let result = probe(&cfg, addr).await;
            crate::metrics::observe_check(&key, addr, &result.reason, started.elapsed());
            result
        };
        let (delay, changed) = {
            let mut c = checks.lock().await;
            let Some(entry) = c.get_mut(&key) else { return };
            let reason = result.reason.clone();
            let changed = entry.state.observe(result, Instant::now(), cfg.rise, cfg.fall);
            match changed {
                Some(true) => info!(vip = %entry.vip, backend = %addr, %reason, "backend UP: takes new flows again"),
                Some(false) => {
                    warn!(vip = %entry.vip, backend = %addr, %reason, "backend DOWN: no new flows, its flows are re-chosen")
                }
                None => {}
            }
            (entry.state.next_delay(&cfg), changed.is_some())
        };
        if changed {
            report(&core, &checks).await;
        }
        tokio::time::sleep(jittered(delay, cfg.jitter_pct, &mut rng)).await;
    }
}

/// HAProxy's `observe layer4`: resets from the backend and connection attempts it never
/// answered, per second; at `error_limit` the backend is marked down.
fn passive_look(checks: &mut BTreeMap<String, BackendHealth>, counters: &BTreeMap<String, lb_common::Counters>) {
    let now = Instant::now();
    let mut marked = Vec::new();
    for (key, h) in checks.iter_mut() {
        let Some(counters) = counters.get(key) else { continue };
        let current = (counters.backend_resets, counters.new_flows, counters.answered_flows);
        if let Some((r0, n0, a0)) = h.passive
            && h.cfg.observe
        {
            let errors = current.0.saturating_sub(r0)
                + current
                    .1
                    .saturating_sub(n0)
                    .saturating_sub(current.2.saturating_sub(a0));
            if errors >= h.cfg.error_limit as u64 && h.state.mark_down(format!("PASSIVE {errors} errors/s"), now) {
                marked.push((h.vip.clone(), h.address, errors));
            }
        }
        h.passive = Some(current);
    }
    for (vip, addr, errors) in marked {
        warn!(%vip, backend = %addr, errors, "backend DOWN by passive observation");
    }
}
