//! What a new flow gets, answered from the reconciler's copy of the maps with lb_common's
//! `select` (the XDP program's own function): `veer trace` and the dry-run previews.

use lb_common::{
    BACKEND_READY, FlowKey, SPLIT_SCALE, VipInfo,
    select::{Selected, Tables, prefix_matches, select},
};

use super::Reconciler;

impl Tables for Reconciler {
    fn ab_rule_matches(&self, vip_id: u32, key: &FlowKey) -> bool {
        let wanted = ab_key_bytes(vip_id.to_be(), &key.src_be);
        self.ab_rules
            .iter()
            .filter(|(_, d)| d[0] == vip_id.to_be())
            .any(|(len, d)| prefix_matches(&ab_key_bytes(d[0], &[d[1], d[2], d[3], d[4]]), &wanted, *len))
    }

    fn backend_at(&self, table: u32, slot: u32, _ring_size: u32) -> Option<u32> {
        self.table_slot(table, slot)
    }
}

/// An `AbKey` as the LPM trie compares it: its bytes in memory order.
fn ab_key_bytes(vip_id_be: u32, addr_be: &[u32; 4]) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(&vip_id_be.to_ne_bytes());
    for (i, w) in addr_be.iter().enumerate() {
        out[4 + i * 4..8 + i * 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}

impl Reconciler {
    /// The table, slot and backend the data path gives a new flow `key` to VIP `vip`, as
    /// the maps stand; None when it would drop it (no table, or the backend takes no new
    /// flows).
    pub fn select(&self, vip: &str, key: &FlowKey) -> Option<Selected> {
        let (_, info) = self.vip_info(vip)?;
        let s = select(self, key, info, self.limits.ring_size)?;
        (self.backend(s.backend_id)?.state == BACKEND_READY).then_some(s)
    }
}

/// Share (0..=1) of the new-flow hash space whose backend differs between two states of a
/// VIP. Exact: the split hash and the slot hash are independent, and a flow goes to the
/// next pool iff its split hash is below `split_bp`, so the split axis cuts into at most
/// three intervals of constant decisions. Clients of A/B networks are a set of addresses,
/// not a share of the hash space, and are not counted.
pub fn moved_share(old: &Reconciler, new: &Reconciler, vip: &str) -> f64 {
    let ring = new.limits.ring_size;
    let info = |r: &Reconciler| r.vip_info(vip).map(|(_, i)| *i).unwrap_or_default();
    let (o, n): (VipInfo, VipInfo) = (info(old), info(new));
    let (lo, hi) = (
        o.split_bp.min(n.split_bp).min(SPLIT_SCALE),
        o.split_bp.max(n.split_bp).min(SPLIT_SCALE),
    );
    let table = |v: &VipInfo, to_next: bool| if to_next { v.table_next } else { v.table_current };
    let at = |r: &Reconciler, t: u32, i: u32| {
        if t == 0 {
            0
        } else {
            r.backend_at(t, i, ring).unwrap_or(0)
        }
    };
    let mut moved = 0.0;
    for (start, end) in [(0, lo), (lo, hi), (hi, SPLIT_SCALE)] {
        if end <= start {
            continue;
        }
        let (ot, nt) = (
            table(&o, o.table_next != 0 && start < o.split_bp),
            table(&n, n.table_next != 0 && start < n.split_bp),
        );
        let differing = if ot == nt && (ot == 0 || old.same_table(new, ot)) {
            0
        } else {
            match (old.table(ot), new.table(nt)) {
                (Some(a), Some(b)) => a.iter().zip(b.iter()).filter(|(x, y)| x != y).count(),
                _ => (0..ring).filter(|&i| at(old, ot, i) != at(new, nt, i)).count(),
            }
        };
        moved += (end - start) as f64 / SPLIT_SCALE as f64 * differing as f64 / ring as f64;
    }
    moved
}
