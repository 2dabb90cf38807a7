//! Connection table and NAT source-port allocation, over the set-associative tables of
//! lb_common::conntrack.
//!
//! Concurrency (no locks; BPF has no fences and this object is built without BPF atomics):
//! - A writer clears a way's tag, writes the entry, then sets the tag. The established path
//!   re-reads the tag after copying the entry and takes the copy only if the tag is
//!   unchanged (seqlock style; sound on x86, whose loads and stores stay in order).
//! - The reverse (reply) path does not re-check: a reply racing the eviction of its own
//!   reverse entry can be rewritten with the new entry's addresses. That needs the victim,
//!   the least recently used way of its bucket, to be answering at that very instant.
//! - Two CPUs inserting different flows into one bucket in the same ~20 ns can pick the
//!   same way and interleave their stores (a key with another flow's value). Estimated at
//!   about once in 10^7 concurrent inserts into a 2^18-bucket table; a compare-and-swap
//!   claim of the tag (BPF ISA v3 atomics) would close it.
//! - The first packets of one flow on two CPUs at once both schedule it: same backend (same
//!   table, same hash) and same port (same tries), equal entries. (Round robin and
//!   least-conn may pick two backends there; the last entry written wins, and a least-conn
//!   count is one too high until the agent's next correction.)
//! - Least-conn live counts (BACKEND_LOAD) change by atomic adds only: +1 when a counted
//!   flow is recorded, -1 when it is first seen closing or its entry is overwritten while
//!   still open. Flows going idle are the agent's to take off (its scans correct the count).

use core::mem::{align_of, size_of};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    maps::Array,
    programs::XdpContext,
};
use lb_common::{
    BACKEND_DOWN, BACKEND_UNSET, Backend, FAMILY_V4, FLOW_F_ANSWERED, FLOW_F_CLOSED, FLOW_F_COUNTED, Flow, FlowKey,
    NatRev, PROTO_TCP, Reason,
    conntrack::{
        Choice, FlowEntry, HOLD_CONFIRMED, Heads, Keyed, RevEntry, TAG_CONFIRMED, TAKE_FREE, WAYS, Ways, age, link,
        slot,
    },
    hash::{SEED_SPLIT, finish, hash_flow},
};

use crate::{
    maps::{BACKEND_LOAD, BACKENDS, FLOW_HEADS, FLOWS, NAT_REV, REV_HEADS, conn_mask, scratch},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The coarse clock, in nanoseconds (cheap: no clock source read).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A bucket of FLOWS or NAT_REV: its header, its entries, its index and the key's tag.
pub struct Bucket<E: 'static> {
    pub head: &'static mut Heads,
    pub ways: &'static mut Ways<E>,
    pub index: u32,
    pub tag: u32,
}

impl<E: Keyed> Bucket<E> {
    #[inline(always)]
    fn find(&self, key: &FlowKey) -> Option<usize> {
        self.head.find(self.ways, key, self.tag)
    }
}

/// A client 5-tuple's FLOWS bucket.
#[inline(always)]
pub fn bucket(key: &FlowKey) -> Option<Bucket<FlowEntry>> {
    locate(&FLOW_HEADS, &FLOWS, key)
}

#[inline(always)]
fn locate<E>(heads: &Array<Heads>, ways: &Array<Ways<E>>, key: &FlowKey) -> Option<Bucket<E>> {
    let slot = slot(key, conn_mask());
    let (head, ways) = (heads.get_ptr_mut(slot.index)?, ways.get_ptr_mut(slot.index)?);
    // SAFETY: array value pointers, valid for the program's lifetime.
    Some(unsafe {
        Bucket {
            head: &mut *head,
            ways: &mut *ways,
            index: slot.index,
            tag: slot.tag,
        }
    })
}

/// An established flow, as [`established`] found it.
pub struct Established {
    /// The entry's value, for flag updates.
    pub flow: &'static mut Flow,
    /// A copy of it, read consistently.
    pub seen: Flow,
    pub backend: Backend,
    tag: &'static mut u32,
    key_tag: u32,
}

impl Established {
    /// The client closed the flow (FIN or RST): flag it, and let it give way like an
    /// unconfirmed flow.
    #[inline(always)]
    pub fn close(&mut self) {
        let flags = self.flow.flags;
        self.flow.flags = flags | FLOW_F_CLOSED;
        store(self.tag, &self.key_tag);
        if flags & (FLOW_F_COUNTED | FLOW_F_CLOSED) == FLOW_F_COUNTED {
            add_live(self.seen.backend_id, DOWN);
        }
    }
}

