//! The only module that uses aya: loads the embedded XDP object, pins its maps, attaches it,
//! writes a [`Plan`] into the maps and reads counters back.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Backend, BackendLoad, Config, Counters, Flow, FlowKey, GLOBAL_CONN_MASK, GLOBAL_REPLY_IFACE_CHECK, MAP_AB_RULES,
    MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONFIG, MAP_FLOW_HEADS, MAP_FLOWS, MAP_NAT_REV, MAP_NEXTHOPS, MAP_REASONS,
    MAP_REV_HEADS, MAP_TABLES, MAP_TX_PORTS, MAP_VIP_FILTER, MAP_VIP_STATS, MAP_VIPS, NextHop, PROG_BALANCER, Reason,
    VipInfo, VipKey,
    conntrack::{self, FlowWays, Heads},
};
use tracing::{info, warn};

mod loads;
mod mapping;
mod trace;

use self::mapping::{ReadMapping, TableMemory};
pub use self::{
    loads::{LoadCorrector, LoadCount, LoadMemory},
    mapping::{FlowScan, LiveFlows},
};
pub use crate::config::TracePrefix;
use crate::{config::AttachMode, state::Op};

/// The balancer's object (built by build.rs from lb-ebpf).
pub const BALANCER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veer"));
/// A map-less XDP_PASS program for veth peers (XDP_TX/REDIRECT into a veth need one).
pub const PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veer-pass"));
/// The bench harness's object (`cargo xtask bench` only). Nothing in the `veer` binary refers
/// to it, so the binary does not carry it (the bench checks).
pub const BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veer-bench"));

/// The default `agent.pin_dir`.
pub const PIN_DIR: &str = crate::config::DEFAULT_PIN_DIR;

/// Maps pinned under PIN_DIR: the agent's state lives in them.
const PINNED: &[&str] = &[
    MAP_VIPS,
    MAP_VIP_FILTER,
    MAP_BACKENDS,
    MAP_NEXTHOPS,
    MAP_TABLES,
    MAP_FLOWS,
    MAP_FLOW_HEADS,
    MAP_NAT_REV,
    MAP_REV_HEADS,
    MAP_CONFIG,
    MAP_VIP_STATS,
    MAP_BACKEND_STATS,
    MAP_REASONS,
    MAP_TX_PORTS,
    MAP_AB_RULES,
    lb_common::MAP_FLOOD_GUARD,
    lb_common::MAP_FRAGS,
    lb_common::MAP_BACKEND_LOAD,
    lb_common::MAP_RR_CURSORS,
];

/// Loads the ICMP program and puts it where the balancer tail-calls it (ICMP_PROGS[0]).
pub fn load_icmp(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let prog: &mut Xdp = ebpf
        .program_mut(lb_common::PROG_ICMP)
        .ok_or(DataplaneError::StubObject)?
        .try_into()?;
    prog.load()?;
    let fd = prog.fd()?.try_clone()?;
    let map = ebpf
        .map_mut(lb_common::MAP_ICMP_PROGS)
        .ok_or(DataplaneError::StubObject)?;
    let mut progs: aya::maps::ProgramArray<&mut MapData> =
        map.try_into().map_err(map_err(lb_common::MAP_ICMP_PROGS))?;
    progs.set(0, &fd, 0).map_err(map_err(lb_common::MAP_ICMP_PROGS))?;
    Ok(())
}

