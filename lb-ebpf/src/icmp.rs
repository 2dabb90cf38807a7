//! The slow path, a program of its own tail-called by the balancer: ICMP errors about NAT
//! flows translated both ways, the errors the balancer sends itself (fragmentation needed
//! / packet too big, time exceeded), and later fragments of NATed datagrams. See
//! docs/decisions.md, "ICMP" and "Fragments".

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    BACKEND_DOWN, BACKEND_UNSET, FAMILY_V4, FAMILY_V6, FlowKey, NextHop, PROTO_TCP, PROTO_UDP, Reason,
    csum::{apply, diff_words, diff16, fold},
};

use crate::{
    Verdict, fib,
    flow::{self, store},
    maps::{BACKENDS, CONFIG, FRAGS, ICMP_PROGS, scratch},
    nat::store_addr,
    packet::{
        ETH_P_8021Q, ETH_P_IP, ETHER_TYPE, EthHdr, ICMP_CHECK, ICMP_LEN, Ipv4Hdr, Ipv4Words, Ipv6Hdr, Ipv6Words,
        PROTO_ICMP, PROTO_ICMPV6, Ports, VLAN_ETHER_TYPE, VlanHdr, ptr_at, words_to_addr2, words_to_addr8,
    },
    parse::{IcmpAt, Packet},
    snat_addr, stats,
};

/// ICMP types translated: destination unreachable (fragmentation needed among them) and
/// time exceeded; ICMPv6: destination unreachable, packet too big, time exceeded.
const ICMPV6_DEST_UNREACH: u8 = 1;

/// An ICMP error sent to a VIP or SNAT address, quoting a TCP/UDP packet that this address
/// sent.
struct IcmpError {
    l3_off: usize,
    icmp_off: usize,
    inner_l3: usize,
    inner_l4: usize,
    /// The error's source (a router, or the quoted packet's destination).
    outer_src: [u32; 4],
    /// The quoted packet's 5-tuple as quoted: VIP -> client or SNAT -> backend. Its source
    /// is the error's destination.
    inner: FlowKey,
}

/// Requests to the ICMP program (Scratch::icmp_request).
pub const REQ_TRANSLATE: u32 = 0;
pub const REQ_TOO_BIG: u32 = 1;
pub const REQ_TIME_EXCEEDED: u32 = 2;
pub const REQ_FRAGMENT: u32 = 3;

/// Hands the packet to the ICMP program with `request` (and `mtu`); returns only if that
/// program is missing (the loader always installs it).
#[inline(always)]
pub fn tail(ctx: &XdpContext, request: u32, mtu: u16) {
    if let Some(s) = scratch() {
        s.icmp_request = request;
        s.icmp_mtu = mtu as u32;
        // SAFETY: tail call into the ICMP program; returns only on failure.
        let _ = unsafe { ICMP_PROGS.tail_call(ctx, 0) };
    }
}

/// The ICMP program: its own stack and verifier budget, tail-called by the balancer (the
/// balancer's frame leaves no room for a call). Counts its reason.
#[xdp]
pub fn veer_icmp(ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else {
        return xdp_action::XDP_ABORTED;
    };
    let (request, mtu) = (s.icmp_request, s.icmp_mtu as u16);
    let (reason, action) = if request == REQ_TRANSLATE || request == REQ_FRAGMENT {
        let verdict = if request == REQ_TRANSLATE {
            incoming(&ctx)
        } else {
            later_fragment(&ctx)
        };
        (verdict.reason(), crate::action(verdict))
    } else {
        send_error(&ctx, request == REQ_TOO_BIG, mtu)
    };
    crate::trace::finish(&ctx, reason, action)
}

