//! Deployments as pure functions over the desired state: switch, split, A/B rules,
//! rollback, and a stepped canary (start, step, abort). Each returns the next desired state
//! and what it changes, or why it is refused; the core applies it in one step.

use std::{net::IpAddr, time::Duration};

use tracing::{info, warn};

use crate::state::{
    AbRules, Canary, CanaryOutcome, Deployment, Desired, Edit, Refused, Split, SplitBy, backend_key, vip_of,
};

/// The VIP's active pool, once `pool` is known to be one of its pools.
fn active_pool(d: &Desired, vip: &str, pool: &str) -> Result<String, Refused> {
    let v = vip_of(d, vip)?;
    if !v.pools.iter().any(|p| p.name == pool) {
        return Err(Refused::NotFound(format!("VIP {vip:?} has no pool {pool:?}")));
    }
    Ok(v.active.clone())
}

fn set_active(d: &mut Desired, vip: &str, pool: &str) {
    for v in d.config.vips.iter_mut().filter(|v| v.name == vip) {
        v.active = pool.to_string();
    }
}

/// Ends a running canary (a manual change took over).
fn stop_canary(d: &mut Deployment, why: &str) {
    if let Some(c) = d.canary.as_mut()
        && c.outcome == CanaryOutcome::Running
    {
        c.outcome = CanaryOutcome::RolledBack(why.to_string());
    }
}

/// Blue/green: all new flows to `pool` in one map write; the old pool keeps its flows.
pub fn switch(d: &Desired, vip: &str, pool: &str) -> Result<Edit, Refused> {
    let old = active_pool(d, vip, pool)?;
    if old == pool {
        return Err(Refused::Invalid(format!(
            "{pool:?} is already the active pool of {vip:?}"
        )));
    }
    let mut next = d.clone();
    set_active(&mut next, vip, pool);
    let dep = next.deploy.entry(vip.to_string()).or_default();
    dep.previous_active = Some(old.clone());
    dep.split = None;
    stop_canary(dep, "superseded by a switch");
    if dep.ab.as_ref().is_some_and(|a| a.pool == pool) {
        dep.ab = None;
    }
    let changes = vec![format!("{vip}: active {old} -> {pool} (new flows); {old} drains")];
    Ok(Edit { next, changes })
}

/// Canary / A-B share: `bp` basis points of new flows to `pool` (0 removes the split).
pub fn split(d: &Desired, vip: &str, pool: &str, bp: u32, by: SplitBy) -> Result<Edit, Refused> {
    if active_pool(d, vip, pool)? == pool {
        return Err(Refused::Invalid(format!(
            "{pool:?} is the active pool: split towards another pool"
        )));
    }
    let mut next = d.clone();
    let dep = next.deploy.entry(vip.to_string()).or_default();
    stop_canary(dep, "superseded by a manual split");
    dep.split = (bp > 0).then(|| Split {
        pool: pool.to_string(),
        bp,
        by,
    });
    let changes = vec![format!(
        "{vip}: {:.2}% of new flows (by {by:?}) to {pool}",
        bp as f64 / 100.0
    )];
    Ok(Edit { next, changes })
}

/// A/B: client networks that always reach `pool` (an empty list removes the rules).
pub fn ab(d: &Desired, vip: &str, pool: &str, networks: Vec<(IpAddr, u8)>) -> Result<Edit, Refused> {
    if active_pool(d, vip, pool)? == pool {
        return Err(Refused::Invalid(format!(
            "{pool:?} is the active pool: A/B rules send clients to another pool"
        )));
    }
    let cidrs: Vec<String> = networks.iter().map(|(n, l)| format!("{n}/{l}")).collect();
    let mut next = d.clone();
    let dep = next.deploy.entry(vip.to_string()).or_default();
    dep.ab = (!networks.is_empty()).then(|| AbRules {
        pool: pool.to_string(),
        networks,
    });
    let changes = vec![format!("{vip}: clients in {cidrs:?} always to {pool}")];
    Ok(Edit { next, changes })
}

