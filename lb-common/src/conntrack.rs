//! The connection tables (FLOWS: client 5-tuple -> backend; NAT_REV: reply 5-tuple -> client)
//! as set-associative arrays: a bucket of [`WAYS`] entries per hash value, a compact header
//! with a tag and a last-use stamp per way, and the least recently used way replaced when a
//! bucket is full.
//!
//! This replaces kernel LRU hash maps, whose insert (free-list pop, eviction walk, bucket
//! locks over cold memory) cost about 200 ns each, two per new NAT flow. Here a lookup reads
//! the bucket's header and, on a tag match, that way's line; an insert is a plain write of
//! one entry (see docs/decisions.md). The agent reads the same layout through a memory mapping.

use core::mem::size_of;

use crate::{Flow, FlowKey, NatRev, hash::hash_flow64};

/// Entries per bucket.
pub const WAYS: usize = 4;
/// Seed of the bucket hash (independent of the split and Maglev slot hashes).
pub const SEED_CONN: u32 = 0x5eed_0005;

/// Bit of a used way's tag: the flow is confirmed (the backend answered, not with a reset,
/// and the client spoke again after that answer: a completed TCP handshake). A spoofed
/// source never sees the answer, so its entries stay unconfirmed and give way first. The
/// bit is not part of the key's tag ([`slot`] clears it); lookups compare tags without it.
pub const TAG_CONFIRMED: u32 = 1 << 1;

/// Stamps up to this far ahead of `now` (written by another CPU that read the clock later)
/// read as age 0; anything further ahead is a wrapped old stamp.
pub const FUTURE: u32 = 1 << 10;

/// How long a confirmed flow's reverse entry (and so its NAT port) is held after its last
/// answer, in stamp units (2^18 ms-units: about 275 s, the idle timeout of common cloud
/// balancers). Within it the entry is never evicted and its port never handed out.
pub const HOLD_CONFIRMED: u32 = 1 << 18;

/// A bucket's header, in an array of its own (FLOW_HEADS, REV_HEADS): a tag and a last-use
/// stamp per way, 32 bytes, two buckets per cache line. A miss or a victim search reads
/// only this compact array; the entries (FLOWS, NAT_REV) are read on a tag match and
/// written on an insert. `tags[w] == 0` marks a free way; a used way's tag is never 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heads {
    pub tags: [u32; WAYS],
    /// Last use, in units of 2^20 ns (about a millisecond), wrapping.
    pub stamps: [u32; WAYS],
}
const _: () = assert!(size_of::<Heads>() == 8 * WAYS);

/// A bucket's entries.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ways<E> {
    pub ways: [E; WAYS],
}

/// A FLOWS entry: one cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub flow: Flow,
    /// Where this flow's reverse entry was put (`bucket index << 2 | way`) and its tag: an
    /// idle flow checks it on its next packet and puts the entry back if it gave way.
    pub rev_link: u32,
    pub rev_tag: u32,
}
const _: () = assert!(size_of::<FlowEntry>() == 64);

/// A NAT_REV entry, keyed by the reply's 5-tuple (backend -> balancer): two cache lines.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevEntry {
    pub key: FlowKey,
    pub rev: NatRev,
}
const _: () = assert!(size_of::<RevEntry>() == 128);

pub type FlowWays = Ways<FlowEntry>;
pub type RevWays = Ways<RevEntry>;
const _: () = assert!(size_of::<FlowWays>() == WAYS * 64);
const _: () = assert!(size_of::<RevWays>() == WAYS * 128);

/// Buckets for a table of `capacity` flows: a power of two, so the index is a mask.
pub const fn buckets(capacity: u32) -> u32 {
    capacity.div_ceil(WAYS as u32).next_power_of_two()
}

/// Where a key lives: its bucket in a table of `mask + 1` buckets, and its tag there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    pub tag: u32,
}

#[inline(always)]
pub const fn slot(key: &FlowKey, mask: u32) -> Slot {
    let h = hash_flow64(key, SEED_CONN);
    Slot {
        index: h as u32 & mask,
        tag: ((h >> 32) as u32 & !TAG_CONFIRMED) | 1,
    }
}

