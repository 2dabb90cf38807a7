//! What a new flow gets, answered from the reconciler's copy of the maps with lb_common's
//! `select` (the XDP program's own function): `veer trace` and the dry-run previews.

use std::collections::BTreeMap;

use lb_common::{
    BACKEND_READY, FlowKey, SPLIT_SCALE, VipInfo,
    select::{Scheduler, Selected, Tables, prefix_matches, select},
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

    /// Each CPU walks its own cursor: which turn a flow gets is not known here.
    fn next_slot(&self, _table: u32, _ring_size: u32) -> Option<u32> {
        None
    }

    /// Live flows change with every connection: the agent names the candidates instead.
    fn load(&self, _backend_id: u32) -> Option<lb_common::BackendLoad> {
        None
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
    /// For round robin and least-conn the backend is left open (None) and
    /// [`Reconciler::candidates`] names the backends it can be.
    pub fn select(&self, vip: &str, key: &FlowKey) -> Option<Selected> {
        let (_, info) = self.vip_info(vip)?;
        let s = select(self, key, info, self.limits.ring_size)?;
        match s.backend_id {
            Some(id) => (self.backend(id)?.state == BACKEND_READY).then_some(s),
            None => Some(s),
        }
    }

    /// The backends a new flow can get when [`Reconciler::select`] leaves it open: for
    /// round robin every backend of the pool's sequence, in the order of its first turns;
    /// for least-conn the flow's two candidates. Empty for the hash schedulers.
    pub fn candidates(&self, s: &Selected) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let ids: Box<dyn Iterator<Item = u32>> = match s.scheduler {
            Scheduler::RoundRobin => Box::new(self.table(s.table).map(|t| t.into_owned()).into_iter().flatten()),
            Scheduler::LeastConn => Box::new(s.candidates.into_iter()),
            Scheduler::Maglev | Scheduler::SourceHash => return out,
        };
        for id in ids {
            if id != 0 && !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }
}

/// Share (0..=1) of the new-flow hash space whose backend differs between two states of a
/// VIP (round robin and least-conn: see [`share_distance`]). Exact: the split hash and the slot hash are independent, and a flow goes to the
/// next pool iff its split hash is below `split_bp`, so the split axis cuts into at most
/// three intervals of constant decisions. Clients of A/B networks are a set of addresses,
/// not a share of the hash space, and are not counted.
pub fn moved_share(old: &Reconciler, new: &Reconciler, vip: &str) -> f64 {
    let ring = new.limits.ring_size;
    let info = |r: &Reconciler| r.vip_info(vip).map(|(_, i)| *i).unwrap_or_default();
    let (o, n): (VipInfo, VipInfo) = (info(old), info(new));
    let by_hash = Scheduler::of(o.flags).is_hash() && Scheduler::of(n.flags).is_hash();
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
            0.0
        } else if by_hash {
            let count = match (old.table(ot), new.table(nt)) {
                (Some(a), Some(b)) => a.iter().zip(b.iter()).filter(|(x, y)| x != y).count(),
                _ => (0..ring).filter(|&i| at(old, ot, i) != at(new, nt, i)).count(),
            };
            count as f64 / ring as f64
        } else {
            share_distance(old, ot, new, nt, ring)
        };
        moved += (end - start) as f64 / SPLIT_SCALE as f64 * differing;
    }
    moved
}

/// Round robin and least-conn give no flow a fixed slot: what moves is the share each
/// backend is dealt. The total variation distance between the two tables' backend shares
/// (0: the same shares, 1: no backend in common) is the least share of new flows that must
/// go elsewhere; least-conn's live-flow counts shift it further, and no preview knows them.
fn share_distance(old: &Reconciler, ot: u32, new: &Reconciler, nt: u32, ring: u32) -> f64 {
    if (ot == 0) != (nt == 0) {
        return 1.0;
    }
    let mut shares: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for (r, t, old_side) in [(old, ot, true), (new, nt, false)] {
        for &id in r.table(t).as_deref().into_iter().flatten() {
            let e = shares.entry(id).or_default();
            if old_side { e.0 += 1 } else { e.1 += 1 }
        }
    }
    shares.remove(&0);
    let diff: u64 = shares.values().map(|(a, b)| a.abs_diff(*b)).sum();
    diff as f64 / 2.0 / ring as f64
}
