//! Health checking with HAProxy semantics: active probes (tcp, http, udp) on `interval`,
//! `fastinter` while a backend is changing state, `downinter` while it is down, jittered;
//! `rise`/`fall` count *consecutive* results; optional slow start and passive observation
//! (backend resets and unanswered connection attempts from the data path's counters).
//!
//! The state machine here is pure (tested with a fake clock); `task` runs the probes.

pub mod probe;
pub mod task;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Http,
    Udp,
}

/// A VIP's (or pool's) health settings, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthConfig {
    pub kind: CheckKind,
    /// HTTP path (default `/`).
    pub path: String,
    /// HTTP Host header (default: the backend address).
    pub host: Option<String>,
    /// Accepted HTTP status range (default 200..=399).
    pub expect: (u16, u16),
    /// UDP payload sent; any reply counts as success.
    pub payload: String,
    /// Probe port (default: the backend's port).
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub fastinter: Duration,
    pub downinter: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Each delay is scaled by a random factor in [1 - jitter, 1 + jitter].
    pub jitter_pct: u32,
    /// Ramp from 10% to full weight over this long after coming up (zero: off).
    pub slowstart: Duration,
    /// Mark down on passive errors (HAProxy `observe layer4`).
    pub observe: bool,
    /// Passive errors per second that mark a backend down.
    pub error_limit: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: CheckKind::Tcp,
            path: "/".into(),
            host: None,
            expect: (200, 399),
            payload: "ping".into(),
            port: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fastinter: Duration::from_secs(2),
            downinter: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            jitter_pct: 10,
            slowstart: Duration::ZERO,
            observe: false,
            error_limit: 10,
        }
    }
}

/// One probe's result, with an HAProxy-style reason (`L4OK`, `L4TOUT`, `L4CON`, `L7OK`,
/// `L7STS 503`, `L7TOUT`, `L7RSP`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub ok: bool,
    pub reason: String,
}

/// A backend's health: up/down with consecutive-result counters.
#[derive(Debug, Clone)]
pub struct HealthState {
    pub up: bool,
    /// Consecutive successes while down / failures while up.
    pub streak: u32,
    pub since: Instant,
    /// When it last came up (slow start measures from here).
    pub up_since: Option<Instant>,
    pub last: Option<CheckResult>,
    /// Probe results recorded, and how many of them failed (for status and metrics).
    pub checks: u64,
    pub failures: u64,
}

impl HealthState {
    pub fn new(now: Instant) -> HealthState {
        HealthState {
            up: true,
            streak: 0,
            since: now,
            up_since: None,
            last: None,
            checks: 0,
            failures: 0,
        }
    }

    /// Records a result; returns the new state when it changed. Only *consecutive*
    /// results count: one success resets the failure streak and vice versa.
    pub fn observe(&mut self, result: CheckResult, now: Instant, rise: u32, fall: u32) -> Option<bool> {
        let agrees = result.ok == self.up;
        self.checks += 1;
        self.failures += u64::from(!result.ok);
        self.last = Some(result);
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = !self.up;
        self.streak = 0;
        self.since = now;
        self.up_since = self.up.then_some(now);
        Some(self.up)
    }

    /// Forces the state down (passive observation), as HAProxy's `on-error mark-down`.
    pub fn mark_down(&mut self, reason: String, now: Instant) -> bool {
        self.last = Some(CheckResult { ok: false, reason });
        if !self.up {
            return false;
        }
        self.up = false;
        self.streak = 0;
        self.since = now;
        self.up_since = None;
        true
    }

    /// Delay before the next probe, before jitter.
    pub fn next_delay(&self, cfg: &HealthConfig) -> Duration {
        match (self.up, self.streak > 0) {
            (true, false) => cfg.interval,
            (_, true) => cfg.fastinter,
            (false, false) => cfg.downinter,
        }
    }