/// The established flow's backend, unless that backend is gone or down, or is no longer
/// a backend of the flow's VIP in the flow's family (its id was given to another backend):
/// then the flow is re-chosen (a `drain` backend keeps its flows). The flow is confirmed
/// here once its backend has answered and the client speaks again (`tcp_flags`: an ACK
/// without SYN; any UDP datagram).
#[inline(always)]
pub fn established(
    bucket: &mut Bucket<FlowEntry>,
    key: &FlowKey,
    snat: &[u32; 4],
    tcp_flags: u8,
    now: u32,
) -> Option<Established> {
    let way = bucket.find(key)?;
    if way >= WAYS {
        return None;
    }
    let entry = bucket.ways.ways.get_mut(way)?;
    let seen = entry.flow;
    // Seqlock-style: a writer clears the tag before it touches the value, so the same tag
    // after the copy means the copy is this key's value (x86 keeps loads in order).
    // SAFETY: a plain load from the bucket's header.
    let tag = unsafe { core::ptr::read_volatile(&bucket.head.tags[way]) };
    if tag & !TAG_CONFIRMED != bucket.tag {
        return None;
    }
    let idle = age(now, bucket.head.stamps[way]);
    touch(&mut bucket.head.stamps, way, now);
    let backend = *BACKENDS.get(seen.backend_id)?;
    if backend.state == BACKEND_DOWN
        || backend.state == BACKEND_UNSET
        || backend.vip_id != seen.vip_id
        || backend.family != key.family
    {
        return None;
    }
    if idle >= SECOND {
        ensure_reverse(entry, &backend, snat, now);
    }
    if tag & TAG_CONFIRMED == 0
        && seen.flags & FLOW_F_CLOSED == 0
        && (key.proto != PROTO_TCP || tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_ACK)
        && confirm_reverse(entry)
    {
        store(&mut bucket.head.tags[way], &(bucket.tag | TAG_CONFIRMED));
    }
    let flow = &raw mut entry.flow;
    let tag = &raw mut bucket.head.tags[way];
    // SAFETY: the entry and its header live in the maps for the program's lifetime.
    Some(unsafe {
        Established {
            flow: &mut *flow,
            seen,
            backend,
            tag: &mut *tag,
            key_tag: bucket.tag,
        }
    })
}

/// `FlowEntry.rev_link` of a flow with no reverse entry (DSR): outside every map, so
/// `ensure_reverse` leaves it alone and `confirm_reverse` never confirms it. A DSR flow
/// stays unconfirmed (the balancer never sees the answer; a client's ACK proves nothing, a
/// spoofer sends two) and gives way first under pressure; its next packet is scheduled by
/// the table again, to the same backend while the table stands.
pub const NO_REVERSE: u32 = u32::MAX;

/// Confirms the reverse entry of a flow whose backend has answered (not with a reset);
/// says whether it did.
#[inline(always)]
fn confirm_reverse(entry: &FlowEntry) -> bool {
    let index = entry.rev_link >> 2;
    let way = (entry.rev_link & 3) as usize;
    let (Some(head), Some(ways)) = (REV_HEADS.get_ptr_mut(index), NAT_REV.get_ptr_mut(index)) else {
        return false;
    };
    // SAFETY: array value pointers, valid for the program's lifetime.
    let (head, ways) = unsafe { (&mut *head, &*ways) };
    if way >= WAYS || head.tags[way] & !TAG_CONFIRMED != entry.rev_tag {
        return false;
    }
    let flags = ways.ways[way].rev.flags;
    if flags & FLOW_F_ANSWERED == 0 || flags & FLOW_F_CLOSED != 0 {
        return false;
    }
    store(&mut head.tags[way], &(entry.rev_tag | TAG_CONFIRMED));
    true
}

/// Marks a way used now (written only when the stamp changes: about once a millisecond).
#[inline(always)]
fn touch(stamps: &mut [u32; WAYS], way: usize, now: u32) {
    if let Some(s) = stamps.get_mut(way)
        && *s != now
    {
        *s = now;
    }
}

