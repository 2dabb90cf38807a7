//! End-to-end: a real Prometheus server (Debian's package) scrapes the agent's metrics
//! endpoint, and its query API returns the per-backend packet counters `veer status` shows.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use veer_tests::lab::*;

const WEIGHTS: [u32; 3] = [1, 1, 2];

/// GET over HTTP/1.0 (no chunking), from the current thread's namespace.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

#[test]
fn prometheus_scrapes_per_backend_packets_that_match_veer_status() {
    if !is_root() {
        eprintln!("skipped: the lab needs root (network namespaces, XDP)");
        return;
    }
    let prometheus = Path::new("/usr/bin/prometheus");
    assert!(prometheus.exists(), "prometheus is installed by `cargo xtask setup`");
    let mut lab = Lab::new(&LabOptions {
        weights: WEIGHTS.to_vec(),
    })
    .unwrap();
    let config = lab.write_config(&WEIGHTS).unwrap();
    lab.start_agent(&config).unwrap();
    let vip = SocketAddr::new(VIP4.into(), 80);
    lab.wait_for_vip(vip).unwrap();
    let new_flows_before = per_backend(&lab.status().unwrap(), "new_flows");
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip, 300).unwrap();
    assert_eq!(o.failed, 0);
    lab.assert_no_drops(&watch, &[]);

    let prom_cfg = lab.dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: veer\n    static_configs:\n      - targets: ['127.0.0.1:9477']\n",
    )
    .unwrap();
    let log = std::fs::File::create(lab.dir.join("prometheus.log")).unwrap();
    let child = command_in(&lab.lb, prometheus)
        .unwrap()
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!("--storage.tsdb.path={}", lab.dir.join("prom").display()))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let _prom = ChildGuard(child);

    let want = per_backend(&lab.status().unwrap(), "packets");
    assert!(want.values().all(|&p| p > 0), "every backend carried traffic: {want:?}");
    // New flows as the client counted them: each GET was one new connection, answered by
    // the backend it names. Prometheus must show exactly these on top of the baseline.
    let mut want_flows = new_flows_before.clone();
    for (i, addr) in (0..WEIGHTS.len()).map(|i| (i, format!("{}:{HTTP_PORT}", backend4(i)))) {
        *want_flows.entry(addr).or_default() += o.by_backend.get(&backend_name(i)).copied().unwrap_or(0) as u64;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut got, mut got_flows) = (Default::default(), Default::default());
    while Instant::now() < deadline {
        got = prom_query(&lab, "veer_backend_packets_total%7Bvip%3D%22web4%22%7D");
        got_flows = prom_query(&lab, "veer_backend_new_flows_total%7Bvip%3D%22web4%22%7D");
        if got == want && got_flows == want_flows {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let prom_log = std::fs::read_to_string(lab.dir.join("prometheus.log")).unwrap_or_default();
    let prom_tail = prom_log.lines().rev().take(10).collect::<Vec<_>>().join("\n");
    assert_eq!(
        got, want,
        "Prometheus' view of per-backend packets equals veer status\nprometheus log tail:\n{prom_tail}"
    );
    assert_eq!(
        got_flows, want_flows,
        "Prometheus' per-backend new flows equal the connections the client saw each backend answer"
    );
    let metrics = lab
        .lb
        .run(|| get("127.0.0.1:9477".parse().unwrap(), "/metrics"))
        .unwrap()
        .unwrap();
    for name in [
        "veer_vip_packets_total",
        "veer_backend_live_flows",
        "veer_xdp_packets_total",
        "veer_build_info",
    ] {
        assert!(metrics.contains(&format!("# TYPE {name}")), "metrics expose {name}");
        let samples: Vec<f64> = metrics
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(!samples.is_empty(), "{name} has samples");
        if name != "veer_backend_live_flows" {
            assert!(
                samples.iter().any(|&v| v > 0.0),
                "{name} counted something: {samples:?}"
            );
        }
    }
}

/// A counter of every backend of the first VIP's first pool in `veer status`, by address.
fn per_backend(status: &Value, counter: &str) -> std::collections::BTreeMap<String, u64> {
    status["vips"][0]["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["counters"][counter].as_u64().unwrap(),
            )
        })
        .collect()
}

/// An instant query against the test's Prometheus: value by `backend` label.
fn prom_query(lab: &Lab, query: &str) -> std::collections::BTreeMap<String, u64> {
    let path = format!("/api/v1/query?query={query}");
    let body = lab
        .lb
        .run(move || get("127.0.0.1:9090".parse().unwrap(), &path))
        .unwrap()
        .unwrap_or_default();
    let mut got = std::collections::BTreeMap::new();
    if let Ok(v) = serde_json::from_str::<Value>(&body) {
        for r in v["data"]["result"].as_array().into_iter().flatten() {
            let backend = r["metric"]["backend"].as_str().unwrap_or("").to_string();
            let value: u64 = r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            got.insert(backend, value);
        }
    }
    got
}
