//! Bench harness (used only by `cargo xtask bench`): BPF_PROG_TEST_RUN reuses one packet
//! buffer across repeats, so this program restores the original packet before every run
//! and tail-calls the program under test (BENCH_PROGS[0]).

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_xdp_store_bytes, macros::xdp, programs::XdpContext};

use crate::maps::{BENCH_PACKET, BENCH_PROGS};

#[xdp]
pub fn veer_bench_harness(ctx: XdpContext) -> u32 {
    let Some(pkt) = BENCH_PACKET.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: map value pointer valid for this run; single CPU writes it.
    let pkt = unsafe { &mut *pkt };
    let len = pkt.len;
    if len == 0 || len > 128 || len as usize > ctx.data_end() - ctx.data() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: helper copies `len` (<= 128 = buffer size) bytes into the packet.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, pkt.data.as_mut_ptr().cast(), len) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let off = pkt.vary_offset;
    if off != 0 && off <= 124 {
        pkt.counter = pkt.counter.wrapping_add(1);
        let mut word = pkt.counter;
        // SAFETY: 4 bytes from the stack; the helper checks the packet bounds.
        if unsafe { bpf_xdp_store_bytes(ctx.ctx, off, (&raw mut word).cast(), 4) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    let off = pkt.vary_port_offset;
    if off != 0 && off <= 126 {
        let mut port = pkt.counter as u16;
        // SAFETY: 2 bytes from the stack; the helper checks the packet bounds.
        if unsafe { bpf_xdp_store_bytes(ctx.ctx, off, (&raw mut port).cast(), 2) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    // SAFETY: tail call into the program under test; returns only on failure.
    unsafe { BENCH_PROGS.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// The floor: the cheapest program that forwards a packet.
#[xdp]
pub fn veer_bench_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
