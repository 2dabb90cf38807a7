//! Connection table and NAT source-port allocation.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    BACKEND_DOWN, BACKEND_UNSET, Backend, Flow, FlowKey, NatRev, Reason,
    hash::{SEED_SPLIT, hash_flow},
};

use crate::maps::{BACKENDS, FLOWS, NAT_REV};

/// The established flow's backend, unless that backend is gone or down: then the flow is
/// re-chosen (a `drain` backend keeps its flows).
#[inline(always)]
pub fn established(key: &FlowKey) -> Option<(&'static mut Flow, Backend)> {
    // SAFETY: LRU value pointer, valid for this program run.
    let flow = unsafe { &mut *FLOWS.get_ptr_mut(key)? };
    let backend = *BACKENDS.get(flow.backend_id)?;
    if backend.state == BACKEND_DOWN || backend.state == BACKEND_UNSET {
        return None;
    }
    Some((flow, backend))
}

const PORT_TRIES: u32 = 8;

/// Picks the balancer's source port towards `backend` and records the reverse entry.
/// The client's own port is kept when that (backend, snat address, port) tuple is free:
/// random ports collide with the backend's TIME_WAIT sockets (see DESIGN.md).
#[inline(always)]
pub fn allocate_port(key: &FlowKey, snat: &[u32; 4], backend: &Backend, rev: &NatRev) -> Result<u16, Reason> {
    let mut reply = FlowKey {
        src_be: backend.addr_be,
        dst_be: *snat,
        sport_be: backend.port_be,
        dport_be: key.sport_be,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let mut i = 0;
    while i < PORT_TRIES {
        if i > 0 {
            let h = hash_flow(key, SEED_SPLIT ^ i);
            reply.dport_be = ((h % (65536 - 1024)) as u16 + 1024).to_be();
        }
        if NAT_REV.insert(&reply, rev, BPF_NOEXIST as u64).is_ok() {
            return Ok(reply.dport_be);
        }
        // SAFETY: plain data copied out at once.
        if let Some(old) = unsafe { NAT_REV.get(&reply) }.copied()
            && (owned_by(&old, rev) || stale(&old, &reply))
        {
            // Our own entry (the flow was evicted or re-chosen), or one whose client flow is
            // gone from the connection table: that connection cannot continue, take the port.
            let _ = NAT_REV.insert(&reply, rev, 0);
            return Ok(reply.dport_be);
        }
        i += 1;
    }
    Err(Reason::DropNoPort)
}

#[inline(always)]
fn owned_by(old: &NatRev, rev: &NatRev) -> bool {
    old.client_be == rev.client_be
        && old.client_port_be == rev.client_port_be
        && old.vip_port_be == rev.vip_port_be
        && old.vip_be == rev.vip_be
}

/// A reverse entry is live only while its client flow still maps to it.
#[inline(always)]
fn stale(old: &NatRev, reply: &FlowKey) -> bool {
    let client = FlowKey {
        src_be: old.client_be,
        dst_be: old.vip_be,
        sport_be: old.client_port_be,
        dport_be: old.vip_port_be,
        proto: reply.proto,
        family: reply.family,
        _pad: [0; 2],
    };
    // SAFETY: plain data copied out at once.
    match unsafe { FLOWS.get(&client) } {
        Some(flow) => flow.backend_id != old.backend_id || flow.snat_port_be != reply.dport_be,
        None => true,
    }
}

#[inline(always)]
pub fn record(key: &FlowKey, backend_id: u32, vip_id: u32, snat_port_be: u16) -> Result<(), Reason> {
    let flow = Flow {
        backend_id,
        vip_id,
        snat_port_be,
        flags: 0,
    };
    FLOWS.insert(key, &flow, 0).map_err(|_| Reason::DropFlowInsert)
}
