//! veer's control plane: configuration, desired state, the data-path owner, the API and
//! the CLI.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod deploy;
pub mod health;
pub mod host;
pub mod logs;
pub mod metrics;
pub mod state;

pub use cli::client;
