//! End-to-end, the data path under traffic that breaks naive balancers: UDP answers larger
//! than the MTU (the backend's kernel fragments them), in both families.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use veer_tests::lab::*;

/// The port of the big-answer UDP servers on the backends.
const BIG_PORT: u16 = 5400;
const ANSWER: usize = 4000;

/// A UDP server in each backend's namespace that answers every datagram with ANSWER bytes
/// (its kernel sends three fragments at the lab's 1500-byte MTU). Stops with the guard.
struct BigAnswers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BigAnswers {
    fn start(lab: &Lab) -> BigAnswers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, ns) in lab.backends.iter().enumerate() {
            let socket = ns
                .run(|| UdpSocket::bind(SocketAddr::from(([0u16; 8], BIG_PORT))))
                .unwrap()
                .unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let answer: Vec<u8> = (0..ANSWER).map(|k| (k % 251) as u8 ^ i as u8).collect();
                        let _ = socket.send_to(&answer, peer);
                    }
                }
            }));
        }
        BigAnswers { stop, threads }
    }
}

impl Drop for BigAnswers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One request from the client namespace; the whole answer, or an error.
fn big_request(lab: &Lab, vip: SocketAddr) -> anyhow::Result<Vec<u8>> {
    lab.client.run(move || -> anyhow::Result<Vec<u8>> {
        let bind: SocketAddr = if vip.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"big?", vip)?;
        let mut buf = vec![0u8; 9000];
        let (n, from) = s.recv_from(&mut buf)?;
        anyhow::ensure!(from == vip, "answer from {from}, not the VIP {vip}");
        buf.truncate(n);
        Ok(buf)
    })?
}

/// A 4000-byte UDP answer (three fragments from the backend) reaches the client whole,
/// IPv4 and IPv6, every time, and no fragment is dropped on the way.
#[test]
fn a_4000_byte_udp_answer_reaches_the_client_whole() {
    let backends6 = (0..3)
        .map(|i| format!("{{ address = \"[{}]:{BIG_PORT}\" }}", backend6(i)))
        .collect::<Vec<_>>()
        .join(", ");
    let vips = format!(
        "[[vip]]\nname = \"big4\"\naddress = \"{VIP4}:54\"\nprotocol = \"udp\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n\n\
         [[vip]]\nname = \"big6\"\naddress = \"[{VIP6}]:54\"\nprotocol = \"udp\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {backends6} ]\n",
        backend_list(0..3, BIG_PORT)
    );
    let Some(lab) = Lab::with_config(3, "", &vips) else {
        return;
    };
    let _servers = BigAnswers::start(&lab);
    for vip in [
        SocketAddr::new(VIP4.into(), 54),
        SocketAddr::new(IpAddr::from(VIP6), 54),
    ] {
        // The first exchange may race the agent's first table write: wait until it answers.
        let mut ready = false;
        for _ in 0..50 {
            if big_request(&lab, vip).is_ok() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ready, "{vip} never answered; agent log:\n{}", lab.agent_log());
        let watch = lab.watch().unwrap();
        for n in 0..40 {
            let answer = big_request(&lab, vip).unwrap_or_else(|e| panic!("{vip} request {n}: {e:#}"));
            assert_eq!(answer.len(), ANSWER, "{vip} request {n}: reassembled length");
            let i = answer[0];
            assert!(
                answer.iter().enumerate().all(|(k, &b)| b == (k % 251) as u8 ^ i),
                "{vip} request {n}: bytes of one backend's answer, in order"
            );
        }
        lab.assert_no_drops(&watch, &[]);
        let status = lab.status().unwrap();
        let fragments = status["counters"]["reasons"]["fragment"].as_u64().unwrap_or(0);
        assert!(
            fragments >= 80,
            "{vip}: later fragments translated by the data path: {fragments}"
        );
    }
}

/// Echo servers with a think time on each backend: TCP (one line in, one line out, per
/// connection as long as it lasts) and UDP, each on a fast port and a slow one (answers
/// 0.5 s after the request).
struct ThinkServers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const TCP_FAST: u16 = 5500;
const TCP_SLOW: u16 = 5501;
const UDP_FAST: u16 = 5502;
const UDP_SLOW: u16 = 5503;
const THINK: Duration = Duration::from_millis(500);

