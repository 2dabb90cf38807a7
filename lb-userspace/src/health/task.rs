//! Runs the checks: one task per checked backend (concurrency bounded by a semaphore, so
//! thousands of backends do not open thousands of sockets at once), and a supervisor that
//! follows config changes, drives slow start and passive observation, and reconciles the
//! data path when health changes.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::{info, warn};

use super::{HealthConfig, HealthState, jittered, probe::probe};
use crate::{api::Shared, state::backend_key};

/// Probes in flight at once, whatever the number of backends.
const MAX_CONCURRENT_PROBES: usize = 256;

/// A checked backend's health as the agent keeps it.
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
            {
                let mut c = core.lock().await;
                c.health.retain(|k, _| wanted.contains_key(k));
                let now = Instant::now();
                for (key, (vip, addr, cfg)) in &wanted {
                    let fresh = !c.health.contains_key(key);
                    let entry = c.health.entry(key.clone()).or_insert_with(|| BackendHealth {
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
                if last_passive.elapsed() >= Duration::from_secs(1) {
                    last_passive = Instant::now();
                    passive_look(&mut c);
                }
                c.sync_observed();
            }
            first = false;
            for (key, (_, addr, cfg)) in wanted {
                if let std::collections::hash_map::Entry::Vacant(slot) = probes.entry(key.clone()) {
                    let handle = tokio::spawn(probe_loop(core.clone(), sem.clone(), key, addr, cfg.clone()));
                    slot.insert((handle, cfg));
                }
            }
        }
    })
}

/// Backends that have health settings (pool override, else the VIP's).
async fn wanted_checks(core: &Shared) -> BTreeMap<String, (String, SocketAddr, HealthConfig)> {
    let c = core.lock().await;
    let mut out = BTreeMap::new();
    for v in &c.desired.config.vips {
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

async fn probe_loop(core: Shared, sem: Arc<Semaphore>, key: String, addr: SocketAddr, cfg: HealthConfig) {
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
        let delay = {
            let mut c = core.lock().await;
            let Some(entry) = c.health.get_mut(&key) else { return };
            let reason = result.reason.clone();
            if let Some(up) = entry.state.observe(result, Instant::now(), cfg.rise, cfg.fall) {
                if up {
                    info!(vip = %entry.vip, backend = %addr, %reason, "backend UP: takes new flows again");
                } else {
                    warn!(vip = %entry.vip, backend = %addr, %reason, "backend DOWN: no new flows, its flows are re-chosen");
                }
                let delay = entry.state.next_delay(&cfg);
                c.sync_observed();
                delay
            } else {
                entry.state.next_delay(&cfg)
            }
        };
        tokio::time::sleep(jittered(delay, cfg.jitter_pct, &mut rng)).await;
    }
}

/// HAProxy's `observe layer4`: resets from the backend and connection attempts it never
/// answered, per second; at `error_limit` the backend is marked down.
fn passive_look(c: &mut crate::agent::Core) {
    let now = Instant::now();
    let ids = c.reconciler.ids.backends.clone();
    let mut marked = Vec::new();
    for (key, h) in c.health.iter_mut() {
        let Some(&id) = ids.get(key) else { continue };
        let Ok(counters) = c.dp.backend_counters(id) else {
            continue;
        };
        let current = (counters.backend_resets, counters.new_flows, counters.answered_flows);
        if let Some((r0, n0, a0)) = h.passive
            && h.cfg.observe
        {
            let errors = (current.0 - r0) + (current.1 - n0).saturating_sub(current.2 - a0);
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
