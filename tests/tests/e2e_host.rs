//! End-to-end: veer on a real edge host. A balancer namespace left as a fresh host is
//! (no sysctl, no neighbour resolved, no health checks) forwards from the first packet;
//! restarts, reloads and crashes of the agent lose no request; cleanup is explicit.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use veer_tests::lab::*;

const BACKENDS: usize = 3;

/// Shorter than the first SYN retransmission (1 s): a connection whose first SYN was
/// dropped counts as failed.
const FIRST_TRY: Duration = Duration::from_millis(900);

fn untuned_lab() -> Option<Lab> {
    if !is_root() {
        eprintln!("skipped: the lab needs root (network namespaces, XDP)");
        return None;
    }
    let mut lab = Lab::untuned(&LabOptions {
        weights: vec![1; BACKENDS],
    })
    .expect("build the lab");
    let config = lab.write_config(&[1; BACKENDS]).expect("write config");
    lab.start_agent(&config).expect("start the agent");
    Some(lab)
}

/// `n` new connections, each given one try (no SYN retransmission); stops at 20 failures.
fn first_try_load(lab: &Lab, vip: SocketAddr, n: usize) -> Outcome {
    lab.client
        .run(move || {
            let mut out = Outcome::default();
            for _ in 0..n {
                match http_get(vip, FIRST_TRY) {
                    Ok(b) => {
                        out.ok += 1;
                        *out.by_backend.entry(b).or_default() += 1;
                    }
                    Err(e) => {
                        out.failed += 1;
                        if out.errors.len() < 5 {
                            out.errors.push(format!("{e:#}"));
                        }
                        // Bounded: a broken host fails fast instead of 600 timeouts.
                        if out.failed >= 20 {
                            break;
                        }
                    }
                }
            }
            out
        })
        .expect("client thread")
}

#[test]
fn a_fresh_host_with_default_sysctls_forwards_every_first_connection_over_ipv4_and_ipv6() {
    let Some(lab) = untuned_lab() else { return };
    for vip in [SocketAddr::new(VIP4.into(), 80), SocketAddr::new(VIP6.into(), 80)] {
        let o = first_try_load(&lab, vip, 600);
        assert_eq!(
            (o.ok, o.failed),
            (600, 0),
            "{vip}: {} of 600 failed: {:?}\nagent log:\n{}",
            o.failed,
            o.errors,
            lab.agent_log()
        );
        assert_eq!(
            o.by_backend.len(),
            BACKENDS,
            "{vip}: every backend answers: {:?}",
            o.by_backend
        );
    }
    // The agent keeps a managed entry for every backend; the kernel resolved them.
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "neigh", "show", "dev", "eth0"])
        .output()
        .expect("ip neigh");
    let table = String::from_utf8_lossy(&out.stdout);
    for i in 0..BACKENDS {
        for addr in [backend4(i).to_string(), backend6(i).to_string()] {
            let line = table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(addr.as_str()))
                .unwrap_or_else(|| panic!("no neighbour entry for backend {addr}:\n{table}"));
            assert!(line.contains("managed"), "{addr} is not a managed entry: {line}");
        }
    }
    // What it changed on the host, it said.
    let log = lab.agent_log();
    for setting in ["net.ipv4.conf.eth0.accept_local", "net.ipv4.conf.eth0.forwarding"] {
        assert!(log.contains(setting), "the agent's log names {setting}:\n{log}");
    }
}

fn vip4() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}

fn agent(lab: &mut Lab) -> &mut Agent {
    lab.agent.as_mut().expect("an agent runs")
}

/// A long-lived connection and the backend it landed on.
struct Stream {
    conn: std::net::TcpStream,
    backend: String,
}

impl Stream {
    fn open(lab: &Lab) -> Stream {
        let mut conn = lab.connect(vip4()).expect("open the long-lived stream");
        let backend = keepalive_get(&mut conn).expect("first request on the stream");
        Stream { conn, backend }
    }

    fn assert_alive(&mut self, lab: &Lab, when: &str) {
        match keepalive_get(&mut self.conn) {
            Ok(b) => assert_eq!(b, self.backend, "{when}: the stream stays on its backend"),
            Err(e) => panic!(
                "{when}: the long-lived stream broke: {e:#}\nagent log:\n{}",
                lab.agent_log()
            ),
        }
    }
}

