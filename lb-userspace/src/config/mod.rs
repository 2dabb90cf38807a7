//! The agent's configuration file (TOML, see DESIGN.md): parsed, then validated as a whole
//! before anything touches the kernel. Every error names the file, the line and the field.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use self::health::RawHealth;
pub use crate::state::validate::{DEFAULT_WEIGHT, MAX_WEIGHT};
use crate::{health::HealthConfig, state::validate};

mod health;
mod trace;

pub use self::trace::TracePrefix;

pub const DEFAULT_SOCKET: &str = "/run/veer/veer.sock";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/veer/state.json";
pub const MIN_FLOW_CAPACITY: u32 = 1024;

/// How to attach: `Auto` tries native (driver) mode and falls back to generic with a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

/// A rejected configuration: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line; 0 when the error concerns the file as a whole.
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.field.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.message),
            (0, false) => write!(f, "{}: {}: {}", self.file, self.field, self.message),
            (l, true) => write!(f, "{}:{l}: {}", self.file, self.message),
            (l, false) => write!(f, "{}:{l}: {}: {}", self.file, self.field, self.message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    Maglev,
    SourceHash,
    RoundRobin,
    LeastConn,
}

impl Scheduler {
    /// As the config spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::SourceHash => "source-hash",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::LeastConn => "least-conn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Nat,
    /// Direct server return (L2): only the destination MAC is rewritten; backends hold the
    /// VIP on a loopback and share an L2 segment with the balancer.
    Dsr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub interfaces: Vec<String>,
    pub socket: PathBuf,
    /// Where desired state (config + runtime changes) is persisted.
    pub state_file: PathBuf,
    /// Optional TCP listener for the API (off by default); needs `api_token_file`.
    pub api_listen: Option<SocketAddr>,
    /// File holding the named bearer tokens the TCP listener accepts (`NAME TOKEN` lines).
    pub api_token_file: Option<PathBuf>,
    /// PEM certificate chain and private key: with both set, the TCP listener serves TLS.
    #[serde(default)]
    pub api_tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub api_tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, TCP API clients must present a certificate they signed.
    #[serde(default)]
    pub api_tls_client_ca: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub snat_v4: Option<Ipv4Addr>,
    pub snat_v6: Option<Ipv6Addr>,
    pub flow_capacity: u32,
    pub ring_size: u32,
    pub max_backends: u32,
    /// A TCP flow not seen closing counts as live until it has been idle this long.
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle: std::time::Duration,
    /// A UDP flow counts as live until it has been idle this long.
    #[serde(default = "default_udp_idle")]
    pub udp_idle: std::time::Duration,
    /// Where the maps and links are pinned (on a bpffs); the next agent adopts them there.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// The agent may set the kernel settings its data path needs (false: it refuses to
    /// start while one differs, naming them).
    #[serde(default = "default_true")]
    pub manage_sysctls: bool,
    /// On more than one interface: accept a NAT reply only from the interface its flow
    /// leaves by (false: asymmetric routing across the agent's interfaces).
    #[serde(default = "default_true")]
    pub reply_interface_check: bool,
}

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/veer";

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

fn default_true() -> bool {
    true
}

/// IPVS's TCP established timeout.
pub const DEFAULT_TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(900);
/// Linux conntrack's UDP timeout.
pub const DEFAULT_UDP_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

fn default_tcp_idle() -> std::time::Duration {
    DEFAULT_TCP_IDLE
}

