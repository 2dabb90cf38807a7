//! Map names, keys and values shared by the XDP program and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding and a size assertion; byte order is in
//! the field name (`_be` = network order, stored exactly as it appears on the wire).

use core::mem::size_of;

/// Map names: both sides spell them through these constants. A layout change bumps the
/// suffix so an old pinned map is never read with the new layout.
pub const MAP_VIPS: &str = "VIPS_V1";
pub const MAP_BACKENDS: &str = "BACKENDS_V1";
pub const MAP_TABLES: &str = "TABLES_V2";
pub const MAP_FLOWS: &str = "FLOWS_V2";
/// V3: NextHop carries the egress MTU.
pub const MAP_NAT_REV: &str = "NAT_REV_V3";
/// Bucket headers of FLOWS and NAT_REV (lb_common::conntrack::Heads).
/// V2: a used way's tag carries conntrack::TAG_CONFIRMED.
pub const MAP_FLOW_HEADS: &str = "FLOW_HEADS_V2";
pub const MAP_REV_HEADS: &str = "REV_HEADS_V2";
/// Per-CPU flood-guard state and counters ([`FloodGuard`]).
pub const MAP_FLOOD_GUARD: &str = "FLOOD_GUARD_V1";
/// Global of the XDP program: new flows per CPU per guard window (about a second) before
/// the flood guard stops evicting confirmed flows; u32::MAX derives it from the table size.
pub const GLOBAL_FLOW_BUDGET: &str = "FLOW_BUDGET";
/// Global of the XDP program: 1 = accept a NAT reply (or an ICMP error about a NAT flow
/// sent to the SNAT address) only when it arrives on the interface the flow leaves by
/// towards its backend; set by the agent when it runs on more than one interface.
pub const GLOBAL_REPLY_IFACE_CHECK: &str = "REPLY_IFACE_CHECK";
/// Global of the ICMP program: ICMP errors the balancer sends itself (fragmentation
/// needed / packet too big, time exceeded) per CPU per window of about a second.
pub const GLOBAL_ICMP_BUDGET: &str = "ICMP_BUDGET";
/// Global of the XDP and ICMP programs: 1 = trace the decisions about packets whose client
/// or VIP address is in TRACE_FILTER (aya-log, debug level) through the trace program;
/// 0 (the default) leaves the trace out of the verified program altogether.
pub const GLOBAL_TRACE: &str = "TRACE";
pub const MAP_TRACE_FILTER: &str = "TRACE_FILTER_V1";
pub const DEFAULT_MAX_TRACE_PREFIXES: u32 = 64;
/// [0]: the trace program, tail-called after a traced packet's verdict.
pub const MAP_TRACE_PROGS: &str = "TRACE_PROGS_V1";
pub const PROG_TRACE: &str = "veer_trace";
/// Global of the XDP program: bucket count - 1 of FLOWS and NAT_REV (set at load time).
pub const GLOBAL_CONN_MASK: &str = "CONN_MASK";
pub const MAP_VIP_STATS: &str = "VIP_STATS_V1";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS_V1";
/// V2: room for 32 reasons.
pub const MAP_REASONS: &str = "REASONS_V2";
pub const MAP_CONFIG: &str = "CONFIG_V1";
pub const MAP_TX_PORTS: &str = "TX_PORTS_V1";
pub const MAP_VIP_FILTER: &str = "VIP_FILTER_V1";
/// V2: NextHop carries the egress MTU.
pub const MAP_NEXTHOPS: &str = "NEXTHOPS_V2";
pub const MAP_AB_RULES: &str = "AB_RULES_V1";
/// Live flows and effective weight per backend id ([`BackendLoad`]), for least-conn.
/// Memory-mappable: the agent writes weights and corrects counts in place.
pub const MAP_BACKEND_LOAD: &str = "BACKEND_LOAD_V1";
/// Per CPU, per table id: the round-robin cursor (next slot of the table's sequence).
pub const MAP_RR_CURSORS: &str = "RR_CURSORS_V1";
pub const DEFAULT_MAX_AB_RULES: u32 = 4096;
pub const MAP_BENCH_PACKET: &str = "BENCH_PACKET_V1";
pub const MAP_BENCH_PROGS: &str = "BENCH_PROGS_V1";
pub const MAP_BENCH_KEYS: &str = "BENCH_KEYS_V1";
/// Room in BENCH_KEYS: the established path over many flows rotates through up to this many.
pub const BENCH_MAX_KEYS: u32 = 65_536;

