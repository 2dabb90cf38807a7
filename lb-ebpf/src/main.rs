//! veer's XDP balancer: picks a backend for every new flow to a VIP, keeps established
//! flows where they are, rewrites (NAT) and forwards at the driver.
#![no_std]
#![no_main]
// core::intrinsics::atomic_xadd: the target has atomic adds but no compare-and-swap (flow.rs).
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd is the one way to an atomic add on BPF")]

mod fib;
mod flow;
mod guard;
mod icmp;
mod maps;
mod nat;
mod packet;
mod parse;
mod select;
mod stats;
mod trace;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use lb_common::{
    Backend, Config, FAMILY_V4, FLOW_F_ANSWERED, FLOW_F_CLOSED, FLOW_F_DSR, FLOW_F_SYN, Flow, FlowKey, NatRev, NextHop,
    Reason, VIP_F_DSR, VipInfo, VipKey,
    conntrack::{FlowEntry, TAKE_NONE, stamp},
};

use crate::{
    maps::{CONFIG, VIPS},
    nat::{Rewrite, rewrite},
    parse::{Packet, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, parse},
    stats::Event,
};

/// What happens to a packet; mapped to an XDP action in one place.
pub enum Verdict {
    Pass(Reason),
    Drop(Reason),
    Tx(Reason),
    Redirect(Reason, u32),
}

/// The XDP entry point, written out instead of `#[xdp]`: that macro puts the body in an
/// inner function, which LLVM stops inlining once the body is this large, and every packet
/// then pays a BPF-to-BPF call (measured: non-VIP pass 32 -> 40 ns).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn veer_xdp(raw: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(raw);
    let verdict = process(&ctx);
    let reason = verdict.reason();
    trace::finish(&ctx, reason, action(verdict))
}

impl Verdict {
    #[inline(always)]
    pub fn reason(&self) -> Reason {
        match *self {
            Verdict::Pass(r) | Verdict::Drop(r) | Verdict::Tx(r) | Verdict::Redirect(r, _) => r,
        }
    }
}

/// Counts a verdict's reason; its XDP action.
#[inline(always)]
pub fn action(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Pass(r) => {
            stats::count_reason(r);
            xdp_action::XDP_PASS
        }
        Verdict::Drop(r) => {
            stats::count_reason(r);
            xdp_action::XDP_DROP
        }
        Verdict::Tx(r) => {
            stats::count_reason(r);
            xdp_action::XDP_TX
        }
        Verdict::Redirect(r, action) => {
            stats::count_reason(r);
            action
        }
    }
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Verdict {
    let pkt = match parse(ctx) {
        Parsed::Pass(r) => return Verdict::Pass(r),
        Parsed::Drop(r) => return Verdict::Drop(r),
        Parsed::Icmp(_) => {
            icmp::tail(ctx, icmp::REQ_TRANSLATE, 0);
            return Verdict::Pass(Reason::PassNotVip);
        }
        Parsed::LaterFragment => {
            icmp::tail(ctx, icmp::REQ_FRAGMENT, 0);
            return Verdict::Pass(Reason::PassNotVip);
        }
        Parsed::Ip(pkt) => pkt,
    };
    trace::select(pkt.key);
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Pass(Reason::PassNotVip);
    };
    let snat = snat_addr(cfg, pkt.key.family);
    let now_ns = flow::now_ns();
    let now = stamp(now_ns);
    if pkt.key.dst_be == snat
        && let Some(rev) = flow::reverse(ctx, &pkt, now)
    {
        return match rev {
            Ok(rev) => to_client(ctx, &pkt, &mut rev.rev, now_ns),
            Err(r) => Verdict::Drop(r),
        };
    }
    let Some(mut bucket) = flow::bucket(&pkt.key) else {
        return Verdict::Pass(Reason::PassNotVip);
    };
    // Established flows first: they need no VIP lookup (the flow knows its VIP), and a
    // flow outlives neither its backend nor, through it, its VIP.
    // A SYN on the 5-tuple of a flow that was seen closing is a new connection reusing the
    // client port: it is scheduled afresh, not sent after the old one.
    let reopened =
        |flow: &lb_common::Flow| pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && flow.flags & FLOW_F_CLOSED != 0;
    if let Some(mut est) = flow::established(&mut bucket, &pkt.key, &snat, pkt.tcp_flags, now)
        && !reopened(&est.seen)
    {
        let (flow, backend) = (est.seen, est.backend);
        let closed = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 && flow.flags & FLOW_F_CLOSED == 0;
        if closed {
            est.close();
        }
        let event = Event {
            bytes: pkt.ip_len,
            reply: false,
            new_flow: false,
            closed,
            answered: false,
            reset: false,
        };
        let chosen = Chosen {
            vip_id: flow.vip_id,
            backend_id: flow.backend_id,
            backend: &backend,
            snat_port_be: flow.snat_port_be,
        };
        if flow.flags & FLOW_F_DSR != 0 {
            return to_backend_dsr(ctx, &pkt, &chosen, &event, now_ns);
        }
        return to_backend(ctx, &pkt, &snat, &chosen, &event, now_ns);
    }
    // The key in per-CPU map memory: the program's one stack frame is full.
    let Some(scratch) = maps::scratch() else {
        return Verdict::Pass(Reason::PassNotVip);
    };
    scratch.vip_key = VipKey {
        addr_be: pkt.key.dst_be,
        port_be: pkt.key.dport_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    // SAFETY: the value is read in place; the agent replaces VIP entries whole.
    match unsafe { VIPS.get(&scratch.vip_key) } {
        Some(vip) if vip.flags & VIP_F_DSR != 0 => new_flow_dsr(ctx, &pkt, vip, cfg, bucket, now_ns),
        Some(vip) => new_flow(ctx, &pkt, vip, cfg, &snat, bucket, now_ns),
        None => Verdict::Pass(Reason::PassNotVip),
    }
}

