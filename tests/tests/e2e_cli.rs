//! End-to-end: what the README promises of the CLI and the agent, each driven as an operator
//! would — `veer check`, JSON errors, the socket's mode, `backend add|del|state maint`,
//! `rollback` after a switch, `--max-failing`, `scheduler = "source-hash"`, `veer flows`
//! and `veer trace` of a live connection, and a refused resize of the pinned table.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use veer_tests::lab::*;

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

fn addr(i: usize) -> String {
    format!("{}:{HTTP_PORT}", backend4(i))
}

/// One TCP VIP over backends `0..n` of the lab, in one pool, with `extra` keys.
fn one_pool(n: usize, extra: &str) -> String {
    format!(
        "[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nactive = \"main\"\n{extra}\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n",
        backend_list(0..n, HTTP_PORT)
    )
}

/// Blue = backends 0, 1; green = 2, 3; blue active.
fn blue_green(extra: &str) -> String {
    format!(
        "[[vip]]\nname = \"web\"\naddress = \"{VIP4}:80\"\nactive = \"blue\"\n{extra}\n[[vip.pool]]\nname = \"blue\"\nbackends = [ {} ]\n\n[[vip.pool]]\nname = \"green\"\nbackends = [ {} ]\n",
        backend_list(0..2, HTTP_PORT),
        backend_list(2..4, HTTP_PORT)
    )
}

#[test]
fn check_accepts_a_good_file_and_names_the_line_of_a_bad_one() {
    let Some(lab) = Lab::with_config(2, "", &one_pool(2, "")) else {
        return;
    };
    let veer = veer_bin().unwrap();
    let good = lab.dir.join("veer.toml");
    let text = std::fs::read_to_string(&good).unwrap();
    let bad = lab
        .write_config_text(
            "bad.toml",
            &text.replace("active = \"main\"", "active = \"main\"\nweight = \"heavy\""),
        )
        .unwrap();
    let run = |file: &std::path::Path, json_out: bool| {
        let mut cmd = command_in(&lab.lb, &veer).unwrap();
        if json_out {
            cmd.arg("--json");
        }
        let out = cmd.arg("check").arg("--config").arg(file).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&good, false);
    assert_eq!(code, Some(0), "a good file passes: {out}{err}");
    assert!(out.contains("vip web"), "check lists the VIP: {out}");
    let (code, out, err) = run(&good, true);
    assert_eq!(code, Some(0), "{out}{err}");
    let v = json(&out);
    assert_eq!(
        (v["ok"].as_bool(), v["vips"][0]["name"].as_str()),
        (Some(true), Some("web")),
        "{v}"
    );
    assert_eq!(v["vips"][0]["backends"], 2, "{v}");
    let (code, out, err) = run(&bad, true);
    assert_eq!(code, Some(1), "{out}{err}");
    let v = json(out.trim());
    assert_eq!(v["exit_code"], 1, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("bad.toml:")), "{v}");
    let (code, out, err) = run(&bad, false);
    assert_eq!(code, Some(1), "a bad file is rejected with exit 1: {out}{err}");
    let msg = format!("{out}{err}");
    let bad_text = std::fs::read_to_string(&bad).unwrap();
    let line = bad_text.lines().position(|l| l.starts_with("weight = ")).unwrap() + 1;
    assert!(
        msg.contains(&format!("bad.toml:{line}:")),
        "the error names the file and line {line}: {msg}"
    );
    assert!(msg.contains("weight"), "the error names the field: {msg}");
    assert_eq!(
        lab.status().unwrap()["vips"].as_array().unwrap().len(),
        1,
        "check changed nothing"
    );
}

#[test]
fn json_errors_carry_the_message_and_the_exit_code() {
    let Some(lab) = Lab::with_config(2, "", &one_pool(2, "")) else {
        return;
    };
    for (args, code) in [
        (
            vec!["--json", "backend", "set", "nosuch", "10.77.0.11:8080", "weight", "5"],
            1,
        ),
        (
            vec!["--json", "backend", "set", "web", "10.77.0.11:8080", "weight", "10001"],
            1,
        ),
    ] {
        let (got, out, err) = lab.veer(&args).unwrap();
        assert_eq!(got, code, "veer {args:?}: {out}{err}");
        let v = json(out.trim());
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "an error message: {v}"
        );
        assert_eq!(v["exit_code"], code, "the exit code in the JSON: {v}");
    }
    let out = std::process::Command::new(veer_bin().unwrap())
        .args(["--json", "--socket", "/nonexistent/veer.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unreachable agent exits 2");
    let v = json(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/veer.sock")),
        "{v}"
    );
    assert_eq!(v["exit_code"], 2, "{v}");
}

