//! Packet fixtures for direct server return (L2): the real XDP object run through
//! BPF_PROG_TEST_RUN (see fixtures.rs for the ground they share). A DSR VIP on the IPv4
//! address, port 443, with backends 1, 2, 3 (weights 1:1:2) listening on 443.

use std::net::SocketAddr;

use lb_common::{BACKEND_READY, FLOW_F_DSR, FlowKey, PROTO_TCP, Reason, VIP_F_DSR, VipInfo};
use veer_tests::{
    fixture::*,
    packet::{L4, Spec},
};

const VIP_ID: u32 = 5;
const TABLE: u32 = 7;
const PORT: u16 = 443;

fn id(i: u8) -> u32 {
    30 + i as u32
}

fn pool(weights: [u32; 3]) -> Pool {
    Pool {
        table: TABLE,
        backends: (1..=3u8)
            .filter(|&i| weights[i as usize - 1] > 0)
            .map(|i| {
                (
                    id(i),
                    SocketAddr::new(backend4(i).into(), PORT),
                    weights[i as usize - 1],
                )
            })
            .collect(),
    }
}

fn setup(fx: &mut Fixture) {
    for i in 1..=3u8 {
        fx.set_backend(id(i), SocketAddr::new(backend4(i).into(), PORT), VIP_ID, BACKEND_READY);
    }
    fx.write_table(&pool([1, 1, 2]));
    fx.set_vip(
        SocketAddr::new(VIP4.into(), PORT),
        PROTO_TCP,
        VipInfo {
            vip_id: VIP_ID,
            table_current: TABLE,
            flags: VIP_F_DSR,
            ..Default::default()
        },
    );
}

fn syn(port: u16) -> Spec {
    Spec::tcp_syn((CLIENT4.into(), port), (VIP4.into(), PORT))
}

fn ack(port: u16) -> Spec {
    Spec {
        l4: L4::Tcp {
            syn: false,
            ack: true,
            seq: 1001,
        },
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ..syn(port)
    }
}

/// The frame a DSR forward must emit: the input byte for byte, but for the MACs.
fn expected(input: &Spec, i: u8) -> Vec<u8> {
    Spec {
        src_mac: IF_MAC,
        dst_mac: backend_mac(i),
        ..input.clone()
    }
    .build()
}

fn which(id_: u32) -> u8 {
    (1..=3u8).find(|&i| id(i) == id_).expect("a DSR backend id")
}

/// What the NAT mode would have put in the reverse table for this flow and backend.
fn nat_reply_key(spec: &Spec, i: u8) -> FlowKey {
    flow_key(&Spec {
        src: backend4(i).into(),
        sport: PORT,
        dst: SNAT4.into(),
        dport: spec.sport,
        ..spec.clone()
    })
}

#[test]
fn a_dsr_syn_leaves_with_only_its_macs_changed_and_no_reverse_entry() {
    with_fixture(|fx| {
        setup(fx);
        let mut seen = [0u32; 4];
        for port in 41000..41040 {
            let s = syn(port);
            let key = flow_key(&s);
            let i = which(fx.predict(TABLE, &key));
            let before = fx.reason(Reason::Redirect);
            let (verdict, out) = fx.run(&s.build(), None);
            assert_eq!(verdict, XDP_REDIRECT, "a DSR SYN is forwarded");
            assert_eq!(
                out,
                expected(&s, i),
                "only the MACs change (kernel output vs expected frame)"
            );
            assert_eq!(fx.reason(Reason::Redirect), before + 1);
            let flow = fx.flow(&key).expect("the DSR flow is recorded");
            assert_eq!((flow.backend_id, flow.flags & FLOW_F_DSR), (id(i), FLOW_F_DSR));
            assert!(!fx.has_reverse(&nat_reply_key(&s, i)), "no reverse entry in DSR mode");
            seen[i as usize] += 1;
        }
        assert!(
            seen[1..].iter().all(|&n| n > 0),
            "40 flows reach all 3 backends: {seen:?}"
        );
        // Out of the ingress interface: XDP_TX, same frame.
        let s = syn(41100);
        let i = which(fx.predict(TABLE, &flow_key(&s)));
        let (verdict, out) = fx.run(&s.build(), Some(fx.ifindex));
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out, expected(&s, i));
    });
}

