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
    /// Where the next new backend's id is looked for. Ids are handed out in a ring, so a
    /// deleted backend's id goes back into use only after every other free id has been:
    /// flows still pinned to it are not inherited by the next backend (quarantine).
    #[serde(default)]
    pub next_backend: u32,
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

    /// Starts looking at `cursor` (a persisted ring position) instead of the first id.
    pub(super) fn starting_at(mut self, cursor: u32) -> Self {
        self.next = cursor.clamp(self.first, self.capacity);
        self
    }

    /// Where the next search starts.
    pub(super) fn cursor(&self) -> u32 {
        self.next
    }

    /// The first free id from the cursor on, wrapping once to the first id: ids freed
    /// behind the cursor are reused only when the ones ahead of it are exhausted.
    pub(super) fn alloc(&mut self) -> Result<u32, Exhausted> {
        for _ in 0..2 {
            while self.next < self.capacity && self.used.contains(&self.next) {
                self.next += 1;
            }
            if self.next < self.capacity {
                let id = self.next;
                self.used.insert(id);
                self.next += 1;
                return Ok(id);
            }
            self.next = self.first;
        }
        Err(Exhausted {
            what: self.what,
            capacity: self.capacity,
            setting: self.setting,
        })
    }
}
