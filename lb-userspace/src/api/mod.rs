//! The agent's HTTP+JSON API.

mod routes;

pub use routes::*;
