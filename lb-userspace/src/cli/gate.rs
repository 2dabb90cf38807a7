//! Canary gates (`veer canary --gate CMD`, `--gate-prometheus URL QUERY`): judged at the
//! end of every step, on the host the CLI runs on. A gate passes, or says why not.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::api::types::CanaryStatus;

/// An `http://HOST[:PORT][/PATH]` address (a Prometheus server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// As written (an IPv6 address keeps its brackets): the Host header.
    pub host: String,
    pub port: u16,
    /// Without a trailing slash ("" for the root).
    pub path: String,
}

/// Parses `http://HOST[:PORT][/PATH]`.
pub fn http_url(s: &str) -> Result<HttpUrl, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or_else(|| format!("{s:?}: an http:// URL (for https, run the query through --gate with curl)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            let port = p.parse::<u16>().map_err(|_| format!("{s:?}: bad port {p:?}"))?;
            (h, port)
        }
        _ => (authority, 80),
    };
    if host.is_empty() || (host.contains(':') && !host.starts_with('[')) || port == 0 {
        return Err(format!("{s:?}: not http://HOST[:PORT][/PATH]"));
    }
    Ok(HttpUrl {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// `s` percent-encoded for a URL query value.
pub fn query_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone)]
pub enum Gate {
    /// A shell command: exit 0 passes.
    Command { cmd: String, timeout: Duration },
    /// A Prometheus instant query: a non-empty result passes.
    Prometheus {
        url: HttpUrl,
        query: String,
        timeout: Duration,
    },
}

impl Gate {
    /// Runs the gate for the canary's current step: Ok with what it saw, or Err why it
    /// failed.
    pub fn run(&self, vip: &str, c: &CanaryStatus) -> Result<String, String> {
        match self {
            Gate::Command { cmd, timeout } => command(cmd, *timeout, vip, c),
            Gate::Prometheus { url, query, timeout } => prometheus(url, query, *timeout),
        }
    }
}

fn command(cmd: &str, timeout: Duration, vip: &str, c: &CanaryStatus) -> Result<String, String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("VEER_VIP", vip)
        .env("VEER_POOL", &c.pool)
        .env("VEER_STEP", (c.step + 1).to_string())
        .env("VEER_PERCENT", c.percent.unwrap_or(0.0).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a gate that times out is ended with all it started.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("gate {cmd:?}: cannot run: {e}"))?;
    // Read stderr aside, so a chatty gate never blocks on a full pipe.
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() >= timeout => {
                // SAFETY: kill(2) on the process group of the child this function started.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "the gate command did not answer within {}",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("the gate command: {e}")),
        }
    };
    let err = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if status.success() {
        Ok("the gate command exited 0".to_string())
    } else if last.is_empty() {
        Err(format!("the gate command failed ({status})"))
    } else {
        Err(format!("the gate command failed ({status}): {last}"))
    }
}

fn prometheus(url: &HttpUrl, query: &str, timeout: Duration) -> Result<String, String> {
    let what = format!("prometheus query {query:?}");
    let target = format!(
        "{}:{}",
        url.host.trim_start_matches('[').trim_end_matches(']'),
        url.port
    );
    let addr = (url.host.trim_start_matches('[').trim_end_matches(']'), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("{what}: resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what}: {target} has no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{what}: connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!(
        "GET {}/api/v1/query?query={} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        url.path,
        query_encode(query),
        url.host,
        url.port
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("{what}: send: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("{what}: read: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{what}: malformed answer"))?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        super::client::dechunk(body)
    } else {
        body.to_string()
    };
    verdict(&what, &body)
}

/// A Prometheus query answer: passes when it succeeded with a non-empty result.
pub fn verdict(what: &str, body: &str) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{what}: not a Prometheus answer ({e})"))?;
    if v["status"] != "success" {
        return Err(format!("{what}: {}", v["error"].as_str().unwrap_or("the query failed")));
    }
    match v["data"]["result"].as_array() {
        Some(r) if r.is_empty() => Err(format!("{what}: empty result")),
        Some(r) => Ok(format!("{what}: {} result(s)", r.len())),
        None => Err(format!("{what}: no result")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_and_path() {
        let u = http_url("http://127.0.0.1:9090").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 9090, ""));
        let u = http_url("http://prom.example/prometheus/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("prom.example", 80, "/prometheus")
        );
        let u = http_url("http://[fd00::1]:9090/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[fd00::1]", 9090));
        for bad in [
            "https://x:9090",
            "127.0.0.1:9090",
            "http://",
            "http://x:0",
            "http://x:port",
            "http://fd00::1",
        ] {
            assert!(http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            query_encode("sum(rate(x{a=\"b\"}[1m])) > 0"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29%20%3E%200"
        );
    }

    #[test]
    fn a_non_empty_result_passes_and_anything_else_fails() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#;
        assert!(verdict("q", ok).is_ok());
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(verdict("q", empty).unwrap_err().contains("empty"));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(verdict("q", bad).unwrap_err().contains("parse error"));
        assert!(verdict("q", "<html>").is_err());
    }

    #[test]
    fn a_command_gate_passes_on_exit_0_and_names_its_failure_and_its_timeout() {
        let c = CanaryStatus {
            pool: "green".into(),
            steps: vec![10.0, 100.0],
            step: 0,
            percent: Some(10.0),
            interval_ms: 1000,
            max_failing: 0,
            outcome: crate::api::types::CanaryOutcome::Running,
            gated: true,
            awaiting_gate: true,
            paused: false,
        };
        let gate = |cmd: &str, ms: u64| Gate::Command {
            cmd: cmd.into(),
            timeout: Duration::from_millis(ms),
        };
        assert!(
            gate(
                "test \"$VEER_VIP $VEER_POOL $VEER_STEP $VEER_PERCENT\" = 'web green 1 10'",
                5000
            )
            .run("web", &c)
            .is_ok()
        );
        let e = gate("echo 'error rate 5%' >&2; exit 3", 5000)
            .run("web", &c)
            .unwrap_err();
        assert!(e.contains("error rate 5%") && e.contains('3'), "{e}");
        let e = gate("sleep 5", 100).run("web", &c).unwrap_err();
        assert!(e.contains("did not answer within"), "{e}");
    }
}
