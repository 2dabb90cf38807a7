//! End-to-end health checking: real HTTP servers stopped, failing (503), slow; the agent's
//! checks take them out of the data path and bring them back, with slow start.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use veer_tests::lab::*;

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 3;
const RISE: u64 = 2;

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}

fn lab(extra_health: &str) -> Option<Lab> {
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nactive = \"main\"\nhealth = {{ kind = \"http\", path = \"/healthz\", interval = \"{INTERVAL_MS}ms\", timeout = \"150ms\", rise = {RISE}, fall = {FALL}, jitter = \"0%\"{extra_health} }}\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n",
        backend_list(0..3, HTTP_PORT)
    );
    let lab = Lab::with_config(3, "", &vips)?;
    lab.wait_for_vip(vip()).expect("VIP answers");
    Some(lab)
}

fn backend_status(lab: &Lab, i: usize) -> serde_json::Value {
    lab.status().unwrap()["vips"][0]["pools"][0]["backends"][i].clone()
}

/// Failed probes of backend `i` so far.
fn failures(lab: &Lab, i: usize) -> u64 {
    backend_status(lab, i)["check"]["failures"].as_u64().expect("status counts failed probes")
}

/// The backend went down on exactly `fall` consecutive failed probes (one more may have
/// run between the transition and this look).
fn assert_down_after_fall_failures(lab: &Lab, i: usize, failures_before: u64) {
    let failed = failures(lab, i) - failures_before;
    assert!(
        failed == FALL || failed == FALL + 1,
        "backend {i} went down after {failed} failed probes, want fall = {FALL}"
    );
}

/// Waits (bounded) until backend `i`'s health is `want`; returns how long it took.
fn wait_health(lab: &Lab, i: usize, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let b = backend_status(lab, i);
        if b["health"] == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "backend {i} not {want} after {limit:?}: {b}\n{}",
            lab.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stopped_backend_stops_costing_requests_within_fall_intervals_and_returns_after_rise() {
    let Some(mut lab) = lab("") else { return };
    let stop = Arc::new(AtomicBool::new(false));
    let load = lab.background_load(vip(), stop.clone(), 50_000).unwrap();
    assert!(wait_for_requests(100, Duration::from_secs(10)), "the load never got going");
    let failures_before = failures(&lab, 0);
    lab.stop_backend(0);
    let stopped = Instant::now();
    let window = wait_health(&lab, 0, "down", Duration::from_secs(5));
    let bound = Duration::from_millis(FALL * INTERVAL_MS + INTERVAL_MS + 300);
    assert_down_after_fall_failures(&lab, 0, failures_before);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let during = load.join().unwrap();
    let watch = lab.watch().unwrap();
    let after = lab.http_load(vip(), 600).unwrap();
    assert_eq!(after.failed, 0, "no request fails once b1 is down: {:?}", after.errors);
    lab.assert_no_drops(&watch, &[]);
    assert!(!after.by_backend.contains_key("b1"));
    assert_eq!(backend_status(&lab, 0)["check"]["last"], "L4CON");
    println!(
        "backend stopped: {} of {} requests failed in a {:?} window (bound {:?})",
        during.failed,
        during.ok + during.failed,
        stopped.elapsed().min(window + Duration::from_millis(100)),
        bound
    );
    lab.start_backend(0).unwrap();
    let back = wait_health(&lab, 0, "up", Duration::from_secs(5));
    assert!(
        back >= Duration::from_millis((RISE - 1) * INTERVAL_MS),
        "up after {back:?}: needs {RISE} checks"
    );
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip(), 600).unwrap();
    assert_eq!(o.failed, 0);
    lab.assert_no_drops(&watch, &[]);
    assert!(
        o.by_backend.get("b1").copied().unwrap_or(0) > 100,
        "b1 takes new connections again: {:?}",
        o.by_backend
    );
}

