//! `veer agent`: validate the config, load (or adopt) the data path, build the core over
//! it, serve the API, run health checks, the canary ticker and metrics. SIGTERM, SIGINT
//! and SIGKILL all leave the data path forwarding for the next agent to adopt.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use tokio::sync::Mutex;
use tracing::info;

use super::{
    AgentError, Core,
    core::Persistence,
    persist::{fnv1a, restore},
};
use crate::{
    api,
    config::{self, AttachMode, Config},
    dataplane::{Dataplane, Sizes},
    state::{Desired, Limits, Reconciler},
};

/// Tables resident at once: every pool twice (a rebuild goes to a free id, then flips),
/// and never fewer than 64 so pools added at runtime find room.
pub fn max_tables(config: &Config) -> u32 {
    let pools: u32 = config.vips.iter().map(|v| v.pools.len() as u32).sum();
    (2 * pools + 2).max(64)
}

pub struct Options {
    pub config: PathBuf,
    pub interfaces: Vec<String>,
    pub socket: Option<PathBuf>,
    pub mode: AttachMode,
    /// Clients and VIPs whose data-path decisions are logged at debug level.
    pub trace: Vec<crate::config::TracePrefix>,
}

pub fn state_file(config: &Config) -> PathBuf {
    config.agent.state_file.clone()
}

/// Everything checked before the kernel is touched.
pub struct Prepared {
    pub config: Config,
    pub config_hash: String,
    pub interfaces: Vec<String>,
    pub snat_v4: Option<Ipv4Addr>,
    pub snat_v6: Option<Ipv6Addr>,
}

pub fn prepare(config_path: &Path, interfaces: &[String]) -> Result<Prepared, AgentError> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| AgentError::Rejected(format!("{}: cannot read: {e}", config_path.display())))?;
    let config =
        config::parse(&text, &config_path.display().to_string()).map_err(|e| AgentError::Rejected(e.to_string()))?;
    let interfaces = if interfaces.is_empty() {
        config.agent.interfaces.clone()
    } else {
        interfaces.to_vec()
    };
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
    if (config.agent.snat_v4.is_none() && found4.is_some()) || (config.agent.snat_v6.is_none() && found6.is_some()) {
        tracing::warn!(
            iface = %interfaces[0],
            "NAT source defaults to the interface's own address, which the host's connections \
             (health checks included) also use: a local port can meet a NAT port towards the same \
             backend. Set agent.snat_v4/snat_v6 to dedicated addresses (see docs/decisions.md)"
        );
    }
    // Validate the whole state against fresh limits before anything else happens.
    Reconciler::new(limits(&config))
        .reconcile(&Desired::new(config.clone()), snat_v4, snat_v6)
        .map_err(|e| AgentError::Rejected(format!("{}: {e}", config_path.display())))?;
    crate::host::dsr::check_backends(&config, &interfaces, None)
        .map_err(|e| AgentError::Rejected(format!("{}: {e}", config_path.display())))?;
    Ok(Prepared {
        config,
        config_hash: fnv1a(&text),
        interfaces,
        snat_v4,
        snat_v6,
    })
}

/// Allocations of 128 KiB and more (a Maglev table is 256 KiB at the default ring size)
/// get their own mapping, returned to the kernel when freed. glibc would otherwise raise
/// that threshold after the first such free and keep later tables on the heap, where a
/// change that builds 100 of them leaves the agent's resident memory high for good.
fn return_large_frees() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

pub fn limits(config: &Config) -> Limits {
    Limits {
        ring_size: config.agent.ring_size,
        max_backends: config.agent.max_backends,
        max_tables: max_tables(config),
        max_vips: lb_common::DEFAULT_MAX_VIPS,
        max_ab_rules: lb_common::DEFAULT_MAX_AB_RULES,
    }
}

