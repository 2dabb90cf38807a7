//! Desired state and the reconciler that turns it into map writes. Pure: the dataplane
//! executes the [`Op`]s computed here, in order, so the arithmetic and the ordering are
//! tested without a kernel.

mod desired;
mod edit;
mod encode;
mod ids;
mod preview;
mod reconcile;
pub mod validate;

pub use desired::*;
pub use edit::*;
pub use encode::*;
pub use ids::*;
pub use preview::*;
pub use reconcile::*;

/// A config the state's and the deployments' unit tests share: VIP "web" with pools blue
/// (two backends, weights 100 and 300), green (one) and empty.
#[cfg(test)]
pub(crate) mod fixture {
    pub const CFG: &str = r#"
[agent]
snat_v4 = "10.0.0.2"
ring_size = 251
[[vip]]
name = "web"
address = "10.0.0.100:80"
active = "blue"
[[vip.pool]]
name = "blue"
backends = [ { address = "10.0.1.1:80" }, { address = "10.0.1.2:80", weight = 300 } ]
[[vip.pool]]
name = "green"
backends = [ { address = "10.0.2.1:80" } ]
[[vip.pool]]
name = "empty"
"#;
}
