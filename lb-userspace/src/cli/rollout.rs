//! `veer rollout`: the rolling rollout of `deploy::rollout`, run from here through the API
//! (the hook runs on the operator's host).

use std::{path::Path, time::Duration};

use super::client::{self, ClientError};
use crate::{
    api::types::{AdminState, BackendSet, ChangeReport, Status},
    deploy::rollout::{RolloutApi, RolloutError, RolloutPlan, run},
};

struct Api<'a> {
    socket: &'a Path,
    vip: &'a str,
    exec: &'a str,
    bar: indicatif::ProgressBar,
}

impl RolloutApi for Api<'_> {
    type Error = ClientError;

    fn status(&mut self) -> Result<Status, ClientError> {
        client::call(self.socket, "GET", "/v1/status", None::<&()>)
    }

    fn set_state(&mut self, address: &str, state: AdminState) -> Result<(), ClientError> {
        self.bar.set_message(format!("{address}: {state:?}"));
        let req = BackendSet {
            vip: self.vip.to_string(),
            address: address.to_string(),
            weight: None,
            state: Some(state),
            dry_run: false,
        };
        client::call::<ChangeReport>(self.socket, "POST", "/v1/backend/set", Some(&req))?;
        if state == AdminState::Ready {
            self.bar.inc(1);
        }
        Ok(())
    }

    fn run_hook(&mut self, address: &str) -> Result<(), String> {
        self.bar.set_message(format!("running the hook for {address}"));
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
}

/// Runs the rollout; returns the backends rolled out.
pub fn rollout(socket: &Path, plan: &RolloutPlan, exec: &str, quiet: bool) -> Result<Vec<String>, ClientError> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    let mut api = Api {
        socket,
        vip: &plan.vip,
        exec,
        bar,
    };
    let done = run(&mut api, plan).map_err(|e| match e {
        RolloutError::Api(e) => e,
        RolloutError::Rejected(m) => ClientError::Rejected(m),
        RolloutError::TimedOut(m) => ClientError::TimedOut(m),
    })?;
    api.bar.finish();
    Ok(done)
}
