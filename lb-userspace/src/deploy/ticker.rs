//! The agent side of stepped canaries: each step holds for its interval while the canary
//! pool stays healthy; too many failing backends roll it back to 0%; reaching 100% makes it
//! a switch. The state is part of the persisted desired state, so a restarted agent resumes
//! the canary where it was.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{
    api::Shared,
    state::{CanaryOutcome, Desired, Split, backend_key},
};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Applies step `step` of the VIP's canary to `d` (split, or the final switch).
pub fn enter_step(d: &mut Desired, vip: &str, step: usize) {
    let Some(dep) = d.deploy.get_mut(vip) else { return };
    let Some(c) = dep.canary.as_mut() else { return };
    c.step = step;
    c.step_started_ms = now_ms();
    let pct = c.steps[step];
    if pct >= 100.0 {
        let pool = c.pool.clone();
        c.outcome = CanaryOutcome::Done;
        dep.split = None;
        let old = d.config.vips.iter().find(|v| v.name == vip).map(|v| v.active.clone());
        for v in d.config.vips.iter_mut().filter(|v| v.name == vip) {
            v.active = pool.clone();
        }
        if let Some(dep) = d.deploy.get_mut(vip) {
            dep.previous_active = old;
        }
    } else {
        dep.split = Some(Split {
            pool: c.pool.clone(),
            bp: (pct * 100.0).round() as u32,
            by: c.by,
        });
    }
}

pub fn spawn(core: Shared) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let mut c = core.lock().await;
            let mut next = c.desired.clone();
            let mut changed = Vec::new();
            for (vip, dep) in &c.desired.deploy {
                let Some(can) = dep.canary.as_ref().filter(|k| k.outcome == CanaryOutcome::Running) else {
                    continue;
                };
                let Some(v) = c.desired.vip(vip) else { continue };
                let failing: Vec<String> = v
                    .pools
                    .iter()
                    .filter(|p| p.name == can.pool)
                    .flat_map(|p| p.backends.iter())
                    .filter(|b| c.desired.observed.down.contains(&backend_key(vip, b.address)))
                    .map(|b| b.address.to_string())
                    .collect();
                if failing.len() as u32 > can.max_failing {
                    let reason = format!(
                        "{} backend(s) of {} failing health checks: {}",
                        failing.len(),
                        can.pool,
                        failing.join(", ")
                    );
                    warn!(%vip, %reason, "canary rolled back to 0%");
                    if let Some(d) = next.deploy.get_mut(vip) {
                        d.split = None;
                        if let Some(k) = d.canary.as_mut() {
                            k.outcome = CanaryOutcome::RolledBack(reason);
                        }
                    }
                    changed.push(vip.clone());
                } else if now_ms().saturating_sub(can.step_started_ms) >= can.interval_ms {
                    if can.step + 1 < can.steps.len() {
                        info!(%vip, percent = can.steps[can.step + 1], "canary step");
                        enter_step(&mut next, vip, can.step + 1);
                    } else if let Some(k) = next.deploy.get_mut(vip).and_then(|d| d.canary.as_mut()) {
                        info!(%vip, "canary completed at its last step");
                        k.outcome = CanaryOutcome::Done;
                    }
                    changed.push(vip.clone());
                }
            }
            if !changed.is_empty()
                && let Err(e) = c.set_desired(next)
            {
                tracing::error!("canary step: {e}");
            }
        }
    })
}
