//! The shipped Grafana dashboard (docs/grafana/veer.json) and Prometheus alert rules
//! (docs/prometheus/alerts.yml) against a live agent: every metric they name is in its
//! scrape after real traffic, health checks and a canary; promtool accepts the rules and
//! every dashboard query, and each alert fires on synthetic series of its situation.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use veer_tests::lab::*;

fn docs(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// GET over HTTP/1.0 from the current thread's namespace: (status line, body).
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((head.lines().next().unwrap_or_default().to_string(), body.to_string()))
}

/// Metric names a dashboard or rule file mentions: veer's own and the process metrics.
/// (`up` is Prometheus's own series for every target.)
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if is_name(bytes[i]) && (i == 0 || !is_name(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && is_name(bytes[i]) {
                i += 1;
            }
            let word = &text[start..i];
            if word.starts_with("veer_") || word.starts_with("process_") {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Sample names in a text exposition, and family names from its TYPE lines.
fn exposed(scrape: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.extend(rest.split_whitespace().next().map(str::to_string));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, families)
}

/// Every `expr` of the dashboard (panels, annotations) and its variable queries.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

fn promtool(args: &[&str], file: &Path) {
    let out = Command::new("/usr/bin/promtool")
        .args(args)
        .arg(file)
        .output()
        .expect("promtool is installed by `cargo xtask setup` (Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool {args:?} {}: {}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_and_dashboard_queries_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/prometheus/alerts.yml");
    promtool(&["check", "rules"], &rules);
    // The dashboard's queries, as recording rules (Grafana's variables filled in), so
    // promtool parses every one of them.
    let dashboard: serde_json::Value = serde_json::from_str(&docs("grafana/veer.json")).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$vip", ".*");
        text.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("veer-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(&file, text).unwrap();
    promtool(&["check", "rules"], &file);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `alerts.yml` without its `annotations:` blocks.
fn without_annotations(rules: &str) -> String {
    let mut out = Vec::new();
    let mut skip_deeper_than = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(level) = skip_deeper_than {
            if line.trim().is_empty() || indent > level {
                continue;
            }
            skip_deeper_than = None;
        }
        if line.trim() == "annotations:" {
            skip_deeper_than = Some(indent);
            continue;
        }
        out.push(line);
    }
    out.join("\n")
}

#[test]
fn alert_rules_fire_on_the_situations_they_name_and_not_before() {
    // tests/prometheus/alerts_test.yml: synthetic series per alert, with the times it must
    // stay silent and the labels it must fire with.
    let dir = std::env::temp_dir().join(format!("veer-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("alerts.yml"),
        without_annotations(&docs("prometheus/alerts.yml")),
    )
    .unwrap();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus/alerts_test.yml");
    std::fs::copy(&spec, dir.join("alerts_test.yml")).unwrap();
    let out = Command::new("/usr/bin/promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool is installed by `cargo xtask setup`");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_metric_in_the_dashboard_and_the_alerts_is_scraped_from_a_live_agent() {
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nactive = \"blue\"\n\
         health = {{ kind = \"http\", path = \"/\", interval = \"200ms\", rise = 1, fall = 2 }}\n\
         [[vip.pool]]\nname = \"blue\"\nbackends = [ {} ]\n\
         [[vip.pool]]\nname = \"green\"\nbackends = [ {} ]\n",
        backend_list(0..1, HTTP_PORT),
        backend_list(1..3, HTTP_PORT)
    );
    let Some(lab) = Lab::with_config(3, "", &vips) else {
        return;
    };
    let vip = SocketAddr::new(VIP4.into(), 80);
    lab.wait_for_vip(vip).unwrap();
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip, 100).unwrap();
    assert_eq!(o.failed, 0);
    // A canary run to its end, under load: the deployment-state gauges and the API
    // counters.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = lab.background_load(vip, stop.clone(), 20_000).unwrap();
    let (code, out, err) = lab
        .veer(&[
            "canary",
            "web",
            "green",
            "--steps",
            "50,100",
            "--interval",
            "1s",
            "--wait",
        ])
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let o = load.join().unwrap();
    assert_eq!(code, 0, "canary: {out}{err}");
    assert!(
        o.ok > 0 && o.failed == 0,
        "load through the canary: {} ok, {} failed",
        o.ok,
        o.failed
    );
    // Every request succeeded; no packet was lost on the way either (drop reasons, SYN
    // retransmits), through the canary's flips included.
    lab.assert_no_drops(&watch, &[]);

    let metrics: SocketAddr = "127.0.0.1:9477".parse().unwrap();
    let (status, scrape) = lab.lb.run(move || get(metrics, "/metrics")).unwrap().unwrap();
    assert!(status.contains("200"), "{status}");
    let (health_status, health_body) = lab.lb.run(move || get(metrics, "/healthz")).unwrap().unwrap();
    assert!(
        health_status.contains("200") && health_body.trim() == "ok",
        "{health_status} {health_body}"
    );

    let (samples, families) = exposed(&scrape);
    let mut named = metric_names(&docs("grafana/veer.json"));
    let in_rules = metric_names(&docs("prometheus/alerts.yml"));
    assert!(in_rules.len() >= 8, "{in_rules:?}");
    named.extend(in_rules);
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !samples.contains(*n) && !families.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "named in docs/ but not scraped: {missing:?}\n{scrape}"
    );
    // Named ones have samples, not just a HELP line.
    let empty: Vec<&String> = named
        .iter()
        .filter(|n| !samples.contains(*n) && !samples.iter().any(|s| s.starts_with(&format!("{n}_"))))
        .collect();
    assert!(
        empty.is_empty(),
        "named in docs/ without a sample after traffic and a canary: {empty:?}"
    );

    // The values say what happened: green is active after the canary, which is done,
    // health checks ran and the API counted the CLI's requests.
    for want in [
        "veer_vip_active_pool{vip=\"web\",pool=\"green\"} 1",
        "veer_vip_active_pool{vip=\"web\",pool=\"blue\"} 0",
        "veer_canary_state{vip=\"web\",pool=\"green\",state=\"done\"} 1",
        "veer_canary_step{vip=\"web\",pool=\"green\"} 2",
        "veer_pool_healthy_backends{vip=\"web\",pool=\"green\"} 2",
        "veer_flow_table_capacity 65536",
    ] {
        assert!(
            scrape.lines().any(|l| l == want),
            "{want:?} not in the scrape:\n{scrape}"
        );
    }
    let sample = |prefix: &str| -> f64 {
        scrape
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(sample("veer_health_checks_total{vip=\"web\"") >= 3.0, "{scrape}");
    assert!(
        sample("veer_api_requests_total{method=\"POST\",route=\"/v1/canary\",code=\"200\"}") >= 1.0,
        "{scrape}"
    );
    assert!(sample("process_resident_memory_bytes") > 1e6, "{scrape}");
}
