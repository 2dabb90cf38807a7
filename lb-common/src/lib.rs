//! Everything both sides of veer must agree on: map names and layouts, the flow hash,
//! checksum arithmetic and (with feature `user`) the Maglev table builder.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod conntrack;
pub mod csum;
pub mod hash;
#[cfg(feature = "user")]
pub mod maglev;
pub mod maps;
#[cfg(feature = "user")]
pub mod rr;
pub mod select;

pub use maps::*;
