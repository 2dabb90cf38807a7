//! The agent's own costs, measured side by side for two `veer` builds in one run when
//! `--baseline BIN` names an older one: resident memory at idle with 100 VIPs × 100
//! backends (anonymous apart from file-backed and shared), and the time `veer status` and a
//! metrics scrape take over 1,048,576 live flows. Cases alternate (A B B A ...), so a
//! machine that slows down taxes both alike.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use serde_json::json;
use veer_tests::lab::*;

/// Repetitions per build of each measurement.
const REPS: usize = 2;
/// Timed calls per repetition.
const CALLS: usize = 10;
/// Where every lab config puts the metrics listener (inside the balancer namespace).
const METRICS: &str = "127.0.0.1:9477";

/// One build's figures (medians over the repetitions).
#[derive(Default, Clone)]
struct Figures {
    anon_mb: Vec<f64>,
    anon_after_change_mb: Vec<f64>,
    file_mb: Vec<f64>,
    shmem_mb: Vec<f64>,
    status_ms: Vec<f64>,
    scrape_ms: Vec<f64>,
    /// The slowest API call (a trace, which takes the agent's lock) while they ran.
    api_worst_ms: Vec<f64>,
    flows: usize,
}

pub struct Report {
    builds: Vec<(String, PathBuf, Figures)>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

pub fn run(baseline: Option<&Path>) -> anyhow::Result<Report> {
    let current = veer_bin()?;
    let mut builds = vec![("this build".to_string(), current, Figures::default())];
    if let Some(b) = baseline {
        ensure!(b.is_file(), "--baseline {}: no such file", b.display());
        builds.insert(0, ("baseline".to_string(), b.to_path_buf(), Figures::default()));
    }
    let n = builds.len();
    for rep in 0..REPS {
        for i in 0..n {
            // A B, then B A: neither build always goes first.
            let i = if rep % 2 == 0 { i } else { n - 1 - i };
            let (name, bin, fig) = &mut builds[i];
            eprintln!("agent bench: {name}, repetition {} of {REPS}", rep + 1);
            let ((anon, file, shmem), after_change) =
                idle_memory(bin).with_context(|| format!("{name}: idle memory"))?;
            fig.anon_mb.push(anon);
            fig.anon_after_change_mb.push(after_change);
            fig.file_mb.push(file);
            fig.shmem_mb.push(shmem);
            let (status, scrape, worst, flows) = full_table(bin).with_context(|| format!("{name}: 1M live flows"))?;
            fig.status_ms.extend(status);
            fig.scrape_ms.extend(scrape);
            fig.api_worst_ms.push(worst);
            fig.flows = flows;
        }
    }
    Ok(Report { builds })
}

/// The config of 100 VIPs × 100 backends (one pool each), on the lab's agent section.
fn hundred_by_hundred(lab: &Lab) -> String {
    let mut text = lab
        .agent_section()
        .replace("flow_capacity = 65536", "flow_capacity = 65536\nmax_backends = 16384");
    for v in 0..100u32 {
        let backends: Vec<String> = (0..100u32)
            .map(|b| {
                format!(
                    "{{ address = \"10.{}.{}.{}:8080\" }}",
                    100 + v / 50,
                    (v % 50) * 4 + b / 250,
                    b % 250 + 1
                )
            })
            .collect();
        text.push_str(&format!(
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"10.200.{}.{}:80\"\nactive = \"p\"\n[[vip.pool]]\nname = \"p\"\nbackends = [ {} ]\n",
            v / 250,
            v % 250 + 1,
            backends.join(", ")
        ));
    }
    text
}

/// kB fields of /proc/PID/status, in MB.
fn rss(pid: u32) -> anyhow::Result<(f64, f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mb = |key: &str| -> anyhow::Result<f64> {
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        Ok(kb / 1024.0)
    };
    Ok((mb("RssAnon:")?, mb("RssFile:")?, mb("RssShmem:")?))
}

/// An agent with 100 VIPs × 100 backends at idle, after one `veer status` (the status
/// document and whatever the agent keeps for it count too): resident memory by kind. Then
/// once more after a `veer apply -f` that changes a weight in every VIP (100 tables
/// rebuilt): returns (idle, after the change).
fn idle_memory(bin: &Path) -> anyhow::Result<((f64, f64, f64), f64)> {
    let mut lab = Lab::new(&LabOptions { weights: vec![1] })?;
    let text = hundred_by_hundred(&lab);
    let config = lab.write_config_text("big.toml", &text)?;
    lab.start_agent_bin(bin, &config)?;
    let pid = lab.agent.as_ref().and_then(|a| a.pid()).context("agent pid")?;
    status(bin, &lab.socket())?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss(pid)?;
    let changed = lab.write_config_text("big2.toml", &text.replace(":8080\" }, ", ":8080\", weight = 50 }, "))?;
    let out = std::process::Command::new(bin)
        .arg("--socket")
        .arg(lab.socket())
        .args(["apply", "-f"])
        .arg(&changed)
        .output()?;
    ensure!(
        out.status.success(),
        "veer apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    Ok((idle, rss(pid)?.0))
}

/// `veer status --json` of build `bin` (the CLI's start included, as an operator sees it).
fn status(bin: &Path, socket: &Path) -> anyhow::Result<(f64, serde_json::Value)> {
    let t = Instant::now();
    let out = std::process::Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(["status", "--json"])
        .output()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(
        out.status.success(),
        "veer status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((ms, serde_json::from_slice(&out.stdout)?))
}

/// One GET /metrics from inside the balancer namespace; returns ms and the body's length.
fn scrape(lab: &Lab) -> anyhow::Result<(f64, usize)> {
    lab.lb.run(|| -> anyhow::Result<(f64, usize)> {
        let addr: SocketAddr = METRICS.parse()?;
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: veer\r\nConnection: close\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            out.starts_with(b"HTTP/1.1 200"),
            "scrape: {}",
            String::from_utf8_lossy(&out)
        );
        Ok((ms, out.len()))
    })?
}

/// One API call that takes the agent's lock (a trace) on the socket; returns ms.
fn api_call(socket: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /v1/trace/web4?src=10.77.0.10:1234 HTTP/1.1\r\nHost: veer\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    ensure!(
        out.starts_with(b"HTTP/1.1 200"),
        "trace: {}",
        String::from_utf8_lossy(&out)
    );
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// An agent whose 1,048,576-flow connection table is full of live flows of one VIP:
/// `CALLS` status calls and `CALLS` scrapes, each timed, after one of each to warm up,
/// while another thread makes API calls that take the agent's lock (the slowest is
/// returned too: a scan must never hold them up).
fn full_table(bin: &Path) -> anyhow::Result<(Vec<f64>, Vec<f64>, f64, usize)> {
    let mut lab = Lab::new(&LabOptions { weights: vec![1; 3] })?;
    let text = format!(
        "{}\n[[vip]]\nname = \"web4\"\naddress = \"{VIP4}:80\"\nprotocol = \"tcp\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n",
        lab.agent_section()
            .replace("flow_capacity = 65536", "flow_capacity = 1048576"),
        backend_list(0..3, HTTP_PORT)
    );
    let config = lab.write_config_text("veer.toml", &text)?;
    lab.start_agent_bin(bin, &config)?;
    let socket = lab.socket();
    let (_, st) = status(bin, &socket)?;
    let ids: Vec<u32> = st["vips"][0]["pools"][0]["backends"]
        .as_array()
        .context("status names no backends")?
        .iter()
        .filter_map(|b| b["id"].as_u64().map(|i| i as u32))
        .collect();
    let filled = fill_connection_table(Path::new(veer::dataplane::PIN_DIR), 0, &ids)?;
    // Warm-up, and the counts must be whole: a fast answer that misses flows is no answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, st) = status(bin, &socket)?;
        if st["vips"][0]["counters"]["live_flows"].as_u64() == Some(filled as u64) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "status counts {} live flows of {filled}",
            st["vips"][0]["counters"]["live_flows"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    scrape(&lab)?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (done, socket) = (done.clone(), socket.clone());
        std::thread::spawn(move || -> anyhow::Result<f64> {
            let mut worst: f64 = 0.0;
            for _ in 0..100_000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                worst = worst.max(api_call(&socket)?);
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(worst)
        })
    };
    let mut status_ms = Vec::new();
    let mut scrape_ms = Vec::new();
    for _ in 0..CALLS {
        let (ms, st) = status(bin, &socket)?;
        ensure!(
            st["vips"][0]["counters"]["live_flows"].as_u64() == Some(filled as u64),
            "status counted {} of {filled} live flows",
            st["vips"][0]["counters"]["live_flows"]
        );
        status_ms.push(ms);
        scrape_ms.push(scrape(&lab)?.0);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = prober
        .join()
        .map_err(|_| anyhow::anyhow!("the API prober panicked"))??;
    Ok((status_ms, scrape_ms, worst, filled))
}

impl Report {
    pub fn print(&self, json_out: bool) {
        if json_out {
            let builds: Vec<_> = self
                .builds
                .iter()
                .map(|(name, bin, f)| {
                    json!({
                        "build": name, "binary": bin.display().to_string(),
                        "idle_100x100": { "rss_anon_mb": median(&f.anon_mb), "rss_anon_after_change_mb": median(&f.anon_after_change_mb), "rss_file_mb": median(&f.file_mb), "rss_shmem_mb": median(&f.shmem_mb), "samples": f.anon_mb },
                        "live_flows": f.flows,
                        "status_ms": { "median": median(&f.status_ms), "max": max(&f.status_ms), "samples": f.status_ms.len() },
                        "scrape_ms": { "median": median(&f.scrape_ms), "max": max(&f.scrape_ms), "samples": f.scrape_ms.len() },
                        "api_call_during_scans_worst_ms": max(&f.api_worst_ms),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "agent": builds })).unwrap_or_default()
            );
            return;
        }
        println!(
            "\nagent ({REPS} repetitions per build, alternating; medians, max in brackets; targets: anonymous <= 50 MB, status and scrape <= 50 ms; API calls meanwhile never wait for a scan)"
        );
        println!(
            "  {:<12} {:>10} {:>14} {:>10} {:>10} {:>22} {:>22} {:>16}",
            "build",
            "anon MB",
            "anon after Δ",
            "file MB",
            "shmem MB",
            "veer status ms (1M)",
            "metrics scrape ms (1M)",
            "API call ms max"
        );
        for (name, _, f) in &self.builds {
            println!(
                "  {:<12} {:>10.1} {:>14.1} {:>10.1} {:>10.1} {:>14.1} [{:>5.1}] {:>14.1} [{:>5.1}] {:>16.1}",
                name,
                median(&f.anon_mb),
                median(&f.anon_after_change_mb),
                median(&f.file_mb),
                median(&f.shmem_mb),
                median(&f.status_ms),
                max(&f.status_ms),
                median(&f.scrape_ms),
                max(&f.scrape_ms),
                max(&f.api_worst_ms)
            );
        }
        if let [(_, _, a), (_, _, b)] = &self.builds[..] {
            println!(
                "  this build / baseline: anonymous memory {:.2}x, status {:.3}x, scrape {:.3}x (same run)",
                median(&b.anon_mb) / median(&a.anon_mb),
                median(&b.status_ms) / median(&a.status_ms),
                median(&b.scrape_ms) / median(&a.scrape_ms)
            );
        }
    }
}
