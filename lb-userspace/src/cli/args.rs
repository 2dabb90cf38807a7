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

/// The heading of the options every verb takes: kept apart from the verb's own, whose
/// help they would otherwise be interleaved with.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "veer",
    version,
    about = "XDP load balancer for zero-downtime deployments",
    args_override_self = true
)]
pub struct Cli {
    /// Log format on stderr (agent).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain, help_heading = GLOBAL)]
    pub log_format: LogFormat,
    /// The agent's API socket.
    #[arg(long, global = true, env = "VEER_SOCKET", default_value = DEFAULT_SOCKET, help_heading = GLOBAL)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Machine-readable output (stable JSON, see docs/api.md); errors too, and progress as
    /// one JSON object per line.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the agent's remote API (`--api`) instead of its socket.
#[derive(clap::Args)]
pub struct RemoteArgs {
    /// The agent's remote API instead of its socket: https://HOST:PORT (http:// only to a
    /// loopback address). Needs a token: VEER_TOKEN or --token-file.
    #[arg(long, global = true, env = "VEER_API", help_heading = GLOBAL)]
    pub api: Option<String>,
    /// File holding the bearer token for --api (its first line); VEER_TOKEN may hold the
    /// token itself.
    #[arg(long, global = true, env = "VEER_TOKEN_FILE", help_heading = GLOBAL)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates to trust for --api (default: the system's CA bundle).
    #[arg(long, global = true, env = "VEER_CA_FILE", help_heading = GLOBAL)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for --api, when the agent requires one (with --client-key).
    #[arg(long, global = true, env = "VEER_CLIENT_CERT", requires = "client_key", help_heading = GLOBAL)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "VEER_CLIENT_KEY", requires = "client_cert", help_heading = GLOBAL)]
    pub client_key: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line with ECS field names.
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load the XDP balancer, program it, attach, serve the API until SIGTERM.
    Agent {
        /// The config file (TOML, see docs/config.md).
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
        trace: Vec<crate::config::TracePrefix>,
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
        /// The bpffs directory holding the pins (without --config).
        #[arg(long, conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
        /// The agent's state file to remove (without --config).
        #[arg(long, conflicts_with = "config")]
        state_file: Option<PathBuf>,
    },
    /// Validate a config file without touching the kernel (exit 1 when rejected).
    Check {
        /// The config file to validate.
        #[arg(long)]
        config: PathBuf,
        /// Interface the agent would attach to (repeatable); overrides agent.interfaces.
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
        /// The whole config file; its [agent] section must be unchanged.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Blue/green: all new flows to POOL; the old pool drains.
    Switch {
        /// The VIP's name.
        vip: String,
        /// The pool that takes all new flows.
        pool: String,
        /// Wait until the old pool's live flows reach 0 (progress: a bar on a terminal,
        /// a line per change elsewhere, JSON lines with --json).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 3): 30s, 5m, 1m30s.
        #[arg(long, default_value = "5m")]
        drain_timeout: String,
        /// Print what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send PERCENT of new flows (`10%` or `10`) to POOL: manual canary or A/B share.
    Split {
        /// The VIP's name.
        vip: String,
        /// The pool that gets the share (not the active pool).
        pool: String,
        /// Share of new flows: `10%` or `10`, 0 to 100 (0 removes the split).
        percent: String,
        /// flow (per connection) or client (per client address).
        #[arg(long, default_value = "flow", value_parser = word::<SplitBy>)]
        by: SplitBy,
        /// Print what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Client networks that always reach POOL (no --cidr: remove the rules).
    Ab {
        /// The VIP's name.
        vip: String,
        /// The pool those clients reach (not the active pool).
        pool: String,
        /// A client network, ADDR/LEN without host bits (repeatable).
        #[arg(long = "cidr")]
        cidrs: Vec<String>,
        /// Print what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stepped canary: ramp POOL through --steps, each held for --interval while its
    /// backends stay healthy (and --gate passes); rolls back automatically (exit 4); at
    /// 100% it is a switch. `veer canary pause|resume|promote VIP` steers a running one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Canary(CanaryArgs),
    /// Rolling rollout over POOL: per batch, drain, wait for 0 live flows, run CMD (with
    /// `{addr}`, `{host}` and `{port}` replaced), return to ready, wait until healthy.
    Rollout {
        /// The VIP's name.
        vip: String,
        /// The pool whose backends are rolled out, batch by batch.
        pool: String,
        /// Shell command run for each drained backend: {addr} (IP:PORT), {host}, {port}.
        #[arg(long)]
        exec: String,
        /// Backends taken out of service at a time.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Accepted for the contract: a rollout always waits for each batch.
        #[arg(long)]
        wait: bool,
        /// Give up on a batch whose live flows do not reach 0 in this long (exit 3).
        #[arg(long, default_value = "5m")]
        drain_timeout: String,
        /// Give up on a batch that is not healthy this long after its hook (exit 1).
        #[arg(long, default_value = "2m")]
        healthy_timeout: String,
    },
    /// Return all new flows to the previous active pool (or drop a split / A/B rules).
    Rollback {
        /// The VIP's name.
        vip: String,
        /// Print what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Connections of a VIP in the connection table.
    Flows {
        /// The VIP's name.
        vip: String,
        /// List at most this many connections.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The VIP's active table as the kernel holds it: slots per backend and a digest of
    /// slot -> address, to compare across balancer nodes.
    Table {
        /// The VIP's name.
        vip: String,
        /// Print only the digest.
        #[arg(long)]
        digest: bool,
    },
    /// Which backend a flow from SRC gets now (the kernel's own selection function).
    Trace {
        /// The VIP's name.
        vip: String,
        /// The client's IP:PORT or [IPv6]:PORT.
        src: String,
    },
}

/// `veer canary VIP POOL --steps ... --interval DUR`, or a control subcommand.
#[derive(clap::Args)]
pub struct CanaryArgs {
    #[command(subcommand)]
    pub control: Option<CanaryControl>,
    /// The VIP's name.
    #[arg(required = true)]
    pub vip: Option<String>,
    /// The pool that takes the canary's share (not the active pool).
    #[arg(required = true)]
    pub pool: Option<String>,
    /// Percent of new flows per step, ascending, in (0, 100]; 100 completes as a switch.
    #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,100")]
    pub steps: Vec<String>,
    /// How long each step holds: 30s, 2m, 1m30s.
    #[arg(long, required = true)]
    pub interval: Option<String>,
    /// Backends of POOL allowed to fail their checks.
    #[arg(long, default_value_t = 0)]
    pub max_failing: u32,
    /// flow (per connection) or client (per client address).
    #[arg(long, default_value = "flow", value_parser = word::<SplitBy>)]
    pub by: SplitBy,
    /// Shell command run at the end of every step, before the next: exit 0 lets the
    /// canary go on, anything else rolls it back (exit 4). It sees VEER_VIP, VEER_POOL,
    /// VEER_STEP (1-based) and VEER_PERCENT. Implies --wait.
    #[arg(long)]
    pub gate: Option<String>,
    /// Prometheus query gate: `URL QUERY`; a non-empty result lets the canary go on, an
    /// empty one (or an error) rolls it back. Implies --wait.
    #[arg(long, num_args = 2, value_names = ["URL", "QUERY"])]
    pub gate_prometheus: Vec<String>,
    /// A gate that has not answered in this long has failed.
    #[arg(long, default_value = "1m")]
    pub gate_timeout: String,
    /// Follow the canary until it completes (exit 0) or rolls back (exit 4).
    #[arg(long)]
    pub wait: bool,
    /// Print what the first step would move; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand)]
pub enum CanaryControl {
    /// Hold the running canary at its step (health checks still roll it back).
    Pause {
        /// The VIP's name.
        vip: String,
    },
    /// Continue a paused canary with what was left of its step.
    Resume {
        /// The VIP's name.
        vip: String,
    },
    /// Skip the remaining steps: the canary's pool takes all new flows now.
    Promote {
        /// The VIP's name.
        vip: String,
    },
}

#[derive(Subcommand)]
pub enum BackendAction {
    /// `set VIP ADDR weight N` or `set VIP ADDR state ready|drain|maint`.
    Set {
        /// The VIP's name.
        vip: String,
        /// The backend's IP:PORT.
        addr: String,
        #[command(subcommand)]
        what: SetWhat,
        /// Print what would move; change nothing.
        #[arg(long, global = true)]
        dry_run: bool,
    },
    /// Add a backend to a pool.
    Add {
        /// The VIP's name.
        vip: String,
        /// The pool the backend joins.
        pool: String,
        /// The backend's IP:PORT.
        addr: String,
        /// Weight 0..=10000 (default 100).
        #[arg(long)]
        weight: Option<String>,
        /// Print what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a backend (its flows are re-chosen).
    Del {
        /// The VIP's name.
        vip: String,
        /// The backend's IP:PORT.
        addr: String,
        /// Print what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum SetWhat {
    /// New flows in proportion to N (0 drains).
    Weight {
        /// 0..=10000.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// ready, drain (no new flows, flows finish) or maint (no new flows, flows re-chosen).
    State {
        /// ready, drain or maint.
        #[arg(value_parser = word::<AdminState>)]
        value: AdminState,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every argument of every verb, with the path of verbs leading to it.
    fn args(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, bool)>) {
        for a in cmd.get_arguments() {
            let name = a.get_id().to_string();
            if ["help", "version"].contains(&name.as_str()) {
                continue;
            }
            out.push((path.to_string(), name, a.get_help().is_some()));
        }
        for sub in cmd.get_subcommands() {
            args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_of_every_verb_has_help_text() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut all = Vec::new();
        args(&cmd, "veer", &mut all);
        assert!(all.len() > 60, "walked {} arguments", all.len());
        let missing: Vec<String> = all
            .iter()
            .filter(|(_, _, help)| !help)
            .map(|(path, name, _)| format!("{path} {name}"))
            .collect();
        assert!(missing.is_empty(), "arguments without help text: {missing:?}");
        for sub in cmd.get_subcommands() {
            assert!(sub.get_about().is_some(), "veer {} has no about", sub.get_name());
        }
    }

    /// Renders `veer VERB --help` and returns the text under each option.
    fn help_of(verb: &[&str]) -> String {
        let mut argv = vec!["veer"];
        argv.extend(verb);
        argv.push("--help");
        match Cli::try_parse_from(argv) {
            Err(e) => e.render().to_string(),
            Ok(_) => panic!("--help did not print help"),
        }
    }

    #[test]
    fn global_options_come_after_the_verbs_own_under_their_heading() {
        for verb in [
            &["rollout"][..],
            &["switch"],
            &["canary"],
            &["backend", "set"],
            &["status"],
        ] {
            let help = help_of(verb);
            let (own, global) = help
                .split_once("Global options:")
                .unwrap_or_else(|| panic!("{verb:?}: no global options heading: {help}"));
            let lists = |text: &str, flag: &str| text.lines().any(|l| l.trim_start().starts_with(flag));
            for flag in ["--socket", "--json", "--log-format"] {
                assert!(
                    !lists(own, flag),
                    "{verb:?}: {flag} among the verb's own options: {help}"
                );
                assert!(lists(global, flag), "{verb:?}: {flag} missing: {help}");
            }
            let line = |flag: &str| {
                global
                    .lines()
                    .skip_while(|l| !l.trim_start().starts_with(flag))
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            assert!(line("--socket").contains("API socket"), "{verb:?}: {help}");
            assert!(line("--json").contains("Machine-readable"), "{verb:?}: {help}");
            assert!(line("--log-format").contains("Log format"), "{verb:?}: {help}");
        }
    }
}
