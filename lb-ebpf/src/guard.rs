//! The flood guard: a per-CPU budget of new flows per window of about a second. Within it,
//! a full bucket's least recently used flow gives way as usual (unconfirmed ones first,
//! see lb_common::conntrack::Heads::choose); beyond it, a confirmed flow gives way only
//! once idle for the hold, so a flood of spoofed first packets churns only unconfirmed
//! entries. Every new flow is counted by how it got its way (lb_common::FloodGuard).

use lb_common::{
    FloodGuard,
    conntrack::{HOLD_CONFIRMED, TAKE_NONE, WAYS},
};

use crate::maps::{FLOOD_GUARD, conn_mask};

/// New flows per CPU per window; u32::MAX (the default) derives it from the table: a
/// quarter of its capacity per CPU per second. The loader may override it
/// (lb_common::GLOBAL_FLOW_BUDGET).
#[unsafe(no_mangle)]
static FLOW_BUDGET: u32 = u32::MAX;

#[inline(always)]
fn budget() -> u32 {
    // SAFETY: a read of a constant the loader may have rewritten.
    let b = unsafe { core::ptr::read_volatile(&FLOW_BUDGET) };
    if b == u32::MAX {
        (conn_mask() + 1) * WAYS as u32 / 4
    } else {
        b
    }
}

/// This CPU's guard, its window moved to `now`'s.
#[inline(always)]
pub fn open(now: u32) -> Option<&'static mut FloodGuard> {
    // SAFETY: per-CPU value, used by one program run at a time (XDP does not nest).
    let g = unsafe { &mut *FLOOD_GUARD.get_ptr_mut(0)? };
    let window = now >> 10;
    if g.window != window {
        g.window = window;
        g.inserts = 0;
    }
    Some(g)
}

/// The hold a confirmed flow's connection entry has against a new flow: none within the
/// budget, [`HOLD_CONFIRMED`] beyond it.
#[inline(always)]
pub fn hold(g: &FloodGuard) -> u32 {
    if g.inserts < budget() { 0 } else { HOLD_CONFIRMED }
}

/// Counts a new flow's way choice (`kind`: conntrack::TAKE_*).
#[inline(always)]
pub fn count(g: &mut FloodGuard, kind: u32) {
    if g.inserts >= budget() {
        g.over_budget += 1;
    }
    if let Some(c) = g.taken.get_mut(kind as usize) {
        *c += 1;
    }
    if kind != TAKE_NONE {
        g.inserts += 1;
    }
}
