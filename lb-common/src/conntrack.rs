//! The connection tables (FLOWS: client 5-tuple -> backend; NAT_REV: reply 5-tuple -> client)
//! as set-associative arrays: a bucket of [`WAYS`] entries per hash value, an entry stamped
//! with its last use, and the least recently used way replaced when a bucket is full.
//!
//! This replaces kernel LRU hash maps, whose insert (free-list pop, eviction walk, bucket
//! locks over cold memory) cost about 200 ns each, two per new NAT flow. Here a lookup is
//! one array access plus [`WAYS`] key compares, and an insert is a plain write of one entry
//! (see docs/decisions.md). The agent reads the same layout through a memory mapping.

use core::mem::size_of;

use crate::{Flow, FlowKey, NatRev, hash::hash_flow};

/// Entries per bucket.
pub const WAYS: usize = 4;
/// Seed of the bucket hash (independent of the split and Maglev slot hashes).
pub const SEED_CONN: u32 = 0x5eed_0005;

/// A FLOWS entry: one cache line. `key.family == 0` marks a free way.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub flow: Flow,
    /// Last use, in units of 2^20 ns (about a millisecond), wrapping.
    pub stamp: u32,
}
const _: () = assert!(size_of::<FlowEntry>() == 64);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBucket {
    pub ways: [FlowEntry; WAYS],
}
const _: () = assert!(size_of::<FlowBucket>() == 256);

/// A NAT_REV entry: two cache lines, keyed by the reply's 5-tuple (backend -> balancer).
/// Key and stamp share the first line: a lookup or a victim search reads only that one.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevEntry {
    pub key: FlowKey,
    pub stamp: u32,
    pub _pad: u32,
    pub rev: NatRev,
}
const _: () = assert!(size_of::<RevEntry>() == 128);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevBucket {
    pub ways: [RevEntry; WAYS],
}
const _: () = assert!(size_of::<RevBucket>() == 512);

/// Buckets for a table of `capacity` flows: a power of two, so the index is a mask.
pub const fn buckets(capacity: u32) -> u32 {
    let b = capacity.div_ceil(WAYS as u32).next_power_of_two();
    if b == 0 { 1 } else { b }
}

/// The bucket of `key` in a table of `mask + 1` buckets.
#[inline(always)]
pub const fn bucket_index(key: &FlowKey, mask: u32) -> u32 {
    hash_flow(key, SEED_CONN) & mask
}

/// Time in stamp units from a nanosecond clock.
#[inline(always)]
pub const fn stamp(ns: u64) -> u32 {
    (ns >> 20) as u32
}

/// What both entry kinds have.
pub trait Entry {
    fn key(&self) -> &FlowKey;
    fn stamp(&self) -> u32;
}

impl Entry for FlowEntry {
    #[inline(always)]
    fn key(&self) -> &FlowKey {
        &self.key
    }
    #[inline(always)]
    fn stamp(&self) -> u32 {
        self.stamp
    }
}

impl Entry for RevEntry {
    #[inline(always)]
    fn key(&self) -> &FlowKey {
        &self.key
    }
    #[inline(always)]
    fn stamp(&self) -> u32 {
        self.stamp
    }
}

/// Equal 5-tuples, compared as ten words: first the client address's low word and the
/// ports, which tell most keys apart, then the rest without a branch per field.
#[inline(always)]
pub fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    // SAFETY: FlowKey is repr(C), 40 bytes, 4-byte aligned, no implicit padding.
    let (a, b) = unsafe { (&*(a as *const FlowKey).cast::<[u32; 10]>(), &*(b as *const FlowKey).cast::<[u32; 10]>()) };
    if a[0] != b[0] || a[8] != b[8] {
        return false;
    }
    let mut diff = 0;
    let mut i = 0;
    while i < 10 {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}

/// The way holding `key`, if any.
#[inline(always)]
pub fn find<E: Entry>(ways: &[E; WAYS], key: &FlowKey) -> Option<usize> {
    let mut w = 0;
    while w < WAYS {
        if same_key(ways[w].key(), key) {
            return Some(w);
        }
        w += 1;
    }
    None
}

/// The way a new entry takes: a free one, else the least recently used (ages compared
/// with wrapping arithmetic, so the stamp's wrap-around after ~50 days is harmless).
#[inline(always)]
pub fn victim<E: Entry>(ways: &[E; WAYS], now: u32) -> usize {
    let mut best = 0;
    let mut best_age = 0u32;
    let mut w = 0;
    while w < WAYS {
        if ways[w].key().family == 0 {
            return w;
        }
        let age = now.wrapping_sub(ways[w].stamp());
        if age > best_age {
            best_age = age;
            best = w;
        }
        w += 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src_be: [i, 0, 0, 0],
            dst_be: [7, 0, 0, 0],
            sport_be: i as u16,
            dport_be: 80,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn buckets_cover_the_capacity_as_a_power_of_two() {
        assert_eq!(buckets(1), 1);
        assert_eq!(buckets(4), 1);
        assert_eq!(buckets(5), 2);
        assert_eq!(buckets(65_536), 16_384);
        assert_eq!(buckets(1 << 20), 1 << 18);
        assert_eq!(buckets(100_000), 32_768);
    }

    #[test]
    fn find_matches_whole_keys_only() {
        let mut ways = [FlowEntry::default(); WAYS];
        ways[2].key = key(5);
        assert_eq!(find(&ways, &key(5)), Some(2));
        assert_eq!(find(&ways, &key(6)), None);
        let mut other = key(5);
        other.proto = 17;
        assert_eq!(find(&ways, &other), None);
        other = key(5);
        other.dst_be[3] = 1;
        assert_eq!(find(&ways, &other), None);
    }

    #[test]
    fn victim_prefers_free_then_least_recently_used() {
        let mut ways = [FlowEntry::default(); WAYS];
        for (w, e) in ways.iter_mut().enumerate() {
            e.key = key(w as u32);
            e.stamp = 100 + w as u32;
        }
        assert_eq!(victim(&ways, 200), 0, "oldest");
        ways[0].stamp = 150;
        assert_eq!(victim(&ways, 200), 1);
        ways[3].key.family = 0;
        assert_eq!(victim(&ways, 200), 3, "a free way first");
        // Across the stamp's wrap-around: u32::MAX - 5 is older than 3.
        let mut ways = [FlowEntry::default(); WAYS];
        for (w, e) in ways.iter_mut().enumerate() {
            e.key = key(w as u32);
            e.stamp = 3;
        }
        ways[2].stamp = u32::MAX - 5;
        assert_eq!(victim(&ways, 10), 2);
    }

    #[test]
    fn bucket_index_spreads_flows_evenly() {
        let mask = buckets(1 << 16) - 1;
        let mut count = [0u32; 16_384];
        for i in 0..(1u32 << 16) {
            count[bucket_index(&key(i.wrapping_mul(2_654_435_761)), mask) as usize] += 1;
        }
        let max = *count.iter().max().unwrap();
        assert!(max <= 16, "fullest bucket holds {max} of a mean of 4");
    }
}
