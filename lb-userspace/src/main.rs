//! `veer`: the agent and the CLI that drives it.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use veer::{agent, dataplane::AttachMode};

#[derive(Parser)]
#[command(name = "veer", version, about = "XDP load balancer for zero-downtime deployments")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
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
    /// Load the XDP balancer, program it from the config, attach, and run until SIGTERM.
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); overrides agent.interfaces.
        #[arg(long = "iface")]
        interfaces: Vec<String>,
        /// Socket for the API (default: agent.socket).
        #[arg(long)]
        socket: Option<PathBuf>,
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
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Agent { config, interfaces, socket: _, xdp_mode } => {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: tokio runtime: {e}");
                    return ExitCode::from(10);
                }
            };
            rt.block_on(agent::run(agent::Options { config, interfaces, mode: xdp_mode }))
        }
        Command::Check { config, interfaces } => agent::check(&config, &interfaces).map(|summary| print!("{summary}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
