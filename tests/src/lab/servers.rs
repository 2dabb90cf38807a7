//! Real servers on a backend: HTTP/1.1 (Connection: close and keep-alive) answering with the
//! backend's name, and a UDP echo answering with the name. Both dual-stack.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::Netns;

pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// HTTP requests answered.
    pub requests: Arc<AtomicU64>,
    /// Status `/healthz` answers (200 by default).
    pub health_status: Arc<AtomicU16>,
    /// Delay before `/healthz` answers, in ms.
    pub health_delay_ms: Arc<AtomicU64>,
}

/// Per-server behaviour of the health endpoint.
#[derive(Clone)]
struct Health {
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

impl Servers {
    pub fn start(ns: &Netns, name: &str, http_port: u16, udp_port: u16) -> anyhow::Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let health = Health {
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let http = {
            let (stop, requests, name, health) = (stop.clone(), requests.clone(), name.to_string(), health.clone());
            let listener = ns.run(move || TcpListener::bind(SocketAddr::from(([0u16; 8], http_port))))??;
            listener.set_nonblocking(true)?;
            std::thread::spawn(move || accept_loop(listener, &name, &stop, &requests, &health))
        };
        let udp = {
            let (stop, name) = (stop.clone(), name.to_string());
            let socket = ns.run(move || UdpSocket::bind(SocketAddr::from(([0u16; 8], udp_port))))??;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(name.as_bytes(), peer);
                    }
                }
            })
        };
        Ok(Servers {
            stop,
            threads: vec![http, udp],
            requests,
            health_status: health.status,
            health_delay_ms: health.delay_ms,
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, name: &str, stop: &AtomicBool, requests: &Arc<AtomicU64>, health: &Health) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let (name, requests, health) = (name.to_string(), requests.clone(), health.clone());
                std::thread::spawn(move || serve(conn, &name, &requests, &health));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Serves requests on one connection until the client closes or asks to close.
fn serve(mut conn: TcpStream, name: &str, requests: &AtomicU64, health: &Health) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let close = head.contains("connection: close");
        let mut status = 200;
        if head.starts_with("get /healthz") {
            std::thread::sleep(Duration::from_millis(health.delay_ms.load(Ordering::Relaxed)));
            status = health.status.load(Ordering::Relaxed);
        }
        let body = format!("{name}\n");
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        buf.drain(..end + 4);
        if close {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
