//! `veer`: the agent and the CLI that drives it.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use veer::{
    agent,
    client::{self, ClientError},
    config::DEFAULT_SOCKET,
    dataplane::AttachMode,
};

#[derive(Parser)]
#[command(name = "veer", version, about = "XDP load balancer for zero-downtime deployments")]
struct Cli {
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent { config, interfaces, xdp_mode } => {
            init_logs(cli.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: tokio runtime: {e}");
                    return ExitCode::from(10);
                }
            };
            let socket = std::env::var_os("VEER_SOCKET").map(PathBuf::from).or_else(|| (cli.socket.as_os_str() != DEFAULT_SOCKET).then(|| cli.socket.clone()));
            finish_agent(rt.block_on(agent::run(agent::Options { config, interfaces, socket, mode: xdp_mode })))
        }
        Command::Check { config, interfaces } => finish_agent(agent::check(&config, &interfaces).map(|s| print!("{s}"))),
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
                BackendAction::Set { vip, addr, what, value, dry_run } => {
                    let body = match what.as_str() {
                        "weight" => {
                            let w: i64 = value.parse().map_err(|_| ClientError::Rejected(format!("weight {value:?} is not a number")))?;
                            json!({ "vip": vip, "address": addr, "weight": w, "dry_run": dry_run })
                        }
                        "state" => {
                            if !["ready", "drain", "maint"].contains(&value.as_str()) {
                                return Err(ClientError::Rejected(format!("state {value:?}: expected ready, drain or maint")));
                            }
                            json!({ "vip": vip, "address": addr, "state": value, "dry_run": dry_run })
                        }
                        other => return Err(ClientError::Rejected(format!("{other:?}: expected `weight N` or `state ready|drain|maint`"))),
                    };
                    ("/v1/backend/set", body)
                }
                BackendAction::Add { vip, pool, addr, weight, dry_run } => {
                    ("/v1/backend/add", json!({ "vip": vip, "pool": pool, "address": addr, "weight": weight, "dry_run": dry_run }))
                }
                BackendAction::Del { vip, addr, dry_run } => ("/v1/backend/del", json!({ "vip": vip, "address": addr, "dry_run": dry_run })),
            };
            (client::request(socket, "POST", path, Some(&body))?, render_change)
        }
        Command::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file).map_err(|e| ClientError::Rejected(format!("{}: {e}", file.display())))?;
            (client::request(socket, "POST", "/v1/apply", Some(&json!({ "config": text, "dry_run": dry_run })))?, render_change)
        }
        Command::Flows { vip, limit } => (client::request(socket, "GET", &format!("/v1/flows/{vip}?limit={limit}"), None)?, render_flows),
        Command::Trace { vip, src } => (client::request(socket, "GET", &format!("/v1/trace/{vip}?src={src}"), None)?, render_trace),
        Command::Agent { .. } | Command::Check { .. } => unreachable!("handled in main"),
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    } else {
        print!("{}", render(&answer));
    }
    Ok(())
}

fn render_status(s: &Value) -> String {
    let mut out = String::new();
    for v in s["vips"].as_array().into_iter().flatten() {
        let c = &v["counters"];
        out.push_str(&format!(
            "{} {} {} active={} packets={} live_flows={}\n",
            v["name"].as_str().unwrap_or(""),
            v["address"].as_str().unwrap_or(""),
            v["protocol"].as_str().unwrap_or(""),
            v["active"].as_str().unwrap_or(""),
            c["packets"],
            c["live_flows"]
        ));
        for p in v["pools"].as_array().into_iter().flatten() {
            out.push_str(&format!("  pool {}{}\n", p["name"].as_str().unwrap_or(""), if p["active"] == true { " (active)" } else { "" }));
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
        out.push_str(&format!("{vip}: {:.2}% of new-flow hash space moves\n", pct.as_f64().unwrap_or(0.0)));
    }
    out.push_str(if c["applied"] == true { "applied\n" } else { "dry run: nothing changed\n" });
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
        format!("{} -> {} (existing flow)\n", t["source"].as_str().unwrap_or(""), t["backend"].as_str().unwrap_or("?"))
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
