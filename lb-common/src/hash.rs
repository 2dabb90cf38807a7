//! The flow hash: one function, used by the XDP program to pick splits and table slots and
//! by the agent to answer `veer trace` with exactly the kernel's arithmetic.
//!
//! MurmurHash3's 32-bit block mix and finalizer over 32-bit words: cheap in BPF
//! (multiplies and rotates, no tables) and well distributed for table lookups.

use crate::FlowKey;

pub const SEED_SPLIT: u32 = 0x5eed_0001;
pub const SEED_SLOT: u32 = 0x5eed_0002;
pub const SEED_OFFSET: u32 = 0x5eed_0003;
pub const SEED_SKIP: u32 = 0x5eed_0004;
/// Least-conn's second candidate slot (0x5eed_0005 is the connection table's).
pub const SEED_SECOND: u32 = 0x5eed_0006;

#[inline(always)]
pub const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of an address (4 words, IPv4 in word 0) plus one extra word.
#[inline(always)]
pub const fn hash_addr(addr_be: &[u32; 4], extra: u32, seed: u32) -> u32 {
    let mut h = mix(seed, addr_be[0]);
    h = mix(h, addr_be[1]);
    h = mix(h, addr_be[2]);
    h = mix(h, addr_be[3]);
    finish(mix(h, extra))
}

/// 64-bit odd multiplier (2^64 / golden ratio).
const K64: u64 = 0x9e37_79b9_7f4a_7c15;

/// One round of the flow hash: xor a 64-bit word in, multiply.
#[inline(always)]
const fn round64(h: u64, hi: u32, lo: u32) -> u64 {
    (h ^ ((hi as u64) << 32 | lo as u64)).wrapping_mul(K64)
}

/// Hash of a full 5-tuple: 64-bit multiply rounds over the key's words, two at a time,
/// then MurmurHash3's 64-bit finalizer. BPF has 64-bit multiplies but no rotate, so this
/// costs a fraction of the 32-bit Murmur mix per word. An IPv4 key's address words 1..3
/// are zero by construction and skipped: two rounds for IPv4; IPv6 hashes source and
/// destination in two independent lanes of two rounds each, then the ports round.
#[inline(always)]
pub const fn hash_flow(key: &FlowKey, seed: u32) -> u32 {
    hash_flow64(key, seed) as u32
}

