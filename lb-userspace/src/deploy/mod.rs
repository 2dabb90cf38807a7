//! Deployments: planning and the canary ticker.

mod ticker;

pub use ticker::*;
