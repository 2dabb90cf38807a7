//! Packet fixtures: the real XDP object, loaded into the kernel, run through
//! BPF_PROG_TEST_RUN on crafted packets. Each case asserts the verdict, every output byte
//! (expected frames are built by etherparse, which computes checksums on its own) and the
//! reason counters. Runs in a network namespace of its own with static neighbours so that
//! bpf_fib_lookup answers deterministically.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lb_common::{
    BACKEND_DOWN, BACKEND_DRAIN, FLOW_F_CLOSED, MAP_BACKENDS, MAP_CONFIG, MAP_FLOWS, MAP_NAT_REV, MAP_REASONS,
    MAP_TABLES, MAP_TX_PORTS, MAP_VIP_FILTER, MAP_VIPS, PROTO_TCP, Reason, VipInfo,
};
use veer_tests::{
    fixture::*,
    packet::{L4, Spec, verify_checksums},
};

/// Which backend (1..=3) of a pool an id is, and its address.
fn backend_of(id: u32, pool_vip_id: u32) -> u8 {
    let i = id - pool_vip_id * 3;
    assert!((1..=3).contains(&i), "backend id {id} not in pool of vip {pool_vip_id}");
    i as u8
}

/// The frame the balancer must emit for `input` sent to backend `i` of `vip_id`'s pool.
fn expected_forward(input: &Spec, i: u8, port: u16) -> Spec {
    let v6 = input.src.is_ipv6();
    Spec {
        src_mac: IF_MAC,
        dst_mac: backend_mac(i),
        src: if v6 { SNAT6.into() } else { SNAT4.into() },
        sport: input.sport,
        dst: if v6 { backend6(i).into() } else { backend4(i).into() },
        dport: port,
        ttl: input.ttl - 1,
        ..input.clone()
    }
}

/// Sends `spec` (a new flow to a VIP) and checks the rewrite to the predicted backend.
fn check_forward(fx: &Fixture, spec: &Spec, vip_id: u32, backend_port: u16) -> u8 {
    let before = fx.reason(Reason::Redirect);
    let id = fx.predict(vip_id + 1, &flow_key(spec));
    let i = backend_of(id, vip_id);
    let (verdict, out) = fx.run(&spec.build(), None);
    assert_eq!(verdict, XDP_REDIRECT, "new flow must be forwarded");
    let want = expected_forward(spec, i, backend_port).build();
    assert_eq!(out, want, "rewrite to backend {i} (kernel output vs expected frame)");
    if !spec.more_fragments {
        // (etherparse does not read a fragment's L4 header; the frame comparison covers it)
        verify_checksums(&out).expect("checksums valid after rewrite");
    }
    assert_eq!(fx.reason(Reason::Redirect), before + 1);
    i
}

/// The backend's reply to a forwarded flow, and the frame the client must receive.
fn check_reply(fx: &Fixture, request: &Spec, i: u8, backend_port: u16) {
    let v6 = request.src.is_ipv6();
    let reply = Spec {
        src_mac: backend_mac(i),
        dst_mac: IF_MAC,
        src: if v6 { backend6(i).into() } else { backend4(i).into() },
        sport: backend_port,
        dst: if v6 { SNAT6.into() } else { SNAT4.into() },
        dport: request.sport,
        l4: match request.l4 {
            L4::Tcp { .. } => L4::Tcp {
                syn: true,
                ack: true,
                seq: 77,
            },
            L4::Udp => L4::Udp,
        },
        payload: b"reply".to_vec(),
        ..request.clone()
    };
    let before = fx.reason(Reason::RedirectReply);
    let (verdict, out) = fx.run(&reply.build(), None);
    assert_eq!(verdict, XDP_REDIRECT, "reply must be forwarded to the client");
    let want = Spec {
        src_mac: IF_MAC,
        dst_mac: CLIENT_MAC,
        src: request.dst,
        sport: request.dport,
        dst: request.src,
        dport: request.sport,
        ttl: reply.ttl - 1,
        ..reply
    }
    .build();
    assert_eq!(out, want, "reply rewritten to VIP -> client");
    verify_checksums(&out).expect("checksums valid after reverse NAT");
    assert_eq!(fx.reason(Reason::RedirectReply), before + 1);
}

fn client4(port: u16) -> (IpAddr, u16) {
    (CLIENT4.into(), port)
}
fn client6(port: u16) -> (IpAddr, u16) {
    (CLIENT6.into(), port)
}

#[test]
fn tcp_syn_to_vip_goes_to_the_backend_userspace_predicts() {
    with_fixture(|fx| {
        let mut seen = [0u32; 4];
        for port in 40000..40060 {
            let syn = Spec::tcp_syn(client4(port), (VIP4.into(), 80));
            seen[check_forward(fx, &syn, 0, 8080) as usize] += 1;
        }
        assert!(
            seen[1..].iter().all(|&n| n > 0),
            "60 flows should reach all 3 backends: {seen:?}"
        );
    });
}

#[test]
fn tcp_syn_leaves_by_xdp_tx_when_egress_is_the_ingress_interface() {
    with_fixture(|fx| {
        let syn = Spec::tcp_syn(client4(40000), (VIP4.into(), 80));
        let i = backend_of(fx.predict(1, &flow_key(&syn)), 0);
        let (verdict, out) = fx.run(&syn.build(), Some(fx.ifindex));
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out, expected_forward(&syn, i, 8080).build());
        assert_eq!(fx.reason(Reason::Tx), 1);
    });
}

#[test]
fn established_flow_stays_on_its_backend_after_the_table_changes() {
    with_fixture(|fx| {
        let syn = Spec::tcp_syn(client4(41000), (VIP4.into(), 80));
        let first = check_forward(fx, &syn, 0, 8080);
        // Flip the VIP to a pool that holds only another backend.
        let other = if first == 3 { 1 } else { 3 };
        let pool = Pool {
            table: 5,
            backends: vec![(other as u32, SocketAddr::new(backend4(other).into(), 8080), 1)],
        };
        fx.write_table(&pool);
        fx.set_vip(
            SocketAddr::new(VIP4.into(), 80),
            PROTO_TCP,
            VipInfo {
                vip_id: 0,
                table_current: 5,
                ..Default::default()
            },
        );
        let ack = Spec {
            l4: L4::Tcp {
                syn: false,
                ack: true,
                seq: 1001,
            },
            payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            ..syn.clone()
        };
        let (verdict, out) = fx.run(&ack.build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            expected_forward(&ack, first, 8080).build(),
            "established flow keeps backend {first}"
        );
        // while a new flow follows the new table
        let (_, out) = fx.run(&Spec::tcp_syn(client4(41001), (VIP4.into(), 80)).build(), None);
        assert_eq!(out[0..6], backend_mac(other), "new flow goes to the new pool");
    });
}