/// [`hash_flow`] with all 64 bits (the connection tables take a bucket from the low bits
/// and a tag from the high ones).
#[inline(always)]
pub const fn hash_flow64(key: &FlowKey, seed: u32) -> u64 {
    let ports = (key.sport_be as u32) << 16 | key.dport_be as u32;
    let mut h = (seed as u64 | (seed as u64) << 32) ^ K64;
    if key.family == crate::FAMILY_V4 {
        h = round64(h, key.src_be[0], key.dst_be[0]);
    } else {
        // Two independent lanes (source, destination): half the dependent multiplies.
        let a = round64(round64(h, key.src_be[0], key.src_be[1]), key.src_be[2], key.src_be[3]);
        let b = round64(
            round64(h ^ K64.rotate_left(17), key.dst_be[0], key.dst_be[1]),
            key.dst_be[2],
            key.dst_be[3],
        );
        h = a ^ b.rotate_left(32);
    }
    h = round64(h, ports, key.proto as u32);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Does this new flow go to the VIP's next pool? `by_client` keys on the client address
/// alone, so one client always lands in one pool, and raising `split_bp` only ever moves
/// clients from the current pool to the next one.
#[inline(always)]
pub const fn split_to_next(key: &FlowKey, by_client: bool, split_bp: u32) -> bool {
    let h = if by_client {
        hash_addr(&key.src_be, 0, SEED_SPLIT)
    } else {
        hash_flow(key, SEED_SPLIT)
    };
    h % crate::SPLIT_SCALE < split_bp
}

/// The Maglev slot a new flow reads.
#[inline(always)]
pub const fn table_slot(key: &FlowKey, by_source: bool, ring_size: u32) -> u32 {
    let h = if by_source {
        hash_addr(&key.src_be, 0, SEED_SLOT)
    } else {
        hash_flow(key, SEED_SLOT)
    };
    h % ring_size
}

/// Least-conn's second candidate: a hash of the flow independent of [`table_slot`]'s.
#[inline(always)]
pub const fn second_hash(key: &FlowKey) -> u32 {
    hash_flow(key, SEED_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = FlowKey {
            src_be: [1, 0, 0, 0],
            dst_be: [2, 0, 0, 0],
            sport_be: 3,
            dport_be: 4,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        let h = hash_flow(&base, SEED_SLOT);
        let variants = [
            FlowKey {
                src_be: [9, 0, 0, 0],
                ..base
            },
            FlowKey {
                dst_be: [3, 0, 0, 0],
                ..base
            },
            FlowKey { sport_be: 5, ..base },
            FlowKey { dport_be: 5, ..base },
            FlowKey { proto: 17, ..base },
        ];
        for v in variants {
            assert_ne!(hash_flow(&v, SEED_SLOT), h, "{v:?}");
        }
        assert_ne!(hash_flow(&base, SEED_SPLIT), h, "seeds must give independent hashes");
        // IPv6 keys hash every address word.
        let v6 = FlowKey { family: 6, ..base };
        let h6 = hash_flow(&v6, SEED_SLOT);
        for w in 1..4 {
            let mut src = v6;
            src.src_be[w] = 1;
            let mut dst = v6;
            dst.dst_be[w] = 1;
            assert_ne!(hash_flow(&src, SEED_SLOT), h6, "{src:?}");
            assert_ne!(hash_flow(&dst, SEED_SLOT), h6, "{dst:?}");
        }
    }

    #[test]
    fn split_is_monotone_in_split_bp() {
        for i in 0..2000u32 {
            let key = FlowKey {
                src_be: [i, 0, 0, 0],
                sport_be: i as u16,
                ..Default::default()
            };
            let mut was_next = false;
            for bp in (0..=SPLIT_STEPS).map(|s| s * 500) {
                let next = split_to_next(&key, true, bp);
                assert!(!was_next || next, "client {i} moved back at {bp} bp");
                was_next = next;
            }
            assert!(split_to_next(&key, false, crate::SPLIT_SCALE));
            assert!(!split_to_next(&key, false, 0));
        }
    }
    const SPLIT_STEPS: u32 = 20;
}

#[cfg(test)]
mod known_answers {
    use super::*;
    use crate::conntrack::{SEED_CONN, slot};

    fn v4() -> FlowKey {
        FlowKey {
            src_be: [u32::from_ne_bytes([192, 0, 2, 10]), 0, 0, 0],
            dst_be: [u32::from_ne_bytes([198, 51, 100, 1]), 0, 0, 0],
            sport_be: 40000u16.to_be(),
            dport_be: 443u16.to_be(),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    fn v6() -> FlowKey {
        FlowKey {
            src_be: [0x0db8_0120, 0, 0, 0x0a00_0000],
            dst_be: [0x0db8_0120, 0, 0, 0x0100_0000],
            sport_be: 5353u16.to_be(),
            dport_be: 53u16.to_be(),
            proto: 17,
            family: 6,
            _pad: [0; 2],
        }
    }

    /// The flow hash and the table positions derived from it are part of the on-disk
    /// contract: pinned connection tables and Maglev tables kept across an upgrade are only
    /// valid if the new binary hashes exactly as the old one did. Changing any of these
    /// values needs a map-name bump (docs/decisions.md).
    #[test]
    fn the_flow_hash_never_changes() {
        let (a, b) = (v4(), v6());
        assert_eq!(hash_flow(&a, SEED_SLOT), 0x1597_4406);
        assert_eq!(hash_flow(&a, SEED_SPLIT), 0xf41f_1fc5);
        assert_eq!(hash_flow64(&a, SEED_CONN), 0x18d6_8bc1_4d5a_03ab);
        assert_eq!(table_slot(&a, false, 65537), 11887);
        assert_eq!(
            slot(&a, (1 << 18) - 1),
            crate::conntrack::Slot {
                index: 132_011,
                tag: 416_713_665
            }
        );
        assert_eq!(hash_flow(&b, SEED_SLOT), 0x9043_2c29);
        assert_eq!(hash_flow(&b, SEED_SPLIT), 0x4d49_0ae1);
        assert_eq!(hash_flow64(&b, SEED_CONN), 0xfc73_e69b_a1da_2a68);
        assert_eq!(table_slot(&b, false, 65537), 39911);
        assert_eq!(
            slot(&b, (1 << 18) - 1),
            crate::conntrack::Slot {
                index: 141_928,
                tag: 4_235_454_105
            }
        );
    }
}