/// All new flows back: a split or A/B rules are removed; otherwise the previous active
/// pool becomes active again.
pub fn rollback(d: &Desired, vip: &str) -> Result<Edit, Refused> {
    let active = vip_of(d, vip)?.active.clone();
    let mut next = d.clone();
    let dep = next.deploy.entry(vip.to_string()).or_default();
    stop_canary(dep, "manual rollback");
    let changes = if dep.split.is_some() || dep.ab.is_some() {
        dep.split = None;
        dep.ab = None;
        vec![format!("{vip}: split and A/B rules removed; all new flows to {active}")]
    } else if let Some(prev) = dep.previous_active.take() {
        dep.previous_active = Some(active.clone());
        set_active(&mut next, vip, &prev);
        vec![format!("{vip}: active {active} -> {prev}")]
    } else {
        return Err(Refused::Invalid(format!("VIP {vip:?} has nothing to roll back")));
    };
    Ok(Edit { next, changes })
}

/// What a stepped canary is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPlan {
    pub pool: String,
    /// Ascending percentages in (0, 100]; a step of 100 completes as a switch.
    pub steps: Vec<f64>,
    pub interval: Duration,
    pub max_failing: u32,
    pub by: SplitBy,
    /// A client gates every step (see [`CanaryAction::Gate`]).
    pub gated: bool,
}

/// Starts a stepped canary at its first step (the ticker drives the rest).
pub fn canary_start(d: &Desired, vip: &str, plan: CanaryPlan, now_ms: u64) -> Result<Edit, Refused> {
    if active_pool(d, vip, &plan.pool)? == plan.pool {
        return Err(Refused::Invalid(format!("{:?} is already the active pool", plan.pool)));
    }
    let mut next = d.clone();
    let dep = next.deploy.entry(vip.to_string()).or_default();
    dep.ab = None;
    dep.canary = Some(Canary {
        pool: plan.pool.clone(),
        steps: plan.steps.clone(),
        step: 0,
        interval_ms: plan.interval.as_millis().min(u64::MAX as u128) as u64,
        step_started_ms: 0,
        max_failing: plan.max_failing,
        by: plan.by,
        outcome: CanaryOutcome::Running,
        gated: plan.gated,
        awaiting_gate: false,
        gate_passed: None,
        paused_since_ms: None,
    });
    enter_step(&mut next, vip, 0, now_ms);
    let changes = vec![format!(
        "{vip}: canary to {} in steps {:?} every {}{}",
        plan.pool,
        plan.steps,
        humantime::format_duration(plan.interval),
        if plan.gated { ", each step gated" } else { "" }
    )];
    Ok(Edit { next, changes })
}

/// Applies step `step` of the VIP's canary to `d` (split, or the final switch).
fn enter_step(d: &mut Desired, vip: &str, step: usize, now_ms: u64) {
    let Some(dep) = d.deploy.get_mut(vip) else { return };
    let Some(c) = dep.canary.as_mut() else { return };
    let Some(&pct) = c.steps.get(step) else { return };
    c.step = step;
    c.step_started_ms = now_ms;
    c.awaiting_gate = false;
    if pct >= 100.0 {
        complete(d, vip);
    } else {
        dep.split = Some(Split {
            pool: c.pool.clone(),
            bp: (pct * 100.0).round() as u32,
            by: c.by,
        });
    }
}

/// The canary's pool becomes the active pool (a switch): the canary is done.
fn complete(d: &mut Desired, vip: &str) {
    let Some(dep) = d.deploy.get_mut(vip) else { return };
    let Some(c) = dep.canary.as_mut() else { return };
    let pool = c.pool.clone();
    c.outcome = CanaryOutcome::Done;
    c.awaiting_gate = false;
    c.paused_since_ms = None;
    dep.split = None;
    let old = d.vip(vip).map(|v| v.active.clone());
    set_active(d, vip, &pool);
    if let Some(dep) = d.deploy.get_mut(vip) {
        dep.previous_active = old;
    }
}

