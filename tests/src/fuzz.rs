//! A seeded frame generator for the real XDP object (BPF_PROG_TEST_RUN), over a loaded
//! configuration with live flows in both tables. Frames are built from random specs
//! (valid checksums: for the checksum invariant) and some are then corrupted byte-wise
//! (for the accounting and pass-through invariants). Invariants, checked per frame or per
//! batch:
//! - a frame that is neither for a VIP nor for a SNAT address passes byte-identical;
//! - every frame the program changed (forwarded, answered, or passed after a rewrite) and
//!   whose input was well-formed has valid IP, L4 and ICMP checksums, its source is a VIP
//!   or SNAT address (or, for a passed fragment, unchanged) and its destination a backend or
//!   an address that sent an earlier frame;
//! - every frame is counted under exactly one reason.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use lb_common::Reason;

use crate::{
    fixture::*,
    packet::{IcmpError, L4, Spec, icmp_error, verify_checksums},
};

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub frames: u64,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    pub answered: u64,
    pub elapsed: Duration,
}

/// Client ports of the live flows the run starts with.
const LIVE_PORTS: [u16; 8] = [41000, 41001, 41002, 41003, 53000, 53001, 53002, 53003];

fn v4(a: Ipv4Addr) -> IpAddr {
    a.into()
}

/// Runs `frames` frames (or until `limit` passes) from `seed`; panics on the first
/// violated invariant, naming the seed and the frame number.
pub fn run(fx: &mut Fixture, seed: u64, frames: u64, limit: Duration) -> Report {
    let start = Instant::now();
    let mut rng = Rng::new(seed);
    establish_live_flows(fx);
    let vips: Vec<IpAddr> = vec![v4(VIP4), VIP6.into(), v4(EMPTY_VIP4)];
    let snats: Vec<IpAddr> = vec![v4(SNAT4), SNAT6.into()];
    let mut backends: HashSet<IpAddr> = HashSet::new();
    for i in 1..=3 {
        backends.insert(backend4(i).into());
        backends.insert(backend6(i).into());
    }
    let mut senders: HashSet<IpAddr> = [v4(CLIENT4), v4(CLIENT4_B), CLIENT6.into()].into_iter().collect();
    let mut report = Report::default();
    let mut counted_before = total_reasons(fx);
    let mut batch = 0u64;
    while report.frames < frames && start.elapsed() < limit {
        let n = report.frames;
        let (frame, well_formed, src, dst) = generate(&mut rng, &backends);
        if let Some(s) = src {
            senders.insert(s);
        }
        let ingress = if rng.chance(30) { Some(fx.ifindex) } else { None };
        let (verdict, out) = fx.run(&frame, ingress);
        let ctx = || {
            format!(
                "seed {seed} frame {n}: {} bytes {:02x?}",
                frame.len(),
                &frame[..frame.len().min(80)]
            )
        };
        let ours = match dst {
            Dest::Ip(d) => Some(vips.contains(&d) || snats.contains(&d)),
            Dest::NotIp => Some(false),
            Dest::Short => None,
        };
        match verdict {
            XDP_PASS => report.passed += 1,
            XDP_DROP => report.dropped += 1,
            XDP_TX | XDP_REDIRECT => report.forwarded += 1,
            v => panic!("{}: verdict {v} (aborted?)", ctx()),
        }
        if ours == Some(false) {
            assert_eq!(verdict, XDP_PASS, "{}: not for us, must pass", ctx());
            assert_eq!(out, frame, "{}: not for us, must pass byte-identical", ctx());
        }
        let changed = verdict != XDP_DROP && out != frame;
        if changed {
            assert_eq!(ours, Some(true), "{}: rewrote a frame not for us", ctx());
            if well_formed {
                check_output(&out, &vips, &snats, &backends, &senders, verdict)
                    .unwrap_or_else(|e| panic!("{}: output {e}: {:02x?}", ctx(), &out[..out.len().min(80)]));
            }
            if verdict == XDP_TX && is_icmp(&out) && !is_icmp(&frame) {
                report.answered += 1;
            }
        }
        report.frames += 1;
        batch += 1;
        if batch == 1000 || report.frames == frames {
            let counted = total_reasons(fx);
            assert_eq!(
                counted - counted_before,
                batch,
                "seed {seed}: frames up to {n} each counted under one reason"
            );
            counted_before = counted;
            batch = 0;
        }
    }
    if batch > 0 {
        assert_eq!(
            total_reasons(fx) - counted_before,
            batch,
            "seed {seed}: last batch counted once each"
        );
    }
    report.elapsed = start.elapsed();
    report
}