/// Program names in the object file.
pub const PROG_BALANCER: &str = "veer_xdp";
pub const PROG_PASS: &str = "veer_pass";
/// ICMP handling, tail-called by the balancer through ICMP_PROGS[0] (its own stack and
/// verifier budget); the loader puts it there.
pub const PROG_ICMP: &str = "veer_icmp";
pub const MAP_ICMP_PROGS: &str = "ICMP_PROGS_V1";
/// Fragments of NATed datagrams: how the first fragment was translated, for the later ones.
pub const MAP_FRAGS: &str = "FRAGS_V1";
pub const DEFAULT_MAX_FRAGS: u32 = 8192;
/// Bench-only programs carried in the balancer's object (see `cargo xtask bench`).
pub const PROG_BENCH_HARNESS: &str = "veer_bench_harness";
pub const PROG_BENCH_FLOOR: &str = "veer_bench_floor";

/// Default map sizes; the agent may override them at load time.
pub const DEFAULT_MAX_VIPS: u32 = 256;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Maglev table size M: prime, so every backend's permutation visits every slot.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Tables resident at once (id 0 is "no table"): two pools per VIP plus spares for flips.
pub const DEFAULT_MAX_TABLES: u32 = 16;
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
pub const MAX_TX_PORTS: u32 = 64;

/// VIP_FILTER: a bitmap over hashed destination addresses (VIPs and SNAT addresses), so
/// traffic for anything else passes after one array read instead of a hash lookup.
pub const VIP_FILTER_WORDS: u32 = 1024;

/// Word index and bit mask of an address in VIP_FILTER.
#[inline(always)]
pub const fn vip_filter_slot(addr_be: &[u32; 4]) -> (u32, u64) {
    let h = (addr_be[0] ^ addr_be[1] ^ addr_be[2] ^ addr_be[3]).wrapping_mul(0x9e37_79b1);
    let bit = h >> 16; // 16 bits: 1024 words x 64 bits
    (bit >> 6, 1u64 << (bit & 63))
}

/// Basis points of the split hash space (100% = 10000).
pub const SPLIT_SCALE: u32 = 10_000;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `VipInfo.flags`
pub const VIP_F_SPLIT_BY_CLIENT: u32 = 1 << 0;
/// Hash only the client address into the Maglev table (source-hash affinity).
pub const VIP_F_HASH_SOURCE: u32 = 1 << 1;
/// The VIP has A/B client-network rules in AB_RULES: a matching client goes to the next pool.
pub const VIP_F_AB_RULES: u32 = 1 << 2;
/// Round robin: new flows take the next slot of the pool's table, a smooth weighted
/// sequence walked by a per-CPU cursor (RR_CURSORS), instead of their hash slot.
pub const VIP_F_ROUND_ROBIN: u32 = 1 << 3;
/// Least connections: of two candidate slots (two hashes of the flow) in the pool's table,
/// the backend with fewer live flows per unit of weight (BACKEND_LOAD) takes the flow, and
/// its flows are counted there.
pub const VIP_F_LEAST_CONN: u32 = 1 << 4;
/// Direct server return (L2): a client packet keeps its addresses and ports; only its
/// destination MAC becomes the backend's (its source MAC the egress interface's), and the
/// backend, holding the VIP on a loopback, answers the client itself. No NAT port, no
/// reverse entry; a TCP segment that misses the connection table is scheduled like a new
/// flow (it may come from another balancer node after an ECMP change).
pub const VIP_F_DSR: u32 = 1 << 5;

