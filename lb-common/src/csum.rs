//! Internet checksum arithmetic (RFC 1071 / RFC 1624) on 16-bit words loaded raw from the
//! packet. One's-complement sums are byte-order independent, so no swapping is needed as
//! long as every word is taken the same way.

/// Folds a 32-bit accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Accumulates the change of one 16-bit word from `old` to `new` (RFC 1624: ~m + m').
#[inline(always)]
pub const fn diff16(acc: u32, old: u16, new: u16) -> u32 {
    acc + (!old) as u32 + new as u32
}

/// Accumulates the change of one 32-bit word (two 16-bit halves).
#[inline(always)]
pub const fn diff32(acc: u32, old: u32, new: u32) -> u32 {
    let acc = diff16(acc, old as u16, new as u16);
    // keep the accumulator from overflowing when many words change
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = diff16(acc, (old >> 16) as u16, (new >> 16) as u16);
    (acc & 0xffff) + (acc >> 16)
}

/// The change of `n` 32-bit words (raw loads, as in `FlowKey`) from `old` to `new`, folded
/// to at most 17 bits: one 64-bit add per word instead of two 16-bit steps, since a 32-bit
/// word is congruent to the sum of its halves modulo 0xffff.
#[inline(always)]
pub const fn diff_words(n: usize, old: &[u32; 4], new: &[u32; 4]) -> u32 {
    let mut acc: u64 = 0;
    let mut i = 0;
    while i < n && i < 4 {
        acc += (!old[i]) as u64 + new[i] as u64;
        i += 1;
    }
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    ((acc & 0xffff) + (acc >> 16)) as u32
}

/// Applies an accumulated difference to a stored checksum: HC' = ~(~HC + diff).
#[inline(always)]
pub const fn apply(csum: u16, diff: u32) -> u16 {
    !fold((!csum) as u32 + diff)
}

/// The full checksum of a byte string (RFC 1071), for tests and userspace checks.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u16::from_be_bytes([c[0], c[1]]) as u64;
        }
        if let [last] = chunks.remainder() {
            sum += u16::from_be_bytes([*last, 0]) as u64;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut data = [0u8; 20];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        let before = checksum(&[&data]);
        let old = u32::from_ne_bytes(data[4..8].try_into().unwrap());
        let new = 0xdead_beefu32;
        data[4..8].copy_from_slice(&new.to_ne_bytes());
        let old_port = u16::from_ne_bytes([data[10], data[11]]);
        data[10..12].copy_from_slice(&0x1f90u16.to_ne_bytes());
        // checksum() works big-endian; the stored field is big-endian, compare raw loads
        let stored_before = u16::from_ne_bytes(before.to_be_bytes());
        let d = diff16(diff32(0, old, new), old_port, 0x1f90);
        let updated = apply(stored_before, d);
        let expect = u16::from_ne_bytes(checksum(&[&data]).to_be_bytes());
        assert_eq!(updated, expect);
    }

    #[test]
    fn word_diffs_match_full_recompute() {
        // Pseudo-random headers: 40 bytes, two 16-byte "addresses" rewritten, both ways.
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..2000 {
            let mut data = [0u8; 40];
            for b in data.iter_mut() {
                *b = next() as u8;
            }
            if round % 7 == 0 {
                data[8..12].fill(0xff); // all-ones words: the carry paths
            }
            let n = if round % 2 == 0 { 4 } else { 1 };
            let word = |d: &[u8; 40], at: usize| -> [u32; 4] {
                core::array::from_fn(|i| u32::from_ne_bytes(d[at + 4 * i..at + 4 * i + 4].try_into().unwrap()))
            };
            let stored = u16::from_ne_bytes(checksum(&[&data]).to_be_bytes());
            let (old_a, old_b) = (word(&data, 8), word(&data, 24));
            let new_a: [u32; 4] = core::array::from_fn(|_| next());
            let new_b: [u32; 4] = core::array::from_fn(|_| if round % 5 == 0 { u32::MAX } else { next() });
            for i in 0..n {
                data[8 + 4 * i..12 + 4 * i].copy_from_slice(&new_a[i].to_ne_bytes());
                data[24 + 4 * i..28 + 4 * i].copy_from_slice(&new_b[i].to_ne_bytes());
            }
            let d = diff_words(n, &old_a, &new_a) + diff_words(n, &old_b, &new_b);
            let expect = u16::from_ne_bytes(checksum(&[&data]).to_be_bytes());
            let got = apply(stored, d);
            assert_eq!(got, expect, "round {round}");
        }
    }
}
