//! The end-to-end bench: real HTTP over real TCP through the namespace lab, veer beside
//! what an operator would use instead, on the same machine in the same run. Three nginx
//! backends (Debian's, started by PID in their namespaces), wrk in the client namespace,
//! and per case one balancer in the balancer namespace:
//! - direct: no balancer, each wrk process to one backend (the ceiling);
//! - veer: the agent, NAT mode, XDP on the balancer's interface;
//! - HAProxy in mode tcp (round robin);
//! - nftables DNAT (numgen round robin) with SNAT, in the kernel's conntrack.
//!
//! Two load shapes: a new connection per request (`Connection: close`) and keep-alive.
//! Cases run interleaved and rotated in each repetition; between cases the lab drops TIME_WAIT
//! sockets and flushes conntrack, so one case's leftovers do not tax the next. Reported:
//! req/s, the ratio to direct in the same repetition, errors, p50/p99 latency, and CPU per
//! request (/proc/stat for the machine, /proc/PID/stat for the balancer process).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::json;
use veer_tests::lab::*;

/// wrk processes per case (one per backend for direct), each one thread.
const CLIENTS: usize = 3;
/// Connections per wrk process.
const CONNECTIONS: u32 = 16;
const BACKENDS: usize = 3;
const NGINX_PORT: u16 = HTTP_PORT;

pub struct Options {
    pub seconds: u32,
    pub reps: u32,
    pub out: PathBuf,
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Direct,
    /// Each wrk process to one backend as in direct, but through the balancer's namespace
    /// as a plain IP router (host routes both ways): the path every balancer here takes,
    /// with no balancing. What veer costs beyond that hop is veer's.
    Routed,
    Veer,
    Haproxy,
    Nft,
}

impl Case {
    /// Direct first: the ratios divide by it. The others in any order.
    const ALL: [Case; 5] = [Case::Direct, Case::Routed, Case::Veer, Case::Haproxy, Case::Nft];

    fn name(self) -> &'static str {
        match self {
            Case::Direct => "direct",
            Case::Routed => "routed, no balancer",
            Case::Veer => "veer (NAT)",
            Case::Haproxy => "HAProxy (tcp)",
            Case::Nft => "nftables DNAT+SNAT",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Case::Direct => "direct",
            Case::Routed => "routed",
            Case::Veer => "veer_nat",
            Case::Haproxy => "haproxy_tcp",
            Case::Nft => "nftables_dnat",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Close,
    KeepAlive,
}

impl Shape {
    const ALL: [Shape; 2] = [Shape::Close, Shape::KeepAlive];

    fn name(self) -> &'static str {
        match self {
            Shape::Close => "new connection per request",
            Shape::KeepAlive => "keep-alive",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Shape::Close => "close",
            Shape::KeepAlive => "keepalive",
        }
    }
}