/// `Flow.flags` / `NatRev.flags`
/// The first FIN or RST of the flow was seen (counted in `closed_flows`).
pub const FLOW_F_CLOSED: u16 = 1 << 0;
/// The backend answered (counted in `answered_flows`).
pub const FLOW_F_ANSWERED: u16 = 1 << 1;
/// NatRev: the flow was opened by a SYN (not a bare ACK): a reset of it counts.
pub const FLOW_F_SYN: u16 = 1 << 2;
/// Flow: counted in its backend's `BackendLoad.live` (a least-conn VIP's flow); the count
/// goes down once, when the flow is seen closing or its entry is overwritten.
pub const FLOW_F_COUNTED: u16 = 1 << 3;
/// Flow: of a DSR VIP (forwarded by MAC only; it has no reverse entry).
pub const FLOW_F_DSR: u16 = 1 << 4;

/// FRAGS key: a datagram's fragments share addresses, protocol and IP id (IPv4: 16 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub src_be: [u32; 4],
    pub dst_be: [u32; 4],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragKey>() == 40);

/// FRAGS value: the first fragment's new addresses and next hop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragNat {
    pub src_be: [u32; 4],
    pub dst_be: [u32; 4],
    pub hop: NextHop,
    /// Coarse time of the first fragment (units of 2^20 ns); later ones are taken for
    /// about a second after it.
    pub stamp: u32,
    /// A NAT reply (counted under the reply reasons).
    pub reply: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragNat>() == 64);

/// LPM trie data of an A/B rule: the VIP, then the client network. The prefix length
/// covers `vip_id` (32 bits) plus the network's prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbKey {
    pub vip_id_be: u32,
    pub addr_be: [u32; 4],
}
const _: () = assert!(size_of::<AbKey>() == 20);

/// TRACE_FILTER key: an LPM trie over (family, address), so one prefix list matches client
/// addresses and VIPs of either family; the prefix length covers the 32-bit family word
/// plus the network's prefix. Only with the trace on (GLOBAL_TRACE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceKey {
    /// FAMILY_V4 or FAMILY_V6, big-endian.
    pub family_be: u32,
    pub addr_be: [u32; 4],
}
const _: () = assert!(size_of::<TraceKey>() == 20);

/// `Backend.state`: 0 means the slot is unset.
pub const BACKEND_UNSET: u8 = 0;
/// Takes new flows and keeps its established ones.
pub const BACKEND_READY: u8 = 1;
/// Takes no new flows, keeps its established ones (lossless switch).
pub const BACKEND_DRAIN: u8 = 2;
/// Takes no new flows and its established flows are re-chosen (maint or failed health).
pub const BACKEND_DOWN: u8 = 3;

/// A service address: `addr_be` holds the IPv4 address in word 0 (rest zero) or the
/// IPv6 address, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index into VIP_STATS.
    pub vip_id: u32,
    /// Table id of the active pool (0: pool empty, new flows are dropped and counted).
    pub table_current: u32,
    /// Table id of the pool that takes `split_bp` of new flows (0: none).
    pub table_next: u32,
    /// Share of new flows, in basis points, that go to `table_next`.
    pub split_bp: u32,
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<VipInfo>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub family: u8,
    pub state: u8,
    pub vip_id: u32,
}
const _: () = assert!(size_of::<Backend>() == 24);

/// BACKEND_LOAD value: what least-conn compares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// Live flows, as a wrapping counter: the data path adds 1 per counted new flow and
    /// subtracts 1 when one closes or is evicted (atomic adds); the agent adds corrections
    /// from its table scans. Read through [`BackendLoad::flows`].
    pub live: u64,
    /// Effective weight (config weight x slow-start percent), written by the agent.
    pub weight: u32,
    /// Written by the agent from its scans, subtracted from `live`: counted flows gone idle
    /// (past agent.tcp_idle / udp_idle), less live flows the data path did not count
    /// (opened before the VIP was least-conn), plus any drift of `live` it found.
    pub offset: i32,
}
const _: () = assert!(size_of::<BackendLoad>() == 16);

