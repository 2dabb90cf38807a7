//! Progress of the long verbs (`--wait`, rollout): a bar on a terminal; off a terminal (a
//! CI log) one plain line per change of state, and a "still ..." line every
//! [`HEARTBEAT`] while nothing changes, so the log never goes quiet; with `--json` one JSON
//! object per line (NDJSON), then the verb's result with `"event": "result"` (and on a
//! failure the error object after it).

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use serde::Serialize;

/// How often an unchanged state is repeated off a terminal (as Terraform's "Still
/// creating... [10s elapsed]").
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// One change of state, as a JSON line (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A change was applied (the verb's first answer).
    Applied { report: crate::api::types::ChangeReport },
    /// The old pool of a switch drains.
    Drain {
        vip: String,
        pool: String,
        /// Null: the agent could not count.
        live_flows: Option<u64>,
    },
    /// A canary's state as the agent drives it.
    Canary {
        vip: String,
        pool: String,
        /// 1-based.
        step: usize,
        steps: usize,
        percent: Option<f64>,
        /// running, paused, awaiting_gate, done, rolled_back.
        state: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A canary gate ran before the next step.
    Gate {
        vip: String,
        step: usize,
        passed: bool,
        detail: String,
    },
    /// A rollout batch's phase: drain, hook, ready, healthy.
    Rollout {
        vip: String,
        pool: String,
        /// 1-based.
        batch: usize,
        batches: usize,
        backends: Vec<String>,
        phase: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        live_flows: Option<u64>,
    },
}

enum Mode {
    Bar(indicatif::ProgressBar),
    Lines,
    Json,
}

/// Prints an operation's progress in the mode stdout calls for.
pub struct Progress {
    mode: Mode,
    started: Instant,
    last: Option<Event>,
    last_printed: Instant,
}

impl Progress {
    /// `--json`: NDJSON events; a terminal: a bar with the latest line as its message;
    /// anything else (a pipe, a file, a CI log): plain lines.
    pub fn new(json: bool) -> Progress {
        let mode = if json {
            Mode::Json
        } else if std::io::stdout().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            started: Instant::now(),
            last: None,
            last_printed: Instant::now(),
        }
    }

    pub fn json(&self) -> bool {
        matches!(self.mode, Mode::Json)
    }

    /// Reports the current state: printed when it differs from the last one, repeated as
    /// "still ..." every [`HEARTBEAT`] otherwise (not in JSON: events are changes).
    pub fn state(&mut self, event: Event) {
        if self.last.as_ref() == Some(&event) {
            if self.last_printed.elapsed() >= HEARTBEAT
                && let Mode::Lines = self.mode
            {
                self.line(&format!(
                    "still {} [{}s elapsed]",
                    line(&event),
                    self.started.elapsed().as_secs()
                ));
            }
            return;
        }
        self.emit(&event);
        self.last = Some(event);
    }

    /// Reports a one-off event (always printed).
    pub fn event(&mut self, event: Event) {
        self.emit(&event);
    }

    /// A remark outside the state sequence (plain text only; not an event in JSON mode),
    /// on stderr so stdout keeps its format.
    pub fn note(&mut self, text: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.println(text),
            Mode::Lines | Mode::Json => eprintln!("{text}"),
        }
    }

    fn emit(&mut self, event: &Event) {
        match &self.mode {
            Mode::Json => self.json_line(event),
            Mode::Bar(bar) => bar.set_message(line(event)),
            Mode::Lines => self.line(&line(event)),
        }
    }

    fn line(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
        self.last_printed = Instant::now();
    }

    fn json_line(&mut self, v: &impl Serialize) {
        let text = serde_json::to_string(v).unwrap_or_default();
        self.line(&text);
    }

    /// Ends the progress: the bar is cleared; in JSON mode `result` is the next line, with
    /// `"event": "result"`; otherwise `text` (if any) is printed.
    pub fn finish(mut self, result: &impl Serialize, text: Option<&str>) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
        if self.json() {
            #[derive(Serialize)]
            struct Result<'a, T> {
                event: &'static str,
                #[serde(flatten)]
                result: &'a T,
            }
            self.json_line(&Result {
                event: "result",
                result,
            });
        } else if let Some(t) = text {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{t}");
            let _ = out.flush();
        }
    }
}

fn flows(n: Option<u64>) -> String {
    match n {
        Some(1) => "1 live flow".into(),
        Some(n) => format!("{n} live flows"),
        None => "live flows unknown".into(),
    }
}

/// The plain line of an event.
pub fn line(e: &Event) -> String {
    match e {
        Event::Applied { report } => report.changes.join("; "),
        Event::Drain { vip, pool, live_flows } => {
            if *live_flows == Some(0) {
                format!("{vip}: {pool} drained (0 live flows)")
            } else {
                format!("{vip}: draining {pool}: {}", flows(*live_flows))
            }
        }
        Event::Canary {
            vip,
            pool,
            step,
            steps,
            percent,
            state,
            reason,
        } => {
            let pct = percent.map_or_else(|| "?".to_string(), |p| format!("{p}%"));
            let what = match state.as_str() {
                "running" => "running".to_string(),
                "paused" => "paused (veer canary resume)".to_string(),
                "awaiting_gate" => "step held for its gate".to_string(),
                "done" => format!("done: {pool} takes all new flows"),
                "rolled_back" => format!("rolled back: {}", reason.as_deref().unwrap_or("")),
                other => other.to_string(),
            };
            format!("{vip}: canary to {pool}: step {step}/{steps} ({pct}): {what}")
        }
        Event::Gate {
            vip,
            step,
            passed,
            detail,
        } => format!(
            "{vip}: gate after step {step} {}: {detail}",
            if *passed { "passed" } else { "FAILED" }
        ),
        Event::Rollout {
            vip,
            pool,
            batch,
            batches,
            backends,
            phase,
            live_flows,
        } => {
            let what = match phase.as_str() {
                "drain" => format!("draining, {}", flows(*live_flows)),
                "hook" => "running the hook".to_string(),
                "ready" => "ready again, waiting until healthy".to_string(),
                "healthy" => "healthy".to_string(),
                other => other.to_string(),
            };
            format!(
                "{vip}: rollout of {pool}: batch {batch}/{batches} ({}): {what}",
                backends.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_with_their_kind() {
        let e = Event::Drain {
            vip: "web".into(),
            pool: "blue".into(),
            live_flows: Some(3),
        };
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(v["event"], "drain");
        assert_eq!(v["live_flows"], 3);
        assert_eq!(line(&e), "web: draining blue: 3 live flows");
    }
}