#[inline(always)]
pub fn snat_addr(cfg: &Config, family: u8) -> [u32; 4] {
    if family == FAMILY_V4 {
        [cfg.snat_v4_be, 0, 0, 0]
    } else {
        cfg.snat_v6_be
    }
}

/// The start of every new flow, NAT or DSR: the backend the VIP's pool picks, then a way
/// in the flow's bucket that the flood guard lets it take; returns (backend id, backend,
/// way, stamp).
#[inline(always)]
fn admit(
    key: &FlowKey,
    vip: &VipInfo,
    cfg: &Config,
    bucket: &flow::Bucket<FlowEntry>,
    now_ns: u64,
) -> Result<(u32, Backend, usize, u32), Reason> {
    let (id, backend) = select::select_backend(key, vip, cfg)?;
    let now = stamp(now_ns);
    let guard = guard::open(now).ok_or(Reason::DropFlowInsert)?;
    let choice = flow::choose_way(bucket, key, guard::hold(guard), now);
    guard::count(guard, choice.kind);
    if choice.kind == TAKE_NONE {
        return Err(Reason::DropFlood);
    }
    Ok((id, backend, choice.way, now))
}

/// First packet of a client flow to a VIP: choose the backend, allocate the NAT port,
/// record both directions, forward.
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    vip: &VipInfo,
    cfg: &Config,
    snat: &[u32; 4],
    mut bucket: flow::Bucket<FlowEntry>,
    now_ns: u64,
) -> Verdict {
    if *snat == [0; 4] {
        return Verdict::Drop(Reason::DropNoPort);
    }
    let key = &pkt.key;
    let (id, backend, way, now) = match admit(key, vip, cfg, &bucket, now_ns) {
        Ok(admitted) => admitted,
        Err(r) => return Verdict::Drop(r),
    };
    // A flow opened by a SYN: the backend's reset of it (a stopped server) is a health
    // signal even unanswered; one opened by a bare ACK (any client can send one) is not.
    let opened = if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        FLOW_F_SYN
    } else {
        0
    };
    let (port, rev_link, rev_tag) = match flow::allocate_port(key, snat, &backend, (vip.vip_id, id, opened), now) {
        Ok(p) => p,
        Err(r) => return Verdict::Drop(r),
    };
    let flow = Flow {
        backend_id: id,
        vip_id: vip.vip_id,
        snat_port_be: port,
        flags: select::new_flow_flags(vip),
    };
    if let Err(r) = flow::record(&mut bucket, way, key, flow, (rev_link, rev_tag), now) {
        return Verdict::Drop(r);
    }
    let event = Event::new_flow(pkt.ip_len);
    let chosen = Chosen {
        vip_id: vip.vip_id,
        backend_id: id,
        backend: &backend,
        snat_port_be: port,
    };
    to_backend(ctx, pkt, snat, &chosen, &event, now_ns)
}

/// First packet of a client flow to a DSR VIP, or a TCP segment of one that this node has
/// not seen (a flow moved here by an ECMP change, or one whose entry gave way): chosen by
/// the table like a new flow and recorded, with no NAT port and no reverse entry.
#[inline(always)]
fn new_flow_dsr(
    ctx: &XdpContext,
    pkt: &Packet,
    vip: &VipInfo,
    cfg: &Config,
    mut bucket: flow::Bucket<FlowEntry>,
    now_ns: u64,
) -> Verdict {
    let key = &pkt.key;
    let (id, backend, way, now) = match admit(key, vip, cfg, &bucket, now_ns) {
        Ok(admitted) => admitted,
        Err(r) => return Verdict::Drop(r),
    };
    let flow = Flow {
        backend_id: id,
        vip_id: vip.vip_id,
        snat_port_be: 0,
        flags: select::new_flow_flags(vip) | FLOW_F_DSR,
    };
    if let Err(r) = flow::record(&mut bucket, way, key, flow, (flow::NO_REVERSE, 0), now) {
        return Verdict::Drop(r);
    }
    let event = Event::new_flow(pkt.ip_len);
    let chosen = Chosen {
        vip_id: vip.vip_id,
        backend_id: id,
        backend: &backend,
        snat_port_be: 0,
    };
    to_backend_dsr(ctx, pkt, &chosen, &event, now_ns)
}

