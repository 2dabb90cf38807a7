//! The rolling rollout: per batch of a pool's backends, drain, wait for 0 live flows, run
//! the operator's hook, return to ready, wait until healthy. Driven from the CLI (the hook
//! runs where the operator is) through [`RolloutApi`]; the steps and their checks are here,
//! tested without HTTP.

use std::time::{Duration, Instant};

use crate::api::types::{AdminState, Health, Status};

/// What a rollout needs from the agent and the host.
pub trait RolloutApi {
    type Error;
    fn status(&mut self) -> Result<Status, Self::Error>;
    fn set_state(&mut self, address: &str, state: AdminState) -> Result<(), Self::Error>;
    /// Runs the hook for one backend; Err says why it failed.
    fn run_hook(&mut self, address: &str) -> Result<(), String>;
    fn sleep(&mut self, d: Duration);
    /// Where batch `at.0` of `at.1` (1-based) is now; called on every poll.
    fn progress(&mut self, _at: (usize, usize), _group: &[String], _phase: Phase) {}
}

/// A batch's phase, for progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Drained; waiting for its live flows (None: unknown) to reach 0.
    Drain(Option<u64>),
    /// Running the hook.
    Hook,
    /// Back to ready; waiting until healthy.
    Ready,
    Healthy,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Drain(_) => "drain",
            Phase::Hook => "hook",
            Phase::Ready => "ready",
            Phase::Healthy => "healthy",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RolloutError<E> {
    /// The agent refused or could not be reached.
    Api(E),
    /// The VIP, the pool or a hook: nothing more is touched.
    Rejected(String),
    /// A batch kept live flows past the drain timeout.
    TimedOut(String),
}

#[derive(Debug, Clone)]
pub struct RolloutPlan {
    pub vip: String,
    pub pool: String,
    pub batch: usize,
    pub drain_timeout: Duration,
    pub healthy_timeout: Duration,
    pub poll: Duration,
}

/// The pool's backends in batches of `batch` (at least 1).
pub fn batches(status: &Status, vip: &str, pool: &str, batch: usize) -> Result<Vec<Vec<String>>, String> {
    let v = status.vip(vip).ok_or_else(|| format!("unknown VIP {vip:?}"))?;
    let p = v
        .pool(pool)
        .ok_or_else(|| format!("VIP {vip:?} has no pool {pool:?}"))?;
    let addrs: Vec<String> = p.backends.iter().map(|b| b.address.clone()).collect();
    Ok(addrs.chunks(batch.max(1)).map(|c| c.to_vec()).collect())
}

/// Live flows on a group of backends; None (unknown) unless every count is known.
pub fn live_flows(status: &Status, vip: &str, group: &[String]) -> Option<u64> {
    let v = status.vip(vip)?;
    group
        .iter()
        .map(|a| v.backend(a).and_then(|b| b.counters.live_flows))
        .sum()
}

/// Every backend of the group is up (or not checked).
pub fn healthy(status: &Status, vip: &str, group: &[String]) -> bool {
    let Some(v) = status.vip(vip) else { return false };
    group
        .iter()
        .all(|a| v.backend(a).is_some_and(|b| b.health != Health::Down))
}

