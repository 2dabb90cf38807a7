//! Desired state and the reconciler.

mod reconcile;

pub use reconcile::*;
