//! Prometheus endpoint on `agent.metrics`: `GET /metrics` (text format 0.0.4, through
//! prometheus-client) and `GET /healthz`. State (data-path counters, health, deployment
//! state, table fill) is read from the core at each scrape; events (health probes, API
//! requests) are recorded as they happen, by [`observe_check`] and [`track_api`]. Names
//! follow the Prometheus conventions: `_total` counters, base units, labels `vip`, `pool`,
//! `backend`, `reason`. docs/grafana/veer.json and docs/prometheus/alerts.yml use them.

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    agent::{Core, Shared},
    api::types::{
        BackendStatus, CanaryOutcome, CanaryStatus, Counters, DataState, Health, PoolStatus, Status, VipStatus,
    },
    config::Mode,
};

/// Ports one SNAT address has toward one backend: the data path allocates from
/// 1024..=65535 (lb-ebpf flow.rs).
pub const NAT_PORTS_PER_BACKEND: u64 = 65536 - 1024;

pub async fn serve(core: Shared, addr: SocketAddr) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(core);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(crate::api::limits::Limited::new(listener, "metrics"), app).await {
            tracing::error!("metrics server: {e}");
        }
    }))
}

async fn metrics(State(core): State<Shared>) -> impl IntoResponse {
    // The connection-table scan runs without the lock (see api::status).
    let scan = core.lock().await.live_scan();
    let live = scan.run_blocking().await;
    let snapshot = snapshot(&*core.lock().await, live);
    match render(snapshot) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics failed: {e}\n"),
        ),
    }
}

/// 200 while the core answers within a second (a stuck agent fails its liveness probe).
async fn healthz(State(core): State<Shared>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(1), core.lock()).await {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "agent core busy for over 1s\n"),
    }
}

// ---- events ----

type Labels = Vec<(&'static str, String)>;

struct Events {
    checks: Family<Labels, Counter>,
    check_seconds: Family<Labels, Histogram>,
    api: Family<Labels, Counter>,
}

fn check_histogram() -> Histogram {
    // 1 ms .. 8 s: a probe's timeout is at most its interval.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 14,
    ))
}

fn events() -> &'static Events {
    static EVENTS: OnceLock<Events> = OnceLock::new();
    EVENTS.get_or_init(|| Events {
        checks: Family::default(),
        check_seconds: Family::new_with_constructor(check_histogram),
        api: Family::default(),
    })
}

/// Records one health probe of `backend` (`key` is `backend_key(vip, backend)`): its
/// result as HAProxy names it (first word of the reason: L4OK, L4TOUT, L7STS, ...) and
/// how long it took.
pub fn observe_check(key: &str, backend: SocketAddr, reason: &str, took: Duration) {
    let vip = key.rsplit_once('|').map_or(key, |(v, _)| v);
    let result = reason.split_whitespace().next().unwrap_or("unknown");
    let labels = vec![("vip", vip.to_string()), ("backend", backend.to_string())];
    let mut with_result = labels.clone();
    with_result.push(("result", result.to_string()));
    let e = events();
    e.checks.get_or_create(&with_result).inc();
    e.check_seconds.get_or_create(&labels).observe(took.as_secs_f64());
}

/// axum middleware for the API: counts requests by method, route template and status.
pub async fn track_api(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let labels = vec![
        ("method", method),
        ("route", route),
        ("code", response.status().as_u16().to_string()),
    ];
    events().api.get_or_create(&labels).inc();
    response
}

// ---- state, read from the core at each scrape ----

/// What one scrape reports: the core's status (the same `veer status` shows) and the
/// connection table's capacity.
#[derive(Debug)]
struct Snapshot {
    status: Status,
    flow_capacity: u64,
}

const CANARY_STATES: [&str; 3] = ["running", "done", "rolled_back"];

fn canary_state(outcome: &CanaryOutcome) -> &'static str {
    match outcome {
        CanaryOutcome::Running => CANARY_STATES[0],
        CanaryOutcome::Done => CANARY_STATES[1],
        CanaryOutcome::RolledBack(_) => CANARY_STATES[2],
    }
}

fn snapshot(core: &Core, live: crate::agent::Scanned) -> Snapshot {
    Snapshot {
        status: core.status_with(live),
        flow_capacity: core.desired().config.agent.flow_capacity as u64,
    }
}

