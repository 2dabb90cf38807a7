//! The agent's JSON log is ECS (every line: `@timestamp`, `log.level`, `message`,
//! `ecs.version`), and every change through the API is an audit event naming the peer, the
//! verb, the outcome and the state before and after.

use std::net::SocketAddr;

use serde_json::Value;
use veer_tests::lab::*;

const TOKEN: &str = "0123456789abcdef-audit";
const TCP_API: &str = "127.0.0.1:9480";

fn audit_events(log: &str, action: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event.action"] == action && v["event.kind"] == "event")
        .collect()
}

#[test]
fn a_switch_through_the_api_is_an_ecs_audit_event_with_peer_and_before_after() {
    if !is_root() {
        eprintln!("skipped: the lab needs root (network namespaces, XDP)");
        return;
    }
    let mut lab = Lab::new(&LabOptions { weights: vec![1; 2] }).expect("build the lab");
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nactive = \"blue\"\n\
         [[vip.pool]]\nname = \"blue\"\nbackends = [ {} ]\n\
         [[vip.pool]]\nname = \"green\"\nbackends = [ {} ]\n",
        backend_list(0..1, HTTP_PORT),
        backend_list(1..2, HTTP_PORT)
    );
    let tokens = lab
        .write_config_text("tokens", &format!("ci-runner {TOKEN}\n"))
        .unwrap();
    let agent = format!(
        "{}api_listen = \"{TCP_API}\"\napi_token_file = \"{}\"\n",
        lab.agent_section(),
        tokens.display()
    );
    let config = lab.write_config_text("veer.toml", &format!("{agent}\n{vips}")).unwrap();
    lab.start_agent_with(&config, &["--log-format", "json"])
        .unwrap();
    let vip = SocketAddr::new(VIP4.into(), 80);
    lab.wait_for_vip(vip).unwrap();

    let (code, out, err) = lab.veer(&["switch", "web", "green"]).unwrap();
    assert_eq!(code, 0, "switch: {out}{err}");
    let (code, _, _) = lab.veer(&["switch", "web", "purple"]).unwrap();
    assert_ne!(code, 0, "a switch to a pool that does not exist is refused");
    // The status read in between is no change: no audit event for it.
    lab.status().unwrap();
    // Back to blue over the TCP API (plaintext on loopback), with a named token.
    let answer = lab
        .lb
        .run(|| -> std::io::Result<String> {
            use std::io::{Read as _, Write as _};
            let body = r#"{"vip":"web","pool":"blue"}"#;
            let mut s = std::net::TcpStream::connect(TCP_API)?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            write!(
                s,
                "POST /v1/switch HTTP/1.1\r\nHost: veer\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let log = lab.agent_log();
    let mut lines = 0;
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        let ts = v["@timestamp"].as_str().unwrap_or_else(|| panic!("no @timestamp: {l}"));
        assert!(
            humantime::parse_rfc3339(ts).is_ok(),
            "@timestamp {ts:?} is not RFC 3339"
        );
        assert!(
            ["trace", "debug", "info", "warn", "error"].contains(&v["log.level"].as_str().unwrap_or("")),
            "log.level: {l}"
        );
        assert!(v["message"].is_string() && v["ecs.version"].is_string(), "{l}");
        lines += 1;
    }
    assert!(lines >= 3, "{log}");

    // SAFETY: trivial libc call.
    let uid = unsafe { libc::geteuid() }.to_string();
    let ok: Vec<Value> = audit_events(&log, "switch")
        .into_iter()
        .filter(|v| v["event.outcome"] == "success")
        .collect();
    assert_eq!(ok.len(), 2, "one audit event per applied switch:\n{log}");
    let e = &ok[0];
    assert_eq!(
        (&e["event.category"], &e["event.type"], &e["veer.vip"]),
        (
            &Value::from("configuration"),
            &Value::from("change"),
            &Value::from("web")
        ),
        "{e:#}"
    );
    assert_eq!(e["user.id"], Value::from(uid.as_str()), "the socket peer's uid: {e:#}");
    assert!(e["veer.peer.pid"].is_u64(), "the socket peer's pid: {e:#}");
    assert_eq!(e["veer.change.before"]["active"], "blue", "{e:#}");
    assert_eq!(e["veer.change.after"]["active"], "green", "{e:#}");
    assert_eq!(e["veer.change.after"]["deployment"]["previous_active"], "blue", "{e:#}");

    let tcp = &ok[1];
    assert_eq!(
        (&tcp["user.name"], &tcp["client.address"]),
        (&Value::from("ci-runner"), &Value::from("127.0.0.1")),
        "the TCP client and its token's name: {tcp:#}"
    );
    assert_eq!(
        (
            &tcp["veer.change.before"]["active"],
            &tcp["veer.change.after"]["active"]
        ),
        (&Value::from("green"), &Value::from("blue")),
        "{tcp:#}"
    );

    let refused: Vec<Value> = audit_events(&log, "switch")
        .into_iter()
        .filter(|v| v["event.outcome"] == "failure")
        .collect();
    assert_eq!(refused.len(), 1, "one audit event for the refused switch:\n{log}");
    let r = &refused[0];
    assert_eq!(r["log.level"], "warn", "{r:#}");
    assert!(r["error.message"].as_str().unwrap_or("").contains("purple"), "{r:#}");
    assert_eq!(
        r["veer.change.before"], r["veer.change.after"],
        "a refused change changes nothing: {r:#}"
    );
}