fn total_reasons(fx: &Fixture) -> u64 {
    Reason::ALL.iter().map(|r| fx.reason(*r)).sum()
}

/// TCP and UDP flows, IPv4 and IPv6, each answered once: both tables hold them.
fn establish_live_flows(fx: &Fixture) {
    for (k, &port) in LIVE_PORTS.iter().enumerate() {
        let v6 = k % 2 == 1;
        let (client, vip): (IpAddr, IpAddr) = if v6 {
            (CLIENT6.into(), VIP6.into())
        } else {
            (v4(CLIENT4), v4(VIP4))
        };
        let udp = port >= 53000;
        let spec = if udp {
            Spec::udp((client, port), (vip, 53), b"q")
        } else {
            Spec::tcp_syn((client, port), (vip, 80))
        };
        let (verdict, out) = fx.run(&spec.build(), None);
        assert_eq!(verdict, XDP_REDIRECT, "live flow {port}");
        let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
        let (bsrc, bport) = match (&h.net, &h.transport) {
            (Some(NetHeaders::Ipv4(ip, _)), Some(t)) => (IpAddr::from(ip.destination), dport(t)),
            (Some(NetHeaders::Ipv6(ip, _)), Some(t)) => (IpAddr::from(ip.destination), dport(t)),
            _ => panic!("live flow {port}: unparsable output"),
        };
        let snat: IpAddr = if v6 { SNAT6.into() } else { v4(SNAT4) };
        let reply = Spec {
            src_mac: out[0..6].try_into().unwrap(),
            dst_mac: IF_MAC,
            src: bsrc,
            sport: bport,
            dst: snat,
            dport: port,
            l4: if udp {
                L4::Udp
            } else {
                L4::Tcp {
                    syn: true,
                    ack: true,
                    seq: 1,
                }
            },
            ..spec.clone()
        };
        assert_eq!(
            fx.run(&reply.build(), None).0,
            XDP_REDIRECT,
            "live flow {port} answered"
        );
    }
}

fn dport(t: &TransportHeader) -> u16 {
    match t {
        TransportHeader::Tcp(h) => h.destination_port,
        TransportHeader::Udp(h) => h.destination_port,
        _ => 0,
    }
}

fn is_icmp(frame: &[u8]) -> bool {
    matches!(
        PacketHeaders::from_ethernet_slice(frame).map(|h| h.transport),
        Ok(Some(TransportHeader::Icmpv4(_) | TransportHeader::Icmpv6(_)))
    )
}

