//! Packet headers, in one place. Their layouts are network-types' (Ethernet, 802.1Q,
//! IPv4, IPv6, TCP, UDP, ICMP, ICMPv6): lengths, field offsets and protocol numbers come
//! from there.
//!
//! network-types spells multi-byte fields as byte arrays (alignment 1), and a load through
//! a byte array compiles to one load per byte on BPF. Every header veer touches starts
//! 2-byte aligned (after the 14-byte Ethernet header, an optional 4-byte tag, IPv4 options
//! in 4-byte steps), so the data path reads and writes them as 16-bit words through the
//! views below, whose layouts are checked against network-types' at compile time: the
//! same fields at the same offsets, two bytes at a time. See docs/decisions.md,
//! "network-types".

use core::mem::{offset_of, size_of};

use aya_ebpf::programs::XdpContext;
pub use network_types::{
    eth::{EthHdr, EtherType},
    icmp::{Icmpv4Hdr, Icmpv6Hdr},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// EtherType values as they are on the wire (network-types keeps them big-endian).
pub const ETH_P_IP: u16 = EtherType::Ipv4 as u16;
pub const ETH_P_IPV6: u16 = EtherType::Ipv6 as u16;
pub const ETH_P_8021Q: u16 = EtherType::Ieee8021q as u16;
/// Where the EtherType is: untagged, and behind one 802.1Q tag.
pub const ETHER_TYPE: usize = offset_of!(EthHdr, ether_type);
pub const VLAN_ETHER_TYPE: usize = EthHdr::LEN + offset_of!(VlanHdr, ether_type);

pub const PROTO_ICMP: u8 = IpProto::Icmp as u8;
pub const PROTO_ICMPV6: u8 = IpProto::Ipv6Icmp as u8;
pub const IPV6_FRAGMENT: u8 = IpProto::Ipv6Frag as u8;

/// The TCP flags byte: the second byte of network-types' 16-bit offset/flags bitfield.
pub const TCP_FLAGS: usize = offset_of!(TcpHdr, _bitfield_1) + 1;
pub const TCP_CHECK: usize = offset_of!(TcpHdr, check);
pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// ICMP and ICMPv6 headers: type, code, checksum, 4 bytes of the message (the MTU of a
/// fragmentation-needed / packet-too-big), the same 8 bytes in both.
pub const ICMP_LEN: usize = Icmpv4Hdr::LEN;
pub const ICMP_CHECK: usize = offset_of!(Icmpv4Hdr, check);

/// Returns a pointer to a `T` at `off` bytes into the packet, if it fits.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// network-types' [`Ipv4Hdr`] as 16-bit words.
#[repr(C)]
pub struct Ipv4Words {
    pub ver_ihl_tos: u16,
    pub tot_len_be: u16,
    pub id: u16,
    pub frag_off_be: u16,
    pub ttl_proto: u16,
    pub check: u16,
    pub saddr: [u16; 2],
    pub daddr: [u16; 2],
}

/// network-types' [`Ipv6Hdr`] as 16-bit words.
#[repr(C)]
pub struct Ipv6Words {
    pub ver_tc_flow: [u16; 2],
    pub payload_len_be: u16,
    pub nexthdr_hop: u16,
    pub saddr: [u16; 8],
    pub daddr: [u16; 8],
}

/// The ports at the start of network-types' [`TcpHdr`] and [`UdpHdr`], as 16-bit words.
#[repr(C)]
pub struct Ports {
    pub source: u16,
    pub dest: u16,
}

// The views are network-types' layouts, field for field.
const _: () = {
    assert!(size_of::<Ipv4Words>() == Ipv4Hdr::LEN);
    assert!(offset_of!(Ipv4Words, tot_len_be) == offset_of!(Ipv4Hdr, tot_len));
    assert!(offset_of!(Ipv4Words, id) == offset_of!(Ipv4Hdr, id));
    assert!(offset_of!(Ipv4Words, frag_off_be) == offset_of!(Ipv4Hdr, frags));
    assert!(offset_of!(Ipv4Words, ttl_proto) == offset_of!(Ipv4Hdr, ttl));
    assert!(offset_of!(Ipv4Hdr, proto) == offset_of!(Ipv4Hdr, ttl) + 1);
    assert!(offset_of!(Ipv4Words, check) == offset_of!(Ipv4Hdr, check));
    assert!(offset_of!(Ipv4Words, saddr) == offset_of!(Ipv4Hdr, src_addr));
    assert!(offset_of!(Ipv4Words, daddr) == offset_of!(Ipv4Hdr, dst_addr));
    assert!(size_of::<Ipv6Words>() == Ipv6Hdr::LEN);
    assert!(offset_of!(Ipv6Words, payload_len_be) == offset_of!(Ipv6Hdr, payload_len));
    assert!(offset_of!(Ipv6Words, nexthdr_hop) == offset_of!(Ipv6Hdr, next_hdr));
    assert!(offset_of!(Ipv6Hdr, hop_limit) == offset_of!(Ipv6Hdr, next_hdr) + 1);
    assert!(offset_of!(Ipv6Words, saddr) == offset_of!(Ipv6Hdr, src_addr));
    assert!(offset_of!(Ipv6Words, daddr) == offset_of!(Ipv6Hdr, dst_addr));
    assert!(offset_of!(Ports, source) == offset_of!(TcpHdr, source));
    assert!(offset_of!(Ports, dest) == offset_of!(TcpHdr, dest));
    assert!(offset_of!(Ports, source) == offset_of!(UdpHdr, src));
    assert!(offset_of!(Ports, dest) == offset_of!(UdpHdr, dst));
    assert!(TCP_FLAGS == 13 && TCP_CHECK == 16 && UDP_CHECK == 6);
    assert!(ICMP_LEN == Icmpv6Hdr::LEN && ICMP_CHECK == offset_of!(Icmpv6Hdr, check));
    assert!(ETHER_TYPE == 12 && VLAN_ETHER_TYPE == 16);
};

#[inline(always)]
pub fn words_to_addr2(w: &[u16; 2]) -> u32 {
    w[0] as u32 | (w[1] as u32) << 16
}

#[inline(always)]
pub fn words_to_addr8(w: &[u16; 8]) -> [u32; 4] {
    [
        w[0] as u32 | (w[1] as u32) << 16,
        w[2] as u32 | (w[3] as u32) << 16,
        w[4] as u32 | (w[5] as u32) << 16,
        w[6] as u32 | (w[7] as u32) << 16,
    ]
}