/// `veer ARGS` with no agent anywhere near: the socket does not exist, so a command that
/// contacted the agent would exit 2.
fn veer_alone(args: &[&str], env_socket: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(veer_bin().unwrap());
    cmd.env_remove("VEER_SOCKET");
    if let Some(s) = env_socket {
        cmd.env("VEER_SOCKET", s);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI contract scripts rely on, with no agent running: usage errors exit 64, invalid
/// values exit 1 without the agent being contacted, and with --json every failure is one
/// JSON object with its message and exit code.
#[test]
fn usage_errors_exit_64_and_invalid_values_exit_1_without_contacting_the_agent() {
    let nowhere = "/nonexistent/veer-cli-contract.sock";
    let bad_file = std::env::temp_dir().join(format!("veer-cli-contract-{}.toml", std::process::id()));
    std::fs::write(
        &bad_file,
        "[[vip]]\nname = \"web\"\naddress = \"10.0.0.1:80\"\nactive = \"nosuch\"\n",
    )
    .unwrap();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(bad_file.clone());
    let bad_file = bad_file.to_str().unwrap();
    let usage: &[&[&str]] = &[
        &["swich", "web", "green"],
        &["switch", "web"],
        &["split", "web", "green"],
        &["canary", "web", "green"],
        &["backend", "set", "web", "10.0.0.1:80", "volume", "3"],
        &["switch", "web", "green", "--no-such-flag"],
        &["backend", "set", "web", "10.0.0.1:80", "state", "sleeping"],
        &[],
    ];
    let invalid: &[&[&str]] = &[
        &["split", "web", "green", "150%"],
        &["split", "web", "green", "ten"],
        &["ab", "web", "green", "--cidr", "10.1.0.0/33"],
        &["ab", "web", "green", "--cidr", "10.1.2.3/16"],
        &["ab", "web", "green", "--cidr", "fd00::1/64"],
        &["backend", "set", "web", "10.0.0.1:80", "weight", "10001"],
        &["backend", "set", "web", "10.0.0.1:80", "weight", "-1"],
        &["backend", "set", "web", "10.0.0.1:80", "weight", "heavy"],
        &["backend", "add", "web", "blue", "10.0.0.1:80", "--weight", "20000"],
        &["backend", "add", "web", "blue", "10.0.0.1"],
        &["switch", "web", "green", "--wait", "--drain-timeout", "5 parsecs"],
        &["canary", "web", "green", "--steps", "50,10", "--interval", "1s"],
        &["canary", "web", "green", "--steps", "10,150", "--interval", "1s"],
        &["canary", "web", "green", "--interval", "soon"],
        &[
            "canary",
            "web",
            "green",
            "--interval",
            "1s",
            "--gate-prometheus",
            "https://prom:9090",
            "up",
        ],
        &["rollout", "web", "blue", "--exec", "true", "--drain-timeout", "forever"],
        &["rollout", "web", "blue", "--exec", "true", "--batch", "0"],
        &["canary", "web", "green", "--interval", "1s", "--gate", " "],
        &["status", "--watch", "--interval", "0s"],
        &["trace", "web", "10.0.0.7"],
        &["flows", "web/../x"],
        &["apply", "-f", "/nonexistent/veer.toml"],
        &["apply", "-f", bad_file],
    ];
    for (args, want) in usage.iter().map(|a| (a, 64)).chain(invalid.iter().map(|a| (a, 1))) {
        let (code, out, err) = veer_alone(&[&["--socket", nowhere], *args].concat(), None);
        assert_eq!(code, Some(want), "veer {args:?}: {out}{err}");
        if want == 1 {
            assert!(!err.contains("unreachable"), "veer {args:?} contacted the agent: {err}");
            assert!(err.starts_with("error: "), "veer {args:?}: a clear error: {err}");
        }
        let (code, out, err) = veer_alone(&[&["--json", "--socket", nowhere], *args].concat(), None);
        assert_eq!(code, Some(want), "veer --json {args:?}: {out}{err}");
        let v = json(out.trim());
        assert_eq!(v["exit_code"], want, "veer --json {args:?}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty() && !e.contains('\n')),
            "veer --json {args:?}: a one-line message: {v}"
        );
    }
    // --help and --version are answers, not errors.
    assert_eq!(veer_alone(&["--help"], None).0, Some(0));
    assert_eq!(veer_alone(&["switch", "--help"], None).0, Some(0));
    assert_eq!(veer_alone(&["--version"], None).0, Some(0));
}

/// An unreachable agent's message says where the socket came from, so an operator knows
/// what to change.
#[test]
fn the_unreachable_message_says_how_the_socket_was_chosen() {
    let (code, _, err) = veer_alone(&["--socket", "/nonexistent/a.sock", "status"], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/a.sock") && err.contains("--socket"), "{err}");
    let (code, _, err) = veer_alone(&["status"], Some("/nonexistent/b.sock"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("/nonexistent/b.sock") && err.contains("VEER_SOCKET"),
        "{err}"
    );
    // The default socket: only where no agent of this host answers on it.
    if !std::path::Path::new("/run/veer/veer.sock").exists() {
        let (code, _, err) = veer_alone(&["status"], None);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("/run/veer/veer.sock") && err.contains("default socket"),
            "{err}"
        );
    }
}

#[test]
fn the_api_socket_is_private_to_root() {
    let Some(lab) = Lab::with_config(2, "", &one_pool(2, "")) else {
        return;
    };
    let mode = std::fs::metadata(lab.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
}

#[test]
fn backend_add_del_and_maint_change_where_new_connections_go() {
    let Some(lab) = Lab::with_config(3, "", &one_pool(2, "")) else {
        return;
    };
    lab.wait_for_vip(vip()).unwrap();
    let watch = lab.watch().unwrap();
    let o = lab.http_load(vip(), 200).unwrap();
    assert_eq!(
        (o.failed, o.by_backend.contains_key("b3")),
        (0, false),
        "{:?}",
        o.by_backend
    );

    lab.veer_ok(&["backend", "add", "web", "main", &addr(2), "--weight", "100"]);
    let o = lab.http_load(vip(), 300).unwrap();
    assert_eq!(o.failed, 0, "{:?}", o.errors);
    let b3 = o.by_backend.get("b3").copied().unwrap_or(0);
    assert!(
        (60..=140).contains(&b3),
        "an added backend takes about a third: {b3} of 300"
    );

    lab.veer_ok(&["backend", "set", "web", &addr(0), "state", "maint"]);
    let b = &lab.status().unwrap()["vips"][0]["pools"][0]["backends"][0];
    assert_eq!(b["admin"], "maint", "{b}");
    let o = lab.http_load(vip(), 200).unwrap();
    assert_eq!(
        (o.failed, o.by_backend.contains_key("b1")),
        (0, false),
        "maint: {:?}",
        o.by_backend
    );
    lab.veer_ok(&["backend", "set", "web", &addr(0), "state", "ready"]);

    lab.veer_ok(&["backend", "del", "web", &addr(2)]);
    let o = lab.http_load(vip(), 200).unwrap();
    assert_eq!(
        (o.failed, o.by_backend.contains_key("b3")),
        (0, false),
        "deleted: {:?}",
        o.by_backend
    );
    assert!(
        o.by_backend.contains_key("b1"),
        "b1 is back from maint: {:?}",
        o.by_backend
    );
    let backends = lab.status().unwrap()["vips"][0]["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(backends, 2, "the deleted backend is gone from status");
    // The added backend's neighbour entry is installed before it takes a flow.
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn rollback_after_a_switch_sends_new_connections_back_to_blue() {
    let Some(lab) = Lab::with_config(4, "", &blue_green("")) else {
        return;
    };
    lab.wait_for_vip(vip()).unwrap();
    let watch = lab.watch().unwrap();
    lab.veer_ok(&["switch", "web", "green"]);
    let o = lab.http_load(vip(), 200).unwrap();
    let green = o
        .by_backend
        .keys()
        .filter(|k| ["b3", "b4"].contains(&k.as_str()))
        .count();
    assert_eq!(
        (o.failed, green, o.by_backend.len()),
        (0, 2, 2),
        "after the switch: {:?}",
        o.by_backend
    );
    lab.veer_ok(&["rollback", "web"]);
    let v = &lab.status().unwrap()["vips"][0];
    assert_eq!(v["active"], "blue", "{v}");
    let o = lab.http_load(vip(), 200).unwrap();
    let names: BTreeSet<&str> = o.by_backend.keys().map(String::as_str).collect();
    assert_eq!(
        (o.failed, names),
        (0, BTreeSet::from(["b1", "b2"])),
        "after the rollback"
    );
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn max_failing_lets_a_canary_proceed_past_one_failing_backend() {
    let health = "health = { kind = \"http\", path = \"/healthz\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 3 }";
    let Some(lab) = Lab::with_config(4, "", &blue_green(health)) else {
        return;
    };
    lab.wait_for_vip(vip()).unwrap();
    lab.servers[2].health_status.store(503, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.status().unwrap()["vips"][0]["pools"][1]["backends"][0]["health"] != "down" {
        assert!(Instant::now() < deadline, "b3 never failed its checks");
        std::thread::sleep(Duration::from_millis(50));
    }
    let watch = lab.watch().unwrap();
    let canary = |max: &str| {
        lab.veer(&[
            "canary",
            "web",
            "green",
            "--steps",
            "50,100",
            "--interval",
            "400ms",
            "--max-failing",
            max,
            "--wait",
        ])
        .unwrap()
    };
    let (code, _, err) = canary("0");
    assert_eq!(code, 4, "one failing backend, none allowed: rolled back: {err}");
    assert_eq!(lab.status().unwrap()["vips"][0]["active"], "blue");
    let (code, _, err) = canary("1");
    assert_eq!(code, 0, "one failing backend, one allowed: the canary completes: {err}");
    assert_eq!(lab.status().unwrap()["vips"][0]["active"], "green");
    let o = lab.http_load(vip(), 200).unwrap();
    assert_eq!(o.failed, 0, "{:?}", o.errors);
    assert_eq!(
        o.by_backend.keys().collect::<Vec<_>>(),
        ["b4"],
        "green's healthy backend takes it all"
    );
    lab.assert_no_drops(&watch, &[]);
}

#[test]
fn source_hash_keeps_each_client_on_one_backend_and_spreads_clients() {
    let Some(lab) = Lab::with_config(3, "", &one_pool(3, "scheduler = \"source-hash\"")) else {
        return;
    };
    lab.wait_for_vip(vip()).unwrap();
    let clients = lab.add_client_aliases(30).unwrap();
    let watch = lab.watch().unwrap();
    let seen = lab
        .client
        .run(move || {
            let mut seen: BTreeMap<std::net::IpAddr, BTreeSet<String>> = BTreeMap::new();
            for c in &clients {
                for _ in 0..6 {
                    let name = http_get_from(*c, vip(), Duration::from_secs(3)).expect("request");
                    seen.entry(*c).or_default().insert(name);
                }
            }
            seen
        })
        .unwrap();
    for (c, names) in &seen {
        assert_eq!(names.len(), 1, "client {c} reached several backends: {names:?}");
    }
    let used: BTreeSet<&String> = seen.values().flatten().collect();
    assert_eq!(used.len(), 3, "30 clients spread over all 3 backends: {seen:?}");
    // The first reply to each new, directly connected client address meets an unresolved
    // neighbour and is handed to the stack, which resolves it (clients of a real edge sit
    // behind one router). No more than one per client.
    lab.assert_no_drops(&watch, &["pass_no_neigh<=30"]);
}

#[test]
fn flows_and_trace_name_the_backend_of_an_open_connection() {
    let Some(lab) = Lab::with_config(3, "", &one_pool(3, "")) else {
        return;
    };
    lab.wait_for_vip(vip()).unwrap();
    let mut conn = lab.connect(vip()).unwrap();
    let name = keepalive_get(&mut conn).unwrap();
    let local = conn.local_addr().unwrap();
    let i: usize = name.trim_start_matches('b').parse::<usize>().unwrap() - 1;
    let flows = json(&lab.veer_ok(&["--json", "flows", "web"]));
    let row = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["client"] == local.to_string().as_str())
        .unwrap_or_else(|| panic!("veer flows lists {local}: {flows}"));
    assert_eq!(row["backend"], addr(i).as_str(), "{row}");
    let trace = json(&lab.veer_ok(&["--json", "trace", "web", &local.to_string()]));
    assert_eq!(trace["existing_flow"], true, "{trace}");
    assert_eq!(trace["backend"], addr(i).as_str(), "{trace}");
    // A source port no connection used yet: the prediction, then a real connection.
    let src = SocketAddr::new(CLIENT4.into(), 42_424);
    let trace = json(&lab.veer_ok(&["--json", "trace", "web", &src.to_string()]));
    assert_eq!(trace["existing_flow"], false, "{trace}");
    let got = lab
        .client
        .run(move || http_get_bound(src, vip(), Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    let got_addr = addr(got.trim_start_matches('b').parse::<usize>().unwrap() - 1);
    assert_eq!(
        trace["backend"],
        got_addr.as_str(),
        "trace predicted {trace}, the connection reached {got}"
    );
}

#[test]
fn a_restart_with_another_flow_capacity_is_refused_with_the_reason() {
    let Some(mut lab) = Lab::with_config(2, "", &one_pool(2, "")) else {
        return;
    };
    lab.wait_for_vip(vip()).unwrap();
    lab.agent.as_mut().unwrap().kill_hard();
    let text = std::fs::read_to_string(lab.dir.join("veer.toml")).unwrap();
    let resized = lab
        .write_config_text(
            "resized.toml",
            &text.replace("flow_capacity = 65536", "flow_capacity = 131072"),
        )
        .unwrap();
    let err = lab.start_agent(&resized).expect_err("a resized table must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("flow_capacity"), "the refusal names the key: {msg}");
    // The data path kept forwarding all along, and the old size still starts.
    let o = lab.http_load(vip(), 100).unwrap();
    assert_eq!(o.failed, 0, "{:?}", o.errors);
    let original = lab.dir.join("veer.toml");
    lab.start_agent(&original).unwrap();
}
