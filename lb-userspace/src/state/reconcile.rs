//! The reconciler: what the maps hold, and the writes (in a safe order) that take them to a
//! new desired state. Per VIP: its pools' backends and tables, its key and info; then the
//! VIP filter and the A/B rules; whatever the state no longer names goes last.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use lb_common::{
    BACKEND_DOWN, BACKEND_READY, BACKEND_UNSET, Backend, VIP_F_AB_RULES, VIP_F_DSR, VIP_F_HASH_SOURCE,
    VIP_F_LEAST_CONN, VIP_F_ROUND_ROBIN, VIP_F_SPLIT_BY_CLIENT, VIP_FILTER_WORDS, VipInfo, VipKey,
    maglev::{TableBackend, build_table},
    rr::build_sequence,
    vip_filter_slot,
};

use super::{
    AdminState, Deployment, Desired, Exhausted, IdAllocator, Ids, Limits, SplitBy, ab_rule, addr_be, backend_key,
    backend_state, family, pool_key, vip_key,
};
use crate::config::{Mode, PoolConfig, Scheduler, VipConfig};

mod adopt;
pub use adopt::{MapContents, ip_of};

/// One map write, in the order the dataplane must perform them.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Config(lb_common::Config),
    /// Backend slot value; a fresh backend also gets its next-hop cache cleared.
    Backend {
        id: u32,
        value: Backend,
        fresh: bool,
    },
    /// A table's slots; its round-robin cursors start over at slot 0.
    Table {
        id: u32,
        slots: Arc<[u32]>,
    },
    /// A backend's effective weight, as least-conn compares it (BACKEND_LOAD).
    Weight {
        id: u32,
        weight: u32,
    },
    Vip(VipKey, VipInfo),
    RemoveVip(VipKey),
    /// (word index, new value) of VIP_FILTER.
    Filter(u32, u64),
    /// Insert (true) or remove (false) an A/B rule: LPM prefix length and data.
    AbRule {
        prefix_len: u32,
        key: lb_common::AbKey,
        insert: bool,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("VIP {vip:?} is {family} but the balancer has no {family} SNAT address: set agent.snat_{suffix}")]
    NoSnat {
        vip: String,
        family: &'static str,
        suffix: &'static str,
    },
    #[error("VIP {vip:?}: {message}")]
    Deploy { vip: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

/// Where written tables can be read back: the kernel's own table memory, mapped into the
/// agent. A reconciler given one keeps no copy of a table once it is written (100 tables of
/// 65,537 slots are 26 MB); without one (unit tests, previews of a fresh plan) it keeps them.
pub trait TableStore: Send + Sync {
    /// Every slot of table `id`.
    fn read(&self, id: u32, ring_size: u32) -> Option<Vec<u32>>;
    /// One slot of table `id`.
    fn slot(&self, id: u32, slot: u32, ring_size: u32) -> Option<u32>;
}

#[derive(Clone)]
struct Store(Arc<dyn TableStore>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableStore")
    }
}

/// A table in use, as the reconciler knows it.
#[derive(Debug, Clone)]
enum Slots {
    /// Built (or adopted) and not yet known to be written: the slots themselves.
    Held(Arc<[u32]>),
    /// Written to the store: read back from it when needed.
    Written,
}

/// The reconciler: what the maps hold now, and how to get them to a new desired state.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub limits: Limits,
    pub ids: Ids,
    /// Every table in use (rebuilt from with minimal disruption; see [`TableStore`]).
    tables: BTreeMap<u32, Slots>,
    store: Option<Store>,
    /// The members each table was built from, and whether as a round-robin sequence: an
    /// unchanged pool is not rebuilt.
    members: BTreeMap<u32, (bool, Vec<TableBackend>)>,
    backends: BTreeMap<u32, Backend>,
    /// Effective weights written to BACKEND_LOAD.
    weights: BTreeMap<u32, u32>,
    vips: BTreeMap<String, (VipKey, VipInfo)>,
    filter: Vec<u64>,
    /// The A/B rules' LPM entries: (prefix length, key words as in `AbKey`).
    pub(super) ab_rules: BTreeSet<(u32, [u32; 5])>,
    /// Pools whose every backend is down by health: served anyway (fail open).
    pub fail_open: BTreeSet<String>,
    config: Option<lb_common::Config>,
}

impl Reconciler {
    pub fn new(limits: Limits) -> Reconciler {
        Reconciler {
            limits,
            ids: Ids::default(),
            tables: BTreeMap::new(),
            store: None,
            members: BTreeMap::new(),
            backends: BTreeMap::new(),
            weights: BTreeMap::new(),
            vips: BTreeMap::new(),
            filter: vec![0; VIP_FILTER_WORDS as usize],
            ab_rules: BTreeSet::new(),
            fail_open: BTreeSet::new(),
            config: None,
        }
    }

    /// From now on, tables are read back from `store` once [`Reconciler::written`] says
    /// they are in it.
    pub fn with_store(mut self, store: Arc<dyn TableStore>) -> Reconciler {
        self.store = Some(Store(store));
        self
    }

    /// The writes of the last reconcile reached the maps: drop the copies of the tables
    /// they wrote (with a store to read them back from).
    pub fn written(&mut self) {
        if self.store.is_some() {
            for s in self.tables.values_mut() {
                *s = Slots::Written;
            }
        }
    }

