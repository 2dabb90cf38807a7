//! `veer agent`: validate the config, load and program the data path, attach, then hold it
//! until SIGINT/SIGTERM, when it detaches and removes its pins.

use std::{
    ffi::CStr,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    config::{self, Config},
    dataplane::{AttachMode, Dataplane, PIN_DIR, Sizes},
    state,
};

/// Exit code for rejected input (a bad config), per the CLI contract.
pub const EXIT_REJECTED: i32 = 1;

pub struct Options {
    pub config: PathBuf,
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
}

/// An error that maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl AgentError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Rejected(_) => EXIT_REJECTED,
            AgentError::Failed(_) => 10,
        }
    }
}

/// Everything checked before the kernel is touched.
pub struct Prepared {
    pub config: Config,
    pub interfaces: Vec<String>,
    pub plan: state::Plan,
}

pub fn prepare(config_path: &Path, interfaces: &[String]) -> Result<Prepared, AgentError> {
    let config = config::load(config_path).map_err(|e| AgentError::Rejected(e.to_string()))?;
    let interfaces = if interfaces.is_empty() { config.agent.interfaces.clone() } else { interfaces.to_vec() };
    if interfaces.is_empty() {
        return Err(AgentError::Rejected(format!(
            "{}: agent.interfaces: no interface to attach to (set it or pass --iface)",
            config_path.display()
        )));
    }
    for iface in &interfaces {
        crate::dataplane::ifindex(iface).map_err(|e| AgentError::Rejected(e.to_string()))?;
    }
    let (found4, found6) = interface_addresses(&interfaces[0]);
    let snat_v4 = config.agent.snat_v4.or(found4);
    let snat_v6 = config.agent.snat_v6.or(found6);
    let plan = state::plan(&config, snat_v4, snat_v6).map_err(|e| AgentError::Rejected(format!("{}: {e}", config_path.display())))?;
    Ok(Prepared { config, interfaces, plan })
}

pub async fn run(opts: Options) -> Result<(), AgentError> {
    let p = prepare(&opts.config, &opts.interfaces)?;
    let sizes = Sizes {
        flows: p.config.agent.flow_capacity,
        backends: p.config.agent.max_backends,
        ring_size: p.config.agent.ring_size,
        max_tables: p.plan.max_tables,
    };
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut dp = Dataplane::load(sizes, Path::new(PIN_DIR)).context("load the data path")?;
    dp.apply(&p.plan).context("program the maps")?;
    for iface in &p.interfaces {
        dp.attach(iface, opts.mode).context("attach")?;
    }
    info!(
        vips = p.plan.vips.len(),
        backends = p.plan.backends.len(),
        interfaces = ?p.interfaces,
        "veer agent ready"
    );
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: detaching"),
        _ = sigint.recv() => info!("SIGINT: detaching"),
    }
    drop(dp);
    info!("stopped");
    Ok(())
}

/// First global IPv4 and IPv6 address of an interface.
pub fn interface_addresses(iface: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return (None, None);
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_name is a valid C string.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if ifa.ifa_addr.is_null() || name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of the family it declares.
        match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
            libc::AF_INET if v4.is_none() => {
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                v4 = Some(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)));
            }
            libc::AF_INET6 if v6.is_none() => {
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let a = Ipv6Addr::from(sa.sin6_addr.s6_addr);
                if !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 {
                    v6 = Some(a);
                }
            }
            _ => {}
        }
    }
    // SAFETY: list from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    (v4, v6)
}

/// `veer check`: validate without touching the kernel.
pub fn check(config_path: &Path, interfaces: &[String]) -> Result<String, AgentError> {
    let p = prepare(config_path, interfaces)?;
    let mut out = format!("{}: ok\n", config_path.display());
    for v in &p.plan.vips {
        let cfg = p.config.vips.iter().find(|c| c.name == v.name);
        let (addr, active) = cfg.map(|c| (c.address.to_string(), c.active.clone())).unwrap_or_default();
        let backends = p.plan.backends.iter().filter(|b| b.vip == v.name).count();
        out.push_str(&format!("  vip {} {} active={} pools={} backends={}\n", v.name, addr, active, v.pools.len(), backends));
    }
    Ok(out)
}
