//! Live views of the agent: the rows and per-second rates that `veer top` draws and
//! `veer status --watch` prints, both from `GET /v1/status` polled every interval (a rate
//! is the difference of two polls over the time between them).

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{
    client::{self, ClientError, Endpoint},
    render::json_name,
};
use crate::api::types::{Counters, Status, VipStatus};

/// One poll of the agent's status.
pub struct Sample {
    pub at: Instant,
    pub status: Status,
}

pub fn poll(socket: &Endpoint) -> Result<Sample, ClientError> {
    let status = client::call(socket, "GET", "/v1/status", None::<&()>)?;
    Ok(Sample {
        at: Instant::now(),
        status,
    })
}

/// Packets and new flows per second of one VIP or backend between two polls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rate {
    pub packets_per_s: f64,
    pub new_flows_per_s: f64,
}

fn per_second(before: u64, now: u64, secs: f64) -> f64 {
    // A counter that went down was reset (a new data path): no rate for this round.
    if secs <= 0.0 || now < before {
        return 0.0;
    }
    (now - before) as f64 / secs
}

fn rate(before: Option<&Counters>, now: &Counters, secs: f64) -> Rate {
    match before {
        None => Rate::default(),
        Some(b) => Rate {
            packets_per_s: per_second(b.packets, now.packets, secs),
            new_flows_per_s: per_second(b.new_flows, now.new_flows, secs),
        },
    }
}

/// What a live view shows of one VIP, a pool or a backend, top to bottom.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Row {
    Vip {
        name: String,
        address: String,
        active: String,
        /// The deployment in progress: split, canary step, A/B rule (or "-").
        deployment: String,
        live_flows: Option<u64>,
        rate: Rate,
    },
    Pool {
        vip: String,
        name: String,
        role: String,
        live_flows: Option<u64>,
    },
    Backend {
        vip: String,
        pool: String,
        address: String,
        weight: u32,
        admin: String,
        health: String,
        state: String,
        live_flows: Option<u64>,
        rate: Rate,
    },
}

/// Drops counted by the data path per second (every `drop_*` reason), between two polls.
pub fn drops_per_second(before: Option<&Sample>, now: &Sample) -> f64 {
    let sum = |s: &Status| -> u64 {
        s.counters
            .reasons
            .iter()
            .filter(|(k, _)| k.starts_with("drop_"))
            .map(|(_, v)| v)
            .sum()
    };
    match before {
        None => 0.0,
        Some(b) => per_second(sum(&b.status), sum(&now.status), secs(b, now)),
    }
}

fn secs(before: &Sample, now: &Sample) -> f64 {
    now.at.saturating_duration_since(before.at).as_secs_f64()
}

/// A canary's state in a word or two (its outcome is a tagged object in JSON).
fn canary_state(c: &crate::api::types::CanaryStatus) -> &'static str {
    use crate::api::types::CanaryOutcome;
    match c.outcome {
        CanaryOutcome::Running if c.paused => "paused",
        CanaryOutcome::Running if c.awaiting_gate => "awaiting gate",
        CanaryOutcome::Running => "running",
        CanaryOutcome::Done => "done",
        CanaryOutcome::RolledBack(_) => "rolled back",
    }
}

/// The deployment a VIP is in, in a few words.
pub fn deployment(v: &VipStatus) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &v.canary {
        parts.push(format!(
            "canary {} step {}/{} ({}) {}",
            c.pool,
            (c.step + 1).min(c.steps.len()),
            c.steps.len(),
            c.percent.map_or_else(|| "-".to_string(), |p| format!("{p}%")),
            canary_state(c)
        ));
    } else if let Some(s) = &v.split {
        parts.push(format!("split {}% -> {} by {}", s.percent, s.pool, json_name(&s.by)));
    }
    if let Some(ab) = &v.ab {
        parts.push(format!("ab {} <- {}", ab.pool, ab.cidrs.join(",")));
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join("; ")
    }
}

/// The rows of `now`, with rates against `before` (none on the first poll).
pub fn rows(before: Option<&Sample>, now: &Sample) -> Vec<Row> {
    let secs = before.map_or(0.0, |b| secs(b, now));
    let mut out = Vec::new();
    for v in &now.status.vips {
        let prev = before.and_then(|b| b.status.vip(&v.name));
        out.push(Row::Vip {
            name: v.name.clone(),
            address: v.address.clone(),
            active: v.active.clone(),
            deployment: deployment(v),
            live_flows: v.counters.live_flows,
            rate: rate(prev.map(|p| &p.counters), &v.counters, secs),
        });
        for p in &v.pools {
            out.push(Row::Pool {
                vip: v.name.clone(),
                name: p.name.clone(),
                role: json_name(&p.role),
                live_flows: p.counters.live_flows,
            });
            for b in &p.backends {
                let health = match b.check.as_ref().and_then(|c| c.last.as_deref()) {
                    Some(last) => format!("{} {last}", json_name(&b.health)),
                    None => json_name(&b.health),
                };
                out.push(Row::Backend {
                    vip: v.name.clone(),
                    pool: p.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                    admin: json_name(&b.admin),
                    health,
                    state: json_name(&b.state),
                    live_flows: b.counters.live_flows,
                    rate: rate(
                        prev.and_then(|p| p.backend(&b.address)).map(|b| &b.counters),
                        &b.counters,
                        secs,
                    ),
                });
            }
        }
    }
    out
}

