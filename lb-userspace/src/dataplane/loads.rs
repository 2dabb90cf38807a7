//! Least-conn's live-flow counts per backend (BACKEND_LOAD), mapped into the agent's
//! memory: the weights the data path divides by, and the agent's drift corrections.

use super::{mapping::map_array, *};

/// One backend's open (not seen closing) flows in the connection table, as least-conn's
/// correction sorts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadCount {
    /// Entries the data path counted in `BackendLoad.live` (FLOW_F_COUNTED).
    pub counted: i64,
    /// Of those, idle past agent.tcp_idle / udp_idle: no longer live.
    pub counted_idle: i64,
    /// Live entries the data path did not count (opened before the VIP was least-conn).
    pub uncounted_live: i64,
}

/// BACKEND_LOAD mapped read-write (BPF_F_MMAPABLE): least-conn's weights, written here, and
/// live counts, which the data path changes by atomic adds while the agent reads them.
pub struct LoadMemory {
    base: *mut BackendLoad,
    len: usize,
    entries: u32,
}

// SAFETY: shared memory owned by this value; every access is a volatile or atomic access
// to one field, as the data path makes them.
unsafe impl Send for LoadMemory {}

impl LoadMemory {
    /// Maps BACKEND_LOAD of a loaded balancer object (the agent's, or a fixture's).
    pub fn of(ebpf: &Ebpf) -> Result<LoadMemory, DataplaneError> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(lb_common::MAP_BACKEND_LOAD) else {
            return Err(DataplaneError::StubObject);
        };
        let entries = data.info().map_err(map_err(lb_common::MAP_BACKEND_LOAD))?.max_entries();
        let (base, len) = map_array(
            data,
            entries as usize * std::mem::size_of::<BackendLoad>(),
            libc::PROT_READ | libc::PROT_WRITE,
        )?;
        Ok(LoadMemory {
            base: base.cast(),
            len,
            entries,
        })
    }

    pub(super) fn slot(&self, id: u32) -> Option<*mut BackendLoad> {
        // SAFETY: in bounds of the mapping; 16-byte elements, 8-byte aligned.
        (id < self.entries).then(|| unsafe { self.base.add(id as usize) })
    }

    /// A backend's load as it stands (None: beyond the map).
    pub fn get(&self, id: u32) -> Option<BackendLoad> {
        // SAFETY: a slot of the mapping; field by field, as the data path writes them.
        self.slot(id).map(|p| unsafe {
            BackendLoad {
                live: std::ptr::read_volatile(&raw const (*p).live),
                weight: std::ptr::read_volatile(&raw const (*p).weight),
                offset: std::ptr::read_volatile(&raw const (*p).offset),
            }
        })
    }

    pub fn set_weight(&self, id: u32, weight: u32) {
        if let Some(p) = self.slot(id) {
            // SAFETY: a slot of the mapping; only the agent writes weights.
            unsafe { std::ptr::write_volatile(&raw mut (*p).weight, weight) };
        }
    }

    pub fn set_offset(&self, id: u32, offset: i32) {
        if let Some(p) = self.slot(id) {
            // SAFETY: a slot of the mapping; only the agent writes offsets.
            unsafe { std::ptr::write_volatile(&raw mut (*p).offset, offset) };
        }
    }

    /// Zero count and offset: the id names a new backend.
    pub fn reset(&self, id: u32) {
        if let Some(p) = self.slot(id) {
            // SAFETY: a slot of the mapping; `live` is only ever accessed atomically.
            unsafe {
                std::sync::atomic::AtomicU64::from_ptr(&raw mut (*p).live)
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                std::ptr::write_volatile(&raw mut (*p).offset, 0);
            }
        }
    }
}

impl Drop for LoadMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Keeps least-conn's counts honest. The data path counts a flow up when it is recorded
/// and down when it is seen closing or overwritten; a flow that just goes quiet stays
/// counted there, and two CPUs scheduling one flow at once count it twice. Every round
/// scans the connection table and writes, per backend, the offset the data path subtracts
/// (`BackendLoad::flows`): counted flows now idle, less live flows it did not count, plus
/// the drift of its count from the table. The drift is measured only when the count did
/// not move during the scan (a busy backend keeps the drift its last quiet scan found),
/// so a round never mistakes flows opened during the scan for drift.
#[derive(Debug, Default)]
pub struct LoadCorrector {
    drift: std::collections::HashMap<u32, i64>,
}

impl LoadCorrector {
    /// One round over backend ids `ids`; returns the offsets written.
    pub fn correct(
        &mut self,
        scan: &FlowScan,
        loads: &LoadMemory,
        ids: &[u32],
        tcp_idle: Duration,
        udp_idle: Duration,
    ) -> Vec<(u32, i32)> {
        let before: Vec<Option<i64>> = ids.iter().map(|&id| loads.get(id).map(|l| l.live as i64)).collect();
        let counts = scan.load_counts(tcp_idle, udp_idle);
        let mut written = Vec::new();
        for (&id, before) in ids.iter().zip(before) {
            let (Some(before), Some(now)) = (before, loads.get(id)) else {
                continue;
            };
            let c = counts.get(&id).copied().unwrap_or_default();
            let live = now.live as i64;
            if live == before {
                self.drift.insert(id, live.wrapping_sub(c.counted));
            }
            let drift = self.drift.get(&id).copied().unwrap_or(0);
            let offset = (c.counted_idle - c.uncounted_live + drift).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            if offset != now.offset {
                loads.set_offset(id, offset);
            }
            written.push((id, offset));
        }
        self.drift.retain(|id, _| ids.contains(id));
        written
    }
}
