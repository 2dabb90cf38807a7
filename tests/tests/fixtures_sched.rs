//! Packet fixtures for the round-robin and least-conn schedulers: the real XDP object run
//! through BPF_PROG_TEST_RUN (see fixtures.rs for the ground they share). Pool of the IPv4
//! TCP VIP: backends 1, 2, 3 with weights 1:1:2.

use std::time::Duration;

use lb_common::{
    BACKEND_DOWN, BackendLoad, FLOW_F_COUNTED, FlowKey, MAP_FLOW_HEADS, MAP_TABLES, PROTO_TCP, VIP_F_LEAST_CONN,
    VIP_F_ROUND_ROBIN, VipInfo,
    conntrack::{Heads, slot},
    maglev::TableBackend,
    rr::build_sequence,
    select::{Tables, select},
};
use veer::dataplane::{FlowScan, LoadCorrector, LoadMemory};
use veer_tests::{
    fixture::*,
    packet::{L4, Spec},
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

fn syn(port: u16) -> Spec {
    Spec::tcp_syn((CLIENT4.into(), port), (VIP4.into(), 80))
}

/// A later client segment of the flow from `port` (ACK, with `flags` added).
fn segment(port: u16, flags: u8) -> Vec<u8> {
    let mut frame = Spec {
        l4: L4::Tcp {
            syn: false,
            ack: true,
            seq: 1001,
        },
        ..syn(port)
    }
    .build();
    frame[14 + 20 + 13] |= flags;
    frame
}

/// Backend `i`'s segment of the flow from client `port` (its NAT port: the client's own).
fn from_backend(i: u8, port: u16, flags: u8) -> Vec<u8> {
    let mut frame = Spec {
        src_mac: backend_mac(i),
        dst_mac: IF_MAC,
        src: backend4(i).into(),
        sport: 8080,
        dst: SNAT4.into(),
        dport: port,
        l4: L4::Tcp {
            syn: false,
            ack: true,
            seq: 1,
        },
        ..syn(port)
    }
    .build();
    frame[14 + 20 + 13] |= flags;
    frame
}

/// Which backend (1..=3) a forwarded frame went to, by its destination MAC.
fn sent_to(fx: &Fixture, frame: &[u8]) -> u8 {
    let (verdict, out) = fx.run(frame, None);
    assert_eq!(verdict, XDP_REDIRECT, "forwarded");
    (1..=3).find(|&i| out[0..6] == backend_mac(i)).expect("a backend's MAC")
}

/// Pins the calling thread to one CPU: the round-robin cursor is per CPU.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0);
    }
}

/// The pool's members as the agent's builders take them.
fn members() -> Vec<TableBackend> {
    (1..=3u8)
        .map(|i| TableBackend {
            id: i as u32,
            addr_be: addr_be(backend4(i).into()),
            port_be: 8080u16.to_be(),
            weight: [1, 1, 2][i as usize - 1] * 100,
        })
        .collect()
}

fn write_slots(fx: &mut Fixture, table: u32, slots: &[u32]) {
    let mut t: aya::maps::Array<_, u32> = fx.ebpf.map_mut(MAP_TABLES).unwrap().try_into().unwrap();
    for (slot, &id) in slots.iter().enumerate() {
        t.set(table * M + slot as u32, id, 0).unwrap();
    }
}

fn set_vip(fx: &mut Fixture, table: u32, flags: u32) {
    fx.set_vip(
        std::net::SocketAddr::new(VIP4.into(), 80),
        PROTO_TCP,
        VipInfo {
            vip_id: 0,
            table_current: table,
            flags,
            ..Default::default()
        },
    );
}

#[test]
fn round_robin_deals_weights_1_1_2_exactly_over_8_new_flows_on_one_cpu() {
    with_fixture(|fx| {
        pin_to_one_cpu();
        write_slots(fx, 5, &build_sequence(&members(), M));
        set_vip(fx, 5, VIP_F_ROUND_ROBIN);
        let dealt: Vec<u8> = (0..8).map(|n| sent_to(fx, &syn(41000 + n).build())).collect();
        assert_eq!(dealt, [3, 1, 2, 3, 3, 1, 2, 3], "nginx's smooth sequence for 1:1:2");
        // Established flows stay where they are and take no turn.
        for n in 0..8 {
            assert_eq!(sent_to(fx, &segment(41000 + n, 0)), dealt[n as usize]);
        }
        assert_eq!(
            sent_to(fx, &syn(41100).build()),
            3,
            "the ninth new flow takes the ninth turn"
        );
    });
}

