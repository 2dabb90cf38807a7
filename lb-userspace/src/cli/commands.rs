//! The client verbs: each checks its values first (a bad value exits 1 before the agent is
//! contacted), builds its request from the API's types, calls the agent, and prints the
//! typed answer (plain text, or JSON with --json).

use std::time::Duration;

use serde::Serialize;

use super::{
    args::{BackendAction, CanaryArgs, CanaryControl, Command, SetWhat},
    client::{self, ClientError, Endpoint},
    gate::{self, Gate},
    live,
    progress::{Event, Progress},
    render, rollout, top, wait,
};
use crate::{
    api::types::{
        AbReq, Apply, BackendAdd, BackendDel, BackendSet, CanaryControlReq, CanaryOutcome, CanaryReq, ChangeReport,
        Flows, RollbackReq, SplitReq, Status, SwitchReq, Trace,
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

fn post<T: Serialize>(socket: &Endpoint, path: &str, body: &T) -> Result<ChangeReport, ClientError> {
    client::call(socket, "POST", path, Some(body))
}

fn rejected(what: &str) -> impl Fn(validate::Invalid) -> ClientError + '_ {
    move |e| ClientError::Rejected(format!("{what}: {e}"))
}

fn duration(flag: &str, s: &str) -> Result<Duration, ClientError> {
    validate::duration(s).map_err(rejected(flag))
}

fn vip_name(vip: &str) -> Result<(), ClientError> {
    validate::vip_name(vip).map_err(rejected("VIP"))
}

fn address(what: &str, s: &str) -> Result<(), ClientError> {
    validate::service_address(s).map(drop).map_err(rejected(what))
}

/// A weight as written: a number in 0..=10000.
fn weight(s: &str) -> Result<i64, ClientError> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| ClientError::Rejected(format!("weight {s:?} is not a number (0..={})", validate::MAX_WEIGHT)))?;
    validate::weight(n).map_err(rejected("weight"))?;
    Ok(n)
}

/// A refresh interval of a live view: a duration of at least 100ms.
fn refresh(flag: &str, s: &str) -> Result<Duration, ClientError> {
    let d = duration(flag, s)?;
    if d < Duration::from_millis(100) {
        return Err(ClientError::Rejected(format!("{flag}: at least 100ms")));
    }
    Ok(d)
}

/// Runs a client verb against the agent at `socket`.
pub fn run(socket: &Endpoint, json: bool, command: Command) -> Result<(), ClientError> {
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
                    vip_name(&vip)?;
                    address("backend", &addr)?;
                    let (weight, state) = match what {
                        SetWhat::Weight { value } => (Some(weight(&value)?), None),
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
                    weight: w,
                    dry_run,
                } => {
                    vip_name(&vip)?;
                    address("backend", &addr)?;
                    let req = BackendAdd {
                        vip,
                        pool,
                        address: addr,
                        weight: w.as_deref().map(weight).transpose()?,
                        dry_run,
                    };
                    post(socket, "/v1/backend/add", &req)?
                }
                BackendAction::Del { vip, addr, dry_run } => {
                    vip_name(&vip)?;
                    address("backend", &addr)?;
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
            // The same parse and rules the agent applies: a bad file never reaches it.
            crate::config::parse(&config, &file.display().to_string())
                .map_err(|e| ClientError::Rejected(e.to_string()))?;
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
            vip_name(&vip)?;
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
            let mut progress = Progress::new(json);
            progress.event(Event::Applied { report: answer.clone() });
            let drain = wait::drain(socket, &vip, timeout, &mut progress)?;
            #[derive(Serialize)]
            struct Waited<'a> {
                switch: &'a ChangeReport,
                drain: &'a wait::Drain,
            }
            let w = Waited {
                switch: &answer,
                drain: &drain,
            };
            progress.finish(&w, None);
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
            vip_name(&vip)?;
            let percent = validate::parse_percent(&percent).map_err(|e| ClientError::Rejected(e.0))?;
            validate::percent(percent).map_err(|e| ClientError::Rejected(e.0))?;
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
            vip_name(&vip)?;
            for c in &cidrs {
                validate::cidr(c).map_err(rejected("--cidr"))?;
            }
            let req = AbReq {
                vip,
                pool,
                cidrs,
                dry_run,
            };
            print(json, &post(socket, "/v1/ab", &req)?, render::change);
        }
        Command::Canary(args) => return canary(socket, json, args),
        Command::Rollout {
            vip,
            pool,
            exec,
            batch,
            wait: _,
            drain_timeout,
            healthy_timeout,
        } => {
            vip_name(&vip)?;
            if batch == 0 {
                return Err(ClientError::Rejected(
                    "--batch 0: at least one backend at a time".into(),
                ));
            }
            let plan = RolloutPlan {
                drain_timeout: duration("--drain-timeout", &drain_timeout)?,
                healthy_timeout: duration("--healthy-timeout", &healthy_timeout)?,
                vip,
                pool,
                batch,
                poll: Duration::from_millis(100),
            };
            let mut progress = Progress::new(json);
            let done = rollout::rollout(socket, &plan, &exec, &mut progress)?;
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
            let text = format!("rolled out {} backends\n", r.done.len());
            progress.finish(&r, Some(&text));
        }
        Command::Rollback { vip, dry_run } => {
            vip_name(&vip)?;
            print(
                json,
                &post(socket, "/v1/rollback", &RollbackReq { vip, dry_run })?,
                render::change,
            );
        }
        Command::Flows { vip, limit } => {
            vip_name(&vip)?;
            let f: Flows = client::call(socket, "GET", &format!("/v1/flows/{vip}?limit={limit}"), None::<&()>)?;
            print(json, &f, render::flows);
        }
        Command::Table { vip, digest } => {
            vip_name(&vip)?;
            let t: crate::api::types::Table = client::call(socket, "GET", &format!("/v1/table/{vip}"), None::<&()>)?;
            if digest && !json {
                println!("{}", t.digest);
            } else {
                print(json, &t, render::table);
            }
        }
        Command::Trace { vip, src } => {
            vip_name(&vip)?;
            let parsed: std::net::SocketAddr = src
                .trim()
                .parse()
                .map_err(|_| ClientError::Rejected(format!("{src:?} is not IP:PORT or [IPv6]:PORT")))?;
            let t: Trace = client::call(socket, "GET", &format!("/v1/trace/{vip}?src={parsed}"), None::<&()>)?;
            print(json, &t, render::trace);
        }
        Command::Agent { .. } | Command::Check { .. } | Command::Detach { .. } => {
            return Err(ClientError::Rejected("not a client verb".into()));
        }
    }
    Ok(())
}

