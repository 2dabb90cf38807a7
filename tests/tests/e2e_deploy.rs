//! End-to-end deployments under load: blue/green switch, splits by flow and by client,
//! A/B client networks, rollback. Blue = b1, b2; green = b3, b4.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use veer_tests::lab::*;

const BLUE: [&str; 2] = ["b1", "b2"];
const GREEN: [&str; 2] = ["b3", "b4"];

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}

fn lab() -> Option<Lab> {
    lab_with("")
}

/// A lab whose VIP has HTTP health checks (200 ms interval, fall 3, rise 2).
fn lab_checked() -> Option<Lab> {
    lab_with(
        "health = { kind = \"http\", path = \"/healthz\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 3 }\n",
    )
}

fn lab_with(health: &str) -> Option<Lab> {
    let lab = Lab::with_config(
        4,
        "",
        &blue_green("web", &format!("{VIP4}:80"), "tcp", HTTP_PORT, health),
    )?;
    lab.wait_for_vip(vip()).expect("VIP answers");
    Some(lab)
}

/// A VIP with pools blue (backends 1, 2) and green (3, 4), blue active.
fn blue_green(name: &str, address: &str, protocol: &str, port: u16, extra: &str) -> String {
    format!(
        "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nprotocol = \"{protocol}\"\nactive = \"blue\"\n{extra}\n[[vip.pool]]\nname = \"blue\"\nbackends = [ {} ]\n\n[[vip.pool]]\nname = \"green\"\nbackends = [ {} ]\n",
        backend_list(0..2, port),
        backend_list(2..4, port)
    )
}

/// Continuous new-connection and keep-alive load for the duration of a scenario.
struct Load {
    stop: Arc<AtomicBool>,
    handles: Option<[std::thread::JoinHandle<Outcome>; 2]>,
    watch: Watch,
}

