//! Backend choice for a new flow: pool split, then the pool's Maglev table.

use lb_common::{
    BACKEND_READY, Backend, Config, FlowKey, Reason, VIP_F_HASH_SOURCE, VIP_F_SPLIT_BY_CLIENT,
    VipInfo,
    hash::{split_to_next, table_slot},
};

use crate::maps::{BACKENDS, TABLES};

#[inline(always)]
pub fn select_backend(key: &FlowKey, vip: &VipInfo, cfg: &Config) -> Result<(u32, Backend), Reason> {
    let table = if vip.table_next != 0
        && split_to_next(key, vip.flags & VIP_F_SPLIT_BY_CLIENT != 0, vip.split_bp)
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
