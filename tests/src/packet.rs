//! Packet fixtures: build test packets from a readable spec (etherparse computes every
//! checksum independently of veer's own arithmetic) and check checksums of output frames.

use std::net::IpAddr;

use etherparse::{
    IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader, VlanId,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with flags (syn, ack) and sequence number.
    Tcp {
        syn: bool,
        ack: bool,
        seq: u32,
    },
    Udp,
}

/// A packet to build: Ethernet (optional VLAN), IPv4 or IPv6, TCP or UDP, payload.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    /// IPv4 options bytes (multiple of 4, at most 40).
    pub ipv4_options: Vec<u8>,
    pub more_fragments: bool,
    pub fragment_offset: u16,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 DF.
    pub dont_fragment: bool,
    /// IPv4 identification (a datagram's fragments share it).
    pub ip_id: u16,
    pub payload: Vec<u8>,
}

impl Spec {
    pub fn tcp_syn(src: (IpAddr, u16), dst: (IpAddr, u16)) -> Self {
        Spec {
            src_mac: [0x02, 0, 0, 0, 0, 0xaa],
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlan: None,
            src: src.0,
            dst: dst.0,
            sport: src.1,
            dport: dst.1,
            l4: L4::Tcp {
                syn: true,
                ack: false,
                seq: 1000,
            },
            ipv4_options: Vec::new(),
            more_fragments: false,
            fragment_offset: 0,
            ttl: 64,
            dont_fragment: true,
            ip_id: 0,
            payload: Vec::new(),
        }
    }

    pub fn udp(src: (IpAddr, u16), dst: (IpAddr, u16), payload: &[u8]) -> Self {
        Spec {
            l4: L4::Udp,
            payload: payload.to_vec(),
            ..Spec::tcp_syn(src, dst)
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let proto = match self.l4 {
            L4::Tcp { .. } => IpNumber::TCP,
            L4::Udp => IpNumber::UDP,
        };
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(0, self.ttl, proto, s.octets(), d.octets()).expect("ipv4");
                h.options = self.ipv4_options.as_slice().try_into().expect("options");
                h.more_fragments = self.more_fragments;
                h.dont_fragment = self.dont_fragment;
                h.identification = self.ip_id;
                h.fragment_offset = self.fragment_offset.try_into().expect("offset");
                etherparse::IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => etherparse::IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: 0,
                    next_header: proto,
                    hop_limit: self.ttl,
                    source: s.octets(),
                    destination: d.octets(),
                },
                Default::default(),
            ),
            _ => panic!("mixed address families"),
        };
        let ip = match self.vlan {
            Some(v) => eth.single_vlan(VlanId::try_new(v).expect("vlan id")).ip(ip),
            None => eth.ip(ip),
        };
        let mut out = Vec::new();
        match self.l4 {
            L4::Tcp { syn, ack, seq } => {
                let mut b = ip.tcp(self.sport, self.dport, seq, 64240);
                if syn {
                    b = b.syn();
                }
                if ack {
                    b = b.ack(1);
                }
                b.write(&mut out, &self.payload).expect("write tcp");
            }
            L4::Udp => ip
                .udp(self.sport, self.dport)
                .write(&mut out, &self.payload)
                .expect("write udp"),
        }
        out
    }
}

impl Spec {
    /// A later IPv4 fragment of this datagram: its IP header (fragment offset in 8-byte
    /// units and more-fragments from the spec) and `data`, no L4 header.
    pub fn later_fragment(&self, data: &[u8]) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (self.src, self.dst) else {
            panic!("IPv4 only");
        };
        let proto = match self.l4 {
            L4::Tcp { .. } => IpNumber::TCP,
            L4::Udp => IpNumber::UDP,
        };
        let mut h = Ipv4Header::new(0, self.ttl, proto, s.octets(), d.octets()).expect("ipv4");
        h.more_fragments = self.more_fragments;
        h.fragment_offset = self.fragment_offset.try_into().expect("offset");
        h.dont_fragment = false;
        h.identification = self.ip_id;
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
            .write(&mut out, proto, data)
            .expect("write fragment");
        out
    }
}

/// An ICMP error to build: its kind (the family follows the addresses).
#[derive(Clone, Copy, Debug)]
pub enum IcmpError {
    /// IPv4 fragmentation needed / IPv6 packet too big, with the MTU.
    TooBig(u16),
    TimeExceeded,
    PortUnreachable,
}

/// An ICMP/ICMPv6 error frame from `src` to `dst` (MACs and TTL from `outer`), quoting
/// `quoted` (an IP packet, or its start).
pub fn icmp_error(outer: &Spec, kind: IcmpError, quoted: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, Icmpv6Type, icmpv4, icmpv6};
    let eth = PacketBuilder::ethernet2(outer.src_mac, outer.dst_mac);
    let mut out = Vec::new();
    match (outer.src, outer.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let t = match kind {
                IcmpError::TooBig(mtu) => {
                    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu,
                    })
                }
                IcmpError::TimeExceeded => Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
                IcmpError::PortUnreachable => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
            };
            let mut h = Ipv4Header::new(0, outer.ttl, IpNumber::ICMP, s.octets(), d.octets()).expect("ipv4");
            h.dont_fragment = false;
            eth.ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
                .icmpv4(t)
                .write(&mut out, quoted)
                .expect("write icmp");
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let t = match kind {
                IcmpError::TooBig(mtu) => Icmpv6Type::PacketTooBig { mtu: mtu as u32 },
                IcmpError::TimeExceeded => Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
                IcmpError::PortUnreachable => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
            };
            eth.ipv6(s.octets(), d.octets(), outer.ttl)
                .icmpv6(t)
                .write(&mut out, quoted)
                .expect("write icmpv6");
        }
        _ => panic!("mixed address families"),
    }
    out
}

/// Recomputes the IPv4 header and TCP/UDP checksums of a frame and compares them with the
/// stored ones. Returns a description of the first mismatch.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let h = PacketHeaders::from_ethernet_slice(frame).map_err(|e| format!("unparsable: {e}"))?;
    let payload = h.payload.slice();
    match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), Some(t)) => {
            if ip.header_checksum != ip.calc_header_checksum() {
                return Err(format!(
                    "ipv4 header checksum {:#06x} != {:#06x}",
                    ip.header_checksum,
                    ip.calc_header_checksum()
                ));
            }
            let (stored, want) = match t {
                TransportHeader::Tcp(tcp) => (
                    tcp.checksum,
                    tcp.calc_checksum_ipv4(ip, payload).map_err(|e| e.to_string())?,
                ),
                TransportHeader::Udp(udp) => (
                    udp.checksum,
                    udp.calc_checksum_ipv4(ip, payload).map_err(|e| e.to_string())?,
                ),
                _ => return Err("not tcp/udp".into()),
            };
            (stored == want)
                .then_some(())
                .ok_or(format!("l4 checksum {stored:#06x} != {want:#06x}"))
        }
        (Some(NetHeaders::Ipv6(ip, _)), Some(t)) => {
            let (stored, want) = match t {
                TransportHeader::Tcp(tcp) => (
                    tcp.checksum,
                    tcp.calc_checksum_ipv6(ip, payload).map_err(|e| e.to_string())?,
                ),
                TransportHeader::Udp(udp) => (
                    udp.checksum,
                    udp.calc_checksum_ipv6(ip, payload).map_err(|e| e.to_string())?,
                ),
                _ => return Err("not tcp/udp".into()),
            };
            (stored == want)
                .then_some(())
                .ok_or(format!("l4 checksum {stored:#06x} != {want:#06x}"))
        }
        _ => Err("no ip/transport headers".into()),
    }
}
