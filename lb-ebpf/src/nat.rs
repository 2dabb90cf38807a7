//! NAT rewrites: addresses and ports in place, with incremental IP and L4 checksums.

use lb_common::{
    FAMILY_V4, PROTO_TCP,
    csum::{apply, diff_words, diff16},
};

use crate::{
    packet::{Ipv4Words, Ipv6Words, Ports, TCP_CHECK, UDP_CHECK, ptr_at},
    parse::Packet,
};
use aya_ebpf::programs::XdpContext;

/// Where a packet goes after the rewrite: addresses as in `FlowKey` (`[u32; 4]`, IPv4 in word 0).
pub struct Rewrite<'a> {
    pub src: &'a [u32; 4],
    pub sport_be: u16,
    pub dst: &'a [u32; 4],
    pub dport_be: u16,
}

/// Writes an address given as 32-bit words into a header field of 16-bit words (packets
/// are only 2-byte aligned).
#[inline(always)]
pub fn store_addr(dst: &mut [u16], new: &[u32; 4]) {
    let mut i = 0;
    while i < dst.len() {
        let word = new[i / 2];
        dst[i] = if i % 2 == 0 { word as u16 } else { (word >> 16) as u16 };
        i += 1;
    }
}

/// Rewrites the 5-tuple of `pkt` to `rw` and takes one from its TTL / hop limit (the
/// balancer is a hop: see icmp.rs for the packets whose TTL ends here). Returns None only
/// if the headers vanished, which parsing already ruled out.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Packet, rw: &Rewrite) -> Option<()> {
    // The packet's addresses as parsed into the key: whole words already in registers or
    // on the stack, instead of sixteen 16-bit packet loads per IPv6 address.
    let words = if pkt.key.family == FAMILY_V4 { 1 } else { 4 };
    let mut d = diff_words(words, &pkt.key.src_be, rw.src) + diff_words(words, &pkt.key.dst_be, rw.dst);
    if pkt.key.family == FAMILY_V4 {
        let ip = ptr_at::<Ipv4Words>(ctx, pkt.l3_off)?;
        // SAFETY: bounds checked by ptr_at; the packet is ours to write.
        let ip = unsafe { &mut *ip };
        let ttl = (u16::from_be(ip.ttl_proto) - 0x100).to_be();
        ip.check = apply(ip.check, diff16(d, ip.ttl_proto, ttl));
        ip.ttl_proto = ttl;
        store_addr(&mut ip.saddr, rw.src);
        store_addr(&mut ip.daddr, rw.dst);
    } else {
        let ip = ptr_at::<Ipv6Words>(ctx, pkt.l3_off)?;
        // SAFETY: bounds checked by ptr_at; the packet is ours to write.
        let ip = unsafe { &mut *ip };
        ip.nexthdr_hop = (u16::from_be(ip.nexthdr_hop) - 1).to_be();
        store_addr(&mut ip.saddr, rw.src);
        store_addr(&mut ip.daddr, rw.dst);
    }
    let ports = ptr_at::<Ports>(ctx, pkt.l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { &mut *ports };
    d = diff16(d, ports.source, rw.sport_be);
    d = diff16(d, ports.dest, rw.dport_be);
    ports.source = rw.sport_be;
    ports.dest = rw.dport_be;
    if pkt.key.proto == PROTO_TCP {
        let check = ptr_at::<u16>(ctx, pkt.l4_off + TCP_CHECK)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *check = apply(*check, d) };
    } else {
        let check = ptr_at::<u16>(ctx, pkt.l4_off + UDP_CHECK)?;
        // SAFETY: bounds checked by ptr_at.
        let old = unsafe { *check };
        // IPv4 UDP may carry no checksum (0); it stays that way. A computed 0 is sent as ~0.
        if old != 0 || pkt.key.family != FAMILY_V4 {
            let new = apply(old, d);
            // SAFETY: as above.
            unsafe { *check = if new == 0 { 0xffff } else { new } };
        }
    }
    Some(())
}