/// `veer canary VIP POOL ...` or `veer canary pause|resume|promote VIP`.
fn canary(socket: &Endpoint, json: bool, args: CanaryArgs) -> Result<(), ClientError> {
    if let Some(control) = args.control {
        let (path, vip) = match control {
            CanaryControl::Pause { vip } => ("/v1/canary/pause", vip),
            CanaryControl::Resume { vip } => ("/v1/canary/resume", vip),
            CanaryControl::Promote { vip } => ("/v1/canary/promote", vip),
        };
        vip_name(&vip)?;
        let req = CanaryControlReq { vip, dry_run: false };
        print(json, &post(socket, path, &req)?, render::change);
        return Ok(());
    }
    // clap requires these without a control subcommand.
    let (Some(vip), Some(pool), Some(interval)) = (args.vip, args.pool, args.interval) else {
        return Err(ClientError::Rejected(
            "canary: VIP, POOL and --interval are required".into(),
        ));
    };
    vip_name(&vip)?;
    let steps = args
        .steps
        .iter()
        .map(|s| validate::parse_percent(s))
        .collect::<Result<Vec<f64>, _>>()
        .map_err(rejected("--steps"))?;
    validate::canary_steps(&steps).map_err(rejected("--steps"))?;
    duration("--interval", &interval)?;
    let gate_timeout = duration("--gate-timeout", &args.gate_timeout)?;
    let mut gates = Vec::new();
    if let Some(cmd) = args.gate {
        if cmd.trim().is_empty() {
            return Err(ClientError::Rejected(
                "--gate: an empty command would pass every step".into(),
            ));
        }
        gates.push(Gate::Command {
            cmd,
            timeout: gate_timeout,
        });
    }
    if let [url, query] = &args.gate_prometheus[..] {
        gates.push(Gate::Prometheus {
            url: gate::http_url(url).map_err(ClientError::Rejected)?,
            query: query.clone(),
            timeout: gate_timeout,
        });
    }
    let req = CanaryReq {
        vip: vip.clone(),
        pool,
        steps,
        interval,
        max_failing: args.max_failing,
        by: Some(args.by),
        gated: !gates.is_empty() && !args.dry_run,
        dry_run: args.dry_run,
    };
    let answer = post(socket, "/v1/canary", &req)?;
    // A gated canary needs this process to run its gates: it always waits.
    if (!args.wait && gates.is_empty()) || args.dry_run {
        print(json, &answer, render::change);
        return Ok(());
    }
    let mut progress = Progress::new(json);
    progress.event(Event::Applied { report: answer });
    let canary = wait::canary(socket, &vip, &gates, &mut progress)?;
    progress.finish(&canary, None);
    match canary.outcome {
        CanaryOutcome::Done => Ok(()),
        CanaryOutcome::RolledBack(reason) => Err(ClientError::RolledBack(reason)),
        CanaryOutcome::Running => Err(ClientError::Rejected("canary ended unexpectedly".into())),
    }
}