/// Notes how a first fragment was translated (its new addresses, its next hop), for the
/// datagram's later fragments, which carry no ports. Word stores straight into map memory:
/// the balancer's stack frame has no room for a copy.
#[inline(always)]
pub fn remember_fragment(pkt: &Packet, rw: &crate::nat::Rewrite, hop: &NextHop, reply: bool, now_ns: u64) {
    let Some(s) = scratch() else {
        return;
    };
    let k = &mut s.frag_key;
    store(&mut k.src_be, &pkt.key.src_be);
    store(&mut k.dst_be, &pkt.key.dst_be);
    store(&mut k.id, &pkt.frag_id);
    store(&mut k.proto, &pkt.key.proto);
    store(&mut k.family, &pkt.key.family);
    store(&mut k._pad, &[0; 2]);
    let v = &mut s.frag_nat;
    store(&mut v.src_be, rw.src);
    store(&mut v.dst_be, rw.dst);
    store(&mut v.hop, hop);
    store(&mut v.stamp, &lb_common::conntrack::stamp(now_ns));
    store(&mut v.reply, &(reply as u8));
    let _ = FRAGS.insert(&s.frag_key, &s.frag_nat, 0);
}

/// A later fragment: translated like its datagram's first fragment if that was seen in the
/// last second or so; else passed (to the SNAT address: may be the host's own traffic) or
/// dropped and counted (to a VIP, which the host does not own).
#[inline(always)]
fn later_fragment(ctx: &XdpContext) -> Verdict {
    match fragment(ctx) {
        Some(v) => v,
        None => Verdict::Drop(Reason::DropTruncated),
    }
}

/// Where the IP header starts (after Ethernet and at most one VLAN tag, as parsing
/// accepted) and whether it is IPv4.
#[inline(always)]
fn l3_offset(ctx: &XdpContext) -> Option<(usize, bool)> {
    // SAFETY: bounds checked by ptr_at.
    let mut ether = unsafe { *ptr_at::<u16>(ctx, ETHER_TYPE)? };
    let mut l3 = EthHdr::LEN;
    if ether == ETH_P_8021Q {
        l3 += VlanHdr::LEN;
        // SAFETY: bounds checked by ptr_at.
        ether = unsafe { *ptr_at::<u16>(ctx, VLAN_ETHER_TYPE)? };
    }
    Some((l3, ether == ETH_P_IP))
}