#[test]
fn a_503_or_an_answer_slower_than_timeout_marks_a_backend_down() {
    let Some(lab) = lab("") else { return };
    lab.servers[1].health_status.store(503, Ordering::Relaxed);
    wait_health(&lab, 1, "down", Duration::from_secs(5));
    assert_eq!(backend_status(&lab, 1)["check"]["last"], "L7STS 503");
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip(), 300).unwrap();
    assert_eq!(o.failed, 0);
    lab.assert_no_drops(&watch, &[]);
    assert!(
        !o.by_backend.contains_key("b2"),
        "a 503ing backend takes no new connections"
    );
    lab.servers[1].health_status.store(200, Ordering::Relaxed);
    wait_health(&lab, 1, "up", Duration::from_secs(5));
    lab.servers[2].health_delay_ms.store(400, Ordering::Relaxed);
    wait_health(&lab, 2, "down", Duration::from_secs(8));
    assert_eq!(backend_status(&lab, 2)["check"]["last"], "L7TOUT");
    assert_eq!(backend_status(&lab, 2)["state"], "down");
}

#[test]
fn when_every_backend_fails_its_checks_the_pool_fails_open() {
    let Some(lab) = lab("") else { return };
    for s in &lab.servers {
        s.health_status.store(500, Ordering::Relaxed);
    }
    for i in 0..3 {
        wait_health(&lab, i, "down", Duration::from_secs(5));
    }
    let pool = &lab.status().unwrap()["vips"][0]["pools"][0];
    assert_eq!(pool["all_down_fail_open"], true, "{pool}");
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip(), 300).unwrap();
    assert_eq!(o.failed, 0, "fail open: the last-known set keeps serving");
    lab.assert_no_drops(&watch, &[]);
    assert_eq!(o.by_backend.len(), 3);
}

#[test]
fn slow_start_grows_a_returning_backends_share_instead_of_jumping() {
    let Some(mut lab) = lab(", slowstart = \"6s\"") else {
        return;
    };
    lab.stop_backend(0);
    wait_health(&lab, 0, "down", Duration::from_secs(5));
    lab.start_backend(0).unwrap();
    wait_health(&lab, 0, "up", Duration::from_secs(5));
    let watch = lab.watch().unwrap();
    // Sampled by the weight the agent says b1 has now, not by the clock: each sample is
    // (slow-start percent before, after, b1's share of 150 new connections in between).
    let pct = |lab: &Lab| backend_status(lab, 0)["check"]["slowstart_pct"].as_u64();
    // b1's expected share at p% of its weight beside two backends at full weight.
    let expected = |p: u64| p as f64 * 100.0 / (p as f64 + 200.0);
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Some(p0) = pct(&lab) {
        assert!(Instant::now() < deadline, "slow start never ended: {samples:?}");
        let o = lab.http_load(vip(), 150).unwrap();
        assert_eq!(o.failed, 0);
        let p1 = pct(&lab).unwrap_or(100);
        samples.push((p0, p1, o.by_backend.get("b1").copied().unwrap_or(0) as f64 * 100.0 / 150.0));
    }
    let full = lab.http_load(vip(), 600).unwrap();
    assert_eq!(full.failed, 0);
    lab.assert_no_drops(&watch, &[]);
    let full_share = full.by_backend.get("b1").copied().unwrap_or(0) as f64 * 100.0 / 600.0;
    println!("slow start: (pct before, pct after, b1 share %) {samples:?}, then {full_share:.1}% at full weight");
    let (first, last) = (samples.first().expect("a sample during slow start"), samples.last().unwrap());
    assert!(first.0 <= 30, "the first sample is early in slow start: {samples:?}");
    assert!(first.2 < expected(first.1) + 10.0, "starts small: {samples:?}");
    assert!(samples.len() >= 3 && last.2 > first.2, "grows: {samples:?}");
    assert!((full_share - 33.3).abs() < 7.0, "reaches its full share: {full_share:.1}%");
}