/// A random frame: whether it was built well-formed (valid checksums), its IP source and
/// destination (None for non-IP).
fn generate(rng: &mut Rng, backends: &HashSet<IpAddr>) -> (Vec<u8>, bool, Option<IpAddr>, Dest) {
    if rng.chance(2) {
        // Not IP: ARP-like, LLDP-like, garbage ethertype.
        let mut f = vec![0u8; 14 + rng.below(60) as usize];
        for b in f.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        f[12] = rng.pick(&[0x08, 0x88, 0x86, 0x12]);
        f[13] = rng.pick(&[0x06, 0xcc, 0xdd, 0x34]);
        if f[12] == 0x86 || f[12] == 0x08 && f[13] != 0x06 {
            f[13] = 0x06;
        }
        let d = raw_dst(&f);
        return (f, false, None, d);
    }
    let v6 = rng.chance(40);
    let backend_list: Vec<IpAddr> = backends.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
    let addr = |rng: &mut Rng, role: u64| -> IpAddr {
        match (v6, role) {
            (false, 0) => v4(CLIENT4),
            (false, 1) => v4(VIP4),
            (false, 2) => v4(SNAT4),
            (false, 3) => v4(EMPTY_VIP4),
            (false, 4) => v4(Ipv4Addr::new(10, 9, 0, rng.below(256) as u8)),
            (false, _) => v4(Ipv4Addr::from(rng.next_u64() as u32)),
            (true, 0) => CLIENT6.into(),
            (true, 1) => VIP6.into(),
            (true, 2) => SNAT6.into(),
            (true, 3) => Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, rng.below(65536) as u16).into(),
            (true, _) => Ipv6Addr::from(((rng.next_u64() as u128) << 64) | rng.next_u64() as u128).into(),
        }
    };
    let to_us = rng.chance(80);
    let tcp = rng.chance(55);
    let (service, backend_port) = if tcp { (80, 8080) } else { (53, 5353) };
    let reply = to_us && rng.chance(45);
    let (src, dst) = if reply {
        // A backend's answer to the SNAT address.
        (rng.pick(&backend_list), addr(rng, 2))
    } else if to_us {
        let (a, b) = (rng.pick(&[0, 0, 4, 5]), rng.pick(&[1, 1, 1, 3]));
        (addr(rng, a), addr(rng, b))
    } else {
        let (a, b) = (rng.pick(&[0, 4, 5]), rng.pick(&[4, 5]));
        (addr(rng, a), addr(rng, b))
    };
    let (live, any) = (rng.pick(&LIVE_PORTS), rng.below(65536) as u16);
    let (sport, dport) = if reply && rng.chance(70) {
        (backend_port, live)
    } else if to_us && rng.chance(70) {
        (if rng.chance(50) { live } else { any | 1024 }, service)
    } else {
        let (a, b) = (rng.below(65536) as u16, rng.below(65536) as u16);
        (
            rng.pick(&[80, 53, 8080, 5353, 0, live, any, a]),
            rng.pick(&[80, 53, 8080, 5353, 81, 0, live, b]),
        )
    };
    let payload_len = match rng.below(10) {
        0 => 1400 + rng.below(200) as usize,
        1..=3 => 0,
        _ => rng.below(200) as usize,
    };
    let payload: Vec<u8> = (0..payload_len).map(|_| rng.next_u64() as u8).collect();
    let l4 = if tcp {
        L4::Tcp {
            syn: rng.chance(40),
            ack: rng.chance(70),
            seq: rng.next_u64() as u32,
        }
    } else {
        L4::Udp
    };
    let mut spec = Spec {
        vlan: if rng.chance(5) {
            Some(rng.below(4095) as u16 + 1)
        } else {
            None
        },
        l4,
        payload,
        ttl: rng.pick(&[64, 64, 64, 1, 2, 255]),
        ..Spec::tcp_syn((src, sport), (dst, dport))
    };
    if !v6 && rng.chance(5) {
        spec.ipv4_options = vec![1; 4 * (1 + rng.below(3) as usize)];
    }
    if !v6 && rng.chance(10) {
        spec.more_fragments = rng.chance(60);
        spec.ip_id = rng.below(4) as u16;
        spec.dont_fragment = false;
        spec.fragment_offset = if rng.chance(50) { 0 } else { 1 + rng.below(200) as u16 };
    }
    if !v6 && rng.chance(5) {
        spec.dont_fragment = false;
    }
    let mut frame = if spec.fragment_offset != 0 {
        spec.later_fragment(&spec.payload.clone())
    } else if rng.chance(8) {
        // An ICMP error about a packet to or from one of our addresses.
        let quoted = Spec {
            src: dst,
            dst: src,
            sport: dport,
            dport: sport,
            ..spec.clone()
        }
        .build();
        let cut = 14 + rng.below((quoted.len() - 14) as u64 + 1) as usize;
        let kind = rng.pick(&[
            IcmpError::TooBig(1280),
            IcmpError::TimeExceeded,
            IcmpError::PortUnreachable,
        ]);
        let outer = Spec {
            src: addr(rng, 4),
            ..spec.clone()
        };
        icmp_error(&outer, kind, &quoted[14..cut])
    } else {
        spec.build()
    };
    let mut well_formed = spec.vlan.is_none() || !frame.is_empty();
    if rng.chance(15) {
        // Corruption: flips, truncation, extension.
        well_formed = false;
        match rng.below(3) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(frame.len() as u64) as usize;
                    frame[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let keep = 14 + rng.below((frame.len() - 14) as u64) as usize;
                frame.truncate(keep.max(14));
            }
            _ => frame.extend((0..rng.below(16)).map(|_| rng.next_u64() as u8)),
        }
    }
    // The destination as the program reads it (a corrupted header may name another).
    let dst_seen = raw_dst(&frame);
    let src_seen = raw_src(&frame).or(Some(src));
    (frame, well_formed, src_seen, dst_seen)
}

