//! Real clients: new-connection HTTP GETs and UDP request/reply, bounded in count and time.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Successful new-connection GETs of every load in this process so far: a test watches
/// it grow to know that requests are being served right now (e.g. while no agent runs).
pub static HTTP_OK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Waits (bounded) until `n` more new-connection GETs have succeeded; false on timeout.
pub fn wait_for_requests(n: u64, limit: Duration) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let start = HTTP_OK.load(Relaxed);
    let deadline = Instant::now() + limit;
    while HTTP_OK.load(Relaxed) < start + n {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub ok: usize,
    pub failed: usize,
    /// Answers per backend name.
    pub by_backend: BTreeMap<String, usize>,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

/// One GET on a new connection with `Connection: close`; returns the backend's name.
pub fn http_get(vip: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let s = TcpStream::connect_timeout(&vip, timeout).with_context(|| format!("connect {vip}"))?;
    get_on(s, vip, timeout)
}

/// Like [`http_get`], from a chosen source address (a client alias).
pub fn http_get_from(src: std::net::IpAddr, vip: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    http_get_bound(SocketAddr::new(src, 0), vip, timeout)
}

/// Like [`http_get`], from a chosen source address and port (port 0: any): the same
/// source port gives the same 5-tuple, so a test can ask where that flow goes now.
pub fn http_get_bound(src: SocketAddr, vip: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let domain = if vip.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&src.into()).with_context(|| format!("bind {src}"))?;
    sock.connect_timeout(&vip.into(), timeout)
        .with_context(|| format!("connect {vip} from {src}"))?;
    get_on(sock.into(), vip, timeout)
}

fn get_on(mut s: TcpStream, vip: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).context("read response")?;
    let text = String::from_utf8_lossy(&resp);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("unexpected response: {:?}", text.lines().next().unwrap_or(""));
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
    if body.is_empty() {
        bail!("empty body");
    }
    Ok(body)
}

/// `n` sequential new-connection GETs.
pub fn run_http_load(vip: SocketAddr, n: usize, timeout: Duration) -> Outcome {
    run_http_load_until(vip, n, timeout, &std::sync::atomic::AtomicBool::new(false))
}

/// Sequential new-connection GETs until `stop` is set or `max` were sent.
pub fn run_http_load_until(
    vip: SocketAddr,
    max: usize,
    timeout: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome::default();
    for _ in 0..max {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        match http_get(vip, timeout) {
            Ok(name) => {
                HTTP_OK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                out.ok += 1;
                *out.by_backend.entry(name).or_default() += 1;
            }
            Err(e) => {
                out.failed += 1;
                if out.errors.len() < 5 {
                    out.errors.push(format!("{e:#}"));
                }
            }
        }
    }
    out.elapsed = start.elapsed();
    out
}

/// One UDP datagram to `vip`; returns the reply as text.
pub fn udp_request(vip: SocketAddr, payload: &[u8], timeout: Duration) -> anyhow::Result<String> {
    let bind: SocketAddr = if vip.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    // A few tries, each resend counted: a lost datagram must not pass unseen.
    for attempt in 0..5 {
        if attempt > 0 {
            super::watch::UDP_RESENDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        s.send_to(payload, vip)?;
        let mut buf = [0u8; 1500];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if from != vip {
                bail!("reply from {from}, expected the VIP {vip}");
            }
            return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    bail!("no UDP reply from {vip}")
}

/// One GET on an existing keep-alive connection; returns the backend's name.
pub fn keepalive_get(s: &mut TcpStream) -> anyhow::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: veer\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(body[..len].trim().to_string());
            }
        }
    }
}

/// A JSON document without its "counters" and "check" members (at any depth): what must
/// not change across an agent restart.
pub fn without_counters(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "counters" && *k != "check")
                .map(|(k, v)| (k.clone(), without_counters(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(without_counters).collect()),
        other => other.clone(),
    }
}

/// Keep-alive clients: `conns` persistent connections, each reopened after `per_conn`
/// requests, until `stop` is set or `max` requests were sent.
pub fn run_keepalive_load(
    vip: SocketAddr,
    per_conn: usize,
    max: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome::default();
    let mut conn: Option<(TcpStream, usize)> = None;
    for _ in 0..max {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let result = (|| -> anyhow::Result<String> {
            if conn.as_ref().is_none_or(|(_, n)| *n >= per_conn) {
                conn = Some((TcpStream::connect_timeout(&vip, Duration::from_secs(3))?, 0));
            }
            let (s, n) = conn.as_mut().expect("just set");
            *n += 1;
            keepalive_get(s)
        })();
        match result {
            Ok(name) => {
                out.ok += 1;
                *out.by_backend.entry(name).or_default() += 1;
            }
            Err(e) => {
                conn = None;
                out.failed += 1;
                if out.errors.len() < 5 {
                    out.errors.push(format!("keep-alive: {e:#}"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    out.elapsed = start.elapsed();
    out
}