#[test]
fn drain_keeps_established_flows_and_down_rechooses_them() {
    with_fixture(|fx| {
        let syn = Spec::tcp_syn(client4(42000), (VIP4.into(), 80));
        let first = check_forward(fx, &syn, 0, 8080);
        let addr = SocketAddr::new(backend4(first).into(), 8080);
        let rest: Vec<_> = (1..=3u8)
            .filter(|&i| i != first)
            .map(|i| (i as u32, SocketAddr::new(backend4(i).into(), 8080), 1))
            .collect();
        fx.write_table(&Pool {
            table: 1,
            backends: rest,
        });
        fx.set_backend(first as u32, addr, 0, BACKEND_DRAIN);
        let ack = Spec {
            l4: L4::Tcp {
                syn: false,
                ack: true,
                seq: 1001,
            },
            ..syn.clone()
        };
        let (_, out) = fx.run(&ack.build(), None);
        assert_eq!(out[0..6], backend_mac(first), "drain keeps the established flow");
        fx.set_backend(first as u32, addr, 0, BACKEND_DOWN);
        let (verdict, out) = fx.run(&ack.build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        // Re-chosen on the table without it: exactly the backend userspace predicts.
        let next = backend_of(fx.predict(1, &flow_key(&ack)), 0);
        assert_ne!(next, first);
        assert_eq!(
            out,
            expected_forward(&ack, next, 8080).build(),
            "a down backend's flow is re-chosen"
        );
        verify_checksums(&out).unwrap();
    });
}

#[test]
fn tcp_reply_from_backend_is_rewritten_to_vip_and_client() {
    with_fixture(|fx| {
        let syn = Spec::tcp_syn(client4(43000), (VIP4.into(), 80));
        let i = check_forward(fx, &syn, 0, 8080);
        check_reply(fx, &syn, i, 8080);
    });
}

#[test]
fn udp_request_and_reply_are_translated() {
    with_fixture(|fx| {
        for port in [5000u16, 5001, 5002] {
            let req = Spec::udp(client4(port), (VIP4.into(), 53), b"query");
            let i = check_forward(fx, &req, 2, 5353);
            check_reply(fx, &req, i, 5353);
        }
    });
}

#[test]
fn ipv6_tcp_and_udp_are_translated_both_ways() {
    with_fixture(|fx| {
        for port in [44000u16, 44001, 44002] {
            let syn = Spec::tcp_syn(client6(port), (VIP6.into(), 80));
            let i = check_forward(fx, &syn, 1, 8080);
            check_reply(fx, &syn, i, 8080);
            let req = Spec::udp(client6(port), (VIP6.into(), 53), b"query6");
            let i = check_forward(fx, &req, 3, 5353);
            check_reply(fx, &req, i, 5353);
        }
    });
}

#[test]
fn vlan_tagged_packet_is_balanced_and_keeps_its_tag() {
    with_fixture(|fx| {
        let syn = Spec {
            vlan: Some(100),
            ..Spec::tcp_syn(client4(45000), (VIP4.into(), 80))
        };
        let i = check_forward(fx, &syn, 0, 8080);
        check_reply(fx, &syn, i, 8080);
    });
}

#[test]
fn ipv4_options_are_skipped_and_kept() {
    with_fixture(|fx| {
        // NOP, NOP, a router-alert option (4 bytes), then end of options
        let opts = vec![1, 1, 0x94, 0x04, 0, 0, 0, 0];
        let syn = Spec {
            ipv4_options: opts,
            ..Spec::tcp_syn(client4(46000), (VIP4.into(), 80))
        };
        let i = check_forward(fx, &syn, 0, 8080);
        check_reply(fx, &syn, i, 8080);
    });
}

#[test]
fn traffic_not_for_a_vip_passes_unchanged() {
    with_fixture(|fx| {
        let arp: Vec<u8> = [&[0xffu8; 6][..], &IF_MAC, &[0x08, 0x06], &[0u8; 28]].concat();
        let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
            ("arp", arp, Reason::PassNotIp),
            (
                "tcp to another host",
                Spec::tcp_syn(client4(1), (Ipv4Addr::new(10, 9, 0, 77).into(), 80)).build(),
                Reason::PassNotVip,
            ),
            (
                "tcp to the VIP address, other port",
                Spec::tcp_syn(client4(1), (VIP4.into(), 81)).build(),
                Reason::PassNotVip,
            ),
            (
                "udp to a tcp-only VIP port",
                Spec::udp(client4(1), (VIP4.into(), 80), b"x").build(),
                Reason::PassNotVip,
            ),
            (
                "tcp to the balancer itself (no NAT flow)",
                Spec::tcp_syn(client4(1), (SNAT4.into(), 22)).build(),
                Reason::PassNotVip,
            ),
            (
                "ipv6 udp to another host",
                Spec::udp(client6(1), ("fd09::77".parse::<IpAddr>().unwrap(), 53), b"x").build(),
                Reason::PassNotVip,
            ),
            (
                "ipv6 with a hop-by-hop header to the VIP (extension headers are not followed)",
                with_hop_by_hop(&Spec::tcp_syn(client6(1), (VIP6.into(), 80)).build()),
                Reason::PassNotVip,
            ),
        ];
        for (what, pkt, reason) in cases {
            let before = fx.reason(reason);
            let (verdict, out) = fx.run(&pkt, None);
            assert_eq!(verdict, XDP_PASS, "{what}");
            assert_eq!(out, pkt, "{what}: must pass untouched");
            assert_eq!(fx.reason(reason), before + 1, "{what}: counted as {}", reason.name());
        }
    });
}

/// An IPv6 frame with an 8-byte hop-by-hop options header (PadN) inserted before its L4.
fn with_hop_by_hop(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..14 + 40].to_vec();
    let next = out[14 + 6];
    out[14 + 6] = 0; // hop-by-hop
    let len = u16::from_be_bytes([out[14 + 4], out[14 + 5]]) + 8;
    out[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&frame[14 + 40..]);
    out
}

