//! The agent: the core behind one door (`core`), and the startup that builds it and runs
//! the tasks around it (`startup`).

mod core;
mod lifecycle;
mod loads;
mod persist;
mod startup;

pub use core::{Change, Core, CoreError, Counters, HealthReport, LiveScan, Scanned};

pub use lifecycle::{Cleanup, Signals};
pub use loads::LoadScan;
pub use persist::{fnv1a, write_atomic};
pub use startup::*;

/// Why the agent did not start (or `veer check` refused the file).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The core shared by the API, health checks, the canary ticker and metrics.
pub type Shared = std::sync::Arc<tokio::sync::Mutex<Core>>;
