//! The round-robin sequence: nginx's smooth weighted round robin, laid out as a table of M
//! slots that the data path walks with a per-CPU cursor.
//!
//! Every step adds each backend's weight to its running score, picks the highest score
//! (the first on a tie) and takes the total weight off it. Over one period (the weights'
//! sum, divided by their gcd) every backend appears exactly in proportion to its weight,
//! and spread out rather than in runs (1:1:2 gives C A B C). The period is repeated to fill
//! the table; where it does not divide M, the last period is cut short once per M slots.
//! A period longer than M is cut at M: its prefix is still within one turn of each share.

use std::{vec, vec::Vec};

use crate::maglev::TableBackend;

/// The sequence for `backends` in their order, `m` slots of backend ids; all 0 when no
/// backend has weight.
pub fn build_sequence(backends: &[TableBackend], m: u32) -> Vec<u32> {
    let mut table = vec![0u32; m as usize];
    let g = backends.iter().map(|b| b.weight).fold(0, gcd);
    if g == 0 || m == 0 {
        return table;
    }
    let weights: Vec<i64> = backends.iter().map(|b| (b.weight / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    let period = total.min(m as i64) as usize;
    let mut score = vec![0i64; backends.len()];
    for slot in table.iter_mut().take(period) {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            score[i] += w;
            if score[i] > score[best] {
                best = i;
            }
        }
        score[best] -= total;
        *slot = backends[best].id;
    }
    for i in period..m as usize {
        table[i] = table[i - period];
    }
    table
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<TableBackend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| TableBackend {
                id: i as u32 + 1,
                addr_be: [i as u32, 0, 0, 0],
                port_be: 80,
                weight,
            })
            .collect()
    }

    #[test]
    fn weights_1_1_2_interleave_as_nginx_deals_them() {
        let t = build_sequence(&backends(&[1, 1, 2]), 13);
        assert_eq!(&t[..8], &[3, 1, 2, 3, 3, 1, 2, 3]);
        // Scaled weights (slow start multiplies by a percent) deal the same sequence.
        assert_eq!(build_sequence(&backends(&[100, 100, 200]), 13), t);
        // nginx's own example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(&build_sequence(&backends(&[5, 1, 1]), 13)[..7], &[1, 1, 2, 1, 3, 1, 1]);
    }

    #[test]
    fn every_window_of_one_period_holds_each_backend_by_its_weight() {
        let bs = backends(&[3, 7, 1, 9]);
        let t = build_sequence(&bs, 65537);
        for start in [0usize, 5, 1000, 65537 - 20 - 1] {
            for (b, want) in bs.iter().zip([3, 7, 1, 9]) {
                let got = t[start..start + 20].iter().filter(|&&id| id == b.id).count();
                assert_eq!(got, want, "window at {start}, backend {}", b.id);
            }
        }
    }

    #[test]
    fn a_period_longer_than_the_table_is_cut_but_stays_proportional() {
        let bs = backends(&[9_973, 10_000, 6_007]);
        let m = 4099;
        let t = build_sequence(&bs, m);
        let total: f64 = 25_980.0;
        for b in &bs {
            let got = t.iter().filter(|&&id| id == b.id).count() as f64;
            let want = b.weight as f64 / total * m as f64;
            assert!((got - want).abs() <= 1.0, "{got} vs {want}");
        }
    }

    #[test]
    fn no_weight_no_sequence() {
        assert!(build_sequence(&backends(&[0, 0]), 7).iter().all(|&id| id == 0));
        assert!(build_sequence(&[], 7).iter().all(|&id| id == 0));
        assert_eq!(build_sequence(&backends(&[0, 4]), 7), vec![2; 7]);
    }
}
