//! `veer top`: a live terminal view (ratatui) of VIPs, pools and backends, redrawn every
//! interval from the rows of [`super::live`]. `q`, Esc or Ctrl-C quits.

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style, Stylize as _},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row as TableRow, Table},
};

use super::{
    client::{ClientError, Endpoint},
    live::{self, Row, Sample},
};

fn dash(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn health_style(health: &str) -> Style {
    if health.starts_with("up") {
        Style::new().fg(Color::Green)
    } else if health.starts_with("down") {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    }
}

fn table_rows(rows: &[Row]) -> Vec<TableRow<'static>> {
    rows.iter()
        .map(|r| match r {
            Row::Vip {
                name,
                address,
                active,
                deployment,
                live_flows,
                rate,
            } => TableRow::new(vec![
                Cell::from(format!("{name} {address}")),
                Cell::from(format!("active={active}")),
                Cell::from(""),
                Cell::from(""),
                Cell::from(format!("{:.0}", rate.packets_per_s)),
                Cell::from(format!("{:.0}", rate.new_flows_per_s)),
                Cell::from(dash(*live_flows)),
                Cell::from(deployment.clone()),
            ])
            .style(Style::new().add_modifier(Modifier::BOLD)),
            Row::Pool {
                name, role, live_flows, ..
            } => TableRow::new(vec![
                Cell::from(format!("  pool {name}")),
                Cell::from(role.clone()),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(dash(*live_flows)),
                Cell::from(""),
            ])
            .style(Style::new().fg(Color::Cyan)),
            Row::Backend {
                address,
                weight,
                admin,
                health,
                state,
                live_flows,
                rate,
                ..
            } => TableRow::new(vec![
                Cell::from(format!("    {address}")),
                Cell::from(format!("{admin}/{state}")),
                Cell::from(health.clone()).style(health_style(health)),
                Cell::from(weight.to_string()),
                Cell::from(format!("{:.0}", rate.packets_per_s)),
                Cell::from(format!("{:.0}", rate.new_flows_per_s)),
                Cell::from(dash(*live_flows)),
                Cell::from(""),
            ]),
        })
        .collect()
}

fn draw(frame: &mut Frame, socket: &Endpoint, interval: Duration, rows: &[Row], drops: f64, error: Option<&str>) {
    let [title, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(frame.area());
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "veer top — {} — every {} — q quits",
            socket,
            humantime::format_duration(interval)
        )))
        .reversed(),
        title,
    );
    let header = TableRow::new([
        "VIP / pool / backend",
        "state",
        "health",
        "weight",
        "pkt/s",
        "new/s",
        "live",
        "deployment",
    ])
    .style(Style::new().add_modifier(Modifier::UNDERLINED));
    let widths = [
        Constraint::Min(28),
        Constraint::Length(14),
        Constraint::Length(14),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Min(20),
    ];
    frame.render_widget(
        Table::new(table_rows(rows), widths)
            .header(header)
            .block(Block::bordered()),
        body,
    );
    let status = match error {
        Some(e) => Line::from(format!("agent: {e}")).red(),
        None => Line::from(format!("data-path drops/s: {drops:.0}")),
    };
    frame.render_widget(Paragraph::new(status), footer);
}

/// Runs the view until the user quits. Needs a terminal: elsewhere use `status --watch`.
pub fn run(socket: &Endpoint, interval: Duration) -> Result<(), ClientError> {
    if !std::io::stdout().is_terminal() {
        return Err(ClientError::Rejected(
            "veer top needs a terminal; use `veer status --watch` (plain lines, --json for NDJSON)".into(),
        ));
    }
    // The first poll fails before the screen is taken: an unreachable agent reads as usual.
    let mut now = live::poll(socket)?;
    let mut before: Option<Sample> = None;
    let mut terminal = ratatui::init();
    let mut error: Option<String> = None;
    let result = loop {
        let rows = live::rows(before.as_ref(), &now);
        let drops = live::drops_per_second(before.as_ref(), &now);
        if let Err(e) = terminal.draw(|f| draw(f, socket, interval, &rows, drops, error.as_deref())) {
            break Err(ClientError::Rejected(format!("draw: {e}")));
        }
        let next = Instant::now() + interval;
        let mut quit: Option<Result<(), ClientError>> = None;
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            match event::poll(left) {
                Ok(true) => {
                    if let Ok(Event::Key(k)) = event::read()
                        && k.kind == KeyEventKind::Press
                        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                            || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
                    {
                        quit = Some(Ok(()));
                        break;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    quit = Some(Err(ClientError::Rejected(format!("terminal: {e}"))));
                    break;
                }
            }
        }
        if let Some(r) = quit {
            break r;
        }
        // An agent that goes away mid-view is shown, and the view keeps trying.
        match live::poll(socket) {
            Ok(s) => {
                before = Some(std::mem::replace(&mut now, s));
                error = None;
            }
            Err(e) => error = Some(e.to_string()),
        }
    };
    ratatui::restore();
    result
}
