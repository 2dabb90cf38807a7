//! The agent: the core behind one door, and the startup that builds it.

mod lifecycle;
mod startup;

pub use lifecycle::{Cleanup, Signals};

pub use startup::*;
