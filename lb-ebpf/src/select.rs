//! Backend choice for a new flow: lb_common's `select` over this program's maps, then the
//! chosen backend's state.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    AbKey, BACKEND_READY, Backend, Config, FAMILY_V4, FlowKey, Reason, VipInfo,
    select::{Tables, select},
};

use crate::maps::{AB_RULES, BACKENDS, TABLES};

/// The A/B rules and Maglev tables as this program reads them.
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
}

#[inline(always)]
pub fn select_backend(key: &FlowKey, vip: &VipInfo, cfg: &Config) -> Result<(u32, Backend), Reason> {
    let id = select(&Maps, key, vip, cfg.ring_size)
        .ok_or(Reason::DropNoBackend)?
        .backend_id;
    let backend = *BACKENDS.get(id).ok_or(Reason::DropNoBackend)?;
    if backend.state != BACKEND_READY {
        return Err(Reason::DropNoBackend);
    }
    Ok((id, backend))
}