/// The reverse-NAT entry of a reply's 5-tuple, unless the tuple belongs to a connection of
/// the host itself (see [`claimed_locally`]): then the entry is dropped and the packet goes
/// to the stack.
#[inline(always)]
pub fn reverse(ctx: &XdpContext, pkt: &Packet, now: u32) -> Option<Result<&'static mut RevEntry, Reason>> {
    let key = &pkt.key;
    let b = locate(&REV_HEADS, &NAT_REV, key)?;
    let way = b.find(key)?;
    if way >= WAYS {
        return None;
    }
    // A reply from the wrong arm changes nothing (no stamp, no close): it is spoofed.
    if !crate::fib::arrived_by_egress(ctx, b.ways.ways.get(way)?.rev.backend_id) {
        return Some(Err(Reason::DropReplyIface));
    }
    // Ask the kernel only when a local connection could be starting: a TCP SYN-ACK or RST
    // (once per NAT flow), or a UDP datagram on an entry idle for a second or more.
    let suspect = if key.proto == PROTO_TCP {
        pkt.tcp_flags & (TCP_SYN | TCP_RST) != 0
    } else {
        age(now, b.head.stamps[way]) >= SECOND
    };
    if suspect && claimed_locally(ctx, key) {
        store(&mut b.head.tags[way], &0);
        return None;
    }
    // A closing backend: its entry gives way like an unconfirmed one from now on.
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        store(&mut b.head.tags[way], &b.tag);
    }
    touch(&mut b.head.stamps, way, now);
    b.ways.ways.get_mut(way).map(Ok)
}

/// The connection-table entry of client flow `key`, read only (for ICMP errors about it).
#[inline(always)]
pub fn find_flow(key: &FlowKey) -> Option<Flow> {
    let b = bucket(key)?;
    let way = b.find(key)?;
    Some(b.ways.ways.get(way)?.flow)
}

/// The reverse entry of reply 5-tuple `key`, without touching it (for ICMP errors).
#[inline(always)]
pub fn find_reverse(key: &FlowKey) -> Option<&'static mut NatRev> {
    let b = locate(&REV_HEADS, &NAT_REV, key)?;
    let way = b.find(key)?;
    Some(&mut b.ways.ways.get_mut(way)?.rev)
}

/// About a second, in stamp units: the quiet after which a UDP reply is checked against
/// local sockets, and a flow's packet checks its reverse entry.
const SECOND: u32 = 1000;

/// Does a connected socket of the host own this 5-tuple (a health probe, an operator's
/// ssh to a backend from the SNAT address)? Listening and unconnected sockets do not
/// count: they own no 5-tuple. The host's connection wins over a NAT entry, which is stale
/// in all but a true collision, where the NAT flow could not work anyway.
#[inline(always)]
fn claimed_locally(ctx: &XdpContext, key: &FlowKey) -> bool {
    let Some(scratch) = scratch() else {
        return false;
    };
    let t = &mut scratch.tuple;
    let size = if key.family == FAMILY_V4 {
        // SAFETY: plain union of integers.
        let v4 = unsafe { &mut t.__bindgen_anon_1.ipv4 };
        v4.saddr = key.src_be[0];
        v4.daddr = key.dst_be[0];
        v4.sport = key.sport_be;
        v4.dport = key.dport_be;
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        // SAFETY: plain union of integers.
        let v6 = unsafe { &mut t.__bindgen_anon_1.ipv6 };
        store(&mut v6.saddr, &key.src_be);
        store(&mut v6.daddr, &key.dst_be);
        v6.sport = key.sport_be;
        v6.dport = key.dport_be;
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    } as u32;
    // SAFETY: helper calls with the program's context and a tuple of `size` bytes in map
    // memory; a socket found is released before return.
    unsafe {
        let sk = if key.proto == PROTO_TCP {
            bpf_sk_lookup_tcp(ctx.ctx.cast(), t, size, BPF_F_CURRENT_NETNS as u64, 0)
        } else {
            bpf_sk_lookup_udp(ctx.ctx.cast(), t, size, BPF_F_CURRENT_NETNS as u64, 0)
        };
        if sk.is_null() {
            return false;
        }
        let connected = (*sk).dst_port != 0;
        bpf_sk_release(sk.cast());
        connected
    }
}

/// The client's port, then hashed alternatives. Each try costs the verifier tens of
/// thousands of instructions of its one-million budget (a fixture keeps the total in check).
const PORT_TRIES: u32 = 8;

