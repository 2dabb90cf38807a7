//! The backend a new flow gets: A/B rule or split -> table -> scheduler -> backend id. One
//! function, generic over how the tables are read: the XDP program runs it over its maps,
//! the agent over its own copy of the same tables (`veer trace`, dry-run previews), so both
//! answer with the same arithmetic in every state.
//!
//! The pool comes first (split, canary, A/B), then the VIP's scheduler picks within the
//! pool's table:
//! - Maglev / source hash: the slot of the flow's (or client's) hash.
//! - Round robin: the slot under this CPU's cursor; the table holds a smooth weighted
//!   sequence (see `rr::build_sequence`), so consecutive new flows take its turns.
//! - Least-conn: two candidate slots from two hashes of the flow (power of two choices);
//!   the backend with fewer live flows per unit of weight wins, a tie stays with the first.

use crate::{
    BackendLoad, FlowKey, VIP_F_AB_RULES, VIP_F_HASH_SOURCE, VIP_F_LEAST_CONN, VIP_F_ROUND_ROBIN,
    VIP_F_SPLIT_BY_CLIENT, VipInfo,
    hash::{finish, second_hash, split_to_next, table_slot},
};

/// Where [`select`] reads the A/B rules, the tables and what the schedulers keep.
pub trait Tables {
    /// Does one of VIP `vip_id`'s A/B networks hold the flow's source address?
    fn ab_rule_matches(&self, vip_id: u32, key: &FlowKey) -> bool;
    /// The backend id in `slot` of table `table` (tables are `ring_size` slots each);
    /// None when the index is out of range.
    fn backend_at(&self, table: u32, slot: u32, ring_size: u32) -> Option<u32>;
    /// Round robin: the slot this CPU's cursor over `table` stands on, moving the cursor on
    /// to the next one. None where no cursor is known (the agent: each CPU has its own).
    fn next_slot(&self, table: u32, ring_size: u32) -> Option<u32>;
    /// Least-conn: a backend's live flows and effective weight. None where not known.
    fn load(&self, backend_id: u32) -> Option<BackendLoad>;
}

/// How a VIP picks within a pool (from `VipInfo.flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    Maglev,
    SourceHash,
    RoundRobin,
    LeastConn,
}

impl Scheduler {
    #[inline(always)]
    pub const fn of(flags: u32) -> Scheduler {
        if flags & VIP_F_ROUND_ROBIN != 0 {
            Scheduler::RoundRobin
        } else if flags & VIP_F_LEAST_CONN != 0 {
            Scheduler::LeastConn
        } else if flags & VIP_F_HASH_SOURCE != 0 {
            Scheduler::SourceHash
        } else {
            Scheduler::Maglev
        }
    }

    /// Is the backend a pure function of the flow and the tables (what `veer trace` and
    /// the moved-share previews can predict)?
    pub const fn is_hash(self) -> bool {
        matches!(self, Scheduler::Maglev | Scheduler::SourceHash)
    }
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
    pub scheduler: Scheduler,
    /// The slot read: the flow's hash slot (least-conn: the first candidate's), or round
    /// robin's cursor. None when the cursor is not known.
    pub slot: Option<u32>,
    /// The backends the scheduler chose between (never 0 when known): least-conn's two
    /// (equal when the table offered no second backend), else the chosen one twice.
    /// `[0, 0]` when the round-robin cursor is not known.
    pub candidates: [u32; 2],
    /// None when it depends on what the caller cannot see (a CPU's round-robin cursor,
    /// live-flow counts it was not given).
    pub backend_id: Option<u32>,
}

/// Further slots least-conn reads, after the second hash's, for a second candidate other
/// than the first: with one backend of three holding a third of the table, two equal
/// candidates would otherwise hand it a ninth of new flows however loaded it is (with
/// three more tries: about one in 250).
pub const SECOND_PROBES: u32 = 3;

