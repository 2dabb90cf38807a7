//! End-to-end, the round-robin and least-conn schedulers: real TCP connections through the
//! balancer. Round robin deals new connections by weight; least-conn steers them away from
//! a backend busy with long-lived connections; both keep every deployment lossless.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use veer_tests::lab::*;

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}

/// One VIP with `scheduler` over pools blue (`blue`: backend list) and green (b3, b4).
fn lab(scheduler: &str, blue: &str, backends: usize) -> Option<Lab> {
    let green = if backends > 3 {
        backend_list(2..4, HTTP_PORT)
    } else {
        String::new()
    };
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nscheduler = \"{scheduler}\"\nactive = \"blue\"\n\
         [[vip.pool]]\nname = \"blue\"\nbackends = [ {blue} ]\n[[vip.pool]]\nname = \"green\"\nbackends = [ {green} ]\n"
    );
    let lab = Lab::with_config(backends, "", &vips)?;
    lab.wait_for_vip(vip()).expect("VIP answers");
    Some(lab)
}

fn weighted(weights: &[u32]) -> String {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{{ address = \"{}:{HTTP_PORT}\", weight = {w} }}", backend4(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn share(o: &Outcome, backend: &str) -> f64 {
    o.by_backend.get(backend).copied().unwrap_or(0) as f64 * 100.0 / o.ok.max(1) as f64
}

#[test]
fn round_robin_deals_1000_new_connections_by_weights_1_1_2_within_one_point() {
    let Some(lab) = lab("round-robin", &weighted(&[100, 100, 200]), 3) else {
        return;
    };
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip(), 1000).unwrap();
    assert_eq!((o.ok, o.failed), (1000, 0), "{:?}", o.errors);
    for (b, want) in [("b1", 25.0), ("b2", 25.0), ("b3", 50.0)] {
        let got = share(&o, b);
        assert!(
            (got - want).abs() <= 1.0,
            "{b}: {got:.1}% of 1000 new connections, weight share {want}%: {:?}",
            o.by_backend
        );
    }
    lab.assert_no_drops(&watch, &[]);
    println!("round-robin 1:1:2 over 1000 connections: {:?}", shares(&o));
    // Trace is honest: the pool and every backend of its sequence, no single backend.
    let t: serde_json::Value = serde_json::from_str(&lab.veer_ok(&["--json", "trace", "web", "10.77.0.2:1"])).unwrap();
    assert_eq!(
        (t["pool"].as_str(), t["scheduler"].as_str()),
        (Some("blue"), Some("round-robin")),
        "{t}"
    );
    assert!(t["backend"].is_null(), "{t}");
    assert_eq!(t["candidates"].as_array().map(Vec::len), Some(3), "{t}");
    let text = lab.veer_ok(&["trace", "web", "10.77.0.2:1"]);
    assert!(text.contains("one of") && text.contains("round-robin"), "{text}");
    // A dry run says how far the shares move (25/25/50 -> thirds: a sixth of new flows),
    // not a hash space that round robin does not have.
    let b3 = format!("{}:{HTTP_PORT}", backend4(2));
    let args = ["backend", "set", "web", &b3, "weight", "100", "--dry-run"];
    let dry: serde_json::Value = serde_json::from_str(&lab.veer_ok(&[&["--json"][..], &args].concat())).unwrap();
    let moved = dry["moved_pct"]["web"].as_f64().unwrap();
    assert!((moved - 100.0 / 6.0).abs() < 0.1, "{dry}");
    assert_eq!(dry["dealt"], serde_json::json!(["web"]), "{dry}");
    let text = lab.veer_ok(&args);
    assert!(text.contains("go to other backends"), "{text}");
}

/// `n` connections, each checked to reach `backend` with one request, held open.
fn hold(lab: &Lab, n: usize, backend: &str) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = lab.connect(vip()).unwrap();
            assert_eq!(keepalive_get(&mut s).unwrap(), backend);
            s
        })
        .collect()
}