impl ThinkServers {
    fn start(lab: &Lab) -> ThinkServers {
        use std::io::{BufRead, BufReader, Write};
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for ns in &lab.backends {
            for (port, think) in [(TCP_FAST, Duration::ZERO), (TCP_SLOW, THINK)] {
                let l = ns
                    .run(move || std::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port))))
                    .unwrap()
                    .unwrap();
                l.set_nonblocking(true).unwrap();
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((s, _)) => {
                                let stop = stop.clone();
                                std::thread::spawn(move || {
                                    let _ = s.set_nonblocking(false);
                                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                                    let mut w = s.try_clone().unwrap();
                                    let mut r = BufReader::new(s);
                                    let mut line = String::new();
                                    while !stop.load(Ordering::Relaxed) {
                                        line.clear();
                                        match r.read_line(&mut line) {
                                            Ok(0) => return,
                                            Ok(_) => {
                                                std::thread::sleep(think);
                                                if w.write_all(line.as_bytes()).is_err() {
                                                    return;
                                                }
                                            }
                                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                            Err(_) => return,
                                        }
                                    }
                                });
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                }));
            }
            for (port, think) in [(UDP_FAST, Duration::ZERO), (UDP_SLOW, THINK)] {
                let s = ns
                    .run(move || UdpSocket::bind(SocketAddr::from(([0u16; 8], port))))
                    .unwrap()
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let s = Arc::new(s);
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, peer)) = s.recv_from(&mut buf) {
                            let (s, data) = (s.clone(), buf[..n].to_vec());
                            std::thread::spawn(move || {
                                std::thread::sleep(think);
                                let _ = s.send_to(&data, peer);
                            });
                        }
                    }
                }));
            }
        }
        ThinkServers { stop, threads }
    }
}