/// Pinned maps of earlier layouts, removed when a newer agent adopts the data path.
const RETIRED: &[&str] = &[
    "FLOWS_V1",
    "NAT_REV_V1",
    "NAT_REV_V2",
    "FLOW_HEADS_V1",
    "REV_HEADS_V1",
    "NEXTHOPS_V1",
    "REASONS_V1",
];

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "the embedded XDP object is empty: this binary was built with AYA_BUILD_SKIP=1; build it with `cargo xtask build`"
    )]
    StubObject,
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel rejected the XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("XDP link: {0}")]
    Link(String),
    #[error("devmap TX_PORTS: {0}")]
    TxPort(String),
    #[error("no interface named {0:?}")]
    NoInterface(String),
    #[error("attaching to {iface} in {mode:?} mode: {source}")]
    Attach {
        iface: String,
        mode: XdpMode,
        source: aya::programs::ProgramError,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// Map sizes fixed at load time.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub flows: u32,
    pub backends: u32,
    pub ring_size: u32,
    pub max_tables: u32,
    /// Accept NAT replies only from the interface their flow leaves by (set on a balancer
    /// with more than one interface; see docs/decisions.md, "Reply interface").
    pub reply_iface_check: bool,
    /// Clients and VIPs whose packets' decisions are traced (empty: the trace is off and
    /// left out of the program; see trace.rs).
    pub trace: Vec<TracePrefix>,
}

/// A loaded balancer. Its maps and its links are pinned under `pin_dir`, so the data path
/// keeps forwarding when the agent exits or dies ([`Dataplane::release`]); removing it is
/// [`remove_pins`]. Dropping it unreleased leaves an adopted data path alone and removes
/// only what a failed first start created.
pub struct Dataplane {
    ebpf: Ebpf,
    tables: std::sync::Arc<TableMemory>,
    loads: LoadMemory,
    links: Vec<(String, PinnedLink)>,
    pin_dir: PathBuf,
    /// The maps were already pinned: another agent's data path was taken over.
    pub adopted: bool,
    remove_on_drop: bool,
}