impl Load {
    fn start(lab: &Lab) -> Load {
        let watch = lab.watch().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handles = lab.mixed_load(vip(), stop.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Load {
            stop,
            handles: Some(handles),
            watch,
        }
    }

    /// Stops the load and asserts that no request failed and no packet was lost on the way
    /// (drop reasons, SYN retransmits); returns the request count.
    fn finish(self, lab: &Lab, what: &str) -> usize {
        self.finish_allowing(lab, what, &[])
    }

    /// [`Load::finish`], tolerating the growth `allowed` names (see `Lab::assert_no_drops`).
    fn finish_allowing(mut self, lab: &Lab, what: &str, allowed: &[&str]) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for h in self.handles.take().unwrap() {
            let o = h.join().unwrap();
            assert_eq!(
                o.failed,
                0,
                "{what}: requests failed under load: {:?}\n{}",
                o.errors,
                lab.agent_log()
            );
            total += o.ok;
        }
        lab.assert_no_drops(&self.watch, allowed);
        println!("{what}: {total} requests under continuous load (new + keep-alive), 0 failed");
        total
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `veer switch VIP POOL --wait --drain-timeout TIMEOUT` in its own process.
fn spawn_switch_wait(lab: &Lab, vip: &str, pool: &str, timeout: &str) -> std::process::Child {
    lab.spawn_veer(&["switch", vip, pool, "--wait", "--drain-timeout", timeout])
}

fn green_share(o: &Outcome) -> f64 {
    let green: usize = GREEN.iter().map(|g| o.by_backend.get(*g).copied().unwrap_or(0)).sum();
    green as f64 * 100.0 / (o.ok.max(1)) as f64
}

#[test]
fn switch_blue_to_green_fails_no_request_and_the_blue_stream_finishes_on_blue() {
    let Some(lab) = lab() else { return };
    let mut stream = lab.connect(vip()).unwrap();
    let stream_backend = keepalive_get(&mut stream).unwrap();
    assert!(BLUE.contains(&stream_backend.as_str()));
    let load = Load::start(&lab);
    // the switch, waiting for blue to drain, in its own process
    let mut wait = spawn_switch_wait(&lab, "web", "green", "30s");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.status().unwrap()["vips"][0]["active"] != "green" {
        assert!(Instant::now() < deadline, "the switch never became active");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = lab.http_load(vip(), 300).unwrap();
    assert_eq!(after.failed, 0, "{:?}", after.errors);
    assert_eq!(
        green_share(&after),
        100.0,
        "every new connection goes to green: {:?}",
        after.by_backend
    );
    for _ in 0..20 {
        assert_eq!(
            keepalive_get(&mut stream).unwrap(),
            stream_backend,
            "the long-lived stream stays on blue"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        wait.try_wait().unwrap().is_none(),
        "--wait must not return while the blue stream is open"
    );
    let status = lab.status().unwrap();
    let blue = &status["vips"][0]["pools"][0];
    assert_eq!(blue["role"], "draining", "{blue}");
    drop(stream);
    let closed_at = Instant::now();
    let deadline = closed_at + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = wait.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "--wait did not return after blue drained");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "--wait exits 0 once blue has no live flow");
    println!(
        "switch: --wait returned {:?} after the blue stream closed",
        closed_at.elapsed()
    );
    load.finish(&lab, "switch blue -> green");
}

#[test]
fn drain_timeout_exits_3_with_the_flows_left() {
    let Some(lab) = lab() else { return };
    let mut stream = lab.connect(vip()).unwrap();
    keepalive_get(&mut stream).unwrap();
    let (code, _, err) = lab
        .veer(&["switch", "web", "green", "--wait", "--drain-timeout", "1s"])
        .unwrap();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("1 live flows left on blue"), "{err}");
}

#[test]
fn split_ten_percent_by_flow_sends_ten_percent_of_new_connections() {
    let Some(lab) = lab() else { return };
    let load = Load::start(&lab);
    lab.veer_ok(&["split", "web", "green", "10%"]);
    let o = lab.http_load(vip(), 2500).unwrap();
    assert_eq!(o.failed, 0, "{:?}", o.errors);
    let share = green_share(&o);
    assert!(
        (share - 10.0).abs() <= 2.0,
        "green got {share:.1}% of 2500 new connections, want 10 ± 2"
    );
    lab.veer_ok(&["rollback", "web"]);
    let o = lab.http_load(vip(), 300).unwrap();
    assert_eq!(green_share(&o), 0.0, "after rollback no new connection goes to green");
    load.finish(&lab, "split 10% by flow");
}

#[test]
fn split_by_client_is_sticky_and_raising_it_only_moves_clients_to_green() {
    let Some(lab) = lab() else { return };
    let load = Load::start(&lab);
    let clients = lab.add_client_aliases(24).unwrap();
    let pools_seen = |lab: &Lab| -> BTreeMap<std::net::IpAddr, BTreeSet<&'static str>> {
        let clients = clients.clone();
        lab.client
            .run(move || {
                let mut seen: BTreeMap<std::net::IpAddr, BTreeSet<&'static str>> = BTreeMap::new();
                for c in &clients {
                    for _ in 0..8 {
                        let name = http_get_from(*c, vip(), Duration::from_secs(3)).expect("request");
                        let pool = if GREEN.contains(&name.as_str()) {
                            "green"
                        } else {
                            "blue"
                        };
                        seen.entry(*c).or_default().insert(pool);
                    }
                }
                seen
            })
            .unwrap()
    };
    // The pool the agent says each client belongs to (the kernel's arithmetic, over a port
    // no connection used): the observed pools must be exactly these, not merely plausible.
    let traced = |lab: &Lab| -> BTreeMap<std::net::IpAddr, String> {
        clients
            .iter()
            .map(|c| {
                let out = lab.veer_ok(&["--json", "trace", "web", &format!("{c}:1")]);
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                (
                    *c,
                    v["pool"]
                        .as_str()
                        .unwrap_or_else(|| panic!("trace names a pool: {v}"))
                        .to_string(),
                )
            })
            .collect()
    };
    lab.veer_ok(&["split", "web", "green", "10", "--by", "client"]);
    let at10 = pools_seen(&lab);
    let want10 = traced(&lab);
    lab.veer_ok(&["split", "web", "green", "30", "--by", "client"]);
    let at30 = pools_seen(&lab);
    let want30 = traced(&lab);
    for (c, pools) in at10.iter().chain(at30.iter()) {
        assert_eq!(pools.len(), 1, "client {c} saw both pools: {pools:?}");
    }
    for (seen, want, pct) in [(&at10, &want10, 10), (&at30, &want30, 30)] {
        for (c, pools) in seen {
            assert!(
                pools.contains(want[c].as_str()),
                "at {pct}%: client {c} reached {pools:?}, its hash puts it in {}",
                want[c]
            );
        }
    }
    let green10: BTreeSet<_> = at10
        .iter()
        .filter(|(_, p)| p.contains("green"))
        .map(|(c, _)| *c)
        .collect();
    let green30: BTreeSet<_> = at30
        .iter()
        .filter(|(_, p)| p.contains("green"))
        .map(|(c, _)| *c)
        .collect();
    assert!(
        green10.is_subset(&green30),
        "raising the split moved a client back to blue: {green10:?} vs {green30:?}"
    );
    assert!(
        green30.len() >= green10.len() && !green30.is_empty(),
        "30% of 24 clients: some reach green"
    );
    println!(
        "split by client: {} of 24 clients on green at 10%, {} at 30%",
        green10.len(),
        green30.len()
    );
    // The first reply to each new, directly connected client alias is handed to the stack
    // to resolve its neighbour entry: at most one per client.
    load.finish_allowing(&lab, "split by client", &["pass_no_neigh<=24"]);
}

