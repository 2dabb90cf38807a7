//! What the agent changes on the host outside its BPF objects, in one place: neighbour
//! entries (neigh), kernel settings (sysctl), the bpffs its pins live on (bpffs), and its
//! own process limits. README's "What the agent changes on the host" lists the same.

pub mod bpffs;
pub mod dsr;
pub mod neigh;
pub mod sysctl;
pub mod systemd;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tracing::{info, warn};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
}

impl HostError {
    /// The operator's settings forbid or prevent the start (exit code 1), as opposed to
    /// the host failing a request.
    pub fn is_rejected(&self) -> bool {
        matches!(
            self,
            HostError::Sysctl(sysctl::SysctlError::Refused(_)) | HostError::Bpffs(bpffs::BpffsError::NotBpffs { .. })
        )
    }
}

/// The host as the agent found (and set) it at start.
pub struct Prepared {
    pub bpffs: bpffs::Bpffs,
}

/// Host setup before the data path loads: the kernel settings on `interfaces` (set and
/// logged, or refused), the bpffs under `agent.pin_dir`.
pub fn prepare(config: &Config, interfaces: &[String]) -> Result<Prepared, HostError> {
    let (v4, v6) = families(config);
    let sysctls = sysctl::Sysctls::default();
    sysctls.apply(sysctls.plan(interfaces, v4, v6), config.agent.manage_sysctls)?;
    let bpffs = bpffs::prepare(&config.agent.pin_dir)?;
    Ok(Prepared { bpffs })
}

impl Prepared {
    /// Managed neighbour entries for every backend of `config`, waited for briefly so the
    /// first flows find them resolved; None (with a warning) without netlink.
    pub fn neighbours(&self, config: &Config) -> Option<neigh::Neighbours> {
        let mut n = neigh::Neighbours::new()
            .map_err(|e| {
                warn!("netlink socket ({e}): no managed neighbour entries, first packets take the stack's path")
            })
            .ok()?;
        n.sync(&backend_addresses(config));
        let pending = n.wait_resolved(Duration::from_secs(1));
        if pending.is_empty() {
            info!(
                hops = n.hops(),
                "neighbour entries of every backend and next hop resolved"
            );
        } else {
            let names: Vec<String> = pending.iter().map(|h| h.addr.to_string()).collect();
            warn!(
                hops = n.hops(),
                unresolved = ?names,
                "some next hops do not answer ARP/ND yet: the kernel keeps trying (managed entries)"
            );
        }
        Some(n)
    }
}

/// Every backend address of every VIP: the hops the data path forwards to.
pub fn backend_addresses(config: &Config) -> BTreeSet<IpAddr> {
    config
        .vips
        .iter()
        .flat_map(|v| v.pools.iter())
        .flat_map(|p| p.backends.iter())
        .map(|b| b.address.ip())
        .collect()
}

/// The families the VIPs use: (IPv4, IPv6).
pub fn families(config: &Config) -> (bool, bool) {
    let v4 = config.vips.iter().any(|v| v.address.is_ipv4());
    let v6 = config.vips.iter().any(|v| v.address.is_ipv6());
    (v4, v6)
}

/// Process setup before any thread or file exists: files the agent creates (the API
/// socket, the state file) are the owner's alone, with no window in which a socket is
/// world-connectable; the file-descriptor limit is raised to its hard limit (every API,
/// metrics and probe connection holds one).
pub fn harden_process() {
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(0o077) };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let old = lim.rlim_cur;
    if old < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid struct; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            info!(old, new = lim.rlim_cur, "RLIMIT_NOFILE raised to its hard limit");
        } else {
            warn!(
                old,
                "could not raise RLIMIT_NOFILE: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Keeps the neighbour entries in step with the backends, on a thread of its own (netlink
/// calls block): every second it asks `targets` for the current backend addresses; None
/// ends it.
pub struct NeighbourKeeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<SharedNeighbours>>,
}

/// The neighbour entries, shared by the keeper thread and the core (which installs the
/// entries of backends a change adds before it programs the maps). Lock order: the core
/// first, then this; the keeper never holds this while it asks for its targets.
pub type SharedNeighbours = Arc<std::sync::Mutex<neigh::Neighbours>>;

impl NeighbourKeeper {
    pub fn start(
        neighbours: SharedNeighbours,
        targets: impl Fn() -> Option<BTreeSet<IpAddr>> + Send + 'static,
    ) -> NeighbourKeeper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("veer-neigh".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    for _ in 0..10 {
                        if flag.load(Ordering::Relaxed) {
                            return neighbours;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    match targets() {
                        Some(t) => neighbours
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .sync(&t),
                        None => break,
                    }
                }
                neighbours
            })
            .map_err(|e| warn!("neighbour keeper thread: {e}"))
            .ok();
        NeighbourKeeper { stop, thread }
    }

    /// Stops the thread; returns the entries' owner (for a full cleanup).
    pub fn stop(mut self) -> Option<SharedNeighbours> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for NeighbourKeeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
