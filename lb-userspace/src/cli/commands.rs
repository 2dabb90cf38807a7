//! The client verbs: each builds its request from the API's types, calls the agent, and
//! prints the typed answer (plain text, or JSON with --json).

use std::path::Path;

use serde::Serialize;

use super::{
    args::{BackendAction, Command, SetWhat},
    client::{self, ClientError},
    live, render, rollout, top, wait,
};
use crate::{
    api::types::{
        AbReq, Apply, BackendAdd, BackendDel, BackendSet, CanaryOutcome, CanaryReq, ChangeReport, Flows, RollbackReq,
        SplitReq, Status, SwitchReq, Trace,
    },
    deploy::rollout::RolloutPlan,
    state::validate,
};

/// Prints `answer` as JSON or through `render`.
fn print<T: Serialize>(json: bool, answer: &T, render: fn(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(answer).unwrap_or_default());
    } else {
        print!("{}", render(answer));
    }
}

fn post<T: Serialize>(socket: &Path, path: &str, body: &T) -> Result<ChangeReport, ClientError> {
    client::call(socket, "POST", path, Some(body))
}

fn duration(flag: &str, s: &str) -> Result<std::time::Duration, ClientError> {
    validate::duration(s).map_err(|e| ClientError::Rejected(format!("{flag}: {e}")))
}

/// A refresh interval of a live view: a duration of at least 100ms.
fn refresh(flag: &str, s: &str) -> Result<std::time::Duration, ClientError> {
    let d = duration(flag, s)?;
    if d < std::time::Duration::from_millis(100) {
        return Err(ClientError::Rejected(format!("{flag}: at least 100ms")));
    }
    Ok(d)
}