/// The fixture's tables and BACKEND_LOAD as lb_common's `select` reads them.
struct View<'a> {
    table: &'a [u32],
    loads: &'a LoadMemory,
}

impl Tables for View<'_> {
    fn ab_rule_matches(&self, _: u32, _: &FlowKey) -> bool {
        false
    }
    fn backend_at(&self, _: u32, slot: u32, _: u32) -> Option<u32> {
        self.table.get(slot as usize).copied()
    }
    fn next_slot(&self, _: u32, _: u32) -> Option<u32> {
        None
    }
    fn load(&self, id: u32) -> Option<BackendLoad> {
        self.loads.get(id)
    }
}

/// Live flows of backend `id` as least-conn compares them.
fn flows(loads: &LoadMemory, id: u8) -> u64 {
    loads.get(id as u32).unwrap().flows()
}

/// Sets the fixture up as a least-conn VIP over a Maglev table of the pool (table 5), with
/// the agent's weights; returns the table.
fn least_conn(fx: &mut Fixture, loads: &LoadMemory) -> Vec<u32> {
    let table = lb_common::maglev::build_table(&members(), M, None);
    write_slots(fx, 5, &table);
    for b in members() {
        loads.set_weight(b.id, b.weight);
    }
    set_vip(fx, 5, VIP_F_LEAST_CONN);
    table
}

#[test]
fn least_conn_takes_the_less_loaded_of_the_flows_two_candidates() {
    with_fixture(|fx| {
        let loads = LoadMemory::of(&fx.ebpf).unwrap();
        let table = least_conn(fx, &loads);
        let view = View {
            table: &table,
            loads: &loads,
        };
        let vip = VipInfo {
            table_current: 5,
            flags: VIP_F_LEAST_CONN,
            ..Default::default()
        };
        let mut checked = 0;
        for port in 42000..42040u16 {
            let s = select(&view, &flow_key(&syn(port)), &vip, M).unwrap();
            let [a, b] = s.candidates;
            if a == b {
                continue;
            }
            // Load each candidate in turn (the offset the agent writes adds flows when
            // negative): the other one takes the flow, and its count goes up by one.
            for (busy, idle) in [(a, b), (b, a)] {
                if busy == b {
                    // The same tuple again: a closed flow's SYN is scheduled afresh.
                    fx.run(&segment(port, TCP_RST), None);
                }
                loads.set_offset(busy, -1000);
                loads.set_offset(idle, 0);
                let before = flows(&loads, idle as u8);
                let got = sent_to(fx, &syn(port).build()) as u32;
                assert_eq!(got, idle, "port {port}: {busy} holds 1000 more flows");
                assert_eq!(flows(&loads, idle as u8), before + 1, "the new flow counts");
                loads.set_offset(busy, 0);
            }
            checked += 1;
        }
        assert!(checked >= 10, "{checked} flows with two distinct candidates");
        // Per unit of weight: backend 3 (weight 2) with 3 flows is lighter than 1 with 2.
        let (l1, l3) = (
            BackendLoad {
                live: 2,
                weight: 100,
                offset: 0,
            },
            BackendLoad {
                live: 3,
                weight: 200,
                offset: 0,
            },
        );
        assert!(lb_common::select::lighter(&l3, &l1));
    });
}

/// The data path's least-conn choice is lb_common's `select` over the same table and loads,
/// flow by flow: backend 1 holds 50 flows, 2 and 3 hold what the new flows add.
#[test]
fn least_conn_in_the_kernel_chooses_as_lb_common_predicts() {
    with_fixture(|fx| {
        let loads = LoadMemory::of(&fx.ebpf).unwrap();
        let table = least_conn(fx, &loads);
        loads.set_offset(1, -50);
        let vip = VipInfo {
            table_current: 5,
            flags: VIP_F_LEAST_CONN,
            ..Default::default()
        };
        let mut to_loaded = 0;
        for port in 44000..44300u16 {
            let view = View {
                table: &table,
                loads: &loads,
            };
            let want = select(&view, &flow_key(&syn(port)), &vip, M).unwrap();
            let got = sent_to(fx, &syn(port).build()) as u32;
            assert_eq!(Some(got), want.backend_id, "port {port}: {want:?}");
            to_loaded += (got == 1) as u32;
            fx.run(&segment(port, TCP_FIN), None);
        }
        assert!(to_loaded < 10, "{to_loaded} of 300 new flows to the loaded backend");
    });
}

