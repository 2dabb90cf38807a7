//! `veer top`: a live terminal view (ratatui) of every VIP, pool and backend: packets/s and
//! new flows/s (from two successive status reads), live flows, health, weights, and the
//! split or canary in progress. q, Esc or Ctrl-C quit.

use std::{
    collections::BTreeMap,
    io::IsTerminal as _,
    path::Path,
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table},
};

use super::client::{self, ClientError};
use crate::api::types::{CanaryOutcome, Health, Status, VipStatus};

/// Per second rates of packets and new flows, by VIP name and by `VIP|backend`.
#[derive(Debug, Default, PartialEq)]
pub struct Rates {
    pub packets: BTreeMap<String, f64>,
    pub new_flows: BTreeMap<String, f64>,
}

/// The rates between two status reads `dt` apart (a counter that went back, after an
/// agent restart, counts as 0).
pub fn rates(before: &Status, after: &Status, dt: Duration) -> Rates {
    let secs = dt.as_secs_f64().max(1e-3);
    let mut r = Rates::default();
    let mut put = |key: String, b: (u64, u64), a: (u64, u64)| {
        r.packets.insert(key.clone(), a.0.saturating_sub(b.0) as f64 / secs);
        r.new_flows.insert(key, a.1.saturating_sub(b.1) as f64 / secs);
    };
    for v in &after.vips {
        let Some(old) = before.vip(&v.name) else { continue };
        put(
            v.name.clone(),
            (old.counters.packets, old.counters.new_flows),
            (v.counters.packets, v.counters.new_flows),
        );
        for b in v.pools.iter().flat_map(|p| &p.backends) {
            if let Some(ob) = old.backend(&b.address) {
                put(
                    format!("{}|{}", v.name, b.address),
                    (ob.counters.packets, ob.counters.new_flows),
                    (b.counters.packets, b.counters.new_flows),
                );
            }
        }
    }
    r
}

/// The VIP's deployment in a few words: the split or the canary in progress.
pub fn deployment(v: &VipStatus) -> String {
    if let Some(c) = v.canary.as_ref().filter(|c| c.outcome == CanaryOutcome::Running) {
        let state = if c.paused {
            "paused"
        } else if c.awaiting_gate {
            "awaiting gate"
        } else {
            "running"
        };
        return format!(
            "canary -> {}: step {}/{} {}% {state}",
            c.pool,
            c.step + 1,
            c.steps.len(),
            c.percent.unwrap_or(0.0)
        );
    }
    match (&v.split, &v.ab) {
        (Some(s), _) => format!("split {}% -> {} (by {:?})", s.percent, s.pool, s.by).to_lowercase(),
        (None, Some(a)) => format!("a/b {} -> {}", a.cidrs.join(","), a.pool),
        (None, None) => "-".to_string(),
    }
}

fn rate(r: &BTreeMap<String, f64>, key: &str) -> String {
    r.get(key).map_or_else(|| "-".to_string(), |x| format!("{x:.0}"))
}

fn live(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_string(), |n| n.to_string())
}

fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn draw(f: &mut Frame, socket: &Path, status: &Status, r: &Rates, every: Duration) {
    let [head, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(f.area());
    f.render_widget(
        Paragraph::new(Line::from(format!(
            "veer top — {} — every {} — q quits",
            socket.display(),
            humantime::format_duration(every)
        )))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        head,
    );
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let mut rows = Vec::new();
    for v in &status.vips {
        rows.push(
            Row::new(vec![
                Cell::from(format!("{} {}", v.name, v.address)),
                Cell::from(format!("active {}", v.active)),
                Cell::from(deployment(v)),
                Cell::from(""),
                Cell::from(""),
                Cell::from(rate(&r.packets, &v.name)),
                Cell::from(rate(&r.new_flows, &v.name)),
                Cell::from(live(v.counters.live_flows)),
            ])
            .style(bold.fg(Color::Cyan)),
        );
        for p in &v.pools {
            for b in &p.backends {
                let key = format!("{}|{}", v.name, b.address);
                let health = match b.health {
                    Health::Up => Style::new().fg(Color::Green),
                    Health::Down => Style::new().fg(Color::Red),
                    Health::Unchecked => Style::new(),
                };
                rows.push(Row::new(vec![
                    Cell::from(format!("  {}", b.address)),
                    Cell::from(format!("{} ({})", p.name, word(&p.role))),
                    Cell::from(format!("admin {} / {}", word(&b.admin), word(&b.state))),
                    Cell::from(word(&b.health)).style(health),
                    Cell::from(b.weight.to_string()),
                    Cell::from(rate(&r.packets, &key)),
                    Cell::from(rate(&r.new_flows, &key)),
                    Cell::from(live(b.counters.live_flows)),
                ]));
            }
        }
    }
    let header = Row::new(vec![
        "VIP / backend",
        "pool",
        "deployment / state",
        "health",
        "weight",
        "pkts/s",
        "new/s",
        "live",
    ])
    .style(bold.add_modifier(Modifier::UNDERLINED));
    let widths = [
        Constraint::Min(24),
        Constraint::Length(18),
        Constraint::Min(30),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    f.render_widget(Table::new(rows, widths).header(header).block(Block::bordered()), body);
}

/// Runs the view until q, Esc or Ctrl-C; an unreachable agent ends it with the error.
pub fn run(socket: &Path, every: Duration) -> Result<(), ClientError> {
    if !std::io::stdout().is_terminal() {
        return Err(ClientError::Rejected(
            "veer top needs a terminal: use `veer status --watch` in scripts and logs".into(),
        ));
    }
    let read = || client::call::<Status>(socket, "GET", "/v1/status", None::<&()>);
    let mut before = (read()?, Instant::now());
    let mut terminal = ratatui::init();
    let result = (|| -> Result<(), ClientError> {
        let mut r = Rates::default();
        loop {
            terminal
                .draw(|f| draw(f, socket, &before.0, &r, every))
                .map_err(|e| ClientError::Failed(format!("draw: {e}")))?;
            let deadline = Instant::now() + every;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if event::poll(left).unwrap_or(false)
                    && let Ok(Event::Key(k)) = event::read()
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
            }
            let now = (read()?, Instant::now());
            r = rates(&before.0, &now.0, now.1 - before.1);
            before = now;
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(packets: u64, new_flows: u64) -> Status {
        let text = format!(
            r#"{{"vips":[{{"name":"web","address":"10.0.0.100:80","protocol":"tcp","mode":"nat",
            "scheduler":"maglev","active":"blue","split":null,"ab":null,"previous_active":null,
            "canary":null,"pools":[{{"name":"blue","active":true,"role":"active",
            "all_down_fail_open":false,"counters":{{"live_flows":1}},"backends":[{{"id":1,
            "address":"10.0.1.1:80","weight":100,"admin":"ready","health":"up","check":null,
            "state":"ready","counters":{c}}}]}}],"counters":{c}}}],"counters":{{"reasons":{{}}}}}}"#,
            c = format!(
                r#"{{"packets":{packets},"bytes":0,"new_flows":{new_flows},"live_flows":1,"closed_flows":0,
                "answered_flows":0,"backend_resets":0,"reply_packets":0,"reply_bytes":0}}"#
            )
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn rates_are_counter_deltas_per_second_and_a_reset_counts_as_zero() {
        let r = rates(&status(100, 10), &status(300, 30), Duration::from_secs(2));
        assert_eq!(r.packets["web"], 100.0);
        assert_eq!(r.new_flows["web|10.0.1.1:80"], 10.0);
        let reset = rates(&status(300, 30), &status(5, 1), Duration::from_secs(1));
        assert_eq!(reset.packets["web"], 0.0);
    }
}