/// Picks the balancer's source port towards `backend` and records the reverse entry.
/// The client's own port is kept when that (backend, snat address, port) tuple is free:
/// random ports collide with the backend's TIME_WAIT sockets (see DESIGN.md).
#[inline(always)]
pub fn allocate_port(
    key: &FlowKey,
    snat: &[u32; 4],
    backend: &Backend,
    (vip_id, backend_id, flags): (u32, u32, u16),
    now: u32,
) -> Result<(u16, u32, u32), Reason> {
    let scratch = scratch().ok_or(Reason::DropNoPort)?;
    let reply = &mut scratch.reply;
    reply.src_be = backend.addr_be;
    reply.dst_be = *snat;
    reply.sport_be = backend.port_be;
    reply.dport_be = key.sport_be;
    reply.proto = key.proto;
    reply.family = key.family;
    reply._pad = [0; 2];
    let mut seed = 0;
    let mut i = 0;
    while i < PORT_TRIES {
        if i > 0 {
            // Further tries: ports spread over 1024..65535 from one hash of the flow.
            if i == 1 {
                seed = hash_flow(key, SEED_SPLIT);
            }
            let h = finish(seed ^ i);
            reply.dport_be = ((h % (65536 - 1024)) as u16 + 1024).to_be();
        }
        let Some(bucket) = locate(&REV_HEADS, &NAT_REV, reply) else {
            return Err(Reason::DropNoPort);
        };
        let way = match bucket.find(reply) {
            // The least recently answered unconfirmed reverse entry gives way, else a
            // confirmed one idle past the hold. Its client flow keeps its connection entry
            // (see docs/decisions.md, "Reverse entries under pressure"). A bucket of live
            // confirmed entries gives none: try the next port.
            None => bucket.head.choose(now, HOLD_CONFIRMED).way,
            // Our own entry (the flow was evicted or re-chosen), or one whose flow is over.
            Some(w)
                if w < WAYS
                    && (owned_by(&bucket.ways.ways[w].rev, key)
                        || released(&bucket, w, reply, now, &mut scratch.client)) =>
            {
                w
            }
            Some(_) => WAYS,
        };
        if way >= WAYS {
            i += 1;
            continue;
        }
        let (link, tag) = put_reverse(bucket, way, reply, key, (vip_id, backend_id, flags), now);
        return Ok((reply.dport_be, link, tag));
    }
    Err(Reason::DropNoPort)
}

/// Writes the reverse entry of client flow `key` (reply 5-tuple `reply`) into `way`;
/// returns its location and tag for the client's connection entry.
#[inline(always)]
fn put_reverse(
    bucket: Bucket<RevEntry>,
    way: usize,
    reply: &FlowKey,
    key: &FlowKey,
    (vip_id, backend_id, flags): (u32, u32, u16),
    now: u32,
) -> (u32, u32) {
    if way >= WAYS {
        return (0, 0);
    }
    // Tag last (see the module comment).
    store(&mut bucket.head.tags[way], &0);
    let entry = &mut bucket.ways.ways[way];
    store(&mut entry.rev.client_be, &key.src_be);
    store(&mut entry.rev.vip_be, &key.dst_be);
    store(&mut entry.rev.client_port_be, &key.sport_be);
    store(&mut entry.rev.vip_port_be, &key.dport_be);
    store(&mut entry.rev.vip_id, &vip_id);
    store(&mut entry.rev.backend_id, &backend_id);
    store(&mut entry.rev.hop.ifindex, &0);
    store(&mut entry.rev.flags, &flags);
    store(&mut entry.key, reply);
    store(&mut bucket.head.stamps[way], &now);
    store(&mut bucket.head.tags[way], &bucket.tag);
    (link(bucket.index, way), bucket.tag)
}

