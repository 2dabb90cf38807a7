//! `--wait`: follow a drain or a canary through the status until it ends, reporting each
//! change of state through [`Progress`]; a gated canary's gates run here, on the
//! operator's (or the CI runner's) host.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    client::{self, ClientError, Endpoint},
    gate::Gate,
    progress::{Event, Progress},
};
use crate::api::types::{CanaryGateReq, CanaryOutcome, CanaryStatus, ChangeReport, Status};

/// How long a wait keeps asking an agent that went away (a restart, an upgrade: the data
/// path and the deployment carry on without it) before it gives up with exit 2.
const AGENT_GONE: Duration = Duration::from_secs(30);

/// The status; while the agent is unreachable, asks again for up to [`AGENT_GONE`],
/// saying so once.
fn status(socket: &Endpoint, progress: &mut Progress) -> Result<Status, ClientError> {
    let mut gone: Option<Instant> = None;
    loop {
        match client::call(socket, "GET", "/v1/status", None::<&()>) {
            Err(ClientError::Unreachable(why)) => {
                let since = *gone.get_or_insert_with(|| {
                    progress.note(&format!(
                        "agent unreachable ({why}); asking again for {}s",
                        AGENT_GONE.as_secs()
                    ));
                    Instant::now()
                });
                if since.elapsed() >= AGENT_GONE {
                    return Err(ClientError::Unreachable(why));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Serialize)]
pub struct Drain {
    pub pool: String,
    /// Null: the agent could not count (unknown is not drained).
    pub live_flows_left: Option<u64>,
    pub waited_ms: u64,
}

/// The previous active pool and its live flows (None: unknown).
fn draining(s: &Status, vip: &str) -> Option<(String, Option<u64>)> {
    let v = s.vip(vip)?;
    let prev = v.previous_active.clone()?;
    let live = v.pool(&prev)?.counters.live_flows;
    Some((prev, live))
}

/// Polls the old pool's live flows until they reach 0 or `timeout`.
pub fn drain(socket: &Endpoint, vip: &str, timeout: Duration, progress: &mut Progress) -> Result<Drain, ClientError> {
    let start = Instant::now();
    let (pool, mut live) = draining(&status(socket, progress)?, vip)
        .ok_or_else(|| ClientError::Rejected(format!("VIP {vip:?} has no draining pool")))?;
    loop {
        progress.state(Event::Drain {
            vip: vip.to_string(),
            pool: pool.clone(),
            live_flows: live,
        });
        if live == Some(0) || start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        // The pool may have stopped being the previous one (another switch): then it
        // has nothing left to drain for this wait.
        live = draining(&status(socket, progress)?, vip).map_or(Some(0), |(_, l)| l);
    }
    Ok(Drain {
        pool,
        live_flows_left: live,
        waited_ms: start.elapsed().as_millis() as u64,
    })
}

/// The canary's state word for progress: running, paused, awaiting_gate, done,
/// rolled_back.
fn canary_state(c: &CanaryStatus) -> (&'static str, Option<String>) {
    match &c.outcome {
        CanaryOutcome::Done => ("done", None),
        CanaryOutcome::RolledBack(r) => ("rolled_back", Some(r.clone())),
        CanaryOutcome::Running if c.paused => ("paused", None),
        CanaryOutcome::Running if c.awaiting_gate => ("awaiting_gate", None),
        CanaryOutcome::Running => ("running", None),
    }
}

/// Follows a canary until it is done or rolled back; at the end of each step whose gate
/// the agent waits for, runs `gates` and reports the verdict.
pub fn canary(
    socket: &Endpoint,
    vip: &str,
    gates: &[Gate],
    progress: &mut Progress,
) -> Result<CanaryStatus, ClientError> {
    let mut gated_step: Option<usize> = None;
    loop {
        let c = status(socket, progress)?
            .vip(vip)
            .and_then(|v| v.canary.clone())
            .ok_or_else(|| ClientError::Rejected(format!("VIP {vip:?} has no canary")))?;
        let (state, reason) = canary_state(&c);
        progress.state(Event::Canary {
            vip: vip.to_string(),
            pool: c.pool.clone(),
            step: c.step + 1,
            steps: c.steps.len(),
            percent: c.percent,
            state: state.to_string(),
            reason,
        });
        if c.outcome != CanaryOutcome::Running {
            return Ok(c);
        }
        if c.awaiting_gate && gated_step != Some(c.step) {
            gated_step = Some(c.step);
            let verdict = judge(gates, vip, &c);
            let (passed, detail) = match &verdict {
                Ok(d) => (true, d.clone()),
                Err(d) => (false, d.clone()),
            };
            progress.event(Event::Gate {
                vip: vip.to_string(),
                step: c.step + 1,
                passed,
                detail: detail.clone(),
            });
            let req = CanaryGateReq {
                vip: vip.to_string(),
                step: c.step,
                passed,
                reason: (!passed).then_some(detail),
            };
            // Refused: the canary moved on meanwhile (promoted, rolled back): the next look
            // at the status says how.
            // Unreachable: the agent restarts; the step still awaits its gate and is judged
            // again once the agent is back.
            match client::call::<ChangeReport>(socket, "POST", "/v1/canary/gate", Some(&req)) {
                Ok(_) | Err(ClientError::Rejected(_)) => {}
                Err(ClientError::Unreachable(_)) => gated_step = None,
                Err(e) => return Err(e),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every gate in turn; the first failure decides.
fn judge(gates: &[Gate], vip: &str, c: &CanaryStatus) -> Result<String, String> {
    let mut passed = Vec::new();
    for g in gates {
        passed.push(g.run(vip, c)?);
    }
    Ok(passed.join("; "))
}