/// Runs a client verb against the agent at `socket`.
pub fn run(socket: &Path, json: bool, command: Command) -> Result<(), ClientError> {
    match command {
        Command::Status { watch: false, .. } => {
            let s: Status = client::call(socket, "GET", "/v1/status", None::<&()>)?;
            print(json, &s, render::status);
        }
        Command::Status {
            watch: true,
            interval,
            count,
        } => live::watch(socket, json, refresh("--interval", &interval)?, count)?,
        Command::Top { interval } => top::run(socket, refresh("--interval", &interval)?)?,
        Command::Backend { action } => {
            let answer = match action {
                BackendAction::Set {
                    vip,
                    addr,
                    what,
                    dry_run,
                } => {
                    let (weight, state) = match what {
                        SetWhat::Weight { value } => (Some(value), None),
                        SetWhat::State { value } => (None, Some(value)),
                    };
                    let req = BackendSet {
                        vip,
                        address: addr,
                        weight,
                        state,
                        dry_run,
                    };
                    post(socket, "/v1/backend/set", &req)?
                }
                BackendAction::Add {
                    vip,
                    pool,
                    addr,
                    weight,
                    dry_run,
                } => {
                    let req = BackendAdd {
                        vip,
                        pool,
                        address: addr,
                        weight,
                        dry_run,
                    };
                    post(socket, "/v1/backend/add", &req)?
                }
                BackendAction::Del { vip, addr, dry_run } => {
                    let req = BackendDel {
                        vip,
                        address: addr,
                        dry_run,
                    };
                    post(socket, "/v1/backend/del", &req)?
                }
            };
            print(json, &answer, render::change);
        }
        Command::Apply { file, dry_run } => {
            let config = std::fs::read_to_string(&file)
                .map_err(|e| ClientError::Rejected(format!("{}: {e}", file.display())))?;
            print(
                json,
                &post(socket, "/v1/apply", &Apply { config, dry_run })?,
                render::change,
            );
        }
        Command::Switch {
            vip,
            pool,
            wait,
            drain_timeout,
            dry_run,
        } => {
            let timeout = duration("--drain-timeout", &drain_timeout)?;
            let answer = post(
                socket,
                "/v1/switch",
                &SwitchReq {
                    vip: vip.clone(),
                    pool,
                    dry_run,
                },
            )?;
            if !wait || dry_run {
                print(json, &answer, render::change);
                return Ok(());
            }
            if !json {
                print!("{}", render::change(&answer));
            }
            let drain = wait::drain(socket, &vip, timeout, json)?;
            if json {
                #[derive(Serialize)]
                struct Waited<'a> {
                    switch: &'a ChangeReport,
                    drain: &'a wait::Drain,
                }
                let w = Waited {
                    switch: &answer,
                    drain: &drain,
                };
                println!("{}", serde_json::to_string_pretty(&w).unwrap_or_default());
            }
            if drain.live_flows_left != Some(0) {
                let left = drain
                    .live_flows_left
                    .map_or("an unknown number of".to_string(), |n| n.to_string());
                return Err(ClientError::TimedOut(format!(
                    "{left} live flows left on {} after {drain_timeout}",
                    drain.pool
                )));
            }
        }
        Command::Split {
            vip,
            pool,
            percent,
            by,
            dry_run,
        } => {
            let percent = validate::parse_percent(&percent).map_err(|e| ClientError::Rejected(e.0))?;
            let req = SplitReq {
                vip,
                pool,
                percent,
                by: Some(by),
                dry_run,
            };
            print(json, &post(socket, "/v1/split", &req)?, render::change);
        }
        Command::Ab {
            vip,
            pool,
            cidrs,
            dry_run,
        } => {
            let req = AbReq {
                vip,
                pool,
                cidrs,
                dry_run,
            };
            print(json, &post(socket, "/v1/ab", &req)?, render::change);
        }
        Command::Canary {
            vip,
            pool,
            steps,
            interval,
            max_failing,
            by,
            wait,
            dry_run,
        } => {
            let req = CanaryReq {
                vip: vip.clone(),
                pool,
                steps,
                interval,
                max_failing,
                by: Some(by),
                dry_run,
            };
            let answer = post(socket, "/v1/canary", &req)?;
            if !wait || dry_run {
                print(json, &answer, render::change);
                return Ok(());
            }
            if !json {
                print!("{}", render::change(&answer));
            }
            let canary = wait::canary(socket, &vip, json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&canary).unwrap_or_default());
            }
            return match canary.outcome {
                CanaryOutcome::Done => Ok(()),
                CanaryOutcome::RolledBack(reason) => Err(ClientError::RolledBack(reason)),
                CanaryOutcome::Running => Err(ClientError::Rejected("canary ended unexpectedly".into())),
            };
        }
        Command::Rollout {
            vip,
            pool,
            exec,
            batch,
            wait: _,
            drain_timeout,
            healthy_timeout,
        } => {
            let plan = RolloutPlan {
                drain_timeout: duration("--drain-timeout", &drain_timeout)?,
                healthy_timeout: duration("--healthy-timeout", &healthy_timeout)?,
                vip,
                pool,
                batch: batch.max(1),
                poll: std::time::Duration::from_millis(100),
            };
            let done = rollout::rollout(socket, &plan, &exec, json)?;
            #[derive(Serialize)]
            struct RolledOut {
                vip: String,
                pool: String,
                done: Vec<String>,
            }
            let r = RolledOut {
                vip: plan.vip,
                pool: plan.pool,
                done,
            };
            print(json, &r, |r| format!("rolled out {} backends\n", r.done.len()));
        }
        Command::Rollback { vip, dry_run } => {
            print(
                json,
                &post(socket, "/v1/rollback", &RollbackReq { vip, dry_run })?,
                render::change,
            );
        }
        Command::Flows { vip, limit } => {
            let f: Flows = client::call(socket, "GET", &format!("/v1/flows/{vip}?limit={limit}"), None::<&()>)?;
            print(json, &f, render::flows);
        }
        Command::Trace { vip, src } => {
            let t: Trace = client::call(socket, "GET", &format!("/v1/trace/{vip}?src={src}"), None::<&()>)?;
            print(json, &t, render::trace);
        }
        Command::Agent { .. } | Command::Check { .. } | Command::Detach { .. } => {
            return Err(ClientError::Rejected("not a client verb".into()));
        }
    }
    Ok(())
}
