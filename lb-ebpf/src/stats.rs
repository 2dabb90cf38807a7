//! Per-CPU counters: per VIP, per backend, and one per verdict reason.

use aya_ebpf::maps::PerCpuArray;
use lb_common::{Counters, Reason};

use crate::maps::{BACKEND_STATS, REASONS, VIP_STATS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

/// What one packet adds to its VIP's and backend's counters.
pub struct Event {
    pub bytes: u16,
    pub reply: bool,
    pub new_flow: bool,
    pub closed: bool,
    pub answered: bool,
    pub reset: bool,
}

impl Event {
    /// The first packet of a flow just recorded.
    #[inline(always)]
    pub fn new_flow(bytes: u16) -> Event {
        Event {
            bytes,
            reply: false,
            new_flow: true,
            closed: false,
            answered: false,
            reset: false,
        }
    }
}

#[inline(always)]
fn bump(map: &PerCpuArray<Counters>, index: u32, e: &Event) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer.
        let c = unsafe { &mut *c };
        if e.reply {
            c.reply_packets += 1;
            c.reply_bytes += e.bytes as u64;
        } else {
            c.packets += 1;
            c.bytes += e.bytes as u64;
        }
        c.new_flows += e.new_flow as u64;
        c.closed_flows += e.closed as u64;
        c.answered_flows += e.answered as u64;
        c.backend_resets += e.reset as u64;
    }
}

#[inline(always)]
pub fn count(vip_id: u32, backend_id: u32, e: &Event) {
    bump(&VIP_STATS, vip_id, e);
    bump(&BACKEND_STATS, backend_id, e);
}
