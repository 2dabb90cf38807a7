//! Desired state -> map contents. Pure: the dataplane writes what this computes, so the
//! arithmetic is tested without a kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::{
    BACKEND_READY, Backend, DEFAULT_MAX_TABLES, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP,
    VIP_F_HASH_SOURCE, VipInfo, VipKey,
    maglev::{TableBackend, build_table},
};

use crate::config::{Config, Protocol, Scheduler};

/// Address as stored in maps: IPv4 in word 0, or the IPv6 address, network byte order.
pub fn addr_be(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            std::array::from_fn(|i| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]))
        }
    }
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

#[derive(Debug, Clone)]
pub struct PlannedBackend {
    pub id: u32,
    pub vip: String,
    pub pool: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub value: Backend,
}

#[derive(Debug, Clone)]
pub struct PlannedPool {
    pub name: String,
    /// Table id (0 when the pool has no backend with weight).
    pub table: u32,
}

#[derive(Debug, Clone)]
pub struct PlannedVip {
    pub name: String,
    pub key: VipKey,
    pub info: VipInfo,
    pub pools: Vec<PlannedPool>,
}

/// Everything the data path needs for a config.
#[derive(Debug, Clone)]
pub struct Plan {
    pub config: lb_common::Config,
    pub vips: Vec<PlannedVip>,
    pub backends: Vec<PlannedBackend>,
    /// (table id, slots)
    pub tables: Vec<(u32, Vec<u32>)>,
    /// Addresses that must pass VIP_FILTER: VIPs and SNAT addresses.
    pub filter: Vec<[u32; 4]>,
    /// TABLES holds this many tables of `ring_size` slots (id 0 unused).
    pub max_tables: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("VIP {vip:?} is {family} but the balancer has no {family} SNAT address: set agent.snat_{suffix}")]
    NoSnat { vip: String, family: &'static str, suffix: &'static str },
}

pub fn plan(cfg: &Config, snat_v4: Option<Ipv4Addr>, snat_v6: Option<Ipv6Addr>) -> Result<Plan, PlanError> {
    let m = cfg.agent.ring_size;
    let mut plan = Plan {
        config: lb_common::Config {
            snat_v4_be: snat_v4.map(|a| addr_be(a.into())[0]).unwrap_or(0),
            ring_size: m,
            snat_v6_be: snat_v6.map(|a| addr_be(a.into())).unwrap_or([0; 4]),
        },
        vips: Vec::new(),
        backends: Vec::new(),
        tables: Vec::new(),
        filter: Vec::new(),
        max_tables: 0,
    };
    plan.filter.extend(snat_v4.map(|a| addr_be(a.into())));
    plan.filter.extend(snat_v6.map(|a| addr_be(a.into())));
    let mut next_backend = 1u32;
    let mut next_table = 1u32;
    for (vip_id, v) in cfg.vips.iter().enumerate() {
        let v4 = v.family_is_v4();
        if v4 && snat_v4.is_none() {
            return Err(PlanError::NoSnat { vip: v.name.clone(), family: "IPv4", suffix: "v4" });
        }
        if !v4 && snat_v6.is_none() {
            return Err(PlanError::NoSnat { vip: v.name.clone(), family: "IPv6", suffix: "v6" });
        }
        let mut pools = Vec::new();
        for p in &v.pools {
            let mut members = Vec::new();
            for b in &p.backends {
                let value = Backend {
                    addr_be: addr_be(b.address.ip()),
                    port_be: b.address.port().to_be(),
                    family: family(b.address.ip()),
                    state: BACKEND_READY,
                    vip_id: vip_id as u32,
                };
                members.push(TableBackend { id: next_backend, addr_be: value.addr_be, port_be: value.port_be, weight: b.weight });
                plan.backends.push(PlannedBackend {
                    id: next_backend,
                    vip: v.name.clone(),
                    pool: p.name.clone(),
                    address: b.address,
                    weight: b.weight,
                    value,
                });
                next_backend += 1;
            }
            let table = if members.iter().any(|b| b.weight > 0) {
                let id = next_table;
                next_table += 1;
                plan.tables.push((id, build_table(&members, m, None)));
                id
            } else {
                0
            };
            pools.push(PlannedPool { name: p.name.clone(), table });
        }
        let active = pools.iter().find(|p| p.name == v.active).map(|p| p.table).unwrap_or(0);
        let info = VipInfo {
            vip_id: vip_id as u32,
            table_current: active,
            table_next: 0,
            split_bp: 0,
            flags: if v.scheduler == Scheduler::SourceHash { VIP_F_HASH_SOURCE } else { 0 },
            _pad: 0,
        };
        let key = VipKey {
            addr_be: addr_be(v.address.ip()),
            port_be: v.address.port().to_be(),
            proto: match v.protocol {
                Protocol::Tcp => PROTO_TCP,
                Protocol::Udp => PROTO_UDP,
            },
            family: family(v.address.ip()),
        };
        plan.filter.push(key.addr_be);
        plan.vips.push(PlannedVip { name: v.name.clone(), key, info, pools });
    }
    // Room for every pool's table twice (a rebuild goes to a free id, then flips).
    plan.max_tables = (2 * next_table).max(DEFAULT_MAX_TABLES);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn plan_numbers_backends_and_tables_and_points_vips_at_the_active_pool() {
        let cfg = parse(
            r#"
[[vip]]
name = "web"
address = "10.0.0.100:80"
active = "green"
[[vip.pool]]
name = "blue"
backends = [ { address = "10.0.1.1:80" }, { address = "10.0.1.2:80", weight = 300 } ]
[[vip.pool]]
name = "green"
backends = [ { address = "10.0.2.1:80" } ]
[[vip.pool]]
name = "empty"
"#,
            "t.toml",
        )
        .unwrap();
        let p = plan(&cfg, Some(Ipv4Addr::new(10, 0, 0, 2)), None).unwrap();
        assert_eq!(p.backends.iter().map(|b| b.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(p.vips[0].info.table_current, 2, "green is the second table");
        assert_eq!(p.vips[0].pools[2].table, 0, "an empty pool has no table");
        let blue = &p.tables[0].1;
        let heavy = blue.iter().filter(|&&id| id == 2).count() as f64 / blue.len() as f64;
        assert!((heavy - 0.75).abs() < 0.001, "weights 100:300 give 75% of slots: {heavy}");
        assert!(p.filter.contains(&addr_be("10.0.0.100".parse().unwrap())));
        assert!(p.filter.contains(&addr_be("10.0.0.2".parse().unwrap())));
        assert!(plan(&cfg, None, None).is_err(), "an IPv4 VIP needs an IPv4 SNAT address");
    }
}