pub async fn run(opts: Options) -> Result<(), AgentError> {
    crate::host::harden_process();
    return_large_frees();
    let p = prepare(&opts.config, &opts.interfaces)?;
    let remote = remote_api(&p.config)?;
    let host = crate::host::prepare(&p.config, &p.interfaces).map_err(|e| match e.is_rejected() {
        true => AgentError::Rejected(e.to_string()),
        false => AgentError::Failed(e.into()),
    })?;
    let limits = limits(&p.config);
    let sizes = Sizes {
        flows: p.config.agent.flow_capacity,
        backends: p.config.agent.max_backends,
        ring_size: p.config.agent.ring_size,
        max_tables: max_tables(&p.config),
        reply_iface_check: p.interfaces.len() > 1 && p.config.agent.reply_interface_check,
        trace: opts.trace.clone(),
    };
    let socket = opts.socket.clone().unwrap_or_else(|| p.config.agent.socket.clone());
    let state_file = state_file(&p.config);
    let mut signals = super::Signals::install()?;
    let dp = Dataplane::load(sizes, &p.config.agent.pin_dir).context("load the data path")?;
    let restored = restore(&state_file);
    // What to converge to: the saved state if it grew from this very file, else the file
    // over the saved state as `veer apply -f` would put it, else the file.
    let desired = match &restored {
        Some(saved) if saved.config_hash == p.config_hash => saved.desired.clone(),
        Some(saved) => {
            info!(file = %opts.config.display(), "the config file changed since the state was saved: applying it over the saved state");
            saved.desired.with_config(p.config.clone())
        }
        None => Desired::new(p.config.clone()),
    };
    let adopted = dp.adopted;
    let reconciler = if adopted {
        let maps = dp.snapshot(limits.ring_size).context("read the adopted maps")?;
        Reconciler::from_maps(limits, maps, restored.as_ref().map(|s| &s.ids), &desired)
    } else {
        Reconciler::new(limits)
    }
    .with_store(dp.table_store());
    let found = reconciler.ids.clone();
    // Neighbour entries for every backend before the maps name them: an adopted program
    // forwards with the maps as soon as they are written, and a backend added by an edit
    // made while no agent ran must not meet its first packet unresolved.
    let neighbours = host.neighbours(&desired.config);
    let mut core = Core::start(
        (p.config.clone(), desired),
        (reconciler, dp),
        (p.snat_v4, p.snat_v6),
        Persistence {
            state_file,
            config_hash: p.config_hash.clone(),
        },
    )
    .map_err(|e| anyhow::anyhow!("program the maps: {e}"))?;
    if adopted {
        let kept = core.ids();
        let gone = |found: &BTreeMap<String, u32>, kept: &BTreeMap<String, u32>| -> Vec<String> {
            found.keys().filter(|k| !kept.contains_key(*k)).cloned().collect()
        };
        info!(
            vips = found.vips.len(),
            backends = found.backends.len(),
            removed_vips = ?gone(&found.vips, &kept.vips),
            removed_backends = ?gone(&found.backends, &kept.backends),
            "adopted maps converged to the desired state (surviving backends keep their ids)"
        );
    }
    for iface in &p.interfaces {
        core.dataplane_mut().attach(iface, opts.mode).context("attach")?;
    }
    let metrics = p.config.agent.metrics;
    let neighbours = neighbours.map(|n| Arc::new(std::sync::Mutex::new(n)));
    if let Some(n) = &neighbours {
        core.set_neighbours(n.clone());
    }
    let core = Arc::new(Mutex::new(core));
    let keeper = neighbours.map(|n| {
        let weak = Arc::downgrade(&core);
        crate::host::NeighbourKeeper::start(n, move || {
            Some(crate::host::backend_addresses(
                &weak.upgrade()?.blocking_lock().desired().config,
            ))
        })
    });
    let server = api::serve_unix(core.clone(), &socket).await.context("API socket")?;
    let health = crate::health::task::spawn(core.clone());
    let canary = crate::deploy::spawn(core.clone());
    let loads = super::loads::spawn(core.clone());
    let tcp_api = match remote {
        Some(r) => Some(
            api::serve_tcp(core.clone(), r.addr, r.tokens, r.tls)
                .await
                .with_context(|| format!("TCP API listener on {}", r.addr))?,
        ),
        None => None,
    };
    let metrics_server = match metrics {
        Some(addr) => Some(
            crate::metrics::serve(core.clone(), addr)
                .await
                .context("metrics listener")?,
        ),
        None => None,
    };
    info!(
        vips = p.config.vips.len(),
        interfaces = ?p.interfaces,
        socket = %socket.display(),
        restored = restored.is_some(),
        "veer agent ready"
    );
    crate::host::systemd::notify("READY=1");
    signals.until_stopped(&core, &opts.config).await;
    server.abort();
    health.abort();
    let _ = health.await;
    canary.abort();
    let _ = canary.await;
    loads.abort();
    let _ = loads.await;
    if let Some(t) = tcp_api {
        t.abort();
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    let _ = std::fs::remove_file(&socket);
    drop(keeper.map(crate::host::NeighbourKeeper::stop));
    let core = Arc::try_unwrap(core)
        .map_err(|_| anyhow::anyhow!("API still holds the state"))?
        .into_inner();
    core.into_dataplane().release();
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
                // SAFETY: AF_INET sockaddr.
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                v4 = Some(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)));
            }
            libc::AF_INET6 if v6.is_none() => {
                // SAFETY: AF_INET6 sockaddr.
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

/// The TCP API's listener address, tokens and TLS configuration, read and checked before
/// the agent touches the kernel (a bad token or certificate file is rejected input).
struct RemoteApi {
    addr: std::net::SocketAddr,
    tokens: api::remote::Tokens,
    tls: Option<rustls::ServerConfig>,
}

fn remote_api(config: &Config) -> Result<Option<RemoteApi>, AgentError> {
    let a = &config.agent;
    let (Some(addr), Some(tokens)) = (a.api_listen, &a.api_token_file) else {
        return Ok(None);
    };
    let rejected = |what: &str, e: std::io::Error| AgentError::Rejected(format!("{what}: {e}"));
    let tokens = api::remote::Tokens::load(tokens).map_err(|e| rejected("agent.api_token_file", e))?;
    let tls = match (&a.api_tls_cert, &a.api_tls_key) {
        (Some(cert), Some(key)) => Some(
            api::remote::server_config(&api::remote::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: a.api_tls_client_ca.clone(),
            })
            .map_err(|e| rejected("TCP API TLS", e))?,
        ),
        _ => None,
    };
    Ok(Some(RemoteApi { addr, tokens, tls }))
}

/// `veer check`: validate without touching the kernel.
pub fn check(config_path: &Path, interfaces: &[String]) -> Result<crate::api::types::CheckReport, AgentError> {
    use crate::api::types::{CheckReport, CheckedVip};
    let p = prepare(config_path, interfaces)?;
    remote_api(&p.config)?;
    Ok(CheckReport {
        config: config_path.display().to_string(),
        ok: true,
        vips: p
            .config
            .vips
            .iter()
            .map(|v| CheckedVip {
                name: v.name.clone(),
                address: v.address.to_string(),
                active: v.active.clone(),
                pools: v.pools.len(),
                backends: v.pools.iter().map(|p| p.backends.len()).sum(),
            })
            .collect(),
    })
}
