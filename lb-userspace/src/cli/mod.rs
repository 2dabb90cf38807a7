//! The `veer` command line: `args` (the verbs), `commands` (check, request, call, print),
//! `render` (plain text), `progress` and `wait` (--wait), `gate` (canary gates),
//! `live` and `top` (status --watch and the terminal view), `rollout`, `client` (HTTP over
//! the socket) and `exit` (the exit codes).

mod args;
pub mod client;
mod commands;
pub mod exit;
mod gate;
mod hook;
mod live;
mod progress;
mod render;
mod rollout;
mod top;
mod wait;

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, FromArgMatches as _, parser::ValueSource};

pub use self::args::Cli;
use self::{
    args::{Command, LogFormat},
    client::Endpoint,
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
        LogFormat::Json => builder.event_format(crate::logs::Ecs).init(),
    }
}

/// `--json` among the arguments (before a `--`), for errors found before they parse.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Prints an error (JSON on stdout with `--json`, else on stderr) and returns its code.
fn fail(json: bool, message: &str, code: u8) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "error": message, "exit_code": code }));
    } else {
        eprintln!("error: {message}");
    }
    exit::code(code)
}

/// How the socket was chosen, for the unreachable message.
fn socket_origin(source: Option<ValueSource>) -> &'static str {
    match source {
        Some(ValueSource::CommandLine) => "the socket given by --socket",
        Some(ValueSource::EnvVariable) => "the socket named by VEER_SOCKET",
        _ => "the default socket; choose another with --socket or VEER_SOCKET",
    }
}

/// `veer`'s entry point.
pub fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m.value_source("socket"))));
    let (cli, socket_source) = match parsed {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return exit::code(exit::OK);
        }
        Err(e) => {
            if json_requested() {
                let text = e.render().to_string();
                // The error's own lines, before the usage clap appends: one line.
                let head = text.split("\n\nUsage:").next().unwrap_or(&text);
                let head = head.strip_prefix("error: ").unwrap_or(head);
                let message = head.split_whitespace().collect::<Vec<_>>().join(" ");
                println!(
                    "{}",
                    serde_json::json!({ "error": message, "exit_code": exit::USAGE, "usage": text })
                );
            } else {
                let _ = e.print();
            }
            return exit::code(exit::USAGE);
        }
    };
    match cli.command {
        Command::Agent {
            config, cleanup: true, ..
        } => {
            init_logs(cli.log_format);
            finish_agent(
                cli.json,
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
            finish_agent(cli.json, cleanup.and_then(|c| c.run()).map(|s| print!("{s}")))
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
                return fail(
                    cli.json,
                    &format!("--log-level {log_level:?}: one of error, warn, info, debug"),
                    exit::USAGE,
                );
            }
            init_logs_at(cli.log_format, &log_level);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(cli.json, &format!("tokio runtime: {e}"), exit::FAILED),
            };
            let socket = explicit_socket(&cli.socket);
            finish_agent(
                cli.json,
                rt.block_on(agent::run(agent::Options {
                    config,
                    interfaces,
                    socket,
                    mode: xdp_mode,
                    trace,
                })),
            )
        }
        Command::Check { config, interfaces } => {
            let json = cli.json;
            finish_agent(
                json,
                agent::check(&config, &interfaces).map(|report| {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print!("{report}");
                    }
                }),
            )
        }
        command => {
            let agent = match endpoint(&cli.socket, &cli.remote) {
                Ok(a) => a,
                Err(e) => return fail(cli.json, &e.to_string(), e.exit_code()),
            };
            let origin = match &agent {
                Endpoint::Socket(_) => socket_origin(socket_source),
                Endpoint::Remote(_) => "the remote API given by --api or VEER_API",
            };
            match commands::run(&agent, cli.json, command) {
                Ok(()) => exit::code(exit::OK),
                Err(CliError::Unreachable(m)) => fail(
                    cli.json,
                    &CliError::Unreachable(format!("{m} ({origin})")).to_string(),
                    exit::UNREACHABLE,
                ),
                Err(e) => fail(cli.json, &e.to_string(), e.exit_code()),
            }
        }
    }
}

/// Where the client verbs go: the remote API with `--api`, else the socket.
fn endpoint(socket: &std::path::Path, cli: &args::RemoteArgs) -> Result<Endpoint, CliError> {
    let Some(url) = &cli.api else {
        return Ok(Endpoint::Socket(socket.to_path_buf()));
    };
    let token = match (&cli.token_file, std::env::var("VEER_TOKEN")) {
        (Some(file), _) => std::fs::read_to_string(file)
            .map_err(|e| CliError::Rejected(format!("--token-file {}: {e}", file.display())))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        (None, Ok(t)) => t.trim().to_string(),
        (None, Err(_)) => String::new(),
    };
    if token.is_empty() {
        return Err(CliError::Rejected(
            "--api needs a bearer token: VEER_TOKEN, or --token-file / VEER_TOKEN_FILE".into(),
        ));
    }
    let remote = client::Remote::new(
        url,
        client::RemoteOptions {
            token,
            ca_file: cli.ca_file.as_deref(),
            client_cert: cli.client_cert.as_deref().zip(cli.client_key.as_deref()),
        },
    )?;
    Ok(Endpoint::Remote(Box::new(remote)))
}

/// The socket given on the command line or in VEER_SOCKET (None: the config's).
fn explicit_socket(socket: &std::path::Path) -> Option<PathBuf> {
    std::env::var_os("VEER_SOCKET")
        .map(PathBuf::from)
        .or_else(|| (socket.as_os_str() != DEFAULT_SOCKET).then(|| socket.to_path_buf()))
}

fn finish_agent(json: bool, r: Result<(), agent::AgentError>) -> ExitCode {
    match r {
        Ok(()) => exit::code(exit::OK),
        Err(e) => {
            let e = CliError::from(e);
            fail(json, &e.to_string(), e.exit_code())
        }
    }
}