    /// The slots of table `id` in use (read back from the store once written).
    pub fn table(&self, id: u32) -> Option<Cow<'_, [u32]>> {
        match self.tables.get(&id)? {
            Slots::Held(s) => Some(Cow::Borrowed(s)),
            Slots::Written => Some(Cow::Owned(self.store.as_ref()?.0.read(id, self.limits.ring_size)?)),
        }
    }

    /// One slot of table `id`.
    pub(super) fn table_slot(&self, id: u32, slot: u32) -> Option<u32> {
        match self.tables.get(&id)? {
            Slots::Held(s) => s.get(slot as usize).copied(),
            Slots::Written => self.store.as_ref()?.0.slot(id, slot, self.limits.ring_size),
        }
    }

    /// Whether `other` holds table `id` with the same contents for certain (the same copy,
    /// or both written: a table in use is never rewritten).
    pub(super) fn same_table(&self, other: &Reconciler, id: u32) -> bool {
        match (self.tables.get(&id), other.tables.get(&id)) {
            (Some(Slots::Written), Some(Slots::Written)) => true,
            (Some(Slots::Held(a)), Some(Slots::Held(b))) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Computes the writes that take the maps from what they hold to `desired`, and
    /// records the result as the new current state. On error nothing is recorded.
    pub fn reconcile(
        &mut self,
        desired: &Desired,
        snat_v4: Option<Ipv4Addr>,
        snat_v6: Option<Ipv6Addr>,
    ) -> Result<Vec<Op>, StateError> {
        check_whole(desired, snat_v4, snat_v6, &self.limits)?;
        let mut next = self.clone();
        let ops = next.plan(desired, snat_v4, snat_v6)?;
        *self = next;
        Ok(ops)
    }

    fn plan(
        &mut self,
        desired: &Desired,
        snat_v4: Option<Ipv4Addr>,
        snat_v6: Option<Ipv6Addr>,
    ) -> Result<Vec<Op>, StateError> {
        let mut w = Writes::default();
        let cfg = lb_common::Config {
            snat_v4_be: snat_v4.map(|a| addr_be(a.into())[0]).unwrap_or(0),
            ring_size: self.limits.ring_size,
            snat_v6_be: snat_v6.map(|a| addr_be(a.into())).unwrap_or([0; 4]),
        };
        if self.config != Some(cfg) {
            w.config.push(Op::Config(cfg));
            self.config = Some(cfg);
        }
        let mut run = Run {
            filter_addrs: snat_v4
                .map(|a| addr_be(a.into()))
                .into_iter()
                .chain(snat_v6.map(|a| addr_be(a.into())))
                .collect(),
            vip_ids: IdAllocator::new(
                self.ids.vips.values().copied(),
                0,
                self.limits.max_vips,
                "VIP",
                "max_vips",
            ),
            backend_ids: IdAllocator::new(
                self.ids.backends.values().copied(),
                1,
                self.limits.max_backends,
                "backend",
                "max_backends",
            )
            .starting_at(self.ids.next_backend),
            table_ids: IdAllocator::new(
                self.tables.keys().copied(),
                1,
                self.limits.max_tables,
                "table",
                "max_tables",
            ),
            ..Run::default()
        };
        for v in &desired.config.vips {
            if v.mode == Mode::Nat {
                check_snat(v, snat_v4.is_some(), snat_v6.is_some())?;
            }
            self.plan_vip(desired, v, &mut run, &mut w)?;
        }
        self.ids.next_backend = run.backend_ids.cursor();
        self.remove_gone(&run, &mut w);
        let (filter_add, filter_clear) = self.plan_filter(&run.filter_addrs);
        let (ab_add, ab_del) = self.plan_ab_rules(run.ab_wanted);
        let mut ops = w.config;
        ops.extend(w.raise);
        ops.extend(w.tables);
        ops.extend(filter_add);
        ops.extend(ab_add);
        ops.extend(w.vips);
        ops.extend(ab_del);
        ops.extend(w.lower);
        ops.extend(filter_clear);
        Ok(ops)
    }

    /// One VIP: its pools (backends and tables), then its key and info.
    fn plan_vip(&mut self, desired: &Desired, v: &VipConfig, run: &mut Run, w: &mut Writes) -> Result<(), StateError> {
        let vip_id = match self.ids.vips.get(&v.name) {
            Some(&id) => id,
            None => {
                let id = run.vip_ids.alloc()?;
                self.ids.vips.insert(v.name.clone(), id);
                id
            }
        };
        run.live_vips.insert(v.name.clone());
        let deploy = desired.deploy.get(&v.name).cloned().unwrap_or_default();
        let next_pool = next_pool(v, &deploy)?;
        let (mut active_table, mut next_table) = (0, 0);
        for p in &v.pools {
            let table_id = self.plan_pool(desired, v, p, vip_id, run, w)?;
            if p.name == v.active {
                active_table = table_id;
            }
            if next_pool.as_deref() == Some(p.name.as_str()) {
                next_table = table_id;
            }
        }
        let key = vip_key(v);
        let mut flags = match v.scheduler {
            Scheduler::Maglev => 0,
            Scheduler::SourceHash => VIP_F_HASH_SOURCE,
            Scheduler::RoundRobin => VIP_F_ROUND_ROBIN,
            Scheduler::LeastConn => VIP_F_LEAST_CONN,
        };
        if v.mode == Mode::Dsr {
            flags |= VIP_F_DSR;
        }
        if deploy.split.as_ref().is_some_and(|s| s.by == SplitBy::Client) {
            flags |= VIP_F_SPLIT_BY_CLIENT;
        }
        if let Some(ab) = &deploy.ab {
            for (net, len) in &ab.networks {
                if net.is_ipv4() != v.family_is_v4() {
                    return Err(StateError::Deploy {
                        vip: v.name.clone(),
                        message: format!("{net}/{len} is not the VIP's address family"),
                    });
                }
                run.ab_wanted.insert(ab_rule(vip_id, *net, *len));
            }
            if !ab.networks.is_empty() {
                flags |= VIP_F_AB_RULES;
            }
        }
        let info = VipInfo {
            vip_id,
            table_current: active_table,
            table_next: next_table,
            split_bp: deploy.split.as_ref().map(|s| s.bp).unwrap_or(0),
            flags,
            _pad: 0,
        };
        match self.vips.get(&v.name) {
            Some((old_key, old_info)) if *old_key == key && *old_info == info => {}
            Some((old_key, _)) if *old_key != key => {
                w.vips.push(Op::RemoveVip(*old_key));
                w.vips.push(Op::Vip(key, info));
            }
            _ => w.vips.push(Op::Vip(key, info)),
        }
        self.vips.insert(v.name.clone(), (key, info));
        run.filter_addrs.push(key.addr_be);
        Ok(())
    }

    /// One pool: its backends' values, then its table (rebuilt only when its members
    /// changed, into a free id). Returns the table id (0: no backend takes new flows).
    fn plan_pool(
        &mut self,
        desired: &Desired,
        v: &VipConfig,
        p: &PoolConfig,
        vip_id: u32,
        run: &mut Run,
        w: &mut Writes,
    ) -> Result<u32, StateError> {
        let mut members = Vec::new();
        // All-down policy: when checks find every serving backend of a pool down,
        // the pool keeps its last-known set rather than black-holing the VIP.
        let serving: Vec<String> = p
            .backends
            .iter()
            .filter(|b| b.weight > 0 && desired.admin(&v.name, b.address) == AdminState::Ready)
            .map(|b| backend_key(&v.name, b.address))
            .collect();
        let fail_open = !serving.is_empty() && serving.iter().all(|k| desired.observed.down.contains(k));
        let pkey = pool_key(&v.name, &p.name);
        if fail_open {
            self.fail_open.insert(pkey.clone());
        } else {
            self.fail_open.remove(&pkey);
        }
        for b in &p.backends {
            let key = backend_key(&v.name, b.address);
            let id = match self.ids.backends.get(&key) {
                Some(&id) => id,
                None => {
                    let id = run.backend_ids.alloc()?;
                    self.ids.backends.insert(key.clone(), id);
                    id
                }
            };
            let admin = desired.admin(&v.name, b.address);
            let health_down = !fail_open && desired.observed.down.contains(&key);
            let value = Backend {
                addr_be: addr_be(b.address.ip()),
                port_be: b.address.port().to_be(),
                family: family(b.address.ip()),
                state: if health_down {
                    BACKEND_DOWN
                } else {
                    backend_state(b.weight, admin)
                },
                vip_id,
            };
            let pct = desired
                .observed
                .weight_pct
                .get(&key)
                .copied()
                .unwrap_or(100)
                .clamp(1, 100);
            run.live_backends.insert(key);
            // Weights are scaled by 100 so that slow start can ramp even a weight of 1.
            let effective = if value.state == BACKEND_READY {
                b.weight * pct
            } else {
                0
            };
            members.push(TableBackend {
                id,
                addr_be: value.addr_be,
                port_be: value.port_be,
                weight: effective,
            });
            if self.weights.get(&id) != Some(&effective) {
                w.raise.push(Op::Weight { id, weight: effective });
                self.weights.insert(id, effective);
            }
            let old = self.backends.get(&id).copied();
            if old != Some(value) {
                let fresh = old.is_none_or(|o| o.addr_be != value.addr_be || o.port_be != value.port_be);
                let op = Op::Backend { id, value, fresh };
                if value.state == BACKEND_READY {
                    w.raise.push(op)
                } else {
                    w.lower.push(op)
                }
                self.backends.insert(id, value);
            }
        }
        let old_id = self.ids.tables.get(&pkey).copied();
        let sequence = v.scheduler == Scheduler::RoundRobin;
        // DSR: every node's table must map each slot to the same backend address (a flow
        // that ECMP moves to another node finds the same backend there). So it is built
        // from scratch over the members in address order: a pure function of addresses,
        // ports and weights, never of ids, of the previous table or of the order of API
        // calls. The cost: a membership change can move more slots than a minimal rebuild.
        let consistent = v.mode == Mode::Dsr;
        if consistent {
            members.sort_by_key(|b| (b.addr_be.map(u32::to_ne_bytes), u16::from_be(b.port_be)));
        }
        let built = (sequence, members);
        let members = &built.1;
        let table_id = if members.iter().all(|b| b.weight == 0) {
            0
        } else if let Some(id) = old_id.filter(|id| self.members.get(id) == Some(&built)) {
            id
        } else {
            // A table of the other kind is no base for minimal disruption: a Maglev build
            // would keep a round-robin sequence (whose shares are right) slot for slot.
            let previous = old_id
                .filter(|id| self.members.get(id).is_none_or(|(kind, _)| *kind == sequence))
                .and_then(|id| self.table(id));
            let base = previous.as_deref().filter(|_| !consistent);
            let slots = if sequence {
                build_sequence(members, self.limits.ring_size)
            } else {
                build_table(members, self.limits.ring_size, base)
            };
            let id = match old_id {
                Some(old) if previous.as_deref() == Some(slots.as_slice()) => old,
                _ => {
                    // A table in use is never rewritten: build in a free id, then flip.
                    let id = run.table_ids.alloc()?;
                    let slots: Arc<[u32]> = slots.into();
                    w.tables.push(Op::Table {
                        id,
                        slots: slots.clone(),
                    });
                    self.tables.insert(id, Slots::Held(slots));
                    id
                }
            };
            self.members.insert(id, built.clone());
            id
        };
        if table_id == 0 {
            self.ids.tables.remove(&pkey);
        } else {
            self.ids.tables.insert(pkey, table_id);
            run.live_tables.insert(table_id);
        }
        Ok(table_id)
    }

    /// Whatever the desired state no longer names goes, after the flips.
    fn remove_gone(&mut self, run: &Run, w: &mut Writes) {
        let gone_vips: Vec<String> = self
            .vips
            .keys()
            .filter(|n| !run.live_vips.contains(*n))
            .cloned()
            .collect();
        for name in gone_vips {
            if let Some((key, _)) = self.vips.remove(&name) {
                w.vips.push(Op::RemoveVip(key));
            }
            self.ids.vips.remove(&name);
        }
        let gone_backends: Vec<String> = self
            .ids
            .backends
            .keys()
            .filter(|k| !run.live_backends.contains(*k))
            .cloned()
            .collect();
        for key in gone_backends {
            if let Some(id) = self.ids.backends.remove(&key) {
                self.backends.remove(&id);
                self.weights.remove(&id);
                w.lower.push(Op::Backend {
                    id,
                    value: Backend {
                        state: BACKEND_UNSET,
                        ..Default::default()
                    },
                    fresh: true,
                });
            }
        }
        self.ids.tables.retain(|_, id| run.live_tables.contains(id));
        self.tables.retain(|id, _| run.live_tables.contains(id));
        self.members.retain(|id, _| run.live_tables.contains(id));
    }

    /// The VIP filter's words: new bits before the VIPs appear (first list), stale bits only
    /// after they are gone (second list).
    fn plan_filter(&mut self, addrs: &[[u32; 4]]) -> (Vec<Op>, Vec<Op>) {
        let mut filter = vec![0u64; VIP_FILTER_WORDS as usize];
        for a in addrs {
            let (word, bit) = vip_filter_slot(a);
            filter[word as usize] |= bit;
        }
        let mut add = Vec::new();
        let mut clear = Vec::new();
        for (i, (&new, &old)) in filter.iter().zip(&self.filter).enumerate() {
            if new != old {
                let merged = new | old;
                if merged != old {
                    add.push(Op::Filter(i as u32, merged));
                }
                if merged != new {
                    clear.push(Op::Filter(i as u32, new));
                }
            }
        }
        self.filter = filter;
        (add, clear)
    }

    /// The A/B rules to insert (before the VIP infos that use them) and to remove (after).
    fn plan_ab_rules(&mut self, wanted: BTreeSet<(u32, [u32; 5])>) -> (Vec<Op>, Vec<Op>) {
        let op = |(prefix_len, d): &(u32, [u32; 5]), insert: bool| Op::AbRule {
            prefix_len: *prefix_len,
            key: lb_common::AbKey {
                vip_id_be: d[0],
                addr_be: [d[1], d[2], d[3], d[4]],
            },
            insert,
        };
        let add = wanted.difference(&self.ab_rules).map(|r| op(r, true)).collect();
        let del = self.ab_rules.difference(&wanted).map(|r| op(r, false)).collect();
        self.ab_rules = wanted;
        (add, del)
    }

    /// The backend values currently programmed, by id.
    pub fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(&id)
    }

    pub fn vip_info(&self, name: &str) -> Option<&(VipKey, VipInfo)> {
        self.vips.get(name)
    }
}