impl Dataplane {
    pub fn load(sizes: Sizes, pin_dir: &Path) -> Result<Self, DataplaneError> {
        if BALANCER_OBJECT.is_empty() {
            return Err(DataplaneError::StubObject);
        }
        // Kernels >= 5.11 account BPF memory to the cgroup; older ones need memlock.
        let rlim = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: plain syscall with a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
            info!(
                "could not raise RLIMIT_MEMLOCK ({}); fine on kernels that charge BPF memory to cgroups",
                std::io::Error::last_os_error()
            );
        }
        std::fs::create_dir_all(pin_dir)?;
        let adopted = pin_dir.join(MAP_VIPS).exists();
        let loaded = Self::open(sizes, pin_dir, adopted);
        if loaded.is_err() && !adopted {
            // A first start that failed half-way leaves nothing for the next one to adopt.
            for name in PINNED {
                let _ = std::fs::remove_file(pin_dir.join(name));
            }
            let _ = std::fs::remove_dir(pin_dir);
        }
        loaded
    }

    fn open(sizes: Sizes, pin_dir: &Path, adopted: bool) -> Result<Self, DataplaneError> {
        let pins: Vec<(&str, PathBuf)> = PINNED.iter().map(|n| (*n, pin_dir.join(n))).collect();
        let buckets = conntrack::buckets(sizes.flows);
        let mask = buckets - 1;
        let reply_iface_check = u32::from(sizes.reply_iface_check);
        let trace = u32::from(!sizes.trace.is_empty());
        let mut loader = EbpfLoader::new();
        loader
            .override_global(GLOBAL_CONN_MASK, &mask, true)
            .override_global(GLOBAL_REPLY_IFACE_CHECK, &reply_iface_check, true)
            .override_global(lb_common::GLOBAL_TRACE, &trace, true)
            .map_max_entries(MAP_FLOWS, buckets)
            .map_max_entries(MAP_FLOW_HEADS, buckets)
            .map_max_entries(MAP_NAT_REV, buckets)
            .map_max_entries(MAP_REV_HEADS, buckets)
            .map_max_entries(MAP_BACKENDS, sizes.backends)
            .map_max_entries(MAP_NEXTHOPS, sizes.backends)
            .map_max_entries(MAP_BACKEND_STATS, sizes.backends)
            .map_max_entries(lb_common::MAP_BACKEND_LOAD, sizes.backends)
            .map_max_entries(lb_common::MAP_RR_CURSORS, sizes.max_tables)
            .map_max_entries(MAP_TABLES, sizes.max_tables * sizes.ring_size);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(BALANCER_OBJECT)?;
        // A pinned table of another size (flow_capacity changed across a restart) would be
        // indexed with the wrong mask: refuse, and say how to resize.
        let pinned_buckets = match ebpf.map(MAP_FLOWS) {
            Some(aya::maps::Map::Array(m)) => m.info().map_err(map_err(MAP_FLOWS))?.max_entries(),
            _ => return Err(DataplaneError::StubObject),
        };
        if pinned_buckets != buckets {
            return Err(DataplaneError::Io(std::io::Error::other(format!(
                "the pinned connection table holds {} flows, agent.flow_capacity = {} needs {}: \
                 stop the running data path (veer agent gets SIGTERM) before changing its size",
                pinned_buckets as usize * conntrack::WAYS,
                sizes.flows,
                buckets as usize * conntrack::WAYS
            ))));
        }
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_BALANCER)
            .ok_or(DataplaneError::StubObject)?
            .try_into()?;
        prog.load()?;
        load_icmp(&mut ebpf)?;
        if !sizes.trace.is_empty() {
            trace::install(&mut ebpf, &sizes.trace)?;
        }
        if adopted {
            info!(pin_dir = %pin_dir.display(), "adopting pinned maps: connection table kept");
            for name in RETIRED {
                let pin = pin_dir.join(name);
                if pin.exists() {
                    // The old program keeps its own reference until the link is updated.
                    warn!(
                        map = name,
                        "removing a pinned map of an older layout: flows it held are re-chosen"
                    );
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let tables = std::sync::Arc::new(TableMemory::map(&ebpf, sizes.max_tables * sizes.ring_size)?);
        let loads = LoadMemory::of(&ebpf)?;
        Ok(Dataplane {
            ebpf,
            tables,
            loads,
            links: Vec::new(),
            pin_dir: pin_dir.to_path_buf(),
            adopted,
            remove_on_drop: !adopted,
        })
    }

    /// Attaches to `iface`: replaces the program in a pinned link atomically when one
    /// exists (restart, upgrade), otherwise attaches and pins a new link. Returns the mode
    /// used (None: an existing link was updated).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Option<XdpMode>, DataplaneError> {
        let ifindex = ifindex(iface)?;
        let link_pin = self.pin_dir.join(format!("link_{iface}"));
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROG_BALANCER)
            .ok_or(DataplaneError::StubObject)?
            .try_into()?;
        let used = if link_pin.exists() {
            let pinned = PinnedLink::from_pin(&link_pin).map_err(|e| DataplaneError::Link(e.to_string()))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| DataplaneError::Link(e.to_string()))?;
            prog.attach_to_link(link)?;
            info!(iface, "program replaced in the pinned link (bpf_link_update)");
            None
        } else {
            let try_mode = |prog: &mut Xdp, m: XdpMode| {
                prog.attach(iface, m).map_err(|source| DataplaneError::Attach {
                    iface: iface.into(),
                    mode: m,
                    source,
                })
            };
            let (link_id, used) = match mode {
                AttachMode::Native => (try_mode(prog, XdpMode::Driver)?, XdpMode::Driver),
                AttachMode::Generic => (try_mode(prog, XdpMode::Skb)?, XdpMode::Skb),
                AttachMode::Auto => match try_mode(prog, XdpMode::Driver) {
                    Ok(l) => (l, XdpMode::Driver),
                    Err(e) => {
                        warn!("{e}; falling back to generic XDP (slower: runs after the driver allocated an skb)");
                        (try_mode(prog, XdpMode::Skb)?, XdpMode::Skb)
                    }
                },
            };
            let link = prog.take_link(link_id)?;
            let fd = FdLink::try_from(link).map_err(|e| DataplaneError::Link(e.to_string()))?;
            let pinned = fd.pin(&link_pin).map_err(|e| DataplaneError::Link(e.to_string()))?;
            self.links.push((iface.to_string(), pinned));
            info!(iface, ?used, "attached");
            Some(used)
        };
        let mut tx: DevMapHash<&mut MapData> = self.map_mut(MAP_TX_PORTS)?;
        tx.insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::TxPort(e.to_string()))?;
        Ok(used)
    }

    /// Performs the reconciler's writes, in order.
    pub fn execute(&mut self, ops: &[Op]) -> Result<(), DataplaneError> {
        for op in ops {
            match op {
                Op::Config(c) => {
                    let mut m: Array<&mut MapData, Config> = self.map_mut(MAP_CONFIG)?;
                    m.set(0, c, 0).map_err(map_err(MAP_CONFIG))?;
                }
                Op::Backend { id, value, fresh } => {
                    if *fresh {
                        let mut hops: Array<&mut MapData, NextHop> = self.map_mut(MAP_NEXTHOPS)?;
                        hops.set(*id, NextHop::default(), 0).map_err(map_err(MAP_NEXTHOPS))?;
                    }
                    let mut m: Array<&mut MapData, Backend> = self.map_mut(MAP_BACKENDS)?;
                    m.set(*id, value, 0).map_err(map_err(MAP_BACKENDS))?;
                    if *fresh {
                        // A new backend on this id: no flow of the old one counts for it.
                        self.loads.reset(*id);
                    }
                }
                Op::Table { id, slots } => {
                    self.tables.write(*id, slots)?;
                    // The table is not in use yet: every CPU starts its sequence at slot 0.
                    let mut cursors: PerCpuArray<&mut MapData, u32> = self.map_mut(lb_common::MAP_RR_CURSORS)?;
                    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io(e))?;
                    let zeros = aya::maps::PerCpuValues::try_from(vec![0u32; cpus])
                        .map_err(|e| DataplaneError::Io(std::io::Error::other(e)))?;
                    cursors.set(*id, zeros, 0).map_err(map_err(lb_common::MAP_RR_CURSORS))?;
                }
                Op::Weight { id, weight } => self.loads.set_weight(*id, *weight),
                Op::Vip(key, info) => {
                    let mut m: HashMap<&mut MapData, VipKey, VipInfo> = self.map_mut(MAP_VIPS)?;
                    m.insert(key, info, 0).map_err(map_err(MAP_VIPS))?;
                }
                Op::RemoveVip(key) => {
                    let mut m: HashMap<&mut MapData, VipKey, VipInfo> = self.map_mut(MAP_VIPS)?;
                    let _ = m.remove(key);
                }
                Op::AbRule {
                    prefix_len,
                    key,
                    insert,
                } => {
                    let mut m: aya::maps::lpm_trie::LpmTrie<&mut MapData, lb_common::AbKey, u32> =
                        self.map_mut(MAP_AB_RULES)?;
                    let k = aya::maps::lpm_trie::Key::new(*prefix_len, *key);
                    if *insert {
                        m.insert(&k, 1, 0).map_err(map_err(MAP_AB_RULES))?;
                    } else {
                        let _ = m.remove(&k);
                    }
                }
                Op::Filter(word, bits) => {
                    let mut m: Array<&mut MapData, u64> = self.map_mut(MAP_VIP_FILTER)?;
                    m.set(*word, bits, 0).map_err(map_err(MAP_VIP_FILTER))?;
                }
            }
        }
        Ok(())
    }

    /// What the maps hold, for an agent adopting them: the data path's own truth, whatever
    /// the state file says. Tables are those a VIP names (current and next).
    pub fn snapshot(&self, ring_size: u32) -> Result<crate::state::MapContents, DataplaneError> {
        let vips_map: HashMap<&MapData, VipKey, VipInfo> = self.map(MAP_VIPS)?;
        let vips = vips_map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MAP_VIPS))?;
        let backends_map: Array<&MapData, Backend> = self.map(MAP_BACKENDS)?;
        let mut backends = std::collections::BTreeMap::new();
        for id in 1..backends_map.len() {
            let b = backends_map.get(&id, 0).map_err(map_err(MAP_BACKENDS))?;
            if b.state != lb_common::BACKEND_UNSET {
                backends.insert(id, b);
            }
        }
        let filter_map: Array<&MapData, u64> = self.map(MAP_VIP_FILTER)?;
        let filter = (0..filter_map.len())
            .map(|i| filter_map.get(&i, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MAP_VIP_FILTER))?;
        let ab_map: aya::maps::lpm_trie::LpmTrie<&MapData, lb_common::AbKey, u32> = self.map(MAP_AB_RULES)?;
        let ab_rules = ab_map
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MAP_AB_RULES))?;
        let config_map: Array<&MapData, Config> = self.map(MAP_CONFIG)?;
        let config = config_map.get(&0, 0).map_err(map_err(MAP_CONFIG))?;
        let mut tables = std::collections::BTreeMap::new();
        for (_, info) in &vips {
            for id in [info.table_current, info.table_next] {
                if id != 0 && !tables.contains_key(&id) {
                    tables.insert(id, self.tables.read(id, ring_size)?);
                }
            }
        }
        Ok(crate::state::MapContents {
            config: (config.ring_size != 0).then_some(config),
            vips,
            backends,
            filter,
            ab_rules,
            tables,
        })
    }

    /// Slots of table `id` as the kernel holds them (for adoption after a restart).
    pub fn read_table(&self, id: u32, ring_size: u32) -> Result<Vec<u32>, DataplaneError> {
        self.tables.read(id, ring_size)
    }

    /// Backend `id` as the kernel holds it.
    pub fn read_backend(&self, id: u32) -> Result<Backend, DataplaneError> {
        let m: Array<&MapData, Backend> = self.map(MAP_BACKENDS)?;
        m.get(&id, 0).map_err(map_err(MAP_BACKENDS))
    }

    /// The kernel's table memory, for the reconciler to read written tables back from
    /// instead of keeping copies.
    pub fn table_store(&self) -> std::sync::Arc<dyn crate::state::TableStore> {
        self.tables.clone()
    }

    /// Up to `limit` connection-table entries of VIP `vip_id`, and how many it has in all.
    pub fn flows(&self, vip_id: u32, limit: usize) -> Result<(Vec<(FlowKey, Flow)>, usize), DataplaneError> {
        let heads = ReadMapping::<Heads>::of(&self.ebpf, MAP_FLOW_HEADS)?;
        let ways = ReadMapping::<FlowWays>::of(&self.ebpf, MAP_FLOWS)?;
        let mut out = Vec::new();
        let mut total = 0;
        for (h, w) in heads.entries().zip(ways.entries()) {
            for e in h.used(&w).filter(|e| e.flow.vip_id == vip_id) {
                total += 1;
                if out.len() < limit {
                    out.push((e.key, e.flow));
                }
            }
        }
        Ok((out, total))
    }

    /// The connection-table entry of one flow, if any.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>, DataplaneError> {
        let heads: Array<&MapData, Heads> = self.map(MAP_FLOW_HEADS)?;
        let ways: Array<&MapData, FlowWays> = self.map(MAP_FLOWS)?;
        let slot = conntrack::slot(key, heads.len() - 1);
        let head = heads.get(&slot.index, 0).map_err(map_err(MAP_FLOW_HEADS))?;
        let ways = ways.get(&slot.index, 0).map_err(map_err(MAP_FLOWS))?;
        Ok(head.find(&ways, key, slot.tag).map(|w| ways.ways[w].flow))
    }

    /// Live flows per backend id and per VIP id (see [`FlowScan::live_flows`]).
    pub fn live_flows(&self, tcp_idle: Duration, udp_idle: Duration) -> Result<LiveFlows, DataplaneError> {
        Ok(self.flow_scan()?.live_flows(tcp_idle, udp_idle))
    }

    /// A read-only view of the connection table that lives on its own: a scan of a large
    /// table runs on it without the agent's lock (API changes and health go on meanwhile).
    pub fn flow_scan(&self) -> Result<FlowScan, DataplaneError> {
        FlowScan::of(&self.ebpf)
    }

    /// What a least-conn correction round needs, to run without the agent's lock: its own
    /// mappings of the connection table and of BACKEND_LOAD.
    pub fn load_scan(&self) -> Result<(FlowScan, LoadMemory), DataplaneError> {
        Ok((FlowScan::of(&self.ebpf)?, LoadMemory::of(&self.ebpf)?))
    }

    /// The agent exits (SIGTERM, SIGINT): program, links and maps stay pinned and keep
    /// forwarding; the next agent adopts them.
    pub fn release(mut self) {
        self.remove_on_drop = false;
        info!(pin_dir = %self.pin_dir.display(), "data path left attached and pinned for the next agent");
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::StubObject)?;
        T::try_from(map).map_err(map_err(name))
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map(name).ok_or(DataplaneError::StubObject)?;
        T::try_from(map).map_err(map_err(name))
    }

    fn per_cpu_sum(&self, name: &'static str, index: u32) -> Result<Counters, DataplaneError> {
        let map: PerCpuArray<&MapData, Counters> = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::StubObject)?
            .try_into()
            .map_err(map_err(name))?;
        Ok(map
            .get(&index, 0)
            .map_err(map_err(name))?
            .iter()
            .fold(Counters::default(), |a, c| a.add(*c)))
    }

    pub fn vip_counters(&self, vip_id: u32) -> Result<Counters, DataplaneError> {
        self.per_cpu_sum(MAP_VIP_STATS, vip_id)
    }

    pub fn backend_counters(&self, backend_id: u32) -> Result<Counters, DataplaneError> {
        self.per_cpu_sum(MAP_BACKEND_STATS, backend_id)
    }

    /// The flood guard's decisions on new flows, summed over CPUs, by name
    /// (lb_common::FloodGuard::NAMES).
    pub fn flood_guard(&self) -> Result<Vec<(&'static str, u64)>, DataplaneError> {
        let name = lb_common::MAP_FLOOD_GUARD;
        let map: PerCpuArray<&MapData, lb_common::FloodGuard> = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::StubObject)?
            .try_into()
            .map_err(map_err(name))?;
        let sum = map
            .get(&0, 0)
            .map_err(map_err(name))?
            .iter()
            .fold(lb_common::FloodGuard::default(), |a, c| a.add(*c));
        Ok(lb_common::FloodGuard::NAMES.into_iter().zip(sum.counters()).collect())
    }

    /// Every reason counter, summed over CPUs.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, DataplaneError> {
        let map: PerCpuArray<&MapData, u64> = self
            .ebpf
            .map(MAP_REASONS)
            .ok_or(DataplaneError::StubObject)?
            .try_into()
            .map_err(map_err(MAP_REASONS))?;
        Reason::ALL
            .iter()
            .map(|r| Ok((*r, map.get(&(*r as u32), 0).map_err(map_err(MAP_REASONS))?.iter().sum())))
            .collect()
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if !self.remove_on_drop {
            return;
        }
        for (iface, link) in self.links.drain(..) {
            let _ = link.unpin();
            info!(iface, "detached");
        }
        for name in PINNED {
            let _ = std::fs::remove_file(self.pin_dir.join(name));
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

/// Removes every pin under `pin_dir` and the directory: unpinning a link no process holds
/// detaches the program from its interface, and the maps go with the last reference.
/// Returns the names removed (links first).
pub fn remove_pins(pin_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    names.sort_by_key(|n| (!n.starts_with("link_"), n.clone()));
    for n in &names {
        std::fs::remove_file(pin_dir.join(n))?;
    }
    std::fs::remove_dir(pin_dir)?;
    Ok(names)
}

pub fn ifindex(iface: &str) -> Result<u32, DataplaneError> {
    let c = CString::new(iface).map_err(|_| DataplaneError::NoInterface(iface.into()))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DataplaneError::NoInterface(iface.into())),
        i => Ok(i),
    }
}
