//! End-to-end on a two-armed balancer: clients on eth0, a backend network on eth1. The XDP
//! program runs on both; a new flow is rewritten on eth0 and leaves by eth1 through the
//! devmap (XDP_REDIRECT), its replies come back on eth1 and leave by eth0 the same way.
//! Nothing here may ride the kernel's stack: the redirect counters carry every packet.

use std::net::SocketAddr;

use veer_tests::lab::*;

/// The backend network behind the balancer's second arm.
const FAR_LB: &str = "10.78.2.2";
const FAR_BACKEND: &str = "10.78.2.11";

fn reason(lab: &Lab, name: &str) -> u64 {
    lab.status().unwrap()["counters"]["reasons"][name].as_u64().unwrap_or(0)
}

#[test]
fn a_second_interface_carries_flows_both_ways_by_xdp_redirect() {
    if !is_root() {
        eprintln!("skipped: the lab needs root (network namespaces, XDP)");
        return;
    }
    let mut lab = Lab::new(&LabOptions { weights: vec![1] }).unwrap();
    // A backend namespace joined to the balancer by a veth of its own: the balancer's eth1.
    let far = Netns::new(&format!("{}-far", lab.prefix)).unwrap();
    let (lb, fr) = (lab.lb.name.clone(), far.name.clone());
    for args in [
        vec![
            "ip", "-n", &lb, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &fr,
        ],
        vec!["ip", "-n", &lb, "addr", "add", "10.78.2.2/24", "dev", "eth1"],
        vec!["ip", "-n", &lb, "link", "set", "dev", "eth1", "up"],
        vec!["ip", "-n", &fr, "link", "set", "dev", "lo", "up"],
        vec!["ip", "-n", &fr, "addr", "add", "10.78.2.11/24", "dev", "eth0"],
        vec!["ip", "-n", &fr, "link", "set", "dev", "eth0", "up"],
        // Replies go to the balancer's NAT address, which lives on its other arm.
        vec!["ip", "-n", &fr, "route", "add", "default", "via", FAR_LB],
        // A sender into XDP must not leave checksums to offload; a veth that receives
        // redirected frames needs GRO (or an XDP program) on its peer (TOOLCHAIN.md).
        vec![
            "ip", "netns", "exec", &fr, "ethtool", "-K", "eth0", "tx", "off", "gro", "on",
        ],
        vec!["ip", "netns", "exec", &lb, "ethtool", "-K", "eth1", "tx", "off"],
    ] {
        run_cmd(&args).unwrap();
    }
    let _far_servers = Servers::start(&far, "far1", HTTP_PORT, UDP_PORT).unwrap();
    let text = format!(
        "{}\n[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {{ address = \"{FAR_BACKEND}:{HTTP_PORT}\" }} ]\n",
        lab.agent_section()
            .replace("interfaces = [\"eth0\"]", "interfaces = [\"eth0\", \"eth1\"]")
    );
    let config = lab.write_config_text("veer.toml", &text).unwrap();
    lab.start_agent(&config).unwrap();
    let vip = SocketAddr::new(VIP4.into(), 80);
    lab.wait_for_vip(vip).unwrap();
    let watch = lab.watch().unwrap();
    let (redirect, redirect_reply, tx, tx_reply) = (
        reason(&lab, "redirect"),
        reason(&lab, "redirect_reply"),
        reason(&lab, "tx"),
        reason(&lab, "tx_reply"),
    );
    let o = lab.http_load(vip, 300).unwrap();
    assert_eq!(
        (o.ok, o.failed),
        (300, 0),
        "{:?}\nagent log:\n{}",
        o.errors,
        lab.agent_log()
    );
    assert_eq!(o.by_backend.keys().collect::<Vec<_>>(), ["far1"]);
    // Each connection is at least SYN, request, ACKs, FIN one way, and as many back.
    let to_backend = reason(&lab, "redirect") - redirect;
    let to_client = reason(&lab, "redirect_reply") - redirect_reply;
    assert!(
        to_backend >= 3 * 300,
        "client -> backend packets redirected: {to_backend}"
    );
    assert!(
        to_client >= 3 * 300,
        "backend -> client packets redirected: {to_client}"
    );
    assert_eq!(
        (reason(&lab, "tx") - tx, reason(&lab, "tx_reply") - tx_reply),
        (0, 0),
        "no packet of this VIP leaves by the interface it came in"
    );
    lab.assert_no_drops(&watch, &[]);
    // A reply spoofed from the client side (the backend's address and port, to the NAT
    // address and a live flow's port, arriving on eth0) is dropped: replies are accepted
    // only from eth1, the interface the flow leaves by. The real flow goes on.
    let mut conn = lab.connect(vip).unwrap();
    keepalive_get(&mut conn).unwrap();
    let port = conn.local_addr().unwrap().port();
    let before = reason(&lab, "drop_reply_iface");
    lab.client
        .run(move || {
            use socket2::{Domain, Protocol, SockAddr, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).unwrap();
            let far: std::net::Ipv4Addr = FAR_BACKEND.parse().unwrap();
            let mut pkt = Vec::new();
            etherparse::PacketBuilder::ipv4(far.octets(), SNAT4.octets(), 64)
                .tcp(HTTP_PORT, port, 1, 64240)
                .ack(1)
                .write(&mut pkt, b"spoofed")
                .unwrap();
            s.send_to(&pkt, &SockAddr::from(SocketAddr::new(SNAT4.into(), 0)))
                .unwrap();
        })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        reason(&lab, "drop_reply_iface"),
        before + 1,
        "the spoofed reply on the client arm is dropped"
    );
    assert_eq!(keepalive_get(&mut conn).unwrap(), "far1", "the real flow is untouched");
}