impl BackendLoad {
    /// Live flows (`live - offset`), never negative (a transient underflow reads as 0),
    /// capped so that a product with a weight fits in 64 bits.
    #[inline(always)]
    pub const fn flows(&self) -> u64 {
        let v = (self.live as i64).wrapping_sub(self.offset as i64);
        if v < 0 {
            0
        } else if v > u32::MAX as i64 {
            u32::MAX as u64
        } else {
            v as u64
        }
    }
}

/// A connection's 5-tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_be: [u32; 4],
    pub dst_be: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Connection-table value: the backend a client flow is pinned to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    /// VIP_STATS index, so established packets need no VIP lookup.
    pub vip_id: u32,
    /// Source port the balancer uses towards the backend (NAT mode).
    pub snat_port_be: u16,
    /// FLOW_F_*
    pub flags: u16,
}
const _: () = assert!(size_of::<Flow>() == 12);

/// A next hop as bpf_fib_lookup found it, cached by the data path (per backend in
/// NEXTHOPS, per client in the reverse-NAT entry) and refreshed about once a second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// Egress interface; 0 = nothing cached.
    pub ifindex: u32,
    /// Coarse time of the lookup, in units of 2^30 ns (about a second).
    pub stamp: u32,
    /// The egress interface's MTU as the lookup reported it (0: unknown).
    pub mtu: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<NextHop>() == 24);

/// Reverse-NAT value, keyed by the reply's 5-tuple (backend -> balancer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatRev {
    pub client_be: [u32; 4],
    pub vip_be: [u32; 4],
    pub client_port_be: u16,
    pub vip_port_be: u16,
    pub vip_id: u32,
    pub backend_id: u32,
    /// Next hop towards the client.
    pub hop: NextHop,
    /// FLOW_F_* as seen from the backend side.
    pub flags: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<NatRev>() == 72);

/// CONFIG[0]: balancer-wide settings written by the agent before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Balancer's own IPv4 address used as NAT source (0: IPv4 NAT disabled).
    pub snat_v4_be: u32,
    /// Maglev table size M, equal for every table.
    pub ring_size: u32,
    pub snat_v6_be: [u32; 4],
}
const _: () = assert!(size_of::<Config>() == 24);

/// BENCH_PACKET[0]: the packet the bench harness restores before every run.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchPacket {
    pub len: u32,
    /// Offset of a 32-bit word overwritten with a run counter (0: none), so every run is a
    /// new flow: point it at the client address.
    pub vary_offset: u32,
    pub counter: u32,
    /// Offset of a 16-bit word overwritten with the counter's low half (0: none): the client
    /// port, so NAT source ports do not run out over a million new flows.
    pub vary_port_offset: u32,
    /// Non-zero: the flows come from BENCH_KEYS[counter % keys] instead (client address at
    /// `vary_offset`, port at `vary_port_offset`): a fixed set of flows in rotation.
    pub keys: u32,
    pub data: [u8; 128],
}
const _: () = assert!(size_of::<BenchPacket>() == 148);

/// Per-CPU counters kept per VIP and per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client -> backend packets and IP bytes.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Flows whose first FIN or RST was seen (TCP).
    pub closed_flows: u64,
    /// New flows whose backend answered at least once.
    pub answered_flows: u64,
    /// TCP RSTs sent by the backend on flows it had answered or that a SYN opened (a reset
    /// of a flow a bare ACK opened, which any client can send, is not counted): a passive
    /// health signal.
    pub backend_resets: u64,
    /// Backend -> client packets and IP bytes.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}
const _: () = assert!(size_of::<Counters>() == 64);

impl Counters {
    /// Sum of two counter sets (per-CPU values are summed with this).
    pub const fn add(self, o: Counters) -> Counters {
        Counters {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
            new_flows: self.new_flows + o.new_flows,
            closed_flows: self.closed_flows + o.closed_flows,
            answered_flows: self.answered_flows + o.answered_flows,
            backend_resets: self.backend_resets + o.backend_resets,
            reply_packets: self.reply_packets + o.reply_packets,
            reply_bytes: self.reply_bytes + o.reply_bytes,
        }
    }

