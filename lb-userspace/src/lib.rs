//! veer's control plane: configuration, desired state, and the data-path owner.

pub mod agent;
pub mod config;
pub mod dataplane;
pub mod state;
