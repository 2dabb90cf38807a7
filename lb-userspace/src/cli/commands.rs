//! The CLI verbs: parse, call the API, render.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    agent,
    cli::client::{self, ClientError},
    config::DEFAULT_SOCKET,
    dataplane::AttachMode,
};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "veer", version, about = "XDP load balancer for zero-downtime deployments")]
pub struct Cli {
    /// Log format on stderr (agent).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    /// The agent's API socket.
    #[arg(long, global = true, env = "VEER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output (stable JSON, see docs/api.md).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP balancer, program it, attach, serve the API until SIGTERM.
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); overrides agent.interfaces.
        #[arg(long = "iface")]
        interfaces: Vec<String>,
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
        /// Do not run: remove the data path (program, pins), the state file and the
        /// neighbour entries the agent kept, then exit. Refused while an agent runs.
        #[arg(long)]
        cleanup: bool,
    },
    /// Remove the data path (program, pins), the state file and the neighbour entries the
    /// agent kept (like `veer agent --config F --cleanup`). Refused while an agent runs.
    Detach {
        /// Read pin_dir, state_file and socket from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
        #[arg(long, conflicts_with = "config")]
        state_file: Option<PathBuf>,
    },
    /// Validate a config file without touching the kernel (exit 1 when rejected).
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long = "iface")]
        interfaces: Vec<String>,
    },
    /// VIPs, pools, backends: weight, admin and health state, live flows, packets.
    Status,
    /// Change backends: `set VIP ADDR weight N`, `set VIP ADDR state ready|drain|maint`,
    /// `add VIP POOL ADDR [--weight N]`, `del VIP ADDR`.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Validate FILE, print the differences, apply them as one step.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Blue/green: all new flows to POOL; the old pool drains.
    Switch {
        vip: String,
        pool: String,
        /// Wait (with a progress bar) until the old pool's live flows reach 0.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 3): 30s, 5m, 500ms.
        #[arg(long, default_value = "5m")]
        drain_timeout: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Send PERCENT of new flows (`10%` or `10`) to POOL: manual canary or A/B share.
    Split {
        vip: String,
        pool: String,
        percent: String,
        #[arg(long, value_enum, default_value_t = crate::state::SplitBy::Flow)]
        by: crate::state::SplitBy,
        #[arg(long)]
        dry_run: bool,
    },
    /// Client networks that always reach POOL (no --cidr: remove the rules).
    Ab {
        vip: String,
        pool: String,
        #[arg(long = "cidr")]
        cidrs: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Stepped canary: ramp POOL through --steps, each held for --interval while its
    /// backends stay healthy; rolls back automatically (exit 4); at 100% it is a switch.
    Canary {
        vip: String,
        pool: String,
        #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,100")]
        steps: Vec<f64>,
        #[arg(long)]
        interval: String,
        /// Backends of POOL allowed to fail their checks.
        #[arg(long, default_value_t = 0)]
        max_failing: u32,
        #[arg(long, value_enum, default_value_t = crate::state::SplitBy::Flow)]
        by: crate::state::SplitBy,
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Rolling rollout over POOL: per batch, drain, wait for 0 live flows, run CMD (with
    /// `{addr}`, `{host}` and `{port}` replaced), return to ready, wait until healthy.
    Rollout {
        vip: String,
        pool: String,
        #[arg(long)]
        exec: String,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Accepted for the contract: a rollout always waits for each batch.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m")]
        drain_timeout: String,
        #[arg(long, default_value = "2m")]
        healthy_timeout: String,
    },
    /// Return all new flows to the previous active pool (or drop a split / A/B rules).
    Rollback {
        vip: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Connections of a VIP in the connection table.
    Flows {
        vip: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Which backend a new flow from SRC would get now (the kernel's arithmetic).
    Trace { vip: String, src: String },
}

#[derive(Subcommand)]
enum BackendAction {
    Set {
        vip: String,
        addr: String,
        /// `weight` or `state`
        what: String,
        value: String,
        #[arg(long)]
        dry_run: bool,
    },
    Add {
        vip: String,
        pool: String,
        addr: String,
        #[arg(long)]
        weight: Option<i64>,
        #[arg(long)]
        dry_run: bool,
    },
    Del {
        vip: String,
        addr: String,
        #[arg(long)]
        dry_run: bool,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent {
            config, cleanup: true, ..
        } => {
            init_logs(cli.log_format);
            finish_agent(
                agent::Cleanup::from_config(&config, explicit_socket(&cli.socket))
                    .and_then(|c| c.run())
                    .map(|s| print!("{s}")),
            )
        }
        Command::Detach {
            config,
            pin_dir,
            state_file,
        } => {
            init_logs(cli.log_format);
            let cleanup = match config {
                Some(c) => agent::Cleanup::from_config(&c, explicit_socket(&cli.socket)),
                None => Ok(agent::Cleanup::from_paths(pin_dir, state_file, cli.socket.clone())),
            };
            finish_agent(cleanup.and_then(|c| c.run()).map(|s| print!("{s}")))
        }
        Command::Agent {
            config,
            interfaces,
            xdp_mode,
            cleanup: false,
        } => {
            init_logs(cli.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: tokio runtime: {e}");
                    return ExitCode::from(10);
                }
            };
            let socket = explicit_socket(&cli.socket);
            finish_agent(rt.block_on(agent::run(agent::Options {
                config,
                interfaces,
                socket,
                mode: xdp_mode,
            })))
        }
        Command::Check { config, interfaces } => {
            finish_agent(agent::check(&config, &interfaces).map(|s| print!("{s}")))
        }
        command => match run_client(&cli.socket, cli.json, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                if cli.json {
                    println!("{}", json!({ "error": e.to_string(), "exit_code": e.exit_code() }));
                } else {
                    eprintln!("error: {e}");
                }
                ExitCode::from(e.exit_code())
            }
        },
    }
}

/// The socket given on the command line or in VEER_SOCKET (None: the config's).
fn explicit_socket(socket: &std::path::Path) -> Option<PathBuf> {
    std::env::var_os("VEER_SOCKET")
        .map(PathBuf::from)
        .or_else(|| (socket.as_os_str() != DEFAULT_SOCKET).then(|| socket.to_path_buf()))
}

fn finish_agent(r: Result<(), agent::AgentError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run_client(socket: &std::path::Path, json_out: bool, command: Command) -> Result<(), ClientError> {
    let (answer, render): (Value, fn(&Value) -> String) = match command {
        Command::Status => (client::request(socket, "GET", "/v1/status", None)?, render_status),
        Command::Backend { action } => {
            let (path, body) = match action {
                BackendAction::Set {
                    vip,
                    addr,
                    what,
                    value,
                    dry_run,
                } => {
                    let body = match what.as_str() {
                        "weight" => {
                            let w: i64 = value
                                .parse()
                                .map_err(|_| ClientError::Rejected(format!("weight {value:?} is not a number")))?;
                            json!({ "vip": vip, "address": addr, "weight": w, "dry_run": dry_run })
                        }
                        "state" => {
                            if !["ready", "drain", "maint"].contains(&value.as_str()) {
                                return Err(ClientError::Rejected(format!(
                                    "state {value:?}: expected ready, drain or maint"
                                )));
                            }
                            json!({ "vip": vip, "address": addr, "state": value, "dry_run": dry_run })
                        }
                        other => {
                            return Err(ClientError::Rejected(format!(
                                "{other:?}: expected `weight N` or `state ready|drain|maint`"
                            )));
                        }
                    };
                    ("/v1/backend/set", body)
                }
                BackendAction::Add {
                    vip,
                    pool,
                    addr,
                    weight,
                    dry_run,
                } => (
                    "/v1/backend/add",
                    json!({ "vip": vip, "pool": pool, "address": addr, "weight": weight, "dry_run": dry_run }),
                ),
                BackendAction::Del { vip, addr, dry_run } => (
                    "/v1/backend/del",
                    json!({ "vip": vip, "address": addr, "dry_run": dry_run }),
                ),
            };
            (client::request(socket, "POST", path, Some(&body))?, render_change)
        }
        Command::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ClientError::Rejected(format!("{}: {e}", file.display())))?;
            (
                client::request(
                    socket,
                    "POST",
                    "/v1/apply",
                    Some(&json!({ "config": text, "dry_run": dry_run })),
                )?,
                render_change,
            )
        }
        Command::Switch {
            vip,
            pool,
            wait,
            drain_timeout,
            dry_run,
        } => {
            let timeout = crate::health::parse_duration(&drain_timeout).ok_or_else(|| {
                ClientError::Rejected(format!(
                    "--drain-timeout {drain_timeout:?}: expected e.g. 30s, 5m, 500ms"
                ))
            })?;
            let answer = client::request(
                socket,
                "POST",
                "/v1/switch",
                Some(&json!({ "vip": vip, "pool": pool, "dry_run": dry_run })),
            )?;
            if !wait || dry_run {
                (answer, render_change)
            } else {
                if !json_out {
                    print!("{}", render_change(&answer));
                }
                let report = wait_for_drain(socket, &vip, timeout, json_out)?;
                // null: the agent could not count (unknown is not drained).
                let left = report["live_flows_left"].as_u64();
                if json_out {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({ "switch": answer, "drain": report })).unwrap_or_default()
                    );
                }
                if left != Some(0) {
                    let left = left.map_or("an unknown number of".to_string(), |n| n.to_string());
                    return Err(ClientError::TimedOut(format!(
                        "{left} live flows left on {} after {drain_timeout}",
                        report["pool"].as_str().unwrap_or("?")
                    )));
                }
                return Ok(());
            }
        }
        Command::Split {
            vip,
            pool,
            percent,
            by,
            dry_run,
        } => {
            let pct: f64 = percent
                .trim_end_matches('%')
                .parse()
                .map_err(|_| ClientError::Rejected(format!("{percent:?} is not a percentage (10% or 10)")))?;
            (
                client::request(
                    socket,
                    "POST",
                    "/v1/split",
                    Some(&json!({ "vip": vip, "pool": pool, "percent": pct, "by": by, "dry_run": dry_run })),
                )?,
                render_change,
            )
        }
        Command::Ab {
            vip,
            pool,
            cidrs,
            dry_run,
        } => (
            client::request(
                socket,
                "POST",
                "/v1/ab",
                Some(&json!({ "vip": vip, "pool": pool, "cidrs": cidrs, "dry_run": dry_run })),
            )?,
            render_change,
        ),
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
            let body = json!({ "vip": vip, "pool": pool, "steps": steps, "interval": interval, "max_failing": max_failing, "by": by, "dry_run": dry_run });
            let answer = client::request(socket, "POST", "/v1/canary", Some(&body))?;
            if !wait || dry_run {
                (answer, render_change)
            } else {
                if !json_out {
                    print!("{}", render_change(&answer));
                }
                let canary = wait_for_canary(socket, &vip, json_out)?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&canary).unwrap_or_default());
                }
                return match canary["outcome"]["state"].as_str() {
                    Some("done") => Ok(()),
                    Some("rolled_back") => Err(ClientError::RolledBack(
                        canary["outcome"]["reason"].as_str().unwrap_or("").to_string(),
                    )),
                    _ => Err(ClientError::Rejected(format!("canary ended unexpectedly: {canary}"))),
                };
            }
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
            let dt = crate::health::parse_duration(&drain_timeout)
                .ok_or_else(|| ClientError::Rejected(format!("--drain-timeout {drain_timeout:?}")))?;
            let ht = crate::health::parse_duration(&healthy_timeout)
                .ok_or_else(|| ClientError::Rejected(format!("--healthy-timeout {healthy_timeout:?}")))?;
            let report = rollout(socket, &vip, &pool, &exec, batch.max(1), dt, ht, json_out)?;
            (report, |r: &Value| {
                format!(
                    "rolled out {} backends\n",
                    r["done"].as_array().map(|a| a.len()).unwrap_or(0)
                )
            })
        }
        Command::Rollback { vip, dry_run } => (
            client::request(
                socket,
                "POST",
                "/v1/rollback",
                Some(&json!({ "vip": vip, "dry_run": dry_run })),
            )?,
            render_change,
        ),
        Command::Flows { vip, limit } => (
            client::request(socket, "GET", &format!("/v1/flows/{vip}?limit={limit}"), None)?,
            render_flows,
        ),
        Command::Trace { vip, src } => (
            client::request(socket, "GET", &format!("/v1/trace/{vip}?src={src}"), None)?,
            render_trace,
        ),
        Command::Agent { .. } | Command::Check { .. } | Command::Detach { .. } => unreachable!("handled in main"),
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    } else {
        print!("{}", render(&answer));
    }
    Ok(())
}