/// How long ago `stamp` was, in stamp units. A stamp from the near future (another CPU, or
/// the data path while the agent scans, read the clock after `now` did) is 0 old. Every
/// other difference is an age: the 32-bit stamp wraps after about 52 days, and only an
/// entry idle for 52 days minus at most [`FUTURE`] (about a second) reads as fresh.
#[inline(always)]
pub const fn age(now: u32, stamp: u32) -> u32 {
    let d = now.wrapping_sub(stamp);
    if d > u32::MAX - FUTURE { 0 } else { d }
}

/// Age for ordering: like [`age`], but a stamp from the near future ranks younger than now.
#[inline(always)]
const fn rank(now: u32, stamp: u32) -> u32 {
    now.wrapping_sub(stamp).wrapping_add(FUTURE + 1)
}

/// How a new entry got its way (see [`Heads::choose`]); also the flood guard's counters.
pub const TAKE_FREE: u32 = 0;
pub const TAKE_UNCONFIRMED: u32 = 1;
pub const TAKE_CONFIRMED: u32 = 2;
/// No way may be taken: every way holds a confirmed entry younger than the hold.
pub const TAKE_NONE: u32 = 3;

/// A way to write a new entry into, and how it was chosen (`TAKE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub way: usize,
    pub kind: u32,
}

/// A table location packed in 32 bits: bucket index and way.
#[inline(always)]
pub const fn link(index: u32, way: usize) -> u32 {
    index << 2 | (way as u32 & 3)
}
const _: () = assert!(WAYS == 4, "link() packs the way in two bits");

/// Time in stamp units from a nanosecond clock.
#[inline(always)]
pub const fn stamp(ns: u64) -> u32 {
    (ns >> 20) as u32
}

/// What both entry kinds have.
pub trait Keyed {
    fn key(&self) -> &FlowKey;
}

impl Keyed for FlowEntry {
    #[inline(always)]
    fn key(&self) -> &FlowKey {
        &self.key
    }
}

impl Keyed for RevEntry {
    #[inline(always)]
    fn key(&self) -> &FlowKey {
        &self.key
    }
}

/// Equal 5-tuples, compared as ten words: first the client address's low word and the
/// ports, which tell most keys apart, then the rest without a branch per field.
#[inline(always)]
pub fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    // SAFETY: FlowKey is repr(C), 40 bytes, 4-byte aligned, no implicit padding.
    let (a, b) = unsafe {
        (
            &*(a as *const FlowKey).cast::<[u32; 10]>(),
            &*(b as *const FlowKey).cast::<[u32; 10]>(),
        )
    };
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

impl Heads {
    /// The way holding `key` (whose tag is `tag`), if any.
    #[inline(always)]
    pub fn find<E: Keyed>(&self, ways: &Ways<E>, key: &FlowKey, tag: u32) -> Option<usize> {
        let mut w = 0;
        while w < WAYS {
            if self.tags[w] & !TAG_CONFIRMED == tag && same_key(ways.ways[w].key(), key) {
                return Some(w);
            }
            w += 1;
        }
        None
    }

    /// The way a new entry takes: a free one, else the least recently used unconfirmed one,
    /// else the least recently used confirmed one idle for at least `hold` (never, with
    /// `u32::MAX`). Confirmed entries thus give way only to each other's age, never to a
    /// flood of spoofed first packets (see docs/decisions.md, "SYN floods").
    #[inline(always)]
    pub fn choose(&self, now: u32, hold: u32) -> Choice {
        let (mut open, mut open_age) = (WAYS, 0);
        let (mut held, mut held_age) = (WAYS, 0);
        let mut w = 0;
        while w < WAYS {
            let tag = self.tags[w];
            if tag == 0 {
                return Choice {
                    way: w,
                    kind: TAKE_FREE,
                };
            }
            let a = rank(now, self.stamps[w]);
            if tag & TAG_CONFIRMED == 0 {
                if open == WAYS || a > open_age {
                    (open, open_age) = (w, a);
                }
            } else if age(now, self.stamps[w]) >= hold && (held == WAYS || a > held_age) {
                (held, held_age) = (w, a);
            }
            w += 1;
        }
        if open < WAYS {
            Choice {
                way: open,
                kind: TAKE_UNCONFIRMED,
            }
        } else if held < WAYS {
            Choice {
                way: held,
                kind: TAKE_CONFIRMED,
            }
        } else {
            Choice {
                way: WAYS,
                kind: TAKE_NONE,
            }
        }
    }

