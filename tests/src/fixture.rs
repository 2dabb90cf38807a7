//! A balancer loaded into the kernel inside a network namespace of its own, with fixed
//! neighbours so bpf_fib_lookup answers deterministically, programmed with a small set of
//! VIPs: the ground for packet fixtures and the data-path bench.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    BACKEND_READY, Backend, Config, Counters, FAMILY_V4, FAMILY_V6, FlowKey, MAP_BACKENDS, MAP_CONFIG, MAP_FLOWS,
    MAP_NAT_REV, MAP_REASONS, MAP_TABLES, MAP_TX_PORTS, MAP_VIP_FILTER, MAP_VIP_STATS, MAP_VIPS, PROG_BALANCER,
    PROTO_TCP, PROTO_UDP, Reason, VipInfo, VipKey,
    conntrack::{FlowWays, Heads},
    hash::table_slot,
    maglev::{TableBackend, build_table},
    vip_filter_slot,
};

use crate::packet::{L4, Spec};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// A small prime ring keeps table writes fast; the arithmetic is the same as at 65537.
pub const M: u32 = 4099;
pub const IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

pub const SNAT4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 100);
pub const EMPTY_VIP4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 101);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 50);
/// A second client (same MAC), for flows that differ only in the client address.
pub const CLIENT4_B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 51);
pub const SNAT6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 0x100);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 0x50);

pub fn backend4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, 10 + i)
}
pub fn backend6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 0x10 + i as u16)
}
pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 1, i]
}

pub fn addr_be(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            core::array::from_fn(|i| u32::from_ne_bytes(o[i * 4..i * 4 + 4].try_into().unwrap()))
        }
    }
}

/// Runs a setup command; a fixture cannot go on without it.
pub fn run_cmd(args: &[&str]) {
    crate::lab::run_cmd(args).unwrap_or_else(|e| panic!("{e:#}"));
}

pub use crate::lab::Netns;

/// One VIP's backends: (id, address, weight).
pub struct Pool {
    pub table: u32,
    pub backends: Vec<(u32, SocketAddr, u32)>,
}

pub struct Fixture {
    pub ebpf: Ebpf,
    pub ns: Netns,
    pub ifindex: u32,
    tables: StdHashMap<u32, Vec<u32>>,
}

/// Runs `f` on a fresh thread inside a fresh namespace with the balancer loaded, or skips
/// with a printed reason when not root.
pub fn with_fixture(f: impl FnOnce(&mut Fixture) + Send + 'static) {
    with_fixture_sized(4096, f);
}

/// [`with_fixture`] with connection tables of `flow_capacity` flows.
pub fn with_fixture_sized(flow_capacity: u32, f: impl FnOnce(&mut Fixture) + Send + 'static) {
    with_fixture_budget(flow_capacity, u32::MAX, f);
}

