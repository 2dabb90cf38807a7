//! Backend choice for a new flow: lb_common's `select` over this program's maps, then the
//! chosen backend's state.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    AbKey, BACKEND_READY, Backend, BackendLoad, Config, FAMILY_V4, FLOW_F_COUNTED, FlowKey, Reason, VIP_F_LEAST_CONN,
    VipInfo,
    select::{Tables, select},
};

use crate::maps::{AB_RULES, BACKEND_LOAD, BACKENDS, RR_CURSORS, TABLES};

/// The A/B rules, tables, round-robin cursors and least-conn loads as this program reads them.
struct Maps;

impl Tables for Maps {
    #[inline(always)]
    fn ab_rule_matches(&self, vip_id: u32, key: &FlowKey) -> bool {
        let bits = if key.family == FAMILY_V4 { 32 + 32 } else { 32 + 128 };
        let k = Key::new(
            bits,
            AbKey {
                vip_id_be: vip_id.to_be(),
                addr_be: key.src_be,
            },
        );
        AB_RULES.get(&k).is_some()
    }

    #[inline(always)]
    fn backend_at(&self, table: u32, slot: u32, ring_size: u32) -> Option<u32> {
        TABLES.get(table * ring_size + slot).copied()
    }

    /// This CPU's cursor: no other CPU writes it, and XDP runs do not nest.
    #[inline(always)]
    fn next_slot(&self, table: u32, ring_size: u32) -> Option<u32> {
        let cursor = RR_CURSORS.get_ptr_mut(table)?;
        // SAFETY: per-CPU array value, valid for the program's lifetime.
        let cursor = unsafe { &mut *cursor };
        let slot = if *cursor < ring_size { *cursor } else { 0 };
        *cursor = if slot + 1 < ring_size { slot + 1 } else { 0 };
        Some(slot)
    }

    #[inline(always)]
    fn load(&self, backend_id: u32) -> Option<BackendLoad> {
        let p = BACKEND_LOAD.get_ptr(backend_id)?;
        // SAFETY: array value, valid for the program's lifetime; other CPUs add to `live`
        // atomically meanwhile, and a plain 8-byte load reads one of its values.
        Some(unsafe { core::ptr::read_volatile(p) })
    }
}

#[inline(always)]
pub fn select_backend(key: &FlowKey, vip: &VipInfo, cfg: &Config) -> Result<(u32, Backend), Reason> {
    let id = select(&Maps, key, vip, cfg.ring_size)
        .and_then(|s| s.backend_id)
        .ok_or(Reason::DropNoBackend)?;
    let backend = *BACKENDS.get(id).ok_or(Reason::DropNoBackend)?;
    if backend.state != BACKEND_READY {
        return Err(Reason::DropNoBackend);
    }
    Ok((id, backend))
}

/// The flags a new flow of `vip` starts with: least-conn VIPs count their flows.
#[inline(always)]
pub fn new_flow_flags(vip: &VipInfo) -> u16 {
    if vip.flags & VIP_F_LEAST_CONN != 0 {
        FLOW_F_COUNTED
    } else {
        0
    }
}