fn or_dash(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The rows as plain text, one line each, as `status --watch` prints them.
pub fn render_plain(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let line = match r {
            Row::Vip {
                name,
                address,
                active,
                deployment,
                live_flows,
                rate,
            } => format!(
                "{name} {address} active={active} pkt/s={:.0} new/s={:.0} live={} deployment={deployment}",
                rate.packets_per_s,
                rate.new_flows_per_s,
                or_dash(*live_flows)
            ),
            Row::Pool {
                name, role, live_flows, ..
            } => format!("  pool {name} ({role}) live={}", or_dash(*live_flows)),
            Row::Backend {
                address,
                weight,
                admin,
                health,
                state,
                live_flows,
                rate,
                ..
            } => format!(
                "    {address:<24} weight={weight:<5} admin={admin:<5} health={health:<12} state={state:<5} pkt/s={:<8.0} new/s={:<6.0} live={}",
                rate.packets_per_s,
                rate.new_flows_per_s,
                or_dash(*live_flows)
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One `status --watch --json` line.
#[derive(Serialize)]
struct WatchEvent<'a> {
    /// Unix time of the poll, in milliseconds.
    time_ms: u128,
    drops_per_s: f64,
    rows: &'a [Row],
}

/// `veer status --watch`: poll every `interval` (at most `count` times); on a terminal
/// redraw in place, elsewhere print one timestamped block per poll, NDJSON with `json`.
pub fn watch(socket: &Endpoint, json: bool, interval: Duration, count: Option<u64>) -> Result<(), ClientError> {
    let tty = std::io::stdout().is_terminal() && !json;
    let mut before: Option<Sample> = None;
    let mut polls = 0u64;
    loop {
        let started = Instant::now();
        let now = poll(socket)?;
        let rows = rows(before.as_ref(), &now);
        let drops = drops_per_second(before.as_ref(), &now);
        let time_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut out = std::io::stdout().lock();
        let written = if json {
            let line = serde_json::to_string(&WatchEvent {
                time_ms,
                drops_per_s: drops,
                rows: &rows,
            })
            .unwrap_or_default();
            writeln!(out, "{line}")
        } else {
            let clear = if tty { "\x1b[H\x1b[2J" } else { "" };
            write!(
                out,
                "{clear}-- {} (every {}) drops/s={drops:.0}\n{}",
                humantime::format_rfc3339_seconds(SystemTime::now()),
                humantime::format_duration(interval),
                render_plain(&rows)
            )
        };
        // A closed pipe (`| head`) ends the watch quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        drop(out);
        polls += 1;
        if count.is_some_and(|c| polls >= c) {
            return Ok(());
        }
        before = Some(now);
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::GlobalCounters;

    fn counters(packets: u64, new_flows: u64) -> Counters {
        Counters {
            packets,
            bytes: 0,
            new_flows,
            live_flows: Some(3),
            closed_flows: 0,
            answered_flows: 0,
            backend_resets: 0,
            reply_packets: 0,
            reply_bytes: 0,
        }
    }

    #[test]
    fn rates_are_differences_over_the_time_between_polls() {
        let b = counters(1000, 10);
        assert_eq!(
            rate(Some(&b), &counters(3000, 30), 2.0),
            Rate {
                packets_per_s: 1000.0,
                new_flows_per_s: 10.0
            }
        );
        assert_eq!(
            rate(None, &counters(3000, 30), 2.0),
            Rate::default(),
            "no rate on the first poll"
        );
        assert_eq!(
            rate(Some(&b), &counters(5, 1), 2.0),
            Rate::default(),
            "a reset counter gives no rate"
        );
    }

    #[test]
    fn drops_count_only_drop_reasons() {
        // One base instant: two calls of Instant::now() would make the 2 s not quite 2 s.
        let base = Instant::now();
        let sample = |drop: u64, pass: u64, secs: u64| Sample {
            at: base + Duration::from_secs(secs),
            status: Status {
                vips: vec![],
                counters: GlobalCounters {
                    reasons: [("drop_malformed".to_string(), drop), ("pass_not_vip".to_string(), pass)].into(),
                    ..Default::default()
                },
            },
        };
        let (a, b) = (sample(10, 0, 0), sample(30, 1000, 2));
        assert_eq!(drops_per_second(Some(&a), &b), 10.0);
        assert_eq!(drops_per_second(None, &b), 0.0);
    }
}