/// Rules that need the whole state: no backend is one of the balancer's own addresses (a
/// VIP or a NAT source), and the A/B rules fit their map.
fn check_whole(
    desired: &Desired,
    snat_v4: Option<Ipv4Addr>,
    snat_v6: Option<Ipv6Addr>,
    limits: &Limits,
) -> Result<(), StateError> {
    let own: Vec<(IpAddr, String)> = desired
        .config
        .vips
        .iter()
        .map(|v| (v.address.ip(), format!("the address of VIP {:?}", v.name)))
        .chain(snat_v4.map(|a| (a.into(), "the NAT source address (agent.snat_v4)".to_string())))
        .chain(snat_v6.map(|a| (a.into(), "the NAT source address (agent.snat_v6)".to_string())))
        .collect();
    for v in &desired.config.vips {
        for b in v.pools.iter().flat_map(|p| &p.backends) {
            if let Some((_, what)) = own.iter().find(|(ip, _)| *ip == b.address.ip()) {
                return Err(StateError::Invalid(format!(
                    "VIP {:?}: backend {} is {what}",
                    v.name, b.address
                )));
            }
            if v.mode == Mode::Dsr
                && let Err(e) = crate::state::validate::dsr_backend_port(b.address, v.address)
            {
                return Err(StateError::Invalid(format!("VIP {:?}: {}", v.name, e.0)));
            }
        }
    }
    let rules: usize = desired
        .deploy
        .values()
        .filter_map(|d| d.ab.as_ref())
        .map(|a| a.networks.len())
        .sum();
    if rules > limits.max_ab_rules as usize {
        return Err(StateError::Invalid(format!(
            "{rules} A/B networks in all, the data path holds at most {}",
            limits.max_ab_rules
        )));
    }
    Ok(())
}