fn default_udp_idle() -> std::time::Duration {
    DEFAULT_UDP_IDLE
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendConfig {
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub name: String,
    pub backends: Vec<BackendConfig>,
    /// Overrides the VIP's health settings for this pool.
    #[serde(default)]
    pub health: Option<HealthConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipConfig {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub mode: Mode,
    pub scheduler: Scheduler,
    pub active: String,
    /// Active health checks for the VIP's backends (none: no checks).
    pub health: Option<HealthConfig>,
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub agent: AgentConfig,
    pub vips: Vec<VipConfig>,
}

// ---- raw, as written (spans kept for error lines) ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    #[serde(default)]
    interfaces: Vec<String>,
    socket: Option<String>,
    state_file: Option<String>,
    api_listen: Option<Spanned<String>>,
    api_token_file: Option<Spanned<String>>,
    api_tls_cert: Option<Spanned<String>>,
    api_tls_key: Option<Spanned<String>>,
    api_tls_client_ca: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    snat_v4: Option<Spanned<String>>,
    snat_v6: Option<Spanned<String>>,
    flow_capacity: Option<Spanned<i64>>,
    ring_size: Option<Spanned<i64>>,
    max_backends: Option<Spanned<i64>>,
    tcp_idle: Option<Spanned<String>>,
    udp_idle: Option<Spanned<String>>,
    pin_dir: Option<Spanned<String>>,
    manage_sysctls: Option<bool>,
    reply_interface_check: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    health: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Spanned<String>,
    address: Spanned<String>,
    protocol: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    scheduler: Option<Spanned<String>>,
    active: Spanned<String>,
    health: Option<Spanned<RawHealth>>,
    #[serde(default, rename = "pool")]
    pools: Vec<RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default, rename = "vip")]
    vips: Vec<RawVip>,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, &file)
}

