//! End-to-end in network namespaces: a client, the balancer (the real agent and XDP
//! program, native mode on a veth) and three backends with real HTTP and UDP servers.

use std::net::SocketAddr;

use veer_tests::lab::*;

const WEIGHTS: [u32; 3] = [1, 1, 2];

fn lab_with_agent() -> Option<Lab> {
    Lab::with_agent(&WEIGHTS)
}

fn assert_all_ok(lab: &Lab, what: &str, o: &Outcome, n: usize) {
    assert_eq!(
        (o.ok, o.failed),
        (n, 0),
        "{what}: {} of {n} failed, first errors: {:?}\nagent log:\n{}",
        o.failed,
        o.errors,
        lab.agent_log()
    );
}

fn assert_weighted_split(o: &Outcome) {
    let s = shares(o);
    for (i, want) in [25.0, 25.0, 50.0].iter().enumerate() {
        let got = s.get(&backend_name(i)).map(|x| x.1).unwrap_or(0.0);
        assert!(
            (got - want).abs() <= 5.0,
            "backend {} got {got:.1}% of new connections, want {want}% ± 5: {s:?}",
            backend_name(i)
        );
    }
}

fn http_and_udp(lab: &Lab, http: SocketAddr, udp: SocketAddr) {
    lab.wait_for_vip(http).unwrap();
    let watch = lab.watch().unwrap();
    let o = lab.http_load(http, 600).unwrap();
    assert_all_ok(lab, "600 new connections", &o, 600);
    println!("{http}: 600/600 ok in {:?}, spread {:?}", o.elapsed, shares(&o));
    let reply = lab.udp(udp, b"hello").unwrap();
    assert!(reply.starts_with('b'), "UDP reply names a backend: {reply:?}");
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn six_hundred_new_connections_to_the_vip_all_succeed_and_udp_answers() {
    let Some(lab) = lab_with_agent() else { return };
    http_and_udp(&lab, SocketAddr::new(VIP4.into(), 80), SocketAddr::new(VIP4.into(), 53));
}

#[test]
fn backends_weighted_1_1_2_get_25_25_50_percent_of_new_connections() {
    let Some(lab) = lab_with_agent() else { return };
    let vip = SocketAddr::new(VIP4.into(), 80);
    lab.wait_for_vip(vip).unwrap();
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip, 2000).unwrap();
    assert_all_ok(&lab, "2000 new connections", &o, 2000);
    assert_weighted_split(&o);
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn ipv6_http_udp_and_weights_work_the_same() {
    let Some(lab) = lab_with_agent() else { return };
    let vip = SocketAddr::new(VIP6.into(), 80);
    http_and_udp(&lab, vip, SocketAddr::new(VIP6.into(), 53));
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip, 2000).unwrap();
    assert_all_ok(&lab, "2000 new IPv6 connections", &o, 2000);
    assert_weighted_split(&o);
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn the_lab_leaves_nothing_behind_even_when_a_test_panics() {
    if !is_root() {
        eprintln!("skipped: the lab needs root");
        return;
    }
    let mut seen = None;
    let result = std::panic::catch_unwind(|| {
        let lab = lab_with_agent().unwrap();
        let pid = lab.agent.as_ref().and_then(|a| a.pid()).unwrap();
        // hand the names out before failing on purpose
        std::panic::panic_any((lab.prefix.clone(), pid));
    });
    if let Err(p) = result
        && let Some(v) = p.downcast_ref::<(String, u32)>()
    {
        seen = Some(v.clone());
    }
    let (prefix, pid) = seen.expect("the test body panicked with the lab's names");
    assert!(
        leftover_namespaces(&prefix).is_empty(),
        "namespaces left: {:?}",
        leftover_namespaces(&prefix)
    );
    assert!(
        !std::path::Path::new(veer::dataplane::PIN_DIR).exists(),
        "pinned maps left behind"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent process {pid} still running"
    );
}