/// Continuous new-connection and keep-alive load for the duration of `f`; asserts that
/// no request failed and no packet was dropped or retransmitted.
fn under_load(lab: &mut Lab, what: &str, f: impl FnOnce(&mut Lab)) {
    let watch = lab.watch().expect("drop counters");
    let stop = Arc::new(AtomicBool::new(false));
    let loads = lab.mixed_load(vip4(), stop.clone()).expect("start the load");
    std::thread::sleep(Duration::from_millis(400));
    f(lab);
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    for (kind, load) in ["new-connection", "keep-alive"].into_iter().zip(loads) {
        let o = load.join().expect("load thread");
        assert!(o.ok > 50, "{what}: {kind} load ran ({} requests)", o.ok);
        assert_eq!(
            o.failed,
            0,
            "{what}: {kind}: {} of {} failed: {:?}\nagent log:\n{}",
            o.failed,
            o.ok + o.failed,
            o.errors,
            lab.agent_log()
        );
    }
    lab.assert_no_drops(&watch, &[]);
}

fn tuned_lab(backends: usize, vips: &str) -> Option<Lab> {
    let lab = Lab::with_config(backends, "", vips)?;
    lab.wait_for_vip(vip4()).expect("VIP answers");
    Some(lab)
}

fn web4(backends: &str) -> String {
    format!(
        "[[vip]]\nname = \"web4\"\naddress = \"{VIP4}:80\"\nprotocol = \"tcp\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {backends} ]\n"
    )
}

fn backend_ids(status: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for v in status["vips"].as_array().into_iter().flatten() {
        for p in v["pools"].as_array().into_iter().flatten() {
            for b in p["backends"].as_array().into_iter().flatten() {
                out.insert(
                    format!(
                        "{}|{}",
                        v["name"].as_str().unwrap_or(""),
                        b["address"].as_str().unwrap_or("")
                    ),
                    b["id"].as_u64().unwrap_or(0),
                );
            }
        }
    }
    out
}

#[test]
fn sigterm_then_a_new_agent_fails_no_request_and_keeps_a_long_lived_stream() {
    let Some(mut lab) = tuned_lab(3, &web4(&backend_list(0..3, HTTP_PORT))) else {
        return;
    };
    let mut stream = Stream::open(&lab);
    let config = lab.dir.join("veer.toml");
    under_load(&mut lab, "SIGTERM, then a new agent", |lab| {
        let status = agent(lab).stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "SIGTERM: the agent exits 0 ({status:?}):\n{}",
            lab.agent_log()
        );
        assert!(
            std::path::Path::new(veer::dataplane::PIN_DIR)
                .join("link_eth0")
                .exists(),
            "the program stays attached (its link pinned)"
        );
        // No agent at all for a while: the data path forwards on its own.
        std::thread::sleep(Duration::from_millis(700));
        stream.assert_alive(lab, "with no agent running");
        lab.start_agent(&config).expect("the next agent starts");
    });
    stream.assert_alive(&lab, "after the restart");
    let log = lab.agent_log();
    assert!(log.contains("adopting pinned maps"), "the new agent adopts: {log}");
}