/// Rolls a canary back to 0% for `reason`.
fn roll_back(d: &mut Desired, vip: &str, reason: String) {
    if let Some(dep) = d.deploy.get_mut(vip) {
        dep.split = None;
        if let Some(k) = dep.canary.as_mut() {
            k.outcome = CanaryOutcome::RolledBack(reason);
            k.awaiting_gate = false;
        }
    }
}

/// What an operator (or a gating client) does to a running canary.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryAction {
    /// Hold the current step until resumed (health checks still roll it back).
    Pause,
    /// Continue: the step keeps the part of its interval that was left.
    Resume,
    /// Skip the remaining steps: the pool becomes active now.
    Promote,
    /// The gate's verdict on step `step` (0-based): Ok lets the canary go on once the
    /// step's interval is over; Err rolls it back with the reason.
    Gate { step: usize, verdict: Result<(), String> },
}

/// Pauses, resumes, promotes or gates the VIP's running canary.
pub fn canary_control(d: &Desired, vip: &str, action: CanaryAction, now_ms: u64) -> Result<Edit, Refused> {
    vip_of(d, vip)?;
    let can = d
        .deploy
        .get(vip)
        .and_then(|dep| dep.canary.as_ref())
        .filter(|c| c.outcome == CanaryOutcome::Running)
        .ok_or_else(|| Refused::Invalid(format!("VIP {vip:?} has no running canary")))?;
    let pct = |step: usize| can.steps.get(step).copied().unwrap_or(0.0);
    let mut next = d.clone();
    let Some(c) = next.deploy.get_mut(vip).and_then(|dep| dep.canary.as_mut()) else {
        return Err(Refused::Invalid(format!("VIP {vip:?} has no running canary")));
    };
    let change = match action {
        CanaryAction::Pause => {
            if c.paused_since_ms.is_some() {
                return Err(Refused::Invalid(format!("the canary of {vip:?} is paused already")));
            }
            c.paused_since_ms = Some(now_ms);
            format!("{vip}: canary paused at {}%", pct(c.step))
        }
        CanaryAction::Resume => {
            let Some(since) = c.paused_since_ms.take() else {
                return Err(Refused::Invalid(format!("the canary of {vip:?} is not paused")));
            };
            c.step_started_ms = c.step_started_ms.saturating_add(now_ms.saturating_sub(since));
            format!("{vip}: canary resumed at {}%", pct(c.step))
        }
        CanaryAction::Promote => {
            let pool = c.pool.clone();
            complete(&mut next, vip);
            format!("{vip}: canary promoted: {pool} takes all new flows")
        }
        CanaryAction::Gate { step, verdict } => {
            if step != c.step {
                return Err(Refused::Invalid(format!(
                    "the canary of {vip:?} is at step {}, not {}: a late gate verdict is ignored",
                    c.step + 1,
                    step + 1
                )));
            }
            match verdict {
                Ok(()) => {
                    c.gate_passed = Some(step);
                    format!("{vip}: canary gate passed at {}%", pct(step))
                }
                Err(why) => {
                    let reason = format!("gate failed at step {} ({}%): {why}", step + 1, pct(step));
                    warn!(%vip, %reason, "canary rolled back to 0%");
                    let change = format!("{vip}: canary rolled back: {reason}");
                    roll_back(&mut next, vip, reason);
                    change
                }
            }
        }
    };
    Ok(Edit {
        next,
        changes: vec![change],
    })
}

