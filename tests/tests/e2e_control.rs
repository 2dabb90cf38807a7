//! End-to-end: the agent as a control plane — live changes through the CLI under load,
//! drain, SIGKILL and restart without a failed request, program upgrade with an open
//! connection, rejected input that changes nothing.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use veer_tests::lab::*;

const WEIGHTS: [u32; 3] = [1, 1, 2];

fn lab() -> Option<Lab> {
    let lab = Lab::with_agent(&WEIGHTS)?;
    lab.wait_for_vip(vip()).expect("VIP answers");
    Some(lab)
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}

fn backend(i: usize) -> String {
    format!("{}:{HTTP_PORT}", backend4(i))
}

fn assert_no_failures(lab: &Lab, what: &str, o: &Outcome) {
    assert!(o.ok > 0, "{what}: no request went through");
    assert_eq!(
        o.failed,
        0,
        "{what}: {} of {} failed: {:?}\nagent log:\n{}",
        o.failed,
        o.ok + o.failed,
        o.errors,
        lab.agent_log()
    );
}

#[test]
fn weight_changes_shift_new_connections_to_the_new_weights_under_load() {
    let Some(lab) = lab() else { return };
    let watch = lab.watch().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = lab.background_load(vip(), stop.clone(), 20_000).unwrap();
    // 1:1:2 -> 2:1:1, while connections keep arriving
    lab.veer_ok(&["backend", "set", "web4", &backend(0), "weight", "2"]);
    lab.veer_ok(&["backend", "set", "web4", &backend(2), "weight", "1"]);
    let after = lab.http_load(vip(), 2000).unwrap();
    stop.store(true, Ordering::Relaxed);
    let during = load.join().unwrap();
    assert_no_failures(&lab, "continuous load during the change", &during);
    assert_no_failures(&lab, "after the change", &after);
    let s = shares(&after);
    for (i, want) in [50.0, 25.0, 25.0].into_iter().enumerate() {
        let got = s.get(&backend_name(i)).map(|x| x.1).unwrap_or(0.0);
        assert!(
            (got - want).abs() <= 5.0,
            "{} got {got:.1}%, want {want}% ± 5: {s:?}",
            backend_name(i)
        );
    }
    let status = lab.status().unwrap();
    assert_eq!(status["vips"][0]["pools"][0]["backends"][0]["weight"], 2);
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn drain_keeps_a_long_lived_connection_while_new_connections_avoid_the_backend() {
    let Some(lab) = lab() else { return };
    let watch = lab.watch().unwrap();
    let mut conn = lab.connect(vip()).unwrap();
    let name = keepalive_get(&mut conn).unwrap();
    let i: usize = name.trim_start_matches('b').parse::<usize>().unwrap() - 1;
    lab.veer_ok(&["backend", "set", "web4", &backend(i), "state", "drain"]);
    let after = lab.http_load(vip(), 400).unwrap();
    assert_no_failures(&lab, "new connections after drain", &after);
    assert!(
        !after.by_backend.contains_key(&name),
        "{name} is draining but took new connections: {:?}",
        after.by_backend
    );
    for _ in 0..20 {
        assert_eq!(
            keepalive_get(&mut conn).unwrap(),
            name,
            "the long-lived connection stays on {name}"
        );
    }
    let status = lab.status().unwrap();
    let b = &status["vips"][0]["pools"][0]["backends"][i];
    assert_eq!(
        (b["admin"].as_str(), b["state"].as_str()),
        (Some("drain"), Some("drain"))
    );
    assert!(
        b["counters"]["live_flows"].as_u64().unwrap() >= 1,
        "the open connection is a live flow: {b}"
    );
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn sigkill_of_the_agent_fails_no_request_and_a_restart_restores_the_same_state() {
    let Some(mut lab) = lab() else { return };
    lab.veer_ok(&["backend", "set", "web4", &backend(1), "weight", "3"]);
    lab.veer_ok(&["backend", "set", "web4", &backend(2), "state", "drain"]);
    let before = without_counters(&lab.status().unwrap());
    let watch = lab.watch().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = lab.background_load(vip(), stop.clone(), 100_000).unwrap();
    assert!(
        wait_for_requests(200, Duration::from_secs(10)),
        "the load never got going"
    );
    lab.agent.as_mut().unwrap().kill_hard();
    // No agent runs now: these requests are served by the pinned data path alone.
    assert!(
        wait_for_requests(500, Duration::from_secs(10)),
        "the data path stopped forwarding when its agent died"
    );
    let config = lab.dir.join("veer.toml");
    lab.start_agent(&config).unwrap();
    assert!(
        wait_for_requests(200, Duration::from_secs(10)),
        "no request after the restart"
    );
    stop.store(true, Ordering::Relaxed);
    let during = load.join().unwrap();
    assert_no_failures(&lab, "requests across SIGKILL and restart", &during);
    let after = without_counters(&lab.status().unwrap());
    assert_eq!(after, before, "status after restart (counters aside)");
    assert!(lab.agent_log().contains("adopting pinned maps"), "{}", lab.agent_log());
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn program_upgrade_keeps_an_open_connection() {
    let Some(mut lab) = lab() else { return };
    let watch = lab.watch().unwrap();
    let mut conn = lab.connect(vip()).unwrap();
    let name = keepalive_get(&mut conn).unwrap();
    lab.agent.as_mut().unwrap().kill_hard();
    let config = lab.dir.join("veer.toml");
    lab.start_agent(&config).unwrap();
    assert!(
        lab.agent_log().contains("program replaced in the pinned link"),
        "{}",
        lab.agent_log()
    );
    for _ in 0..10 {
        assert_eq!(
            keepalive_get(&mut conn).unwrap(),
            name,
            "the connection survives the upgrade"
        );
    }
    assert_no_failures(&lab, "after the upgrade", &lab.http_load(vip(), 200).unwrap());
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn rejected_input_exits_1_and_changes_nothing() {
    let Some(lab) = lab() else { return };
    let before = without_counters(&lab.status().unwrap());
    let good = std::fs::read_to_string(lab.dir.join("veer.toml")).unwrap();
    let bad_field = lab.dir.join("bad-field.toml");
    std::fs::write(
        &bad_field,
        good.replace("protocol = \"tcp\"", "protocol = \"tcp\"\ncolour = \"red\""),
    )
    .unwrap();
    let bad_weight = lab.dir.join("bad-weight.toml");
    std::fs::write(&bad_weight, good.replace("weight = 2 }", "weight = 20000 }")).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["apply".into(), "-f".into(), bad_field.display().to_string()],
            "colour",
        ),
        (
            vec!["apply".into(), "-f".into(), bad_weight.display().to_string()],
            "weight",
        ),
        (
            vec![
                "backend".into(),
                "set".into(),
                "nosuch".into(),
                backend(0),
                "weight".into(),
                "5".into(),
            ],
            "unknown VIP",
        ),
        (
            vec![
                "backend".into(),
                "set".into(),
                "web4".into(),
                backend(0),
                "weight".into(),
                "10001".into(),
            ],
            "out of range",
        ),
        (
            vec![
                "backend".into(),
                "set".into(),
                "web4".into(),
                "10.77.0.99:1".into(),
                "state".into(),
                "drain".into(),
            ],
            "no backend",
        ),
        (
            vec![
                "backend".into(),
                "add".into(),
                "web4".into(),
                "nopool".into(),
                "10.77.0.50:80".into(),
            ],
            "no pool",
        ),
        (
            vec!["trace".into(), "nosuch".into(), "10.77.0.10:1234".into()],
            "unknown VIP",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = lab.veer(&args).unwrap();
        assert_eq!(code, 1, "veer {args:?} must be rejected with exit 1: {err}");
        assert!(
            err.contains(needle),
            "veer {args:?}: error names the problem ({needle:?}): {err}"
        );
    }
    assert_eq!(
        without_counters(&lab.status().unwrap()),
        before,
        "rejected input changed the state"
    );
    let (code, _, err) = lab.veer(&["--socket", "/nonexistent/veer.sock", "status"]).unwrap();
    assert_eq!(code, 2, "an unreachable agent exits 2: {err}");
}

#[test]
fn apply_dry_run_predicts_the_moved_hash_space_and_apply_changes_it() {
    let Some(lab) = lab() else { return };
    let good = std::fs::read_to_string(lab.dir.join("veer.toml")).unwrap();
    let removed = lab.dir.join("removed.toml");
    // drop the first backend of the IPv4 TCP VIP
    let first = format!("{{ address = \"{}\", weight = 1 }}, ", backend(0));
    std::fs::write(&removed, good.replacen(&first, "", 1)).unwrap();
    let (code, out, err) = lab
        .veer(&["--json", "apply", "-f", removed.to_str().unwrap(), "--dry-run"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let dry: serde_json::Value = serde_json::from_str(&out).unwrap();
    let predicted = dry["moved_pct"]["web4"].as_f64().unwrap();
    assert!(
        (predicted - 25.0).abs() < 0.5,
        "removing a weight-1 of 1:1:2 moves its 25%: {predicted}"
    );
    assert_eq!(
        lab.status().unwrap()["vips"][0]["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "dry run changed nothing"
    );
    // Where 300 fixed 5-tuples go before and after, measured with real connections.
    let ports: Vec<u16> = (41000..41300).collect();
    let route = |lab: &Lab| -> Vec<String> {
        let ports = ports.clone();
        lab.client
            .run(move || {
                ports
                    .iter()
                    .map(|&p| {
                        http_get_bound(SocketAddr::new(CLIENT4.into(), p), vip(), Duration::from_secs(3))
                            .unwrap_or_else(|e| panic!("GET from port {p}: {e:#}"))
                    })
                    .collect()
            })
            .unwrap()
    };
    let before_apply = route(&lab);
    let (code, _, err) = lab.veer(&["--json", "apply", "-f", removed.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{err}");
    let after_apply = route(&lab);
    let moved: Vec<usize> = (0..ports.len())
        .filter(|&i| before_apply[i] != after_apply[i])
        .collect();
    let moved_pct = moved.len() as f64 * 100.0 / ports.len() as f64;
    assert!(
        (0..ports.len()).all(|i| (before_apply[i] == "b1") == moved.contains(&i)),
        "exactly the removed backend's flows move (minimal disruption)"
    );
    assert!(
        (moved_pct - predicted).abs() <= 7.0,
        "predicted {predicted:.1}% of flows to move, {moved_pct:.1}% of 300 fixed 5-tuples moved"
    );
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip(), 300).unwrap();
    assert_no_failures(&lab, "after apply", &o);
    lab.assert_no_drops(&watch, &[]);
    assert!(
        !o.by_backend.contains_key("b1"),
        "removed backend takes no new connections"
    );
}
