//! End-to-end, direct server return (L2): the balancer rewrites only the destination MAC;
//! backends hold the VIP on their loopback (arp_ignore=1, arp_announce=2) and answer the
//! client straight over the shared segment, past the balancer.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use veer_tests::lab::*;

/// DSR rewrites no port: the VIP's port is the backends' port.
fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), HTTP_PORT)
}

fn weighted(range: std::ops::Range<usize>, weights: &[u32]) -> String {
    range
        .zip(weights)
        .map(|(i, w)| format!("{{ address = \"{}:{HTTP_PORT}\", weight = {w} }}", backend4(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The VIP on each backend's loopback, and the ARP settings that keep the backends from
/// answering for it on the segment.
fn hold_vip(lab: &Lab) {
    for ns in &lab.backends {
        let n = ns.name.as_str();
        run_cmd(&["ip", "-n", n, "addr", "add", &format!("{VIP4}/32"), "dev", "lo"]).unwrap();
        for s in [
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.eth0.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.eth0.arp_announce=2",
        ] {
            run_cmd(&["ip", "netns", "exec", n, "sysctl", "-qw", s]).unwrap();
        }
    }
}

fn share(o: &Outcome, backend: &str) -> f64 {
    o.by_backend.get(backend).copied().unwrap_or(0) as f64 * 100.0 / o.ok.max(1) as f64
}

#[test]
fn dsr_vip_serves_by_weight_switches_under_load_and_refuses_an_off_link_backend() {
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{}\"\nmode = \"dsr\"\nactive = \"blue\"\n\
         [[vip.pool]]\nname = \"blue\"\nbackends = [ {} ]\n[[vip.pool]]\nname = \"green\"\nbackends = [ {} ]\n",
        vip(),
        weighted(0..2, &[100, 300]),
        weighted(2..3, &[100]),
    );
    let Some(mut lab) = Lab::with_config(3, "", &vips) else {
        return;
    };
    hold_vip(&lab);
    lab.wait_for_vip(vip()).expect("the DSR VIP answers");
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip(), 1000).unwrap();
    assert_eq!((o.ok, o.failed), (1000, 0), "{:?}", o.errors);
    for (b, want) in [("b1", 25.0), ("b2", 75.0)] {
        let got = share(&o, b);
        assert!(
            (got - want).abs() <= 5.0,
            "{b}: {got:.1}% of 1000 connections, weight share {want}%: {:?}",
            o.by_backend
        );
    }
    lab.assert_no_drops(&watch, &[]);
    // Direct return: the balancer forwarded the client's packets only; the backends'
    // answers never crossed its XDP program as NAT replies.
    println!("dsr 1:3 over 1000 connections: {:?}", shares(&o));
    let reasons = |r: &str| lab.status().unwrap()["counters"]["reasons"][r].as_u64().unwrap_or(0);
    let replies = reasons("tx_reply") + reasons("redirect_reply");
    let forwarded = reasons("tx") + reasons("redirect");
    assert_eq!(replies, 0, "no NAT replies in DSR mode");
    assert!(
        forwarded >= 3000,
        "the client's packets were forwarded by XDP: {forwarded}"
    );

    // The table digest depends on addresses and weights only: a backend removed and
    // added back (a new id, another history) gives the same slot -> address map.
    let digest = || lab.veer_ok(&["table", "web", "--digest"]).trim().to_string();
    let d0 = digest();
    assert_eq!(d0.len(), 16, "{d0}");
    let b1 = format!("{}:{HTTP_PORT}", backend4(0));
    lab.veer_ok(&["backend", "del", "web", &b1]);
    let d1 = digest();
    assert_ne!(d1, d0, "the table changed");
    lab.veer_ok(&["backend", "add", "web", "blue", &b1, "--weight", "100"]);
    assert_eq!(digest(), d0, "same members and weights, same table");
    let t: serde_json::Value = serde_json::from_str(&lab.veer_ok(&["--json", "table", "web"])).unwrap();
    let slots = |a: &str| t["slots"][a].as_u64().unwrap_or(0) as f64 / t["ring_size"].as_u64().unwrap_or(1) as f64;
    assert!(
        (slots(&b1) - 0.25).abs() < 0.001,
        "b1 holds a quarter of the slots: {t}"
    );
    assert_eq!(
        (t["mode"].as_str(), t["digest"].as_str()),
        (Some("dsr"), Some(d0.as_str())),
        "{t}"
    );

    // A switch under continuous load: no request fails; new connections then go to green.
    let stop = Arc::new(AtomicBool::new(false));
    let load = lab.background_load(vip(), stop.clone(), 20_000).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.veer_ok(&["switch", "web", "green"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.status().unwrap()["vips"][0]["active"] != "green" {
        assert!(Instant::now() < deadline, "the switch never became active");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let during = load.join().unwrap();
    assert!(during.ok > 50, "the load ran: {during:?}");
    assert_eq!(during.failed, 0, "{:?}", during.errors);
    let after = lab.http_load(vip(), 200).unwrap();
    assert_eq!((after.ok, share(&after, "b3")), (200, 100.0), "{:?}", after.by_backend);
    lab.assert_no_drops(&watch, &[]);

    // A backend behind a gateway cannot be reached by a MAC rewrite: refused, nothing changes.
    run_cmd(&[
        "ip",
        "-n",
        &lab.lb.name,
        "route",
        "add",
        "10.201.0.0/24",
        "via",
        "10.77.0.11",
    ])
    .unwrap();
    let before = lab.veer_ok(&["--json", "status"]);
    let (code, _, err) = lab
        .veer(&["backend", "add", "web", "green", &format!("10.201.0.5:{HTTP_PORT}")])
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not on a directly connected network") && err.contains("gateway 10.77.0.11"),
        "{err}"
    );
    assert_eq!(
        without_counters(&serde_json::from_str(&lab.veer_ok(&["--json", "status"])).unwrap()),
        without_counters(&serde_json::from_str(&before).unwrap()),
        "nothing applied"
    );

    // At startup too: the agent exits 1 before it touches the kernel.
    let status = lab.agent.take().and_then(|mut a| a.stop());
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let off_link = vips.replace(
        &format!("{}:{HTTP_PORT}", backend4(2)),
        &format!("10.201.0.5:{HTTP_PORT}"),
    );
    let bad = lab
        .write_config_text("off-link.toml", &format!("{}\n{off_link}", lab.agent_section()))
        .unwrap();
    let e = format!("{:#}", lab.start_agent(&bad).expect_err("refused"));
    assert!(
        e.contains("exit status: 1")
            && e.contains("DSR backend 10.201.0.5:8080 is not on a directly connected network"),
        "{e}"
    );
}
