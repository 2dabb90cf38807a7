//! The backend a new flow gets: A/B rule or split -> table -> slot -> backend id. One
//! function, generic over how the tables are read: the XDP program runs it over its maps,
//! the agent over its own copy of the same tables (`veer trace`, dry-run previews), so both
//! answer with the same arithmetic in every state.

use crate::{
    FlowKey, VIP_F_AB_RULES, VIP_F_HASH_SOURCE, VIP_F_SPLIT_BY_CLIENT, VipInfo,
    hash::{split_to_next, table_slot},
};

/// Where [`select`] reads the A/B rules and the Maglev tables.
pub trait Tables {
    /// Does one of VIP `vip_id`'s A/B networks hold the flow's source address?
    fn ab_rule_matches(&self, vip_id: u32, key: &FlowKey) -> bool;
    /// The backend id in `slot` of table `table` (tables are `ring_size` slots each);
    /// None when the index is out of range.
    fn backend_at(&self, table: u32, slot: u32, ring_size: u32) -> Option<u32>;
}

/// Which of the VIP's two pools a new flow goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolChoice {
    /// `VipInfo.table_current`: the active pool.
    Current,
    /// `VipInfo.table_next`: the split's or the A/B rules' pool.
    Next,
}

/// The choice for a new flow, step by step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selected {
    pub pool: PoolChoice,
    pub table: u32,
    pub slot: u32,
    /// Never 0 (id 0 means unset).
    pub backend_id: u32,
}

/// The pool, table, slot and backend id a new flow `key` to `vip` gets; None when the pool
/// has no table (empty or all out) or the slot names no backend. Whether that backend takes
/// new flows is the caller's to check (its state lives beside the tables).
#[inline(always)]
pub fn select<T: Tables>(tables: &T, key: &FlowKey, vip: &VipInfo, ring_size: u32) -> Option<Selected> {
    let to_next = vip.table_next != 0
        && ((vip.flags & VIP_F_AB_RULES != 0 && tables.ab_rule_matches(vip.vip_id, key))
            || split_to_next(key, vip.flags & VIP_F_SPLIT_BY_CLIENT != 0, vip.split_bp));
    let (pool, table) = if to_next {
        (PoolChoice::Next, vip.table_next)
    } else {
        (PoolChoice::Current, vip.table_current)
    };
    if table == 0 || ring_size == 0 {
        return None;
    }
    let slot = table_slot(key, vip.flags & VIP_F_HASH_SOURCE != 0, ring_size);
    match tables.backend_at(table, slot, ring_size) {
        Some(0) | None => None,
        Some(backend_id) => Some(Selected {
            pool,
            table,
            slot,
            backend_id,
        }),
    }
}