#[inline(always)]
fn fragment(ctx: &XdpContext) -> Option<Verdict> {
    let s = scratch()?;
    let (l3, v4) = l3_offset(ctx)?;
    let k = &mut s.frag_key;
    if v4 {
        let ip = unsafe { &*ptr_at::<Ipv4Words>(ctx, l3)? };
        *k = lb_common::FragKey {
            src_be: [words_to_addr2(&ip.saddr), 0, 0, 0],
            dst_be: [words_to_addr2(&ip.daddr), 0, 0, 0],
            id: u16::from_be(ip.id) as u32,
            proto: (u16::from_be(ip.ttl_proto) & 0xff) as u8,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
    } else {
        let ip = unsafe { &*ptr_at::<Ipv6Words>(ctx, l3)? };
        let fh = unsafe { &*ptr_at::<[u16; 4]>(ctx, l3 + Ipv6Hdr::LEN)? };
        *k = lb_common::FragKey {
            src_be: words_to_addr8(&ip.saddr),
            dst_be: words_to_addr8(&ip.daddr),
            id: u16::from_be(fh[2]) as u32 * 65536 + u16::from_be(fh[3]) as u32,
            proto: (u16::from_be(fh[0]) >> 8) as u8,
            family: FAMILY_V6,
            _pad: [0; 2],
        };
    }
    let now = lb_common::conntrack::stamp(flow::now_ns());
    // SAFETY: plain data, copied out at once.
    let nat = match unsafe { FRAGS.get(&s.frag_key) } {
        Some(n) if lb_common::conntrack::age(now, n.stamp) < 1024 => *n,
        _ => {
            let cfg = CONFIG.get(0)?;
            let snat = snat_addr(cfg, if v4 { FAMILY_V4 } else { FAMILY_V6 });
            return Some(if s.frag_key.dst_be == snat {
                Verdict::Pass(Reason::PassNotVip)
            } else {
                Verdict::Drop(Reason::DropFragment)
            });
        }
    };
    let old = (s.frag_key.src_be, s.frag_key.dst_be);
    if v4 {
        let ip = unsafe { &mut *ptr_at::<Ipv4Words>(ctx, l3)? };
        let mut d = diff_words(1, &old.0, &nat.src_be) + diff_words(1, &old.1, &nat.dst_be);
        let ttl_proto = u16::from_be(ip.ttl_proto);
        if ttl_proto >> 8 > 1 {
            let ttl = (ttl_proto - 0x100).to_be();
            d = diff16(d, ip.ttl_proto, ttl);
            ip.ttl_proto = ttl;
        }
        ip.check = apply(ip.check, d);
        store_addr(&mut ip.saddr, &nat.src_be);
        store_addr(&mut ip.daddr, &nat.dst_be);
    } else {
        let ip = unsafe { &mut *ptr_at::<Ipv6Words>(ctx, l3)? };
        let hop = u16::from_be(ip.nexthdr_hop);
        if hop & 0xff > 1 {
            ip.nexthdr_hop = (hop - 1).to_be();
        }
        store_addr(&mut ip.saddr, &nat.src_be);
        store_addr(&mut ip.daddr, &nat.dst_be);
    }
    Some(match fib::send(ctx, &nat.hop, nat.reply != 0) {
        Verdict::Tx(_) => Verdict::Tx(Reason::Fragment),
        Verdict::Redirect(_, action) => Verdict::Redirect(Reason::Fragment, action),
        other => other,
    })
}

/// An ICMP message to a VIP or SNAT address: translated if it is an error about a NAT
/// flow, else passed.
#[inline(always)]
fn incoming(ctx: &XdpContext) -> Verdict {
    let at = match crate::parse::parse(ctx) {
        crate::parse::Parsed::Icmp(at) => at,
        _ => return Verdict::Pass(Reason::PassNotVip),
    };
    let at = &at;
    match parse_error(ctx, at) {
        Some(err) => match CONFIG.get(0) {
            Some(cfg) => {
                let snat = snat_addr(cfg, err.inner.family);
                translate(ctx, &err, &snat, flow::now_ns())
            }
            None => Verdict::Pass(Reason::PassNotVip),
        },
        None => Verdict::Pass(Reason::PassNotVip),
    }
}

/// The error's own source and destination addresses (`len` bytes at `off`), copied by the
/// kernel: a second packet-pointer check there would be folded into the quote's by the
/// compiler, leaving the verifier an unchecked pointer.
#[inline(always)]
fn outer_addrs(ctx: &XdpContext, off: usize, len: u32) -> Option<[u32; 8]> {
    let mut words = [0u32; 8];
    // SAFETY: the helper copies at most `len` <= 32 bytes into the 32-byte buffer and
    // checks the packet bounds itself.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, words.as_mut_ptr().cast(), len) };
    (rc == 0).then_some(words)
}

/// The error at `at`, if it is one of the translated types and quotes a TCP/UDP packet
/// from the error's destination with its ports.
#[inline(always)]
fn parse_error(ctx: &XdpContext, at: &IcmpAt) -> Option<IcmpError> {
    // The whole ICMP header: a 1-byte check compiles to a form the verifier does not follow.
    let hdr = ptr_at::<[u8; ICMP_LEN]>(ctx, at.icmp_off)?;
    // SAFETY: bounds checked by ptr_at.
    let t = unsafe { (*hdr)[0] };
    let wanted = if at.v4 {
        t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED
    } else {
        t == ICMPV6_DEST_UNREACH || t == ICMPV6_PACKET_TOO_BIG || t == ICMPV6_TIME_EXCEEDED
    };
    if !wanted {
        return None;
    }
    let inner_l3 = at.icmp_off + ICMP_LEN;
    let (outer_src, outer_dst, inner_l4, src_be, dst_be, proto, family) = if at.v4 {
        let outer = outer_addrs(ctx, at.l3_off + 12, 8)?;
        let ip = ptr_at::<Ipv4Words>(ctx, inner_l3)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        let first = u16::from_be(ip.ver_ihl_tos);
        let ihl = ((first >> 8) & 0x0f) as usize;
        if first >> 12 != 4 || ihl < 5 || u16::from_be(ip.frag_off_be) & 0x1fff != 0 {
            return None;
        }
        (
            [outer[0], 0, 0, 0],
            [outer[1], 0, 0, 0],
            inner_l3 + ihl * 4,
            [words_to_addr2(&ip.saddr), 0, 0, 0],
            [words_to_addr2(&ip.daddr), 0, 0, 0],
            (u16::from_be(ip.ttl_proto) & 0xff) as u8,
            FAMILY_V4,
        )
    } else {
        let outer = outer_addrs(ctx, at.l3_off + 8, 32)?;
        let ip = ptr_at::<Ipv6Words>(ctx, inner_l3)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        (
            [outer[0], outer[1], outer[2], outer[3]],
            [outer[4], outer[5], outer[6], outer[7]],
            inner_l3 + Ipv6Hdr::LEN,
            words_to_addr8(&ip.saddr),
            words_to_addr8(&ip.daddr),
            (u16::from_be(ip.nexthdr_hop) >> 8) as u8,
            FAMILY_V6,
        )
    };
    if (proto != PROTO_TCP && proto != PROTO_UDP) || src_be != outer_dst {
        return None;
    }
    let ports = ptr_at::<Ports>(ctx, inner_l4)?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { &*ports };
    Some(IcmpError {
        l3_off: at.l3_off,
        icmp_off: at.icmp_off,
        inner_l3,
        inner_l4,
        outer_src,
        inner: FlowKey {
            src_be,
            dst_be,
            sport_be: ports.source,
            dport_be: ports.dest,
            proto,
            family,
            _pad: [0; 2],
        },
    })
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// TTL of the errors the balancer sends.
const ERROR_TTL: u16 = 64;

/// An ICMP error sent to a VIP (quoting VIP -> client: from a router on the client's
/// side) goes to the flow's backend as SNAT -> backend, quoting backend -> SNAT; one sent
/// to the SNAT address (quoting SNAT -> backend: a router on the backend's side, or the
/// backend's port unreachable) goes to the client as VIP -> client, quoting client -> VIP.
/// Outer and inner headers are rewritten, every checksum fixed, so the sender's PMTU (or
/// its socket's error) follows. No flow: the error passes to the stack.
#[inline(always)]
fn translate(ctx: &XdpContext, err: &IcmpError, snat: &[u32; 4], now_ns: u64) -> Verdict {
    let q = &err.inner;
    // The table key: the quoted packet's 5-tuple reversed (client -> VIP, or backend -> SNAT).
    let key = FlowKey {
        src_be: q.dst_be,
        dst_be: q.src_be,
        sport_be: q.dport_be,
        dport_be: q.sport_be,
        proto: q.proto,
        family: q.family,
        _pad: [0; 2],
    };
    let verdict = if q.src_be == *snat {
        let Some(rev) = flow::find_reverse(&key) else {
            return Verdict::Pass(Reason::PassNotVip);
        };
        if !fib::arrived_by_egress(ctx, rev.backend_id) {
            return Verdict::Drop(Reason::DropReplyIface);
        }
        let rw = Quoted {
            src: rev.client_be,
            sport_be: rev.client_port_be,
            dst: rev.vip_be,
            dport_be: rev.vip_port_be,
        };
        if rewrite(ctx, err, &rw).is_none() {
            return Verdict::Drop(Reason::DropTruncated);
        }
        let path = fib::Path {
            family: q.family,
            src: &rw.dst,
            dst: &rw.src,
            reply: true,
        };
        fib::forward(ctx, &mut rev.hop, &path, now_ns)
    } else {
        let Some(f) = flow::find_flow(&key) else {
            return Verdict::Pass(Reason::PassNotVip);
        };
        let Some(backend) = BACKENDS.get(f.backend_id) else {
            return Verdict::Pass(Reason::PassNotVip);
        };
        if backend.state == BACKEND_DOWN
            || backend.state == BACKEND_UNSET
            || backend.vip_id != f.vip_id
            || backend.family != q.family
        {
            return Verdict::Pass(Reason::PassNotVip);
        }
        let rw = Quoted {
            src: backend.addr_be,
            sport_be: backend.port_be,
            dst: *snat,
            dport_be: f.snat_port_be,
        };
        if rewrite(ctx, err, &rw).is_none() {
            return Verdict::Drop(Reason::DropTruncated);
        }
        let hop = match fib::hop_of(f.backend_id) {
            Ok(h) => h,
            Err(v) => return v,
        };
        let path = fib::Path {
            family: q.family,
            src: snat,
            dst: &rw.src,
            reply: false,
        };
        fib::forward(ctx, hop, &path, now_ns)
    };
    match verdict {
        Verdict::Tx(_) => Verdict::Tx(Reason::IcmpTranslated),
        Verdict::Redirect(_, action) => Verdict::Redirect(Reason::IcmpTranslated, action),
        other => other,
    }
}

/// The quoted packet's new 5-tuple; the error's new addresses are its reverse.
struct Quoted {
    src: [u32; 4],
    sport_be: u16,
    dst: [u32; 4],
    dport_be: u16,
}

/// Rewrites the error (outer addresses: to `rw.dst` -> `rw.src`... reversed, see
/// [`translate`]) and its quoted packet to `rw`, with every checksum updated incrementally:
/// the outer IPv4 header, the quoted IPv4 header, the quoted L4 checksum when it was
/// quoted, and the ICMP checksum over all of that (ICMPv6: with its pseudo-header).
#[inline(always)]
fn rewrite(ctx: &XdpContext, err: &IcmpError, rw: &Quoted) -> Option<()> {
    let q = &err.inner;
    let v4 = q.family == FAMILY_V4;
    let words = if v4 { 1 } else { 4 };
    // Outer: router -> (VIP | SNAT) becomes rw.dst -> rw.src.
    let outer = diff_words(words, &err.outer_src, &rw.dst) + diff_words(words, &q.src_be, &rw.src);
    let inner_addr = diff_words(words, &q.src_be, &rw.src) + diff_words(words, &q.dst_be, &rw.dst);
    let mut icmp = inner_addr;
    if v4 {
        let ip = ptr_at::<Ipv4Words>(ctx, err.l3_off)?;
        // SAFETY: bounds checked by ptr_at; the packet is ours to write.
        let ip = unsafe { &mut *ip };
        ip.check = apply(ip.check, outer);
        store_addr(&mut ip.saddr, &rw.dst);
        store_addr(&mut ip.daddr, &rw.src);
        let inner = ptr_at::<Ipv4Words>(ctx, err.inner_l3)?;
        // SAFETY: as above.
        let inner = unsafe { &mut *inner };
        let old = inner.check;
        inner.check = apply(old, inner_addr);
        icmp = diff16(icmp, old, inner.check);
        store_addr(&mut inner.saddr, &rw.src);
        store_addr(&mut inner.daddr, &rw.dst);
    } else {
        // ICMPv6's checksum covers the outer addresses (pseudo-header).
        icmp += outer;
        let ip = ptr_at::<Ipv6Words>(ctx, err.l3_off)?;
        // SAFETY: bounds checked by ptr_at; the packet is ours to write.
        let ip = unsafe { &mut *ip };
        store_addr(&mut ip.saddr, &rw.dst);
        store_addr(&mut ip.daddr, &rw.src);
        let inner = ptr_at::<Ipv6Words>(ctx, err.inner_l3)?;
        // SAFETY: as above.
        let inner = unsafe { &mut *inner };
        store_addr(&mut inner.saddr, &rw.src);
        store_addr(&mut inner.daddr, &rw.dst);
    }
    let ports = ptr_at::<Ports>(ctx, err.inner_l4)?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { &mut *ports };
    let port_diff = diff16(diff16(0, ports.source, rw.sport_be), ports.dest, rw.dport_be);
    ports.source = rw.sport_be;
    ports.dest = rw.dport_be;
    icmp += port_diff;
    // The quoted L4 checksum, when the quote reaches it (routers quote 8 bytes at least,
    // Linux up to 576).
    let at = if q.proto == PROTO_TCP { 16 } else { 6 };
    if let Some(check) = ptr_at::<u16>(ctx, err.inner_l4 + at) {
        // SAFETY: bounds checked by ptr_at.
        let check = unsafe { &mut *check };
        let old = *check;
        if !(q.proto == PROTO_UDP && v4 && old == 0) {
            let new = apply(old, inner_addr + port_diff);
            *check = if q.proto == PROTO_UDP && new == 0 { 0xffff } else { new };
            icmp = diff16(icmp, old, *check);
        }
    }
    let check = ptr_at::<u16>(ctx, err.icmp_off + ICMP_CHECK)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *check = apply(*check, fold(icmp) as u32) };
    Some(())
}

/// ICMP errors the balancer sends itself, per CPU per window of 2^30 ns (about a second);
/// the loader may override it (lb_common::GLOBAL_ICMP_BUDGET). Like the kernel's own
/// icmp_msgs_per_sec, it keeps a flood of oversized or expiring packets from turning the
/// balancer into a source of as many errors (see docs/decisions.md, "ICMP").
#[unsafe(no_mangle)]
static ICMP_BUDGET: u32 = 1000;

/// Takes one error from this CPU's budget; false when it is spent for this window.
#[inline(always)]
fn within_budget() -> bool {
    let Some(s) = scratch() else {
        return false;
    };
    let window = (flow::now_ns() >> 30) as u32;
    if s.icmp_window != window {
        s.icmp_window = window;
        s.icmp_sent = 0;
    }
    // SAFETY: a read of a constant the loader may have rewritten.
    if s.icmp_sent >= unsafe { core::ptr::read_volatile(&ICMP_BUDGET) } {
        return false;
    }
    s.icmp_sent += 1;
    true
}

/// What stops a packet here: TTL / hop limit at its end, or the egress MTU.
#[inline(always)]
pub fn limits(ctx: &XdpContext, pkt: &Packet, hop: &NextHop) -> Option<Verdict> {
    if pkt.ttl <= 1 {
        tail(ctx, REQ_TIME_EXCEEDED, 0);
        return Some(Verdict::Drop(Reason::DropFib));
    }
    if hop.mtu != 0 && pkt.ip_len > hop.mtu && pkt.dont_fragment {
        tail(ctx, REQ_TOO_BIG, hop.mtu);
        return Some(Verdict::Drop(Reason::DropFib));
    }
    None
}

/// Answers the packet (a parsed TCP/UDP packet, untouched so far) with an ICMP error from the address it was sent to,
/// back out of the interface it came in by: fragmentation needed / packet too big with
/// `mtu` (`too_big`), else time exceeded. The error quotes the packet's IP header and the
/// first 8 bytes of its payload, which is what the sender's stack needs to find the socket.
/// Counts its reason; returns it and the XDP action.
#[inline(always)]
fn send_error(ctx: &XdpContext, too_big: bool, mtu: u16) -> (Reason, u32) {
    let (reason, action) = if !within_budget() {
        (Reason::DropIcmpLimit, xdp_action::XDP_DROP)
    } else {
        match build_error(ctx, too_big, mtu) {
            Some(()) if too_big => (Reason::TxTooBig, xdp_action::XDP_TX),
            Some(()) => (Reason::TxTimeExceeded, xdp_action::XDP_TX),
            None => (Reason::DropTruncated, xdp_action::XDP_DROP),
        }
    };
    stats::count_reason(reason);
    (reason, action)
}

#[inline(always)]
fn build_error(ctx: &XdpContext, too_big: bool, mtu: u16) -> Option<()> {
    // Parsing found Ethernet, at most one VLAN tag, and IPv4 or IPv6 with TCP/UDP after it.
    // SAFETY (all reads below): bounds checked by ptr_at.
    let (l3, v4) = l3_offset(ctx)?;
    // The quote: the packet's IP header (IPv4 options included) and 8 bytes.
    let quote = if v4 {
        (u16::from_be(unsafe { *ptr_at::<u16>(ctx, l3)? }) >> 8 & 0x0f) as usize * 4 + 8
    } else {
        Ipv6Hdr::LEN + 8
    };
    if quote > 68 {
        return None;
    }
    let head = if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN } + ICMP_LEN;
    let len = ctx.data_end() - ctx.data();
    let keep = l3 + quote;
    if len > keep {
        // SAFETY: helper call on the program's context; shrinks the packet.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - len as i32) } != 0 {
            return None;
        }
    }
    // SAFETY: helper call on the program's context; every packet pointer is re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(head as i32)) } != 0 {
        return None;
    }
    // Ethernet (and VLAN tag) in front, addresses swapped: back to the sender's last hop.
    let old = ptr_at::<[u16; 9]>(ctx, head)?;
    let new = ptr_at::<[u16; 9]>(ctx, 0)?;
    // SAFETY: both bounds checked by ptr_at; they do not overlap (head >= 28 > 18).
    unsafe {
        let (old, new) = (&*old, &mut *new);
        let mut i = 0;
        while i < 3 {
            new[i] = old[i + 3];
            new[i + 3] = old[i];
            i += 1;
        }
        new[6] = old[6];
        new[7] = old[7];
        new[8] = old[8];
    }
    let icmp_off = l3 + head - ICMP_LEN;
    let icmp_len = (ICMP_LEN + quote) as u16;
    // The error goes from the packet's destination to its source (read from the quote).
    let (src, dst) = if v4 {
        let q = ptr_at::<Ipv4Words>(ctx, l3 + head)?;
        // SAFETY: bounds checked by ptr_at.
        let q = unsafe { &*q };
        ([words_to_addr2(&q.daddr), 0, 0, 0], [words_to_addr2(&q.saddr), 0, 0, 0])
    } else {
        let q = ptr_at::<Ipv6Words>(ctx, l3 + head)?;
        // SAFETY: bounds checked by ptr_at.
        let q = unsafe { &*q };
        (words_to_addr8(&q.daddr), words_to_addr8(&q.saddr))
    };
    let mut sum: u32 = 0;
    if v4 {
        let ip = ptr_at::<[u16; 10]>(ctx, l3)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &mut *ip };
        ip[0] = 0x4500u16.to_be();
        ip[1] = (Ipv4Hdr::LEN as u16 + icmp_len).to_be();
        ip[2] = 0;
        ip[3] = 0;
        ip[4] = (ERROR_TTL << 8 | PROTO_ICMP as u16).to_be();
        ip[5] = 0;
        ip[6] = src[0] as u16;
        ip[7] = (src[0] >> 16) as u16;
        ip[8] = dst[0] as u16;
        ip[9] = (dst[0] >> 16) as u16;
        let mut s = 0u32;
        let mut i = 0;
        while i < 10 {
            s += ip[i] as u32;
            i += 1;
        }
        ip[5] = !fold(s);
    } else {
        let ip = ptr_at::<[u16; 20]>(ctx, l3)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &mut *ip };
        ip[0] = 0x6000u16.to_be();
        ip[1] = 0;
        ip[2] = icmp_len.to_be();
        ip[3] = ((PROTO_ICMPV6 as u16) << 8 | ERROR_TTL).to_be();
        let mut i = 0;
        while i < 4 {
            ip[4 + 2 * i] = src[i] as u16;
            ip[5 + 2 * i] = (src[i] >> 16) as u16;
            ip[12 + 2 * i] = dst[i] as u16;
            ip[13 + 2 * i] = (dst[i] >> 16) as u16;
            i += 1;
        }
        // Pseudo-header: addresses, upper-layer length, next header.
        let mut i = 4;
        while i < 20 {
            sum += ip[i] as u32;
            i += 1;
        }
        sum += icmp_len.to_be() as u32 + (PROTO_ICMPV6 as u16).to_be() as u32;
    }
    let icmp = ptr_at::<[u16; 4]>(ctx, icmp_off)?;
    // SAFETY: bounds checked by ptr_at.
    let icmp = unsafe { &mut *icmp };
    let (t, code) = match (v4, too_big) {
        (true, true) => (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED),
        (true, false) => (ICMP_TIME_EXCEEDED, 0),
        (false, true) => (ICMPV6_PACKET_TOO_BIG, 0),
        (false, false) => (ICMPV6_TIME_EXCEEDED, 0),
    };
    icmp[0] = ((t as u16) << 8 | code as u16).to_be();
    icmp[1] = 0;
    icmp[2] = 0;
    icmp[3] = if too_big { mtu.to_be() } else { 0 };
    let mut i = 0;
    while i < (ICMP_LEN + 68) / 2 {
        if i >= icmp_len as usize / 2 {
            break;
        }
        let w = ptr_at::<u16>(ctx, icmp_off + 2 * i)?;
        // SAFETY: bounds checked by ptr_at.
        sum += unsafe { *w } as u32;
        i += 1;
    }
    let check = ptr_at::<u16>(ctx, icmp_off + ICMP_CHECK)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *check = !fold(sum) };
    Some(())
}
