//! Backend choice for a new flow: pool split, then the pool's Maglev table.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    AbKey, BACKEND_READY, Backend, Config, FAMILY_V4, FlowKey, Reason, VIP_F_AB_RULES, VIP_F_HASH_SOURCE,
    VIP_F_SPLIT_BY_CLIENT, VipInfo,
    hash::{split_to_next, table_slot},
};

use crate::maps::{AB_RULES, BACKENDS, TABLES};

/// Is the client inside one of the VIP's A/B networks?
#[inline(always)]
fn ab_rule_matches(key: &FlowKey, vip: &VipInfo) -> bool {
    if vip.flags & VIP_F_AB_RULES == 0 {
        return false;
    }
    let bits = if key.family == FAMILY_V4 { 32 + 32 } else { 32 + 128 };
    let k = Key::new(
        bits,
        AbKey {
            vip_id_be: vip.vip_id.to_be(),
            addr_be: key.src_be,
        },
    );
    AB_RULES.get(&k).is_some()
}

#[inline(always)]
pub fn select_backend(key: &FlowKey, vip: &VipInfo, cfg: &Config) -> Result<(u32, Backend), Reason> {
    let table = if vip.table_next != 0
        && (ab_rule_matches(key, vip) || split_to_next(key, vip.flags & VIP_F_SPLIT_BY_CLIENT != 0, vip.split_bp))
    {
        vip.table_next
    } else {
        vip.table_current
    };
    if table == 0 || cfg.ring_size == 0 {
        return Err(Reason::DropNoBackend);
    }
    let slot = table_slot(key, vip.flags & VIP_F_HASH_SOURCE != 0, cfg.ring_size);
    let id = *TABLES.get(table * cfg.ring_size + slot).ok_or(Reason::DropNoBackend)?;
    let backend = *BACKENDS.get(id).ok_or(Reason::DropNoBackend)?;
    if id == 0 || backend.state != BACKEND_READY {
        return Err(Reason::DropNoBackend);
    }
    Ok((id, backend))
}
