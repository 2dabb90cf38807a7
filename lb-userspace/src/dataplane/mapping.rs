//! Kernel maps mapped into the agent's memory (BPF_F_MMAPABLE arrays): the Maglev tables
//! read back instead of copied, and the connection table scanned read-only for live flows.

use super::*;

/// TABLES_V2 mapped into our memory (BPF_F_MMAPABLE). Array elements are 8 bytes apart
/// (the kernel rounds value sizes up to 8); the u32 backend id sits at the start of each.
pub(super) struct TableMemory {
    base: *mut u8,
    len: usize,
    entries: u32,
}

// SAFETY: the mapping is plain shared memory owned by this struct.
unsafe impl Send for TableMemory {}
// SAFETY: every access is a volatile read or write of an aligned u32. Writes go only to
// tables no VIP names yet (the reconciler never rewrites a table in use), and readers read
// only tables in use, so no read races a write of the same table.
unsafe impl Sync for TableMemory {}

impl crate::state::TableStore for TableMemory {
    fn read(&self, id: u32, ring_size: u32) -> Option<Vec<u32>> {
        TableMemory::read(self, id, ring_size).ok()
    }

    fn slot(&self, id: u32, slot: u32, ring_size: u32) -> Option<u32> {
        let i = id as usize * ring_size as usize + slot as usize;
        if slot >= ring_size || i >= self.entries as usize {
            return None;
        }
        // SAFETY: in bounds (checked above); aligned u32 read.
        Some(unsafe { std::ptr::read_volatile(self.base.add(i * TABLE_STRIDE).cast::<u32>()) })
    }
}

const TABLE_STRIDE: usize = 8;

impl TableMemory {
    pub(super) fn map(ebpf: &Ebpf, entries: u32) -> Result<TableMemory, DataplaneError> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(MAP_TABLES) else {
            return Err(DataplaneError::StubObject);
        };
        let (base, len) = map_array(
            data,
            entries as usize * TABLE_STRIDE,
            libc::PROT_READ | libc::PROT_WRITE,
        )?;
        Ok(TableMemory {
            base: base.cast(),
            len,
            entries,
        })
    }

    pub(super) fn write(&self, id: u32, slots: &[u32]) -> Result<(), DataplaneError> {
        let start = id as usize * slots.len();
        if start + slots.len() > self.entries as usize {
            return Err(DataplaneError::Io(std::io::Error::other(format!(
                "table {id} is beyond TABLES capacity"
            ))));
        }
        for (i, backend) in slots.iter().enumerate() {
            // SAFETY: in bounds (checked above); element start is 8-byte aligned.
            unsafe { std::ptr::write_volatile(self.base.add((start + i) * TABLE_STRIDE).cast::<u32>(), *backend) };
        }
        // The table must be complete before the VipInfo write that flips to it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub(super) fn read(&self, id: u32, ring_size: u32) -> Result<Vec<u32>, DataplaneError> {
        let start = id as usize * ring_size as usize;
        if start + ring_size as usize > self.entries as usize {
            return Err(DataplaneError::Io(std::io::Error::other(format!(
                "table {id} is beyond TABLES capacity"
            ))));
        }
        // SAFETY: in bounds; aligned u32 reads.
        Ok((0..ring_size as usize)
            .map(|i| unsafe { std::ptr::read_volatile(self.base.add((start + i) * TABLE_STRIDE).cast::<u32>()) })
            .collect())
    }
}

impl Drop for TableMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Live flows counted in the connection table (see [`Dataplane::live_flows`]), by id: ids
/// are dense (below the maps' sizes), so a count is an index, not a hash lookup.
#[derive(Clone, Debug, Default)]
pub struct LiveFlows {
    by_backend: Vec<u64>,
    by_vip: Vec<u64>,
}

impl LiveFlows {
    pub fn backend(&self, id: u32) -> u64 {
        self.by_backend.get(id as usize).copied().unwrap_or(0)
    }

    pub fn vip(&self, id: u32) -> u64 {
        self.by_vip.get(id as usize).copied().unwrap_or(0)
    }
}

/// The clock the data path stamps flows with (bpf_ktime_get_coarse_ns).
pub(super) fn coarse_monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Maps the first `bytes` (rounded up to pages) of a BPF_F_MMAPABLE array map, shared with
/// the kernel; returns the base and the mapped length (the caller unmaps it).
pub(super) fn map_array(data: &MapData, bytes: usize, prot: libc::c_int) -> Result<(*mut u8, usize), DataplaneError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let len = bytes.div_ceil(4096) * 4096;
    // SAFETY: mapping at most the map's own size of a memory-mappable array map.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            data.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok((base.cast(), len))
}

/// The connection table mapped read-only (see [`Dataplane::flow_scan`]); the mapping stays
/// valid after the maps' file descriptors are closed.
pub struct FlowScan {
    heads: ReadMapping<Heads>,
    ways: ReadMapping<FlowWays>,
    /// Id bounds (the stats maps' sizes): a torn read never indexes past them.
    backends: usize,
    vips: usize,
}

