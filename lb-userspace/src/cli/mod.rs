//! The `veer` command line.

pub mod client;
mod commands;
mod hook;

pub use commands::{Cli, main};