/// Does the first `prefix_len` bits of `key` equal those of `rule`? The match an LPM trie
/// makes, for callers that hold the rules as (prefix length, key bytes).
#[inline(always)]
pub fn prefix_matches(rule: &[u8], key: &[u8], prefix_len: u32) -> bool {
    let full = (prefix_len / 8) as usize;
    let rest = prefix_len % 8;
    if full > rule.len() || full > key.len() || rule[..full] != key[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    match (rule.get(full), key.get(full)) {
        (Some(r), Some(k)) => {
            let mask = 0xffu8 << (8 - rest);
            r & mask == k & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, PROTO_TCP, SPLIT_SCALE};

    const RING: u32 = 13;

    /// Table 1: every slot backend 10 + slot; table 2: 100 + slot; A/B matches 10.1.0.0/16.
    struct Fake;

    impl Tables for Fake {
        fn ab_rule_matches(&self, vip_id: u32, key: &FlowKey) -> bool {
            vip_id == 7 && key.src_be[0].to_ne_bytes()[..2] == [10, 1]
        }
        fn backend_at(&self, table: u32, slot: u32, ring_size: u32) -> Option<u32> {
            assert_eq!(ring_size, RING);
            match table {
                1 => Some(10 + slot),
                2 => Some(100 + slot),
                3 => Some(0),
                _ => None,
            }
        }
    }

    fn key(src: [u8; 4], sport: u16) -> FlowKey {
        FlowKey {
            src_be: [u32::from_ne_bytes(src), 0, 0, 0],
            dst_be: [u32::from_ne_bytes([10, 0, 0, 100]), 0, 0, 0],
            sport_be: sport.to_be(),
            dport_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    fn vip(next: u32, split_bp: u32, flags: u32) -> VipInfo {
        VipInfo {
            vip_id: 7,
            table_current: 1,
            table_next: next,
            split_bp,
            flags,
            _pad: 0,
        }
    }

    #[test]
    fn plain_reads_the_current_table_at_the_flow_slot() {
        let k = key([10, 2, 0, 1], 4000);
        let s = select(&Fake, &k, &vip(0, SPLIT_SCALE, 0), RING).unwrap();
        assert_eq!(s.pool, PoolChoice::Current, "no next table: the split is ignored");
        assert_eq!(s.slot, table_slot(&k, false, RING));
        assert_eq!(s.backend_id, 10 + s.slot);
    }

    #[test]
    fn a_split_sends_exactly_the_flows_below_split_bp_to_the_next_table() {
        for port in 1000..1400 {
            let k = key([10, 2, 0, 1], port);
            let s = select(&Fake, &k, &vip(2, 3000, 0), RING).unwrap();
            let next = split_to_next(&k, false, 3000);
            assert_eq!(s.pool == PoolChoice::Next, next);
            assert_eq!(s.backend_id, if next { 100 } else { 10 } + s.slot);
        }
    }

    #[test]
    fn an_ab_rule_wins_over_the_split_and_needs_its_flag() {
        let k = key([10, 1, 9, 9], 5000);
        let ab = select(&Fake, &k, &vip(2, 0, VIP_F_AB_RULES), RING).unwrap();
        assert_eq!(ab.pool, PoolChoice::Next);
        let no_flag = select(&Fake, &k, &vip(2, 0, 0), RING).unwrap();
        assert_eq!(no_flag.pool, PoolChoice::Current);
        let outside = select(&Fake, &key([10, 2, 9, 9], 5000), &vip(2, 0, VIP_F_AB_RULES), RING).unwrap();
        assert_eq!(outside.pool, PoolChoice::Current);
    }

    #[test]
    fn by_client_and_source_hash_ignore_the_port() {
        let flags = VIP_F_SPLIT_BY_CLIENT | VIP_F_HASH_SOURCE;
        let first = select(&Fake, &key([10, 3, 0, 1], 1), &vip(2, 5000, flags), RING).unwrap();
        for port in 2..200 {
            assert_eq!(
                select(&Fake, &key([10, 3, 0, 1], port), &vip(2, 5000, flags), RING),
                Some(first)
            );
        }
    }

    #[test]
    fn no_table_no_slot_or_unset_slot_selects_nothing() {
        let k = key([10, 2, 0, 1], 4000);
        let mut v = vip(0, 0, 0);
        v.table_current = 0;
        assert_eq!(select(&Fake, &k, &v, RING), None);
        v.table_current = 3;
        assert_eq!(select(&Fake, &k, &v, RING), None, "backend id 0 is unset");
        v.table_current = 9;
        assert_eq!(select(&Fake, &k, &v, RING), None);
        assert_eq!(select(&Fake, &k, &vip(0, 0, 0), 0), None);
    }

    #[test]
    fn prefix_matches_compares_only_the_prefix_bits() {
        let rule = [10, 1, 0, 0];
        assert!(prefix_matches(&rule, &[10, 1, 200, 3], 16));
        assert!(prefix_matches(&rule, &[10, 1, 127, 3], 17));
        assert!(!prefix_matches(&rule, &[10, 1, 128, 3], 17));
        assert!(!prefix_matches(&rule, &[10, 2, 0, 0], 16));
        assert!(prefix_matches(&rule, &[99, 9, 9, 9], 0));
        assert!(!prefix_matches(&rule, &[10, 1, 0, 0], 40), "longer than the key");
    }
}