#[test]
fn least_conn_steers_new_connections_from_a_backend_holding_50_idle_ones_until_they_close_across_a_restart() {
    let Some(mut lab) = lab("least-conn", &backend_list(0..3, HTTP_PORT), 3) else {
        return;
    };
    // 50 long-lived connections on b1: the others drain while they open.
    let b = |i: usize| format!("{}:{HTTP_PORT}", backend4(i));
    for i in [1, 2] {
        lab.veer_ok(&["backend", "set", "web", &b(i), "state", "drain"]);
    }
    let held = hold(&lab, 50, "b1");
    for i in [1, 2] {
        lab.veer_ok(&["backend", "set", "web", &b(i), "state", "ready"]);
    }
    // A restarted agent adopts the counts with the pinned maps (and its first correction
    // keeps them: every one of the 50 is in the connection table).
    let config = lab.dir.join("veer.toml");
    lab.agent.as_mut().unwrap().stop();
    lab.start_agent(&config).unwrap();
    let pin = std::path::Path::new(veer::dataplane::PIN_DIR).join(lb_common::MAP_BACKEND_LOAD);
    assert!(pin.exists(), "the counts are pinned with the other maps");
    std::thread::sleep(Duration::from_millis(1500));
    let watch = lab.watch().unwrap();
    let busy = lab.http_load(vip(), 300).unwrap();
    assert_eq!(busy.failed, 0, "{:?}", busy.errors);
    let b1 = share(&busy, "b1");
    assert!(
        b1 < 10.0,
        "b1 holds 50 idle connections: {b1:.1}% of 300 new ones, want < 10%: {:?}",
        busy.by_backend
    );
    // Trace names the flow's two candidates, not a backend.
    let t: serde_json::Value = serde_json::from_str(&lab.veer_ok(&["--json", "trace", "web", "10.77.0.2:1"])).unwrap();
    assert_eq!(t["scheduler"], "least-conn", "{t}");
    assert!(
        t["backend"].is_null() && t["candidates"].as_array().is_some_and(|c| c.len() == 2),
        "{t}"
    );
    drop(held);
    // Wait one correction round: a round measured while the burst above churned can leave
    // a backend looking loaded until the next quiet round (open: b2 once got 1 of 300).
    std::thread::sleep(Duration::from_millis(1500));
    let idle = lab.http_load(vip(), 300).unwrap();
    assert_eq!(idle.failed, 0, "{:?}", idle.errors);
    let again = share(&idle, "b1");
    assert!(
        (20.0..=46.0).contains(&again),
        "after its 50 closed, b1 got {again:.1}% of 300 new connections, want its third: {:?}",
        idle.by_backend
    );
    lab.assert_no_drops(&watch, &[]);
    println!("least-conn: b1 with 50 idle connections got {b1:.1}% of 300 new ones, {again:.1}% after they closed");
}

/// Split, canary and switch back under continuous new and keep-alive load: zero failed
/// requests, no drops, no SYN retransmits.
fn deployments_under_load(scheduler: &str) {
    let Some(lab) = lab(scheduler, &backend_list(0..2, HTTP_PORT), 4) else {
        return;
    };
    let watch = lab.watch().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = lab.mixed_load(vip(), stop.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    lab.veer_ok(&["split", "web", "green", "30%"]);
    let o = lab.http_load(vip(), 400).unwrap();
    let green = share(&o, "b3") + share(&o, "b4");
    assert!(
        (20.0..=40.0).contains(&green),
        "{scheduler}: split 30%: green got {green:.1}%"
    );
    lab.veer_ok(&["rollback", "web"]);
    let mut canary = lab.spawn_veer(&[
        "canary",
        "web",
        "green",
        "--steps",
        "25,100",
        "--interval",
        "400ms",
        "--wait",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = canary.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "{scheduler}: canary --wait did not return");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{scheduler}: canary\n{}", lab.agent_log());
    let o = lab.http_load(vip(), 100).unwrap();
    assert_eq!(
        share(&o, "b3") + share(&o, "b4"),
        100.0,
        "{scheduler}: after the canary: {:?}",
        o.by_backend
    );
    lab.veer_ok(&["switch", "web", "blue"]);
    let o = lab.http_load(vip(), 100).unwrap();
    assert_eq!(
        share(&o, "b1") + share(&o, "b2"),
        100.0,
        "{scheduler}: after the switch: {:?}",
        o.by_backend
    );
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for h in handles {
        let o = h.join().unwrap();
        assert_eq!(
            o.failed,
            0,
            "{scheduler}: failed under load: {:?}\n{}",
            o.errors,
            lab.agent_log()
        );
        total += o.ok;
    }
    lab.assert_no_drops(&watch, &[]);
    println!("{scheduler}: split, canary and switch under load: {total} requests, 0 failed");
}

#[test]
fn round_robin_split_canary_and_switch_fail_no_request_under_load() {
    deployments_under_load("round-robin");
}

#[test]
fn least_conn_split_canary_and_switch_fail_no_request_under_load() {
    deployments_under_load("least-conn");
}