/// Does candidate `b` take a new flow from candidate `a`? Strictly fewer live flows per
/// unit of weight (`b.flows / b.weight < a.flows / a.weight`, cross-multiplied); a tie
/// stays with `a`, the flow's hash slot, so an idle pool is shared like Maglev shares it.
/// A weight not written yet counts as 1.
#[inline(always)]
pub const fn lighter(b: &BackendLoad, a: &BackendLoad) -> bool {
    let wa = if a.weight == 0 { 1 } else { a.weight } as u64;
    let wb = if b.weight == 0 { 1 } else { b.weight } as u64;
    b.flows() * wa < a.flows() * wb
}

/// The pool, table and backend a new flow `key` to `vip` gets; None when the pool has no
/// table (empty or all out) or the slot names no backend. Whether that backend takes new
/// flows is the caller's to check (its state lives beside the tables).
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
    let scheduler = Scheduler::of(vip.flags);
    let slot = match scheduler {
        Scheduler::RoundRobin => match tables.next_slot(table, ring_size) {
            Some(s) => s,
            None => {
                return Some(Selected {
                    pool,
                    table,
                    scheduler,
                    slot: None,
                    candidates: [0, 0],
                    backend_id: None,
                });
            }
        },
        s => table_slot(key, matches!(s, Scheduler::SourceHash), ring_size),
    };
    let first = match tables.backend_at(table, slot, ring_size) {
        Some(0) | None => return None,
        Some(id) => id,
    };
    let mut chosen = Selected {
        pool,
        table,
        scheduler,
        slot: Some(slot),
        candidates: [first, first],
        backend_id: Some(first),
    };
    if matches!(scheduler, Scheduler::LeastConn) {
        let second = second_candidate(tables, key, table, first, ring_size);
        chosen.candidates[1] = second;
        if second != first {
            chosen.backend_id = match (tables.load(first), tables.load(second)) {
                (Some(a), Some(b)) => Some(if lighter(&b, &a) { second } else { first }),
                _ => None,
            };
        }
    }
    Some(chosen)
}

