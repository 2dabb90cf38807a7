//! Next hop: bpf_fib_lookup gives the egress interface and both MACs; same interface ->
//! XDP_TX, another one -> XDP_REDIRECT through the devmap.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{FAMILY_V4, Reason};

use crate::{Verdict, maps::TX_PORTS, parse::ptr_at};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    family: u8,
    src: &[u32; 4],
    dst: &[u32; 4],
    ip_len: u16,
    reply: bool,
) -> Verdict {
    // SAFETY: plain C struct, all-zero is a valid value.
    let mut p: FibParams = unsafe { zeroed() };
    let ingress = ctx.ingress_ifindex() as u32;
    p.ifindex = ingress;
    p.__bindgen_anon_1.tot_len = ip_len;
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // SAFETY: helper call with a valid context and a stack buffer of the right size.
    let rc = unsafe {
        bpf_fib_lookup(ctx.ctx as *mut _, &mut p, size_of::<FibParams>() as i32, 0)
    } as u32;
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        // The kernel resolves the neighbour when it forwards this (already rewritten) packet.
        return Verdict::Pass(Reason::PassNoNeigh);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return Verdict::Drop(Reason::DropFib);
    }
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return Verdict::Drop(Reason::DropTruncated);
    };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth[..6].copy_from_slice(&p.dmac);
    eth[6..].copy_from_slice(&p.smac);
    if p.ifindex == ingress {
        return Verdict::Tx(if reply { Reason::TxReply } else { Reason::Tx });
    }
    match TX_PORTS.redirect(p.ifindex, 0) {
        Ok(action) => Verdict::Redirect(if reply { Reason::RedirectReply } else { Reason::Redirect }, action),
        Err(_) => Verdict::Drop(Reason::DropNoTxPort),
    }
}