/// Polls the old pool's live flows until they reach 0 or `timeout`; a progress bar on a
/// terminal, nothing in --json mode.
fn wait_for_drain(
    socket: &std::path::Path,
    vip: &str,
    timeout: std::time::Duration,
    quiet: bool,
) -> Result<Value, ClientError> {
    let start = std::time::Instant::now();
    // live_flows is null when the agent could not read its connection table: unknown,
    // which never counts as drained.
    let pool_live = |status: &Value| -> Option<(String, Option<u64>)> {
        let v = status["vips"].as_array()?.iter().find(|v| v["name"] == vip)?;
        let prev = v["previous_active"].as_str()?.to_string();
        let p = v["pools"].as_array()?.iter().find(|p| p["name"] == prev.as_str())?;
        Some((prev, p["counters"]["live_flows"].as_u64()))
    };
    let first = client::request(socket, "GET", "/v1/status", None)?;
    let (pool, initial) =
        pool_live(&first).ok_or_else(|| ClientError::Rejected(format!("VIP {vip:?} has no draining pool")))?;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(initial.unwrap_or(0))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("draining {msg} [{bar:30}] {pos}/{len} flows closed, {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
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
        std::thread::sleep(std::time::Duration::from_millis(200));
        let status = client::request(socket, "GET", "/v1/status", None)?;
        // The pool may have stopped being the previous one (another switch): then it
        // has nothing left to drain for this wait.
        live = pool_live(&status).map_or(Some(0), |(_, l)| l);
    }
    bar.finish();
    Ok(json!({ "pool": pool, "live_flows_left": live, "waited_ms": start.elapsed().as_millis() as u64 }))
}

