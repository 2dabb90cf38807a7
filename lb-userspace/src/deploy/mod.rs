//! Deployments: switch, split, A/B rules, rollback and stepped canaries as pure planning
//! functions over the desired state (`plan`), the ticker that drives running canaries
//! (`ticker`), and the rolling rollout the CLI orchestrates (`rollout`).

mod plan;
pub mod rollout;
mod ticker;

pub use plan::*;
pub use ticker::spawn;