/// Runs the rollout; returns the backends rolled out, in order.
pub fn run<A: RolloutApi>(api: &mut A, plan: &RolloutPlan) -> Result<Vec<String>, RolloutError<A::Error>> {
    let status = api.status().map_err(RolloutError::Api)?;
    let groups = batches(&status, &plan.vip, &plan.pool, plan.batch).map_err(RolloutError::Rejected)?;
    let mut done: Vec<String> = Vec::new();
    let total = groups.len();
    for (i, group) in groups.into_iter().enumerate() {
        let at = (i + 1, total);
        for a in &group {
            api.set_state(a, AdminState::Drain).map_err(RolloutError::Api)?;
        }
        let start = Instant::now();
        loop {
            let s = api.status().map_err(RolloutError::Api)?;
            // null (the agent could not count) is unknown, never drained.
            let live = live_flows(&s, &plan.vip, &group);
            api.progress(at, &group, Phase::Drain(live));
            if live == Some(0) {
                break;
            }
            if start.elapsed() > plan.drain_timeout {
                let live = live.map_or("an unknown number of".to_string(), |n| n.to_string());
                return Err(RolloutError::TimedOut(format!(
                    "{live} live flows left on {} (rolled out so far: {done:?})",
                    group.join(", ")
                )));
            }
            api.sleep(plan.poll);
        }
        api.progress(at, &group, Phase::Hook);
        for a in &group {
            api.run_hook(a).map_err(|why| {
                RolloutError::Rejected(format!(
                    "{why}; {a} stays drained, the rest untouched (rolled out so far: {done:?})"
                ))
            })?;
        }
        for a in &group {
            api.set_state(a, AdminState::Ready).map_err(RolloutError::Api)?;
        }
        api.progress(at, &group, Phase::Ready);
        let start = Instant::now();
        loop {
            let s = api.status().map_err(RolloutError::Api)?;
            if healthy(&s, &plan.vip, &group) {
                api.progress(at, &group, Phase::Healthy);
                break;
            }
            if start.elapsed() > plan.healthy_timeout {
                return Err(RolloutError::Rejected(format!(
                    "{} never became healthy; the rest untouched (rolled out so far: {done:?})",
                    group.join(", ")
                )));
            }
            api.sleep(plan.poll);
        }
        done.extend(group);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{BackendStatus, Counters, DataState, PoolCounters, PoolRole, PoolStatus, VipStatus};

    /// A pool of three backends; a drained backend's flows end after `drain_polls` looks.
    struct Fake {
        states: Vec<(String, AdminState, u64)>,
        drain_polls: u64,
        failing_hook: Option<String>,
        log: Vec<String>,
        phases: Vec<String>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                states: (1..=3)
                    .map(|i| (format!("10.0.0.{i}:80"), AdminState::Ready, 5))
                    .collect(),
                drain_polls: 2,
                failing_hook: None,
                log: Vec::new(),
                phases: Vec::new(),
            }
        }
    }

    impl RolloutApi for Fake {
        type Error = String;

        fn status(&mut self) -> Result<Status, String> {
            for s in &mut self.states {
                if s.1 == AdminState::Drain && s.2 > 0 {
                    s.2 = s.2.saturating_sub(5 / self.drain_polls.max(1));
                }
            }
            let backends = self
                .states
                .iter()
                .map(|(a, admin, live)| BackendStatus {
                    id: None,
                    address: a.clone(),
                    weight: 100,
                    admin: *admin,
                    health: Health::Unchecked,
                    check: None,
                    state: DataState::Ready,
                    counters: Counters {
                        live_flows: Some(*live),
                        ..Counters::default()
                    },
                })
                .collect();
            Ok(Status {
                vips: vec![VipStatus {
                    name: "web".into(),
                    address: "10.0.0.100:80".into(),
                    protocol: crate::config::Protocol::Tcp,
                    mode: crate::config::Mode::Nat,
                    scheduler: crate::config::Scheduler::Maglev,
                    active: "blue".into(),
                    split: None,
                    ab: None,
                    previous_active: None,
                    canary: None,
                    pools: vec![PoolStatus {
                        name: "blue".into(),
                        active: true,
                        role: PoolRole::Active,
                        all_down_fail_open: false,
                        backends,
                        counters: PoolCounters::default(),
                    }],
                    counters: Counters::default(),
                }],
                ..Status::default()
            })
        }

        fn set_state(&mut self, address: &str, state: AdminState) -> Result<(), String> {
            self.log.push(format!("{address} {state:?}"));
            let s = self
                .states
                .iter_mut()
                .find(|s| s.0 == address)
                .ok_or("no such backend")?;
            s.1 = state;
            Ok(())
        }

        fn run_hook(&mut self, address: &str) -> Result<(), String> {
            self.log.push(format!("{address} hook"));
            if self.failing_hook.as_deref() == Some(address) {
                return Err("hook failed".into());
            }
            Ok(())
        }

        fn sleep(&mut self, _: Duration) {}

        fn progress(&mut self, at: (usize, usize), group: &[String], phase: Phase) {
            let line = format!("{}/{} {} {}", at.0, at.1, group.join(","), phase.name());
            if self.phases.last() != Some(&line) {
                self.phases.push(line);
            }
        }
    }

    fn plan(batch: usize, drain_timeout: Duration) -> RolloutPlan {
        RolloutPlan {
            vip: "web".into(),
            pool: "blue".into(),
            batch,
            drain_timeout,
            healthy_timeout: Duration::from_secs(1),
            poll: Duration::ZERO,
        }
    }

    #[test]
    fn each_batch_drains_to_zero_before_its_hook_runs_then_returns_to_ready() {
        let mut api = Fake::new();
        let done = run(&mut api, &plan(2, Duration::from_secs(5))).unwrap();
        assert_eq!(done, ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        assert_eq!(
            api.log[..6],
            [
                "10.0.0.1:80 Drain",
                "10.0.0.2:80 Drain",
                "10.0.0.1:80 hook",
                "10.0.0.2:80 hook",
                "10.0.0.1:80 Ready",
                "10.0.0.2:80 Ready"
            ]
        );
        assert_eq!(
            api.phases,
            [
                "1/2 10.0.0.1:80,10.0.0.2:80 drain",
                "1/2 10.0.0.1:80,10.0.0.2:80 hook",
                "1/2 10.0.0.1:80,10.0.0.2:80 ready",
                "1/2 10.0.0.1:80,10.0.0.2:80 healthy",
                "2/2 10.0.0.3:80 drain",
                "2/2 10.0.0.3:80 hook",
                "2/2 10.0.0.3:80 ready",
                "2/2 10.0.0.3:80 healthy",
            ],
            "every phase of every batch is reported, in order"
        );
    }

    #[test]
    fn a_failing_hook_leaves_its_backend_drained_and_the_rest_untouched() {
        let mut api = Fake::new();
        api.failing_hook = Some("10.0.0.2:80".into());
        let e = run(&mut api, &plan(1, Duration::from_secs(5))).unwrap_err();
        assert!(
            matches!(&e, RolloutError::Rejected(m) if m.contains("10.0.0.2:80 stays drained")),
            "{e:?}"
        );
        assert!(!api.log.iter().any(|l| l.starts_with("10.0.0.3")), "{:?}", api.log);
    }

    #[test]
    fn flows_that_never_end_time_the_rollout_out() {
        let mut api = Fake::new();
        api.drain_polls = u64::MAX;
        let e = run(&mut api, &plan(1, Duration::from_millis(20))).unwrap_err();
        assert!(matches!(e, RolloutError::TimedOut(_)), "{e:?}");
        assert!(batches(&api.status().unwrap(), "web", "green", 1).is_err());
    }
}