    /// The way a new entry takes when any entry may give way: [`Heads::choose`] with no hold.
    #[inline(always)]
    pub fn victim(&self, now: u32) -> usize {
        self.choose(now, 0).way
    }

    /// Used ways' entries, for readers of the whole table.
    pub fn used<'a, E>(&'a self, ways: &'a Ways<E>) -> impl Iterator<Item = &'a E> {
        self.tags
            .iter()
            .zip(ways.ways.iter())
            .filter(|(t, _)| **t != 0)
            .map(|(_, e)| e)
    }
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

    #[derive(Default)]
    struct Bucket {
        head: Heads,
        ways: FlowWays,
    }

    impl Bucket {
        fn find(&self, k: &FlowKey, tag: u32) -> Option<usize> {
            self.head.find(&self.ways, k, tag)
        }
    }

    fn put(b: &mut Bucket, w: usize, k: FlowKey, stamp: u32) {
        b.head.tags[w] = slot(&k, 0).tag;
        b.head.stamps[w] = stamp;
        b.ways.ways[w].key = k;
    }

    #[test]
    fn buckets_cover_the_capacity_as_a_power_of_two() {
        let w = WAYS as u32;
        assert_eq!(buckets(1), 1);
        assert_eq!(buckets(w), 1);
        assert_eq!(buckets(w + 1), 2);
        assert_eq!(buckets(65_536), 65_536 / w);
        assert_eq!(buckets(1 << 20), (1 << 20) / w);
        for capacity in [100_000, 3, 1000, 1 << 26] {
            let b = buckets(capacity);
            assert!(
                b.is_power_of_two() && b * w >= capacity && (b / 2) * w < capacity,
                "{capacity}"
            );
        }
    }

    #[test]
    fn find_matches_whole_keys_only() {
        let mut b = Bucket::default();
        put(&mut b, 2, key(5), 0);
        assert_eq!(b.find(&key(5), slot(&key(5), 0).tag), Some(2));
        assert_eq!(b.find(&key(6), slot(&key(6), 0).tag), None);
        // Same tag, other key: still no match.
        b.head.tags[1] = slot(&key(6), 0).tag;
        b.ways.ways[1].key = key(7);
        assert_eq!(b.find(&key(6), slot(&key(6), 0).tag), None);
        let mut other = key(5);
        other.proto = 17;
        assert_eq!(b.find(&other, slot(&key(5), 0).tag), None);
        // A freed way (tag 0) never matches, whatever its stale key.
        b.head.tags[2] = 0;
        assert_eq!(b.find(&key(5), slot(&key(5), 0).tag), None);
        assert_ne!(slot(&key(5), 0).tag, 0);
    }

    #[test]
    fn victim_prefers_free_then_least_recently_used() {
        let mut b = Bucket::default();
        for w in 0..WAYS {
            put(&mut b, w, key(w as u32), 100 + w as u32);
        }
        assert_eq!(b.head.victim(200), 0, "oldest");
        b.head.stamps[0] = 150;
        assert_eq!(b.head.victim(200), 1);
        b.head.tags[3] = 0;
        assert_eq!(b.head.victim(200), 3, "a free way first");
        assert_eq!(b.head.used(&b.ways).count(), WAYS - 1);
        // Across the stamp's wrap-around: u32::MAX - 5 is older than 3.
        let mut b = Bucket::default();
        for w in 0..WAYS {
            put(&mut b, w, key(w as u32), 3);
        }
        b.head.stamps[2] = u32::MAX - 5;
        assert_eq!(b.head.victim(10), 2);
        // A stamp written by another CPU after this one read the clock is the newest.
        let mut b = Bucket::default();
        for w in 0..WAYS {
            put(&mut b, w, key(w as u32), 100);
        }
        b.head.stamps[0] = 101;
        assert_eq!(b.head.victim(100), 1, "a stamp from the future is not the oldest");
        assert_eq!(age(100, 101), 0);
        assert_eq!(age(5, u32::MAX), 6);
    }

