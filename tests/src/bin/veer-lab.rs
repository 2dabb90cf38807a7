//! `cargo xtask run` with no arguments: a small lab — namespaces, three demo backends
//! weighted 1:1:2, the real agent — then bounded demo traffic, and how it spread.

use std::{net::SocketAddr, sync::atomic::Ordering};

use anyhow::bail;
use clap::Parser;
use veer_tests::lab::*;

#[derive(Parser)]
struct Options {
    /// New HTTP connections per address family.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

const WEIGHTS: [u32; 3] = [1, 1, 2];

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
    Ok(())
}

/// Builds the lab, runs the demo traffic per VIP and prints the spread (unless JSON);
/// returns the JSON report. Stops early once [`INTERRUPTED`] is set.
fn demo(opts: &Options) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut report = Vec::new();
    let mut lab = Lab::new(&LabOptions {
        weights: WEIGHTS.to_vec(),
    })?;
    if interrupted() {
        return Ok(report);
    }
    let config = lab.write_config(&WEIGHTS)?;
    lab.start_agent(&config)?;
    let total: u32 = WEIGHTS.iter().sum();
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
                "\nVIP {vip}: {} requests, {} ok, {} failed, {:.0} req/s",
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
        for (i, w) in WEIGHTS.iter().enumerate() {
            let name = backend_name(i);
            let (n, pct) = s.get(&name).copied().unwrap_or((0, 0.0));
            let want = *w as f64 * 100.0 / total as f64;
            if !opts.json {
                println!("  {name:<8} {w:>6} {n:>9} {pct:>6.1}% ({want:.0}%)");
            }
            rows.push(
                serde_json::json!({"backend": name, "weight": w, "requests": n, "share_pct": pct, "want_pct": want}),
            );
        }
        report.push(serde_json::json!({"vip": vip.to_string(), "ok": o.ok, "failed": o.failed, "backends": rows}));
    }
    drop(lab);
    Ok(report)
}