/// An idle flow's reverse entry may have given way (reverse entries age with answers,
/// connection entries with requests, in different buckets). On the flow's first packet
/// after a second or more of quiet, check it through the entry's link and put it back if it
/// is gone, before the answer to this packet needs it. Busy flows never pay for this.
#[inline(always)]
fn ensure_reverse(entry: &mut FlowEntry, backend: &Backend, snat: &[u32; 4], now: u32) {
    let Some(head) = REV_HEADS.get_ptr_mut(entry.rev_link >> 2) else {
        return;
    };
    // SAFETY: array value pointer, valid for the program's lifetime.
    let way = (entry.rev_link & 3) as usize;
    if way < WAYS && unsafe { (*head).tags[way] } == entry.rev_tag {
        return;
    }
    let Some(scratch) = scratch() else {
        return;
    };
    let reply = &mut scratch.reply;
    store(&mut reply.src_be, &backend.addr_be);
    store(&mut reply.dst_be, snat);
    store(&mut reply.sport_be, &backend.port_be);
    store(&mut reply.dport_be, &entry.flow.snat_port_be);
    store(&mut reply.proto, &entry.key.proto);
    store(&mut reply.family, &entry.key.family);
    store(&mut reply._pad, &[0; 2]);
    let Some(bucket) = locate(&REV_HEADS, &NAT_REV, reply) else {
        return;
    };
    let way = match bucket.find(reply) {
        None => bucket.head.choose(now, HOLD_CONFIRMED).way,
        // Still there under another way (moved by a re-insert): just relink.
        Some(w) if w < WAYS && owned_by(&bucket.ways.ways[w].rev, &entry.key) => {
            entry.rev_link = link(bucket.index, w);
            entry.rev_tag = bucket.tag;
            return;
        }
        // Another client holds the port now: this flow cannot be answered any more.
        Some(_) => return,
    };
    if way >= WAYS {
        // Every way holds a live confirmed flow: try again on a later packet.
        return;
    }
    let (vip_id, backend_id) = (entry.flow.vip_id, entry.flow.backend_id);
    let (l, t) = put_reverse(bucket, way, reply, &entry.key, (vip_id, backend_id, 0), now);
    entry.rev_link = l;
    entry.rev_tag = t;
}

/// Does this reverse entry belong to the client flow `key`?
#[inline(always)]
fn owned_by(old: &NatRev, key: &FlowKey) -> bool {
    old.client_be == key.src_be
        && old.client_port_be == key.sport_be
        && old.vip_port_be == key.dport_be
        && old.vip_be == key.dst_be
}

/// How long an unconfirmed reverse entry whose client flow is gone still holds its port,
/// in stamp units (about 17 ms: a handshake's round trip; the answer to a first packet
/// comes within it or the client retries).
const HOLD_UNCONFIRMED: u32 = 16;

/// Is another client's reverse entry (way `w`) over, so its port may be handed out? Only
/// with proof: its client flow was re-chosen (maps to another backend or port), or that
/// flow is gone from the connection table and the entry has been idle past its hold
/// ([`HOLD_UNCONFIRMED`] unconfirmed, [`HOLD_CONFIRMED`] confirmed). A flow evicted from the connection
/// table may still be live: its next packet finds this entry again (see `owned_by`).
#[inline(always)]
fn released(bucket: &Bucket<RevEntry>, w: usize, reply: &FlowKey, now: u32, client: &mut FlowKey) -> bool {
    if w >= WAYS {
        return false;
    }
    let old = &bucket.ways.ways[w].rev;
    match client_flow(old, reply, client) {
        Some(flow) => flow.backend_id != old.backend_id || flow.snat_port_be != reply.dport_be,
        None => {
            let hold = if bucket.head.tags[w] & TAG_CONFIRMED != 0 {
                HOLD_CONFIRMED
            } else {
                HOLD_UNCONFIRMED
            };
            age(now, bucket.head.stamps[w]) >= hold
        }
    }
}

/// The connection-table entry of the client flow a reverse entry belongs to; `client` is
/// room for its key.
#[inline(always)]
fn client_flow(old: &NatRev, reply: &FlowKey, client: &mut FlowKey) -> Option<&'static mut Flow> {
    let (bucket, way) = client_entry(old, reply, client)?;
    let flow = &raw mut bucket.ways.ways.get_mut(way)?.flow;
    // SAFETY: the entry lives in the map for the program's lifetime.
    Some(unsafe { &mut *flow })
}

/// The bucket and way of the client flow a reverse entry belongs to.
#[inline(always)]
fn client_entry(old: &NatRev, reply: &FlowKey, client: &mut FlowKey) -> Option<(Bucket<FlowEntry>, usize)> {
    // Word stores: a plain copy between two map values becomes a memmove call.
    store(&mut client.src_be, &old.client_be);
    store(&mut client.dst_be, &old.vip_be);
    store(&mut client.sport_be, &old.client_port_be);
    store(&mut client.dport_be, &old.vip_port_be);
    store(&mut client.proto, &reply.proto);
    store(&mut client.family, &reply.family);
    store(&mut client._pad, &[0; 2]);
    let bucket = bucket(client)?;
    let way = bucket.find(client)?;
    (way < WAYS).then_some((bucket, way))
}