/// Parses and validates config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
        ConfigError {
            file: file.into(),
            line,
            field: String::new(),
            message: e.message().trim().to_string(),
        }
    })?;
    Validator { text, file }.config(raw)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Validator<'_> {
    fn err<T>(&self, span: std::ops::Range<usize>, field: &str, message: impl Into<String>) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.file.into(),
            line: line_of(self.text, span.start),
            field: field.into(),
            message: message.into(),
        })
    }

    fn int(&self, v: &Option<Spanned<i64>>, field: &str, default: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let n = *v.get_ref();
        if n < min as i64 || n > max as i64 {
            return self.err(v.span(), field, format!("{n} is out of range ({min}..={max})"));
        }
        Ok(n as u32)
    }

    fn socket_addr(&self, v: &Spanned<String>, field: &str) -> Result<SocketAddr, ConfigError> {
        validate::service_address(v.get_ref()).or_else(|e| self.err(v.span(), field, e.0))
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let a = &raw.agent;
        let snat_v4 = match &a.snat_v4 {
            Some(s) => Some(
                s.get_ref()
                    .parse::<Ipv4Addr>()
                    .or_else(|_| self.err(s.span(), "agent.snat_v4", "not an IPv4 address"))?,
            ),
            None => None,
        };
        let snat_v6 = match &a.snat_v6 {
            Some(s) => Some(
                s.get_ref()
                    .parse::<Ipv6Addr>()
                    .or_else(|_| self.err(s.span(), "agent.snat_v6", "not an IPv6 address"))?,
            ),
            None => None,
        };
        let metrics = match &a.metrics {
            Some(m) => Some(
                m.get_ref()
                    .parse::<SocketAddr>()
                    .or_else(|_| self.err(m.span(), "agent.metrics", "not IP:PORT"))?,
            ),
            None => None,
        };
        let api_listen = match &a.api_listen {
            Some(m) => Some(
                m.get_ref()
                    .parse::<SocketAddr>()
                    .or_else(|_| self.err(m.span(), "agent.api_listen", "not IP:PORT"))?,
            ),
            None => None,
        };
        if let Some(l) = &a.api_listen
            && a.api_token_file.is_none()
        {
            return self.err(
                l.span(),
                "agent.api_listen",
                "the TCP API needs agent.api_token_file (a bearer token)",
            );
        }
        match (&a.api_tls_cert, &a.api_tls_key) {
            (Some(c), None) => return self.err(c.span(), "agent.api_tls_cert", "needs agent.api_tls_key too"),
            (None, Some(k)) => return self.err(k.span(), "agent.api_tls_key", "needs agent.api_tls_cert too"),
            _ => {}
        }
        if let Some(ca) = &a.api_tls_client_ca
            && a.api_tls_cert.is_none()
        {
            return self.err(
                ca.span(),
                "agent.api_tls_client_ca",
                "client certificates need TLS: set agent.api_tls_cert and agent.api_tls_key",
            );
        }
        if let (Some(l), Some(addr)) = (&a.api_listen, api_listen)
            && a.api_tls_cert.is_none()
            && !addr.ip().is_loopback()
        {
            return self.err(
                l.span(),
                "agent.api_listen",
                "plaintext is served only on loopback: set agent.api_tls_cert and agent.api_tls_key, or listen on 127.0.0.1/::1",
            );
        }
        let ring_size = self.int(
            &a.ring_size,
            "agent.ring_size",
            lb_common::DEFAULT_RING_SIZE,
            3,
            1 << 24,
        )?;
        if !lb_common::maglev::valid_ring_size(ring_size)
            && let Some(r) = &a.ring_size
        {
            return self.err(
                r.span(),
                "agent.ring_size",
                format!("{ring_size} is not prime (Maglev needs a prime table size, e.g. 65537)"),
            );
        }
        let idle = |v: &Option<Spanned<String>>, field: &str, default| -> Result<std::time::Duration, ConfigError> {
            let Some(v) = v else { return Ok(default) };
            let (min, max) = (
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(86_400),
            );
            validate::duration_within(v.get_ref(), min, max).or_else(|e| self.err(v.span(), field, e.0))
        };
        let agent = AgentConfig {
            tcp_idle: idle(&a.tcp_idle, "agent.tcp_idle", DEFAULT_TCP_IDLE)?,
            udp_idle: idle(&a.udp_idle, "agent.udp_idle", DEFAULT_UDP_IDLE)?,
            interfaces: a.interfaces.clone(),
            socket: PathBuf::from(a.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into())),
            state_file: PathBuf::from(a.state_file.clone().unwrap_or_else(|| DEFAULT_STATE_FILE.into())),
            pin_dir: match &a.pin_dir {
                None => default_pin_dir(),
                Some(d) if d.get_ref().starts_with('/') && !d.get_ref().contains("/../") => PathBuf::from(d.get_ref()),
                Some(d) => {
                    return self.err(
                        d.span(),
                        "agent.pin_dir",
                        format!("{:?} is not an absolute path", d.get_ref()),
                    );
                }
            },
            manage_sysctls: a.manage_sysctls.unwrap_or(true),
            reply_interface_check: a.reply_interface_check.unwrap_or(true),
            api_listen,
            api_token_file: a.api_token_file.as_ref().map(|t| PathBuf::from(t.get_ref())),
            api_tls_cert: a.api_tls_cert.as_ref().map(|t| PathBuf::from(t.get_ref())),
            api_tls_key: a.api_tls_key.as_ref().map(|t| PathBuf::from(t.get_ref())),
            api_tls_client_ca: a.api_tls_client_ca.as_ref().map(|t| PathBuf::from(t.get_ref())),
            metrics,
            snat_v4,
            snat_v6,
            flow_capacity: self.int(
                &a.flow_capacity,
                "agent.flow_capacity",
                lb_common::DEFAULT_MAX_FLOWS,
                MIN_FLOW_CAPACITY,
                1 << 26,
            )?,
            ring_size,
            max_backends: self.int(
                &a.max_backends,
                "agent.max_backends",
                lb_common::DEFAULT_MAX_BACKENDS,
                1,
                1 << 20,
            )?,
        };
        let mut vips = Vec::new();
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut backend_count = 0u32;
        for v in raw.vips {
            let vip = self.vip(v, &mut names, &mut keys)?;
            backend_count += vip.pools.iter().map(|p| p.backends.len() as u32).sum::<u32>();
            vips.push(vip);
        }
        if vips.len() as u32 > lb_common::DEFAULT_MAX_VIPS {
            return Err(ConfigError {
                file: self.file.into(),
                line: 0,
                field: "vip".into(),
                message: format!("{} VIPs, at most {}", vips.len(), lb_common::DEFAULT_MAX_VIPS),
            });
        }
        // backend id 0 is reserved
        if backend_count >= agent.max_backends {
            return Err(ConfigError {
                file: self.file.into(),
                line: 0,
                field: "agent.max_backends".into(),
                message: format!(
                    "{backend_count} backends configured, max_backends is {}",
                    agent.max_backends
                ),
            });
        }
        Ok(Config { agent, vips })
    }

    fn vip(
        &self,
        v: RawVip,
        names: &mut HashSet<String>,
        keys: &mut HashSet<(SocketAddr, Protocol)>,
    ) -> Result<VipConfig, ConfigError> {
        let name = v.name.get_ref().clone();
        if let Err(e) = validate::vip_name(&name) {
            return self.err(v.name.span(), "vip.name", e.0);
        }
        if !names.insert(name.clone()) {
            return self.err(v.name.span(), "vip.name", format!("duplicate VIP name {name:?}"));
        }
        let address = self.socket_addr(&v.address, "vip.address")?;
        let protocol = match v.protocol.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                return self.err(
                    v.protocol.as_ref().map(|p| p.span()).unwrap_or_default(),
                    "vip.protocol",
                    format!("{other:?}: expected \"tcp\" or \"udp\""),
                );
            }
        };
        if !keys.insert((address, protocol)) {
            return self.err(
                v.address.span(),
                "vip.address",
                format!("{address} ({protocol:?}) is already another VIP"),
            );
        }
        let mode = match v.mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("nat") => Mode::Nat,
            Some("dsr") => Mode::Dsr,
            Some(m @ "ipip") => {
                return self.err(
                    v.mode.as_ref().map(|p| p.span()).unwrap_or_default(),
                    "vip.mode",
                    format!("{m:?} is not supported yet; use \"nat\" or \"dsr\""),
                );
            }
            Some(other) => {
                return self.err(
                    v.mode.as_ref().map(|p| p.span()).unwrap_or_default(),
                    "vip.mode",
                    format!("{other:?}: expected \"nat\", \"dsr\" or \"ipip\""),
                );
            }
        };
        let scheduler = match v.scheduler.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("maglev") => Scheduler::Maglev,
            Some("source-hash") => Scheduler::SourceHash,
            Some("round-robin") => Scheduler::RoundRobin,
            Some("least-conn") => Scheduler::LeastConn,
            Some(other) => {
                return self.err(
                    v.scheduler.as_ref().map(|p| p.span()).unwrap_or_default(),
                    "vip.scheduler",
                    format!("{other:?}: expected \"maglev\", \"source-hash\", \"least-conn\" or \"round-robin\""),
                );
            }
        };
        let mut pools = Vec::new();
        let mut pool_names = HashSet::new();
        let mut seen_backends = HashSet::new();
        for p in v.pools {
            let pname = p.name.get_ref().clone();
            if !pool_names.insert(pname.clone()) {
                return self.err(
                    p.name.span(),
                    "vip.pool.name",
                    format!("duplicate pool {pname:?} in VIP {name:?}"),
                );
            }
            let mut backends = Vec::new();
            for b in p.backends {
                let addr = self.socket_addr(&b.address, "vip.pool.backends.address")?;
                if let Err(e) = validate::backend_address(addr, address) {
                    return self.err(b.address.span(), "vip.pool.backends.address", e.0);
                }
                if mode == Mode::Dsr
                    && let Err(e) = validate::dsr_backend_port(addr, address)
                {
                    return self.err(b.address.span(), "vip.pool.backends.address", e.0);
                }
                if !seen_backends.insert(addr) {
                    return self.err(
                        b.address.span(),
                        "vip.pool.backends.address",
                        format!("{addr} appears twice in VIP {name:?}"),
                    );
                }
                let weight = match &b.weight {
                    None => DEFAULT_WEIGHT,
                    Some(w) => validate::weight(*w.get_ref())
                        .or_else(|e| self.err(w.span(), "vip.pool.backends.weight", e.0))?,
                };
                backends.push(BackendConfig { address: addr, weight });
            }
            let health = match &p.health {
                Some(h) => Some(self.health(h, "vip.pool.health")?),
                None => None,
            };
            pools.push(PoolConfig {
                name: pname,
                backends,
                health,
            });
        }
        let active = v.active.get_ref().clone();
        if !pool_names.contains(&active) {
            return self.err(
                v.active.span(),
                "vip.active",
                format!("no pool named {active:?} in VIP {name:?}"),
            );
        }
        let health = match &v.health {
            Some(h) => Some(self.health(h, "vip.health")?),
            None => None,
        };
        Ok(VipConfig {
            name,
            address,
            protocol,
            mode,
            scheduler,
            active,
            health,
            pools,
        })
    }
}

