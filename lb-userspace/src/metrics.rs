//! Prometheus text endpoint (`GET /metrics`), bound where `agent.metrics` says
//! (localhost by default in the examples). Names follow the Prometheus conventions:
//! `_total` counters, base units, labels `vip`, `pool`, `backend`, `reason`.

use std::{fmt::Write as _, net::SocketAddr};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    agent::Shared,
    api::types::{DataState, Health, Status},
};

pub async fn serve(core: Shared, addr: SocketAddr) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let app = Router::new().route("/metrics", get(metrics)).with_state(core);
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
    let status = core.lock().await.status_with(live);
    let text = render(&status);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric family: HELP, TYPE, then samples.
/// One sample per family under `labels`; None (unknown) leaves the family's sample out.
fn push_samples(families: &mut [Family], labels: &str, vals: impl IntoIterator<Item = Option<u64>>) {
    for (f, val) in families.iter_mut().zip(vals) {
        if let Some(val) = val {
            f.samples.push((labels.to_string(), val));
        }
    }
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, u64)>,
}

pub fn render(status: &Status) -> String {
    let counter = |name, help| Family {
        name,
        help,
        kind: "counter",
        samples: Vec::new(),
    };
    let gauge = |name, help| Family {
        name,
        help,
        kind: "gauge",
        samples: Vec::new(),
    };
    let mut vip_f = [
        counter("veer_vip_packets_total", "Client-to-backend packets to the VIP."),
        counter("veer_vip_bytes_total", "Client-to-backend IP bytes to the VIP."),
        counter("veer_vip_new_flows_total", "New flows to the VIP."),
        gauge(
            "veer_vip_live_flows",
            "Flows in the connection table not seen closing and used within agent.tcp_idle / udp_idle.",
        ),
        counter("veer_vip_reply_packets_total", "Backend-to-client packets of the VIP."),
    ];
    let mut be_f = [
        counter("veer_backend_packets_total", "Client-to-backend packets."),
        counter("veer_backend_bytes_total", "Client-to-backend IP bytes."),
        counter("veer_backend_new_flows_total", "New flows sent to the backend."),
        gauge("veer_backend_live_flows", "Flows open on the backend."),
        counter("veer_backend_resets_total", "TCP resets sent by the backend."),
        counter("veer_backend_answered_flows_total", "New flows the backend answered."),
        gauge("veer_backend_weight", "Configured weight."),
        gauge(
            "veer_backend_up",
            "1 if the backend takes new flows (admin ready, weight > 0, healthy).",
        ),
        gauge(
            "veer_backend_health_up",
            "1 if health checks find the backend up (or it is not checked).",
        ),
    ];
    // Unknown live counts are left out of the scrape rather than reported as 0.
    for v in &status.vips {
        let c = &v.counters;
        let l = format!("vip=\"{}\"", esc(&v.name));
        let vals = [
            Some(c.packets),
            Some(c.bytes),
            Some(c.new_flows),
            c.live_flows,
            Some(c.reply_packets),
        ];
        push_samples(&mut vip_f, &l, vals);
        for p in &v.pools {
            for b in &p.backends {
                let c = &b.counters;
                let l = format!(
                    "vip=\"{}\",pool=\"{}\",backend=\"{}\"",
                    esc(&v.name),
                    esc(&p.name),
                    b.address
                );
                let vals = [
                    Some(c.packets),
                    Some(c.bytes),
                    Some(c.new_flows),
                    c.live_flows,
                    Some(c.backend_resets),
                    Some(c.answered_flows),
                    Some(b.weight as u64),
                    Some((b.state == DataState::Ready) as u64),
                    Some((b.health != Health::Down) as u64),
                ];
                push_samples(&mut be_f, &l, vals);
            }
        }
    }
    let mut reasons = counter("veer_xdp_packets_total", "Packets by the XDP program's verdict reason.");
    for (r, n) in &status.counters.reasons {
        reasons.samples.push((format!("reason=\"{r}\""), *n));
    }
    let mut out = String::new();
    for f in vip_f.iter().chain(be_f.iter()).chain(std::iter::once(&reasons)) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", f.name, f.help, f.name, f.kind);
        for (labels, v) in &f.samples {
            let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
        }
    }
    let _ = writeln!(
        out,
        "# HELP veer_build_info Build information.\n# TYPE veer_build_info gauge"
    );
    let _ = writeln!(out, "veer_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    out
}