    /// Slow-start weight percentage at `now` (None: full weight), in steps of 10%.
    pub fn slowstart_pct(&self, cfg: &HealthConfig, now: Instant) -> Option<u32> {
        let since = self.up_since?;
        if cfg.slowstart.is_zero() || !self.up {
            return None;
        }
        let f = now.saturating_duration_since(since).as_secs_f64() / cfg.slowstart.as_secs_f64();
        if f >= 1.0 {
            return None;
        }
        Some((10 + (f * 90.0) as u32 / 10 * 10).min(100))
    }
}

/// Applies `jitter_pct` to `d` with a small xorshift generator.
pub fn jittered(d: Duration, jitter_pct: u32, rng: &mut u64) -> Duration {
    if jitter_pct == 0 {
        return d;
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let unit = (*rng % 2001) as f64 / 1000.0 - 1.0; // [-1, 1]
    d.mul_f64((1.0 + unit * jitter_pct.min(90) as f64 / 100.0).max(0.05))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> CheckResult {
        CheckResult {
            ok: true,
            reason: "L7OK".into(),
        }
    }
    fn fail() -> CheckResult {
        CheckResult {
            ok: false,
            reason: "L7STS 503".into(),
        }
    }

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        assert_eq!(s.observe(fail(), t0, 2, 3), None);
        assert_eq!(s.observe(fail(), t0, 2, 3), None);
        assert_eq!(
            s.observe(fail(), t0 + Duration::from_secs(3), 2, 3),
            Some(false),
            "3 consecutive failures"
        );
        assert_eq!(s.observe(ok(), t0, 2, 3), None);
        assert_eq!(
            s.observe(ok(), t0 + Duration::from_secs(5), 2, 3),
            Some(true),
            "2 consecutive successes"
        );
        assert_eq!(s.up_since, Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn alternating_results_never_change_the_state() {
        let t0 = Instant::now();
        for start_up in [true, false] {
            let mut s = HealthState::new(t0);
            if !start_up {
                s.mark_down("test".into(), t0);
            }
            for i in 0..100 {
                let r = if i % 2 == 0 { fail() } else { ok() };
                assert_eq!(s.observe(r, t0, 2, 2), None, "alternation changed state at {i}");
            }
            assert_eq!(s.up, start_up);
        }
    }

    #[test]
    fn intervals_follow_the_state() {
        let cfg = HealthConfig {
            interval: Duration::from_secs(2),
            fastinter: Duration::from_millis(500),
            downinter: Duration::from_secs(5),
            ..HealthConfig::default()
        };
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        assert_eq!(s.next_delay(&cfg), cfg.interval);
        s.observe(fail(), t0, 2, 3);
        assert_eq!(s.next_delay(&cfg), cfg.fastinter, "changing state");
        s.observe(fail(), t0, 2, 3);
        s.observe(fail(), t0, 2, 3);
        assert_eq!(s.next_delay(&cfg), cfg.downinter, "down");
        s.observe(ok(), t0, 2, 3);
        assert_eq!(s.next_delay(&cfg), cfg.fastinter, "coming back");
    }

    #[test]
    fn slow_start_ramps_in_steps_over_the_window() {
        let cfg = HealthConfig {
            slowstart: Duration::from_secs(10),
            ..HealthConfig::default()
        };
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        s.mark_down("x".into(), t0);
        s.observe(ok(), t0, 1, 1);
        assert_eq!(s.slowstart_pct(&cfg, t0), Some(10));
        assert_eq!(s.slowstart_pct(&cfg, t0 + Duration::from_secs(5)), Some(50));
        assert_eq!(s.slowstart_pct(&cfg, t0 + Duration::from_secs(9)), Some(90));
        assert_eq!(s.slowstart_pct(&cfg, t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut rng = 0x1234_5678u64;
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(1), 10, &mut rng);
            assert!(
                d >= Duration::from_millis(899) && d <= Duration::from_millis(1101),
                "{d:?}"
            );
        }
    }
}
