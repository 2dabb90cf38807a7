//! Progress of the long verbs (`--wait`, rollout): a bar on a terminal; off a terminal (a
//! CI log) one plain line per change of state, and a "still ..." line every
//! [`HEARTBEAT`] while nothing changes, so the log never goes quiet; with `--json` one JSON
//! object per line (NDJSON), then the verb's result with `"event": "result"` (and on a
//! failure the error object after it).

use std::{
    io::{IsTerminal as _, Write},
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
    out: Box<dyn Write>,
    heartbeat: Duration,
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
        Progress::with(mode, Box::new(std::io::stdout()), HEARTBEAT)
    }

    fn with(mode: Mode, out: Box<dyn Write>, heartbeat: Duration) -> Progress {
        Progress {
            mode,
            out,
            heartbeat,
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
            if self.last_printed.elapsed() >= self.heartbeat
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
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
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
            let _ = write!(self.out, "{t}");
            let _ = self.out.flush();
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
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a [`Progress`] wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn drain(n: u64) -> Event {
        Event::Drain {
            vip: "web".into(),
            pool: "blue".into(),
            live_flows: Some(n),
        }
    }

    #[test]
    fn events_are_one_json_object_with_their_kind() {
        let e = drain(3);
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(v["event"], "drain");
        assert_eq!(v["live_flows"], 3);
        assert_eq!(line(&e), "web: draining blue: 3 live flows");
    }

    #[test]
    fn lines_come_once_per_change_and_a_heartbeat_repeats_an_unchanged_state() {
        let out = Captured::default();
        let mut p = Progress::with(Mode::Lines, Box::new(out.clone()), Duration::from_millis(50));
        for n in [3, 3, 3, 2, 2] {
            p.state(drain(n));
        }
        assert_eq!(
            out.lines(),
            ["web: draining blue: 3 live flows", "web: draining blue: 2 live flows"]
        );
        std::thread::sleep(Duration::from_millis(60));
        p.state(drain(2));
        p.state(drain(2));
        let lines = out.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[2].starts_with("still web: draining blue: 2 live flows [") && lines[2].ends_with("s elapsed]"),
            "{lines:?}"
        );
        p.finish(&serde_json::json!({ "ignored": true }), Some("done\n"));
        assert_eq!(out.lines().last().map(String::as_str), Some("done"));
    }

    #[test]
    fn json_mode_prints_changes_as_objects_without_heartbeats_and_the_result_last() {
        let out = Captured::default();
        let mut p = Progress::with(Mode::Json, Box::new(out.clone()), Duration::ZERO);
        for n in [2, 2, 1, 0] {
            p.state(drain(n));
        }
        p.finish(&serde_json::json!({ "pool": "blue" }), Some("not in JSON"));
        let lines: Vec<serde_json::Value> = out.lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4, "three changes and the result: {lines:?}");
        let live: Vec<Option<u64>> = lines[..3].iter().map(|l| l["live_flows"].as_u64()).collect();
        assert_eq!(live, [Some(2), Some(1), Some(0)]);
        assert_eq!(
            (lines[3]["event"].as_str(), lines[3]["pool"].as_str()),
            (Some("result"), Some("blue"))
        );
    }
}