#[test]
fn clients_inside_an_ab_network_always_reach_the_variant() {
    let Some(lab) = lab() else { return };
    let load = Load::start(&lab);
    let clients = lab.add_client_aliases(24).unwrap();
    // 10.77.0.160/28 = .160-.175: aliases 10..23 inside, 0..9 outside
    lab.veer_ok(&["ab", "web", "green", "--cidr", "10.77.0.160/28"]);
    let results = lab
        .client
        .run(move || {
            clients
                .iter()
                .map(|c| {
                    (
                        *c,
                        (0..6)
                            .map(|_| http_get_from(*c, vip(), Duration::from_secs(3)).expect("request"))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    for (c, names) in results {
        let inside = matches!(c, std::net::IpAddr::V4(a) if a.octets()[3] >= 160 && a.octets()[3] < 176);
        for n in names {
            assert_eq!(
                GREEN.contains(&n.as_str()),
                inside,
                "client {c} (inside: {inside}) reached {n}"
            );
        }
    }
    load.finish_allowing(&lab, "A/B CIDR rule", &["pass_no_neigh<=24"]);
}

#[test]
fn split_dry_run_predicts_the_moved_share_and_apply_matches_it() {
    let Some(lab) = lab() else { return };
    let load = Load::start(&lab);
    let (code, out, err) = lab
        .veer(&["--json", "split", "web", "green", "25", "--dry-run"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let dry: serde_json::Value = serde_json::from_str(&out).unwrap();
    let predicted = dry["moved_pct"]["web"].as_f64().unwrap();
    assert!(
        (predicted - 25.0).abs() < 0.01,
        "disjoint pools: a 25% split moves 25% of the hash space: {predicted}"
    );
    assert!(
        lab.status().unwrap()["vips"][0]["split"].is_null(),
        "dry run changed nothing"
    );
    lab.veer_ok(&["--json", "split", "web", "green", "25"]);
    // What moved is measured by real connections, not by the planner that predicted it.
    let o = lab.http_load(vip(), 2000).unwrap();
    let share = green_share(&o);
    assert!(
        (share - predicted).abs() <= 3.0,
        "measured {share:.1}% vs predicted {predicted:.1}%"
    );
    load.finish(&lab, "dry run then split");
}

#[test]
fn canary_into_a_healthy_pool_reaches_100_percent_and_becomes_a_switch() {
    let Some(lab) = lab_checked() else { return };
    let load = Load::start(&lab);
    let mut canary = lab.spawn_veer(&[
        "canary",
        "web",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "600ms",
        "--wait",
    ]);
    // Every step is seen in the agent's state, in order, before the canary becomes a switch.
    let mut steps: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = canary.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "canary --wait did not return");
        if let Some(p) = lab.status().unwrap()["vips"][0]["split"]["percent"].as_f64()
            && steps.last() != Some(&p)
        {
            steps.push(p);
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let err = std::io::read_to_string(canary.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(0), "{err}\n{}", lab.agent_log());
    assert_eq!(steps, [10.0, 50.0], "the canary's steps as the agent applied them");
    let v = &lab.status().unwrap()["vips"][0];
    assert_eq!(v["active"], "green", "{v}");
    assert_eq!(v["previous_active"], "blue");
    assert_eq!(v["canary"]["outcome"]["state"], "done");
    assert_eq!(green_share(&lab.http_load(vip(), 200).unwrap()), 100.0);
    load.finish(&lab, "canary to 100%");
}

#[test]
fn canary_into_a_pool_failing_its_checks_rolls_back_with_exit_4() {
    let Some(lab) = lab_checked() else { return };
    for i in 2..4 {
        lab.servers[i].health_status.store(503, Ordering::Relaxed);
    }
    // Green is failing before the canary starts: both its backends are down by health and
    // the pool has failed open (a canary into it must still roll back). Starting earlier
    // would race the two backends going down one after the other, and a keep-alive
    // connection on the first one would be re-chosen mid-stream (down re-chooses flows).
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.status().unwrap()["vips"][0]["pools"][1]["all_down_fail_open"] != true {
        assert!(Instant::now() < deadline, "green never failed its checks");
        std::thread::sleep(Duration::from_millis(50));
    }
    let load = Load::start(&lab);
    let (code, out, err) = lab
        .veer(&[
            "--json",
            "canary",
            "web",
            "green",
            "--steps",
            "10,50,100",
            "--interval",
            "3s",
            "--wait",
        ])
        .unwrap();
    assert_eq!(code, 4, "stdout {out} stderr {err}");
    // NDJSON: every line an object; the result, then the error with its exit code.
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    let result = lines.iter().find(|l| l["event"] == "result").expect("a result line");
    assert_eq!(result["outcome"]["state"], "rolled_back", "{result}");
    assert_eq!(lines.last().unwrap()["exit_code"], 4, "{out}");
    let v = &lab.status().unwrap()["vips"][0];
    assert!(v["split"].is_null(), "rolled back to 0%: {v}");
    assert_eq!(v["active"], "blue");
    assert_eq!(v["canary"]["outcome"]["state"], "rolled_back");
    assert!(
        v["canary"]["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("failing health checks"),
        "{v}"
    );
    assert_eq!(green_share(&lab.http_load(vip(), 300).unwrap()), 0.0);
    load.finish(&lab, "canary rolled back");
}

#[test]
fn a_canary_resumes_after_an_agent_restart() {
    let Some(mut lab) = lab_checked() else { return };
    lab.veer_ok(&["canary", "web", "green", "--steps", "20,100", "--interval", "6s"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.status().unwrap()["vips"][0]["split"]["percent"] != 20.0 {
        assert!(Instant::now() < deadline, "the canary's first step never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.agent.as_mut().unwrap().kill_hard();
    let config = lab.dir.join("veer.toml");
    lab.start_agent(&config).unwrap();
    let v = &lab.status().unwrap()["vips"][0];
    assert_eq!(v["canary"]["outcome"]["state"], "running", "{v}");
    assert_eq!(v["split"]["percent"], 20.0);
    let start = Instant::now();
    while lab.status().unwrap()["vips"][0]["canary"]["outcome"]["state"] == "running" {
        assert!(start.elapsed() < Duration::from_secs(15), "canary did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.status().unwrap()["vips"][0]["active"], "green");
}

#[test]
fn rollout_over_every_backend_fails_no_request_and_runs_every_hook() {
    let Some(lab) = lab_checked() else { return };
    let hooks = lab.dir.join("hooks.log");
    let load = Load::start(&lab);
    // Each hook also records what the agent said at that moment.
    let exec = format!(
        "{} --socket {} --json status > {}/at-{{addr}}.json && echo {{addr}} >> {}",
        veer_bin().unwrap().display(),
        lab.socket().display(),
        lab.dir.display(),
        hooks.display()
    );
    let (code, out, err) = lab
        .veer(&[
            "rollout",
            "web",
            "blue",
            "--exec",
            &exec,
            "--batch",
            "1",
            "--wait",
            "--drain-timeout",
            "20s",
        ])
        .unwrap();
    assert_eq!(code, 0, "{err}\n{}", lab.agent_log());
    // Off a terminal, a line per phase of each batch.
    println!("rollout, stdout piped:\n{out}");
    for (i, phase) in [
        (1, "draining"),
        (1, "running the hook"),
        (1, "healthy"),
        (2, "draining"),
        (2, "healthy"),
    ] {
        let addr = format!("{}:{HTTP_PORT}", backend4(i - 1));
        let want = format!("web: rollout of blue: batch {i}/2 ({addr}): {phase}");
        assert!(out.lines().any(|l| l.starts_with(&want)), "{want:?} in {out}");
    }
    load.finish(&lab, "rollout over blue");
    let ran = std::fs::read_to_string(&hooks).unwrap();
    for i in 0..2 {
        let addr = format!("{}:{HTTP_PORT}", backend4(i));
        assert!(ran.contains(&addr), "hook ran for b{}: {ran}", i + 1);
        // When its hook ran, this backend was drained to 0 live flows and it alone (one
        // batch at a time) was out of service.
        let at: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(lab.dir.join(format!("at-{addr}.json"))).unwrap()).unwrap();
        for b in at["vips"][0]["pools"][0]["backends"].as_array().unwrap() {
            if b["address"] == addr.as_str() {
                assert_eq!(b["admin"], "drain", "{addr} drained before its hook: {b}");
                assert_eq!(
                    b["counters"]["live_flows"], 0,
                    "{addr} had no live flow at its hook: {b}"
                );
            } else {
                assert_eq!(b["admin"], "ready", "only {addr}'s batch was out at its hook: {b}");
            }
        }
    }
    let v = &lab.status().unwrap()["vips"][0];
    for b in v["pools"][0]["backends"].as_array().unwrap() {
        assert_eq!(b["admin"], "ready", "{b}");
    }
}

#[test]
fn a_failing_rollout_hook_stops_the_rollout_and_leaves_the_rest_untouched() {
    let Some(lab) = lab_checked() else { return };
    let (code, _, err) = lab
        .veer(&[
            "rollout",
            "web",
            "blue",
            "--exec",
            "exit 7",
            "--batch",
            "1",
            "--drain-timeout",
            "20s",
        ])
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed") && err.contains("stays drained"), "{err}");
    let v = &lab.status().unwrap()["vips"][0];
    assert_eq!(v["pools"][0]["backends"][0]["admin"], "drain");
    assert_eq!(v["pools"][0]["backends"][1]["admin"], "ready", "the rest untouched");
}

/// UDP flows never close, so live flows are those used within `agent.udp_idle`: `switch
/// --wait` on a UDP VIP waits while a client keeps its flow busy and returns once the old
/// pool's flows have gone idle, and that busy flow stays on its old backend meanwhile.
#[test]
fn switch_wait_on_a_udp_vip_returns_once_the_old_pools_flows_go_idle() {
    let vips = blue_green("dns", &format!("{VIP4}:53"), "udp", UDP_PORT, "");
    let Some(lab) = Lab::with_config(4, "udp_idle = \"1s\"\n", &vips) else {
        return;
    };
    let vip = SocketAddr::new(VIP4.into(), 53);
    for n in 0..20 {
        let who = lab.udp(vip, b"q").unwrap_or_else(|e| panic!("request {n}: {e:#}"));
        assert!(BLUE.contains(&who.as_str()), "request {n} answered by {who}");
    }
    // One client keeps a flow busy: a datagram every 100 ms from one socket, for 2.5 s.
    let stream = lab
        .client
        .spawn(move || -> anyhow::Result<Vec<String>> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut answers = Vec::new();
            for _ in 0..25 {
                s.send_to(b"q", vip)?;
                let mut buf = [0u8; 64];
                let (n, _) = s.recv_from(&mut buf)?;
                answers.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(answers)
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let blue_live = lab.status().unwrap()["vips"][0]["pools"][0]["counters"]["live_flows"]
        .as_u64()
        .unwrap();
    assert!(blue_live >= 2, "recent UDP flows count as live: {blue_live}");
    let started = Instant::now();
    let mut wait = spawn_switch_wait(&lab, "dns", "green", "20s");
    std::thread::sleep(Duration::from_millis(300));
    for n in 0..20 {
        let who = lab
            .udp(vip, b"q")
            .unwrap_or_else(|e| panic!("request {n} after the switch: {e:#}"));
        assert!(
            GREEN.contains(&who.as_str()),
            "new flow {n} after the switch answered by {who}"
        );
    }
    let answers = stream.join().unwrap().unwrap();
    let stream_done = Instant::now();
    assert!(
        wait.try_wait().unwrap().is_none(),
        "--wait returned while a blue UDP flow was busy ({:?} after the switch)",
        started.elapsed()
    );
    assert!(
        answers.iter().all(|a| a == &answers[0]) && BLUE.contains(&answers[0].as_str()),
        "the busy flow stays on its blue backend: {answers:?}"
    );
    let code = loop {
        if let Some(s) = wait.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            stream_done.elapsed() < Duration::from_secs(8),
            "--wait did not return after the blue flows went idle"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "--wait exits 0 once blue has no live flow");
    let after = stream_done.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "--wait returned {after:?} after the last datagram, before udp_idle (1s) passed"
    );
    println!("udp switch: --wait returned {after:?} after the last datagram of the busy flow (udp_idle 1s)");
}

/// Three long-lived connections to the active pool, checked to be on `pool`'s backends.
fn three_streams(lab: &Lab, pool: &[&str]) -> Vec<std::net::TcpStream> {
    (0..3)
        .map(|_| {
            let mut s = lab.connect(vip()).unwrap();
            let who = keepalive_get(&mut s).unwrap();
            assert!(pool.contains(&who.as_str()), "a stream reached {who}");
            s
        })
        .collect()
}

/// Closes the streams one per second, then returns the waiting process's exit code,
/// stdout, and how long it ran.
fn close_one_per_second(
    mut streams: Vec<std::net::TcpStream>,
    wait: std::process::Child,
) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    while let Some(s) = streams.pop() {
        std::thread::sleep(Duration::from_secs(1));
        drop(s);
    }
    let out = wait.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// A CI job pipes stdout: there, `switch --wait` prints one line per change of the old
/// pool's live flows (3, 2, 1, drained) while three long-lived connections keep the drain
/// open for 3 s; with --json every line is a JSON object, the result last.
#[test]
fn switch_wait_off_a_terminal_prints_a_line_per_change_and_json_lines_with_json() {
    let Some(lab) = lab() else { return };
    let watch = lab.watch().unwrap();
    let streams = three_streams(&lab, &BLUE);
    let wait = lab.spawn_veer(&["switch", "web", "green", "--wait", "--drain-timeout", "20s"]);
    let (code, out, err, took) = close_one_per_second(streams, wait);
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    println!("switch --wait, stdout piped, held {took:?}:\n{out}");
    assert!(took >= Duration::from_secs(3), "held {took:?}");
    let progress: Vec<&&str> = lines.iter().filter(|l| l.contains("blue")).collect();
    assert!(progress.len() >= 3, "at least 3 progress lines: {lines:?}");
    for want in [
        "web: draining blue: 3 live flows",
        "web: draining blue: 2 live flows",
        "web: draining blue: 1 live flow",
        "web: blue drained (0 live flows)",
    ] {
        assert!(lines.contains(&want), "{want:?} in {lines:?}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| **l == "web: draining blue: 2 live flows")
            .count(),
        1,
        "one line per change, not per poll: {lines:?}"
    );

    // And back, as NDJSON.
    let streams = three_streams(&lab, &GREEN);
    let wait = lab.spawn_veer(&["--json", "switch", "web", "blue", "--wait", "--drain-timeout", "20s"]);
    let (code, out, err, _) = close_one_per_second(streams, wait);
    assert_eq!(code, Some(0), "{out}{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{out}")))
        .collect();
    let live: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "drain")
        .map(|e| e["live_flows"].as_u64().unwrap())
        .collect();
    assert_eq!(live, [3, 2, 1, 0], "one drain event per change: {out}");
    assert_eq!(events[0]["event"], "applied", "{out}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "result", "{out}");
    assert_eq!(last["drain"]["live_flows_left"], 0, "{last}");
    lab.assert_no_drops(&watch, &[]);
}

/// `--gate CMD` runs at the end of every step; the gate fails at step 2 (50%): the canary
/// rolls back to 0% with exit 4 and the gate's words, under load without a failed request.
#[test]
fn a_canary_whose_gate_fails_at_step_2_rolls_back_with_exit_4_and_fails_no_request() {
    let Some(lab) = lab_checked() else { return };
    let count = lab.dir.join("gate-runs");
    let gate = format!(
        "n=$(cat {f} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {f}; \
         echo \"$VEER_STEP $VEER_PERCENT\" >> {f}.log; \
         if [ $n -ge 2 ]; then echo \"error budget burned at $VEER_PERCENT%\" >&2; exit 1; fi",
        f = count.display()
    );
    let load = Load::start(&lab);
    let canary = lab.spawn_veer(&[
        "canary",
        "web",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "700ms",
        "--gate",
        &gate,
    ]);
    let out = canary.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("canary --gate, stdout piped:\n{stdout}");
    assert_eq!(out.status.code(), Some(4), "{stdout}{stderr}\n{}", lab.agent_log());
    assert!(
        stderr.contains("gate failed at step 2 (50%)") && stderr.contains("error budget burned at 50%"),
        "the error names the step and the gate's words: {stderr}"
    );
    let runs = std::fs::read_to_string(count.with_extension("log")).unwrap();
    assert_eq!(
        runs.lines().collect::<Vec<_>>(),
        ["1 10", "2 50"],
        "the gate ran at the end of steps 1 and 2"
    );
    for want in [
        "step 1/3 (10%): running",
        "step 2/3 (50%): running",
        "gate after step 1 passed",
        "gate after step 2 FAILED",
        "rolled back",
    ] {
        assert!(stdout.contains(want), "{want:?} in {stdout}");
    }
    let v = &lab.status().unwrap()["vips"][0];
    assert!(v["split"].is_null(), "rolled back to 0%: {v}");
    assert_eq!(v["active"], "blue");
    assert_eq!(v["canary"]["outcome"]["state"], "rolled_back");
    assert_eq!(green_share(&lab.http_load(vip(), 200).unwrap()), 0.0);
    load.finish(&lab, "canary gate fails at step 2");
}

/// `veer canary pause` holds the step past its interval, `resume` goes on with what was
/// left, `promote` makes the pool active at once; all under load.
#[test]
fn canary_pause_holds_the_step_resume_continues_and_promote_switches() {
    let Some(lab) = lab() else { return };
    let load = Load::start(&lab);
    let split = || lab.status().unwrap()["vips"][0]["split"]["percent"].as_f64();
    let wait_split = |want: f64, within: Duration| {
        let deadline = Instant::now() + within;
        while split() != Some(want) {
            assert!(Instant::now() < deadline, "split never reached {want}%: {:?}", split());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (code, _, err) = lab.veer(&["canary", "pause", "web"]).unwrap();
    assert_eq!(code, 1, "no canary to pause: {err}");
    lab.veer_ok(&["canary", "web", "green", "--steps", "10,50,100", "--interval", "1s"]);
    wait_split(10.0, Duration::from_secs(3));
    lab.veer_ok(&["canary", "pause", "web"]);
    assert_eq!(lab.status().unwrap()["vips"][0]["canary"]["paused"], true);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(split(), Some(10.0), "a paused canary holds its step past the interval");
    lab.veer_ok(&["canary", "resume", "web"]);
    wait_split(50.0, Duration::from_secs(3));
    assert_eq!(lab.status().unwrap()["vips"][0]["canary"]["paused"], false);
    let out = lab.veer_ok(&["canary", "promote", "web"]);
    assert!(out.contains("promoted"), "{out}");
    let v = &lab.status().unwrap()["vips"][0];
    assert_eq!(v["active"], "green", "{v}");
    assert!(v["split"].is_null(), "{v}");
    assert_eq!(v["canary"]["outcome"]["state"], "done");
    assert_eq!(green_share(&lab.http_load(vip(), 200).unwrap()), 100.0);
    load.finish(&lab, "canary pause, resume, promote");
}

/// A real Prometheus server scraping the agent, in the balancer's namespace; killed (by its
/// PID) and reaped on drop. Its data lives in the lab's directory.
fn prometheus(lab: &Lab) -> ChildGuard {
    let dir = lab.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global: { scrape_interval: 250ms, evaluation_interval: 1s }\n\
         scrape_configs:\n  - job_name: veer\n    static_configs: [ { targets: ['127.0.0.1:9477'] } ]\n",
    )
    .unwrap();
    let child = command_in(&lab.lb, std::path::Path::new("/usr/bin/prometheus"))
        .unwrap()
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg("--web.listen-address=127.0.0.1:19090")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .expect("prometheus is installed by `cargo xtask setup` (Debian's prometheus package)");
    ChildGuard(child)
}

/// `--gate-prometheus URL QUERY` against a real Prometheus that scrapes the agent: the
/// query `veer_canary_step < 2` has a result during step 1 and none once step 2 is scraped,
/// so the canary passes its first gate and rolls back at the second (exit 4).
#[test]
fn a_prometheus_gate_passes_on_a_result_and_rolls_back_on_an_empty_one() {
    let Some(lab) = lab() else { return };
    let _prometheus = prometheus(&lab);
    let veer = veer_bin().unwrap();
    let cli = |args: &[&str]| {
        let out = command_in(&lab.lb, &veer)
            .unwrap()
            .arg("--socket")
            .arg(lab.socket())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = "http://127.0.0.1:19090";
    let (code, out, err) = cli(&[
        "canary",
        "web",
        "green",
        "--interval",
        "1s",
        "--gate-prometheus",
        url,
        "up",
        "--dry-run",
    ]);
    assert_eq!(code, Some(0), "a dry run changes nothing and runs no gate: {out}{err}");
    // Prometheus answers once it has scraped the agent.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = lab
            .lb
            .run(move || {
                use std::io::{Read as _, Write as _};
                let mut s = std::net::TcpStream::connect("127.0.0.1:19090").ok()?;
                s.write_all(b"GET /api/v1/query?query=up HTTP/1.0\r\n\r\n").ok()?;
                let mut body = String::new();
                s.read_to_string(&mut body).ok()?;
                Some(body.contains("\"value\"") && body.contains("\"1\""))
            })
            .unwrap();
        if up == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus never scraped the agent");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, err) = cli(&[
        "canary",
        "web",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "1500ms",
        "--gate-prometheus",
        url,
        "veer_canary_step{vip=\"web\"} < 2",
    ]);
    println!("canary --gate-prometheus:\n{out}");
    assert_eq!(code, Some(4), "{out}{err}\n{}", lab.agent_log());
    assert!(out.contains("gate after step 1 passed"), "{out}");
    assert!(
        err.contains("gate failed at step 2 (50%)") && err.contains("empty result"),
        "{err}"
    );
    let v = &lab.status().unwrap()["vips"][0];
    assert!(v["split"].is_null(), "{v}");
    assert_eq!(v["active"], "blue");
}

/// An agent restart (kill -9 and a new agent, as an upgrade would) while `canary --gate`
/// waits: the CLI asks again until the agent is back, judges the held step, and the canary
/// completes (exit 0) with every request answered.
#[test]
fn a_gated_canary_wait_outlives_an_agent_restart() {
    let Some(mut lab) = lab() else { return };
    let load = Load::start(&lab);
    let canary = lab.spawn_veer(&[
        "canary",
        "web",
        "green",
        "--steps",
        "20,100",
        "--interval",
        "3s",
        "--gate",
        "true",
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.status().unwrap()["vips"][0]["split"]["percent"] != 20.0 {
        assert!(Instant::now() < deadline, "the canary's first step never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.agent.as_mut().unwrap().kill_hard();
    let config = lab.dir.join("veer.toml");
    lab.start_agent(&config).unwrap();
    let out = canary.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}\n{}", lab.agent_log());
    assert!(
        stderr.contains("agent unreachable"),
        "the wait said the agent was gone: {stderr}"
    );
    assert!(stdout.contains("gate after step 1 passed"), "{stdout}");
    let v = &lab.status().unwrap()["vips"][0];
    assert_eq!(
        (v["active"].as_str(), v["canary"]["outcome"]["state"].as_str()),
        (Some("green"), Some("done")),
        "{v}"
    );
    load.finish(&lab, "gated canary across an agent restart");
}
