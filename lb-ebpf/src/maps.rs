//! The balancer's maps. Layouts and names live in lb-common; sizes here are defaults the
//! agent overrides at load time.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    AbKey, Backend, BackendLoad, Config, Counters, DEFAULT_MAX_AB_RULES, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_FRAGS, DEFAULT_MAX_TABLES, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, FloodGuard, FragKey, FragNat,
    MAX_TX_PORTS, NextHop, REASON_COUNT, VIP_FILTER_WORDS, VipInfo, VipKey,
    conntrack::{FlowWays, Heads, RevWays, buckets},
};

#[map(name = "VIPS_V1")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map(name = "VIP_FILTER_V1")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

#[map(name = "BACKENDS_V1")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Live flows and effective weight per backend id, for least-conn VIPs (see flow.rs:
/// atomic adds, no locks). Memory-mappable: the agent writes weights and corrections in place.
#[map(name = "BACKEND_LOAD_V1")]
pub static BACKEND_LOAD: Array<BackendLoad> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_MMAPABLE);

/// Round-robin cursor per table id, per CPU: the next slot of the table's sequence.
#[map(name = "RR_CURSORS_V1")]
pub static RR_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_TABLES, 0);

/// Next hop per backend id, filled by the data path itself (see fib.rs).
#[map(name = "NEXTHOPS_V2")]
pub static NEXTHOPS: Array<NextHop> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Memory-mappable: the agent writes a whole table (65537 slots) through a mapping
/// instead of one syscall per slot, so a flip takes microseconds, not tens of ms.
#[map(name = "TABLES_V2")]
pub static TABLES: Array<u32> = Array::with_max_entries(DEFAULT_MAX_TABLES * DEFAULT_RING_SIZE, BPF_F_MMAPABLE);

/// Connection tables (see lb_common::conntrack): set-associative arrays, memory-mappable so
/// the agent lists flows without a syscall per bucket.
#[map(name = "FLOW_HEADS_V2")]
pub static FLOW_HEADS: Array<Heads> = Array::with_max_entries(buckets(DEFAULT_MAX_FLOWS), BPF_F_MMAPABLE);

#[map(name = "FLOWS_V2")]
pub static FLOWS: Array<FlowWays> = Array::with_max_entries(buckets(DEFAULT_MAX_FLOWS), BPF_F_MMAPABLE);

#[map(name = "REV_HEADS_V2")]
pub static REV_HEADS: Array<Heads> = Array::with_max_entries(buckets(DEFAULT_MAX_FLOWS), BPF_F_MMAPABLE);

#[map(name = "NAT_REV_V3")]
pub static NAT_REV: Array<RevWays> = Array::with_max_entries(buckets(DEFAULT_MAX_FLOWS), BPF_F_MMAPABLE);

/// Bucket count - 1 of FLOWS and NAT_REV; the agent sets it at load time to match the
/// sizes it gives those maps (lb_common::GLOBAL_CONN_MASK).
#[unsafe(no_mangle)]
static CONN_MASK: u32 = buckets(DEFAULT_MAX_FLOWS) - 1;

#[inline(always)]
pub fn conn_mask() -> u32 {
    // SAFETY: a read of a constant the loader may have rewritten; volatile keeps the
    // compiler from folding the default in.
    unsafe { core::ptr::read_volatile(&CONN_MASK) }
}

#[map(name = "CONFIG_V1")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "VIP_STATS_V1")]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map(name = "BACKEND_STATS_V1")]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map(name = "FLOOD_GUARD_V1")]
pub static FLOOD_GUARD: PerCpuArray<FloodGuard> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "REASONS_V2")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// A/B client networks per VIP (value unused: a match sends the client to the next pool).
#[map(name = "AB_RULES_V1")]
pub static AB_RULES: LpmTrie<AbKey, u32> = LpmTrie::with_max_entries(DEFAULT_MAX_AB_RULES, 0);

#[map(name = "TX_PORTS_V1")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

#[map(name = "FRAGS_V1")]
pub static FRAGS: LruHashMap<FragKey, FragNat> = LruHashMap::with_max_entries(DEFAULT_MAX_FRAGS, 0);

/// [0]: the ICMP program (icmp.rs), tail-called with a request in Scratch::icmp.
#[map(name = "ICMP_PROGS_V1")]
pub static ICMP_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per-CPU room for the data path's larger temporaries (FIB parameters, the keys of the
/// NAT-port search): the whole program shares one 512-byte stack.
#[repr(C)]
pub struct Scratch {
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    pub reply: lb_common::FlowKey,
    pub client: lb_common::FlowKey,
    pub tuple: aya_ebpf::bindings::bpf_sock_tuple,
    /// What the tail-called ICMP program is asked to do (icmp::REQ_*) and the MTU to report.
    pub icmp_request: u32,
    pub icmp_mtu: u32,
    /// A first fragment's entry, written here (map memory) before the FRAGS insert.
    pub frag_key: FragKey,
    pub frag_nat: FragNat,
    pub vip_key: lb_common::VipKey,
    /// The packet's 5-tuple (parse::Packet::key).
    pub key: lb_common::FlowKey,
    /// The ICMP errors this CPU sent in the window `icmp_window` (icmp::within_budget).
    pub icmp_window: u32,
    pub icmp_sent: u32,
    /// Trace (trace.rs): this packet is traced; its last reason; its XDP action.
    pub trace: u32,
    pub trace_reason: u32,
    pub trace_action: u32,
}

#[map(name = "SCRATCH_V1")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU value, used by one program run at a time (XDP does not nest).
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
