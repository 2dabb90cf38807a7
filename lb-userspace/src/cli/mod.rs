//! The `veer` command line: `args` (the verbs), `commands` (request, call, print),
//! `render` (plain text), `wait` (--wait progress), `live` and `top` (status --watch and
//! the terminal view), `rollout`, `client` (HTTP over the
//! socket) and `exit` (the exit codes).

mod args;
pub mod client;
mod commands;
pub mod exit;
mod hook;
mod live;
mod render;
mod rollout;
mod top;
mod wait;

use std::{path::PathBuf, process::ExitCode};

use clap::Parser as _;

pub use self::args::Cli;
use self::{
    args::{Command, LogFormat},
    exit::CliError,
};
use crate::{agent, config::DEFAULT_SOCKET};

fn init_logs(format: LogFormat) {
    init_logs_at(format, "info");
}

fn init_logs_at(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `veer`'s entry point.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return exit::code(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
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
            trace,
            log_level,
        } => {
            if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
                eprintln!("error: --log-level {log_level:?}: one of error, warn, info, debug");
                return exit::code(exit::USAGE);
            }
            init_logs_at(cli.log_format, &log_level);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: tokio runtime: {e}");
                    return exit::code(exit::FAILED);
                }
            };
            let socket = explicit_socket(&cli.socket);
            finish_agent(rt.block_on(agent::run(agent::Options {
                config,
                interfaces,
                socket,
                mode: xdp_mode,
                trace,
            })))
        }
        Command::Check { config, interfaces } => {
            finish_agent(agent::check(&config, &interfaces).map(|s| print!("{s}")))
        }
        command => match commands::run(&cli.socket, cli.json, command) {
            Ok(()) => exit::code(exit::OK),
            Err(e) => {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({ "error": e.to_string(), "exit_code": e.exit_code() })
                    );
                } else {
                    eprintln!("error: {e}");
                }
                exit::code(e.exit_code())
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
        Ok(()) => exit::code(exit::OK),
        Err(e) => {
            let e = CliError::from(e);
            eprintln!("error: {e}");
            exit::code(e.exit_code())
        }
    }
}