impl FlowScan {
    /// Maps the connection table of a loaded balancer object (the agent's, or a fixture's).
    pub fn of(ebpf: &Ebpf) -> Result<FlowScan, DataplaneError> {
        let size = |name: &'static str| -> Result<usize, DataplaneError> {
            match ebpf.map(name) {
                Some(aya::maps::Map::PerCpuArray(m)) => Ok(m.info().map_err(map_err(name))?.max_entries() as usize),
                _ => Err(DataplaneError::StubObject),
            }
        };
        Ok(FlowScan {
            heads: ReadMapping::of(ebpf, MAP_FLOW_HEADS)?,
            ways: ReadMapping::of(ebpf, MAP_FLOWS)?,
            backends: size(MAP_BACKEND_STATS)?,
            vips: size(MAP_VIP_STATS)?,
        })
    }

    /// Per backend id, what least-conn's correction compares (see [`LoadCorrector`]).
    pub fn load_counts(&self, tcp_idle: Duration, udp_idle: Duration) -> std::collections::HashMap<u32, LoadCount> {
        let now = conntrack::stamp(coarse_monotonic_ns());
        let units = |d: Duration| conntrack::stamp(d.as_nanos().min(u64::MAX as u128) as u64);
        let (tcp, udp) = (units(tcp_idle), units(udp_idle));
        let mut out: std::collections::HashMap<u32, LoadCount> = std::collections::HashMap::new();
        for (h, w) in self.heads.entries().zip(self.ways.entries()) {
            for (way, tag) in h.tags.iter().enumerate() {
                if *tag == 0 {
                    continue;
                }
                let e = &w.ways[way];
                if e.flow.flags & lb_common::FLOW_F_CLOSED != 0 {
                    continue;
                }
                let limit = if e.key.proto == lb_common::PROTO_UDP { udp } else { tcp };
                let live = conntrack::age(now, h.stamps[way]) <= limit;
                let c = out.entry(e.flow.backend_id).or_default();
                match (e.flow.flags & lb_common::FLOW_F_COUNTED != 0, live) {
                    (true, true) => c.counted += 1,
                    (true, false) => {
                        c.counted += 1;
                        c.counted_idle += 1;
                    }
                    (false, true) => c.uncounted_live += 1,
                    (false, false) => {}
                }
            }
        }
        out
    }
    /// Live flows per backend id and per VIP id, counted in the connection table: entries not
    /// seen closing (FIN or RST, either side) and used within `tcp_idle` (TCP) or `udp_idle`
    /// (UDP). One pass over the bucket headers, and over the entries of used ways.
    pub fn live_flows(&self, tcp_idle: Duration, udp_idle: Duration) -> LiveFlows {
        let now = conntrack::stamp(coarse_monotonic_ns());
        let units = |d: Duration| conntrack::stamp(d.as_nanos().min(u64::MAX as u128) as u64);
        let (tcp, udp) = (units(tcp_idle), units(udp_idle));
        let mut live = LiveFlows {
            by_backend: vec![0; self.backends],
            by_vip: vec![0; self.vips],
        };
        let buckets = self.heads.entries.min(self.ways.entries);
        for (i, h) in self.heads.entries().take(buckets).enumerate() {
            for (way, tag) in h.tags.iter().enumerate() {
                if *tag == 0 {
                    continue;
                }
                // Only the fields counted are read: the rest of the entry's cache line is
                // not copied (a full 1M-flow table is 64 MB of entries).
                let e = self.ways.at(i).cast::<lb_common::conntrack::FlowEntry>();
                // SAFETY: i < entries and way < WAYS: inside the mapping; plain integers.
                let (proto, flow) = unsafe {
                    let e = e.add(way);
                    (
                        std::ptr::read_volatile(&raw const (*e).key.proto),
                        std::ptr::read_volatile(&raw const (*e).flow),
                    )
                };
                let limit = if proto == lb_common::PROTO_UDP { udp } else { tcp };
                if flow.flags & lb_common::FLOW_F_CLOSED == 0 && conntrack::age(now, h.stamps[way]) <= limit {
                    if let Some(n) = live.by_backend.get_mut(flow.backend_id as usize) {
                        *n += 1;
                    }
                    if let Some(n) = live.by_vip.get_mut(flow.vip_id as usize) {
                        *n += 1;
                    }
                }
            }
        }
        live
    }
}

/// A read-only view of a memory-mappable array map, unmapped on drop.
pub(super) struct ReadMapping<T> {
    base: *const T,
    len: usize,
    entries: usize,
}

impl<T: Copy> ReadMapping<T> {
    /// Maps the whole of array map `name`.
    pub(super) fn of(ebpf: &Ebpf, name: &'static str) -> Result<Self, DataplaneError> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
            return Err(DataplaneError::StubObject);
        };
        let entries = data.info().map_err(map_err(name))?.max_entries() as usize;
        Self::new(data, entries)
    }

    fn new(data: &MapData, entries: usize) -> Result<Self, DataplaneError> {
        let (base, len) = map_array(data, entries * std::mem::size_of::<T>(), libc::PROT_READ)?;
        Ok(ReadMapping {
            base: base.cast(),
            len,
            entries,
        })
    }

    /// Where value `i` lives (i < entries): read it field by field with volatile reads.
    fn at(&self, i: usize) -> *const T {
        debug_assert!(i < self.entries);
        // SAFETY: i < entries: inside the mapping.
        unsafe { self.base.add(i) }
    }

    /// Copies of the values as they are now, one volatile read each: the data path keeps
    /// writing, so no reference into the mapping is handed out. A value written during its
    /// copy can be torn (plain integers: a wrong count for one scan; tags are checked before
    /// entries are used).
    pub(super) fn entries(&self) -> impl Iterator<Item = T> + '_ {
        // SAFETY: index < entries: inside the mapping, which lives as long as self; T is
        // plain data (Pod), aligned as the kernel lays the array out.
        (0..self.entries).map(|i| unsafe { std::ptr::read_volatile(self.base.add(i)) })
    }
}

// SAFETY: the mapping is shared memory owned by this value, only ever read (volatile,
// value by value); moving it to another thread moves nothing but the pointer.
unsafe impl<T: Copy> Send for ReadMapping<T> {}

impl<T> Drop for ReadMapping<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.base as *mut _, self.len) };
    }
}