/// One wrk run of one case and shape.
#[derive(Clone, Debug, Default)]
struct Sample {
    requests: u64,
    req_s: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// Whole machine, µs of CPU per request (/proc/stat busy time).
    machine_us: f64,
    /// The balancer's own process (HAProxy; the agent for veer), µs per request.
    balancer_us: Option<f64>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let tools = Tools::find()?;
    progress(format!(
        "e2e: {} cases x {} shapes x {} repetitions, {} s each: about {} s",
        Case::ALL.len(),
        Shape::ALL.len(),
        opts.reps,
        opts.seconds,
        Case::ALL.len() as u32 * Shape::ALL.len() as u32 * opts.reps * (opts.seconds + 2) + 15
    ));
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1; BACKENDS],
    })?;
    for i in 0..BACKENDS {
        lab.stop_backend(i);
    }
    tune(&lab)?;
    let _nginx = (0..BACKENDS)
        .map(|i| Nginx::start(&tools, &lab, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for i in 0..BACKENDS {
        wait_http(&lab, SocketAddr::new(backend4(i).into(), NGINX_PORT))?;
    }
    progress("e2e: lab up: 3 nginx backends, wrk in the client namespace".into());

    // samples[case][shape] = per repetition
    let mut samples = vec![vec![Vec::<Sample>::new(); Shape::ALL.len()]; Case::ALL.len()];
    for rep in 0..opts.reps {
        for k in 0..Case::ALL.len() {
            let ci = (k + rep as usize) % Case::ALL.len();
            let case = Case::ALL[ci];
            let running = Running::start(&tools, &mut lab, case)?;
            for (si, shape) in Shape::ALL.iter().enumerate() {
                let left = reset(&tools, &lab)?;
                if left > 0 {
                    progress(format!("e2e: {left} TIME_WAIT sockets survived the reset"));
                }
                let s = load(&tools, &lab, &running, *shape, opts.seconds)?;
                progress(format!(
                    "e2e: rep {}/{} {:<20} {:<27} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                    rep + 1,
                    opts.reps,
                    case.name(),
                    shape.name(),
                    s.req_s,
                    s.p50_ms,
                    s.p99_ms,
                    s.errors
                ));
                samples[ci][si].push(s);
            }
            running.stop(&tools, &mut lab)?;
        }
    }
    let report = Report::new(&samples, opts);
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let json_path = opts.out.join("e2e.json");
    let svg_path = opts.out.join("e2e.svg");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.json)?)?;
    std::fs::write(&svg_path, report.svg())?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report.json)?);
    } else {
        print!("{}", report.table);
    }
    progress(format!(
        "e2e: done in {:.0} s; wrote {} and {}",
        started.elapsed().as_secs_f64(),
        json_path.display(),
        svg_path.display()
    ));
    Ok(())
}

fn progress(line: String) {
    eprintln!("{line}");
}

/// The programs the bench runs, found before anything is built.
struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
    nft: PathBuf,
    conntrack: PathBuf,
    ss: PathBuf,
}

impl Tools {
    fn find() -> anyhow::Result<Tools> {
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
                let p = Path::new(dir).join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
            bail!("{name} not found: run the end-to-end bench through `cargo xtask bench --e2e`, which installs it")
        };
        Ok(Tools {
            wrk: find("wrk")?,
            nginx: find("nginx")?,
            haproxy: find("haproxy")?,
            nft: find("nft")?,
            conntrack: find("conntrack")?,
            ss: find("ss")?,
        })
    }
}

/// Client: every local port, and TIME_WAIT reuse for new outgoing connections (a new
/// connection per request at ~10k/s would otherwise run out of ports); backends: room in
/// the accept queue.
fn tune(lab: &Lab) -> anyhow::Result<()> {
    let cl = lab.client.name.as_str();
    for s in ["net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"] {
        run_cmd(&["ip", "netns", "exec", cl, "sysctl", "-qw", s])?;
    }
    for ns in lab.backends.iter().chain([&lab.lb]) {
        for s in ["net.core.somaxconn=4096", "net.ipv4.tcp_max_syn_backlog=4096"] {
            run_cmd(&["ip", "netns", "exec", &ns.name, "sysctl", "-qw", s])?;
        }
    }
    Ok(())
}