/// The whole exposition: the state snapshot, the recorded events, the process.
fn render(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    registry.register_collector(Box::new(Process));
    let e = events();
    registry.register(
        "veer_health_checks",
        "Health probes by result (HAProxy's names: L4OK, L4TOUT, L4CON, L7OK, L7STS, L7TOUT, L7RSP)",
        e.checks.clone(),
    );
    registry.register(
        "veer_health_check_duration_seconds",
        "Time a health probe took, until its answer or its timeout",
        e.check_seconds.clone(),
    );
    registry.register(
        "veer_api_requests",
        "API requests by method, route and HTTP status",
        e.api.clone(),
    );
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One metric family from (labels, value) samples; a family without samples still shows
/// its HELP and TYPE, so dashboards find every name.
fn family<V: EncodeCounterValue + EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error> {
    // The registry ends the help of the families it holds with a period; so do these.
    let help = format!("{help}.");
    let mut metric = encoder.encode_descriptor(name, &help, None, kind)?;
    for (labels, v) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(sample)?,
            _ => ConstGauge::new(v).encode(sample)?,
        }
    }
    Ok(())
}

/// A counter family read from the data path's counters: name, help, which field.
type CounterColumn = (&'static str, &'static str, fn(&Counters) -> u64);

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter as C, Gauge as G};
        let vip_l = |v: &VipStatus| vec![("vip", v.name.clone())];
        let pool_l = |v: &VipStatus, p: &PoolStatus| vec![("vip", v.name.clone()), ("pool", p.name.clone())];
        let backends = || {
            self.status.vips.iter().flat_map(|v| {
                v.pools.iter().flat_map(move |p| {
                    p.backends.iter().map(move |b| {
                        let l = vec![
                            ("vip", v.name.clone()),
                            ("pool", p.name.clone()),
                            ("backend", b.address.clone()),
                        ];
                        (v, l, b)
                    })
                })
            })
        };
        let vips = || self.status.vips.iter();
        let pools = || vips().flat_map(|v| v.pools.iter().map(move |p| (v, p)));
        // Takes new flows: admin ready, weight > 0, healthy.
        let up = |b: &BackendStatus| b.state == DataState::Ready;

        let vip_counters: [CounterColumn; 4] = [
            ("veer_vip_packets", "Client-to-backend packets to the VIP", |c| {
                c.packets
            }),
            ("veer_vip_bytes", "Client-to-backend IP bytes to the VIP", |c| c.bytes),
            ("veer_vip_new_flows", "New flows to the VIP", |c| c.new_flows),
            ("veer_vip_reply_packets", "Backend-to-client packets of the VIP", |c| {
                c.reply_packets
            }),
        ];
        for (name, help, get) in vip_counters {
            family(&mut enc, name, help, C, vips().map(|v| (vip_l(v), get(&v.counters))))?;
        }
        // Unknown live counts are left out of the scrape rather than reported as 0.
        family(
            &mut enc,
            "veer_vip_live_flows",
            "Flows in the connection table not seen closing and used within agent.tcp_idle / udp_idle",
            G,
            vips().filter_map(|v| v.counters.live_flows.map(|n| (vip_l(v), n))),
        )?;
        let backend_counters: [CounterColumn; 5] = [
            ("veer_backend_packets", "Client-to-backend packets", |c| c.packets),
            ("veer_backend_bytes", "Client-to-backend IP bytes", |c| c.bytes),
            ("veer_backend_new_flows", "New flows sent to the backend", |c| {
                c.new_flows
            }),
            ("veer_backend_resets", "TCP resets sent by the backend", |c| {
                c.backend_resets
            }),
            ("veer_backend_answered_flows", "New flows the backend answered", |c| {
                c.answered_flows
            }),
        ];
        for (name, help, get) in backend_counters {
            family(
                &mut enc,
                name,
                help,
                C,
                backends().map(|(_, l, b)| (l, get(&b.counters))),
            )?;
        }
        family(
            &mut enc,
            "veer_backend_live_flows",
            "Flows open on the backend",
            G,
            backends().filter_map(|(_, l, b)| b.counters.live_flows.map(|n| (l, n))),
        )?;
        family(
            &mut enc,
            "veer_backend_weight",
            "Configured weight",
            G,
            backends().map(|(_, l, b)| (l, b.weight as u64)),
        )?;
        family(
            &mut enc,
            "veer_backend_up",
            "1 if the backend takes new flows (admin ready, weight > 0, healthy)",
            G,
            backends().map(|(_, l, b)| (l, up(b) as u64)),
        )?;
        family(
            &mut enc,
            "veer_backend_health_up",
            "1 if health checks find the backend up (or it is not checked)",
            G,
            backends().map(|(_, l, b)| (l, (b.health != Health::Down) as u64)),
        )?;
        family(
            &mut enc,
            "veer_pool_backends",
            "Backends configured in the pool",
            G,
            pools().map(|(v, p)| (pool_l(v, p), p.backends.len() as u64)),
        )?;
        family(
            &mut enc,
            "veer_pool_healthy_backends",
            "Backends of the pool that take new flows (admin ready, weight > 0, healthy)",
            G,
            pools().map(|(v, p)| (pool_l(v, p), p.backends.iter().filter(|b| up(b)).count() as u64)),
        )?;

        // Deployment state.
        family(
            &mut enc,
            "veer_vip_active_pool",
            "1 for the VIP's active pool (the one that takes new flows), 0 for its other pools",
            G,
            pools().map(|(v, p)| (pool_l(v, p), (p.name == v.active) as u64)),
        )?;
        family(
            &mut enc,
            "veer_vip_split_percent",
            "Percent of the VIP's new flows the split sends to the pool (the active pool has the rest)",
            G,
            pools().map(|(v, p)| {
                let pct = match &v.split {
                    Some(s) if s.pool == p.name => s.percent,
                    Some(s) if p.name == v.active => 100.0 - s.percent,
                    None if p.name == v.active => 100.0,
                    _ => 0.0,
                };
                (pool_l(v, p), pct)
            }),
        )?;
        let canaries = || vips().filter_map(|v| v.canary.as_ref().map(|c| (v, c)));
        let canary_l = |v: &VipStatus, c: &CanaryStatus| vec![("vip", v.name.clone()), ("pool", c.pool.clone())];
        family(
            &mut enc,
            "veer_canary_step",
            "The stepped canary's current step (1-based) of the VIP's last or running canary",
            G,
            canaries().map(|(v, c)| (canary_l(v, c), c.step as u64 + 1)),
        )?;
        family(
            &mut enc,
            "veer_canary_percent",
            "Percent of new flows the canary's current step sends to its pool",
            G,
            canaries().map(|(v, c)| (canary_l(v, c), c.percent.unwrap_or(0.0))),
        )?;
        family(
            &mut enc,
            "veer_canary_state",
            "1 for the state of the VIP's last or running canary (running, done, rolled_back)",
            G,
            canaries().flat_map(|(v, c)| {
                CANARY_STATES.map(|s| {
                    let mut l = canary_l(v, c);
                    l.push(("state", s.to_string()));
                    (l, (canary_state(&c.outcome) == s) as u64)
                })
            }),
        )?;

        // Capacity.
        family(
            &mut enc,
            "veer_flow_table_capacity",
            "Connection-table capacity in flows (agent.flow_capacity)",
            G,
            [(Labels::new(), self.flow_capacity)],
        )?;
        family(
            &mut enc,
            "veer_flow_table_live_flows",
            "Live flows in the connection table, all VIPs together",
            G,
            vips()
                .map(|v| v.counters.live_flows)
                .sum::<Option<u64>>()
                .map(|n| (Labels::new(), n)),
        )?;
        family(
            &mut enc,
            "veer_nat_ports_capacity",
            "SNAT ports one SNAT address has toward one backend",
            G,
            [(Labels::new(), NAT_PORTS_PER_BACKEND)],
        )?;
        family(
            &mut enc,
            "veer_nat_ports_used",
            "SNAT ports held toward the backend (one per live NAT flow)",
            G,
            backends()
                .filter(|(v, _, _)| v.mode == Mode::Nat)
                .filter_map(|(_, l, b)| b.counters.live_flows.map(|n| (l, n))),
        )?;

        family(
            &mut enc,
            "veer_xdp_packets",
            "Packets by the XDP program's verdict reason",
            C,
            self.status
                .counters
                .reasons
                .iter()
                .map(|(r, n)| (vec![("reason", r.clone())], *n)),
        )?;
        family(
            &mut enc,
            "veer_flood_guard_flows",
            "New flows by the flood guard's decision (free way, evicted unconfirmed, evicted confirmed, refused, over budget)",
            C,
            self.status
                .counters
                .flood_guard
                .iter()
                .map(|(d, n)| (vec![("decision", d.clone())], *n)),
        )?;
        family(
            &mut enc,
            "veer_build_info",
            "Build information",
            G,
            [(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1u64)],
        )?;
        Ok(())
    }
}

// ---- the process (the names Prometheus client libraries use) ----

#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = process_stats() else { return Ok(()) };
        let none = Labels::new;
        family(
            &mut enc,
            "process_cpu_seconds",
            "User and system CPU time spent in seconds",
            MetricType::Counter,
            [(none(), p.cpu_seconds)],
        )?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.rss_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.vsize_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                p.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors", p.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", p.max_fds),
            ("process_threads", "Number of OS threads in the process", p.threads),
        ];
        for (name, help, v) in gauges {
            family(&mut enc, name, help, MetricType::Gauge, [(none(), v)])?;
        }
        Ok(())
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    start_time_seconds: f64,
    open_fds: f64,
    max_fds: f64,
    threads: f64,
}

/// From /proc/self/stat (fields after the command name, which may hold spaces).
fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (ticks, page) = (ticks.max(1) as f64, page.max(1) as f64);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        });
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur as f64
    } else {
        0.0
    };
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        threads: field(20)?,
        start_time_seconds: boot + field(22)? / ticks,
        vsize_bytes: field(23)?,
        rss_bytes: field(24)? * page,
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64,
        max_fds,
    })
}
