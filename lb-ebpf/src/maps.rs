//! The balancer's maps. Layouts and names live in lb-common; sizes here are defaults the
//! agent overrides at load time.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    AbKey, Backend, BenchPacket, Config, Counters, DEFAULT_MAX_AB_RULES, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_TABLES, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, Flow, FlowKey, MAX_TX_PORTS, NatRev, NextHop,
    REASON_COUNT, VIP_FILTER_WORDS, VipInfo, VipKey,
};

#[map(name = "VIPS_V1")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map(name = "VIP_FILTER_V1")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

#[map(name = "BACKENDS_V1")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Next hop per backend id, filled by the data path itself (see fib.rs).
#[map(name = "NEXTHOPS_V1")]
pub static NEXTHOPS: Array<NextHop> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Memory-mappable: the agent writes a whole table (65537 slots) through a mapping
/// instead of one syscall per slot, so a flip takes microseconds, not tens of ms.
#[map(name = "TABLES_V2")]
pub static TABLES: Array<u32> = Array::with_max_entries(DEFAULT_MAX_TABLES * DEFAULT_RING_SIZE, BPF_F_MMAPABLE);

#[map(name = "FLOWS_V1")]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_COMMON_LRU);

#[map(name = "NAT_REV_V1")]
pub static NAT_REV: LruHashMap<FlowKey, NatRev> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_COMMON_LRU);

#[map(name = "CONFIG_V1")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "VIP_STATS_V1")]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map(name = "BACKEND_STATS_V1")]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map(name = "REASONS_V1")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// A/B client networks per VIP (value unused: a match sends the client to the next pool).
#[map(name = "AB_RULES_V1")]
pub static AB_RULES: LpmTrie<AbKey, u32> = LpmTrie::with_max_entries(DEFAULT_MAX_AB_RULES, 0);

#[map(name = "TX_PORTS_V1")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

#[map(name = "BENCH_PACKET_V1")]
pub static BENCH_PACKET: Array<BenchPacket> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_PROGS_V1")]
pub static BENCH_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
