//! Desired state and the reconciler.

mod preview;
mod reconcile;

pub use preview::*;
pub use reconcile::*;