/// Map writes by phase, performed in the order [`Reconciler::plan`] lists them.
#[derive(Default)]
struct Writes {
    config: Vec<Op>,
    /// Backends becoming (more) available: before the tables name them.
    raise: Vec<Op>,
    tables: Vec<Op>,
    vips: Vec<Op>,
    /// Drain, down, removed: after the tables stop naming them.
    lower: Vec<Op>,
}

/// What one planning run has seen and handed out so far.
#[derive(Default)]
struct Run {
    filter_addrs: Vec<[u32; 4]>,
    vip_ids: IdAllocator,
    backend_ids: IdAllocator,
    table_ids: IdAllocator,
    live_vips: BTreeSet<String>,
    live_backends: BTreeSet<String>,
    live_tables: BTreeSet<u32>,
    ab_wanted: BTreeSet<(u32, [u32; 5])>,
}

fn check_snat(v: &VipConfig, has_v4: bool, has_v6: bool) -> Result<(), StateError> {
    let (missing, family, suffix) = if v.family_is_v4() {
        (!has_v4, "IPv4", "v4")
    } else {
        (!has_v6, "IPv6", "v6")
    };
    if missing {
        return Err(StateError::NoSnat {
            vip: v.name.clone(),
            family,
            suffix,
        });
    }
    Ok(())
}

