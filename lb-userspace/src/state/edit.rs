//! Edits of the desired state that are not deployments: backends (weight, admin state,
//! add, remove) and a whole new config file. Pure: each returns the next desired state and
//! the lines that describe it, or why it is refused; nothing is written until the core
//! applies it.

use std::{collections::BTreeMap, net::SocketAddr};

use super::{AdminState, Desired};
use crate::config::{BackendConfig, Config, VipConfig};

/// A planned change: the desired state it leads to, described for the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub next: Desired,
    pub changes: Vec<String>,
}

/// Why an edit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A VIP, pool or backend the edit names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The edit is not allowed as asked.
    #[error("{0}")]
    Invalid(String),
}

pub fn vip_of<'a>(d: &'a Desired, vip: &str) -> Result<&'a VipConfig, Refused> {
    d.vip(vip)
        .ok_or_else(|| Refused::NotFound(format!("unknown VIP {vip:?}")))
}

fn vip_mut<'a>(d: &'a mut Desired, vip: &str) -> Result<&'a mut VipConfig, Refused> {
    d.config
        .vips
        .iter_mut()
        .find(|v| v.name == vip)
        .ok_or_else(|| Refused::NotFound(format!("unknown VIP {vip:?}")))
}

fn backend_mut<'a>(d: &'a mut Desired, vip: &str, addr: SocketAddr) -> Result<&'a mut BackendConfig, Refused> {
    vip_mut(d, vip)?
        .pools
        .iter_mut()
        .flat_map(|p| p.backends.iter_mut())
        .find(|b| b.address == addr)
        .ok_or_else(|| Refused::NotFound(format!("VIP {vip:?} has no backend {addr}")))
}

/// A backend's weight and/or admin state (at least one).
pub fn backend_set(
    d: &Desired,
    vip: &str,
    addr: SocketAddr,
    weight: Option<u32>,
    state: Option<AdminState>,
) -> Result<Edit, Refused> {
    let mut next = d.clone();
    let mut changes = Vec::new();
    if let Some(w) = weight {
        let b = backend_mut(&mut next, vip, addr)?;
        changes.push(format!("{vip} {addr}: weight {} -> {w}", b.weight));
        b.weight = w;
    }
    if let Some(s) = state {
        backend_mut(&mut next, vip, addr)?;
        changes.push(format!("{vip} {addr}: state {:?} -> {s:?}", next.admin(vip, addr)));
        let per_vip = next.admin.entry(vip.to_string()).or_default();
        if s == AdminState::Ready {
            per_vip.remove(&addr);
        } else {
            per_vip.insert(addr, s);
        }
    }
    if changes.is_empty() {
        return Err(Refused::Invalid("nothing to set: give a weight or a state".into()));
    }
    Ok(Edit { next, changes })
}

pub fn backend_add(d: &Desired, vip: &str, pool: &str, addr: SocketAddr, weight: u32) -> Result<Edit, Refused> {
    let mut next = d.clone();
    let v = vip_mut(&mut next, vip)?;
    super::validate::backend_address(addr, v.address).map_err(|e| Refused::Invalid(e.0))?;
    if v.pools.iter().flat_map(|p| &p.backends).any(|b| b.address == addr) {
        return Err(Refused::Invalid(format!("VIP {vip:?} already has backend {addr}")));
    }
    let p = v
        .pools
        .iter_mut()
        .find(|p| p.name == pool)
        .ok_or_else(|| Refused::NotFound(format!("VIP {vip:?} has no pool {pool:?}")))?;
    p.backends.push(BackendConfig { address: addr, weight });
    let changes = vec![format!("{vip} {pool}: add {addr} weight {weight}")];
    Ok(Edit { next, changes })
}

pub fn backend_del(d: &Desired, vip: &str, addr: SocketAddr) -> Result<Edit, Refused> {
    let mut next = d.clone();
    backend_mut(&mut next, vip, addr)?;
    for p in &mut vip_mut(&mut next, vip)?.pools {
        p.backends.retain(|b| b.address != addr);
    }
    if let Some(m) = next.admin.get_mut(vip) {
        m.remove(&addr);
    }
    Ok(Edit {
        next,
        changes: vec![format!("{vip}: remove {addr}")],
    })
}

/// A new config file: deployment state and admin states survive for what remains.
pub fn apply_config(d: &Desired, cfg: Config) -> Result<Edit, Refused> {
    if cfg.agent != d.config.agent {
        return Err(Refused::Invalid(
            "[agent] settings cannot change at runtime: restart the agent with the new file".into(),
        ));
    }
    let changes = diff(d, &cfg);
    let mut next = d.with_config(cfg);
    next.observed = d.observed.clone();
    Ok(Edit { next, changes })
}

/// Human-readable differences between the current and a new configuration.
pub fn diff(old: &Desired, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for v in &new.vips {
        match old.vip(&v.name) {
            None => out.push(format!("+ vip {} {}", v.name, v.address)),
            Some(o) => {
                if o.address != v.address || o.protocol != v.protocol || o.scheduler != v.scheduler {
                    out.push(format!("~ vip {}: address/protocol/scheduler", v.name));
                }
                if o.active != v.active {
                    out.push(format!("~ vip {}: active {} -> {}", v.name, o.active, v.active));
                }
                let members = |v: &VipConfig| -> BTreeMap<SocketAddr, (String, u32)> {
                    v.pools
                        .iter()
                        .flat_map(|p| p.backends.iter().map(|b| (b.address, (p.name.clone(), b.weight))))
                        .collect()
                };
                let (old_b, new_b) = (members(o), members(v));
                for (a, (pool, w)) in &new_b {
                    match old_b.get(a) {
                        None => out.push(format!("+ {} {pool} {a} weight {w}", v.name)),
                        Some((op, ow)) if op != pool || ow != w => {
                            out.push(format!("~ {} {a}: {op}/{ow} -> {pool}/{w}", v.name))
                        }
                        _ => {}
                    }
                }
                for a in old_b.keys().filter(|a| !new_b.contains_key(a)) {
                    out.push(format!("- {} {a}", v.name));
                }
            }
        }
    }
    for v in old
        .config
        .vips
        .iter()
        .filter(|o| !new.vips.iter().any(|v| v.name == o.name))
    {
        out.push(format!("- vip {} {}", v.name, v.address));
    }
    out
}