    /// Flows opened and not yet seen closing, from the counters alone. UDP flows never
    /// close, and a TCP flow evicted without FIN/RST stays counted: an upper bound. The
    /// agent reports live flows from the connection table instead (`Dataplane::live_flows`).
    pub const fn opened_not_closed(&self) -> u64 {
        self.new_flows.saturating_sub(self.closed_flows)
    }
}

/// FLOOD_GUARD[0], per CPU: the new-flow budget's window and, as counters, how every new
/// flow found its connection-table way (see docs/decisions.md, "SYN floods").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodGuard {
    /// Current window: stamp >> 10 (2^30 ns, about a second).
    pub window: u32,
    /// New flows written in this window on this CPU.
    pub inserts: u32,
    /// New flows by how they got their way, indexed by conntrack::TAKE_*: a free way, an
    /// unconfirmed flow evicted, a confirmed flow evicted (within the budget, or idle past
    /// the hold), and refused (every way held a confirmed flow; dropped as `drop_flood`).
    pub taken: [u64; 4],
    /// New flows that arrived while this CPU was over its budget.
    pub over_budget: u64,
}
const _: () = assert!(size_of::<FloodGuard>() == 48);

impl FloodGuard {
    /// Counter names (status and metrics), in the order of [`FloodGuard::counters`].
    pub const NAMES: [&'static str; 5] = [
        "new_flow_free_way",
        "new_flow_evicted_unconfirmed",
        "new_flow_evicted_confirmed",
        "new_flow_refused",
        "new_flow_over_budget",
    ];

    pub const fn counters(&self) -> [u64; 5] {
        [
            self.taken[0],
            self.taken[1],
            self.taken[2],
            self.taken[3],
            self.over_budget,
        ]
    }

    /// Per-CPU values summed (the window fields are per CPU and meaningless summed).
    pub const fn add(self, o: FloodGuard) -> FloodGuard {
        FloodGuard {
            window: 0,
            inserts: 0,
            taken: [
                self.taken[0] + o.taken[0],
                self.taken[1] + o.taken[1],
                self.taken[2] + o.taken[2],
                self.taken[3] + o.taken[3],
            ],
            over_budget: self.over_budget + o.over_budget,
        }
    }
}