/// A process of ours: SIGTERM on drop, SIGKILL after 3 s, always reaped.
struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str) -> anyhow::Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("start {what}"))?;
        Ok(Proc {
            child: Some(child),
            what: what.to_string(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Fails if the process has exited.
    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("{} exited: {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// nginx in backend `i`'s namespace: one process (no master), its files in the lab dir.
struct Nginx {
    _proc: Proc,
}

impl Nginx {
    fn start(tools: &Tools, lab: &Lab, i: usize) -> anyhow::Result<Nginx> {
        let dir = lab.dir.join(format!("nginx-{}", i + 1));
        std::fs::create_dir_all(dir.join("tmp"))?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n\
             client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
             server {{\n    listen {NGINX_PORT} backlog=4096;\n    location / {{ return 200 \"{}\\n\"; }}\n  }}\n}}\n",
            backend_name(i)
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut cmd = command_in(&lab.backends[i], &tools.nginx)?;
        cmd.arg("-c").arg(&path).arg("-p").arg(&dir).stderr(Stdio::null());
        let mut proc = Proc::spawn(cmd, &format!("nginx on {}", backend_name(i)))?;
        std::thread::sleep(Duration::from_millis(100));
        proc.alive().with_context(|| {
            format!(
                "nginx: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            )
        })?;
        Ok(Nginx { _proc: proc })
    }
}

/// A case's balancer, running; `targets` are where the wrk processes send their requests.
struct Running {
    case: Case,
    targets: Vec<SocketAddr>,
    proc: Option<Proc>,
    routes: Option<Routes>,
}

/// Host routes that send client <-> backend traffic through the balancer's namespace;
/// removed on drop.
struct Routes {
    added: Vec<(String, String)>,
}

impl Routes {
    fn add(lab: &Lab) -> anyhow::Result<Routes> {
        let mut r = Routes { added: Vec::new() };
        for i in 0..BACKENDS {
            r.route(&lab.client.name, &format!("{}/32", backend4(i)))?;
            r.route(&lab.backends[i].name, &format!("{CLIENT4}/32"))?;
        }
        Ok(r)
    }

    fn route(&mut self, ns: &str, dst: &str) -> anyhow::Result<()> {
        run_cmd(&["ip", "-n", ns, "route", "add", dst, "via", &LB4.to_string()])?;
        self.added.push((ns.to_string(), dst.to_string()));
        Ok(())
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for (ns, dst) in &self.added {
            let _ = run_cmd(&["ip", "-n", ns, "route", "del", dst]);
        }
    }
}

impl Running {
    fn start(tools: &Tools, lab: &mut Lab, case: Case) -> anyhow::Result<Running> {
        let vip = SocketAddr::new(VIP4.into(), 80);
        let backends: Vec<SocketAddr> = (0..BACKENDS)
            .map(|i| SocketAddr::new(backend4(i).into(), NGINX_PORT))
            .collect();
        let mut running = Running {
            case,
            targets: vec![vip; CLIENTS],
            proc: None,
            routes: None,
        };
        match case {
            Case::Direct => running.targets = (0..CLIENTS).map(|i| backends[i % BACKENDS]).collect(),
            Case::Routed => {
                running.targets = (0..CLIENTS).map(|i| backends[i % BACKENDS]).collect();
                running.routes = Some(Routes::add(lab)?);
            }
            Case::Veer => {
                let list = backends
                    .iter()
                    .map(|b| format!("{{ address = \"{b}\" }}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let text = format!(
                    "{}\n[[vip]]\nname = \"web\"\naddress = \"{vip}\"\nprotocol = \"tcp\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {list} ]\n",
                    lab.agent_section()
                );
                let config = lab.write_config_text("e2e.toml", &text)?;
                lab.start_agent(&config)?;
            }
            Case::Haproxy => {
                let front = SocketAddr::new(LB4.into(), 80);
                let servers: String = backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("  server {} {b}\n", backend_name(i)))
                    .collect();
                let conf = format!(
                    "global\n  maxconn 8000\n  nbthread 2\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
                     frontend f\n  bind {front}\n  default_backend b\n\nbackend b\n  balance roundrobin\n{servers}"
                );
                let path = lab.dir.join("haproxy.cfg");
                std::fs::write(&path, conf)?;
                let mut cmd = command_in(&lab.lb, &tools.haproxy)?;
                let log = std::fs::File::create(lab.dir.join("haproxy.log"))?;
                cmd.arg("-db").arg("-f").arg(&path).stdout(log.try_clone()?).stderr(log);
                running.proc = Some(Proc::spawn(cmd, "haproxy")?);
                running.targets = vec![front; CLIENTS];
            }
            Case::Nft => {
                let map: Vec<String> = backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i} : {} . {}", b.ip(), b.port()))
                    .collect();
                let addrs: Vec<String> = backends.iter().map(|b| b.ip().to_string()).collect();
                let rules = format!(
                    "table ip veer_bench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                     ip daddr {} tcp dport {} dnat ip to numgen inc mod {BACKENDS} map {{ {} }}\n  }}\n  \
                     chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
                     ip daddr {{ {} }} tcp dport {NGINX_PORT} ct status dnat snat ip to {SNAT4}\n  }}\n}}\n",
                    vip.ip(),
                    vip.port(),
                    map.join(", "),
                    addrs.join(", ")
                );
                let path = lab.dir.join("dnat.nft");
                std::fs::write(&path, rules)?;
                let out = command_in(&lab.lb, &tools.nft)?.arg("-f").arg(&path).output()?;
                ensure!(out.status.success(), "nft -f: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        for t in running.targets.clone() {
            wait_http(lab, t).with_context(|| {
                format!(
                    "{}: {t} never answered; HAProxy's log: {}",
                    case.name(),
                    std::fs::read_to_string(lab.dir.join("haproxy.log")).unwrap_or_default()
                )
            })?;
        }
        Ok(running)
    }

    /// The balancer's own process, for its CPU time.
    fn pid(&self, lab: &Lab) -> Option<u32> {
        match self.case {
            Case::Veer => lab.agent.as_ref().and_then(|a| a.pid()),
            _ => self.proc.as_ref().map(|p| p.pid()),
        }
    }

    fn stop(mut self, tools: &Tools, lab: &mut Lab) -> anyhow::Result<()> {
        match self.case {
            Case::Direct => {}
            Case::Routed => self.routes = None,
            Case::Veer => {
                if let Some(mut a) = lab.agent.take() {
                    a.stop();
                }
                let (code, _, err) = lab.cleanup()?;
                ensure!(code == 0, "veer agent --cleanup exited {code}: {err}");
            }
            Case::Haproxy => {
                if let Some(p) = self.proc.as_mut() {
                    p.alive()?;
                }
                self.proc = None;
            }
            Case::Nft => {
                run_in(lab, &tools.nft, &["delete", "table", "ip", "veer_bench"])?;
            }
        }
        Ok(())
    }
}

/// Runs `program args` in the balancer namespace; fails with its stderr.
fn run_in(lab: &Lab, prog: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = command_in(&lab.lb, prog)?.args(args).output()?;
    ensure!(
        out.status.success(),
        "{} {args:?}: {}",
        prog.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Between runs: no TIME_WAIT socket and no conntrack entry of the previous run remains.
/// Returns the TIME_WAIT sockets still there (0 unless the kernel refused to close some).
fn reset(tools: &Tools, lab: &Lab) -> anyhow::Result<usize> {
    for ns in lab.backends.iter().chain([&lab.client, &lab.lb]) {
        // `ss -K` closes the sockets it lists (the kernel's sock_destroy).
        let _ = command_in(ns, &tools.ss)?
            .args(["-K", "-t", "state", "time-wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = command_in(&lab.lb, &tools.conntrack)?
        .arg("-F")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    std::thread::sleep(Duration::from_millis(200));
    let mut left = 0;
    for ns in lab.backends.iter().chain([&lab.client, &lab.lb]) {
        let out = command_in(ns, &tools.ss)?
            .args(["-H", "-t", "-n", "state", "time-wait"])
            .stderr(Stdio::null())
            .output()?;
        left += String::from_utf8_lossy(&out.stdout).lines().count();
    }
    Ok(left)
}

fn wait_http(lab: &Lab, target: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if lab
            .client
            .run(move || http_get(target, Duration::from_secs(1)).is_ok())?
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{target} did not answer within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Busy and total jiffies of the whole machine (/proc/stat).
fn machine_cpu() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    ensure!(v.len() >= 8, "short cpu line in /proc/stat");
    // user nice system idle iowait irq softirq steal
    let idle = v[3] + v[4];
    let total: u64 = v[..8].iter().sum();
    Ok((total - idle, total))
}

/// utime + stime of a process, in jiffies.
fn process_cpu(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn jiffy_us() -> f64 {
    // SAFETY: trivial libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// One run of `CLIENTS` wrk processes in the client namespace, side by side.
fn load(tools: &Tools, lab: &Lab, running: &Running, shape: Shape, seconds: u32) -> anyhow::Result<Sample> {
    let pid = running.pid(lab);
    let (busy0, _) = machine_cpu()?;
    let proc0 = pid.and_then(process_cpu);
    let mut children = Vec::new();
    for t in &running.targets {
        let mut cmd = command_in(&lab.client, &tools.wrk)?;
        cmd.args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "2s",
            "--latency",
        ]);
        if shape == Shape::Close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(format!("http://{t}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(ChildGuard(cmd.spawn().context("start wrk")?));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds as u64 + 10);
    let mut outs = Vec::new();
    for mut c in children {
        loop {
            if c.0.try_wait()?.is_some() {
                break;
            }
            ensure!(Instant::now() < deadline, "wrk did not finish in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut text = String::new();
        use std::io::Read as _;
        if let Some(mut o) = c.0.stdout.take() {
            o.read_to_string(&mut text)?;
        }
        outs.push(parse_wrk(&text).with_context(|| format!("wrk output: {text}"))?);
    }
    let (busy1, _) = machine_cpu()?;
    let proc1 = pid.and_then(process_cpu);
    let requests: u64 = outs.iter().map(|o| o.requests).sum();
    ensure!(requests > 0, "no request completed");
    let per_req = |jiffies: u64| jiffies as f64 * jiffy_us() / requests as f64;
    Ok(Sample {
        requests,
        req_s: outs.iter().map(|o| o.req_s).sum(),
        errors: outs.iter().map(|o| o.errors).sum(),
        p50_ms: outs.iter().map(|o| o.p50_ms).fold(0.0, f64::max),
        p99_ms: outs.iter().map(|o| o.p99_ms).fold(0.0, f64::max),
        machine_us: per_req(busy1 - busy0),
        balancer_us: match (proc0, proc1) {
            (Some(a), Some(b)) => Some(per_req(b - a)),
            _ => None,
        },
    })
}

struct Wrk {
    requests: u64,
    req_s: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Reads wrk's report: "N requests in", "Requests/sec:", the latency distribution, and
/// socket errors / non-2xx responses.
fn parse_wrk(text: &str) -> anyhow::Result<Wrk> {
    let mut w = Wrk {
        requests: 0,
        req_s: 0.0,
        errors: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.contains(" requests in ") {
            w.requests = words.first().and_then(|n| n.parse().ok()).context("requests")?;
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            w.req_s = v.trim().parse()?;
        } else if line.starts_with("Socket errors:") {
            // Socket errors: connect 0, read 0, write 0, timeout 0
            w.errors += words
                .iter()
                .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                .sum::<u64>();
        } else if line.starts_with("Non-2xx or 3xx responses:") {
            w.errors += words.last().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        } else if words.len() == 2 && words[0] == "50%" {
            w.p50_ms = duration_ms(words[1])?;
        } else if words.len() == 2 && words[0] == "99%" {
            w.p99_ms = duration_ms(words[1])?;
        }
    }
    ensure!(w.requests > 0 && w.req_s > 0.0, "no requests counted");
    Ok(w)
}

/// wrk's durations: 512.00us, 1.23ms, 2.00s, 1.00m.
fn duration_ms(s: &str) -> anyhow::Result<f64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .context("duration without a unit")?;
    let v: f64 = num.parse()?;
    Ok(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        other => bail!("unknown unit {other}"),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per case and shape: medians over repetitions, ratios to direct per repetition.
struct Report {
    json: serde_json::Value,
    table: String,
    /// (case, shape) -> median ratio to direct
    ratios: Vec<(Case, Shape, f64)>,
}

impl Report {
    fn new(samples: &[Vec<Vec<Sample>>], opts: &Options) -> Report {
        let direct = &samples[0];
        let mut rows = Vec::new();
        let mut ratios = Vec::new();
        let mut table = String::new();
        let _ = writeln!(
            table,
            "\nend to end: wrk ({CLIENTS} processes x {CONNECTIONS} connections) -> 3 nginx backends, {} s per run, {} repetitions, median\n",
            opts.seconds, opts.reps
        );
        let _ = writeln!(
            table,
            "{:<20} {:<27} {:>9} {:>9} {:>7} {:>8} {:>8} {:>10} {:>10}",
            "case", "shape", "req/s", "x direct", "errors", "p50 ms", "p99 ms", "µs/req cpu", "µs/req lb"
        );
        for (ci, case) in Case::ALL.iter().enumerate() {
            for (si, shape) in Shape::ALL.iter().enumerate() {
                let s = &samples[ci][si];
                let per_rep: Vec<f64> = s.iter().zip(&direct[si]).map(|(a, d)| a.req_s / d.req_s).collect();
                let ratio = median(per_rep.clone());
                let cpu_ratio = median(
                    s.iter()
                        .zip(&direct[si])
                        .map(|(a, d)| a.machine_us / d.machine_us)
                        .collect(),
                );
                let req_s = median(s.iter().map(|x| x.req_s).collect());
                let errors: u64 = s.iter().map(|x| x.errors).sum();
                let p50 = median(s.iter().map(|x| x.p50_ms).collect());
                let p99 = median(s.iter().map(|x| x.p99_ms).collect());
                let cpu = median(s.iter().map(|x| x.machine_us).collect());
                let lb: Vec<f64> = s.iter().filter_map(|x| x.balancer_us).collect();
                let lb = (!lb.is_empty()).then(|| median(lb));
                ratios.push((*case, *shape, ratio));
                let _ = writeln!(
                    table,
                    "{:<20} {:<27} {:>9.0} {:>8.3}x {:>7} {:>8.2} {:>8.2} {:>10.1} {:>10}",
                    case.name(),
                    shape.name(),
                    req_s,
                    ratio,
                    errors,
                    p50,
                    p99,
                    cpu,
                    lb.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
                );
                rows.push(json!({
                    "case": case.key(), "shape": shape.key(),
                    "req_s_median": req_s, "ratio_to_direct_median": ratio,
                    "ratio_to_direct_per_rep": per_rep,
                    "machine_cpu_us_per_req_median": cpu, "machine_cpu_ratio_to_direct_median": cpu_ratio,
                    "balancer_process_cpu_us_per_req_median": lb,
                    "errors": errors, "p50_ms_median": p50, "p99_ms_median": p99,
                    "runs": s.iter().map(|x| json!({
                        "requests": x.requests, "req_s": x.req_s, "errors": x.errors,
                        "p50_ms": x.p50_ms, "p99_ms": x.p99_ms,
                        "machine_cpu_us_per_req": x.machine_us, "balancer_cpu_us_per_req": x.balancer_us,
                    })).collect::<Vec<_>>(),
                }));
            }
        }
        let get = |c: Case, s: Shape| {
            ratios
                .iter()
                .find(|(a, b, _)| *a == c && *b == s)
                .map(|x| x.2)
                .unwrap_or(f64::NAN)
        };
        let veer_close = get(Case::Veer, Shape::Close);
        let idx = |c: Case| Case::ALL.iter().position(|x| *x == c).unwrap_or(0);
        // Case a over case b, repetition by repetition (same run, side by side): the median.
        let rel = |a: Case, b: Case, shape: Shape, f: fn(&Sample) -> f64| {
            let si = Shape::ALL.iter().position(|x| *x == shape).unwrap_or(0);
            median(
                samples[idx(a)][si]
                    .iter()
                    .zip(&samples[idx(b)][si])
                    .map(|(x, y)| f(x) / f(y))
                    .collect(),
            )
        };
        let req = |x: &Sample| x.req_s;
        let cpu = |x: &Sample| x.machine_us;
        let veer_cpu = rel(Case::Veer, Case::Direct, Shape::Close, cpu);
        let ka_nft = rel(Case::Veer, Case::Nft, Shape::KeepAlive, req);
        let ka_haproxy = rel(Case::Veer, Case::Haproxy, Shape::KeepAlive, req);
        let close_routed = rel(Case::Veer, Case::Routed, Shape::Close, req);
        let ka_routed = rel(Case::Veer, Case::Routed, Shape::KeepAlive, req);
        let close_nft = rel(Case::Veer, Case::Nft, Shape::Close, req);
        let close_haproxy = rel(Case::Veer, Case::Haproxy, Shape::Close, req);
        let _ = writeln!(
            table,
            "\ngoals: veer new-connection req/s {veer_close:.3}x direct (>= 0.95); machine CPU per request {veer_cpu:.2}x direct's (<= 1.1); \
             keep-alive {ka_nft:.2}x nftables (>= 1.0) and {ka_haproxy:.2}x HAProxy (>= 1.2)"
        );
        let _ = writeln!(
            table,
            "veer over the same hop with no balancing (routed): {close_routed:.3}x new connections, {ka_routed:.3}x keep-alive; \
             new connections {close_nft:.2}x nftables, {close_haproxy:.2}x HAProxy"
        );
        let json = json!({
            "clients": CLIENTS, "connections_per_client": CONNECTIONS, "backends": BACKENDS,
            "seconds_per_run": opts.seconds, "repetitions": opts.reps,
            "cases": rows,
            "goals": {
                "veer_close_ratio_to_direct": veer_close, "veer_close_cpu_ratio_to_direct": veer_cpu,
                "veer_keepalive_over_nftables": ka_nft, "veer_keepalive_over_haproxy": ka_haproxy,
                "veer_close_over_routed": close_routed, "veer_keepalive_over_routed": ka_routed,
                "veer_close_over_nftables": close_nft, "veer_close_over_haproxy": close_haproxy,
            },
        });
        Report { json, table, ratios }
    }

    /// Grouped bars: req/s as a ratio to direct, per case, one bar per shape.
    fn svg(&self) -> String {
        let (w, h) = (640.0, 360.0);
        let (left, right, top, bottom) = (60.0, 20.0, 40.0, 60.0);
        let max = self
            .ratios
            .iter()
            .map(|r| r.2)
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max);
        // Room above the tallest bar, in steps of the 0.2 grid.
        let max = (max * 1.1 / 0.2).ceil() * 0.2;
        let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">HTTP requests/s as a ratio to direct (same run, median of repetitions)</text>\n",
            w / 2.0
        );
        let mut t = 0.0;
        while t <= max + 1e-9 {
            let (x2, yt, xl, yl) = (w - right, y(t), left - 6.0, y(t) + 4.0);
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yt:.1}\" y2=\"{yt:.1}\" stroke=\"#ddd\"/><text x=\"{xl}\" y=\"{yl:.1}\" text-anchor=\"end\">{t:.1}</text>"
            );
            t += 0.2;
        }
        let (x2, y1) = (w - right, y(1.0));
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{y1:.1}\" y2=\"{y1:.1}\" stroke=\"#333\" stroke-dasharray=\"4 3\"/>"
        );
        let colors = ["#4477aa", "#ee7733"];
        let cases = Case::ALL.len() as f64;
        let group = (w - left - right) / cases;
        for (ci, case) in Case::ALL.iter().enumerate() {
            let gx = left + group * ci as f64;
            for (si, shape) in Shape::ALL.iter().enumerate() {
                let v = self
                    .ratios
                    .iter()
                    .find(|r| r.0 == *case && r.1 == *shape)
                    .map(|r| r.2)
                    .unwrap_or(0.0);
                let v = if v.is_finite() { v } else { 0.0 };
                let bw = group * 0.35;
                let x = gx + group * 0.15 + bw * si as f64;
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{v:.2}</text>",
                    y(v),
                    y(0.0) - y(v),
                    colors[si],
                    x + bw / 2.0,
                    y(v) - 4.0
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
                gx + group / 2.0,
                h - bottom + 18.0,
                case.name()
            );
        }
        for (si, shape) in Shape::ALL.iter().enumerate() {
            let x = left + 10.0 + 220.0 * si as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                h - 24.0,
                colors[si],
                x + 18.0,
                h - 14.0,
                shape.name()
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.1's report, as it prints it with --latency and a server that closes.
    const REPORT: &str = "Running 5s test @ http://10.77.0.100:80/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.21ms    2.10ms  41.77ms   94.12%
    Req/Sec     8.25k     1.02k   10.11k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    1.62ms
     99%   12.30ms
  41052 requests in 5.00s, 6.03MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   8208.47
Transfer/sec:      1.21MB
";

    #[test]
    fn wrk_report_is_read_whole() {
        let w = parse_wrk(REPORT).unwrap();
        assert_eq!(w.requests, 41052);
        assert!((w.req_s - 8208.47).abs() < 1e-9);
        assert_eq!(w.errors, 3 + 2 + 4);
        assert!((w.p50_ms - 0.812).abs() < 1e-9);
        assert!((w.p99_ms - 12.3).abs() < 1e-9);
    }

    #[test]
    fn a_report_without_requests_is_an_error() {
        assert!(parse_wrk("unable to connect to 10.77.0.100:80 Connection refused\n").is_err());
        assert!(duration_ms("12").is_err());
        assert!((duration_ms("2.00s").unwrap() - 2000.0).abs() < 1e-9);
    }
}
