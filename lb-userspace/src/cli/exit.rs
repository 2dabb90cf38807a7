//! Exit codes, the one list (DESIGN.md's contract), and the errors that lead to them.

use std::process::ExitCode;

pub const OK: u8 = 0;
/// Rejected input: an invalid value, a refused change, a bad config file.
pub const REJECTED: u8 = 1;
/// The agent is not there (no socket, refused, timed out).
pub const UNREACHABLE: u8 = 2;
/// Waiting (drain) ran out of time.
pub const TIMED_OUT: u8 = 3;
/// A canary rolled back.
pub const ROLLED_BACK: u8 = 4;
/// The agent failed (the kernel refused the program, a map write failed).
pub const FAILED: u8 = 10;
/// A usage error: unknown verb, missing or malformed argument.
pub const USAGE: u8 = 64;

#[derive(Debug)]
pub enum CliError {
    Unreachable(String),
    Rejected(String),
    TimedOut(String),
    RolledBack(String),
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable(_) => UNREACHABLE,
            CliError::Rejected(_) => REJECTED,
            CliError::TimedOut(_) => TIMED_OUT,
            CliError::RolledBack(_) => ROLLED_BACK,
            CliError::Failed(_) => FAILED,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Unreachable(m) => write!(f, "agent unreachable: {m}"),
            CliError::Rejected(m) | CliError::Failed(m) => f.write_str(m),
            CliError::TimedOut(m) => write!(f, "timed out: {m}"),
            CliError::RolledBack(m) => write!(f, "rolled back: {m}"),
        }
    }
}

impl From<crate::agent::AgentError> for CliError {
    fn from(e: crate::agent::AgentError) -> CliError {
        match e {
            crate::agent::AgentError::Rejected(m) => CliError::Rejected(m),
            crate::agent::AgentError::Failed(e) => CliError::Failed(format!("{e:#}")),
        }
    }
}

pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}
