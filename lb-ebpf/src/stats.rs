//! Per-CPU counters: per VIP, per backend, and one per verdict reason.

use lb_common::Reason;

use crate::maps::{BACKEND_STATS, REASONS, VIP_STATS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_vip(vip_id: u32, bytes: u16, new_flow: bool) {
    if let Some(c) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes as u64;
        c.new_flows += new_flow as u64;
    }
}

#[inline(always)]
pub fn count_backend(backend_id: u32, bytes: u16, new_flow: bool) {
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes as u64;
        c.new_flows += new_flow as u64;
    }
}
