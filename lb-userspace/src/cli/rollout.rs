//! `veer rollout`: the rolling rollout of `deploy::rollout`, run from here through the API
//! (the hook runs on the operator's host).

use std::time::Duration;

use super::{
    client::{self, ClientError, Endpoint},
    progress::{Event, Progress},
};
use crate::{
    api::types::{AdminState, BackendSet, ChangeReport, Status},
    deploy::rollout::{Phase, RolloutApi, RolloutError, RolloutPlan, run},
};

struct Api<'a> {
    socket: &'a Endpoint,
    vip: &'a str,
    pool: &'a str,
    exec: &'a str,
    progress: &'a mut Progress,
}

impl RolloutApi for Api<'_> {
    type Error = ClientError;

    fn status(&mut self) -> Result<Status, ClientError> {
        client::call(self.socket, "GET", "/v1/status", None::<&()>)
    }

    fn set_state(&mut self, address: &str, state: AdminState) -> Result<(), ClientError> {
        let req = BackendSet {
            vip: self.vip.to_string(),
            address: address.to_string(),
            weight: None,
            state: Some(state),
            dry_run: false,
        };
        client::call::<ChangeReport>(self.socket, "POST", "/v1/backend/set", Some(&req))?;
        Ok(())
    }

    fn run_hook(&mut self, address: &str) -> Result<(), String> {
        let cmd = match address.parse() {
            Ok(backend) => super::hook::hook_command(self.exec, backend),
            Err(_) => self.exec.replace("{addr}", address),
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .map_err(|e| format!("run {cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "hook {cmd:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn progress(&mut self, at: (usize, usize), group: &[String], phase: Phase) {
        self.progress.state(Event::Rollout {
            vip: self.vip.to_string(),
            pool: self.pool.to_string(),
            batch: at.0,
            batches: at.1,
            backends: group.to_vec(),
            phase: phase.name().to_string(),
            live_flows: match phase {
                Phase::Drain(live) => live,
                _ => None,
            },
        });
    }
}

/// Runs the rollout; returns the backends rolled out.
pub fn rollout(
    socket: &Endpoint,
    plan: &RolloutPlan,
    exec: &str,
    progress: &mut Progress,
) -> Result<Vec<String>, ClientError> {
    let mut api = Api {
        socket,
        vip: &plan.vip,
        pool: &plan.pool,
        exec,
        progress,
    };
    run(&mut api, plan).map_err(|e| match e {
        RolloutError::Api(e) => e,
        RolloutError::Rejected(m) => ClientError::Rejected(m),
        RolloutError::TimedOut(m) => ClientError::TimedOut(m),
    })
}
