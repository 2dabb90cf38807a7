//! The agent's HTTP+JSON API.

pub mod limits;
mod routes;

pub use routes::*;
