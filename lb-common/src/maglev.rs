//! Weighted Maglev table builder.
//!
//! Each backend gets a slot quota proportional to its weight (largest remainder, so the
//! quotas add up to M exactly), and fills it by walking its own Maglev permutation of the
//! table (offset + j * skip mod M, M prime). Given the table currently in the kernel, the
//! builder first keeps every slot whose owner is still present and under quota, and only
//! then fills the rest: removing a backend moves exactly its own slots, adding one moves
//! exactly the slots it takes. Without a previous table the result is a pure function of
//! the backend set.

use std::{collections::HashMap, vec, vec::Vec};

use crate::hash::{SEED_OFFSET, SEED_SKIP, hash_addr};

/// A backend as the table builder sees it. `id` is the BACKENDS index written into slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableBackend {
    pub id: u32,
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub weight: u32,
}

/// Is `m` usable as a table size (a prime, so every permutation covers the table)?
pub fn valid_ring_size(m: u32) -> bool {
    m >= 3
        && (2..)
            .take_while(|d: &u32| (*d as u64) * (*d as u64) <= m as u64)
            .all(|d| !m.is_multiple_of(d))
}

/// Slots per backend, proportional to weight; zero-weight backends get none.
pub fn quotas(backends: &[TableBackend], m: u32) -> Vec<u32> {
    let total: u64 = backends.iter().map(|b| b.weight as u64).sum();
    if total == 0 {
        return vec![0; backends.len()];
    }
    let mut quota: Vec<u32> = Vec::with_capacity(backends.len());
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(backends.len());
    for (i, b) in backends.iter().enumerate() {
        let exact = b.weight as u64 * m as u64;
        quota.push((exact / total) as u32);
        remainders.push((exact % total, i));
    }
    let assigned: u32 = quota.iter().sum();
    // largest remainder first; ties broken by position so the result is deterministic
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((m - assigned) as usize) {
        quota[i] += 1;
    }
    quota
}

/// Builds a table of `m` slots of backend ids (0 = empty, only when no backend has weight).
/// Backend ids must be distinct and non-zero.
pub fn build_table(backends: &[TableBackend], m: u32, previous: Option<&[u32]>) -> Vec<u32> {
    debug_assert!(valid_ring_size(m));
    let n = backends.len();
    let quota = quotas(backends, m);
    let mut table = vec![0u32; m as usize];
    if quota.iter().all(|&q| q == 0) {
        return table;
    }
    let index: HashMap<u32, usize> = backends.iter().enumerate().map(|(i, b)| (b.id, i)).collect();
    let mut count = vec![0u32; n];
    let mut filled = 0u32;
    // Which slots are taken, one bit each: 8 KiB for M = 65537, so the permutation walks
    // probe L1 instead of the 256 KiB table.
    let mut taken = Taken::new(m);
    if let Some(prev) = previous.filter(|p| p.len() == m as usize) {
        for (s, (slot, &owner)) in table.iter_mut().zip(prev).enumerate() {
            if let Some(&i) = index.get(&owner)
                && count[i] < quota[i]
            {
                *slot = owner;
                taken.set(s as u32);
                count[i] += 1;
                filled += 1;
            }
        }
    }
    // Each backend's permutation: position = (offset + j * skip) mod m.
    let mut pos: Vec<u32> = Vec::with_capacity(n);
    let mut skip: Vec<u32> = Vec::with_capacity(n);
    for b in backends {
        pos.push(hash_addr(&b.addr_be, b.port_be as u32, SEED_OFFSET) % m);
        skip.push(hash_addr(&b.addr_be, b.port_be as u32, SEED_SKIP) % (m - 1) + 1);
    }
    let mut hungry: Vec<usize> = (0..n).filter(|&i| count[i] < quota[i]).collect();
    // Permutation walks get long once the table is nearly full (coupon collector); the last
    // 10% of slots go to the still-hungry backends in slot order instead, round robin.
    let tail = m / 10;
    while filled < m - tail {
        hungry.retain(|&i| {
            let mut p = pos[i];
            while taken.get(p) {
                p += skip[i];
                if p >= m {
                    p -= m;
                }
            }
            taken.set(p);
            table[p as usize] = backends[i].id;
            pos[i] = p;
            count[i] += 1;
            filled += 1;
            count[i] < quota[i]
        });
    }
    let mut free = taken.free(m);
    while !hungry.is_empty() {
        hungry.retain(|&i| {
            if let Some(slot) = free.next() {
                table[slot] = backends[i].id;
                count[i] += 1;
            }
            count[i] < quota[i]
        });
    }
    table
}

/// A bitmap of taken slots.
struct Taken(Vec<u64>);

impl Taken {
    fn new(m: u32) -> Self {
        Taken(vec![0; m.div_ceil(64) as usize])
    }

    #[inline(always)]
    fn get(&self, slot: u32) -> bool {
        self.0[(slot >> 6) as usize] & (1 << (slot & 63)) != 0
    }

    #[inline(always)]
    fn set(&mut self, slot: u32) {
        self.0[(slot >> 6) as usize] |= 1 << (slot & 63);
    }

