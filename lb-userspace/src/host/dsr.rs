//! DSR (L2) admission: a backend of a DSR VIP must be on a directly connected network of an
//! interface the balancer is attached to. The data path rewrites only the destination MAC
//! (to the FIB's neighbour toward the backend), so a backend behind a gateway would get
//! the gateway's MAC, and the gateway would route the packet by its destination, the VIP.

use std::ffi::CString;

use crate::config::{Config, Mode};

use super::neigh::Netlink;

/// Checks the backends of the DSR VIPs of `config` that `before` does not have already
/// (all of them without `before`) against the kernel's routes: the route to each has no
/// gateway and leaves through one of `ifaces` (the attached interfaces). Backends admitted before
/// are not checked again, so a link going down refuses no later health or admin change.
/// The error names the VIP, the backend and what the route says.
pub fn check_backends(config: &Config, ifaces: &[String], before: Option<&Config>) -> Result<(), String> {
    let known = |name: &str, addr: std::net::SocketAddr| {
        before.is_some_and(|c| {
            c.vips.iter().any(|v| {
                v.name == name
                    && v.mode == Mode::Dsr
                    && v.pools.iter().flat_map(|p| &p.backends).any(|b| b.address == addr)
            })
        }) && before.is_some_and(|c| c.agent.interfaces == config.agent.interfaces)
    };
    let dsr: Vec<_> = config.vips.iter().filter(|v| v.mode == Mode::Dsr).collect();
    if dsr.is_empty() {
        return Ok(());
    }
    let indexes: Vec<(u32, &str)> = ifaces.iter().map(|n| (ifindex(n), n.as_str())).collect();
    let mut nl = Netlink::open().map_err(|e| format!("DSR backend check: netlink socket: {e}"))?;
    for v in dsr {
        for b in v.pools.iter().flat_map(|p| &p.backends) {
            if known(&v.name, b.address) {
                continue;
            }
            let ip = b.address.ip();
            let route = nl
                .route_to(ip)
                .map_err(|e| format!("VIP {:?}: DSR backend {}: route lookup: {e}", v.name, b.address))?;
            let why = match route {
                None => "it has no unicast route (unreachable, or an address of this host)".to_string(),
                Some(hop) if hop.addr != ip => format!("it is reached through the gateway {}", hop.addr),
                Some(hop) => match indexes.iter().find(|(i, _)| *i == hop.ifindex) {
                    Some(_) => continue,
                    None => format!(
                        "its network is on interface {}, not an attached one",
                        ifname(hop.ifindex).unwrap_or_else(|| format!("#{}", hop.ifindex))
                    ),
                },
            };
            return Err(format!(
                "VIP {:?}: DSR backend {} is not on a directly connected network of {}: {why} \
                 (DSR rewrites only the MAC: backends share an L2 segment with the balancer)",
                v.name,
                b.address,
                ifaces.join(", ")
            ));
        }
    }
    Ok(())
}

fn ifindex(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else { return 0 };
    // SAFETY: a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}
