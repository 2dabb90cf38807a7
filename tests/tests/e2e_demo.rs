//! `cargo xtask run`'s lab demo keeps its promise: the spread over a weighted pool, then a
//! blue→green switch and a canary back to blue under continuous load, with no failed
//! request and the requests reaching the pools the deployments name.

use veer_tests::lab::{is_root, veer_bin};

#[test]
fn the_demo_switches_and_canaries_under_load_with_no_failed_request() {
    if !is_root() {
        eprintln!("skipped: the lab needs root (network namespaces, XDP)");
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veer-lab"))
        .args(["--requests", "100", "--json"])
        .env("VEER_BIN", veer_bin().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "veer-lab: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["drops"],
        serde_json::json!([]),
        "no drop reason grew and no SYN was retransmitted over the whole demo: {report:#}"
    );
    let spread = report["spread"].as_array().unwrap();
    assert_eq!(spread.len(), 2, "IPv4 and IPv6: {report:#}");
    for s in spread {
        assert_eq!((s["ok"].as_u64(), s["failed"].as_u64()), (Some(100), Some(0)), "{s:#}");
    }
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "a switch and a canary: {report:#}");
    let requests_to = |phase: &serde_json::Value, pool: &str| -> u64 {
        phase["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["pool"] == pool)
            .map(|b| b["requests"].as_u64().unwrap())
            .sum()
    };
    for (phase, from, to) in [(&phases[0], "blue", "green"), (&phases[1], "green", "blue")] {
        assert_eq!(phase["failed"], 0, "{phase:#}");
        assert!(
            phase["ok"].as_u64().unwrap() >= 100,
            "load ran through the change: {phase:#}"
        );
        // Load ran before the change (to `from`) and after it (to `to`).
        assert!(requests_to(phase, from) > 0 && requests_to(phase, to) > 0, "{phase:#}");
    }
}
