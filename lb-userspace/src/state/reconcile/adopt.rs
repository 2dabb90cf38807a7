//! Adoption: a reconciler for maps another agent left behind, built from what the maps
//! hold (the data path's truth), not from what a state file says they hold. Reconciling
//! it to the desired state then removes what the state no longer names, keeps every
//! surviving backend's id (its flows stay where they are) and gives new ones fresh ids.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::{AbKey, Backend, FAMILY_V4, VIP_FILTER_WORDS, VipInfo, VipKey};

use super::{Reconciler, Slots};
use crate::state::{Desired, Ids, Limits, backend_key, pool_key, vip_key};

/// What the pinned maps hold (read by the dataplane).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapContents {
    pub config: Option<lb_common::Config>,
    pub vips: Vec<(VipKey, VipInfo)>,
    /// Backend slots in use (state not unset), by id.
    pub backends: BTreeMap<u32, Backend>,
    pub filter: Vec<u64>,
    /// A/B rules: (prefix length, key).
    pub ab_rules: Vec<(u32, AbKey)>,
    /// Slots of every table a VIP names.
    pub tables: BTreeMap<u32, Vec<u32>>,
}

/// The address a map value holds (the inverse of `addr_be`).
pub fn ip_of(addr_be: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(addr_be[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in addr_be.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

/// A name no desired state uses: whatever carries it is removed by the next reconcile.
fn orphan(what: &str, id: u32) -> String {
    format!("(adopted {what} {id})")
}

impl Reconciler {
    /// The maps as found, named for `target` (the state about to be applied): a VIP by its
    /// key (address, port, protocol) in `target`, else by its id in `hint` (the persisted
    /// ids); a backend by its VIP and address; a table by the persisted ids, else by the
    /// pool of its VIP that shares most of its backends. Anything left unnamed is removed
    /// when `target` is reconciled.
    pub fn from_maps(limits: Limits, maps: MapContents, hint: Option<&Ids>, target: &Desired) -> Reconciler {
        let mut r = Reconciler::new(limits);
        for (key, info) in maps.vips {
            let by_key = target
                .config
                .vips
                .iter()
                .find(|v| vip_key(v) == key)
                .map(|v| v.name.clone());
            let by_id = || {
                hint.and_then(|h| h.vips.iter().find(|(_, id)| **id == info.vip_id))
                    .map(|(n, _)| n.clone())
            };
            let name = by_key
                .or_else(by_id)
                .filter(|n| !r.vips.contains_key(n))
                .unwrap_or_else(|| orphan("vip", info.vip_id));
            r.ids.vips.insert(name.clone(), info.vip_id);
            r.vips.insert(name, (key, info));
        }
        let vip_names: BTreeMap<u32, String> = r.vips.iter().map(|(n, (_, i))| (i.vip_id, n.clone())).collect();
        for (id, b) in maps.backends {
            let addr = SocketAddr::new(ip_of(b.addr_be, b.family), u16::from_be(b.port_be));
            let key = vip_names
                .get(&b.vip_id)
                .map(|vip| backend_key(vip, addr))
                .filter(|k| !r.ids.backends.contains_key(k))
                .unwrap_or_else(|| orphan("backend", id));
            r.ids.backends.insert(key, id);
            r.backends.insert(id, b);
        }
        // Every table a VIP names stays known (its id is not handed out while in use).
        for (name, (_, info)) in &r.vips {
            for tid in [info.table_current, info.table_next] {
                let Some(slots) = maps.tables.get(&tid).filter(|_| tid != 0) else {
                    continue;
                };
                if r.ids.tables.values().any(|t| *t == tid) {
                    continue;
                }
                if let Some(pool) = table_pool(name, tid, slots, hint, target, &r.ids) {
                    r.ids.tables.entry(pool_key(name, &pool)).or_insert(tid);
                }
            }
        }
        r.tables = maps
            .tables
            .into_iter()
            .map(|(id, slots)| (id, Slots::Held(slots.into())))
            .collect();
        r.filter = maps.filter;
        r.filter.resize(VIP_FILTER_WORDS as usize, 0);
        r.ab_rules = maps
            .ab_rules
            .iter()
            .map(|(len, k)| {
                (
                    *len,
                    [k.vip_id_be, k.addr_be[0], k.addr_be[1], k.addr_be[2], k.addr_be[3]],
                )
            })
            .collect::<BTreeSet<_>>();
        r.config = maps.config;
        let top = r.ids.backends.values().max().map_or(1, |m| m + 1);
        r.ids.next_backend = hint.map_or(top, |h| h.next_backend.max(top));
        r
    }
}

/// The pool of VIP `vip` that table `tid` was built for: the persisted ids say, or else
/// the pool of `target` whose backends fill most of its slots.
fn table_pool(vip: &str, tid: u32, slots: &[u32], hint: Option<&Ids>, target: &Desired, ids: &Ids) -> Option<String> {
    let prefix = format!("{vip}|");
    if let Some(pool) = hint.and_then(|h| {
        h.tables
            .iter()
            .find(|(k, id)| **id == tid && k.starts_with(&prefix))
            .map(|(k, _)| k[prefix.len()..].to_string())
    }) {
        return Some(pool);
    }
    let in_table: BTreeSet<u32> = slots.iter().copied().collect();
    target
        .vip(vip)?
        .pools
        .iter()
        .map(|p| {
            let shared = p
                .backends
                .iter()
                .filter_map(|b| ids.backends.get(&backend_key(vip, b.address)))
                .filter(|id| in_table.contains(id))
                .count();
            (shared, p.name.clone())
        })
        .filter(|(shared, _)| *shared > 0)
        .max()
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use lb_common::BACKEND_UNSET;

    use super::{
        super::tests::{desired, limits, snat},
        *,
    };
    use crate::state::{Op, addr_be};

    const TWO_VIPS: &str = r#"
[agent]
snat_v4 = "10.0.0.2"
ring_size = 251
[[vip]]
name = "web"
address = "10.0.0.100:80"
active = "main"
[[vip.pool]]
name = "main"
backends = [ { address = "10.0.1.1:80" }, { address = "10.0.1.2:80" }, { address = "10.0.1.3:80" } ]
[[vip]]
name = "old"
address = "10.0.0.100:81"
active = "main"
[[vip.pool]]
name = "main"
backends = [ { address = "10.0.1.1:80" }, { address = "10.0.1.2:80" } ]
"#;

    /// The maps as a data path would hold them after `ops` (a fake kernel).
    fn execute(maps: &mut MapContents, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Config(c) => maps.config = Some(*c),
                Op::Backend { id, value, .. } if value.state == BACKEND_UNSET => {
                    maps.backends.remove(id);
                }
                Op::Backend { id, value, .. } => {
                    maps.backends.insert(*id, *value);
                }
                Op::Table { id, slots } => {
                    maps.tables.insert(*id, slots.to_vec());
                }
                Op::Vip(k, i) => {
                    maps.vips.retain(|(key, _)| key != k);
                    maps.vips.push((*k, *i));
                }
                Op::RemoveVip(k) => maps.vips.retain(|(key, _)| key != k),
                // Weights live beside the state adoption reads: rewritten on every start.
                Op::Weight { .. } => {}
                Op::Filter(w, bits) => {
                    maps.filter.resize(VIP_FILTER_WORDS as usize, 0);
                    maps.filter[*w as usize] = *bits;
                }
                Op::AbRule {
                    prefix_len,
                    key,
                    insert,
                } => {
                    maps.ab_rules.retain(|(l, k)| !(l == prefix_len && k == key));
                    if *insert {
                        maps.ab_rules.push((*prefix_len, *key));
                    }
                }
            }
        }
        let named: BTreeSet<u32> = maps
            .vips
            .iter()
            .flat_map(|(_, i)| [i.table_current, i.table_next])
            .collect();
        maps.tables.retain(|id, _| named.contains(id));
    }

    /// A first agent programs `TWO_VIPS`; returns its reconciler and the maps it left.
    fn left_behind() -> (Reconciler, MapContents) {
        let mut r = Reconciler::new(limits());
        let mut maps = MapContents::default();
        execute(&mut maps, &r.reconcile(&desired(TWO_VIPS), snat(), None).unwrap());
        (r, maps)
    }

    /// The file after the edit: VIP "old" gone, web's pool changed (a weight, a new backend).
    fn edited() -> Desired {
        let text = TWO_VIPS.split("[[vip]]\nname = \"old\"").next().unwrap().replace(
            "{ address = \"10.0.1.3:80\" } ]",
            "{ address = \"10.0.1.3:80\", weight = 300 }, { address = \"10.0.1.4:80\" } ]",
        );
        desired(&text)
    }

    fn converge(hint: Option<&Ids>) -> (Reconciler, Reconciler, MapContents) {
        let (first, mut maps) = left_behind();
        let target = edited();
        let mut r = Reconciler::from_maps(limits(), maps.clone(), hint, &target);
        execute(&mut maps, &r.reconcile(&target, snat(), None).unwrap());
        (first, r, maps)
    }

    #[test]
    fn adoption_removes_what_the_file_no_longer_names_and_keeps_surviving_ids() {
        for hint in [false, true] {
            let (first, r, maps) = converge(hint.then_some(&left_behind().0.ids));
            assert_eq!(maps.vips.len(), 1, "hint {hint}: only web remains: {:?}", maps.vips);
            assert_eq!(maps.vips[0].0, vip_key(edited().vip("web").unwrap()));
            for a in ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"] {
                let key = backend_key("web", a.parse().unwrap());
                assert_eq!(
                    r.ids.backends[&key], first.ids.backends[&key],
                    "hint {hint}: {key} keeps its id"
                );
            }
            let fresh = r.ids.backends[&backend_key("web", "10.0.1.4:80".parse().unwrap())];
            assert!(
                !first.ids.backends.values().any(|id| *id == fresh),
                "hint {hint}: a new backend gets an id nobody had"
            );
            let old_ids: Vec<u32> = first
                .ids
                .backends
                .iter()
                .filter(|(k, _)| k.starts_with("old|"))
                .map(|(_, id)| *id)
                .collect();
            for id in old_ids {
                assert!(
                    !maps.backends.contains_key(&id),
                    "hint {hint}: old's backend {id} unset"
                );
            }
            let old_addr = addr_be("10.0.0.100".parse().unwrap());
            let (word, bit) = lb_common::vip_filter_slot(&old_addr);
            // Same address as web: the filter bit stays, the VIP entry is what went.
            assert_ne!(maps.filter[word as usize] & bit, 0);
            assert_eq!(r.ids.backends.len(), 4, "hint {hint}: {:?}", r.ids.backends);
        }
    }

    #[test]
    fn adopting_maps_that_match_the_state_writes_nothing_but_a_table_rebuild_at_most() {
        let (first, maps) = left_behind();
        let target = desired(TWO_VIPS);
        let mut r = Reconciler::from_maps(limits(), maps, Some(&first.ids), &target);
        let ops = r.reconcile(&target, snat(), None).unwrap();
        assert!(
            ops.iter()
                .all(|o| !matches!(o, Op::Backend { .. } | Op::RemoveVip(_) | Op::Filter(..))),
            "{ops:?}"
        );
        assert_eq!(r.ids.backends, first.ids.backends);
        assert_eq!(r.ids.vips, first.ids.vips);
    }

    #[test]
    fn map_addresses_read_back_as_written() {
        for a in ["10.0.1.1", "fd77::11"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(ip_of(addr_be(ip), crate::state::family(ip)), ip);
        }
    }
}