/// The pool that takes the split's or the A/B rules' share, checked against the VIP.
fn next_pool(v: &VipConfig, deploy: &Deployment) -> Result<Option<String>, StateError> {
    let err = |message: String| StateError::Deploy {
        vip: v.name.clone(),
        message,
    };
    let next = match (&deploy.split, &deploy.ab) {
        (Some(s), Some(a)) if s.pool != a.pool => {
            return Err(err(format!(
                "split goes to {:?} and A/B rules to {:?}: one next pool at a time",
                s.pool, a.pool
            )));
        }
        (Some(s), _) => Some(s.pool.clone()),
        (None, Some(a)) => Some(a.pool.clone()),
        (None, None) => None,
    };
    if let Some(np) = &next {
        if *np == v.active {
            return Err(err(format!("{np:?} is already the active pool")));
        }
        if !v.pools.iter().any(|p| p.name == *np) {
            return Err(err(format!("no pool named {np:?}")));
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use lb_common::BACKEND_DRAIN;

    use super::*;
    use crate::{config::parse, state::fixture::CFG};

    pub(super) fn limits() -> Limits {
        Limits {
            ring_size: 251,
            max_backends: 64,
            max_tables: 16,
            max_vips: 8,
            max_ab_rules: 16,
        }
    }

    pub(super) fn desired(text: &str) -> Desired {
        Desired::new(parse(text, "t.toml").unwrap())
    }

    pub(super) fn snat() -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(10, 0, 0, 2))
    }

    fn position(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).expect("op present")
    }

    #[test]
    fn first_plan_writes_backends_then_tables_then_vips() {
        let mut r = Reconciler::new(limits());
        let ops = r.reconcile(&desired(CFG), snat(), None).unwrap();
        let backend = position(&ops, |o| matches!(o, Op::Backend { .. }));
        let table = position(&ops, |o| matches!(o, Op::Table { .. }));
        let vip = position(&ops, |o| matches!(o, Op::Vip(..)));
        assert!(backend < table && table < vip, "{ops:?}");
        assert_eq!(r.ids.backends.len(), 3);
        let (_, info) = r.vip_info("web").unwrap();
        let blue = r.ids.tables[&pool_key("web", "blue")];
        assert_eq!(info.table_current, blue);
        let slots = &r.table(blue).unwrap();
        let heavy = slots
            .iter()
            .filter(|&&id| id == r.ids.backends[&backend_key("web", "10.0.1.2:80".parse().unwrap())])
            .count();
        assert_eq!(heavy, (251.0f64 * 0.75).round() as usize, "weights 100:300");
        assert!(!r.ids.tables.contains_key(&pool_key("web", "empty")));
    }

    #[test]
    fn reconciling_the_same_state_writes_nothing() {
        let mut r = Reconciler::new(limits());
        let d = desired(CFG);
        r.reconcile(&d, snat(), None).unwrap();
        assert_eq!(r.reconcile(&d, snat(), None).unwrap(), vec![]);
    }

    /// A kernel's table memory, as the dataplane's mapping would hold it.
    #[derive(Default)]
    struct FakeStore(std::sync::Mutex<BTreeMap<u32, Vec<u32>>>);

    impl TableStore for FakeStore {
        fn read(&self, id: u32, _ring: u32) -> Option<Vec<u32>> {
            self.0.lock().unwrap().get(&id).cloned()
        }

        fn slot(&self, id: u32, slot: u32, _ring: u32) -> Option<u32> {
            self.0.lock().unwrap().get(&id)?.get(slot as usize).copied()
        }
    }

    impl FakeStore {
        fn execute(&self, ops: &[Op]) {
            for op in ops {
                if let Op::Table { id, slots } = op {
                    self.0.lock().unwrap().insert(*id, slots.to_vec());
                }
            }
        }
    }

    #[test]
    fn with_a_store_written_tables_are_read_back_not_kept_and_rebuilds_match_a_kept_copy() {
        let store = Arc::new(FakeStore::default());
        let mut lean = Reconciler::new(limits()).with_store(store.clone());
        let mut kept = Reconciler::new(limits());
        let mut cfg = CFG.to_string();
        for step in ["weight = 300|weight = 100", "weight = 100|weight = 7"] {
            let (ops_lean, ops_kept) = (
                lean.reconcile(&desired(&cfg), snat(), None).unwrap(),
                kept.reconcile(&desired(&cfg), snat(), None).unwrap(),
            );
            assert_eq!(ops_lean, ops_kept, "the same writes with and without a store");
            store.execute(&ops_lean);
            lean.written();
            assert!(
                lean.tables.values().all(|s| matches!(s, Slots::Written)),
                "no copy kept once written"
            );
            let t = lean.vip_info("web").unwrap().1.table_current;
            assert_eq!(lean.table(t), kept.table(t), "read back from the store");
            let (from, to) = step.split_once('|').unwrap();
            cfg = cfg.replace(from, to);
        }
        // The rebuild after the last weight change used the stored table as its previous
        // one: the same (minimal-disruption) slots as the reconciler that kept its copy.
        let next = desired(&cfg);
        let before = lean.clone();
        assert_eq!(
            lean.reconcile(&next, snat(), None).unwrap(),
            kept.reconcile(&next, snat(), None).unwrap()
        );
        assert_eq!(
            super::super::moved_share(&before, &lean, "web"),
            super::super::moved_share(&before, &kept, "web")
        );
    }

    #[test]
    fn weight_change_builds_a_new_table_and_flips_without_touching_the_old_one() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let old_id = r.vip_info("web").unwrap().1.table_current;
        let ops = r
            .reconcile(&desired(&CFG.replace("weight = 300", "weight = 100")), snat(), None)
            .unwrap();
        let Some(Op::Table { id: new_id, .. }) = ops.iter().find(|o| matches!(o, Op::Table { .. })) else {
            panic!("{ops:?}")
        };
        assert_ne!(*new_id, old_id, "the table in use is never rewritten");
        let flip = position(&ops, |o| matches!(o, Op::Vip(_, info) if info.table_current == *new_id));
        assert!(position(&ops, |o| matches!(o, Op::Table { .. })) < flip);
        assert!(r.table(old_id).is_none(), "old table freed after the flip");
    }

    #[test]
    fn drain_and_maint_leave_the_table_before_their_state_changes() {
        let mut r = Reconciler::new(limits());
        let mut d = desired(CFG);
        r.reconcile(&d, snat(), None).unwrap();
        let addr: SocketAddr = "10.0.1.2:80".parse().unwrap();
        let id = r.ids.backends[&backend_key("web", addr)];
        for (admin, state) in [(AdminState::Drain, BACKEND_DRAIN), (AdminState::Maint, BACKEND_DOWN)] {
            d.admin.entry("web".into()).or_default().insert(addr, admin);
            let ops = r.reconcile(&d, snat(), None).unwrap();
            let state_op = position(
                &ops,
                |o| matches!(o, Op::Backend { id: i, value, .. } if *i == id && value.state == state),
            );
            if admin == AdminState::Drain {
                let flip = position(&ops, |o| matches!(o, Op::Vip(..)));
                assert!(flip < state_op, "{ops:?}");
            }
            let table = r.vip_info("web").unwrap().1.table_current;
            assert!(
                r.table(table).unwrap().iter().all(|&s| s != id),
                "{admin:?} backend takes no new flows"
            );
        }
    }

    #[test]
    fn weight_zero_drains_and_removing_a_backend_unsets_it_last() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let ops = r
            .reconcile(&desired(&CFG.replace("weight = 300", "weight = 0")), snat(), None)
            .unwrap();
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::Backend { value, .. } if value.state == BACKEND_DRAIN))
        );
        let removed = CFG.replace(", { address = \"10.0.1.2:80\", weight = 300 }", "");
        let ops = r.reconcile(&desired(&removed), snat(), None).unwrap();
        let Some(Op::Backend { value, .. }) = ops.last() else {
            panic!("{ops:?}")
        };
        assert_eq!(value.state, BACKEND_UNSET);
    }

    #[test]
    fn ids_are_stable_and_reused_only_after_release() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let before = r.ids.backends.clone();
        let added = CFG.replace(
            "{ address = \"10.0.2.1:80\" }",
            "{ address = \"10.0.2.1:80\" }, { address = \"10.0.2.2:80\" }",
        );
        r.reconcile(&desired(&added), snat(), None).unwrap();
        for (k, id) in &before {
            assert_eq!(r.ids.backends[k], *id, "{k} keeps its id");
        }
        assert_eq!(r.ids.backends.len(), 4);
    }

    #[test]
    fn a_deleted_backends_id_is_not_handed_to_the_next_backend() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let gone = r.ids.backends[&backend_key("web", "10.0.2.1:80".parse().unwrap())];
        let without = CFG.replace("backends = [ { address = \"10.0.2.1:80\" } ]", "backends = []");
        r.reconcile(&desired(&without), snat(), None).unwrap();
        let readded = without.replace("backends = []", "backends = [ { address = \"10.0.2.9:80\" } ]");
        r.reconcile(&desired(&readded), snat(), None).unwrap();
        let fresh = r.ids.backends[&backend_key("web", "10.0.2.9:80".parse().unwrap())];
        assert_ne!(fresh, gone, "the deleted id waits");
        // Once the ids ahead are used up, the ring comes back to it.
        let mut r = Reconciler::new(Limits {
            max_backends: 5,
            ..limits()
        });
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        r.reconcile(&desired(&without), snat(), None).unwrap();
        r.reconcile(&desired(&readded), snat(), None).unwrap();
        let again = readded.replace("10.0.2.9:80\" }", "10.0.2.9:80\" }, { address = \"10.0.2.8:80\" }");
        r.reconcile(&desired(&again), snat(), None).unwrap();
        assert_eq!(
            r.ids.backends[&backend_key("web", "10.0.2.8:80".parse().unwrap())],
            gone
        );
    }

    #[test]
    fn health_down_takes_a_backend_out_and_all_down_fails_open() {
        let mut r = Reconciler::new(limits());
        let mut d = desired(CFG);
        r.reconcile(&d, snat(), None).unwrap();
        let a: SocketAddr = "10.0.1.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.1.2:80".parse().unwrap();
        let (ida, idb) = (
            r.ids.backends[&backend_key("web", a)],
            r.ids.backends[&backend_key("web", b)],
        );
        d.observed.down.insert(backend_key("web", a));
        r.reconcile(&d, snat(), None).unwrap();
        let t = r.vip_info("web").unwrap().1.table_current;
        assert!(
            r.table(t).unwrap().iter().all(|&s| s == idb),
            "a down backend leaves the table"
        );
        assert_eq!(r.backend(ida).unwrap().state, BACKEND_DOWN, "its flows are re-chosen");
        d.observed.down.insert(backend_key("web", b));
        r.reconcile(&d, snat(), None).unwrap();
        assert!(r.fail_open.contains(&pool_key("web", "blue")));
        let t = r.vip_info("web").unwrap().1.table_current;
        assert!(
            r.table(t).unwrap().contains(&ida) && r.table(t).unwrap().contains(&idb),
            "all down: the pool keeps its set"
        );
        assert_eq!(r.backend(ida).unwrap().state, BACKEND_READY);
    }

    #[test]
    fn slow_start_scales_the_table_share() {
        let mut r = Reconciler::new(limits());
        let mut d = desired(CFG);
        let b: SocketAddr = "10.0.1.2:80".parse().unwrap();
        d.observed.weight_pct.insert(backend_key("web", b), 10);
        r.reconcile(&d, snat(), None).unwrap();
        let id = r.ids.backends[&backend_key("web", b)];
        let t = r.vip_info("web").unwrap().1.table_current;
        let share = r.table(t).unwrap().iter().filter(|&&s| s == id).count() as f64 / 251.0;
        assert!(
            (share - 30.0 / 130.0).abs() < 0.01,
            "weight 300 at 10% = 30 against 100: {share}"
        );
    }

    #[test]
    fn round_robin_pools_get_the_smooth_sequence_and_least_conn_pools_their_weights() {
        let rr = CFG.replace("active = \"blue\"", "active = \"blue\"\nscheduler = \"round-robin\"");
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(&rr), snat(), None).unwrap();
        let (_, info) = *r.vip_info("web").unwrap();
        assert_eq!(info.flags, VIP_F_ROUND_ROBIN);
        let id = |a: &str| r.ids.backends[&backend_key("web", a.parse().unwrap())];
        let (a, b) = (id("10.0.1.1:80"), id("10.0.1.2:80"));
        assert_eq!(
            &r.table(info.table_current).unwrap()[..8],
            &[b, a, b, b, b, a, b, b],
            "weights 100:300"
        );
        // Slow start scales the sequence's shares; drain takes a backend out of it.
        let mut d = desired(&rr);
        d.observed
            .weight_pct
            .insert(backend_key("web", "10.0.1.2:80".parse().unwrap()), 10);
        r.reconcile(&d, snat(), None).unwrap();
        let t = r.table(r.vip_info("web").unwrap().1.table_current).unwrap();
        assert_eq!(
            &t[..13],
            &[a, a, b, a, a, a, b, a, a, a, b, a, a],
            "weights 100:30 = 10:3"
        );
        d.admin
            .entry("web".into())
            .or_default()
            .insert("10.0.1.1:80".parse().unwrap(), AdminState::Drain);
        r.reconcile(&d, snat(), None).unwrap();
        let t = r.table(r.vip_info("web").unwrap().1.table_current).unwrap();
        assert!(t.iter().all(|&id| id == b), "a drained backend takes no turn");
        // Same members, other scheduler: another table, in a fresh id.
        let ops = r.reconcile(&desired(CFG), snat(), None).unwrap();
        let (_, maglev) = *r.vip_info("web").unwrap();
        assert_ne!(maglev.table_current, info.table_current, "{ops:?}");
        assert_eq!(maglev.flags, 0);
        let lc = CFG.replace("active = \"blue\"", "active = \"blue\"\nscheduler = \"least-conn\"");
        let mut r = Reconciler::new(limits());
        let mut d = desired(&lc);
        let ops = r.reconcile(&d, snat(), None).unwrap();
        assert_eq!(r.vip_info("web").unwrap().1.flags, VIP_F_LEAST_CONN);
        let weight = |ops: &[Op], id: u32| {
            ops.iter().find_map(|o| match o {
                Op::Weight { id: i, weight } if *i == id => Some(*weight),
                _ => None,
            })
        };
        assert_eq!(
            weight(&ops, b),
            Some(300 * 100),
            "effective weight: weight x slow-start percent"
        );
        let table = position(&ops, |o| matches!(o, Op::Table { .. }));
        assert!(position(&ops, |o| matches!(o, Op::Weight { .. })) < table);
        d.observed
            .weight_pct
            .insert(backend_key("web", "10.0.1.2:80".parse().unwrap()), 10);
        let ops = r.reconcile(&d, snat(), None).unwrap();
        assert_eq!(
            weight(&ops, b),
            Some(300 * 10),
            "slow start scales what least-conn compares"
        );
        assert_eq!(weight(&ops, a), None, "unchanged weights are not rewritten");
    }

    #[test]
    fn failed_reconcile_changes_nothing() {
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(CFG), snat(), None).unwrap();
        let ids = r.ids.clone();
        assert!(r.reconcile(&desired(CFG), None, None).is_err());
        assert_eq!(r.ids, ids);
        assert_eq!(r.reconcile(&desired(CFG), snat(), None).unwrap(), vec![]);
    }

    #[test]
    fn a_backend_on_one_of_the_balancers_own_addresses_is_refused() {
        let mut r = Reconciler::new(limits());
        let on_vip = CFG.replace("10.0.2.1:80", "10.0.0.100:8080");
        let e = r.reconcile(&desired(&on_vip), snat(), None).unwrap_err();
        assert!(e.to_string().contains("address of VIP \"web\""), "{e}");
        let on_snat = CFG.replace("10.0.2.1:80", "10.0.0.2:80");
        let e = r.reconcile(&desired(&on_snat), snat(), None).unwrap_err();
        assert!(e.to_string().contains("NAT source"), "{e}");
        assert!(r.ids.backends.is_empty(), "nothing recorded");
    }

    #[test]
    fn a_b_rules_beyond_the_maps_capacity_are_refused_before_any_write() {
        let mut r = Reconciler::new(limits());
        let mut d = desired(CFG);
        r.reconcile(&d, snat(), None).unwrap();
        let networks = (0..=limits().max_ab_rules)
            .map(|i| (IpAddr::from([10, 9, i as u8, 0]), 24))
            .collect();
        d.deploy.entry("web".into()).or_default().ab = Some(crate::state::AbRules {
            pool: "green".into(),
            networks,
        });
        let e = r.reconcile(&d, snat(), None).unwrap_err();
        assert!(e.to_string().contains("at most 16"), "{e}");
        assert_eq!(
            r.reconcile(&desired(CFG), snat(), None).unwrap(),
            vec![],
            "nothing recorded"
        );
    }

    #[test]
    fn a_dsr_vip_carries_its_flag_needs_no_snat_and_refuses_another_port() {
        let dsr = CFG.replace("active = \"blue\"", "active = \"blue\"\nmode = \"dsr\"");
        let mut r = Reconciler::new(limits());
        r.reconcile(&desired(&dsr), None, None)
            .expect("DSR needs no SNAT address");
        assert_eq!(r.vip_info("web").unwrap().1.flags, VIP_F_DSR);
        // The same VIP in NAT mode without SNAT is refused.
        assert!(Reconciler::new(limits()).reconcile(&desired(CFG), None, None).is_err());
        // A backend added later (the API's path) on another port is refused, nothing changes.
        let mut d = desired(&dsr);
        let before = r.clone();
        d.config.vips[0].pools[1].backends.push(crate::config::BackendConfig {
            address: "10.0.2.9:8080".parse().unwrap(),
            weight: 100,
        });
        let e = r.reconcile(&d, None, None).unwrap_err().to_string();
        assert!(e.contains("the VIP's port"), "{e}");
        assert_eq!(r.vip_info("web"), before.vip_info("web"));
    }

    /// A DSR VIP's table as slot -> backend address, the way every node must agree on it.
    fn slot_addresses(r: &Reconciler) -> Vec<([u32; 4], u16)> {
        let table = r.table(r.vip_info("web").unwrap().1.table_current).unwrap();
        table
            .iter()
            .map(|id| {
                let b = r.backends[id];
                (b.addr_be, b.port_be)
            })
            .collect()
    }

    #[test]
    fn a_dsr_table_maps_slots_to_addresses_independently_of_ids_history_and_call_order() {
        let pool = |backends: &str| {
            format!(
                "[agent]\nring_size = 251\n[[vip]]\nname = \"web\"\naddress = \"10.0.0.100:80\"\nmode = \"dsr\"\n\
                 active = \"blue\"\n[[vip.pool]]\nname = \"blue\"\nbackends = [ {backends} ]\n"
            )
        };
        let (a, b, c, x) = (
            "{ address = \"10.0.1.1:80\", weight = 100 }",
            "{ address = \"10.0.1.2:80\", weight = 300 }",
            "{ address = \"10.0.1.3:80\", weight = 200 }",
            "{ address = \"10.0.1.9:80\" }",
        );
        let mut one = Reconciler::new(limits());
        one.reconcile(&desired(&pool(&[a, b, c].join(", "))), None, None)
            .unwrap();
        // Another node: the same backends, added one at a time in another order, after a
        // backend that came and went (other ids, other previous tables).
        let mut two = Reconciler::new(limits());
        for step in [vec![x], vec![x, c], vec![c], vec![c, b], vec![c, b, a]] {
            two.reconcile(&desired(&pool(&step.join(", "))), None, None).unwrap();
        }
        assert_ne!(one.ids.backends, two.ids.backends, "the nodes gave out different ids");
        assert_eq!(
            slot_addresses(&one),
            slot_addresses(&two),
            "slot -> address maps differ"
        );
        // The same history in NAT mode keeps the minimal-disruption base: the maps differ,
        // which is why DSR builds from scratch.
        let nat = |t: String| t.replace("mode = \"dsr\"", "mode = \"nat\"\n");
        let mut three = Reconciler::new(limits());
        three
            .reconcile(&desired(&nat(pool(&[a, b, c].join(", ")))), snat(), None)
            .unwrap();
        let mut four = Reconciler::new(limits());
        for step in [vec![x], vec![x, c], vec![c], vec![c, b], vec![c, b, a]] {
            four.reconcile(&desired(&nat(pool(&step.join(", ")))), snat(), None)
                .unwrap();
        }
        assert_ne!(slot_addresses(&three), slot_addresses(&four));
    }
}