#[test]
fn least_conn_counts_go_down_on_fin_rst_eviction_and_idle() {
    with_fixture(|fx| {
        let loads = LoadMemory::of(&fx.ebpf).unwrap();
        least_conn(fx, &loads);
        let total = |loads: &LoadMemory| (1..=3).map(|i| flows(loads, i)).sum::<u64>();
        // FIN from the client: down once, however many FINs follow.
        let i = sent_to(fx, &syn(43000).build());
        assert_eq!((flows(&loads, i), total(&loads)), (1, 1));
        let counted = fx.flow(&flow_key(&syn(43000))).unwrap().flags & FLOW_F_COUNTED;
        assert_ne!(counted, 0, "a least-conn flow is marked counted");
        fx.run(&segment(43000, TCP_FIN), None);
        fx.run(&segment(43000, TCP_FIN), None);
        assert_eq!(total(&loads), 0, "FIN: down once");
        // RST from the backend.
        let j = sent_to(fx, &syn(43001).build());
        assert_eq!(total(&loads), 1);
        assert_eq!(fx.run(&from_backend(j, 43001, 0), None).0, XDP_REDIRECT);
        assert_eq!(fx.run(&from_backend(j, 43001, TCP_RST), None).0, XDP_REDIRECT);
        assert_eq!(total(&loads), 0, "the backend's RST: down");
        fx.run(&segment(43001, TCP_RST), None);
        assert_eq!(total(&loads), 0, "and not again for the client's");
        // Eviction: a flow whose backend goes down is re-chosen, its entry overwritten.
        let k = sent_to(fx, &syn(43002).build());
        fx.set_backend(
            k as u32,
            std::net::SocketAddr::new(backend4(k).into(), 8080),
            0,
            BACKEND_DOWN,
        );
        let table: Vec<u32> = members()
            .into_iter()
            .filter(|b| b.id != k as u32)
            .map(|b| b.id)
            .cycle()
            .take(M as usize)
            .collect();
        write_slots(fx, 6, &table);
        set_vip(fx, 6, VIP_F_LEAST_CONN);
        let moved = sent_to(fx, &segment(43002, 0));
        assert_ne!(moved, k);
        assert_eq!(
            (flows(&loads, k), flows(&loads, moved)),
            (0, 1),
            "down on the old, up on the new"
        );
        // Idle: the agent's scan takes a flow idle past tcp_idle off its backend's count,
        // and puts it back when the flow speaks again.
        let scan = FlowScan::of(&fx.ebpf).unwrap();
        let mut corrector = LoadCorrector::default();
        let idle = Duration::from_millis(100);
        let ids = [1, 2, 3];
        corrector.correct(&scan, &loads, &ids, idle, idle);
        assert_eq!(flows(&loads, moved), 1, "fresh: still live");
        std::thread::sleep(Duration::from_millis(250));
        corrector.correct(&scan, &loads, &ids, idle, idle);
        assert_eq!(flows(&loads, moved), 0, "idle past tcp_idle: no longer counted");
        assert_eq!(sent_to(fx, &segment(43002, 0)), moved);
        corrector.correct(&scan, &loads, &ids, idle, idle);
        assert_eq!(flows(&loads, moved), 1, "speaking again: counted again");
        // Drift: a count the table does not back (here: the entry wiped behind the data
        // path's back) is corrected by the next scan that sees the count quiet.
        let key = flow_key(&syn(43002));
        let mut heads: aya::maps::Array<_, Heads> = fx.ebpf.map_mut(MAP_FLOW_HEADS).unwrap().try_into().unwrap();
        let slot = slot(&key, heads.len() - 1);
        heads.set(slot.index, Heads::default(), 0).unwrap();
        assert_eq!(
            loads.get(moved as u32).unwrap().live,
            1,
            "the data path still counts it"
        );
        corrector.correct(&scan, &loads, &ids, idle, idle);
        assert_eq!(flows(&loads, moved), 0, "drift corrected");
    });
}
