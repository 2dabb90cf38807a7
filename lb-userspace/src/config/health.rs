//! A VIP's or pool's `health = { ... }` table: HAProxy-style check settings, validated.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator, line_of};
use crate::{
    health::{CheckKind, HealthConfig},
    state::validate,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    kind: String,
    path: Option<String>,
    host: Option<String>,
    expect: Option<toml::Value>,
    payload: Option<String>,
    port: Option<i64>,
    interval: Option<String>,
    timeout: Option<String>,
    fastinter: Option<String>,
    downinter: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    jitter: Option<String>,
    slowstart: Option<String>,
    observe: Option<bool>,
    error_limit: Option<i64>,
}

impl Validator<'_> {
    pub(super) fn health(&self, raw: &Spanned<RawHealth>, field: &str) -> Result<HealthConfig, ConfigError> {
        let span = raw.span();
        let h = raw.get_ref();
        let bad = |what: &str, msg: String| -> Result<HealthConfig, ConfigError> {
            self.err(span.clone(), &format!("{field}.{what}"), msg)
        };
        let kind = match h.kind.as_str() {
            "tcp" => CheckKind::Tcp,
            "http" => CheckKind::Http,
            "udp" => CheckKind::Udp,
            other => return bad("kind", format!("{other:?}: expected \"tcp\", \"http\" or \"udp\"")),
        };
        let mut c = HealthConfig {
            kind,
            ..HealthConfig::default()
        };
        let dur = |v: &Option<String>,
                   what: &str,
                   default: std::time::Duration|
         -> Result<std::time::Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => validate::duration(s).map_err(|e| ConfigError {
                    file: self.file.into(),
                    line: line_of(self.text, span.start),
                    field: format!("{field}.{what}"),
                    message: e.0,
                }),
            }
        };
        c.interval = dur(&h.interval, "interval", c.interval)?;
        if c.interval < std::time::Duration::from_millis(10) {
            return bad("interval", "must be at least 10ms".into());
        }
        c.timeout = dur(&h.timeout, "timeout", c.interval.min(std::time::Duration::from_secs(1)))?;
        c.fastinter = dur(&h.fastinter, "fastinter", c.interval)?;
        c.downinter = dur(&h.downinter, "downinter", c.interval)?;
        c.slowstart = dur(&h.slowstart, "slowstart", std::time::Duration::ZERO)?;
        let small = |v: Option<i64>, what: &str, default: u32, max: i64| -> Result<u32, ConfigError> {
            match v {
                None => Ok(default),
                Some(n) if (1..=max).contains(&n) => Ok(n as u32),
                Some(n) => Err(ConfigError {
                    file: self.file.into(),
                    line: line_of(self.text, span.start),
                    field: format!("{field}.{what}"),
                    message: format!("{n} is out of range (1..={max})"),
                }),
            }
        };
        c.rise = small(h.rise, "rise", c.rise, 100)?;
        c.fall = small(h.fall, "fall", c.fall, 100)?;
        c.error_limit = small(h.error_limit, "error_limit", c.error_limit, 1_000_000)?;
        if let Some(p) = h.port {
            c.port = Some(small(Some(p), "port", 0, 65535)? as u16);
        }
        if let Some(j) = &h.jitter {
            match j.trim_end_matches('%').parse::<u32>() {
                Ok(v) if v <= 90 => c.jitter_pct = v,
                _ => return bad("jitter", format!("{j:?}: expected a percentage up to 90%")),
            }
        }
        if let Some(p) = &h.path {
            if !p.starts_with('/') {
                return bad("path", format!("{p:?} must start with '/'"));
            }
            c.path = p.clone();
        }
        c.host = h.host.clone();
        if let Some(p) = &h.payload {
            c.payload = p.clone();
        }
        c.observe = h.observe.unwrap_or(false);
        c.expect = match &h.expect {
            None => c.expect,
            Some(toml::Value::Integer(n)) if (100..=599).contains(n) => (*n as u16, *n as u16),
            Some(toml::Value::String(r)) => match r
                .split_once('-')
                .map(|(a, b)| (a.trim().parse::<u16>(), b.trim().parse::<u16>()))
            {
                Some((Ok(a), Ok(b))) if (100..=599).contains(&a) && a <= b && b <= 599 => (a, b),
                _ => {
                    return bad(
                        "expect",
                        format!("{r:?}: expected a status (200) or a range (\"200-399\")"),
                    );
                }
            },
            Some(v) => {
                return bad(
                    "expect",
                    format!("{v}: expected a status (200) or a range (\"200-399\")"),
                );
            }
        };
        if c.kind != CheckKind::Http && (h.path.is_some() || h.expect.is_some() || h.host.is_some()) {
            return bad("kind", "path, host and expect need kind = \"http\"".into());
        }
        Ok(c)
    }
}