/// Follows a canary until it is done or rolled back; a step progress bar on a terminal.
fn wait_for_canary(socket: &std::path::Path, vip: &str, quiet: bool) -> Result<Value, ClientError> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("canary {msg} [{bar:30}] step {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let status = client::request(socket, "GET", "/v1/status", None)?;
        let c = status["vips"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == vip))
            .map(|v| v["canary"].clone())
            .unwrap_or(Value::Null);
        if c.is_null() {
            return Err(ClientError::Rejected(format!("VIP {vip:?} has no canary")));
        }
        bar.set_length(c["steps"].as_array().map(|s| s.len() as u64).unwrap_or(0));
        bar.set_position(c["step"].as_u64().unwrap_or(0) + 1);
        bar.set_message(format!("{}%", c["percent"]));
        if c["outcome"]["state"] != "running" {
            bar.finish();
            return Ok(c);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn backend_view(status: &Value, vip: &str, addr: &str) -> Value {
    status["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == vip))
        .and_then(|v| v["pools"].as_array())
        .and_then(|pools| {
            pools
                .iter()
                .flat_map(|p| p["backends"].as_array().into_iter().flatten())
                .find(|b| b["address"] == addr)
                .cloned()
        })
        .unwrap_or(Value::Null)
}

/// The rolling rollout, driven from the CLI through the API.
#[expect(clippy::too_many_arguments, reason = "one call site: the CLI verb")]
fn rollout(
    socket: &std::path::Path,
    vip: &str,
    pool: &str,
    exec: &str,
    batch: usize,
    drain_timeout: std::time::Duration,
    healthy_timeout: std::time::Duration,
    quiet: bool,
) -> Result<Value, ClientError> {
    let status = client::request(socket, "GET", "/v1/status", None)?;
    let v = status["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == vip))
        .ok_or_else(|| ClientError::Rejected(format!("unknown VIP {vip:?}")))?;
    let addrs: Vec<String> = v["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == pool))
        .ok_or_else(|| ClientError::Rejected(format!("VIP {vip:?} has no pool {pool:?}")))?["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["address"].as_str().map(String::from))
        .collect();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(addrs.len() as u64)
    };
    let mut done = Vec::new();
    let set_state = |addr: &str, state: &str| {
        client::request(
            socket,
            "POST",
            "/v1/backend/set",
            Some(&json!({ "vip": vip, "address": addr, "state": state })),
        )
    };
    for group in addrs.chunks(batch) {
        bar.set_message(format!("draining {}", group.join(", ")));
        for a in group {
            set_state(a, "drain")?;
        }
        let start = std::time::Instant::now();
        loop {
            let s = client::request(socket, "GET", "/v1/status", None)?;
            // null (the agent could not count) is unknown, never drained.
            let live: Option<u64> = group
                .iter()
                .map(|a| backend_view(&s, vip, a)["counters"]["live_flows"].as_u64())
                .sum();
            if live == Some(0) {
                break;
            }
            if start.elapsed() > drain_timeout {
                let live = live.map_or("an unknown number of".to_string(), |n| n.to_string());
                return Err(ClientError::TimedOut(format!(
                    "{live} live flows left on {} (rolled out so far: {done:?})",
                    group.join(", ")
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for a in group {
            bar.set_message(format!("running the hook for {a}"));
            let cmd = match a.parse() {
                Ok(backend) => super::hook::hook_command(exec, backend),
                Err(_) => exec.replace("{addr}", a),
            };
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .map_err(|e| ClientError::Rejected(format!("run {cmd:?}: {e}")))?;
            if !out.status.success() {
                return Err(ClientError::Rejected(format!(
                    "hook {cmd:?} failed ({}): {}; {a} stays drained, the rest untouched (rolled out so far: {done:?})",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        for a in group {
            set_state(a, "ready")?;
        }
        let start = std::time::Instant::now();
        loop {
            let s = client::request(socket, "GET", "/v1/status", None)?;
            let healthy = group.iter().all(|a| {
                matches!(
                    backend_view(&s, vip, a)["health"].as_str(),
                    Some("up") | Some("unchecked")
                )
            });
            if healthy {
                break;
            }
            if start.elapsed() > healthy_timeout {
                return Err(ClientError::Rejected(format!(
                    "{} never became healthy; the rest untouched (rolled out so far: {done:?})",
                    group.join(", ")
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        done.extend(group.iter().cloned());
        bar.inc(group.len() as u64);
    }
    bar.finish();
    Ok(json!({ "vip": vip, "pool": pool, "done": done }))
}

fn render_status(s: &Value) -> String {
    let mut out = String::new();
    for v in s["vips"].as_array().into_iter().flatten() {
        let c = &v["counters"];
        out.push_str(&format!(
            "{} {} {} active={} split={} packets={} live_flows={}\n",
            v["name"].as_str().unwrap_or(""),
            v["address"].as_str().unwrap_or(""),
            v["protocol"].as_str().unwrap_or(""),
            v["active"].as_str().unwrap_or(""),
            if v["split"].is_null() {
                "-".to_string()
            } else {
                format!(
                    "{}%->{}",
                    v["split"]["percent"],
                    v["split"]["pool"].as_str().unwrap_or("")
                )
            },
            c["packets"],
            c["live_flows"]
        ));
        for p in v["pools"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  pool {} ({}) live_flows={}\n",
                p["name"].as_str().unwrap_or(""),
                p["role"].as_str().unwrap_or(""),
                p["counters"]["live_flows"]
            ));
            for b in p["backends"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "    {:<24} weight={:<5} admin={:<5} health={:<9} state={:<5} live_flows={:<6} packets={}\n",
                    b["address"].as_str().unwrap_or(""),
                    b["weight"],
                    b["admin"].as_str().unwrap_or(""),
                    b["health"].as_str().unwrap_or(""),
                    b["state"].as_str().unwrap_or(""),
                    b["counters"]["live_flows"],
                    b["counters"]["packets"]
                ));
            }
        }
    }
    out
}

fn render_change(c: &Value) -> String {
    let mut out = String::new();
    for line in c["changes"].as_array().into_iter().flatten() {
        out.push_str(&format!("{}\n", line.as_str().unwrap_or("")));
    }
    for (vip, pct) in c["moved_pct"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "{vip}: {:.2}% of new-flow hash space moves\n",
            pct.as_f64().unwrap_or(0.0)
        ));
    }
    out.push_str(if c["applied"] == true {
        "applied\n"
    } else {
        "dry run: nothing changed\n"
    });
    out
}

fn render_flows(f: &Value) -> String {
    let mut out = format!("{} flows of {}\n", f["total"], f["vip"].as_str().unwrap_or(""));
    for r in f["flows"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<44} -> {:<24} nat_port={}{}\n",
            r["client"].as_str().unwrap_or(""),
            r["backend"].as_str().unwrap_or(""),
            r["nat_port"],
            if r["closing"] == true { " closing" } else { "" }
        ));
    }
    out
}

fn render_trace(t: &Value) -> String {
    if t["existing_flow"] == true {
        format!(
            "{} -> {} (existing flow)\n",
            t["source"].as_str().unwrap_or(""),
            t["backend"].as_str().unwrap_or("?")
        )
    } else {
        format!(
            "{} -> {} (new flow: pool {}, slot {})\n",
            t["source"].as_str().unwrap_or(""),
            t["backend"].as_str().unwrap_or("none"),
            t["pool"].as_str().unwrap_or(""),
            t["slot"]
        )
    }
}