/// Client -> VIP on a DSR backend: the frame goes on unchanged but for its MACs
/// (destination: the backend's, from the FIB toward the backend address; source: the egress
/// interface's). Addresses, ports, TTL and checksums stay: the backend holds the VIP and
/// answers the client itself. The agent admits only backends on a directly connected
/// network, so the FIB's neighbour is the backend. An unresolved neighbour drops the packet
/// (the stack would route it by the VIP): the agent keeps managed neighbour entries for
/// every backend, so that is a first packet's rare case, and TCP retransmits.
#[inline(always)]
fn to_backend_dsr(ctx: &XdpContext, pkt: &Packet, to: &Chosen, event: &Event, now_ns: u64) -> Verdict {
    stats::count(to.vip_id, to.backend_id, event);
    let hop = match fib::hop_of(to.backend_id) {
        Ok(h) => h,
        Err(v) => return v,
    };
    let path = fib::Path {
        family: pkt.key.family,
        src: &pkt.key.dst_be,
        dst: &to.backend.addr_be,
        reply: false,
    };
    match fib::resolve(ctx, hop, &path, now_ns) {
        Ok(true) => {}
        Ok(false) => return Verdict::Drop(Reason::DropFib),
        Err(v) => return v,
    }
    if hop.mtu != 0 && pkt.ip_len > hop.mtu {
        if pkt.dont_fragment {
            icmp::tail(ctx, icmp::REQ_TOO_BIG, hop.mtu);
        }
        return Verdict::Drop(Reason::DropFib);
    }
    fib::send(ctx, hop, false)
}

/// Where a client packet goes.
struct Chosen<'a> {
    vip_id: u32,
    backend_id: u32,
    backend: &'a Backend,
    snat_port_be: u16,
}

/// Client -> VIP on a chosen backend: DNAT + SNAT, count, forward.
#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, snat: &[u32; 4], to: &Chosen, event: &Event, now_ns: u64) -> Verdict {
    stats::count(to.vip_id, to.backend_id, event);
    let hop = match fib::hop_of(to.backend_id) {
        Ok(h) => h,
        Err(v) => return v,
    };
    let path = fib::Path {
        family: pkt.key.family,
        src: snat,
        dst: &to.backend.addr_be,
        reply: false,
    };
    let rw = Rewrite {
        src: snat,
        sport_be: to.snat_port_be,
        dst: &to.backend.addr_be,
        dport_be: to.backend.port_be,
    };
    send(ctx, pkt, hop, &path, &rw, now_ns)
}

/// Resolves the next hop, answers what cannot go on (TTL, MTU: see icmp.rs), rewrites,
/// sends.
#[inline(always)]
fn send(ctx: &XdpContext, pkt: &Packet, hop: &mut NextHop, path: &fib::Path, rw: &Rewrite, now_ns: u64) -> Verdict {
    let ready = match fib::resolve(ctx, hop, path, now_ns) {
        Ok(ready) => ready,
        Err(v) => return v,
    };
    if let Some(v) = icmp::limits(ctx, pkt, hop) {
        return v;
    }
    if rewrite(ctx, pkt, rw).is_none() {
        return Verdict::Drop(Reason::DropTruncated);
    }
    if !ready {
        return Verdict::Pass(Reason::PassNoNeigh);
    }
    if hop.mtu != 0 && pkt.ip_len > hop.mtu {
        // No DF: the stack fragments it.
        return Verdict::Pass(Reason::PassTooBig);
    }
    if pkt.fragment {
        icmp::remember_fragment(pkt, rw, hop, path.reply, now_ns);
    }
    fib::send(ctx, hop, path.reply)
}

/// Backend -> balancer: the reply of a NAT flow, rewritten back to VIP -> client.
#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &Packet, rev: &mut NatRev, now_ns: u64) -> Verdict {
    // A reset is no answer: a backend resets a client's bare ACK (a spoofed one too). Only
    // resets of flows it had answered, or of a SYN, are a passive health signal.
    let reset = pkt.tcp_flags & TCP_RST != 0;
    let was_answered = rev.flags & FLOW_F_ANSWERED != 0;
    let answered = !was_answered && !reset;
    let closed = reset && rev.flags & FLOW_F_CLOSED == 0;
    rev.flags |= if answered { FLOW_F_ANSWERED } else { 0 } | if closed { FLOW_F_CLOSED } else { 0 };
    if closed {
        flow::mark_closed(rev, &pkt.key);
    }
    let event = Event {
        bytes: pkt.ip_len,
        reply: true,
        new_flow: false,
        closed,
        answered,
        reset: reset && (was_answered || rev.flags & FLOW_F_SYN != 0),
    };
    stats::count(rev.vip_id, rev.backend_id, &event);
    let rw = Rewrite {
        src: &rev.vip_be,
        sport_be: rev.vip_port_be,
        dst: &rev.client_be,
        dport_be: rev.client_port_be,
    };
    let (vip, client) = (rev.vip_be, rev.client_be);
    let path = fib::Path {
        family: pkt.key.family,
        src: &vip,
        dst: &client,
        reply: true,
    };
    send(ctx, pkt, &mut rev.hop, &path, &rw, now_ns)
}

/// Never reached; the verifier rejects programs that could panic.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