impl Drop for ThinkServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Spoofed SYNs from 10.200.0.0/16 (blackholed in the balancer's namespace, so no answer
/// leaves it) to `vip`, `rate` per second until `stop` or `duration`; returns how many
/// were sent. Runs in the client's namespace through a raw socket.
fn flood(
    lab: &Lab,
    vip: SocketAddr,
    rate: u64,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    lab.client
        .spawn(move || {
            use socket2::{Domain, Protocol, SockAddr, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).expect("raw socket");
            let IpAddr::V4(dst) = vip.ip() else { unreachable!() };
            let to = SockAddr::from(vip);
            let start = std::time::Instant::now();
            let mut sent = 0u64;
            let mut n: u32 = 0x2545_f491;
            while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while sent < due {
                    n = n.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let src = [10, 200, (n >> 24) as u8, (n >> 16) as u8];
                    let mut pkt = Vec::with_capacity(40);
                    etherparse::PacketBuilder::ipv4(src, dst.octets(), 64)
                        .tcp(1024 + (n % 60000) as u16, vip.port(), n, 64240)
                        .syn()
                        .write(&mut pkt, &[])
                        .unwrap();
                    let _ = s.send_to(&pkt, &to);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
        .unwrap()
}

/// The flood guard's counters, read from the pinned map.
fn guard_counters() -> lb_common::FloodGuard {
    let pin = std::path::Path::new(veer::dataplane::PIN_DIR).join(lb_common::MAP_FLOOD_GUARD);
    let data = aya::maps::MapData::from_pin(&pin).expect("pinned flood guard");
    let map: aya::maps::PerCpuArray<_, lb_common::FloodGuard> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).unwrap();
    map.get(&0, 0)
        .unwrap()
        .iter()
        .fold(Default::default(), |a, c| a.add(*c))
}

/// A SYN flood from spoofed sources at ten times the table's capacity per second for 10 s
/// (flow_capacity 4096): 20 long-lived TCP streams and 5 UDP flows, half of them answered
/// 0.5 s after each request (the answer arrives after the flood has turned the table over),
/// see no failed exchange, and at least 90% of new connections made during the flood
/// succeed. The guard's counters show the flood.
#[test]
fn a_spoofed_syn_flood_breaks_no_established_flow() {
    let vip = |port: u16| SocketAddr::new(VIP4.into(), port);
    let mut vips = String::new();
    for (name, port, proto, backend_port) in [
        ("fast", 55, "tcp", TCP_FAST),
        ("slow", 56, "tcp", TCP_SLOW),
        ("ufast", 57, "udp", UDP_FAST),
        ("uslow", 58, "udp", UDP_SLOW),
    ] {
        vips += &format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"{VIP4}:{port}\"\nprotocol = \"{proto}\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n\n",
            backend_list(0..3, backend_port)
        );
    }
    if !is_root() {
        eprintln!("skipped: the lab needs root");
        return;
    }
    let mut lab = Lab::new(&LabOptions { weights: vec![1; 3] }).unwrap();
    let agent = lab
        .agent_section()
        .replace("flow_capacity = 65536", "flow_capacity = 4096");
    let config = lab.write_config_text("veer.toml", &format!("{agent}\n{vips}")).unwrap();
    lab.start_agent(&config).unwrap();
    run_cmd(&["ip", "-n", &lab.lb.name, "route", "add", "blackhole", "10.200.0.0/16"]).unwrap();
    let _servers = ThinkServers::start(&lab);
    // The long-lived flows, each checked once before the flood.
    let flood_time = Duration::from_secs(10);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for k in 0..25usize {
        let (tcp, slow) = (k < 20, k % 2 == 1);
        let target = match (tcp, slow) {
            (true, false) => vip(55),
            (true, true) => vip(56),
            (false, false) => vip(57),
            (false, true) => vip(58),
        };
        let stop = stop.clone();
        clients.push(
            lab.client
                .spawn(move || -> Result<u64, String> {
                    use std::io::{BufRead, BufReader, Write};
                    let deadline = Duration::from_secs(3);
                    let mut exchanges = 0u64;
                    if tcp {
                        let s = std::net::TcpStream::connect_timeout(&target, deadline)
                            .map_err(|e| format!("{target} connect: {e}"))?;
                        s.set_read_timeout(Some(deadline)).unwrap();
                        let mut w = s.try_clone().unwrap();
                        let mut r = BufReader::new(s);
                        while !stop.load(Ordering::Relaxed) {
                            let msg = format!("stream {k} exchange {exchanges}\n");
                            w.write_all(msg.as_bytes())
                                .map_err(|e| format!("{target} #{exchanges}: {e}"))?;
                            let mut line = String::new();
                            r.read_line(&mut line)
                                .map_err(|e| format!("{target} #{exchanges}: {e}"))?;
                            if line != msg {
                                return Err(format!("{target} #{exchanges}: answer {line:?}"));
                            }
                            exchanges += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    } else {
                        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                        s.set_read_timeout(Some(deadline)).unwrap();
                        while !stop.load(Ordering::Relaxed) {
                            let msg = format!("flow {k} exchange {exchanges}");
                            s.send_to(msg.as_bytes(), target).unwrap();
                            let mut buf = [0u8; 256];
                            let (n, _) = s
                                .recv_from(&mut buf)
                                .map_err(|e| format!("{target} #{exchanges}: no answer ({e})"))?;
                            if &buf[..n] != msg.as_bytes() {
                                return Err(format!("{target} #{exchanges}: wrong answer"));
                            }
                            exchanges += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    Ok(exchanges)
                })
                .unwrap(),
        );
    }
    // Let every flow complete a few exchanges (confirmed) before the flood.
    std::thread::sleep(Duration::from_millis(1500));
    let before = guard_counters();
    let flooder = flood(&lab, vip(55), 10 * 4096, flood_time, Arc::new(AtomicBool::new(false)));
    // New connections during the flood, one every 50 ms.
    let newcomers = lab
        .client
        .spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            let start = std::time::Instant::now();
            let (mut ok, mut tried) = (0u32, 0u32);
            while start.elapsed() < flood_time - Duration::from_secs(1) {
                tried += 1;
                let done = (|| -> std::io::Result<()> {
                    let s = std::net::TcpStream::connect_timeout(
                        &SocketAddr::new(VIP4.into(), 55),
                        Duration::from_secs(3),
                    )?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    (&s).write_all(b"hello\n")?;
                    let mut line = String::new();
                    BufReader::new(&s).read_line(&mut line)?;
                    if line == "hello\n" {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("wrong answer"))
                    }
                })();
                ok += done.is_ok() as u32;
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, tried)
        })
        .unwrap();
    let sent = flooder.join().unwrap();
    let (ok, tried) = newcomers.join().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<Result<u64, String>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let after = guard_counters();
    let (d, names) = (after.counters(), lb_common::FloodGuard::NAMES);
    let delta: Vec<String> = (0..5)
        .map(|i| format!("{}={}", names[i], d[i] - before.counters()[i]))
        .collect();
    println!(
        "flood: {sent} spoofed SYNs in {flood_time:?} ({:.0}/s); new connections {ok}/{tried}; long-lived exchanges {:?}; guard {}",
        sent as f64 / flood_time.as_secs_f64(),
        results,
        delta.join(" ")
    );
    for (k, r) in results.iter().enumerate() {
        assert!(
            matches!(r, Ok(n) if *n > 10),
            "long-lived flow {k}: {r:?}\nagent log:\n{}",
            lab.agent_log()
        );
    }
    assert!(
        ok as f64 >= 0.9 * tried as f64,
        "new connections: {ok} of {tried} succeeded"
    );
    assert!(
        sent >= 5 * 4096 * flood_time.as_secs(),
        "the flood ran at half its rate at least: {sent}"
    );
    let churned = (d[1] - before.counters()[1]) + (d[0] - before.counters()[0]);
    assert!(
        churned as f64 >= 0.5 * sent as f64,
        "the guard saw the flood's SYNs: {}",
        delta.join(" ")
    );
    assert!(
        d[4] > before.counters()[4],
        "the flood ran over the new-flow budget: {}",
        delta.join(" ")
    );
    // An operator sees the same in `veer status` (and the metric built from it).
    let status = lab.status().unwrap();
    for (i, name) in names.iter().enumerate() {
        let shown = status["counters"]["flood_guard"][*name].as_u64();
        assert!(
            shown.is_some_and(|n| n >= d[i]),
            "veer status shows flood_guard.{name} ({shown:?}, map {})",
            d[i]
        );
    }
}

/// The port of the download servers on the backends, and the download's size.
const DOWNLOAD_PORT: u16 = 5600;
const DOWNLOAD: usize = 1 << 20;

/// An HTTP server in each backend's namespace answering any request with DOWNLOAD bytes
/// (a pattern the client checks), then closing. Stops with the guard.
struct Downloads {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Downloads {
    fn start(lab: &Lab) -> Downloads {
        use std::io::{Read, Write};
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for ns in &lab.backends {
            let l = ns
                .run(|| std::net::TcpListener::bind(SocketAddr::from(([0u16; 8], DOWNLOAD_PORT))))
                .unwrap()
                .unwrap();
            l.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                        let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
                        let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let body: Vec<u8> = (0..DOWNLOAD).map(|k| (k % 253) as u8).collect();
                        let _ = s.write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {DOWNLOAD}\r\nConnection: close\r\n\r\n")
                                .as_bytes(),
                        );
                        let _ = s.write_all(&body);
                    });
                }
            }));
        }
        Downloads { stop, threads }
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One HTTP download from `ns`: the body, checked whole and in order, and how long it
/// took. A stall (3 s without a byte) or 20 s in all fail it.
fn download(ns: &Netns, vip: SocketAddr) -> anyhow::Result<Duration> {
    ns.run(move || -> anyhow::Result<Duration> {
        use std::io::{Read, Write};
        let start = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET /big HTTP/1.1\r\nHost: veer\r\nConnection: close\r\n\r\n")?;
        let (mut got, mut buf) = (Vec::with_capacity(DOWNLOAD + 256), vec![0u8; 65536]);
        loop {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "{vip}: {} bytes after 20 s",
                got.len()
            );
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => anyhow::bail!("{vip}: stalled after {} bytes ({e})", got.len()),
            }
        }
        let end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("{vip}: no HTTP head in {} bytes", got.len()))?;
        let body = &got[end + 4..];
        anyhow::ensure!(body.len() == DOWNLOAD, "{vip}: body of {} bytes", body.len());
        anyhow::ensure!(
            body.iter().enumerate().all(|(k, &b)| b == (k % 253) as u8),
            "{vip}: body bytes out of order"
        );
        Ok(start.elapsed())
    })?
}