impl VipConfig {
    pub fn family_is_v4(&self) -> bool {
        matches!(self.address.ip(), IpAddr::V4(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agent]
interfaces = ["eth0"]
snat_v4 = "10.0.0.2"

[[vip]]
name = "web"
address = "10.0.0.100:80"
protocol = "tcp"
mode = "nat"
scheduler = "maglev"
active = "blue"
health = { kind = "http", path = "/healthz", interval = "1s" }

[[vip.pool]]
name = "blue"
backends = [ { address = "10.0.1.10:8080", weight = 100 }, { address = "10.0.1.11:8080" } ]

[[vip.pool]]
name = "green"
backends = [ { address = "10.0.2.10:8080" } ]
"#;

    fn err(text: &str) -> ConfigError {
        parse(text, "veer.toml").expect_err("must be rejected")
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(GOOD, "veer.toml").unwrap();
        assert_eq!(c.vips.len(), 1);
        assert_eq!(c.vips[0].pools[0].backends[1].weight, DEFAULT_WEIGHT);
        assert_eq!(c.agent.ring_size, 65537);
        assert_eq!(c.agent.snat_v4, Some(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn the_tcp_api_is_plaintext_only_on_loopback_and_tls_needs_both_files() {
        let with = |keys: &str| GOOD.replace("[agent]\n", &format!("[agent]\n{keys}\n"));
        let token = "api_token_file = \"/etc/veer/api.tokens\"";
        assert!(parse(&with(&format!("api_listen = \"127.0.0.1:9478\"\n{token}")), "veer.toml").is_ok());
        assert!(parse(&with(&format!("api_listen = \"[::1]:9478\"\n{token}")), "veer.toml").is_ok());
        let e = err(&with(&format!("api_listen = \"0.0.0.0:9478\"\n{token}")));
        assert_eq!((e.line, e.field.as_str()), (3, "agent.api_listen"), "{e}");
        assert!(e.message.contains("plaintext is served only on loopback"), "{e}");
        let tls = "api_tls_cert = \"/etc/veer/api.crt\"\napi_tls_key = \"/etc/veer/api.key\"";
        let c = parse(
            &with(&format!("api_listen = \"0.0.0.0:9478\"\n{token}\n{tls}")),
            "veer.toml",
        )
        .unwrap();
        assert_eq!(c.agent.api_tls_cert.as_deref(), Some(Path::new("/etc/veer/api.crt")));
        let e = err(&with(&format!(
            "api_listen = \"0.0.0.0:9478\"\n{token}\napi_tls_cert = \"/c\""
        )));
        assert_eq!(e.field, "agent.api_tls_cert", "{e}");
        let e = err(&with(&format!(
            "api_listen = \"127.0.0.1:9478\"\n{token}\napi_tls_client_ca = \"/ca\""
        )));
        assert_eq!(e.field, "agent.api_tls_client_ca", "{e}");
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = err(&GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\ncolour = \"red\""));
        assert_eq!(e.line, 10, "{e}");
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn bad_address_weight_and_active_pool_are_rejected_with_lines() {
        let e = err(&GOOD.replace("10.0.1.11:8080", "10.0.1.11"));
        assert_eq!((e.line, e.field.as_str()), (17, "vip.pool.backends.address"), "{e}");
        let e = err(&GOOD.replace("weight = 100", "weight = 10001"));
        assert_eq!((e.line, e.field.as_str()), (17, "vip.pool.backends.weight"), "{e}");
        let e = err(&GOOD.replace("weight = 100", "weight = -1"));
        assert_eq!(e.field, "vip.pool.backends.weight", "{e}");
        let e = err(&GOOD.replace("active = \"blue\"", "active = \"purple\""));
        assert_eq!((e.line, e.field.as_str()), (12, "vip.active"), "{e}");
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        let dup_backend = GOOD.replace("10.0.2.10:8080", "10.0.1.10:8080");
        assert_eq!(err(&dup_backend).field, "vip.pool.backends.address");
        let mixed = GOOD.replace("10.0.2.10:8080", "[fd00::1]:8080");
        assert!(err(&mixed).message.contains("family"));
        let two = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[vip]]").unwrap()..]);
        assert!(err(&two).message.contains("duplicate VIP name"));
        let same_addr = two.replacen("name = \"web\"", "name = \"web2\"", 1);
        assert!(err(&same_addr).message.contains("already another VIP"));
        assert!(
            err(&GOOD.replace("mode = \"nat\"", "mode = \"ipip\""))
                .message
                .contains("not supported yet")
        );
        // DSR rewrites no port: a backend listens on the VIP's port.
        let dsr = GOOD.replace("mode = \"nat\"", "mode = \"dsr\"");
        let e = err(&dsr);
        assert_eq!(e.field, "vip.pool.backends.address", "{e}");
        assert!(e.message.contains("the VIP's port"), "{e}");
        let ok = dsr.replace(":8080\"", ":80\"");
        assert_eq!(parse(&ok, "t.toml").unwrap().vips[0].mode, Mode::Dsr);
        assert!(err(&GOOD.replace("maglev", "fastest")).message.contains("expected"));
        for (name, s) in [
            ("round-robin", Scheduler::RoundRobin),
            ("least-conn", Scheduler::LeastConn),
        ] {
            let c = parse(&GOOD.replace("maglev", name), "t.toml").unwrap();
            assert_eq!((c.vips[0].scheduler, c.vips[0].scheduler.name()), (s, name));
        }
        assert_eq!(
            err(&GOOD.replace("interfaces", "ring_size = 65536\ninterfaces")).field,
            "agent.ring_size"
        );
        assert!(err("[[vip]\n").line >= 1);
        assert!(err(&GOOD.replace(":80\"", ":0\"")).message.contains("port 0"));
        let e = err(&GOOD.replace("interval = \"1s\"", "interval = \"soon\""));
        assert_eq!((e.line, e.field.as_str()), (13, "vip.health.interval"), "{e}");
        assert_eq!(
            err(&GOOD.replace("kind = \"http\"", "kind = \"ping\"")).field,
            "vip.health.kind"
        );
        assert!(
            err(&GOOD.replace("path = \"/healthz\"", "path = \"/h\", rise = 0"))
                .message
                .contains("out of range")
        );
        assert!(
            err(&GOOD.replace("path = \"/healthz\"", "path = \"/h\", expect = \"500-200\""))
                .field
                .ends_with("expect")
        );
    }

    #[test]
    fn durations_take_compound_forms_and_huge_ones_are_refused() {
        let c = parse(&GOOD.replace("interval = \"1s\"", "interval = \"1m30s\""), "veer.toml").unwrap();
        assert_eq!(
            c.vips[0].health.as_ref().unwrap().interval,
            std::time::Duration::from_secs(90)
        );
        for huge in ["99999999999999999999h", "18446744073709551615s", "2years"] {
            let e = err(&GOOD.replace("interval = \"1s\"", &format!("interval = \"{huge}\"")));
            assert_eq!(e.field, "vip.health.interval", "{huge}: {e}");
        }
        let e = err(&GOOD.replace("interfaces", "udp_idle = \"1000000000000000h\"\ninterfaces"));
        assert_eq!(e.field, "agent.udp_idle", "{e}");
    }

    #[test]
    fn backends_on_loopback_or_link_local_addresses_are_refused_with_their_line() {
        for bad in ["127.0.0.1:8080", "169.254.0.5:8080"] {
            let e = err(&GOOD.replace("10.0.2.10:8080", bad));
            assert_eq!((e.line, e.field.as_str()), (21, "vip.pool.backends.address"), "{e}");
        }
    }
}