/// One look at every running canary at `now_ms`: too many failing backends in its pool
/// roll it back to 0%; a step whose interval is over gives way to the next (or completes
/// the canary). None when nothing changes.
pub fn canary_tick(d: &Desired, now_ms: u64) -> Option<Edit> {
    let mut next = d.clone();
    let mut changes = Vec::new();
    for (vip, dep) in &d.deploy {
        let Some(can) = dep.canary.as_ref().filter(|k| k.outcome == CanaryOutcome::Running) else {
            continue;
        };
        let Some(v) = d.vip(vip) else { continue };
        let failing: Vec<String> = v
            .pools
            .iter()
            .filter(|p| p.name == can.pool)
            .flat_map(|p| p.backends.iter())
            .filter(|b| d.observed.down.contains(&backend_key(vip, b.address)))
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
            changes.push(format!("{vip}: canary rolled back: {reason}"));
            roll_back(&mut next, vip, reason);
        } else if can.paused_since_ms.is_some() {
            // Paused: the step holds (health checks above still roll it back).
        } else if now_ms.saturating_sub(can.step_started_ms) >= can.interval_ms {
            if can.gated && can.gate_passed != Some(can.step) {
                if !can.awaiting_gate {
                    changes.push(format!(
                        "{vip}: canary step {}% held for its gate",
                        can.steps.get(can.step).copied().unwrap_or(0.0)
                    ));
                    if let Some(k) = next.deploy.get_mut(vip).and_then(|d| d.canary.as_mut()) {
                        k.awaiting_gate = true;
                    }
                }
            } else if can.step + 1 < can.steps.len() {
                info!(%vip, percent = can.steps[can.step + 1], "canary step");
                changes.push(format!("{vip}: canary step {}%", can.steps[can.step + 1]));
                enter_step(&mut next, vip, can.step + 1, now_ms);
            } else if let Some(k) = next.deploy.get_mut(vip).and_then(|d| d.canary.as_mut()) {
                info!(%vip, "canary completed at its last step");
                changes.push(format!("{vip}: canary completed"));
                k.outcome = CanaryOutcome::Done;
                k.awaiting_gate = false;
            }
        }
    }
    (!changes.is_empty()).then_some(Edit { next, changes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::parse, state::fixture::CFG};

    /// The shared fixture with a second green backend.
    fn desired() -> Desired {
        let text = CFG.replace(
            "{ address = \"10.0.2.1:80\" }",
            "{ address = \"10.0.2.1:80\" }, { address = \"10.0.2.2:80\" }",
        );
        Desired::new(parse(&text, "t.toml").unwrap())
    }

    fn dep(e: &Edit) -> &Deployment {
        &e.next.deploy["web"]
    }

    fn plan(steps: &[f64], max_failing: u32) -> CanaryPlan {
        CanaryPlan {
            pool: "green".into(),
            steps: steps.to_vec(),
            interval: Duration::from_secs(10),
            max_failing,
            by: SplitBy::Flow,
            gated: false,
        }
    }

    #[test]
    fn switch_makes_the_pool_active_and_remembers_the_old_one() {
        let e = switch(&desired(), "web", "green").unwrap();
        assert_eq!(e.next.vip("web").unwrap().active, "green");
        assert_eq!(dep(&e).previous_active.as_deref(), Some("blue"));
        assert!(matches!(switch(&e.next, "web", "green"), Err(Refused::Invalid(_))));
        assert!(matches!(switch(&desired(), "web", "red"), Err(Refused::NotFound(_))));
        assert!(matches!(switch(&desired(), "api", "green"), Err(Refused::NotFound(_))));
    }

    #[test]
    fn rollback_removes_a_split_first_then_returns_to_the_previous_pool() {
        let d = desired();
        assert!(rollback(&d, "web").is_err(), "nothing to roll back");
        let s = split(&d, "web", "green", 1000, SplitBy::Flow).unwrap();
        assert_eq!(dep(&s).split.as_ref().unwrap().bp, 1000);
        let r = rollback(&s.next, "web").unwrap();
        assert_eq!(dep(&r).split, None);
        assert_eq!(r.next.vip("web").unwrap().active, "blue");
        let sw = switch(&d, "web", "green").unwrap();
        let back = rollback(&sw.next, "web").unwrap();
        assert_eq!(back.next.vip("web").unwrap().active, "blue");
        assert_eq!(dep(&back).previous_active.as_deref(), Some("green"));
    }

    #[test]
    fn split_and_ab_refuse_the_active_pool_and_an_empty_rule_list_removes_the_rules() {
        let d = desired();
        assert!(split(&d, "web", "blue", 100, SplitBy::Flow).is_err());
        assert!(ab(&d, "web", "blue", vec![]).is_err());
        let a = ab(&d, "web", "green", vec![("10.1.0.0".parse().unwrap(), 16)]).unwrap();
        assert_eq!(dep(&a).ab.as_ref().unwrap().networks.len(), 1);
        assert_eq!(dep(&ab(&a.next, "web", "green", vec![]).unwrap()).ab, None);
        let zero = split(&d, "web", "green", 0, SplitBy::Client).unwrap();
        assert_eq!(dep(&zero).split, None, "0% removes the split");
    }

    #[test]
    fn a_canary_holds_each_step_for_its_interval_then_completes_as_a_switch() {
        let start = canary_start(&desired(), "web", plan(&[10.0, 50.0, 100.0], 0), 1_000).unwrap();
        assert_eq!(dep(&start).split.as_ref().unwrap().bp, 1000);
        assert_eq!(
            canary_tick(&start.next, 10_999),
            None,
            "the step holds for its interval"
        );
        let step = canary_tick(&start.next, 11_000).unwrap();
        assert_eq!(dep(&step).split.as_ref().unwrap().bp, 5000);
        let done = canary_tick(&step.next, 21_000).unwrap();
        assert_eq!(done.next.vip("web").unwrap().active, "green");
        assert_eq!(dep(&done).split, None);
        assert_eq!(dep(&done).canary.as_ref().unwrap().outcome, CanaryOutcome::Done);
        assert_eq!(canary_tick(&done.next, 99_000), None, "a finished canary is left alone");
    }

    #[test]
    fn too_many_failing_backends_roll_a_canary_back_to_zero() {
        let start = canary_start(&desired(), "web", plan(&[10.0, 100.0], 1), 0).unwrap();
        let mut d = start.next.clone();
        d.observed
            .down
            .insert(backend_key("web", "10.0.2.1:80".parse().unwrap()));
        assert!(
            canary_tick(&d, 1).is_none(),
            "one failing backend is within max_failing"
        );
        d.observed
            .down
            .insert(backend_key("web", "10.0.2.2:80".parse().unwrap()));
        let back = canary_tick(&d, 2).unwrap();
        assert_eq!(dep(&back).split, None);
        assert_eq!(back.next.vip("web").unwrap().active, "blue");
        assert!(matches!(
            dep(&back).canary.as_ref().unwrap().outcome,
            CanaryOutcome::RolledBack(_)
        ));
    }

    #[test]
    fn a_manual_change_ends_a_running_canary() {
        let start = canary_start(&desired(), "web", plan(&[10.0, 100.0], 0), 0).unwrap();
        let s = split(&start.next, "web", "green", 2000, SplitBy::Flow).unwrap();
        assert!(matches!(
            dep(&s).canary.as_ref().unwrap().outcome,
            CanaryOutcome::RolledBack(_)
        ));
        assert_eq!(canary_tick(&s.next, 1_000_000), None);
    }

    fn gated(steps: &[f64]) -> CanaryPlan {
        CanaryPlan {
            gated: true,
            ..plan(steps, 0)
        }
    }

    fn canary(e: &Edit) -> &Canary {
        dep(e).canary.as_ref().unwrap()
    }

    #[test]
    fn a_gated_step_holds_past_its_interval_until_its_gate_passes() {
        let start = canary_start(&desired(), "web", gated(&[10.0, 50.0, 100.0]), 0).unwrap();
        let held = canary_tick(&start.next, 10_000).unwrap();
        assert!(canary(&held).awaiting_gate, "{:?}", held.changes);
        assert_eq!(dep(&held).split.as_ref().unwrap().bp, 1000, "the step holds");
        assert_eq!(canary_tick(&held.next, 60_000), None, "still held, nothing new to say");
        let late = CanaryAction::Gate {
            step: 1,
            verdict: Ok(()),
        };
        assert!(
            canary_control(&held.next, "web", late, 60_000).is_err(),
            "a verdict for another step"
        );
        let ok = CanaryAction::Gate {
            step: 0,
            verdict: Ok(()),
        };
        let passed = canary_control(&held.next, "web", ok, 60_000).unwrap();
        let step = canary_tick(&passed.next, 60_100).unwrap();
        assert_eq!(dep(&step).split.as_ref().unwrap().bp, 5000);
        assert!(!canary(&step).awaiting_gate);
        assert_eq!(canary_tick(&step.next, 65_000), None, "the next step's interval runs");
        let held = canary_tick(&step.next, 70_100).unwrap();
        assert!(canary(&held).awaiting_gate, "the next step needs its own gate");
    }

    #[test]
    fn a_failing_gate_rolls_the_canary_back_to_zero_with_its_reason() {
        let start = canary_start(&desired(), "web", gated(&[10.0, 100.0]), 0).unwrap();
        let held = canary_tick(&start.next, 10_000).unwrap();
        let fail = CanaryAction::Gate {
            step: 0,
            verdict: Err("error rate 5%".into()),
        };
        let back = canary_control(&held.next, "web", fail, 10_100).unwrap();
        assert_eq!(dep(&back).split, None);
        assert_eq!(back.next.vip("web").unwrap().active, "blue");
        assert!(
            matches!(&canary(&back).outcome, CanaryOutcome::RolledBack(r) if r.contains("gate failed at step 1 (10%): error rate 5%")),
            "{:?}",
            canary(&back).outcome
        );
        assert!(
            canary_control(&back.next, "web", CanaryAction::Promote, 0).is_err(),
            "not running"
        );
    }

    #[test]
    fn pause_holds_the_step_resume_keeps_what_was_left_and_promote_switches() {
        let start = canary_start(&desired(), "web", plan(&[10.0, 50.0, 100.0], 0), 0).unwrap();
        let paused = canary_control(&start.next, "web", CanaryAction::Pause, 4_000).unwrap();
        assert!(canary_control(&paused.next, "web", CanaryAction::Pause, 4_000).is_err());
        assert_eq!(canary_tick(&paused.next, 50_000), None, "a paused step holds");
        let resumed = canary_control(&paused.next, "web", CanaryAction::Resume, 50_000).unwrap();
        assert!(canary_control(&resumed.next, "web", CanaryAction::Resume, 50_000).is_err());
        // 4 s of the 10 s interval had run: 6 s are left.
        assert_eq!(canary_tick(&resumed.next, 55_999), None);
        let step = canary_tick(&resumed.next, 56_000).unwrap();
        assert_eq!(dep(&step).split.as_ref().unwrap().bp, 5000);
        let promoted = canary_control(&step.next, "web", CanaryAction::Promote, 56_100).unwrap();
        assert_eq!(promoted.next.vip("web").unwrap().active, "green");
        assert_eq!(dep(&promoted).split, None);
        assert_eq!(dep(&promoted).previous_active.as_deref(), Some("blue"));
        assert_eq!(canary(&promoted).outcome, CanaryOutcome::Done);
    }

    #[test]
    fn a_paused_canary_still_rolls_back_on_failing_backends() {
        let start = canary_start(&desired(), "web", plan(&[10.0, 100.0], 0), 0).unwrap();
        let mut d = canary_control(&start.next, "web", CanaryAction::Pause, 1).unwrap().next;
        d.observed
            .down
            .insert(backend_key("web", "10.0.2.1:80".parse().unwrap()));
        let back = canary_tick(&d, 2).unwrap();
        assert_eq!(dep(&back).split, None);
    }
}