    /// The free slots below `m`, in order (a word at a time).
    fn free(&self, m: u32) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(move |(w, &bits)| {
            let mut free = !bits;
            core::iter::from_fn(move || {
                (free != 0).then(|| {
                    let b = free.trailing_zeros() as usize;
                    free &= free - 1;
                    w * 64 + b
                })
            })
            .take_while(move |&s| s < m as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const M: u32 = 65537;

    fn backends(n: u32, weight: impl Fn(u32) -> u32) -> Vec<TableBackend> {
        (0..n)
            .map(|i| TableBackend {
                id: i + 1,
                addr_be: [u32::from_be_bytes([10, 1, (i >> 8) as u8, i as u8]), 0, 0, 0],
                port_be: 8080u16.to_be(),
                weight: weight(i),
            })
            .collect()
    }

    fn counts(table: &[u32], n: u32) -> Vec<u32> {
        let mut c = vec![0u32; n as usize + 1];
        for &id in table {
            c[id as usize] += 1;
        }
        c
    }

    #[test]
    fn ring_size_must_be_prime() {
        assert!(valid_ring_size(65537));
        assert!(valid_ring_size(251));
        assert!(!valid_ring_size(65536));
        assert!(!valid_ring_size(1));
    }

    #[test]
    fn equal_weights_are_balanced_for_100_and_1000_backends() {
        for n in [100u32, 1000] {
            let table = build_table(&backends(n, |_| 1), M, None);
            let c = counts(&table, n);
            assert_eq!(c[0], 0, "no empty slot");
            let max = *c[1..].iter().max().unwrap() as f64;
            let mean = M as f64 / n as f64;
            assert!(max / mean <= 1.02, "n={n}: max/mean = {}", max / mean);
        }
    }

    #[test]
    fn weighted_shares_within_a_tenth_of_a_point() {
        let bs = backends(7, |i| [1, 1, 2, 5, 10, 30, 100][i as usize]);
        let total: u32 = bs.iter().map(|b| b.weight).sum();
        let table = build_table(&bs, M, None);
        let c = counts(&table, 7);
        for b in &bs {
            let share = c[b.id as usize] as f64 / M as f64 * 100.0;
            let want = b.weight as f64 / total as f64 * 100.0;
            assert!(
                (share - want).abs() <= 0.1,
                "backend {}: {share:.3}% vs {want:.3}%",
                b.id
            );
        }
    }

    #[test]
    fn table_without_history_is_deterministic() {
        let bs = backends(50, |i| 1 + i % 3);
        assert_eq!(build_table(&bs, M, None), build_table(&bs, M, None));
    }

    #[test]
    fn zero_weight_backends_get_no_slot_and_all_zero_gives_empty_table() {
        let bs = backends(4, |i| if i == 2 { 0 } else { 1 });
        let c = counts(&build_table(&bs, 251, None), 4);
        assert_eq!(c[3], 0);
        let none = backends(3, |_| 0);
        assert!(build_table(&none, 251, None).iter().all(|&s| s == 0));
    }

    fn check_removal(n: u32, removed: usize) {
        let all = backends(n, |_| 1);
        let before = build_table(&all, M, None);
        let mut rest = all.clone();
        let gone = rest.remove(removed);
        let after = build_table(&rest, M, Some(&before));
        let mut moved = 0u32;
        for (s, (&b, &a)) in before.iter().zip(&after).enumerate() {
            if b != a {
                assert_eq!(b, gone.id, "slot {s} moved from surviving backend {b} to {a}");
                moved += 1;
            }
        }
        assert!(
            moved as f64 <= 1.5 / n as f64 * M as f64,
            "moved {moved} slots of {M} for n={n}"
        );
        assert!(after.iter().all(|&s| s != gone.id && s != 0));
    }

    #[test]
    fn removing_a_backend_moves_only_its_slots() {
        check_removal(100, 37);
        check_removal(1000, 999);
        check_removal(3, 0);
    }

    #[test]
    fn adding_a_backend_moves_slots_only_to_it() {
        let mut bs = backends(10, |_| 1);
        let before = build_table(&bs[..9], M, None);
        let after = build_table(&bs, M, Some(&before));
        let newcomer = bs.pop().unwrap().id;
        for (&b, &a) in before.iter().zip(&after) {
            assert!(b == a || a == newcomer);
        }
        assert_eq!(
            counts(&after, 10)[newcomer as usize],
            quotas(&backends(10, |_| 1), M)[9]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_weights_fill_the_table_to_exact_quotas(weights in prop::collection::vec(0u32..1000, 1..40)) {
            let bs = backends(weights.len() as u32, |i| weights[i as usize]);
            let m = 4099;
            let table = build_table(&bs, m, None);
            let q = quotas(&bs, m);
            let c = counts(&table, bs.len() as u32);
            if weights.iter().all(|&w| w == 0) {
                prop_assert!(table.iter().all(|&s| s == 0));
            } else {
                for (i, b) in bs.iter().enumerate() {
                    prop_assert_eq!(c[b.id as usize], q[i]);
                }
            }
        }

        #[test]
        fn weight_change_keeps_slots_of_unchanged_owners_under_quota(
            weights in prop::collection::vec(1u32..100, 2..20), which in 0usize..20, new_w in 1u32..200
        ) {
            let m = 4099;
            let bs = backends(weights.len() as u32, |i| weights[i as usize]);
            let before = build_table(&bs, m, None);
            let mut changed = bs.clone();
            let k = which % changed.len();
            changed[k].weight = new_w;
            let after = build_table(&changed, m, Some(&before));
            let q = quotas(&changed, m);
            let c = counts(&after, bs.len() as u32);
            for (i, b) in changed.iter().enumerate() {
                prop_assert_eq!(c[b.id as usize], q[i]);
            }
            // Minimal disruption: a backend gives up only the slots beyond its new quota,
            // so exactly sum(max(0, old count - new quota)) slots change owner.
            let old = counts(&before, bs.len() as u32);
            let lost: u32 = changed.iter().enumerate().map(|(i, b)| old[b.id as usize].saturating_sub(q[i])).sum();
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as u32;
            prop_assert_eq!(moved, lost);
        }
    }
}
