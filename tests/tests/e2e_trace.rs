//! End-to-end: `veer trace VIP SRC_IP:SRC_PORT` names the backend that a real connection
//! from that bound source then reaches, in every state a VIP can be in: plain, a split by
//! flow, a split by client, an A/B client network, a canary between steps. Blue = b1, b2;
//! green = b3, b4. The sources are 10 client addresses times 24 ports per state.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};
use veer_tests::lab::*;

const CLIENTS: usize = 10;
const PORTS_PER_CLIENT: u16 = 24;

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}


/// One GET on a new connection from `src` (address and port bound); the backend's name.
fn get_from(src: SocketAddr, vip: SocketAddr) -> anyhow::Result<String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&src.into()).with_context(|| format!("bind {src}"))?;
    sock.connect_timeout(&vip.into(), Duration::from_secs(3))
        .with_context(|| format!("connect {vip} from {src}"))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("unexpected response from {src}: {:?}", text.lines().next());
    }
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string())
}

/// The backend address `veer trace` names for a new flow from `src`.
fn traced(lab: &Lab, src: SocketAddr) -> String {
    let out = lab.veer_ok(&["--json", "trace", "web", &src.to_string()]);
    let t: serde_json::Value = serde_json::from_str(&out).expect("trace answers JSON");
    assert_eq!(t["existing_flow"], false, "{src} is a fresh source: {t}");
    t["backend"].as_str().unwrap_or("none").to_string()
}

/// Traces every source, then connects from each; returns the mismatches and how many
/// connections reached green.
fn check(lab: &Lab, state: &str, sources: &[SocketAddr]) -> (Vec<String>, usize) {
    let predicted: Vec<String> = sources.iter().map(|s| traced(lab, *s)).collect();
    let srcs = sources.to_vec();
    let reached: Vec<anyhow::Result<String>> = lab
        .client
        .run(move || srcs.iter().map(|s| get_from(*s, vip())).collect())
        .unwrap();
    let mut mismatches = Vec::new();
    let mut green = 0;
    for ((src, want), got) in sources.iter().zip(&predicted).zip(reached) {
        let got = match got {
            Ok(name) => {
                let i: usize = name.trim_start_matches('b').parse::<usize>().expect("backend name") - 1;
                green += usize::from(i >= 2);
                format!("{}:{HTTP_PORT}", backend4(i))
            }
            Err(e) => format!("error: {e:#}"),
        };
        if *want != got {
            mismatches.push(format!(
                "{state}: {src}: trace said {want}, the connection reached {got}"
            ));
        }
    }
    (mismatches, green)
}

#[test]
fn trace_names_the_backend_a_connection_from_that_source_reaches_in_every_state() {
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nactive = \"blue\"\n\n[[vip.pool]]\nname = \"blue\"\nbackends = [ {} ]\n\n[[vip.pool]]\nname = \"green\"\nbackends = [ {} ]\n",
        backend_list(0..2, HTTP_PORT),
        backend_list(2..4, HTTP_PORT)
    );
    let Some(lab) = Lab::with_config(4, "", &vips) else {
        return;
    };
    lab.wait_for_vip(vip()).expect("VIP answers");
    let clients: Vec<IpAddr> = lab.add_client_aliases(CLIENTS).expect("client addresses");
    let watch = lab.watch().expect("drop counters");
    // Clients 10.77.0.152..=155 are the A/B network.
    let ab_cidr = "10.77.0.152/30";
    let states: [(&str, &[&str], (f64, f64)); 5] = [
        ("plain", &[], (0.0, 0.0)),
        ("split 30% by flow", &["split", "web", "green", "30%"], (0.15, 0.45)),
        (
            "split 50% by client",
            &["split", "web", "green", "50%", "--by", "client"],
            (0.05, 0.95),
        ),
        ("A/B rule", &["ab", "web", "green", "--cidr", ab_cidr], (0.4, 0.4)),
        (
            "canary between steps",
            &["canary", "web", "green", "--steps", "20,60,100", "--interval", "1h"],
            (0.08, 0.35),
        ),
    ];
    let mut all_mismatches = Vec::new();
    let mut total = 0;
    for (n, (state, command, (min_green, max_green))) in states.iter().enumerate() {
        if n > 1 {
            lab.veer_ok(&["rollback", "web"]);
        }
        if !command.is_empty() {
            lab.veer_ok(command);
        }
        // Fresh ports per state: no source repeats an earlier connection.
        let base = 20_000 + n as u16 * 1000;
        let sources: Vec<SocketAddr> = clients
            .iter()
            .flat_map(|c| (0..PORTS_PER_CLIENT).map(move |p| SocketAddr::new(*c, base + p)))
            .collect();
        assert!(sources.len() >= 200);
        let (mismatches, green) = check(&lab, state, &sources);
        let share = green as f64 / sources.len() as f64;
        assert!(
            (*min_green..=*max_green).contains(&share),
            "{state}: {green} of {} connections reached green ({share:.2}), expected {min_green}..={max_green}: \
             the state is not what the test means to check",
            sources.len()
        );
        total += sources.len();
        all_mismatches.extend(mismatches);
    }
    // The first reply to each new, directly connected client alias rides the stack to
    // resolve its neighbour entry; nothing else may be lost.
    let allowed = format!("pass_no_neigh<={CLIENTS}");
    lab.assert_no_drops(&watch, &[allowed.as_str()]);
    assert!(
        all_mismatches.is_empty(),
        "{} of {total} traces named another backend than the connection reached:\n{}\nagent log:\n{}",
        all_mismatches.len(),
        all_mismatches.join("\n"),
        lab.agent_log()
    );
}