/// Where a frame is going, as the program sees it before any other check.
#[derive(Clone, Copy, Debug)]
pub enum Dest {
    /// Not IPv4/IPv6.
    NotIp,
    /// IP, but too short to name a destination, or with a bad version or IHL (not an IP
    /// packet at all; dropped as `drop_malformed` when its destination's bit is set in the
    /// VIP filter, a hash, so also for a few addresses that are no VIP).
    Short,
    Ip(IpAddr),
}

/// The source address at its fixed place, as a new flow would record it.
fn raw_src(f: &[u8]) -> Option<IpAddr> {
    let vlan = f.get(12..14)? == [0x81, 0x00];
    let l3 = if vlan { 18 } else { 14 };
    match f.get(l3 - 2..l3)? {
        [0x08, 0x00] => Some(Ipv4Addr::from(<[u8; 4]>::try_from(f.get(l3 + 12..l3 + 16)?).ok()?).into()),
        [0x86, 0xdd] => Some(Ipv6Addr::from(<[u8; 16]>::try_from(f.get(l3 + 8..l3 + 24)?).ok()?).into()),
        _ => None,
    }
}

/// The destination address at its fixed place (Ethernet, optional VLAN tag, IPv4/IPv6).
fn raw_dst(f: &[u8]) -> Dest {
    let word = |i: usize| f.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (mut l3, mut et) = (14, word(12));
    if et == Some(0x8100) {
        l3 = 18;
        et = word(16);
        if et.is_none() {
            return Dest::Short;
        }
    }
    let first = f.get(l3).copied().unwrap_or(0);
    match et {
        Some(0x0800) if first >> 4 != 4 || first & 0x0f < 5 => Dest::Short,
        Some(0x86dd) if first >> 4 != 6 => Dest::Short,
        Some(0x0800) => match f.get(l3 + 16..l3 + 20) {
            Some(b) => Dest::Ip(Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap()).into()),
            None => Dest::Short,
        },
        Some(0x86dd) => match f.get(l3 + 24..l3 + 40) {
            Some(b) => Dest::Ip(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()).into()),
            None => Dest::Short,
        },
        _ => Dest::NotIp,
    }
}

/// A changed frame: checksums valid, addresses from the configuration or the flows.
fn check_output(
    out: &[u8],
    vips: &[IpAddr],
    snats: &[IpAddr],
    backends: &HashSet<IpAddr>,
    senders: &HashSet<IpAddr>,
    verdict: u32,
) -> Result<(), String> {
    let h = PacketHeaders::from_ethernet_slice(out).map_err(|e| format!("unparsable: {e}"))?;
    let (src, dst, fragment) = match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            if ip.header_checksum != ip.calc_header_checksum() {
                return Err("ipv4 header checksum".into());
            }
            (
                IpAddr::from(ip.source),
                IpAddr::from(ip.destination),
                ip.more_fragments || ip.fragment_offset.value() != 0,
            )
        }
        Some(NetHeaders::Ipv6(ip, ext)) => (
            IpAddr::from(ip.source),
            IpAddr::from(ip.destination),
            ext.fragment.is_some(),
        ),
        _ => return Err("no IP header".into()),
    };
    if !(vips.contains(&src) || snats.contains(&src) || verdict == XDP_PASS) {
        return Err(format!("source {src} is neither a VIP nor a SNAT address"));
    }
    if !(backends.contains(&dst) || senders.contains(&dst)) {
        return Err(format!("destination {dst} is neither a backend nor a sender"));
    }
    if fragment {
        return Ok(());
    }
    match &h.transport {
        Some(TransportHeader::Tcp(_) | TransportHeader::Udp(_)) => verify_checksums(out),
        Some(TransportHeader::Icmpv4(icmp)) => {
            let want = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type.clone(), h.payload.slice()).checksum;
            (icmp.checksum == want)
                .then_some(())
                .ok_or_else(|| "icmp checksum".into())
        }
        Some(TransportHeader::Icmpv6(icmp)) => {
            let Some(NetHeaders::Ipv6(ip, _)) = &h.net else {
                return Err("icmpv6 over ipv4".into());
            };
            let want = etherparse::Icmpv6Header::with_checksum(
                icmp.icmp_type,
                ip.source,
                ip.destination,
                h.payload.slice(),
            )
            .map_err(|e| e.to_string())?
            .checksum;
            (icmp.checksum == want)
                .then_some(())
                .ok_or_else(|| "icmpv6 checksum".into())
        }
        _ => Ok(()),
    }
}