/// A flow this node has not seen (moved here by an ECMP change): its first segment is not
/// a SYN; it is scheduled by the table like a new flow and recorded, so it stays on that
/// backend when the table changes afterwards.
#[test]
fn a_dsr_non_syn_miss_is_scheduled_by_the_table_and_recorded() {
    with_fixture(|fx| {
        setup(fx);
        for port in 42000..42020 {
            let a = ack(port);
            let key = flow_key(&a);
            assert!(!fx.has_flow(&key));
            let i = which(fx.predict(TABLE, &key));
            let new_before = fx.vip_counters(VIP_ID).new_flows;
            let (verdict, out) = fx.run(&a.build(), None);
            assert_eq!(
                verdict, XDP_REDIRECT,
                "a mid-flow segment is forwarded, not dropped or passed"
            );
            assert_eq!(out, expected(&a, i));
            assert_eq!(fx.flow(&key).map(|f| f.backend_id), Some(id(i)), "recorded");
            assert_eq!(
                fx.vip_counters(VIP_ID).new_flows,
                new_before + 1,
                "counted as a new flow"
            );
        }
        // The table changes (backend 3 leaves the pool, stays up): recorded flows keep
        // their backend.
        fx.write_table(&pool([1, 1, 0]));
        for port in 42000..42020 {
            let a = ack(port);
            let i = which(fx.flow(&flow_key(&a)).unwrap().backend_id);
            let (verdict, out) = fx.run(&a.build(), None);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out, expected(&a, i), "an established DSR flow stays on its backend");
        }
    });
}

#[test]
fn a_malformed_packet_to_a_dsr_vip_is_still_dropped() {
    with_fixture(|fx| {
        setup(fx);
        for (what, byte) in [("ipv4 version 5", 0x55), ("ipv4 ihl 4", 0x44)] {
            let mut pkt = syn(43000).build();
            pkt[14] = byte;
            let before = fx.reason(Reason::DropMalformed);
            assert_eq!(fx.run(&pkt, None).0, XDP_DROP, "{what}");
            assert_eq!(fx.reason(Reason::DropMalformed), before + 1, "{what}");
        }
        let mut short = syn(43001).build();
        short.truncate(14 + 20 + 10);
        let before = fx.reason(Reason::DropTruncated);
        assert_eq!(fx.run(&short, None).0, XDP_DROP, "truncated TCP header");
        assert_eq!(fx.reason(Reason::DropTruncated), before + 1);
        assert!(!fx.has_flow(&flow_key(&syn(43000))));
    });
}

#[test]
fn a_dsr_ipv6_syn_leaves_with_only_its_macs_changed() {
    with_fixture(|fx| {
        let (vip_id, table) = (6, 6);
        let backends: Vec<(u32, SocketAddr, u32)> = (1..=3u8)
            .map(|i| (40 + i as u32, SocketAddr::new(backend6(i).into(), PORT), 1))
            .collect();
        for &(id, addr, _) in &backends {
            fx.set_backend(id, addr, vip_id, BACKEND_READY);
        }
        fx.write_table(&Pool { table, backends });
        fx.set_vip(
            SocketAddr::new(VIP6.into(), PORT),
            PROTO_TCP,
            VipInfo {
                vip_id,
                table_current: table,
                flags: VIP_F_DSR,
                ..Default::default()
            },
        );
        for port in 44000..44010 {
            let s = Spec::tcp_syn((CLIENT6.into(), port), (VIP6.into(), PORT));
            let i = (fx.predict(table, &flow_key(&s)) - 40) as u8;
            let (verdict, out) = fx.run(&s.build(), None);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out, expected(&s, i), "IPv6: only the MACs change (hop limit kept)");
        }
    });
}