#[test]
fn sighup_applies_a_changed_file_and_a_bad_file_changes_nothing() {
    let Some(mut lab) = tuned_lab(4, &web4(&backend_list(0..3, HTTP_PORT))) else {
        return;
    };
    let mut stream = Stream::open(&lab);
    let before = backend_ids(&lab.status().unwrap());
    let config = lab.dir.join("veer.toml");
    let agent_section = lab.agent_section();
    let changed = format!(
        "{agent_section}\n{}",
        web4(&format!(
            "{{ address = \"{}:{HTTP_PORT}\", weight = 300 }}, {}",
            backend4(0),
            backend_list(1..4, HTTP_PORT)
        ))
    );
    under_load(&mut lab, "SIGHUP with a weight change and an added backend", |lab| {
        std::fs::write(&config, &changed).unwrap();
        agent(lab).signal(libc::SIGHUP);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while backend_ids(&lab.status().unwrap()).len() < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGHUP applied within 5 s:\n{}",
                lab.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    stream.assert_alive(&lab, "after SIGHUP");
    let status = lab.status().unwrap();
    let after = backend_ids(&status);
    for (k, id) in &before {
        assert_eq!(after.get(k), Some(id), "{k} keeps its id across the reload");
    }
    let b0 = &status["vips"][0]["pools"][0]["backends"][0];
    assert_eq!(b0["weight"].as_u64(), Some(300), "{b0}");
    assert!(
        lab.agent_log().contains("SIGHUP: config re-read and applied"),
        "{}",
        lab.agent_log()
    );

    // A bad file: logged, nothing changed, the agent keeps running.
    let before = without_counters(&lab.status().unwrap());
    std::fs::write(&config, format!("{agent_section}\n[[vip]]\nname = \"web4\"\n")).unwrap();
    agent(&mut lab).signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab.agent_log().contains("nothing changed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the bad file is logged:\n{}",
            lab.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        without_counters(&lab.status().unwrap()),
        before,
        "a bad file changes nothing"
    );
    stream.assert_alive(&lab, "after a bad SIGHUP");
}

/// A lab of `backends` backends (None when not root) and a config file in it: the lab's
/// `[agent]` section as `edit` changes it, then `vips`. No agent is started.
fn lab_and_config(
    backends: usize,
    edit: impl FnOnce(&Lab, String) -> String,
    vips: &str,
) -> Option<(Lab, std::path::PathBuf)> {
    if !is_root() {
        eprintln!("skipped: the lab needs root (network namespaces, XDP)");
        return None;
    }
    let lab = Lab::new(&LabOptions {
        weights: vec![1; backends],
    })
    .expect("build the lab");
    let section = edit(&lab, lab.agent_section());
    let config = lab
        .write_config_text("veer.toml", &format!("{section}\n{vips}"))
        .expect("write the config");
    Some((lab, config))
}

const CUSTOM_PIN_DIR: &str = "/sys/fs/bpf/veer-lab-custom";

#[test]
fn detach_removes_program_pins_and_state_under_a_custom_pin_dir_and_is_refused_while_an_agent_runs() {
    let Some(mut lab) = Lab::with_config(
        2,
        &format!("pin_dir = \"{CUSTOM_PIN_DIR}\"\n"),
        &web4(&backend_list(0..2, HTTP_PORT)),
    ) else {
        return;
    };
    lab.wait_for_vip(vip4()).expect("VIP answers");
    let pins = std::path::Path::new(CUSTOM_PIN_DIR);
    assert!(pins.join("link_eth0").exists(), "pinned under agent.pin_dir");
    let (code, _, err) = lab.cleanup().unwrap();
    assert_eq!(code, 1, "cleanup is refused while the agent runs: {err}");
    assert!(err.contains("an agent is running"), "{err}");
    agent(&mut lab).stop();
    lab.wait_for_vip(vip4()).expect("the data path outlives the agent");
    let detach = command_in(&lab.lb, &veer_bin().unwrap())
        .unwrap()
        .args(["detach", "--config"])
        .arg(lab.dir.join("veer.toml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&detach.stdout);
    assert!(
        detach.status.success(),
        "veer detach: {out}{}",
        String::from_utf8_lossy(&detach.stderr)
    );
    assert!(out.contains("detached from eth0"), "{out}");
    assert!(!pins.exists(), "no pins left");
    assert!(!lab.dir.join("state.json").exists(), "no state file left");
    let link = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "link", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "no XDP program on eth0: {link}");
    let answered = lab
        .client
        .run(|| http_get(vip4(), Duration::from_millis(500)).is_ok())
        .unwrap();
    assert!(!answered, "the VIP no longer answers once the data path is gone");
    let neigh = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "neigh", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(!neigh.contains("managed"), "managed neighbour entries removed: {neigh}");
}

#[test]
fn an_agent_under_ip_netns_exec_warns_that_its_pins_die_with_it() {
    let Some((lab, config)) = lab_and_config(1, |_, s| s, &web4(&backend_list(0..1, HTTP_PORT))) else {
        return;
    };
    let log_path = lab.dir.join("netns-exec.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb.name])
        .arg(veer_bin().unwrap())
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent = ChildGuard(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("veer agent ready") || agent.0.try_wait().ok().flatten().is_some() {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "agent not ready:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: signalling our own child by PID (ip netns exec execs the agent).
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let _ = agent.0.wait();
    assert!(text.contains("mount namespace of its own"), "the agent warns:\n{text}");
    assert!(text.contains("nsenter --net="), "and says what to do instead:\n{text}");
}

#[test]
fn the_systemd_unit_keeps_to_the_contract_and_passes_systemd_analyze_verify() {
    let unit_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/veer.service");
    let unit = std::fs::read_to_string(&unit_path).expect("dist/veer.service");
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= missing from the unit"))
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("Restart"), "on-failure");
    assert_eq!(value("StateDirectory"), "veer");
    assert_eq!(value("RuntimeDirectory"), "veer");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert_eq!(
            value(key),
            "CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
            "{key}: what BPF+XDP+netlink need"
        );
    }
    let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: verify skipped");
        return;
    };
    assert!(out.status.success());
    // verify checks that the binary exists: point the copy at the one under test.
    let dir = std::env::temp_dir().join(format!("veer-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("veer.service");
    let veer = veer_bin().unwrap();
    std::fs::write(&copy, unit.replace("/usr/bin/veer", &veer.display().to_string())).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readiness_reaches_systemd_after_the_attach_and_stopping_on_sigterm() {
    let Some((lab, config)) = lab_and_config(1, |_, s| s, &web4(&backend_list(0..1, HTTP_PORT))) else {
        return;
    };
    let notify_path = lab.dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let log_path = lab.dir.join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = command_in(&lab.lb, &veer_bin().unwrap())
        .unwrap()
        .args(["agent", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent = ChildGuard(child);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no notification ({e}):\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    });
    assert_eq!(&buf[..n], b"READY=1");
    let link = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "link", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "READY=1 comes after the attach"
    );
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let _ = agent.0.wait();
    let detach = command_in(&lab.lb, &veer_bin().unwrap())
        .unwrap()
        .args(["detach", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(detach.status.success(), "{}", String::from_utf8_lossy(&detach.stderr));
}

fn old4(backends: &str) -> String {
    format!(
        "[[vip]]\nname = \"old4\"\naddress = \"{VIP4}:81\"\nprotocol = \"tcp\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {backends} ]\n"
    )
}

#[test]
fn kill_9_then_an_edit_removing_a_vip_and_changing_a_pool_then_a_new_agent_converges_to_the_file() {
    let Some(mut lab) = tuned_lab(
        4,
        &format!(
            "{}\n{}",
            web4(&backend_list(0..3, HTTP_PORT)),
            old4(&backend_list(0..2, HTTP_PORT))
        ),
    ) else {
        return;
    };
    let old_vip = SocketAddr::new(VIP4.into(), 81);
    lab.wait_for_vip(old_vip).expect("the VIP to be removed answers");
    // A runtime change that still applies after the edit: b2 drained.
    let b2 = format!("{}:{HTTP_PORT}", backend4(1));
    let (code, _, err) = lab.veer(&["backend", "set", "web4", &b2, "state", "drain"]).unwrap();
    assert_eq!(code, 0, "{err}");
    // A stream on b1, which survives the edit.
    let mut stream = (0..20)
        .map(|_| Stream::open(&lab))
        .find(|s| s.backend == backend_name(0))
        .expect("a connection on b1");
    let before = backend_ids(&lab.status().unwrap());
    let config = lab.dir.join("veer.toml");
    let edited = format!(
        "{}\n{}",
        lab.agent_section(),
        web4(&format!(
            "{{ address = \"{}:{HTTP_PORT}\", weight = 300 }}, {}",
            backend4(0),
            backend_list(1..4, HTTP_PORT)
        ))
    );
    under_load(&mut lab, "kill -9, an edit, a new agent", |lab| {
        agent(lab).kill_hard();
        std::fs::write(&config, &edited).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stream.assert_alive(lab, "with no agent running");
        lab.start_agent(&config).expect("the next agent starts");
    });
    stream.assert_alive(&lab, "after the restart");

    let answered = lab
        .client
        .run(move || http_get(old_vip, Duration::from_millis(500)).is_ok())
        .unwrap();
    assert!(!answered, "the removed VIP no longer answers:\n{}", lab.agent_log());
    let status = lab.status().unwrap();
    let after = backend_ids(&status);
    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        (0..4)
            .map(|i| format!("web4|{}:{HTTP_PORT}", backend4(i)))
            .collect::<Vec<_>>(),
        "only the file's backends: {status}"
    );
    for (key, id) in before.iter().filter(|(k, _)| k.starts_with("web4|")) {
        assert_eq!(after.get(key), Some(id), "{key} keeps its id");
    }
    let fresh = after[&format!("web4|{}:{HTTP_PORT}", backend4(3))];
    assert!(
        !before.values().any(|id| *id == fresh),
        "the new backend gets a fresh id, not one a removed backend had: {fresh} in {before:?}"
    );
    let web = &status["vips"][0];
    assert_eq!(web["pools"][0]["backends"][0]["weight"].as_u64(), Some(300), "{web}");
    assert_eq!(web["pools"][0]["backends"][1]["admin"].as_str(), Some("drain"), "{web}");
    assert_eq!(status["vips"].as_array().map(|v| v.len()), Some(1), "{status}");

    // What the new agent converged to is what `veer apply -f` of the file gives.
    let file = config.display().to_string();
    let (code, out, err) = lab.veer(&["--json", "apply", "-f", &file, "--dry-run"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["changes"],
        serde_json::json!([]),
        "nothing left to apply: {report}"
    );
    let (code, _, err) = lab.veer(&["apply", "-f", &file]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        without_counters(&lab.status().unwrap()),
        without_counters(&status),
        "veer status equals what veer apply -f of the same file gives"
    );
    let log = lab.agent_log();
    assert!(log.contains("adopting pinned maps"), "{log}");
}

/// One API call on the socket (a trace: it takes the agent's lock); returns its latency.
fn api_call(socket: &std::path::Path) -> Duration {
    use std::io::{Read as _, Write as _};
    let start = std::time::Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("API socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v1/trace/web4?src=10.77.0.10:1234 HTTP/1.1\r\nHost: veer\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    start.elapsed()
}

#[test]
fn status_over_a_full_1m_flow_table_does_not_stall_api_calls() {
    let Some((mut lab, config)) = lab_and_config(
        3,
        |_, s| s.replace("flow_capacity = 65536", "flow_capacity = 1048576"),
        &web4(&backend_list(0..3, HTTP_PORT)),
    ) else {
        return;
    };
    lab.start_agent(&config).expect("start the agent");
    let ids: Vec<u32> = backend_ids(&lab.status().unwrap())
        .values()
        .map(|v| *v as u32)
        .collect();
    let filled =
        fill_connection_table(std::path::Path::new(veer::dataplane::PIN_DIR), 0, &ids).expect("fill the table");
    assert!(filled >= 1 << 20, "{filled} flows");
    let socket = lab.socket();
    let baseline = (0..20).map(|_| api_call(&socket)).max().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (done, socket) = (done.clone(), socket.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut calls = 0;
            while !done.load(Ordering::Relaxed) && calls < 100_000 {
                worst = worst.max(api_call(&socket));
                calls += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (worst, calls)
        })
    };
    let mut times = Vec::new();
    let mut live = 0;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let status = lab.status().unwrap();
        times.push(start.elapsed());
        live = status["vips"][0]["counters"]["live_flows"].as_u64().unwrap_or(0);
    }
    done.store(true, Ordering::Relaxed);
    let (worst, calls) = prober.join().unwrap();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let slowest = *times.iter().max().unwrap();
    eprintln!(
        "veer status over {filled} live flows: mean {mean:?}, slowest {slowest:?}; during the scans {calls} API \
         calls, the longest {worst:?} (idle: {baseline:?})"
    );
    assert_eq!(live as usize, filled, "status counts every live flow");
    assert!(
        worst < slowest / 2 && worst < Duration::from_millis(150),
        "an API call waited {worst:?} while status scans took up to {slowest:?}: the scan holds the lock"
    );
}

#[test]
fn a_change_whose_state_cannot_be_saved_changes_nothing() {
    let moved = |lab: &Lab, s: String| {
        let file = lab.dir.join("state.json").display().to_string();
        s.replace(&file, &lab.dir.join("state/state.json").display().to_string())
    };
    let Some((mut lab, config)) = lab_and_config(2, moved, &web4(&backend_list(0..2, HTTP_PORT))) else {
        return;
    };
    let state_dir = lab.dir.join("state");
    lab.start_agent(&config).expect("start the agent");
    lab.wait_for_vip(vip4()).unwrap();
    let before = without_counters(&lab.status().unwrap());
    // The state directory becomes a file: every persist fails from now on.
    std::fs::remove_dir_all(&state_dir).unwrap();
    std::fs::write(&state_dir, "not a directory").unwrap();
    let b1 = format!("{}:{HTTP_PORT}", backend4(0));
    let (code, _, err) = lab.veer(&["backend", "set", "web4", &b1, "weight", "0"]).unwrap();
    assert_ne!(code, 0, "the change is refused");
    assert!(err.contains("persist state"), "and says why: {err}");
    assert_eq!(without_counters(&lab.status().unwrap()), before, "status unchanged");
    let o = lab.http_load(vip4(), 200).unwrap();
    assert!(
        o.by_backend.get(&backend_name(0)).copied().unwrap_or(0) > 0,
        "the maps were not written: b1 still takes new connections: {:?}",
        o.by_backend
    );
    std::fs::remove_file(&state_dir).unwrap();
}
