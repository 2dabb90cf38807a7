//! Ids in the maps (VIP stats index, backend id, table id): stable across changes and
//! persisted, so a restarted agent keeps writing into the same slots.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};

/// No id is free: the map is full.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no free {what} id (capacity {capacity}): restart the agent with a larger agent.{setting}")]
pub struct Exhausted {
    pub what: &'static str,
    pub capacity: u32,
    pub setting: &'static str,
}

/// Ids in use in the maps. Persisted with the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// VIP name -> VIP_STATS index.
    pub vips: BTreeMap<String, u32>,
    /// "vip|addr" -> BACKENDS index.
    pub backends: BTreeMap<String, u32>,
    /// "vip|pool" -> table id.
    pub tables: BTreeMap<String, u32>,
}

pub fn backend_key(vip: &str, addr: SocketAddr) -> String {
    format!("{vip}|{addr}")
}

pub fn pool_key(vip: &str, pool: &str) -> String {
    format!("{vip}|{pool}")
}

/// Capacities fixed when the maps were created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub ring_size: u32,
    pub max_backends: u32,
    pub max_tables: u32,
    pub max_vips: u32,
    pub max_ab_rules: u32,
}

/// Hands out the lowest free ids from a cursor: O(1) amortised per id, so 10,000 backends
/// are numbered in microseconds.
#[derive(Default)]
pub(super) struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
    first: u32,
    capacity: u32,
    what: &'static str,
    setting: &'static str,
}

impl IdAllocator {
    pub(super) fn new(
        used: impl IntoIterator<Item = u32>,
        first: u32,
        capacity: u32,
        what: &'static str,
        setting: &'static str,
    ) -> Self {
        IdAllocator {
            used: used.into_iter().collect(),
            next: first,
            first,
            capacity,
            what,
            setting,
        }
    }

    pub(super) fn alloc(&mut self) -> Result<u32, Exhausted> {
        while self.next < self.capacity && self.used.contains(&self.next) {
            self.next += 1;
        }
        if self.next >= self.capacity {
            // ids freed below the cursor are reused only when the top is exhausted
            let free = (self.first..self.capacity).find(|i| !self.used.contains(i));
            let id = free.ok_or(Exhausted {
                what: self.what,
                capacity: self.capacity,
                setting: self.setting,
            })?;
            self.used.insert(id);
            return Ok(id);
        }
        let id = self.next;
        self.used.insert(id);
        Ok(id)
    }
}
