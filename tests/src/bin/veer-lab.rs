//! `cargo xtask run` with no arguments: a small lab — namespaces, five demo backends, the
//! real agent — then bounded demo traffic: how new connections spread over a pool weighted
//! 1:1:2 (IPv4 and IPv6), then veer's promise under load: a blue→green switch and a short
//! canary back to blue, with every request counted (none fails) and where each one went.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    time::Duration,
};

use anyhow::{bail, ensure};
use clap::Parser;
use veer_tests::lab::*;

#[derive(Parser)]
struct Options {
    /// New HTTP connections per address family for the spread.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// The canary's steps (percent of new flows to blue), each held one --step-interval.
    #[arg(long, default_value = "10,50,100")]
    canary_steps: String,
    /// How long each canary step is held.
    #[arg(long, default_value = "1s")]
    step_interval: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Backends 0-2 form pool blue (weighted 1:1:2), 3-4 pool green.
const WEIGHTS: [u32; 5] = [1, 1, 2, 1, 1];
const BLUE: std::ops::Range<usize> = 0..3;
const GREEN: std::ops::Range<usize> = 3..5;
/// Bounds on each phase's background load.
const PHASE_MAX_REQUESTS: usize = 50_000;

fn main() -> anyhow::Result<()> {
    let opts = Options::parse();
    if !is_root() {
        bail!("the lab creates network namespaces and loads XDP: run it as root");
    }
    // Ctrl-C stops the traffic within a request's timeout (or ends the current setup step),
    // then everything is torn down and the lab exits 130, whatever step it was in. The agent
    // and the lab's helper commands run in process groups of their own, so the terminal's
    // SIGINT reaches only this process.
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    // The lab is dropped (torn down) inside `demo`, on success and on error alike.
    let result = demo(&opts);
    if interrupted() {
        eprintln!("\ninterrupted: lab torn down (namespaces, servers, agent and pinned maps removed)");
        std::process::exit(130);
    }
    let report = result?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("\nlab torn down: namespaces, servers, agent and pinned maps removed");
    }
    let failed = report["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(report["spread"].as_array().into_iter().flatten())
        .filter_map(|p| p["failed"].as_u64())
        .sum::<u64>();
    ensure!(failed == 0, "{failed} requests failed");
    let drops = report["drops"].as_array().map_or(0, |d| d.len());
    ensure!(drops == 0, "packets were lost: {}", report["drops"]);
    Ok(())
}

fn pool_of(i: usize) -> &'static str {
    if BLUE.contains(&i) { "blue" } else { "green" }
}