/// [`with_fixture_sized`] with the flood guard's new-flow budget per CPU and window set to
/// `budget` (u32::MAX: derived from the table, as the agent leaves it).
pub fn with_fixture_budget(flow_capacity: u32, budget: u32, f: impl FnOnce(&mut Fixture) + Send + 'static) {
    if !crate::lab::is_root() {
        eprintln!("skipped: packet fixtures need root (BPF_PROG_TEST_RUN, network namespaces)");
        return;
    }
    let handle = std::thread::spawn(move || {
        let mut fx = Fixture::with_budget(flow_capacity, budget);
        f(&mut fx);
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

impl Fixture {
    /// `flow_capacity` sizes the connection and reverse-NAT tables.
    pub fn new(flow_capacity: u32) -> Self {
        Self::with_budget(flow_capacity, u32::MAX)
    }

    /// [`Fixture::new`] with the flood guard's budget (see [`with_fixture_budget`]).
    pub fn with_budget(flow_capacity: u32, budget: u32) -> Self {
        Self::build(flow_capacity, budget, 0, None)
    }

    /// A fixture whose balancer accepts NAT replies only from the interface their flow
    /// leaves by (lb_common::GLOBAL_REPLY_IFACE_CHECK = 1, as an agent on several
    /// interfaces loads it). The namespace's loopback stands for the client-side arm.
    pub fn with_reply_iface_check() -> Self {
        Self::build(4096, u32::MAX, 1, None)
    }

    /// A fixture whose balancer sends at most `budget` ICMP errors of its own per CPU per
    /// window of about a second (lb_common::GLOBAL_ICMP_BUDGET).
    pub fn with_icmp_budget(budget: u32) -> Self {
        Self::build(4096, u32::MAX, 0, Some(budget))
    }

    fn build(flow_capacity: u32, budget: u32, reply_iface_check: u32, icmp_budget: Option<u32>) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("veer-fx-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let ns = Netns::new(&name).expect("create the fixture namespace");
        let n = ns.name.as_str();
        run_cmd(&[
            "ip",
            "-n",
            n,
            "link",
            "add",
            "fx0",
            "address",
            "02:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "fx1",
        ]);
        for dev in ["lo", "fx0", "fx1"] {
            run_cmd(&["ip", "-n", n, "link", "set", "dev", dev, "up"]);
        }
        run_cmd(&["ip", "-n", n, "addr", "add", "10.9.0.1/24", "dev", "fx0"]);
        run_cmd(&["ip", "-n", n, "addr", "add", "fd09::1/64", "dev", "fx0", "nodad"]);
        run_cmd(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let mut neighbours: Vec<(IpAddr, [u8; 6])> = vec![
            (CLIENT4.into(), CLIENT_MAC),
            (CLIENT4_B.into(), CLIENT_MAC),
            (CLIENT6.into(), CLIENT_MAC),
        ];
        for i in 1..=3 {
            neighbours.push((backend4(i).into(), backend_mac(i)));
            neighbours.push((backend6(i).into(), backend_mac(i)));
        }
        for (ip, m) in neighbours {
            run_cmd(&[
                "ip",
                "-n",
                n,
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac(m),
                "dev",
                "fx0",
                "nud",
                "permanent",
            ]);
        }
        ns.enter_this_thread().expect("enter the fixture namespace");
        let ifindex = nix_ifindex("fx0");
        let buckets = lb_common::conntrack::buckets(flow_capacity);
        let mask = buckets - 1;
        let mut loader = EbpfLoader::new();
        if let Some(b) = &icmp_budget {
            loader.override_global(lb_common::GLOBAL_ICMP_BUDGET, b, true);
        }
        let ebpf = loader
            .override_global(lb_common::GLOBAL_CONN_MASK, &mask, true)
            .override_global(lb_common::GLOBAL_FLOW_BUDGET, &budget, true)
            .override_global(lb_common::GLOBAL_REPLY_IFACE_CHECK, &reply_iface_check, true)
            .map_max_entries(MAP_TABLES, 8 * M)
            .map_max_entries(MAP_FLOWS, buckets)
            .map_max_entries(lb_common::MAP_FLOW_HEADS, buckets)
            .map_max_entries(MAP_NAT_REV, buckets)
            .map_max_entries(lb_common::MAP_REV_HEADS, buckets)
            .load(veer::dataplane::BALANCER_OBJECT)
            .expect("load balancer object");
        let mut fx = Fixture {
            ebpf,
            ns,
            ifindex,
            tables: Default::default(),
        };
        let prog: &mut Xdp = fx
            .ebpf
            .program_mut(PROG_BALANCER)
            .expect("program")
            .try_into()
            .expect("xdp");
        prog.load().expect("verifier accepts the balancer");
        veer::dataplane::load_icmp(&mut fx.ebpf).expect("verifier accepts the ICMP program");
        fx.configure();
        fx
    }

    pub fn configure(&mut self) {
        let cfg = Config {
            snat_v4_be: addr_be(SNAT4.into())[0],
            ring_size: M,
            snat_v6_be: addr_be(SNAT6.into()),
        };
        Array::<_, Config>::try_from(self.ebpf.map_mut(MAP_CONFIG).unwrap())
            .unwrap()
            .set(0, cfg, 0)
            .unwrap();
        let mut tx: DevMapHash<_> = self.ebpf.map_mut(MAP_TX_PORTS).unwrap().try_into().unwrap();
        tx.insert(self.ifindex, self.ifindex, None, 0).unwrap();
        for a in [
            IpAddr::from(SNAT4),
            SNAT6.into(),
            VIP4.into(),
            VIP6.into(),
            EMPTY_VIP4.into(),
        ] {
            self.filter(a);
        }
        let pools = [
            (0, SocketAddr::new(VIP4.into(), 80), PROTO_TCP, false, 8080),
            (1, SocketAddr::new(VIP6.into(), 80), PROTO_TCP, true, 8080),
            (2, SocketAddr::new(VIP4.into(), 53), PROTO_UDP, false, 5353),
            (3, SocketAddr::new(VIP6.into(), 53), PROTO_UDP, true, 5353),
        ];
        for (vip_id, vip, proto, v6, port) in pools {
            let backend = |i: u8| -> SocketAddr {
                if v6 {
                    SocketAddr::new(backend6(i).into(), port)
                } else {
                    SocketAddr::new(backend4(i).into(), port)
                }
            };
            let pool = Pool {
                table: vip_id + 1,
                backends: (1..=3u8)
                    .map(|i| (vip_id * 3 + i as u32, backend(i), [1, 1, 2][i as usize - 1]))
                    .collect(),
            };
            for &(id, addr, _) in &pool.backends {
                self.set_backend(id, addr, vip_id, BACKEND_READY);
            }
            self.write_table(&pool);
            self.set_vip(
                vip,
                proto,
                VipInfo {
                    vip_id,
                    table_current: pool.table,
                    ..Default::default()
                },
            );
        }
        // A VIP whose active pool is empty (table 0).
        self.set_vip(
            SocketAddr::new(EMPTY_VIP4.into(), 80),
            PROTO_TCP,
            VipInfo {
                vip_id: 4,
                ..Default::default()
            },
        );
    }

    pub fn filter(&mut self, a: IpAddr) {
        let mut f: Array<_, u64> = self.ebpf.map_mut(MAP_VIP_FILTER).unwrap().try_into().unwrap();
        let (word, bit) = vip_filter_slot(&addr_be(a));
        let old = f.get(&word, 0).unwrap();
        f.set(word, old | bit, 0).unwrap();
    }

    pub fn set_backend(&mut self, id: u32, addr: SocketAddr, vip_id: u32, state: u8) {
        let family = if addr.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
        let b = Backend {
            addr_be: addr_be(addr.ip()),
            port_be: addr.port().to_be(),
            family,
            state,
            vip_id,
        };
        Array::<_, Backend>::try_from(self.ebpf.map_mut(MAP_BACKENDS).unwrap())
            .unwrap()
            .set(id, b, 0)
            .unwrap();
    }

    pub fn write_table(&mut self, pool: &Pool) {
        let tb: Vec<TableBackend> = pool
            .backends
            .iter()
            .map(|&(id, a, weight)| TableBackend {
                id,
                addr_be: addr_be(a.ip()),
                port_be: a.port().to_be(),
                weight,
            })
            .collect();
        let previous = self.tables.get(&pool.table).cloned();
        let table = build_table(&tb, M, previous.as_deref());
        let mut t: Array<_, u32> = self.ebpf.map_mut(MAP_TABLES).unwrap().try_into().unwrap();
        for (slot, &id) in table.iter().enumerate() {
            t.set(pool.table * M + slot as u32, id, 0).unwrap();
        }
        self.tables.insert(pool.table, table);
    }

    pub fn set_vip(&mut self, vip: SocketAddr, proto: u8, info: VipInfo) {
        let family = if vip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
        let key = VipKey {
            addr_be: addr_be(vip.ip()),
            port_be: vip.port().to_be(),
            proto,
            family,
        };
        let mut m: HashMap<_, VipKey, VipInfo> = self.ebpf.map_mut(MAP_VIPS).unwrap().try_into().unwrap();
        m.insert(key, info, 0).unwrap();
    }

    /// What userspace predicts for a new flow: the backend id in the VIP's active table.
    pub fn predict(&self, table: u32, key: &FlowKey) -> u32 {
        self.tables[&table][table_slot(key, false, M) as usize]
    }

    /// Is this client flow in the connection table (FLOW_HEADS + FLOWS, read as the agent
    /// reads them)?
    pub fn has_flow(&self, key: &FlowKey) -> bool {
        self.flow(key).is_some()
    }

    /// The connection-table entry of a client flow.
    pub fn flow(&self, key: &FlowKey) -> Option<lb_common::Flow> {
        let heads: Array<_, Heads> = self.ebpf.map(lb_common::MAP_FLOW_HEADS).unwrap().try_into().unwrap();
        let ways: Array<_, FlowWays> = self.ebpf.map(MAP_FLOWS).unwrap().try_into().unwrap();
        let slot = lb_common::conntrack::slot(key, heads.len() - 1);
        let head = heads.get(&slot.index, 0).unwrap();
        let ways = ways.get(&slot.index, 0).unwrap();
        head.find(&ways, key, slot.tag).map(|w| ways.ways[w].flow)
    }

    /// A VIP's counters summed over CPUs.
    pub fn vip_counters(&self, vip_id: u32) -> Counters {
        self.counters(MAP_VIP_STATS, vip_id)
    }

    /// A backend's counters summed over CPUs.
    pub fn backend_counters(&self, backend_id: u32) -> Counters {
        self.counters(lb_common::MAP_BACKEND_STATS, backend_id)
    }

    fn counters(&self, map: &str, index: u32) -> Counters {
        let m: PerCpuArray<_, Counters> = self.ebpf.map(map).unwrap().try_into().unwrap();
        m.get(&index, 0)
            .unwrap()
            .iter()
            .fold(Counters::default(), |a, c| a.add(*c))
    }

    /// The flood guard's counters summed over CPUs.
    pub fn guard(&self) -> lb_common::FloodGuard {
        let m: PerCpuArray<_, lb_common::FloodGuard> =
            self.ebpf.map(lb_common::MAP_FLOOD_GUARD).unwrap().try_into().unwrap();
        m.get(&0, 0).unwrap().iter().fold(Default::default(), |a, c| a.add(*c))
    }

    /// Is this reply 5-tuple in the reverse-NAT table?
    pub fn has_reverse(&self, reply: &FlowKey) -> bool {
        let heads: Array<_, Heads> = self.ebpf.map(lb_common::MAP_REV_HEADS).unwrap().try_into().unwrap();
        let ways: Array<_, lb_common::conntrack::RevWays> = self.ebpf.map(MAP_NAT_REV).unwrap().try_into().unwrap();
        let slot = lb_common::conntrack::slot(reply, heads.len() - 1);
        let head = heads.get(&slot.index, 0).unwrap();
        let ways = ways.get(&slot.index, 0).unwrap();
        head.find(&ways, reply, slot.tag).is_some()
    }

    pub fn reason(&self, r: Reason) -> u64 {
        let m: PerCpuArray<_, u64> = self.ebpf.map(MAP_REASONS).unwrap().try_into().unwrap();
        m.get(&(r as u32), 0).unwrap().iter().sum()
    }

    /// Runs one packet; `ingress` None means the namespace's loopback (egress differs:
    /// redirect), Some(ifindex) makes egress == ingress (XDP_TX).
    pub fn run(&self, pkt: &[u8], ingress: Option<u32>) -> (u32, Vec<u8>) {
        let (verdict, out, _) = self.run_program(PROG_BALANCER, pkt, ingress, 1);
        (verdict, out)
    }

    /// Runs program `name` `repeat` times on `pkt`; returns the last verdict, the output
    /// frame and the kernel's average time per run.
    pub fn run_program(
        &self,
        name: &str,
        pkt: &[u8],
        ingress: Option<u32>,
        repeat: u32,
    ) -> (u32, Vec<u8>, std::time::Duration) {
        let prog: &Xdp = self.ebpf.program(name).unwrap().try_into().unwrap();
        test_run(prog, pkt, ingress, repeat)
    }
}

/// Runs a loaded XDP program `repeat` times on `pkt` (BPF_PROG_TEST_RUN); returns the last
/// verdict, the output frame and the kernel's average time per run.
pub fn test_run(prog: &Xdp, pkt: &[u8], ingress: Option<u32>, repeat: u32) -> (u32, Vec<u8>, std::time::Duration) {
    let mut out = vec![0u8; pkt.len() + 64];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u32; 6];
    ctx[1] = pkt.len() as u32;
    ctx[3] = ingress.unwrap_or(0);
    let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(pkt);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    if ingress.is_some() {
        opts.ctx_in = Some(&ctx_bytes);
    }
    let res = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out, res.duration)
}

pub fn nix_ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string; looks up in the calling thread's namespace.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(idx, 0, "no interface {name}");
    idx
}

pub fn flow_key(spec: &Spec) -> FlowKey {
    FlowKey {
        src_be: addr_be(spec.src),
        dst_be: addr_be(spec.dst),
        sport_be: spec.sport.to_be(),
        dport_be: spec.dport.to_be(),
        proto: if matches!(spec.l4, L4::Udp) {
            PROTO_UDP
        } else {
            PROTO_TCP
        },
        family: if spec.src.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 },
        _pad: [0; 2],
    }
}