    /// Stamps count 2^20 ns and wrap after about 52 days: an entry idle for a month is old,
    /// not fresh, and gives way before one used a second ago.
    #[test]
    fn a_month_old_stamp_reads_as_old_across_the_wrap() {
        let day = (86_400_000_000_000u64 >> 20) as u32; // stamp units per day (about 82 million)
        let now = 5_000u32;
        for idle_days in [1u32, 20, 26, 30, 45, 51] {
            let old = now.wrapping_sub(idle_days * day);
            assert!(age(now, old) >= idle_days * day - 1, "{idle_days} days idle");
            let mut b = Bucket::default();
            for w in 0..WAYS {
                put(&mut b, w, key(w as u32), now - 1000);
            }
            b.head.stamps[3] = old;
            assert_eq!(b.head.victim(now), 3, "{idle_days} days idle gives way first");
        }
    }

    /// A new entry takes a free way, else the oldest unconfirmed one (even when confirmed
    /// ones are older), else the oldest confirmed one idle for at least the hold, else none.
    #[test]
    fn unconfirmed_entries_give_way_before_confirmed_ones() {
        let mut b = Bucket::default();
        for w in 0..WAYS {
            put(&mut b, w, key(w as u32), 100 + w as u32);
        }
        b.head.tags[0] |= TAG_CONFIRMED;
        b.head.tags[1] |= TAG_CONFIRMED;
        let c = |kind, way| Choice { way, kind };
        assert_eq!(b.head.choose(200, u32::MAX), c(TAKE_UNCONFIRMED, 2));
        // Lookups ignore the bit.
        let k = key(0);
        assert_eq!(b.find(&k, slot(&k, 0).tag), Some(0));
        b.head.tags[2] |= TAG_CONFIRMED;
        b.head.tags[3] |= TAG_CONFIRMED;
        assert_eq!(
            b.head.choose(200, u32::MAX),
            c(TAKE_NONE, WAYS),
            "no confirmed way gives way"
        );
        assert_eq!(b.head.choose(200, 0), c(TAKE_CONFIRMED, 0));
        assert_eq!(b.head.choose(200, 99), c(TAKE_CONFIRMED, 0), "idle 100 >= hold 99");
        assert_eq!(b.head.choose(200, 100), c(TAKE_CONFIRMED, 0));
        assert_eq!(
            b.head.choose(200, 101),
            c(TAKE_NONE, WAYS),
            "all idle less than the hold"
        );
        b.head.tags[1] = 0;
        assert_eq!(b.head.choose(200, u32::MAX), c(TAKE_FREE, 1));
        // slot() never sets the bit itself.
        for i in 0..1000 {
            assert_eq!(slot(&key(i), 7).tag & TAG_CONFIRMED, 0);
        }
    }

    #[test]
    fn slots_spread_flows_evenly() {
        // A table filled to its nominal capacity: one flow per way on average.
        let n = buckets(1 << 16);
        let mut count = [0u32; 1 << 16];
        for i in 0..(1u32 << 16) {
            count[slot(&key(i.wrapping_mul(2_654_435_761)), n - 1).index as usize] += 1;
        }
        let max = *count.iter().max().unwrap() as usize;
        assert!(max <= 4 * WAYS, "fullest bucket holds {max} of a mean of {WAYS}");
        // Sequential clients and ports (as a load generator makes them) spread as well.
        count.fill(0);
        for i in 0..(1u32 << 16) {
            count[slot(&key(i), n - 1).index as usize] += 1;
        }
        let max = *count.iter().max().unwrap() as usize;
        assert!(max <= 4 * WAYS, "fullest bucket holds {max} of a mean of {WAYS}");
    }
}