/// Why a packet left the program the way it did: indices into the REASONS per-CPU array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed to the stack.
    PassNotIp = 0,
    /// IP traffic for no VIP and no NAT flow: passed untouched.
    PassNotVip = 1,
    /// Headers shorter than they claim: dropped.
    DropTruncated = 2,
    /// A later fragment to a VIP whose first fragment was not seen (or came more than a
    /// second earlier): dropped (see docs/decisions.md, "Fragments").
    DropFragment = 3,
    /// The VIP's selected pool has no usable backend.
    DropNoBackend = 4,
    /// No free NAT source port for this client and backend.
    DropNoPort = 5,
    /// Next hop not resolved yet: rewritten packet handed to the stack to resolve it.
    PassNoNeigh = 6,
    /// FIB lookup failed (no route, forwarding off): dropped.
    DropFib = 7,
    /// Forwarded out of the ingress interface.
    Tx = 8,
    /// Forwarded through the devmap to another interface.
    Redirect = 9,
    /// A NAT reply rewritten back to VIP -> client, out of the ingress interface.
    TxReply = 10,
    /// IPv4 header with a bad version/length field, or IPv6 with a bad version: dropped.
    DropMalformed = 11,
    /// A connection-table insert failed.
    DropFlowInsert = 12,
    /// Egress interface not in the devmap.
    DropNoTxPort = 13,
    /// A NAT reply rewritten back to VIP -> client, through the devmap.
    RedirectReply = 14,
    /// A new flow over the flood guard's budget whose bucket held only confirmed flows:
    /// dropped rather than evicting one (see docs/decisions.md, "SYN floods").
    DropFlood = 15,
    /// An ICMP/ICMPv6 error about a NAT flow (destination unreachable, fragmentation
    /// needed, packet too big, time exceeded), translated and forwarded to the flow's
    /// backend or client.
    IcmpTranslated = 16,
    /// Larger than the egress MTU with DF (always, for IPv6): answered with ICMP
    /// fragmentation-needed / packet-too-big, sent back out of the ingress interface.
    TxTooBig = 17,
    /// TTL / hop limit would expire here: answered with ICMP time-exceeded.
    TxTimeExceeded = 18,
    /// Larger than the egress MTU without DF: rewritten and handed to the stack, which
    /// fragments it.
    PassTooBig = 19,
    /// A later fragment of a NATed datagram, translated like its first fragment.
    Fragment = 20,
    /// A NAT reply (or an ICMP error about a NAT flow, to the SNAT address) that arrived on
    /// another interface than the one its flow leaves by towards the backend: a spoofed
    /// reply from the client side of a two-armed balancer. Dropped (see docs/decisions.md,
    /// "Reply interface").
    DropReplyIface = 21,
    /// A packet the balancer would answer with an ICMP error (fragmentation needed /
    /// packet too big, time exceeded) beyond the per-CPU budget of such errors
    /// (lb_common::GLOBAL_ICMP_BUDGET per about a second): dropped unanswered.
    DropIcmpLimit = 22,
}

pub const REASON_COUNT: u32 = 32;

impl Reason {
    pub const ALL: [Reason; 23] = [
        Reason::PassNotIp,
        Reason::PassNotVip,
        Reason::DropTruncated,
        Reason::DropFragment,
        Reason::DropNoBackend,
        Reason::DropNoPort,
        Reason::PassNoNeigh,
        Reason::DropFib,
        Reason::Tx,
        Reason::Redirect,
        Reason::TxReply,
        Reason::DropMalformed,
        Reason::DropFlowInsert,
        Reason::DropNoTxPort,
        Reason::RedirectReply,
        Reason::DropFlood,
        Reason::IcmpTranslated,
        Reason::TxTooBig,
        Reason::TxTimeExceeded,
        Reason::PassTooBig,
        Reason::Fragment,
        Reason::DropReplyIface,
        Reason::DropIcmpLimit,
    ];

    /// Stable name used in status output and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotVip => "pass_not_vip",
            Reason::DropTruncated => "drop_truncated",
            Reason::DropFragment => "drop_fragment",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropNoPort => "drop_no_nat_port",
            Reason::PassNoNeigh => "pass_no_neigh",
            Reason::DropFib => "drop_fib",
            Reason::Tx => "tx",
            Reason::Redirect => "redirect",
            Reason::TxReply => "tx_reply",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropFlowInsert => "drop_flow_insert",
            Reason::DropNoTxPort => "drop_no_tx_port",
            Reason::RedirectReply => "redirect_reply",
            Reason::DropFlood => "drop_flood",
            Reason::IcmpTranslated => "icmp_translated",
            Reason::TxTooBig => "tx_too_big",
            Reason::TxTimeExceeded => "tx_time_exceeded",
            Reason::PassTooBig => "pass_too_big",
            Reason::Fragment => "fragment",
            Reason::DropReplyIface => "drop_reply_iface",
            Reason::DropIcmpLimit => "drop_icmp_limit",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), contain only integers and have no implicit padding
    // (checked by the size assertions above).
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for BackendLoad {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for NatRev {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for AbKey {}
    unsafe impl aya::Pod for TraceKey {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for BenchPacket {}
    unsafe impl aya::Pod for FloodGuard {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragNat {}
    unsafe impl aya::Pod for crate::conntrack::Heads {}
    unsafe impl aya::Pod for crate::conntrack::FlowWays {}
    unsafe impl aya::Pod for crate::conntrack::RevWays {}
}
