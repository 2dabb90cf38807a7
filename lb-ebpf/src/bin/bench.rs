//! The bench harness, an object of its own (used only by `cargo xtask bench`; the balancer's
//! object carries none of it): BPF_PROG_TEST_RUN reuses one packet buffer across repeats,
//! so this program restores the original packet before every run and tail-calls the
//! program under test (BENCH_PROGS[0]: the balancer, loaded from its own object).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, ProgramArray},
    programs::XdpContext,
};
use lb_common::{BENCH_MAX_KEYS, BenchPacket};

#[map(name = "BENCH_PACKET_V1")]
static BENCH_PACKET: Array<BenchPacket> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_PROGS_V1")]
static BENCH_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Flows in rotation (BenchPacket::keys): [client address as in the packet, client port as
/// in the packet (low 16 bits)].
#[map(name = "BENCH_KEYS_V1")]
static BENCH_KEYS: Array<[u32; 2]> = Array::with_max_entries(BENCH_MAX_KEYS, 0);

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
    let (mut word, mut port) = if pkt.keys != 0 {
        let Some(key) = BENCH_KEYS.get(pkt.counter % pkt.keys) else {
            return xdp_action::XDP_ABORTED;
        };
        pkt.counter = pkt.counter.wrapping_add(1);
        (key[0], key[1] as u16)
    } else {
        pkt.counter = pkt.counter.wrapping_add(1);
        (pkt.counter, pkt.counter as u16)
    };
    let off = pkt.vary_offset;
    if off != 0 && off <= 124 {
        // SAFETY: 4 bytes from the stack; the helper checks the packet bounds.
        if unsafe { bpf_xdp_store_bytes(ctx.ctx, off, (&raw mut word).cast(), 4) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    let off = pkt.vary_port_offset;
    if off != 0 && off <= 126 {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
