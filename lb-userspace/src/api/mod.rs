//! The agent's HTTP+JSON API: the only way the CLI changes the agent. Endpoints (JSON
//! bodies, stable; see docs/api.md): `GET /v1/status`, `POST /v1/backend/set|add|del`,
//! `POST /v1/apply|switch|split|ab|rollback|canary`, `GET /v1/flows/{vip}?limit=N`,
//! `GET /v1/trace/{vip}?src=IP:PORT`. The optional TCP listener adds TLS and named bearer
//! tokens ([`remote`]).

mod audit;
pub mod limits;
pub mod remote;
mod routes;
mod server;
pub mod types;

pub use server::{serve_tcp, serve_unix};