#[test]
fn passive_observation_marks_a_resetting_backend_down_before_active_checks_would() {
    if !is_root() {
        eprintln!("skipped: the lab needs root");
        return;
    }
    let mut lab = Lab::new(&LabOptions { weights: vec![1; 3] }).unwrap();
    let backends: Vec<String> = (0..3)
        .map(|i| format!("{{ address = \"{}:{HTTP_PORT}\" }}", backend4(i)))
        .collect();
    // active checks every 30 s: only passive observation can act within the test
    let text = format!(
        "{}\n[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nactive = \"main\"\nhealth = {{ kind = \"tcp\", interval = \"30s\", observe = true, error_limit = 5 }}\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n",
        lab.agent_section(),
        backends.join(", ")
    );
    let config = lab.write_config_text("veer.toml", &text).unwrap();
    lab.start_agent(&config).unwrap();
    lab.wait_for_vip(vip()).unwrap();
    lab.stop_backend(0);
    let stop = Arc::new(AtomicBool::new(false));
    let load = lab.background_load(vip(), stop.clone(), 50_000).unwrap();
    let down = wait_health(&lab, 0, "down", Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let b = backend_status(&lab, 0);
    assert!(b["check"]["last"].as_str().unwrap().starts_with("PASSIVE"), "{b}");
    // A stopped server refuses SYNs: attempts it never answered (a reset of a flow it had
    // answered would count as backend_resets instead).
    let unanswered = b["counters"]["new_flows"].as_u64().unwrap() - b["counters"]["answered_flows"].as_u64().unwrap();
    assert!(unanswered >= 5, "{b}");
    println!("passive: b1 marked down {down:?} after its server stopped");
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip(), 300).unwrap();
    assert_eq!(o.failed, 0);
    lab.assert_no_drops(&watch, &[]);
}

/// UDP checks: a datagram to each backend, any answer is health. A backend whose UDP
/// server stopped answers with ICMP port-unreachable (refused: L4CON): after `fall` checks
/// it is down and UDP requests through the VIP all reach the others; back after `rise`
/// checks.
#[test]
fn udp_checks_take_a_silent_backend_out_and_bring_it_back() {
    let vips = format!(
        "[[vip]]\nname = \"dns\"\naddress = \"{VIP4}:53\"\nprotocol = \"udp\"\nactive = \"main\"\nhealth = {{ kind = \"udp\", payload = \"ping\", interval = \"{INTERVAL_MS}ms\", timeout = \"150ms\", rise = {RISE}, fall = {FALL}, jitter = \"0%\" }}\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n",
        backend_list(0..3, UDP_PORT)
    );
    let Some(mut lab) = Lab::with_config(3, "", &vips) else {
        return;
    };
    let vip = SocketAddr::new(VIP4.into(), 53);
    for i in 0..3 {
        wait_health(&lab, i, "up", Duration::from_secs(5));
    }
    let failures_before = failures(&lab, 0);
    lab.stop_backend(0);
    wait_health(&lab, 0, "down", Duration::from_secs(5));
    assert_down_after_fall_failures(&lab, 0, failures_before);
    assert_eq!(backend_status(&lab, 0)["check"]["last"], "L4CON");
    // Every UDP request (a new source port each: a new flow) is answered, never by b1.
    let watch = lab.watch().unwrap();
    for n in 0..60 {
        let who = lab
            .udp(vip, b"q")
            .unwrap_or_else(|e| panic!("request {n} unanswered: {e:#}"));
        assert_ne!(who, "b1", "request {n} went to the silent backend");
    }
    lab.assert_no_drops(&watch, &[]);
    lab.start_backend(0).unwrap();
    let back = wait_health(&lab, 0, "up", Duration::from_secs(5));
    assert!(
        back >= Duration::from_millis((RISE - 1) * INTERVAL_MS),
        "up after {back:?}: needs {RISE} checks"
    );
    let answered_by_b1 = (0..150).filter(|_| lab.udp(vip, b"q").is_ok_and(|w| w == "b1")).count();
    assert!(answered_by_b1 > 20, "b1 takes its share again: {answered_by_b1} of 150");
}
