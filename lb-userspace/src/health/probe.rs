//! The probes: TCP connect, HTTP GET with an expected status range, UDP request/reply.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::{CheckKind, CheckResult, HealthConfig};

fn result(ok: bool, reason: impl Into<String>) -> CheckResult {
    CheckResult {
        ok,
        reason: reason.into(),
    }
}

pub async fn probe(cfg: &HealthConfig, backend: SocketAddr) -> CheckResult {
    let target = SocketAddr::new(backend.ip(), cfg.port.unwrap_or(backend.port()));
    match cfg.kind {
        CheckKind::Tcp => tcp(target, cfg.timeout).await,
        CheckKind::Http => http(cfg, target).await,
        CheckKind::Udp => udp(cfg, target).await,
    }
}

async fn connect(target: SocketAddr, t: Duration) -> Result<TcpStream, CheckResult> {
    match timeout(t, TcpStream::connect(target)).await {
        Err(_) => Err(result(false, "L4TOUT")),
        Ok(Err(_)) => Err(result(false, "L4CON")),
        Ok(Ok(s)) => Ok(s),
    }
}

async fn tcp(target: SocketAddr, t: Duration) -> CheckResult {
    match connect(target, t).await {
        Ok(_) => result(true, "L4OK"),
        Err(r) => r,
    }
}

async fn http(cfg: &HealthConfig, target: SocketAddr) -> CheckResult {
    let started = tokio::time::Instant::now();
    let mut s = match connect(target, cfg.timeout).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let host = cfg.host.clone().unwrap_or_else(|| target.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: veer-check\r\nConnection: close\r\n\r\n",
        cfg.path
    );
    let left = cfg.timeout.saturating_sub(started.elapsed());
    let exchange = async {
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    match timeout(left, exchange).await {
        Err(_) => result(false, "L7TOUT"),
        Ok(Err(_)) => result(false, "L7RSP"),
        Ok(Ok(buf)) => {
            let line = String::from_utf8_lossy(&buf);
            match line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
                Some(code) if (cfg.expect.0..=cfg.expect.1).contains(&code) => result(true, "L7OK"),
                Some(code) => result(false, format!("L7STS {code}")),
                None => result(false, "L7RSP"),
            }
        }
    }
}

async fn udp(cfg: &HealthConfig, target: SocketAddr) -> CheckResult {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    // Connected: the kernel reports the backend's port-unreachable (refused, L4CON), and the
    // data path sees a socket that owns this 5-tuple (it never mistakes the answer for a
    // NAT reply).
    let Ok(sock) = UdpSocket::bind(bind).await else {
        return result(false, "L4CON");
    };
    if sock.connect(target).await.is_err() || sock.send(cfg.payload.as_bytes()).await.is_err() {
        return result(false, "L4CON");
    }
    let mut buf = [0u8; 1500];
    match timeout(cfg.timeout, sock.recv(&mut buf)).await {
        Ok(Ok(_)) => result(true, "L7OK"),
        Ok(Err(_)) => result(false, "L4CON"),
        Err(_) => result(false, "L7TOUT"),
    }
}