/// The demo's config: web4 with pools blue and green, web6 with one pool like blue.
fn config(lab: &Lab) -> String {
    let list = |range: std::ops::Range<usize>, v6: bool| -> String {
        range
            .map(|i| {
                let addr = if v6 {
                    format!("[{}]:{HTTP_PORT}", backend6(i))
                } else {
                    format!("{}:{HTTP_PORT}", backend4(i))
                };
                format!("{{ address = \"{addr}\", weight = {} }}", WEIGHTS[i])
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let health = "health = { kind = \"http\", path = \"/\", interval = \"500ms\", rise = 1, fall = 2 }";
    format!(
        "{}\n[[vip]]\nname = \"web4\"\naddress = \"{VIP4}:80\"\nactive = \"blue\"\n{health}\n\
         [[vip.pool]]\nname = \"blue\"\nbackends = [ {} ]\n[[vip.pool]]\nname = \"green\"\nbackends = [ {} ]\n\n\
         [[vip]]\nname = \"web6\"\naddress = \"[{VIP6}]:80\"\nactive = \"blue\"\n{health}\n\
         [[vip.pool]]\nname = \"blue\"\nbackends = [ {} ]\n",
        lab.agent_section(),
        list(BLUE, false),
        list(GREEN, false),
        list(BLUE, true),
    )
}

/// Builds the lab, runs the demo and prints it (unless JSON); returns the JSON report.
/// Stops early once [`INTERRUPTED`] is set.
fn demo(opts: &Options) -> anyhow::Result<serde_json::Value> {
    let mut spread = Vec::new();
    let mut phases = Vec::new();
    let mut lab = Lab::new(&LabOptions {
        weights: WEIGHTS.to_vec(),
    })?;
    if interrupted() {
        return Ok(serde_json::json!({}));
    }
    let config = lab.write_config_text("veer.toml", &config(&lab))?;
    lab.start_agent(&config)?;
    let watch = lab.watch()?;
    let total: u32 = WEIGHTS[BLUE].iter().sum();
    for vip in [SocketAddr::new(VIP4.into(), 80), SocketAddr::new(VIP6.into(), 80)] {
        if interrupted() {
            break;
        }
        lab.wait_for_vip(vip)?;
        let o = lab.http_load(vip, opts.requests)?;
        if interrupted() {
            break;
        }
        let s = shares(&o);
        if !opts.json {
            println!(
                "\nVIP {vip}, pool blue: {} requests, {} ok, {} failed, {:.0} req/s",
                opts.requests,
                o.ok,
                o.failed,
                o.ok as f64 / o.elapsed.as_secs_f64()
            );
            println!(
                "  {:<8} {:>6} {:>9} {:>14}",
                "backend", "weight", "requests", "share (want)"
            );
        }
        let mut rows = Vec::new();
        for i in BLUE {
            let w = WEIGHTS[i];
            let name = backend_name(i);
            let (n, pct) = s.get(&name).copied().unwrap_or((0, 0.0));
            let want = w as f64 * 100.0 / total as f64;
            if !opts.json {
                println!("  {name:<8} {w:>6} {n:>9} {pct:>6.1}% ({want:.0}%)");
            }
            rows.push(
                serde_json::json!({"backend": name, "weight": w, "requests": n, "share_pct": pct, "want_pct": want}),
            );
        }
        spread.push(serde_json::json!({"vip": vip.to_string(), "ok": o.ok, "failed": o.failed, "backends": rows}));
    }

    // The promise: deployments under load, every request answered.
    let vip = SocketAddr::new(VIP4.into(), 80);
    let steps = opts.canary_steps.clone();
    let interval = opts.step_interval.clone();
    let deployments: [(&str, Vec<&str>); 2] = [
        (
            "switch web4 blue -> green",
            vec!["switch", "web4", "green", "--wait", "--drain-timeout", "30s"],
        ),
        (
            "canary web4 green -> blue",
            vec![
                "canary",
                "web4",
                "blue",
                "--steps",
                &steps,
                "--interval",
                &interval,
                "--wait",
            ],
        ),
    ];
    for (what, args) in deployments {
        if interrupted() {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let load = lab.background_load(vip, stop.clone(), PHASE_MAX_REQUESTS)?;
        // Load first, then the change: it lands on traffic in flight.
        std::thread::sleep(Duration::from_millis(500));
        let (code, out, err) = lab.veer(&args)?;
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let o = load.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
        ensure!(code == 0, "veer {}: exit {code}: {out}{err}", args.join(" "));
        let rows: Vec<serde_json::Value> = (0..WEIGHTS.len())
            .map(|i| {
                let name = backend_name(i);
                let n = o.by_backend.get(&name).copied().unwrap_or(0);
                serde_json::json!({"backend": name, "pool": pool_of(i), "requests": n})
            })
            .collect();
        if !opts.json {
            println!(
                "\n{what} (veer {}), under load: {} requests, {} ok, {} failed",
                args.join(" "),
                o.ok + o.failed,
                o.ok,
                o.failed
            );
            println!("  {:<8} {:>6} {:>9}", "backend", "pool", "requests");
            for r in &rows {
                println!(
                    "  {:<8} {:>6} {:>9}",
                    r["backend"].as_str().unwrap_or_default(),
                    r["pool"].as_str().unwrap_or_default(),
                    r["requests"].as_u64().unwrap_or_default()
                );
            }
            for e in &o.errors {
                println!("  error: {e}");
            }
        }
        phases.push(serde_json::json!({
            "deployment": what, "command": args.join(" "), "ok": o.ok, "failed": o.failed, "backends": rows,
        }));
    }
    // Requests that succeeded can still have lost packets (a SYN retransmitted, a drop
    // the client never saw): the data path's drop reasons and the client's SYN retransmits.
    // The first reply to the client, once per family, may ride the stack to resolve the
    // client's neighbour entry (the agent cannot know clients ahead); nothing else may.
    let drops = lab.drops_since(&watch, &["pass_no_neigh<=2"])?;
    if !opts.json {
        match drops.is_empty() {
            true => println!("\nno packet lost: no drop reason grew, no SYN was retransmitted"),
            false => println!("\npackets lost although requests succeeded: {}", drops.join(", ")),
        }
    }
    drop(lab);
    Ok(serde_json::json!({"spread": spread, "phases": phases, "drops": drops}))
}
