//! The agent: the core behind one door, and the startup that builds it.

mod startup;

pub use startup::*;