/// PMTU discovery through the balancer: a client behind a 1400-byte hop downloads 1 MB
/// through the VIP, IPv4 and IPv6. The backend's first full-size segments are refused at
/// the hop; the router's fragmentation-needed / packet-too-big goes to the VIP, and only
/// if the balancer hands it to the backend (as SNAT -> backend, quoting backend -> SNAT)
/// does the backend lower its path MTU. Otherwise the download stalls.
#[test]
fn a_1mb_download_through_a_1400_byte_hop_completes() {
    let vips = format!(
        "[[vip]]\nname = \"dl4\"\naddress = \"{VIP4}:81\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {{ address = \"{}:{DOWNLOAD_PORT}\" }} ]\n\n\
         [[vip]]\nname = \"dl6\"\naddress = \"[{VIP6}]:81\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {{ address = \"[{}]:{DOWNLOAD_PORT}\" }} ]\n",
        backend4(0),
        backend6(0)
    );
    let Some(lab) = Lab::with_config(1, "", &vips) else {
        return;
    };
    let routed = lab.add_routed_client(1400).unwrap();
    let _servers = Downloads::start(&lab);
    let reason = |name: &str| lab.status().unwrap()["counters"]["reasons"][name].as_u64().unwrap_or(0);
    for vip in [
        SocketAddr::new(VIP4.into(), 81),
        SocketAddr::new(IpAddr::from(VIP6), 81),
    ] {
        let watch = lab.watch().unwrap();
        let translated = reason("icmp_translated");
        let took = download(&routed.client, vip).unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", lab.agent_log()));
        let translated = reason("icmp_translated") - translated;
        println!("{vip}: 1 MiB through the 1400-byte hop in {took:?}, {translated} ICMP errors translated");
        assert!(
            translated >= 1,
            "{vip}: the router's error reached the backend through veer"
        );
        lab.assert_no_drops(&watch, &[]);
    }
}

