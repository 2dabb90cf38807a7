//! Header parsing: Ethernet (one optional 802.1Q tag), IPv4 with options, IPv6, TCP, UDP.
//! The headers themselves are in [`crate::packet`].

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};

use crate::packet::{
    ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, IPV6_FRAGMENT, Ipv4Words, Ipv6Hdr, Ipv6Words, PROTO_ICMP, PROTO_ICMPV6,
    Ports, TCP_FLAGS, TcpHdr, UdpHdr, VLAN_ETHER_TYPE, ptr_at, words_to_addr2, words_to_addr8,
};

pub use crate::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Reads ports (and TCP flags) of a complete TCP/UDP header at `l4_off`.
#[inline(always)]
fn l4_header(ctx: &XdpContext, l4_off: usize, proto: u8) -> Option<(u16, u16, u8)> {
    let ports = ptr_at::<Ports>(ctx, l4_off)?;
    if proto == PROTO_TCP {
        // Flags read through the checked header pointer: a second check the compiler may
        // fold away leaves the verifier with an unchecked pointer.
        let hdr = ptr_at::<[u8; TcpHdr::LEN]>(ctx, l4_off)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { Some(((*ports).source, (*ports).dest, (*hdr)[TCP_FLAGS])) }
    } else {
        ptr_at::<[u8; UdpHdr::LEN]>(ctx, l4_off)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { Some(((*ports).source, (*ports).dest, 0)) }
    }
}

/// What the rest of the program needs to know about a packet.
pub struct Packet {
    pub l3_off: usize,
    pub l4_off: usize,
    /// Total IP length in bytes (for counters and the FIB MTU check).
    pub ip_len: u16,
    /// First fragment (more-fragments set, offset 0), IPv4 or IPv6.
    pub fragment: bool,
    /// The datagram's IP id (IPv4: 16 bits, IPv6: the fragment header's 32), when `fragment`.
    pub frag_id: u32,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// May not be fragmented on the way (IPv4 DF; always for IPv6).
    pub dont_fragment: bool,
    /// In per-CPU scratch memory (maps::Scratch::key), valid for this run.
    pub key: &'static FlowKey,
}

pub enum Parsed {
    /// Not IP, or IP not for us: pass with this reason.
    Pass(Reason),
    Drop(Reason),
    /// Destination address may be a VIP or SNAT address: ports are filled in.
    Ip(Packet),
    /// An ICMP/ICMPv6 error to a VIP or SNAT address (see icmp.rs).
    Icmp(IcmpAt),
    /// A later fragment (no ports) to a VIP or SNAT address (see icmp.rs, "fragments").
    LaterFragment,
}

/// Where an ICMP message to a VIP or SNAT address starts.
pub struct IcmpAt {
    pub l3_off: usize,
    pub icmp_off: usize,
    pub v4: bool,
}

