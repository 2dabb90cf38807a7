//! Filling the pinned connection table by hand: what a busy balancer's table looks like to
//! a scan (status, metrics), without the traffic that would take minutes to make it.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use lb_common::conntrack::{FlowWays, Heads, WAYS, stamp};

/// Fills every way of the pinned connection table under `pin_dir` with a live TCP flow of
/// VIP `vip_id` on `backends` (round robin); returns the count.
pub fn fill_connection_table(pin_dir: &Path, vip_id: u32, backends: &[u32]) -> anyhow::Result<usize> {
    anyhow::ensure!(!backends.is_empty(), "no backend ids to fill the table with");
    let map = |name: &str| aya::maps::MapData::from_pin(pin_dir.join(name));
    let (heads, ways) = (map(lb_common::MAP_FLOW_HEADS)?, map(lb_common::MAP_FLOWS)?);
    let buckets = heads.info()?.max_entries() as usize;
    let (hp, hlen) = mapped(&heads, buckets * size_of::<Heads>())?;
    let (wp, wlen) = mapped(&ways, buckets * size_of::<FlowWays>())?;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let now = stamp(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
    for i in 0..buckets {
        // SAFETY: i < buckets, inside both mappings; plain data.
        let (h, w) = unsafe { (&mut *hp.cast::<Heads>().add(i), &mut *wp.cast::<FlowWays>().add(i)) };
        for way in 0..WAYS {
            let n = (i * WAYS + way) as u32;
            let e = &mut w.ways[way];
            e.key.src_be = [(0x0a00_0000 | n).to_be(), 0, 0, 0];
            e.key.proto = lb_common::PROTO_TCP;
            e.key.family = lb_common::FAMILY_V4;
            e.flow.backend_id = backends[n as usize % backends.len()];
            e.flow.vip_id = vip_id;
            h.stamps[way] = now;
            h.tags[way] = 0x8000_0000 | (n << 2);
        }
    }
    // SAFETY: the mappings made above.
    unsafe {
        libc::munmap(hp, hlen);
        libc::munmap(wp, wlen);
    }
    Ok(buckets * WAYS)
}

/// A shared, writable mapping of a memory-mappable array map of at least `bytes`.
fn mapped(data: &aya::maps::MapData, bytes: usize) -> anyhow::Result<(*mut libc::c_void, usize)> {
    let len = bytes.div_ceil(4096) * 4096;
    // SAFETY: a shared mapping of a memory-mappable array map, no larger than the map.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            data.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    anyhow::ensure!(p != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    Ok((p, len))
}