/// The id of backend `addr` of VIP `vip` in `veer status`.
fn backend_id(lab: &Lab, vip: &str, addr: &str) -> Option<u64> {
    let status = lab.status().unwrap();
    status["vips"]
        .as_array()?
        .iter()
        .filter(|v| v["name"] == vip)
        .flat_map(|v| v["pools"].as_array().into_iter().flatten())
        .flat_map(|p| p["backends"].as_array().into_iter().flatten())
        .find(|b| b["address"] == addr)?["id"]
        .as_u64()
}

/// One datagram on `socket` (one 5-tuple for the whole test) to `vip`; the answering
/// backend's name, or None when nothing came back within 1 s.
fn ask(socket: &UdpSocket, vip: SocketAddr) -> Option<String> {
    socket.send_to(b"who?", vip).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    assert_eq!(from, vip, "the answer comes from the VIP");
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// A deleted backend's id goes to a backend added to another VIP (the id ring is full, so
/// the quarantine cannot hold it back): a UDP flow that was pinned to the deleted backend
/// must not follow the id. Its next datagram is answered by a backend of its own VIP. Then
/// the same with the id handed to an IPv6 backend: an IPv4 flow must not be sent there.
#[test]
fn a_udp_flow_never_follows_a_reused_backend_id() {
    // dnsA: b1..b3 (ids 1-3), dnsB: b4 (4), dns6: b4's IPv6 address (5). Six slots, id 0
    // reserved: every new backend takes the id just freed.
    let addr4 = |i: usize| format!("{}:{UDP_PORT}", backend4(i));
    let addr6 = |i: usize| format!("[{}]:{UDP_PORT}", backend6(i));
    let vip = |name: &str, address: String, backends: &[String]| {
        let list = backends
            .iter()
            .map(|b| format!("{{ address = \"{b}\" }}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nprotocol = \"udp\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {list} ]\n\n"
        )
    };
    let vips = vip("dnsA", format!("{VIP4}:53"), &[addr4(0), addr4(1), addr4(2)])
        + &vip("dnsB", format!("{VIP4}:54"), &[addr4(3)])
        + &vip("dns6", format!("[{VIP6}]:54"), &[addr6(3)]);
    let Some(lab) = Lab::with_config(5, "max_backends = 6\n", &vips) else {
        return;
    };
    let dns_a = SocketAddr::new(VIP4.into(), 53);
    let socket = lab.client.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    // The first exchange may race the agent's first table write.
    let mut first = None;
    for _ in 0..30 {
        first = ask(&socket, dns_a);
        if first.is_some() {
            break;
        }
    }
    let mut current = first.expect("dnsA answers");
    let watch = lab.watch().unwrap();
    let own: Vec<String> = (0..3).map(backend_name).collect();
    for (round, (other_vip, added)) in [("dnsB", addr4(4)), ("dns6", addr6(4))].into_iter().enumerate() {
        assert_eq!(
            ask(&socket, dns_a).as_deref(),
            Some(current.as_str()),
            "the flow is pinned"
        );
        let i = own.iter().position(|n| *n == current).expect("one of dnsA's backends");
        let id = backend_id(&lab, "dnsA", &addr4(i)).expect("the pinned backend's id");
        lab.veer_ok(&["backend", "del", "dnsA", &addr4(i)]);
        lab.veer_ok(&["backend", "add", other_vip, "main", &added]);
        assert_eq!(
            backend_id(&lab, other_vip, &added),
            Some(id),
            "round {round}: the freed id {id} went to {added} of {other_vip}"
        );
        let answer = ask(&socket, dns_a);
        println!(
            "round {round}: flow pinned to {current} (id {id}); id given to {added} of {other_vip}; next answer {answer:?}"
        );
        let answer = answer.unwrap_or_else(|| panic!("round {round}: no answer after the id went to {added}"));
        assert!(
            own.contains(&answer) && answer != current,
            "round {round}: answered by {answer}, not by a remaining backend of dnsA"
        );
        current = answer;
    }
    lab.assert_no_drops(&watch, &[]);
}

/// The opt-in data-path trace: an agent started with `--trace CLIENT/32 --log-level debug`
/// logs the decision about each of that client's packets (reason, action, 5-tuple), and
/// nothing about another client's. Forwarding is unchanged.
#[test]
fn the_data_path_trace_logs_only_the_listed_client() {
    if !is_root() {
        eprintln!("skipped: the lab needs root");
        return;
    }
    let mut lab = Lab::new(&LabOptions { weights: vec![1] }).unwrap();
    let config = lab.write_config(&[1]).unwrap();
    let traced = format!("{CLIENT4}/32");
    lab.start_agent_with(&config, &["--trace", &traced, "--log-level", "debug"])
        .unwrap();
    let other = lab.add_client_aliases(1).unwrap()[0];
    let vip = SocketAddr::new(VIP4.into(), 80);
    lab.wait_for_vip(vip).unwrap();
    let watch = lab.watch().unwrap();
    let untraced = lab
        .client
        .run(move || http_get_from(other, vip, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    let answer = lab
        .client
        .run(move || http_get(vip, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    assert_eq!((untraced.as_str(), answer.as_str()), ("b1", "b1"));
    let want = format!("{CLIENT4}:");
    let mut lines = Vec::new();
    for _ in 0..30 {
        lines = lab
            .agent_log()
            .lines()
            .filter(|l| l.contains("veer::trace"))
            .map(String::from)
            .collect();
        if lines
            .iter()
            .any(|l| l.contains(&want) && l.contains("-> 10.77.0.100:80"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{} trace lines, e.g. {:?}",
        lines.len(),
        lines.iter().find(|l| l.contains(&want))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&want) && l.contains("tcp") && l.contains("-> 10.77.0.100:80")),
        "the traced client's packets are logged:\n{}",
        lab.agent_log()
    );
    let other = format!("{other}:");
    assert!(
        lines.iter().all(|l| !l.contains(&other)),
        "nothing about the untraced client: {lines:?}"
    );
    lab.assert_no_drops(&watch, &["pass_no_neigh<=2"]);
}