/// Is this destination address one the balancer cares about (VIP or SNAT address)?
#[inline(always)]
fn interesting(addr: &[u32; 4]) -> bool {
    let (word, bit) = lb_common::vip_filter_slot(addr);
    match crate::maps::VIP_FILTER.get(word) {
        Some(bits) => *bits & bit != 0,
        None => false,
    }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth_type) = ptr_at::<u16>(ctx, crate::packet::ETHER_TYPE) else {
        return Parsed::Drop(Reason::DropTruncated);
    };
    // SAFETY: bounds checked by ptr_at.
    let mut proto = unsafe { *eth_type };
    let mut l3_off = EthHdr::LEN;
    if proto == ETH_P_8021Q {
        let Some(inner) = ptr_at::<u16>(ctx, VLAN_ETHER_TYPE) else {
            return Parsed::Drop(Reason::DropTruncated);
        };
        // SAFETY: bounds checked by ptr_at.
        proto = unsafe { *inner };
        l3_off += network_types::vlan::VlanHdr::LEN;
    }
    match proto {
        ETH_P_IP => parse_v4(ctx, l3_off),
        ETH_P_IPV6 => parse_v6(ctx, l3_off),
        _ => Parsed::Pass(Reason::PassNotIp),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3_off: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Words>(ctx, l3_off) else {
        return Parsed::Drop(Reason::DropTruncated);
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let daddr = [words_to_addr2(&ip.daddr), 0, 0, 0];
    if !interesting(&daddr) {
        return Parsed::Pass(Reason::PassNotVip);
    }
    let first = u16::from_be(ip.ver_ihl_tos);
    let ihl = ((first >> 8) & 0x0f) as usize;
    if first >> 12 != 4 || ihl < 5 {
        return Parsed::Drop(Reason::DropMalformed);
    }
    let ip_len = u16::from_be(ip.tot_len_be);
    let ttl_proto = u16::from_be(ip.ttl_proto);
    let l4_proto = (ttl_proto & 0xff) as u8;
    let frag = u16::from_be(ip.frag_off_be);
    let l4_off = l3_off + ihl * 4;
    if l4_proto == PROTO_ICMP && frag & 0x3fff == 0 {
        return Parsed::Icmp(IcmpAt {
            l3_off,
            icmp_off: l4_off,
            v4: true,
        });
    }
    if l4_proto != PROTO_TCP && l4_proto != PROTO_UDP {
        return Parsed::Pass(Reason::PassNotVip);
    }
    if frag & 0x1fff != 0 {
        // A later fragment carries no ports: it follows its first fragment (FRAGS).
        return Parsed::LaterFragment;
    }
    let Some((sport_be, dport_be, tcp_flags)) = l4_header(ctx, l4_off, l4_proto) else {
        return Parsed::Drop(Reason::DropTruncated);
    };
    // The key lives in per-CPU map memory: the program's one stack frame is full.
    let Some(scratch) = crate::maps::scratch() else {
        return Parsed::Pass(Reason::PassNotVip);
    };
    let key = &mut scratch.key;
    *key = FlowKey {
        src_be: [words_to_addr2(&ip.saddr), 0, 0, 0],
        dst_be: daddr,
        sport_be,
        dport_be,
        proto: l4_proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let fragment = frag & 0x2000 != 0;
    Parsed::Ip(Packet {
        l3_off,
        l4_off,
        ip_len,
        fragment,
        frag_id: u16::from_be(ip.id) as u32,
        tcp_flags,
        ttl: (ttl_proto >> 8) as u8,
        dont_fragment: frag & 0x4000 != 0,
        key,
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3_off: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Words>(ctx, l3_off) else {
        return Parsed::Drop(Reason::DropTruncated);
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let daddr = words_to_addr8(&ip.daddr);
    if !interesting(&daddr) {
        return Parsed::Pass(Reason::PassNotVip);
    }
    if u16::from_be(ip.ver_tc_flow[0]) >> 12 != 6 {
        return Parsed::Drop(Reason::DropMalformed);
    }
    let nexthdr_hop = u16::from_be(ip.nexthdr_hop);
    let mut l4_proto = (nexthdr_hop >> 8) as u8;
    let mut l4_off = l3_off + Ipv6Hdr::LEN;
    let (mut fragment, mut frag_id) = (false, 0);
    if l4_proto == IPV6_FRAGMENT {
        // The fragment header: next header, reserved, offset << 3 | M, identification.
        let Some(fh) = ptr_at::<[u16; 4]>(ctx, l4_off) else {
            return Parsed::Drop(Reason::DropTruncated);
        };
        // SAFETY: bounds checked by ptr_at.
        let fh = unsafe { &*fh };
        let offset_m = u16::from_be(fh[1]);
        if offset_m & !7 != 0 {
            return Parsed::LaterFragment;
        }
        l4_proto = (u16::from_be(fh[0]) >> 8) as u8;
        fragment = offset_m & 1 != 0;
        frag_id = u16::from_be(fh[2]) as u32 * 65536 + u16::from_be(fh[3]) as u32;
        l4_off += 8;
    }
    let ip_len = u16::from_be(ip.payload_len_be).wrapping_add(Ipv6Hdr::LEN as u16);
    if l4_proto == PROTO_ICMPV6 && !fragment {
        return Parsed::Icmp(IcmpAt {
            l3_off,
            icmp_off: l4_off,
            v4: false,
        });
    }
    if l4_proto != PROTO_TCP && l4_proto != PROTO_UDP {
        // Extension headers other than a fragment header are not followed: see
        // docs/decisions.md.
        return Parsed::Pass(Reason::PassNotVip);
    }
    let Some((sport_be, dport_be, tcp_flags)) = l4_header(ctx, l4_off, l4_proto) else {
        return Parsed::Drop(Reason::DropTruncated);
    };
    // The key lives in per-CPU map memory: the program's one stack frame is full.
    let Some(scratch) = crate::maps::scratch() else {
        return Parsed::Pass(Reason::PassNotVip);
    };
    let key = &mut scratch.key;
    *key = FlowKey {
        src_be: words_to_addr8(&ip.saddr),
        dst_be: daddr,
        sport_be,
        dport_be,
        proto: l4_proto,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    Parsed::Ip(Packet {
        l3_off,
        l4_off,
        ip_len,
        fragment,
        frag_id,
        tcp_flags,
        ttl: nexthdr_hop as u8,
        dont_fragment: true,
        key,
    })
}
