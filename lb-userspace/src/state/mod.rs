//! Desired state and the reconciler that turns it into map writes. Pure: the dataplane
//! executes the [`Op`]s computed here, in order, so the arithmetic and the ordering are
//! tested without a kernel.

mod desired;
mod encode;
mod ids;
mod preview;
mod reconcile;

pub use desired::*;
pub use encode::*;
pub use ids::*;
pub use preview::*;
pub use reconcile::*;
