//! The opt-in debug trace: each decision about a packet whose client or VIP address is in
//! TRACE_FILTER, logged with aya-log at debug level by a program of its own (veer_trace),
//! tail-called after the verdict. Off (TRACE = 0, the default) every hook below reads a
//! constant the verifier knows and is removed from the verified program: no cost. See
//! docs/decisions.md, "Trace".

use aya_ebpf::{
    macros::{map, xdp},
    maps::{LpmTrie, ProgramArray, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{DEFAULT_MAX_TRACE_PREFIXES, FAMILY_V4, FlowKey, Reason, TraceKey};

use crate::maps::scratch;

/// 1: trace (lb_common::GLOBAL_TRACE). Read-only data the loader may rewrite.
#[unsafe(no_mangle)]
static TRACE: u32 = 0;

#[map(name = "TRACE_FILTER_V1")]
static TRACE_FILTER: LpmTrie<TraceKey, u8> = LpmTrie::with_max_entries(DEFAULT_MAX_TRACE_PREFIXES, 0);

#[map(name = "TRACE_PROGS_V1")]
static TRACE_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[inline(always)]
fn on() -> bool {
    // SAFETY: a read of a constant the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&TRACE) != 0 }
}

#[inline(always)]
fn listed(family: u8, addr: &[u32; 4]) -> bool {
    let key = Key::new(
        if family == FAMILY_V4 { 64 } else { 160 },
        TraceKey {
            family_be: (family as u32).to_be(),
            addr_be: *addr,
        },
    );
    TRACE_FILTER.get(&key).is_some()
}

/// The packet's 5-tuple is known: trace it if its client (source) or VIP (destination)
/// is listed.
#[inline(always)]
pub fn select(key: &FlowKey) {
    if !on() {
        return;
    }
    let traced = listed(key.family, &key.src_be) || listed(key.family, &key.dst_be);
    if let Some(s) = scratch() {
        s.trace = traced as u32;
    }
}

/// The packet's decision is `reason`, its XDP action `action`: hand a traced packet to
/// the trace program, which logs and returns the same action. Returns `action` (also when
/// that program is missing). Clears the mark, so a packet that never reaches
/// [`select`] (not TCP/UDP to a VIP or the SNAT address) is never traced.
#[inline(always)]
pub fn finish(ctx: &XdpContext, reason: Reason, action: u32) -> u32 {
    if on()
        && let Some(s) = scratch()
        && s.trace != 0
    {
        s.trace = 0;
        s.trace_reason = reason as u32;
        s.trace_action = action;
        // SAFETY: tail call into the trace program; returns only on failure.
        let _ = unsafe { TRACE_PROGS.tail_call(ctx, 0) };
    }
    action
}

/// The trace program: one debug line per traced packet — decision (reason), XDP action
/// and the packet's 5-tuple as it arrived.
#[xdp]
pub fn veer_trace(ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else {
        return aya_ebpf::bindings::xdp_action::XDP_ABORTED;
    };
    let (reason, action, k) = (s.trace_reason, s.trace_action, s.key);
    let (sport, dport) = (u16::from_be(k.sport_be), u16::from_be(k.dport_be));
    // Reason and action as numbers: the agent's logger names them (dataplane::trace).
    if k.family == FAMILY_V4 {
        let (src, dst) = (k.src_be[0].to_ne_bytes(), k.dst_be[0].to_ne_bytes());
        debug!(
            &ctx,
            "reason {} action {} proto {} {:i}:{} -> {:i}:{}", reason, action, k.proto, src, sport, dst, dport
        );
    } else {
        let (src, dst) = (words(&k.src_be), words(&k.dst_be));
        debug!(
            &ctx,
            "reason {} action {} proto {} [{:i}]:{} -> [{:i}]:{}", reason, action, k.proto, src, sport, dst, dport
        );
    }
    action
}

#[inline(always)]
fn words(a: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = a[i].to_ne_bytes();
        out[4 * i] = b[0];
        out[4 * i + 1] = b[1];
        out[4 * i + 2] = b[2];
        out[4 * i + 3] = b[3];
        i += 1;
    }
    out
}