/// The backend reset a NAT flow: its client flow is closed too (it no longer counts as
/// live, and a new SYN on its 5-tuple is scheduled afresh).
#[inline(always)]
pub fn mark_closed(rev: &NatRev, reply: &FlowKey) {
    if let Some(scratch) = scratch()
        && let Some(flow) = client_flow(rev, reply, &mut scratch.client)
        && flow.backend_id == rev.backend_id
    {
        let flags = flow.flags;
        flow.flags = flags | FLOW_F_CLOSED;
        if flags & (FLOW_F_COUNTED | FLOW_F_CLOSED) == FLOW_F_COUNTED {
            add_live(rev.backend_id, DOWN);
        }
    }
}

/// `add_live` deltas: one flow more, one flow fewer (wrapping).
const UP: u64 = 1;
const DOWN: u64 = u64::MAX;

/// Adds `delta` to a backend's least-conn live count, atomically (BPF_ATOMIC add: other
/// CPUs add to the same count, and the agent adds its corrections).
#[inline(always)]
fn add_live(backend_id: u32, delta: u64) {
    if let Some(p) = BACKEND_LOAD.get_ptr_mut(backend_id) {
        // SAFETY: an 8-byte aligned u64 in map memory, valid for the program's lifetime,
        // only ever changed by atomic adds. (The BPF target has no compare-and-swap, so
        // core's AtomicU64 offers no fetch_add; this intrinsic with its result unused is
        // the plain BPF_ATOMIC add.)
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                &raw mut (*p).live,
                delta,
            )
        };
    }
}

/// The way a new flow takes in its bucket: its own old entry (a reused 5-tuple), else
/// [`Heads::choose`] with the flood guard's `hold`.
#[inline(always)]
pub fn choose_way(bucket: &Bucket<FlowEntry>, key: &FlowKey, hold: u32, now: u32) -> Choice {
    match bucket.find(key) {
        Some(way) => Choice { way, kind: TAKE_FREE },
        None => bucket.head.choose(now, hold),
    }
}

/// Records the flow in `way` of its bucket.
#[inline(always)]
pub fn record(
    bucket: &mut Bucket<FlowEntry>,
    way: usize,
    key: &FlowKey,
    flow: Flow,
    (rev_link, rev_tag): (u32, u32),
    now: u32,
) -> Result<(), Reason> {
    if way >= WAYS {
        return Err(Reason::DropFlowInsert);
    }
    // The entry this one replaces leaves its backend's live count if it was in it.
    let old = bucket.ways.ways[way].flow;
    if bucket.head.tags[way] != 0 && old.flags & (FLOW_F_COUNTED | FLOW_F_CLOSED) == FLOW_F_COUNTED {
        add_live(old.backend_id, DOWN);
    }
    if flow.flags & FLOW_F_COUNTED != 0 {
        add_live(flow.backend_id, UP);
    }
    // Tag last (see the module comment).
    store(&mut bucket.head.tags[way], &0);
    store(&mut bucket.ways.ways[way].flow, &flow);
    store(&mut bucket.ways.ways[way].rev_link, &rev_link);
    store(&mut bucket.ways.ways[way].rev_tag, &rev_tag);
    store(&mut bucket.ways.ways[way].key, key);
    store(&mut bucket.head.stamps[way], &now);
    store(&mut bucket.head.tags[way], &bucket.tag);
    Ok(())
}

/// Copies `src` into map memory with volatile stores, in order, without a stack copy
/// (LLVM's BPF target has no fences: volatile stores keep the order the module comment
/// relies on; x86 keeps stores in program order).
#[inline(always)]
pub fn store<T: Copy>(dst: &mut T, src: &T) {
    let (d, s) = (dst as *mut T, src as *const T);
    // SAFETY: same type on both sides; word or byte copies within the value.
    unsafe {
        if size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4 {
            let mut i = 0;
            while i < size_of::<T>() / 4 {
                core::ptr::write_volatile(d.cast::<u32>().add(i), *s.cast::<u32>().add(i));
                i += 1;
            }
        } else {
            let mut i = 0;
            while i < size_of::<T>() {
                core::ptr::write_volatile(d.cast::<u8>().add(i), *s.cast::<u8>().add(i));
                i += 1;
            }
        }
    }
}
