//! Next hop: bpf_fib_lookup gives the egress interface and both MACs; same interface ->
//! XDP_TX, another one -> XDP_REDIRECT through the devmap.
//!
//! A FIB lookup costs more than the rest of the established path together (measured:
//! ~190 ns IPv4, ~400 ns IPv6, against ~130 ns for everything else), so its result is
//! cached — per backend and per client flow — and looked up again about once a second, or
//! at once when the neighbour is not resolved. A neighbour's new MAC is picked up within
//! that second.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{FAMILY_V4, NextHop, Reason};

use crate::{
    Verdict,
    maps::{NEXTHOPS, TX_PORTS, scratch},
    packet::ptr_at,
};

/// 1: a NAT reply is accepted only from the interface its flow leaves by towards the
/// backend (lb_common::GLOBAL_REPLY_IFACE_CHECK; the agent sets it when it runs on more
/// than one interface). Read-only data: the verifier sees the value and drops the check
/// from a program loaded with 0.
#[unsafe(no_mangle)]
static REPLY_IFACE_CHECK: u32 = 0;

/// Did this packet, a reply of a flow to `backend_id` (or an error about one), arrive on
/// the interface the flow leaves by? That interface is the backend's cached next hop; with
/// nothing cached yet (0), or the check off, yes. See docs/decisions.md, "Reply interface".
#[inline(always)]
pub fn arrived_by_egress(ctx: &XdpContext, backend_id: u32) -> bool {
    // SAFETY: a read of a constant the loader may have rewritten.
    if unsafe { core::ptr::read_volatile(&REPLY_IFACE_CHECK) } == 0 {
        return true;
    }
    let Some(hop) = NEXTHOPS.get(backend_id) else {
        return true;
    };
    // SAFETY: the context pointer is valid for the program's run.
    hop.ifindex == 0 || hop.ifindex == unsafe { (*ctx.ctx).ingress_ifindex }
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The cached next hop toward backend `id` (filled by [`resolve`]).
#[inline(always)]
pub fn hop_of(id: u32) -> Result<&'static mut NextHop, Verdict> {
    let hop = NEXTHOPS.get_ptr_mut(id).ok_or(Verdict::Drop(Reason::DropNoBackend))?;
    // SAFETY: array slot valid for the program's lifetime; racing writers store equal values.
    Ok(unsafe { &mut *hop })
}

/// The rewritten packet's addresses, as the FIB lookup needs them.
pub struct Path<'a> {
    pub family: u8,
    pub src: &'a [u32; 4],
    pub dst: &'a [u32; 4],
    /// A NAT reply (counted under the reply reasons).
    pub reply: bool,
}

/// Sends the rewritten packet towards `path.dst` using (and refreshing) the cached `hop`.
#[inline(always)]
pub fn forward(ctx: &XdpContext, hop: &mut NextHop, path: &Path, now_ns: u64) -> Verdict {
    match resolve(ctx, hop, path, now_ns) {
        Err(v) => v,
        Ok(false) => Verdict::Pass(Reason::PassNoNeigh),
        Ok(true) => send(ctx, hop, path.reply),
    }
}

/// Refreshes the cached `hop` towards `path.dst` (about once a second, or at once while
/// it is not resolved): Ok(true) when it is ready, Ok(false) when the neighbour is not
/// resolved yet (pass the rewritten packet to the stack), Err with the verdict otherwise.
#[inline(always)]
pub fn resolve(ctx: &XdpContext, hop: &mut NextHop, path: &Path, now_ns: u64) -> Result<bool, Verdict> {
    let now = (now_ns >> 30) as u32;
    if hop.ifindex == 0 || hop.stamp != now {
        match lookup(ctx, hop, path.src, path.dst, path.family) {
            0 => {}
            r if r == Reason::PassNoNeigh as u32 => return Ok(false),
            _ => return Err(Verdict::Drop(Reason::DropFib)),
        }
        hop.stamp = now;
    }
    Ok(true)
}

/// Writes the cached hop's MACs and sends the packet: XDP_TX out of the ingress interface,
/// else a redirect through the devmap.
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: &NextHop, reply: bool) -> Verdict {
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else {
        return Verdict::Drop(Reason::DropTruncated);
    };
    // SAFETY: bounds checked by ptr_at; NextHop starts with dmac then smac, 12 bytes,
    // 4-byte aligned: six 16-bit stores instead of twelve byte stores. Volatile, so LLVM
    // does not fold them into a call to the (byte-looping) memmove subprogram.
    unsafe {
        let (dst, src) = (eth.cast::<u16>(), (hop as *const NextHop).cast::<u16>());
        let mut i = 0;
        while i < 6 {
            core::ptr::write_volatile(dst.add(i), *src.add(i));
            i += 1;
        }
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return Verdict::Tx(if reply { Reason::TxReply } else { Reason::Tx });
    }
    match TX_PORTS.redirect(hop.ifindex, 0) {
        Ok(action) => Verdict::Redirect(if reply { Reason::RedirectReply } else { Reason::Redirect }, action),
        Err(_) => Verdict::Drop(Reason::DropNoTxPort),
    }
}

#[inline(always)]
fn lookup(ctx: &XdpContext, hop: &mut NextHop, src: &[u32; 4], dst: &[u32; 4], family: u8) -> u32 {
    let Some(scratch) = scratch() else {
        return Reason::DropFib as u32;
    };
    let p: &mut FibParams = &mut scratch.fib;
    // SAFETY: plain C struct, all-zero is a valid value.
    unsafe { core::ptr::write_bytes(p as *mut FibParams, 0, 1) };
    p.ifindex = ctx.ingress_ifindex() as u32;
    // Length 0: the kernel's MTU check never fails, and on success it reports the egress
    // MTU (mtu_result shares the field), which the hop caches for every packet's check.
    p.__bindgen_anon_1.tot_len = 0;
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // SAFETY: helper call with a valid context and a parameter block of the right size.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx as *mut _, p, size_of::<FibParams>() as i32, 0) } as u32;
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        // The kernel resolves the neighbour when it forwards this (already rewritten) packet.
        hop.ifindex = 0;
        return Reason::PassNoNeigh as u32;
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        hop.ifindex = 0;
        return Reason::DropFib as u32;
    }
    hop.dmac = p.dmac;
    hop.smac = p.smac;
    hop.ifindex = p.ifindex;
    // SAFETY: plain integer union field.
    hop.mtu = unsafe { p.__bindgen_anon_1.mtu_result };
    0
}