/// Least-conn's second candidate: the backend at the flow's second hash slot, or at the
/// slots after it when that is `first` again ([`SECOND_PROBES`]); `first` when none differs.
#[inline(always)]
fn second_candidate<T: Tables>(tables: &T, key: &FlowKey, table: u32, first: u32, ring_size: u32) -> u32 {
    let h = second_hash(key);
    let mut slot = h % ring_size;
    let mut i = 0;
    while i <= SECOND_PROBES {
        if let Some(id) = tables.backend_at(table, slot, ring_size)
            && id != 0
            && id != first
        {
            return id;
        }
        i += 1;
        // Rehashed, not the next slot: a table rebuilt with minimal disruption keeps a
        // backend's old slots, which can be one long run.
        slot = finish(h ^ i) % ring_size;
    }
    first
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
    /// A round-robin cursor (None: unknown) and live-flow loads by backend id.
    #[derive(Default)]
    struct Fake {
        cursor: core::cell::Cell<Option<u32>>,
        loads: [(u32, BackendLoad); 2],
    }

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
                // Two backends, 40 and 41, alternating.
                4 => Some(40 + slot % 2),
                // One backend only.
                5 => Some(50),
                _ => None,
            }
        }
        fn next_slot(&self, table: u32, ring_size: u32) -> Option<u32> {
            let c = self.cursor.get()?;
            self.cursor.set(Some((c + 1) % ring_size));
            Some(c + table - table)
        }
        fn load(&self, backend_id: u32) -> Option<BackendLoad> {
            self.loads.iter().find(|(id, _)| *id == backend_id).map(|(_, l)| *l)
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
        let s = select(&Fake::default(), &k, &vip(0, SPLIT_SCALE, 0), RING).unwrap();
        assert_eq!(s.pool, PoolChoice::Current, "no next table: the split is ignored");
        assert_eq!(s.slot, Some(table_slot(&k, false, RING)));
        assert_eq!(s.backend_id, Some(10 + table_slot(&k, false, RING)));
    }

    #[test]
    fn a_split_sends_exactly_the_flows_below_split_bp_to_the_next_table() {
        for port in 1000..1400 {
            let k = key([10, 2, 0, 1], port);
            let s = select(&Fake::default(), &k, &vip(2, 3000, 0), RING).unwrap();
            let next = split_to_next(&k, false, 3000);
            assert_eq!(s.pool == PoolChoice::Next, next);
            assert_eq!(s.backend_id, s.slot.map(|slot| if next { 100 } else { 10 } + slot));
        }
    }

    #[test]
    fn an_ab_rule_wins_over_the_split_and_needs_its_flag() {
        let k = key([10, 1, 9, 9], 5000);
        let ab = select(&Fake::default(), &k, &vip(2, 0, VIP_F_AB_RULES), RING).unwrap();
        assert_eq!(ab.pool, PoolChoice::Next);
        let no_flag = select(&Fake::default(), &k, &vip(2, 0, 0), RING).unwrap();
        assert_eq!(no_flag.pool, PoolChoice::Current);
        let outside = select(
            &Fake::default(),
            &key([10, 2, 9, 9], 5000),
            &vip(2, 0, VIP_F_AB_RULES),
            RING,
        )
        .unwrap();
        assert_eq!(outside.pool, PoolChoice::Current);
    }

    #[test]
    fn by_client_and_source_hash_ignore_the_port() {
        let flags = VIP_F_SPLIT_BY_CLIENT | VIP_F_HASH_SOURCE;
        let first = select(&Fake::default(), &key([10, 3, 0, 1], 1), &vip(2, 5000, flags), RING).unwrap();
        for port in 2..200 {
            assert_eq!(
                select(&Fake::default(), &key([10, 3, 0, 1], port), &vip(2, 5000, flags), RING),
                Some(first)
            );
        }
    }

    #[test]
    fn no_table_no_slot_or_unset_slot_selects_nothing() {
        let k = key([10, 2, 0, 1], 4000);
        let mut v = vip(0, 0, 0);
        v.table_current = 0;
        assert_eq!(select(&Fake::default(), &k, &v, RING), None);
        v.table_current = 3;
        assert_eq!(select(&Fake::default(), &k, &v, RING), None, "backend id 0 is unset");
        v.table_current = 9;
        assert_eq!(select(&Fake::default(), &k, &v, RING), None);
        assert_eq!(select(&Fake::default(), &k, &vip(0, 0, 0), 0), None);
    }

    fn load(live: i64, weight: u32) -> BackendLoad {
        BackendLoad {
            live: live as u64,
            weight,
            offset: 0,
        }
    }

    #[test]
    fn round_robin_reads_the_cursor_slot_after_the_pool_choice() {
        let fake = Fake {
            cursor: core::cell::Cell::new(Some(5)),
            ..Default::default()
        };
        let k = key([10, 2, 0, 1], 4000);
        let mut v = vip(2, 10_000, VIP_F_ROUND_ROBIN);
        let s = select(&fake, &k, &v, RING).unwrap();
        assert_eq!((s.pool, s.slot, s.backend_id), (PoolChoice::Next, Some(5), Some(105)));
        v.split_bp = 0;
        let s = select(&fake, &k, &v, RING).unwrap();
        assert_eq!((s.pool, s.slot, s.backend_id), (PoolChoice::Current, Some(6), Some(16)));
        assert_eq!(s.scheduler, Scheduler::RoundRobin);
        // Where no cursor is known (the agent), the pool is still named, the backend not.
        let s = select(&Fake::default(), &k, &v, RING).unwrap();
        assert_eq!(
            (s.pool, s.table, s.backend_id, s.slot),
            (PoolChoice::Current, 1, None, None)
        );
    }

    #[test]
    fn least_conn_takes_the_candidate_with_fewer_flows_per_unit_of_weight() {
        let k = key([10, 2, 0, 1], 4000);
        let mut v = vip(0, 0, VIP_F_LEAST_CONN);
        v.table_current = 4;
        let first = 40 + table_slot(&k, false, RING) % 2;
        let second = if first == 40 { 41 } else { 40 };
        let with = |a: BackendLoad, b: BackendLoad| Fake {
            loads: [(first, a), (second, b)],
            ..Default::default()
        };
        let pick = |f: &Fake| select(f, &k, &v, RING).unwrap();
        let s = pick(&with(load(5, 100), load(4, 100)));
        assert_eq!(
            s.candidates,
            [first, second],
            "a second backend is found past equal slots"
        );
        assert_eq!(s.backend_id, Some(second), "4 < 5 live");
        assert_eq!(
            pick(&with(load(4, 100), load(4, 100))).backend_id,
            Some(first),
            "a tie stays"
        );
        assert_eq!(
            pick(&with(load(5, 100), load(8, 200))).backend_id,
            Some(second),
            "8/200 < 5/100"
        );
        assert_eq!(
            pick(&with(load(5, 100), load(12, 200))).backend_id,
            Some(first),
            "12/200 > 5/100"
        );
        assert_eq!(
            pick(&with(load(0, 100), load(-3, 100))).backend_id,
            Some(first),
            "an underflowed count reads as 0, not as a huge one or a negative one"
        );
        assert_eq!(
            pick(&with(load(3, 0), load(2, 0))).backend_id,
            Some(second),
            "unset weights count as 1"
        );
        let idle = BackendLoad {
            offset: 4,
            ..load(5, 100)
        };
        assert_eq!(
            pick(&with(idle, load(2, 100))).backend_id,
            Some(first),
            "5 counted, 4 of them idle"
        );
        // Unknown loads: the candidates, not a backend.
        let s = select(&Fake::default(), &k, &v, RING).unwrap();
        assert_eq!((s.candidates, s.backend_id), ([first, second], None));
        // A pool of one backend: no second candidate, no load needed.
        v.table_current = 5;
        let s = select(&Fake::default(), &k, &v, RING).unwrap();
        assert_eq!((s.candidates, s.backend_id), ([50, 50], Some(50)));
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

#[cfg(all(test, feature = "user"))]
mod maglev_tests {
    use super::*;
    use crate::{
        FAMILY_V4, PROTO_TCP,
        maglev::{TableBackend, build_table},
    };

    struct Table(std::vec::Vec<u32>);

    impl Tables for Table {
        fn ab_rule_matches(&self, _: u32, _: &FlowKey) -> bool {
            false
        }
        fn backend_at(&self, _: u32, slot: u32, _: u32) -> Option<u32> {
            self.0.get(slot as usize).copied()
        }
        fn next_slot(&self, _: u32, _: u32) -> Option<u32> {
            None
        }
        fn load(&self, id: u32) -> Option<BackendLoad> {
            Some(BackendLoad {
                live: if id == 1 { 50 } else { 0 },
                weight: 100,
                offset: 0,
            })
        }
    }

    /// Of three equal backends in a Maglev table, one holding 50 flows while the others hold
    /// none takes a new flow only when no second candidate differs from it.
    #[test]
    fn a_loaded_backend_of_three_gets_almost_no_new_flows() {
        let backends: std::vec::Vec<TableBackend> = (1..=3)
            .map(|id| TableBackend {
                id,
                addr_be: [u32::from_ne_bytes([10, 0, 1, id as u8]), 0, 0, 0],
                port_be: 8080u16.to_be(),
                weight: 100,
            })
            .collect();
        // Rebuilt over a table of backend 1 alone (the others were drained): backend 1 keeps
        // its old slots, a run of the table's first third.
        let t = Table(build_table(&backends, 65537, Some(&std::vec![1; 65537])));
        assert!(t.0[..21_000].iter().all(|&id| id == 1));
        let vip = VipInfo {
            table_current: 1,
            flags: VIP_F_LEAST_CONN,
            ..Default::default()
        };
        let n = 30_000u32;
        let loaded = (0..n)
            .filter(|i| {
                let key = FlowKey {
                    src_be: [u32::from_ne_bytes([10, 77, 0, 2]), 0, 0, 0],
                    dst_be: [u32::from_ne_bytes([10, 0, 0, 100]), 0, 0, 0],
                    sport_be: (20000 + *i as u16).to_be(),
                    dport_be: 80u16.to_be(),
                    proto: PROTO_TCP,
                    family: FAMILY_V4,
                    _pad: [0; 2],
                };
                select(&t, &key, &vip, 65537).unwrap().backend_id == Some(1)
            })
            .count();
        let share = loaded as f64 / n as f64;
        assert!(share < 0.02, "{share}");
    }
}
