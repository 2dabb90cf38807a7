//! End-to-end: veer on a real edge host. A balancer namespace left as a fresh host is
//! (no sysctl, no neighbour resolved, no health checks) forwards from the first packet;
//! restarts, reloads and crashes of the agent lose no request; cleanup is explicit.

use std::{net::SocketAddr, time::Duration};

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
