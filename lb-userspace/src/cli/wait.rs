//! `--wait`: follow a drain or a canary through the status until it ends; a progress bar
//! on a terminal, nothing in --json mode.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::client::{self, ClientError};
use crate::api::types::{CanaryStatus, Status};

fn status(socket: &Path) -> Result<Status, ClientError> {
    client::call(socket, "GET", "/v1/status", None::<&()>)
}

fn bar(quiet: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(len)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
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
pub fn drain(socket: &Path, vip: &str, timeout: Duration, quiet: bool) -> Result<Drain, ClientError> {
    let start = Instant::now();
    let (pool, initial) = draining(&status(socket)?, vip)
        .ok_or_else(|| ClientError::Rejected(format!("VIP {vip:?} has no draining pool")))?;
    let bar = bar(
        quiet,
        initial.unwrap_or(0),
        "draining {msg} [{bar:30}] {pos}/{len} flows closed, {elapsed}",
    );
    bar.set_message(pool.clone());
    let mut live = initial;
    loop {
        if let (Some(i), Some(l)) = (initial, live) {
            bar.set_position(i.saturating_sub(l));
        }
        if live == Some(0) || start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        // The pool may have stopped being the previous one (another switch): then it
        // has nothing left to drain for this wait.
        live = draining(&status(socket)?, vip).map_or(Some(0), |(_, l)| l);
    }
    bar.finish();
    Ok(Drain {
        pool,
        live_flows_left: live,
        waited_ms: start.elapsed().as_millis() as u64,
    })
}

/// Follows a canary until it is done or rolled back.
pub fn canary(socket: &Path, vip: &str, quiet: bool) -> Result<CanaryStatus, ClientError> {
    let bar = bar(quiet, 0, "canary {msg} [{bar:30}] step {pos}/{len} {elapsed}");
    loop {
        let c = status(socket)?
            .vip(vip)
            .and_then(|v| v.canary.clone())
            .ok_or_else(|| ClientError::Rejected(format!("VIP {vip:?} has no canary")))?;
        bar.set_length(c.steps.len() as u64);
        bar.set_position(c.step as u64 + 1);
        bar.set_message(format!("{}%", c.percent.unwrap_or(0.0)));
        if c.outcome != crate::api::types::CanaryOutcome::Running {
            bar.finish();
            return Ok(c);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
