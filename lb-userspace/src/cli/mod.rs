//! The `veer` command line.

pub mod client;
mod commands;

pub use commands::{Cli, main};