/// Every drop and pass reason the issue list names, each from its own case and asserted
/// by name (the ICMP, fragment and flood reasons have fixtures of their own above).
/// `drop_flow_insert` cannot happen any more: a bucket always offers a way or refuses the
/// flow as `drop_flood`.
#[test]
fn every_drop_and_pass_reason_has_a_case() {
    with_fixture(|fx| {
        let counted = |fx: &Fixture, r: Reason, before: u64, what: &str| {
            assert_eq!(fx.reason(r), before + 1, "{what}: counted as {}", r.name());
        };
        // drop_malformed: bad IPv4 version or IHL, bad IPv6 version, towards a VIP.
        let syn = Spec::tcp_syn(client4(47100), (VIP4.into(), 80)).build();
        let syn6 = Spec::tcp_syn(client6(47100), (VIP6.into(), 80)).build();
        for (what, byte, frame) in [
            ("ipv4 version 5", 0x55, &syn),
            ("ipv4 ihl 4", 0x44, &syn),
            ("ipv6 version 7", 0x70, &syn6),
        ] {
            let mut pkt = frame.clone();
            pkt[14] = byte;
            let before = fx.reason(Reason::DropMalformed);
            assert_eq!(fx.run(&pkt, None).0, XDP_DROP, "{what}");
            counted(fx, Reason::DropMalformed, before, what);
        }
        // tx / tx_reply: egress is the ingress interface.
        let s = Spec::tcp_syn(client4(47101), (VIP4.into(), 80));
        let before = fx.reason(Reason::Tx);
        assert_eq!(fx.run(&s.build(), Some(fx.ifindex)).0, XDP_TX);
        counted(fx, Reason::Tx, before, "tx");
        let i = backend_of(fx.flow(&flow_key(&s)).unwrap().backend_id, 0);
        let reply = Spec {
            src_mac: backend_mac(i),
            dst_mac: IF_MAC,
            src: backend4(i).into(),
            sport: 8080,
            dst: SNAT4.into(),
            dport: 47101,
            ..s.clone()
        };
        let before = fx.reason(Reason::TxReply);
        assert_eq!(fx.run(&reply.build(), Some(fx.ifindex)).0, XDP_TX);
        counted(fx, Reason::TxReply, before, "tx_reply");
        // An IPv4 UDP datagram without checksum (0) keeps none after the rewrite.
        let q = Spec::udp(client4(47102), (VIP4.into(), 53), b"query");
        let mut pkt = q.build();
        pkt[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        let (verdict, out) = fx.run(&pkt, None);
        assert_eq!(verdict, XDP_REDIRECT);
        let j = backend_of(fx.flow(&flow_key(&q)).unwrap().backend_id, 2);
        let mut want = expected_forward(&q, j, 5353).build();
        want[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(out, want, "UDP checksum 0 stays 0");
        // drop_no_nat_port: no SNAT address for the family.
        let cfg = lb_common::Config {
            snat_v4_be: 0,
            ring_size: M,
            snat_v6_be: addr_be(SNAT6.into()),
        };
        aya::maps::Array::<_, lb_common::Config>::try_from(fx.ebpf.map_mut(MAP_CONFIG).unwrap())
            .unwrap()
            .set(0, cfg, 0)
            .unwrap();
        let before = fx.reason(Reason::DropNoPort);
        assert_eq!(fx.run(&syn4(47103).build(), None).0, XDP_DROP);
        counted(fx, Reason::DropNoPort, before, "no SNAT address");
        fx.configure();
        // drop_no_tx_port: the egress interface is not in the devmap.
        let mut tx: aya::maps::DevMapHash<_> = fx.ebpf.map_mut(MAP_TX_PORTS).unwrap().try_into().unwrap();
        tx.remove(fx.ifindex).unwrap();
        let before = fx.reason(Reason::DropNoTxPort);
        assert_eq!(fx.run(&syn4(47104).build(), None).0, XDP_DROP);
        counted(fx, Reason::DropNoTxPort, before, "egress not in the devmap");
        fx.configure();
        // pass_no_neigh: the IPv4 UDP pool's backends have no neighbour entry (never used
        // yet, so no next hop is cached): the rewritten packet goes to the stack.
        for j in 1..=3u8 {
            let a = SocketAddr::new(Ipv4Addr::new(10, 9, 0, 90 + j).into(), 5353);
            fx.set_backend(2 * 3 + j as u32, a, 2, lb_common::BACKEND_READY);
        }
        let q = Spec::udp(client4(47105), (VIP4.into(), 53), b"query");
        let before = fx.reason(Reason::PassNoNeigh);
        let (verdict, out) = fx.run(&q.build(), None);
        assert_eq!(verdict, XDP_PASS);
        counted(fx, Reason::PassNoNeigh, before, "no neighbour");
        verify_checksums(&out).expect("rewritten before it is passed");
        assert_eq!(&out[14 + 16..14 + 19], &[10, 9, 0], "to a backend address");
        assert_eq!(out[14 + 19] / 10, 9, "one of the moved backends");
        // drop_fib: forwarding off (IPv6 pool, no next hop cached yet).
        run_cmd(&[
            "ip",
            "netns",
            "exec",
            &fx.ns.name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.forwarding=0",
        ]);
        let before = fx.reason(Reason::DropFib);
        assert_eq!(
            fx.run(&Spec::tcp_syn(client6(47106), (VIP6.into(), 80)).build(), None)
                .0,
            XDP_DROP
        );
        counted(fx, Reason::DropFib, before, "forwarding off");
        // Every reason has a case somewhere in this file.
        let src = include_str!("fixtures.rs");
        for r in Reason::ALL {
            let name = format!("Reason::{r:?}");
            assert!(
                r == Reason::DropFlowInsert || src.contains(&name),
                "no fixture asserts {name}"
            );
        }
    });
}

#[test]
fn truncated_headers_are_counted_and_never_forwarded() {
    with_fixture(|fx| {
        let syn4 = Spec::tcp_syn(client4(47000), (VIP4.into(), 80)).build();
        let syn6 = Spec::tcp_syn(client6(47000), (VIP6.into(), 80)).build();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // (frames shorter than an Ethernet header never reach XDP: the kernel refuses them)
            ("vlan tag cut", [&syn4[..12], &[0x81, 0x00, 0x00]].concat()),
            ("ipv4 header cut", syn4[..14 + 12].to_vec()),
            ("tcp ports cut", syn4[..14 + 20 + 2].to_vec()),
            ("ipv6 header cut", syn6[..14 + 30].to_vec()),
            ("ipv6 tcp ports cut", syn6[..14 + 40 + 3].to_vec()),
        ];
        for (what, pkt) in cases {
            let before = fx.reason(Reason::DropTruncated);
            let (verdict, _) = fx.run(&pkt, None);
            assert_eq!(verdict, XDP_DROP, "{what}");
            assert_eq!(fx.reason(Reason::DropTruncated), before + 1, "{what}");
        }
        assert_eq!(fx.reason(Reason::Redirect) + fx.reason(Reason::Tx), 0);
    });
}

/// Fragments of one datagram are translated alike in both directions: the first (which
/// carries the ports) as its flow is, and the later ones (no ports) by the first one's
/// entry (addresses, IP id). A later fragment whose first was not seen passes when it is
/// for the SNAT address (the host's own traffic may use it) and is dropped and counted
/// when it is for a VIP.
#[test]
fn fragments_of_a_datagram_are_translated_alike_both_ways() {
    with_fixture(|fx| {
        let port = 48000;
        let data = [9u8; 24];
        // Client -> VIP: a new flow whose first packet is a first fragment.
        let first = Spec {
            more_fragments: true,
            ip_id: 4242,
            ..Spec::udp(client4(port), (VIP4.into(), 53), &[7; 64])
        };
        let i = check_forward(fx, &first, 2, 5353);
        let later = Spec {
            more_fragments: false,
            fragment_offset: 9,
            ..first.clone()
        };
        let (verdict, out) = fx.run(&later.later_fragment(&data), None);
        assert_eq!(verdict, XDP_REDIRECT, "later fragment follows its first");
        let want = expected_forward(&later, i, 5353).later_fragment(&data);
        assert_eq!(out, want, "later fragment: same backend, same addresses");
        verify_ipv4_header(&out);
        // Backend -> SNAT: a 3-fragment reply (as a large EDNS answer would be).
        let reply = Spec {
            src_mac: backend_mac(i),
            dst_mac: IF_MAC,
            src: backend4(i).into(),
            sport: 5353,
            dst: SNAT4.into(),
            dport: port,
            more_fragments: true,
            ip_id: 777,
            ..Spec::udp(client4(port), (VIP4.into(), 53), &[5; 40])
        };
        let to_client = |s: &Spec| Spec {
            src_mac: IF_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP4.into(),
            sport: 53,
            dst: CLIENT4.into(),
            dport: port,
            ttl: s.ttl - 1,
            ..s.clone()
        };
        let (verdict, out) = fx.run(&reply.build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_client(&reply).build(), "first reply fragment");
        let before = fx.reason(Reason::Fragment);
        for (offset, more) in [(6u16, true), (9, false)] {
            let frag = Spec {
                fragment_offset: offset,
                more_fragments: more,
                ..reply.clone()
            };
            let (verdict, out) = fx.run(&frag.later_fragment(&data), None);
            assert_eq!(verdict, XDP_REDIRECT, "reply fragment at {offset}");
            assert_eq!(
                out,
                to_client(&frag).later_fragment(&data),
                "reply fragment at {offset}"
            );
            verify_ipv4_header(&out);
        }
        assert_eq!(fx.reason(Reason::Fragment), before + 2);
        // Unknown datagrams: to the SNAT address pass, to a VIP are dropped and counted.
        let stray = Spec {
            ip_id: 778,
            fragment_offset: 6,
            ..reply.clone()
        };
        let pkt = stray.later_fragment(&data);
        assert_eq!(fx.run(&pkt, None), (XDP_PASS, pkt.clone()));
        let stray = Spec {
            ip_id: 4243,
            ..later.clone()
        };
        let (verdict, _) = fx.run(&stray.later_fragment(&data), None);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(fx.reason(Reason::DropFragment), 1);
    });
}

/// The IPv4 header checksum of a frame (no L4 header to check in a later fragment).
fn verify_ipv4_header(frame: &[u8]) {
    let ip = &frame[14..34];
    assert_eq!(lb_common::csum::checksum(&[ip]), 0, "IPv4 header checksum");
}

#[test]
fn vip_with_an_empty_pool_drops_and_counts() {
    with_fixture(|fx| {
        let syn = Spec::tcp_syn(client4(49000), (EMPTY_VIP4.into(), 80)).build();
        let (verdict, _) = fx.run(&syn, None);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(fx.reason(Reason::DropNoBackend), 1);
    });
}

#[test]
fn every_map_name_in_lb_common_exists_in_the_object() {
    with_fixture(|fx| {
        for name in [
            MAP_VIPS,
            MAP_VIP_FILTER,
            MAP_BACKENDS,
            MAP_TABLES,
            MAP_FLOWS,
            lb_common::MAP_FLOW_HEADS,
            MAP_NAT_REV,
            lb_common::MAP_REV_HEADS,
            MAP_CONFIG,
            MAP_REASONS,
            MAP_TX_PORTS,
            lb_common::MAP_VIP_STATS,
            lb_common::MAP_BACKEND_STATS,
            lb_common::MAP_FLOOD_GUARD,
            lb_common::MAP_BACKEND_LOAD,
            lb_common::MAP_RR_CURSORS,
        ] {
            assert!(fx.ebpf.map(name).is_some(), "map {name} missing from the object");
        }
    });
}

/// The bench harness lives in an object of its own: the balancer's object (the one the agent
/// loads and the package ships) has no bench program or map, and the bench's has them all.
#[test]
fn bench_code_is_only_in_the_bench_object() {
    with_fixture(|fx| {
        let bench = aya::Ebpf::load(veer::dataplane::BENCH_OBJECT).expect("load the bench object");
        for name in [lb_common::PROG_BENCH_HARNESS, lb_common::PROG_BENCH_FLOOR] {
            assert!(fx.ebpf.program(name).is_none(), "balancer object has program {name}");
            assert!(bench.program(name).is_some(), "bench object lacks program {name}");
        }
        for name in [
            lb_common::MAP_BENCH_PACKET,
            lb_common::MAP_BENCH_PROGS,
            lb_common::MAP_BENCH_KEYS,
        ] {
            assert!(fx.ebpf.map(name).is_none(), "balancer object has map {name}");
            assert!(bench.map(name).is_some(), "bench object lacks map {name}");
        }
        assert!(bench.map(MAP_FLOWS).is_none(), "bench object carries balancer maps");
    });
}

/// The verifier walks every path of the balancer up to a million instructions: keep room
/// for the next change (a program near the limit fails to load after a harmless edit).
#[test]
fn the_programs_leave_room_in_the_verifier_budget() {
    with_fixture(|fx| {
        for name in [lb_common::PROG_BALANCER, lb_common::PROG_ICMP] {
            let prog: &aya::programs::Xdp = fx.ebpf.program(name).unwrap().try_into().unwrap();
            let n = prog.info().unwrap().verified_instruction_count().unwrap_or(0);
            let info = prog.info().unwrap();
            println!(
                "{name}: {n} instructions verified, {} bytes translated",
                info.size_translated().unwrap_or(0)
            );
            assert!(n < 750_000, "{name}: {n} of 1,000,000 verified instructions");
        }
    });
}

#[test]
fn backend_counters_track_new_answered_closed_and_reset_flows() {
    with_fixture(|fx| {
        let syn = Spec::tcp_syn(client4(50000), (VIP4.into(), 80));
        let i = check_forward(fx, &syn, 0, 8080);
        let id = i as u32; // pool of VIP 0 holds ids 1..=3
        let c = fx.backend_counters(id);
        assert_eq!((c.new_flows, c.opened_not_closed(), c.answered_flows), (1, 1, 0));
        check_reply(fx, &syn, i, 8080);
        check_reply(fx, &syn, i, 8080);
        let c = fx.backend_counters(id);
        assert_eq!(
            (c.answered_flows, c.reply_packets),
            (1, 2),
            "answered counts flows, not packets"
        );
        let fin = Spec {
            l4: L4::Tcp {
                syn: false,
                ack: true,
                seq: 1001,
            },
            ..syn.clone()
        }
        .build();
        let mut fin = fin;
        fin[14 + 20 + 13] |= 0x01; // FIN (checksum is not checked by the balancer)
        fx.run(&fin, None);
        fx.run(&fin, None);
        let c = fx.backend_counters(id);
        assert_eq!((c.closed_flows, c.opened_not_closed()), (1, 0), "a flow closes once");
        let closed = |fx: &Fixture, s: &Spec| fx.flow(&flow_key(s)).expect("flow in the table").flags & FLOW_F_CLOSED;
        assert_ne!(closed(fx, &syn), 0, "the client's FIN marks the flow closed");
        // A second flow that the backend answers, then resets: a passive health signal.
        let syn2 = Spec::tcp_syn(client4(50001), (VIP4.into(), 80));
        let j = check_forward(fx, &syn2, 0, 8080);
        check_reply(fx, &syn2, j, 8080);
        let rst_from = |j: u8, port: u16, syn: &Spec| {
            let mut rst = Spec {
                src_mac: backend_mac(j),
                dst_mac: IF_MAC,
                src: backend4(j).into(),
                sport: 8080,
                dst: SNAT4.into(),
                dport: port,
                l4: L4::Tcp {
                    syn: false,
                    ack: true,
                    seq: 1,
                },
                ..syn.clone()
            }
            .build();
            rst[14 + 20 + 13] |= 0x04;
            rst
        };
        assert_eq!(closed(fx, &syn2), 0);
        let resets = fx.backend_counters(j as u32).backend_resets;
        let (verdict, _) = fx.run(&rst_from(j, 50001, &syn2), None);
        assert_eq!(verdict, XDP_REDIRECT, "the reset still reaches the client");
        assert_ne!(closed(fx, &syn2), 0, "the backend's RST marks the client flow closed");
        let c = fx.backend_counters(j as u32);
        assert_eq!(c.backend_resets, resets + 1, "a reset of an answered flow counts");
        let v = fx.vip_counters(0);
        assert_eq!((v.new_flows, v.closed_flows, v.opened_not_closed()), (2, 2, 0));
        // A third flow opened by a bare ACK (any client can send one, spoofed too) that the
        // backend resets at once: no answer, so no health signal.
        let ack3 = ack4(50002);
        let (verdict, out) = fx.run(&ack3.build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        let k = backend_of(fx.predict(1, &flow_key(&ack3)), 0);
        assert_eq!(out[0..6], backend_mac(k));
        let before = fx.backend_counters(k as u32);
        let (verdict, _) = fx.run(&rst_from(k, 50002, &ack3), None);
        assert_eq!(verdict, XDP_REDIRECT, "the reset still reaches the client");
        let after = fx.backend_counters(k as u32);
        assert_eq!(
            after.backend_resets, before.backend_resets,
            "a reset as the first answer is not counted"
        );
        assert_eq!(after.answered_flows, before.answered_flows, "a reset is no answer");
        // A fourth flow whose SYN the backend resets (its server stopped): counted.
        let syn_reset = syn4(50003);
        let m = check_forward(fx, &syn_reset, 0, 8080);
        let before = fx.backend_counters(m as u32);
        assert_eq!(fx.run(&rst_from(m, 50003, &syn_reset), None).0, XDP_REDIRECT);
        let after = fx.backend_counters(m as u32);
        assert_eq!(after.backend_resets, before.backend_resets + 1, "a reset SYN counts");
        assert_eq!(fx.vip_counters(0).new_flows, 4);
    });
}

#[test]
fn ab_network_rule_sends_matching_clients_to_the_next_pool() {
    use aya::maps::lpm_trie::{Key, LpmTrie};
    with_fixture(|fx| {
        let variant = Pool {
            table: 5,
            backends: vec![(3, SocketAddr::new(backend4(3).into(), 8080), 1)],
        };
        fx.write_table(&variant);
        let flags = lb_common::VIP_F_AB_RULES;
        fx.set_vip(
            SocketAddr::new(VIP4.into(), 80),
            PROTO_TCP,
            VipInfo {
                vip_id: 0,
                table_current: 1,
                table_next: 5,
                flags,
                ..Default::default()
            },
        );
        {
            let mut rules: LpmTrie<_, lb_common::AbKey, u32> =
                fx.ebpf.map_mut(lb_common::MAP_AB_RULES).unwrap().try_into().unwrap();
            let net = lb_common::AbKey {
                vip_id_be: 0u32.to_be(),
                addr_be: [u32::from_ne_bytes([10, 9, 0, 0]), 0, 0, 0],
            };
            rules.insert(&Key::new(32 + 24, net), 1, 0).unwrap();
        }
        for port in 51000..51020 {
            let (_, out) = fx.run(&Spec::tcp_syn(client4(port), (VIP4.into(), 80)).build(), None);
            assert_eq!(
                out[0..6],
                backend_mac(3),
                "client inside 10.9.0.0/24 goes to the variant pool"
            );
        }
        let mut outside = [0u32; 4];
        for port in 51000..51030 {
            let spec = Spec::tcp_syn((Ipv4Addr::new(10, 8, 0, 5).into(), port), (VIP4.into(), 80));
            let want = backend_of(fx.predict(1, &flow_key(&spec)), 0);
            let (_, out) = fx.run(&spec.build(), None);
            assert_eq!(
                out[0..6],
                backend_mac(want),
                "client outside the network follows the current pool"
            );
            outside[want as usize] += 1;
        }
        assert!(
            outside[1] + outside[2] > 0,
            "outside clients reach the current pool's other backends"
        );
    });
}

#[test]
fn a_syn_reusing_a_closed_flows_tuple_is_scheduled_afresh() {
    with_fixture(|fx| {
        let syn = Spec::tcp_syn(client4(52000), (VIP4.into(), 80));
        let first = check_forward(fx, &syn, 0, 8080);
        let mut fin = Spec {
            l4: L4::Tcp {
                syn: false,
                ack: true,
                seq: 1001,
            },
            ..syn.clone()
        }
        .build();
        fin[14 + 20 + 13] |= 0x01;
        fx.run(&fin, None);
        // the pool now holds only another backend: a reused tuple must follow it
        let other = if first == 3 { 1 } else { 3 };
        fx.write_table(&Pool {
            table: 5,
            backends: vec![(other as u32, SocketAddr::new(backend4(other).into(), 8080), 1)],
        });
        fx.set_vip(
            SocketAddr::new(VIP4.into(), 80),
            PROTO_TCP,
            VipInfo {
                vip_id: 0,
                table_current: 5,
                ..Default::default()
            },
        );
        let (_, out) = fx.run(&syn.build(), None);
        assert_eq!(
            out[0..6],
            backend_mac(other),
            "new connection on a closed flow's tuple is re-chosen"
        );
        // while a retransmitted SYN of a live flow keeps its backend
        let syn2 = Spec::tcp_syn(client4(52001), (VIP4.into(), 80));
        let (_, out1) = fx.run(&syn2.build(), None);
        fx.write_table(&Pool {
            table: 6,
            backends: vec![(first as u32, SocketAddr::new(backend4(first).into(), 8080), 1)],
        });
        fx.set_vip(
            SocketAddr::new(VIP4.into(), 80),
            PROTO_TCP,
            VipInfo {
                vip_id: 0,
                table_current: 6,
                ..Default::default()
            },
        );
        let (_, out2) = fx.run(&syn2.build(), None);
        assert_eq!(out1[0..6], out2[0..6], "a retransmitted SYN stays with its flow");
    });
}

/// A client's SYN from `port` to the IPv4 VIP, and a later segment of that flow.
fn syn4(port: u16) -> Spec {
    Spec::tcp_syn(client4(port), (VIP4.into(), 80))
}

fn ack4(port: u16) -> Spec {
    Spec {
        l4: L4::Tcp {
            syn: false,
            ack: true,
            seq: 1001,
        },
        ..syn4(port)
    }
}

/// The connection table is set-associative: with room for one bucket of flows, one more
/// new flow replaces the least recently used one (both directions: its connection entry and
/// its reverse entry), and every flow used since stays put, replies included.
#[test]
fn a_full_bucket_gives_way_to_its_least_recently_used_flow() {
    const WAYS: u16 = lb_common::conntrack::WAYS as u16;
    with_fixture_sized(WAYS as u32, |fx| {
        let (syn, ack) = (syn4, ack4);
        let first = 41001;
        let ports: Vec<u16> = (first..first + WAYS).collect();
        let mut backend = std::collections::HashMap::new();
        for &port in &ports {
            backend.insert(port, check_forward(fx, &syn(port), 0, 8080));
        }
        // The stamps count coarse-clock milliseconds: let time pass, then use every flow but
        // the second (neither the first nor the last inserted: the choice must follow use),
        // a request and its answer.
        let idle = first + 1;
        std::thread::sleep(std::time::Duration::from_millis(30));
        for &port in ports.iter().filter(|p| **p != idle) {
            let (verdict, _) = fx.run(&ack(port).build(), None);
            assert_eq!(verdict, XDP_REDIRECT);
            check_reply(fx, &syn(port), backend[&port], 8080);
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        let new_before = fx.vip_counters(0).new_flows;
        let newest = first + WAYS;
        backend.insert(newest, check_forward(fx, &syn(newest), 0, 8080));
        assert_eq!(fx.vip_counters(0).new_flows, new_before + 1);
        assert!(
            !fx.has_flow(&flow_key(&syn(idle))),
            "the least recently used flow gave way"
        );
        let kept: Vec<u16> = ports.iter().copied().filter(|p| *p != idle).chain([newest]).collect();
        for &port in &kept {
            assert!(fx.has_flow(&flow_key(&syn(port))), "flow from port {port} kept");
        }
        // Kept flows are established both ways: their packets open no new flow, and their
        // backends' answers still reach their clients.
        for &port in &kept {
            fx.run(&ack(port).build(), None);
            check_reply(fx, &syn(port), backend[&port], 8080);
        }
        assert_eq!(fx.vip_counters(0).new_flows, new_before + 1);
    });
}

/// Reverse entries age with answers, connection entries with requests, in different
/// buckets: an idle flow can keep its connection entry and lose its reverse entry. Its next
/// request after a second of quiet puts the reverse entry back, so the answer still reaches
/// the client.
#[test]
fn an_idle_flow_whose_reverse_entry_gave_way_gets_it_back_on_its_next_request() {
    const WAYS: u16 = lb_common::conntrack::WAYS as u16;
    with_fixture_sized(WAYS as u32, |fx| {
        let (syn, ack) = (syn4, ack4);
        let first = 42001;
        let mut backend = std::collections::HashMap::new();
        for port in first..first + WAYS {
            backend.insert(port, check_forward(fx, &syn(port), 0, 8080));
        }
        // The others are used both ways; the first flow only by its client, and last, so
        // its connection entry is the newest and its reverse entry the oldest.
        std::thread::sleep(std::time::Duration::from_millis(30));
        for port in first + 1..first + WAYS {
            fx.run(&ack(port).build(), None);
            check_reply(fx, &syn(port), backend[&port], 8080);
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        fx.run(&ack(first).build(), None);
        std::thread::sleep(std::time::Duration::from_millis(30));
        check_forward(fx, &syn(first + WAYS), 0, 8080);
        assert!(
            fx.has_flow(&flow_key(&syn(first))),
            "the first flow kept its connection entry"
        );
        let rev = reply_key(&syn(first), backend[&first], first);
        assert!(!fx.has_reverse(&rev), "the first flow's reverse entry gave way");
        // After a second of quiet, its next request is still established (same backend,
        // no new flow) and puts the reverse entry back: the answer reaches the client.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        let new_before = fx.vip_counters(0).new_flows;
        let (verdict, out) = fx.run(&ack(first).build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out[0..6], backend_mac(backend[&first]), "same backend as before");
        assert_eq!(fx.vip_counters(0).new_flows, new_before, "still the same flow");
        assert!(fx.has_reverse(&rev), "the reverse entry is back");
        check_reply(fx, &syn(first), backend[&first], 8080);
    });
}

/// Two clients using the same source port towards the same backend cannot both keep it
/// (the backend would see one 5-tuple): the second gets another NAT port, and each reply
/// finds its own client.
#[test]
fn clients_sharing_a_source_port_get_distinct_nat_ports_and_their_own_replies() {
    with_fixture(|fx| {
        // A port at which both clients' flows land on the same backend.
        let (port, i) = (30000..31000u16)
            .find_map(|p| {
                let a = fx.predict(1, &flow_key(&Spec::tcp_syn(client4(p), (VIP4.into(), 80))));
                let b = fx.predict(1, &flow_key(&Spec::tcp_syn((CLIENT4_B.into(), p), (VIP4.into(), 80))));
                (a == b).then(|| (p, backend_of(a, 0)))
            })
            .expect("some port maps both clients to one backend");
        let syn_a = Spec::tcp_syn(client4(port), (VIP4.into(), 80));
        let syn_b = Spec::tcp_syn((CLIENT4_B.into(), port), (VIP4.into(), 80));
        assert_eq!(check_forward(fx, &syn_a, 0, 8080), i, "first client keeps its port");
        let (verdict, out) = fx.run(&syn_b.build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        verify_checksums(&out).expect("checksums valid after rewrite");
        let nat_port = u16::from_be_bytes([out[14 + 20], out[14 + 21]]);
        assert_ne!(nat_port, port, "second client must not reuse the taken NAT port");
        assert!(nat_port >= 1024);
        let want = Spec {
            sport: nat_port,
            ..expected_forward(&syn_b, i, 8080)
        };
        assert_eq!(out, want.build(), "second client's SYN rewritten to the other NAT port");
        // Replies: the original port goes to client A, the new one to client B.
        check_reply(fx, &syn_a, i, 8080);
        let reply_b = Spec {
            src_mac: backend_mac(i),
            dst_mac: IF_MAC,
            src: backend4(i).into(),
            sport: 8080,
            dst: SNAT4.into(),
            dport: nat_port,
            l4: L4::Tcp {
                syn: true,
                ack: true,
                seq: 77,
            },
            payload: b"reply".to_vec(),
            ..syn_b.clone()
        };
        let (verdict, out) = fx.run(&reply_b.build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        let want = Spec {
            src_mac: IF_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP4.into(),
            sport: 80,
            dst: CLIENT4_B.into(),
            dport: port,
            ttl: reply_b.ttl - 1,
            ..reply_b
        };
        assert_eq!(
            out,
            want.build(),
            "reply to the second NAT port reaches the second client"
        );
        verify_checksums(&out).expect("checksums valid after reverse NAT");
    });
}

/// A connection of the host itself (a health probe, an operator's ssh) from the SNAT
/// address to a backend can pick a port that a NAT flow left in the reverse table. Its
/// answers belong to the host: the data path asks the kernel for a connected socket on
/// the 5-tuple (at SYN-ACK or RST), drops the reverse entry and passes them to the stack.
#[test]
fn a_local_connection_claims_its_5_tuple_from_a_stale_nat_entry() {
    with_fixture(|fx| {
        let port = 47000;
        let syn = Spec::tcp_syn(client4(port), (VIP4.into(), 80));
        let i = check_forward(fx, &syn, 0, 8080);
        // The host connects from SNAT4:port to the same backend (SYN_SENT is enough).
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_nonblocking(true).unwrap();
        sock.bind(&SocketAddr::new(SNAT4.into(), port).into()).unwrap();
        let _ = sock.connect(&SocketAddr::new(backend4(i).into(), 8080).into());
        let from_backend = |syn_flag: bool| Spec {
            src_mac: backend_mac(i),
            dst_mac: IF_MAC,
            src: backend4(i).into(),
            sport: 8080,
            dst: SNAT4.into(),
            dport: port,
            l4: L4::Tcp {
                syn: syn_flag,
                ack: true,
                seq: 9,
            },
            ..syn.clone()
        };
        let passed = fx.reason(Reason::PassNotVip);
        for (what, pkt) in [("SYN-ACK", from_backend(true)), ("ACK", from_backend(false))] {
            let pkt = pkt.build();
            let (verdict, out) = fx.run(&pkt, None);
            assert_eq!(
                verdict, XDP_PASS,
                "{what} for the host's own connection goes to its stack"
            );
            assert_eq!(out, pkt, "{what} passed unchanged");
        }
        assert_eq!(fx.reason(Reason::PassNotVip), passed + 2);
        drop(sock);
    });
}

/// A client flow answered by its backend and acknowledged by the client (a completed
/// handshake): confirmed. Returns the backend (1..=3).
fn establish(fx: &Fixture, port: u16) -> u8 {
    let i = check_forward(fx, &syn4(port), 0, 8080);
    check_reply(fx, &syn4(port), i, 8080);
    let (verdict, out) = fx.run(&ack4(port).build(), None);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(out[0..6], backend_mac(i), "the ACK follows its SYN");
    i
}

/// The client's next segment on `port` reaches backend `i` with the client's own port,
/// and the backend's answer reaches the client.
fn check_both_ways(fx: &Fixture, port: u16, i: u8) {
    let (verdict, out) = fx.run(&ack4(port).build(), None);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        out,
        expected_forward(&ack4(port), i, 8080).build(),
        "flow {port} on backend {i} with its own port"
    );
    check_reply(fx, &syn4(port), i, 8080);
}

/// The reply 5-tuple of client flow `spec` on backend `i` with NAT port `nat_port`.
fn reply_key(spec: &Spec, i: u8, nat_port: u16) -> lb_common::FlowKey {
    let reply = Spec {
        src: backend4(i).into(),
        sport: 8080,
        dst: SNAT4.into(),
        dport: nat_port,
        ..spec.clone()
    };
    flow_key(&reply)
}

/// A SYN from a spoofed source (10.200.0.0/16, which nothing routes back to).
fn spoofed_syn(n: u32) -> Spec {
    let src = Ipv4Addr::new(10, 200, (n >> 8) as u8, n as u8);
    Spec::tcp_syn((src.into(), 1024 + (n % 60000) as u16), (VIP4.into(), 80))
}

/// A SYN flood over the new-flow budget meets a bucket of confirmed flows: it takes no way
/// from them (every SYN dropped and counted as `drop_flood`), and each confirmed flow keeps
/// both its entries, requests and answers. Once one of them closes, the flood churns only
/// that way.
#[test]
fn a_syn_flood_over_the_budget_never_evicts_a_confirmed_flow() {
    const WAYS: u16 = lb_common::conntrack::WAYS as u16;
    with_fixture_budget(WAYS as u32, 0, |fx| {
        let first = 43001;
        let ports: Vec<u16> = (first..first + WAYS).collect();
        let backend: Vec<u8> = ports.iter().map(|&p| establish(fx, p)).collect();
        let g0 = fx.guard();
        let floods = 200;
        for n in 0..floods {
            let (verdict, _) = fx.run(&spoofed_syn(n).build(), None);
            assert_eq!(verdict, XDP_DROP, "flood SYN {n} takes no confirmed flow's way");
        }
        let g = fx.guard();
        assert_eq!(g.taken[3] - g0.taken[3], floods as u64, "refused, counted");
        assert_eq!(g.over_budget - g0.over_budget, floods as u64);
        assert_eq!(fx.reason(Reason::DropFlood), floods as u64);
        for (&port, &i) in ports.iter().zip(&backend) {
            assert!(fx.has_flow(&flow_key(&syn4(port))), "flow {port} kept its entry");
            check_both_ways(fx, port, i);
        }
        // The first flow closes (FIN both ways): its ways are open to the flood, the
        // others' not.
        let mut fin = ack4(first).build();
        fin[14 + 20 + 13] |= 0x01;
        assert_eq!(fx.run(&fin, None).0, XDP_REDIRECT);
        let i = backend[0];
        let mut fin = Spec {
            src_mac: backend_mac(i),
            dst_mac: IF_MAC,
            src: backend4(i).into(),
            sport: 8080,
            dst: SNAT4.into(),
            dport: first,
            ..ack4(first)
        }
        .build();
        fin[14 + 20 + 13] |= 0x01;
        assert_eq!(fx.run(&fin, None).0, XDP_REDIRECT);
        let g0 = fx.guard();
        for n in floods..2 * floods {
            let (verdict, _) = fx.run(&spoofed_syn(n).build(), None);
            assert_eq!(verdict, XDP_REDIRECT, "flood SYN {n} takes the closed flow's way");
        }
        let g = fx.guard();
        assert_eq!(
            g.taken[1] - g0.taken[1],
            floods as u64,
            "each evicted an unconfirmed entry"
        );
        assert_eq!(g.taken[3], g0.taken[3], "none refused");
        assert!(!fx.has_flow(&flow_key(&syn4(first))));
        for &port in &ports[1..] {
            assert!(
                fx.has_flow(&flow_key(&syn4(port))),
                "confirmed flow {port} kept its entry"
            );
        }
    });
}

/// Within the new-flow budget, a connection-table bucket of confirmed flows gives way to a
/// new flow as before (least recently used first), and the guard counts that eviction.
/// (The reverse entry of the flow that gave way stays: see the next test.)
#[test]
fn within_the_budget_a_full_bucket_of_confirmed_flows_gives_way_to_its_oldest() {
    with_fixture_budget(8, 1_000_000, |fx| {
        let bucket0 = |p: &u16| lb_common::conntrack::slot(&flow_key(&syn4(*p)), 1).index == 0;
        let ports: Vec<u16> = (44001..50000).filter(bucket0).take(5).collect();
        for &port in &ports[..4] {
            establish(fx, port);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let g0 = fx.guard();
        assert_eq!(g0.taken[0], 4, "the first flows found free ways");
        let (verdict, _) = fx.run(&syn4(ports[4]).build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        let g = fx.guard();
        assert_eq!((g.taken[2], g.over_budget), (g0.taken[2] + 1, 0));
        assert!(
            !fx.has_flow(&flow_key(&syn4(ports[0]))),
            "the oldest confirmed flow gave way"
        );
    });
}

/// Client A's flow is live (confirmed) but lost its connection entry to a newer flow; its
/// reverse entry still holds (backend, SNAT address, port). Client B then comes from the
/// same port to the same backend: B must get another NAT port, A's next packet finds its
/// own port again, and each answer reaches its own client.
#[test]
fn a_live_flows_nat_port_is_never_handed_to_a_second_client() {
    with_fixture_budget(8, 1_000_000, |fx| {
        let flows_bucket = |spec: &Spec| lb_common::conntrack::slot(&flow_key(spec), 1).index;
        let b_syn = |p: u16| Spec::tcp_syn((CLIENT4_B.into(), p), (VIP4.into(), 80));
        // A: a port where both clients land on one backend, in FLOWS bucket 0.
        let a = (20000..30000u16)
            .find(|&p| {
                fx.predict(1, &flow_key(&syn4(p))) == fx.predict(1, &flow_key(&b_syn(p))) && flows_bucket(&syn4(p)) == 0
            })
            .expect("a shared port");
        // Three more confirmed flows in the same bucket, and a fifth flow that evicts A.
        let others: Vec<u16> = (a + 1..40000)
            .filter(|&p| flows_bucket(&syn4(p)) == 0)
            .take(4)
            .collect();
        let i = establish(fx, a);
        for &p in &others[..3] {
            std::thread::sleep(std::time::Duration::from_millis(5));
            establish(fx, p);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        let fifth = others[3];
        let (verdict, _) = fx.run(&syn4(fifth).build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        assert!(!fx.has_flow(&flow_key(&syn4(a))), "A lost its connection entry");
        assert!(
            fx.has_reverse(&reply_key(&syn4(a), i, a)),
            "A's reverse entry holds its port"
        );
        // B, same port, same backend.
        let (verdict, out) = fx.run(&b_syn(a).build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out[0..6], backend_mac(i), "B on A's backend");
        let nat_port = u16::from_be_bytes([out[14 + 20], out[14 + 21]]);
        assert_ne!(nat_port, a, "B must not get live flow A's NAT port");
        assert_eq!(
            out,
            Spec {
                sport: nat_port,
                ..expected_forward(&b_syn(a), i, 8080)
            }
            .build()
        );
        // A's next packet: its own port again (the backend sees one connection), and A's
        // answers reach A.
        check_both_ways(fx, a, i);
    });
}

/// A backend id that is given to a backend of another VIP and family (the old backend was
/// deleted) does not carry the old flows with it: a flow whose backend is no longer of its
/// VIP and family is scheduled afresh on its own VIP's pool.
#[test]
fn a_flow_does_not_follow_its_backend_id_to_another_vip_or_family() {
    with_fixture(|fx| {
        let req = Spec::udp(client4(5300), (VIP4.into(), 53), b"q");
        let i = check_forward(fx, &req, 2, 5353);
        let old_id = 2 * 3 + i as u32;
        // The agent removes the backend from VIP 2's pool, then reuses its id for an IPv6
        // backend of VIP 1.
        let remaining: Vec<(u32, SocketAddr, u32)> = (1..=3u8)
            .filter(|&j| j != i)
            .map(|j| (2 * 3 + j as u32, SocketAddr::new(backend4(j).into(), 5353), 1))
            .collect();
        fx.write_table(&Pool {
            table: 3,
            backends: remaining,
        });
        fx.set_backend(
            old_id,
            SocketAddr::new(backend6(i).into(), 8080),
            1,
            lb_common::BACKEND_READY,
        );
        let (verdict, out) = fx.run(&req.build(), None);
        assert_eq!(verdict, XDP_REDIRECT);
        let j = backend_of(fx.predict(3, &flow_key(&req)), 2);
        assert_ne!(j, i);
        assert_eq!(
            out,
            expected_forward(&req, j, 5353).build(),
            "re-chosen on its own VIP, IPv4"
        );
        verify_checksums(&out).expect("checksums");
        assert_eq!(fx.flow(&flow_key(&req)).expect("flow").backend_id, 2 * 3 + j as u32);
    });
}

/// A router's address on either side (its errors come from it).
fn router(v6: bool) -> IpAddr {
    if v6 {
        "fd09::200".parse().unwrap()
    } else {
        Ipv4Addr::new(10, 9, 0, 200).into()
    }
}

/// ICMP errors about a NAT flow are translated both ways, in both families, for every
/// translated kind: one to the SNAT address quoting SNAT -> backend (a router on the
/// backend's side, or the backend's port unreachable) reaches the client as VIP -> client
/// quoting client -> VIP; one to the VIP quoting VIP -> client (a router on the client's
/// side) reaches the backend as SNAT -> backend quoting backend -> SNAT. Whole frames are
/// compared with ones built independently, so every checksum (outer, quoted IP, quoted
/// L4, ICMP) is checked.
#[test]
fn icmp_errors_about_a_nat_flow_are_translated_both_ways() {
    use veer_tests::packet::{IcmpError, icmp_error};
    with_fixture(|fx| {
        let kinds = [
            IcmpError::TooBig(1400),
            IcmpError::TimeExceeded,
            IcmpError::PortUnreachable,
        ];
        let mut port = 45000;
        for v6 in [false, true] {
            for kind in kinds {
                port += 1;
                let (client, vip, snat) = if v6 {
                    (client6(port), IpAddr::from(VIP6), IpAddr::from(SNAT6))
                } else {
                    (client4(port), IpAddr::from(VIP4), IpAddr::from(SNAT4))
                };
                let syn = Spec::tcp_syn(client, (vip, 80));
                let i = check_forward(fx, &syn, if v6 { 1 } else { 0 }, 8080);
                let backend: IpAddr = if v6 { backend6(i).into() } else { backend4(i).into() };
                // As sent towards the backend, and as the backend answers.
                let to_backend = expected_forward(&syn, i, 8080);
                let answer = Spec {
                    src_mac: backend_mac(i),
                    dst_mac: IF_MAC,
                    src: backend,
                    sport: 8080,
                    dst: snat,
                    dport: port,
                    l4: L4::Tcp {
                        syn: true,
                        ack: true,
                        seq: 5,
                    },
                    ..syn.clone()
                };
                let to_client = Spec {
                    src: vip,
                    sport: 80,
                    dst: client.0,
                    dport: port,
                    ttl: 63,
                    ..answer.clone()
                };
                let before = fx.reason(Reason::IcmpTranslated);
                // Backend side -> client.
                let err = Spec {
                    src_mac: backend_mac(i),
                    dst_mac: IF_MAC,
                    src: router(v6),
                    dst: snat,
                    ..syn.clone()
                };
                let (verdict, out) = fx.run(&icmp_error(&err, kind, &to_backend.build()[14..]), None);
                assert_eq!(verdict, XDP_REDIRECT, "{kind:?} v6={v6}: to the client");
                let quoted = Spec { ttl: 63, ..syn.clone() }.build();
                let want = Spec {
                    src_mac: IF_MAC,
                    dst_mac: CLIENT_MAC,
                    src: vip,
                    dst: client.0,
                    ..err.clone()
                };
                assert_eq!(
                    out,
                    icmp_error(&want, kind, &quoted[14..]),
                    "{kind:?} v6={v6}: client side"
                );
                // Client side -> backend.
                let err = Spec {
                    src_mac: CLIENT_MAC,
                    dst_mac: IF_MAC,
                    src: router(v6),
                    dst: vip,
                    ..syn.clone()
                };
                let (verdict, out) = fx.run(&icmp_error(&err, kind, &to_client.build()[14..]), None);
                assert_eq!(verdict, XDP_REDIRECT, "{kind:?} v6={v6}: to the backend");
                let quoted = Spec {
                    ttl: 63,
                    ..answer.clone()
                }
                .build();
                let want = Spec {
                    src_mac: IF_MAC,
                    dst_mac: backend_mac(i),
                    src: snat,
                    dst: backend,
                    ..err.clone()
                };
                assert_eq!(
                    out,
                    icmp_error(&want, kind, &quoted[14..]),
                    "{kind:?} v6={v6}: backend side"
                );
                assert_eq!(fx.reason(Reason::IcmpTranslated), before + 2);
            }
        }
        // An error about no flow passes unchanged.
        let stray = Spec::tcp_syn(client4(1), (VIP4.into(), 80));
        let err = Spec {
            src: router(false),
            dst: SNAT4.into(),
            ..stray.clone()
        };
        let quoted = Spec {
            src: SNAT4.into(),
            dst: backend4(1).into(),
            ..stray
        };
        let pkt = icmp_error(&err, IcmpError::TooBig(1400), &quoted.build()[14..]);
        assert_eq!(fx.run(&pkt, None), (XDP_PASS, pkt.clone()));
    });
}

/// A packet larger than the egress MTU is never dropped silently: with DF (always for
/// IPv6) it is answered with fragmentation needed / packet too big from the address it was
/// sent to, quoting it, out of the interface it came in by; without DF it goes to the stack
/// to be fragmented. A packet whose TTL / hop limit ends here is answered with time
/// exceeded.
#[test]
fn too_big_and_expiring_packets_are_answered_with_icmp() {
    use veer_tests::packet::{IcmpError, icmp_error};
    with_fixture(|fx| {
        run_cmd(&["ip", "-n", &fx.ns.name, "link", "set", "dev", "fx0", "mtu", "1400"]);
        for v6 in [false, true] {
            let (client, vip) = if v6 {
                (client6(46001), IpAddr::from(VIP6))
            } else {
                (client4(46001), IpAddr::from(VIP4))
            };
            let syn = Spec::tcp_syn(client, (vip, 80));
            let i = check_forward(fx, &syn, if v6 { 1 } else { 0 }, 8080);
            let big = Spec {
                l4: L4::Tcp {
                    syn: false,
                    ack: true,
                    seq: 1001,
                },
                payload: vec![7; 1400],
                ..syn.clone()
            };
            let pkt = big.build();
            let (verdict, out) = fx.run(&pkt, Some(fx.ifindex));
            assert_eq!(verdict, XDP_TX, "v6={v6}: answered, not dropped");
            let quote = if v6 { 40 + 8 } else { 20 + 8 };
            let back = Spec {
                src_mac: IF_MAC,
                dst_mac: CLIENT_MAC,
                src: vip,
                dst: client.0,
                ..syn.clone()
            };
            assert_eq!(
                out,
                icmp_error(&back, IcmpError::TooBig(1400), &pkt[14..14 + quote]),
                "v6={v6}"
            );
            assert_eq!(fx.reason(Reason::TxTooBig), 1 + v6 as u64);
            // The flow itself is unharmed: a small segment still goes to its backend.
            let small = Spec {
                payload: vec![7; 100],
                ..big.clone()
            };
            let (verdict, out) = fx.run(&small.build(), None);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out, expected_forward(&small, i, 8080).build());
            // TTL / hop limit 1: time exceeded.
            let expiring = Spec {
                ttl: 1,
                ..small.clone()
            };
            let pkt = expiring.build();
            let (verdict, out) = fx.run(&pkt, Some(fx.ifindex));
            assert_eq!(verdict, XDP_TX, "v6={v6}: time exceeded");
            assert_eq!(out, icmp_error(&back, IcmpError::TimeExceeded, &pkt[14..14 + quote]));
            assert_eq!(fx.reason(Reason::TxTimeExceeded), 1 + v6 as u64);
        }
        // IPv4 without DF: rewritten and handed to the stack, which fragments it.
        let big = Spec {
            l4: L4::Tcp {
                syn: false,
                ack: true,
                seq: 1001,
            },
            payload: vec![7; 1400],
            dont_fragment: false,
            ..Spec::tcp_syn(client4(46001), (VIP4.into(), 80))
        };
        let (verdict, out) = fx.run(&big.build(), None);
        assert_eq!(verdict, XDP_PASS);
        let i = backend_of(fx.flow(&flow_key(&big)).expect("flow").backend_id, 0);
        let want = Spec {
            src_mac: big.src_mac,
            dst_mac: big.dst_mac,
            ..expected_forward(&big, i, 8080)
        };
        assert_eq!(out, want.build(), "rewritten, MACs left to the stack");
        assert_eq!(fx.reason(Reason::PassTooBig), 1);
    });
}

/// A balancer on two interfaces accepts a NAT reply only from the interface its flow leaves
/// by towards the backend (here fx0; the loopback stands for the client-side arm). A
/// spoofed reply on the other arm — data, a reset, an ICMP error to the SNAT address — is
/// dropped and counted and changes nothing: the real reply after it still goes through.
#[test]
fn nat_replies_are_accepted_only_from_the_flows_egress_interface() {
    if !veer_tests::lab::is_root() {
        eprintln!("skipped: packet fixtures need root");
        return;
    }
    use veer_tests::packet::{IcmpError, icmp_error};
    let t = std::thread::spawn(|| {
        let fx = Fixture::with_reply_iface_check();
        let client_arm = None;
        let backend_arm = Some(fx.ifindex);
        for (syn, port) in [
            (Spec::tcp_syn(client4(48001), (VIP4.into(), 80)), 8080),
            (Spec::udp(client6(48002), (VIP6.into(), 53), b"query"), 5353),
        ] {
            let v6 = syn.src.is_ipv6();
            let (verdict, _) = fx.run(&syn.build(), client_arm);
            assert_eq!(verdict, XDP_REDIRECT, "the request leaves by fx0");
            let flow = fx.flow(&flow_key(&syn)).expect("flow recorded");
            let i = backend_of(
                flow.backend_id,
                if v6 { 1 } else { 0 } + if port == 5353 { 2 } else { 0 },
            );
            let reply = Spec {
                src_mac: backend_mac(i),
                dst_mac: IF_MAC,
                src: if v6 { backend6(i).into() } else { backend4(i).into() },
                sport: port,
                dst: if v6 { SNAT6.into() } else { SNAT4.into() },
                dport: u16::from_be(flow.snat_port_be),
                payload: b"reply".to_vec(),
                ..syn.clone()
            };
            // The quoted packet of an error "from the backend": SNAT:port -> backend.
            let sent = Spec {
                sport: u16::from_be(flow.snat_port_be),
                ..expected_forward(&syn, i, port)
            };
            let error = icmp_error(
                &Spec {
                    src_mac: backend_mac(i),
                    dst_mac: IF_MAC,
                    src: reply.src,
                    dst: reply.dst,
                    ..syn.clone()
                },
                IcmpError::PortUnreachable,
                &sent.build()[14..],
            );
            let mut spoofs = vec![("reply", reply.build()), ("port unreachable", error)];
            if !v6 {
                let mut reset = reply.build();
                reset[14 + 20 + 13] = 0x04; // RST alone (the balancer does not check the sum)
                spoofs.push(("reset", reset));
            }
            for (what, pkt) in spoofs {
                let before = fx.reason(Reason::DropReplyIface);
                let (verdict, out) = fx.run(&pkt, client_arm);
                assert_eq!(
                    (verdict, out),
                    (XDP_DROP, pkt.clone()),
                    "{what} from the client-side arm"
                );
                assert_eq!(fx.reason(Reason::DropReplyIface), before + 1, "{what}: counted");
            }
            assert_eq!(
                fx.flow(&flow_key(&syn)).unwrap().flags & FLOW_F_CLOSED,
                0,
                "the spoofed reset closed nothing"
            );
            let before = fx.reason(Reason::TxReply);
            let (verdict, out) = fx.run(&reply.build(), backend_arm);
            assert_eq!(verdict, XDP_TX, "the real reply, from the backend's arm");
            assert_eq!(fx.reason(Reason::TxReply), before + 1);
            let want = Spec {
                src_mac: IF_MAC,
                dst_mac: CLIENT_MAC,
                src: syn.dst,
                sport: syn.dport,
                dst: syn.src,
                dport: syn.sport,
                ttl: reply.ttl - 1,
                ..reply
            }
            .build();
            assert_eq!(out, want, "rewritten to VIP -> client");
        }
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// The ICMP errors the balancer sends itself are limited per CPU (here 2 per window of
/// about a second): a burst of oversized DF packets and expiring ones gets at most that
/// many answers, the rest are dropped and counted, not answered one for one.
#[test]
fn the_balancers_own_icmp_errors_are_rate_limited() {
    if !veer_tests::lab::is_root() {
        eprintln!("skipped: packet fixtures need root");
        return;
    }
    let t = std::thread::spawn(|| {
        // One CPU: the budget is per CPU.
        // SAFETY: a zeroed cpu_set_t with CPU 0 set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0);
        }
        let fx = Fixture::with_icmp_budget(2);
        run_cmd(&["ip", "-n", &fx.ns.name, "link", "set", "dev", "fx0", "mtu", "1400"]);
        let syn = Spec::tcp_syn(client4(49001), (VIP4.into(), 80));
        check_forward(&fx, &syn, 0, 8080);
        let big = Spec {
            l4: L4::Tcp {
                syn: false,
                ack: true,
                seq: 1001,
            },
            payload: vec![7; 1400],
            ..syn.clone()
        };
        let expiring = Spec {
            ttl: 1,
            payload: vec![7; 100],
            ..big.clone()
        };
        let (answered, dropped) = (fx.reason(Reason::TxTooBig), fx.reason(Reason::DropIcmpLimit));
        let mut verdicts = Vec::new();
        for k in 0..10 {
            let pkt = if k % 2 == 0 { big.build() } else { expiring.build() };
            verdicts.push(fx.run(&pkt, Some(fx.ifindex)).0);
        }
        let sent = verdicts.iter().filter(|&&v| v == XDP_TX).count() as u64;
        // Two windows at most if the burst straddles a window's end.
        assert!((2..=4).contains(&sent), "answered {sent} of 10: {verdicts:?}");
        assert!(verdicts.iter().all(|&v| v == XDP_TX || v == XDP_DROP), "{verdicts:?}");
        assert_eq!(
            fx.reason(Reason::TxTooBig) - answered + fx.reason(Reason::TxTimeExceeded),
            sent
        );
        assert_eq!(
            fx.reason(Reason::DropIcmpLimit) - dropped,
            10 - sent,
            "the rest counted"
        );
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}
