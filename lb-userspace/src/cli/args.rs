//! The command line: every verb and its arguments (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::{AttachMode, DEFAULT_SOCKET},
    state::{AdminState, SplitBy},
};

/// A word of one of the agent's enums, spelled as in the config and the API (serde's
/// names), so the CLI has no second list of them.
fn word<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer as _;
    T::deserialize(s.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
}

#[derive(Parser)]
#[command(
    name = "veer",
    version,
    about = "XDP load balancer for zero-downtime deployments",
    args_override_self = true
)]
pub struct Cli {
    /// Log format on stderr (agent).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// The agent's API socket.
    #[arg(long, global = true, env = "VEER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Machine-readable output (stable JSON, see docs/api.md).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load the XDP balancer, program it, attach, serve the API until SIGTERM.
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); overrides agent.interfaces.
        #[arg(long = "iface")]
        interfaces: Vec<String>,
        /// auto (native, else generic with a warning), native or generic.
        #[arg(long, default_value = "auto", value_parser = word::<AttachMode>)]
        xdp_mode: AttachMode,
        /// Do not run: remove the data path (program, pins), the state file and the
        /// neighbour entries the agent kept, then exit. Refused while an agent runs.
        #[arg(long)]
        cleanup: bool,
        /// Log the data path's decision about every packet from this client network or
        /// to this VIP (ADDR or ADDR/LEN, repeatable) at debug level: with
        /// `--log-level debug`. Off by default, and then free.
        #[arg(long = "trace", value_name = "PREFIX")]
        trace: Vec<crate::dataplane::TracePrefix>,
        /// error, warn, info (default) or debug; RUST_LOG, when set, wins.
        #[arg(long, default_value = "info")]
        log_level: String,
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
    Status {
        /// Refresh every --interval until interrupted, with packets and new flows per
        /// second: redrawn on a terminal, one block per refresh elsewhere, NDJSON with --json.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes: 1s, 500ms.
        #[arg(long, default_value = "1s", requires = "watch")]
        interval: String,
        /// Stop --watch after this many refreshes (scripts, CI logs).
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// Live terminal view of VIPs, pools and backends: packets/s, new flows/s, live flows,
    /// health, weights, split or canary state (q quits). Needs a terminal.
    Top {
        /// How often the view refreshes: 1s, 500ms.
        #[arg(long, default_value = "1s")]
        interval: String,
    },
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
        /// Give up waiting after this long (exit 3): 30s, 5m, 1m30s.
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
        /// flow (per connection) or client (per client address).
        #[arg(long, default_value = "flow", value_parser = word::<SplitBy>)]
        by: SplitBy,
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
        /// 30s, 2m, 1m30s.
        #[arg(long)]
        interval: String,
        /// Backends of POOL allowed to fail their checks.
        #[arg(long, default_value_t = 0)]
        max_failing: u32,
        /// flow (per connection) or client (per client address).
        #[arg(long, default_value = "flow", value_parser = word::<SplitBy>)]
        by: SplitBy,
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
    /// Which backend a flow from SRC gets now (the kernel's own selection function).
    Trace { vip: String, src: String },
}

#[derive(Subcommand)]
pub enum BackendAction {
    /// `set VIP ADDR weight N` or `set VIP ADDR state ready|drain|maint`.
    Set {
        vip: String,
        addr: String,
        #[command(subcommand)]
        what: SetWhat,
        #[arg(long, global = true)]
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

#[derive(Subcommand)]
pub enum SetWhat {
    /// New flows in proportion to N (0 drains).
    Weight { value: i64 },
    /// ready, drain (no new flows, flows finish) or maint (no new flows, flows re-chosen).
    State {
        #[arg(value_parser = word::<AdminState>)]
        value: AdminState,
    },
}
