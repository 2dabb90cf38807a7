//! `cargo xtask bench`: nanoseconds per packet of the XDP balancer on its main paths,
//! measured with BPF_PROG_TEST_RUN and reported as ratios to a minimal XDP_TX program
//! measured in the same run.
//!
//! BPF_PROG_TEST_RUN reuses one packet buffer across repeats, so a rewriting program would
//! see its own output from the second run on. Paths that rewrite run under a harness that
//! restores the original packet and tail-calls the balancer; the harness's own cost (harness
//! tail-calling the XDP_TX program, minus that program alone) is subtracted. Every path is
//! proven by counters: the reason and flow counters must grow by exactly the repeat count.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use aya::{
    maps::{Array, ProgramArray},
    programs::Xdp,
};
use clap::Parser;
use lb_common::{
    BenchPacket, MAP_BENCH_PACKET, MAP_BENCH_PROGS, PROG_BALANCER, PROG_BENCH_FLOOR, PROG_BENCH_HARNESS, Reason,
};
use veer_tests::{
    fixture::*,
    packet::{L4, Spec},
};

#[derive(Parser)]
struct Options {
    /// Runs per measurement (BPF_PROG_TEST_RUN repeat).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Measurements per path; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Measure only the paths whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Skip the control-plane measurements (table build, API flip, agent memory).
    #[arg(long)]
    data_path_only: bool,
    /// Only the agent's memory and status/scrape times (see agent.rs).
    #[arg(long)]
    agent_only: bool,
    /// An older `veer` binary measured beside this build in the agent section.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
}

const FLOW_CAPACITY: u32 = 65_536;

/// How a path is run.
struct Path {
    name: &'static str,
    packet: Vec<u8>,
    /// Runs under the restoring harness (the balancer rewrites this packet).
    harness: bool,
    /// Harness varies client address and port per run: every run is a new flow.
    vary: Option<(u32, u32)>,
    verdict: u32,
    /// Counter that must grow by exactly `repeat` per round.
    proof: Reason,
    new_flows_per_run: u64,
    target: Option<f64>,
    /// Sent once before measuring: re-creates a flow the new-flow path may have evicted.
    warmup: Option<Vec<u8>>,
}

struct Result {
    name: &'static str,
    ns: f64,
    ratio: f64,
    target: Option<f64>,
    proof: String,
}

fn main() -> anyhow::Result<()> {
    let opts = Options::parse();
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads BPF programs into the kernel: run it as root (cargo xtask bench)");
    }
    if opts.agent_only {
        return agent::run(opts.baseline.as_deref()).map(|r| r.print(opts.json));
    }
    let control = if opts.data_path_only || opts.only.is_some() {
        None
    } else {
        Some(control::run()?)
    };
    let (agent, json_out) = if opts.data_path_only || opts.only.is_some() {
        (None, opts.json)
    } else {
        (Some(agent::run(opts.baseline.as_deref())?), opts.json)
    };
    let data = std::thread::spawn(move || data_path(opts))
        .join()
        .map_err(|_| anyhow::anyhow!("data-path bench panicked"))??;
    if let Some(c) = control {
        c.print(data);
    }
    if let Some(a) = agent {
        a.print(json_out);
    }
    Ok(())
}

fn data_path(opts: Options) -> anyhow::Result<bool> {
    ensure!(
        opts.repeat >= 1 && opts.rounds >= 1,
        "--repeat and --rounds must be positive"
    );
    // A full connection table: every new flow evicts an old one, as on a busy balancer. It
    // also keeps the NAT port space (65536 ports per backend and SNAT address) from running out.
    let mut fx = Fixture::new(FLOW_CAPACITY);
    for name in [PROG_BENCH_FLOOR, PROG_BENCH_HARNESS] {
        let p: &mut Xdp = fx.ebpf.program_mut(name).context("program")?.try_into()?;
        p.load().with_context(|| format!("load {name}"))?;
    }
    let ingress = Some(fx.ifindex);
    add_wide_pool(&mut fx);

    // Establish the flows the established and reply paths reuse.
    let syn4 = Spec::tcp_syn((CLIENT4.into(), 40000), (VIP4.into(), 80));
    let syn4_wide = Spec::tcp_syn((CLIENT4.into(), 40000), (VIP4.into(), WIDE_PORT));
    let syn6 = Spec::tcp_syn((CLIENT6.into(), 40000), (VIP6.into(), 80));
    let mut ack4 = Spec {
        l4: L4::Tcp {
            syn: false,
            ack: true,
            seq: 1001,
        },
        ..syn4.clone()
    };
    ack4.payload = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec();
    let ack6 = Spec {
        payload: ack4.payload.clone(),
        l4: ack4.l4,
        ..syn6.clone()
    };
    let (v, fwd4) = fx.run(&syn4.build(), ingress);
    ensure!(v == XDP_TX, "setup SYN not forwarded (verdict {v})");
    let (v, _) = fx.run(&syn6.build(), ingress);
    ensure!(v == XDP_TX, "setup SYN6 not forwarded (verdict {v})");
    let reply4 = reply_to(&syn4, &fwd4)?;
    let other = Spec::tcp_syn((CLIENT4.into(), 40000), ("10.9.0.77".parse()?, 80));

    let paths = [
        Path {
            name: "non-VIP pass",
            packet: other.build(),
            harness: false,
            vary: None,
            verdict: XDP_PASS,
            proof: Reason::PassNotVip,
            new_flows_per_run: 0,
            target: Some(2.0),
            warmup: None,
        },
        Path {
            name: "new TCP flow (IPv4)",
            packet: syn4_wide.build(),
            harness: true,
            vary: Some((26, 34)),
            verdict: XDP_TX,
            proof: Reason::Tx,
            new_flows_per_run: 1,
            target: Some(13.0),
            warmup: None,
        },
        Path {
            name: "established TCP flow (IPv4)",
            packet: ack4.build(),
            harness: true,
            vary: None,
            verdict: XDP_TX,
            proof: Reason::Tx,
            new_flows_per_run: 0,
            target: Some(6.0),
            warmup: Some(ack4.build()),
        },
        Path {
            name: "NAT reply (IPv4)",
            packet: reply4.build(),
            harness: true,
            vary: None,
            verdict: XDP_TX,
            proof: Reason::TxReply,
            new_flows_per_run: 0,
            target: None,
            warmup: Some(syn4.build()),
        },
        Path {
            name: "established TCP flow (IPv6)",
            packet: ack6.build(),
            harness: true,
            vary: None,
            verdict: XDP_TX,
            proof: Reason::Tx,
            new_flows_per_run: 0,
            target: None,
            warmup: Some(ack6.build()),
        },
    ];

    let paths: Vec<Path> = paths
        .into_iter()
        .filter(|p| opts.only.as_ref().is_none_or(|o| p.name.contains(o.as_str())))
        .collect();
    let floor_pkt = syn4.build();
    let mut floor = Vec::new();
    let mut per_path: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut harness_cost: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut new_flow_shortfall = 0u64;
    for round in 0..opts.rounds {
        floor.push(ns(
            fx.run_program(PROG_BENCH_FLOOR, &floor_pkt, ingress, opts.repeat).2,
            opts.repeat,
        ));
        for (i, path) in paths.iter().enumerate() {
            if !path.harness {
                let before = fx.reason(path.proof);
                let (v, _, d) = fx.run_program(PROG_BALANCER, &path.packet, ingress, opts.repeat);
                ensure!(
                    v == path.verdict,
                    "{}: verdict {v}, expected {}",
                    path.name,
                    path.verdict
                );
                ensure!(
                    fx.reason(path.proof) - before == opts.repeat as u64,
                    "{}: {} did not count every run",
                    path.name,
                    path.proof.name()
                );
                per_path[i].push(ns(d, opts.repeat));
                continue;
            }
            set_bench_packet(
                &mut fx,
                &path.packet,
                path.vary,
                round.wrapping_mul(opts.repeat).wrapping_mul(2),
            )?;
            set_tail(&mut fx, PROG_BENCH_FLOOR)?;
            let (v, _, d_floor_via_harness) = fx.run_program(PROG_BENCH_HARNESS, &path.packet, ingress, opts.repeat);
            ensure!(v == XDP_TX, "harness -> floor verdict {v}");
            let floor_now = ns(
                fx.run_program(PROG_BENCH_FLOOR, &path.packet, ingress, opts.repeat).2,
                opts.repeat,
            );
            harness_cost[i].push(ns(d_floor_via_harness, opts.repeat) - floor_now);

            set_tail(&mut fx, PROG_BALANCER)?;
            if let Some(w) = &path.warmup {
                let (_, out) = fx.run(w, ingress);
                if path.proof == Reason::TxReply {
                    // The flow may have been re-created with another NAT port: answer that one.
                    let reply = reply_to(&syn4, &out)?.build();
                    set_bench_packet(&mut fx, &reply, None, 0)?;
                }
            }
            let before = fx.reason(path.proof);
            let flows_before = fx.vip_counters(vip_of(&path.packet)).new_flows;
            let (v, _, d) = fx.run_program(PROG_BENCH_HARNESS, &path.packet, ingress, opts.repeat);
            let counted = fx.reason(path.proof) - before;
            let new_flows = fx.vip_counters(vip_of(&path.packet)).new_flows - flows_before;
            if path.new_flows_per_run == 0 {
                ensure!(
                    v == path.verdict,
                    "{}: verdict {v}, expected {}; reasons: {}",
                    path.name,
                    path.verdict,
                    reasons(&fx)
                );
                ensure!(
                    counted == opts.repeat as u64,
                    "{}: {} counted {counted} of {} runs: wrong path measured",
                    path.name,
                    path.proof.name(),
                    opts.repeat
                );
                ensure!(
                    new_flows == 0,
                    "{}: {new_flows} new flows on an established path",
                    path.name
                );
            } else {
                // A NAT source-port collision can still drop a rare SYN: it must stay rare.
                ensure!(
                    new_flows == counted && counted * 1000 >= opts.repeat as u64 * 999,
                    "{}: only {counted} of {} runs were new flows forwarded; reasons: {}",
                    path.name,
                    opts.repeat,
                    reasons(&fx)
                );
                new_flow_shortfall += opts.repeat as u64 - counted;
            }
            per_path[i].push(ns(d, opts.repeat) - harness_cost[i].last().copied().unwrap_or(0.0));
        }
    }
    let floor_ns = median(&mut floor);
    let results: Vec<Result> = paths
        .iter()
        .zip(per_path.iter_mut())
        .zip(harness_cost.iter_mut())
        .map(|((p, samples), h)| {
            let ns = median(samples);
            let proof = format!(
                "{} {} per round{}{}",
                p.proof.name(),
                if p.new_flows_per_run > 0 {
                    "~".to_string() + &opts.repeat.to_string()
                } else {
                    "+".to_string() + &opts.repeat.to_string()
                },
                if p.new_flows_per_run > 0 {
                    format!(
                        ", new_flows = forwarded; {new_flow_shortfall} of {} SYNs dropped (NAT port taken)",
                        opts.repeat as u64 * opts.rounds as u64
                    )
                } else {
                    String::new()
                },
                if p.harness {
                    format!(", harness {:.1} ns subtracted", median(h))
                } else {
                    String::new()
                },
            );
            Result {
                name: p.name,
                ns,
                ratio: ns / floor_ns,
                target: p.target,
                proof,
            }
        })
        .collect();
    let v4 = results
        .iter()
        .find(|r| r.name == "established TCP flow (IPv4)")
        .map(|r| r.ns)
        .unwrap_or(1.0);
    let v6 = results
        .iter()
        .find(|r| r.name == "established TCP flow (IPv6)")
        .map(|r| r.ns)
        .unwrap_or(0.0);
    if opts.json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| serde_json::json!({"path": r.name, "ns_per_packet": r.ns, "ratio_to_floor": r.ratio, "target_ratio": r.target, "proof": r.proof}))
            .collect();
        let doc = serde_json::json!({
            "repeat": opts.repeat, "rounds": opts.rounds, "floor_ns": floor_ns,
            "paths": rows, "ipv6_over_ipv4_established": v6 / v4,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "XDP data path, BPF_PROG_TEST_RUN x{} per measurement, median of {} rounds",
            opts.repeat, opts.rounds
        );
        println!("floor (XDP_TX-only program): {floor_ns:.1} ns/packet\n");
        println!("{:<30} {:>9} {:>8} {:>8}  proof", "path", "ns/pkt", "x floor", "target");
        for r in &results {
            let target = r.target.map(|t| format!("<= {t}x")).unwrap_or_else(|| "-".into());
            println!(
                "{:<30} {:>9.1} {:>7.2}x {:>8}  {}",
                r.name, r.ns, r.ratio, target, r.proof
            );
        }
        println!("\nIPv6 / IPv4 established: {:.2} (target <= 1.2)", v6 / v4);
    }
    Ok(opts.json)
}

mod agent;
mod control;

fn ns(d: Duration, _repeat: u32) -> f64 {
    d.as_nanos() as f64
}

/// The backend's answer to `request`, given the frame the balancer forwarded for it.
fn reply_to(request: &Spec, forwarded: &[u8]) -> anyhow::Result<Spec> {
    ensure!(forwarded.len() >= 38, "forwarded frame too short");
    let backend_ip = std::net::Ipv4Addr::new(forwarded[30], forwarded[31], forwarded[32], forwarded[33]);
    Ok(Spec {
        src_mac: forwarded[0..6].try_into()?,
        dst_mac: IF_MAC,
        src: backend_ip.into(),
        sport: 8080,
        dst: SNAT4.into(),
        dport: u16::from_be_bytes([forwarded[34], forwarded[35]]),
        l4: L4::Tcp {
            syn: false,
            ack: true,
            seq: 5000,
        },
        payload: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ..request.clone()
    })
}

fn reasons(fx: &Fixture) -> String {
    Reason::ALL
        .iter()
        .map(|r| format!("{}={}", r.name(), fx.reason(*r)))
        .filter(|s| !s.ends_with("=0"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// VIP_STATS index of the VIP a bench packet goes to.
fn vip_of(pkt: &[u8]) -> u32 {
    if pkt[12..14] == [0x86, 0xdd] {
        1
    } else if pkt[36..38] == WIDE_PORT.to_be_bytes() {
        WIDE_VIP_ID
    } else {
        0
    }
}

const WIDE_PORT: u16 = 443;
const WIDE_VIP_ID: u32 = 5;

/// The new-flow path runs against a 16-backend pool: with NAT, each (backend, SNAT address)
/// pair offers 64512 source ports, and three backends behind a full 65536-flow table would
/// measure port exhaustion instead of the data path.
fn add_wide_pool(fx: &mut Fixture) {
    let backends: Vec<(u32, std::net::SocketAddr, u32)> = (0..16u8)
        .map(|i| {
            (
                100 + i as u32,
                std::net::SocketAddr::new(std::net::Ipv4Addr::new(10, 9, 0, 200 + i).into(), 8080),
                1,
            )
        })
        .collect();
    for &(id, addr, _) in &backends {
        fx.set_backend(id, addr, WIDE_VIP_ID, lb_common::BACKEND_READY);
        run_cmd(&[
            "ip",
            "-n",
            &fx.ns.name,
            "neigh",
            "replace",
            &addr.ip().to_string(),
            "lladdr",
            "02:00:00:00:02:00",
            "dev",
            "fx0",
            "nud",
            "permanent",
        ]);
    }
    let pool = Pool { table: 6, backends };
    fx.write_table(&pool);
    let info = lb_common::VipInfo {
        vip_id: WIDE_VIP_ID,
        table_current: 6,
        ..Default::default()
    };
    fx.set_vip(
        std::net::SocketAddr::new(VIP4.into(), WIDE_PORT),
        lb_common::PROTO_TCP,
        info,
    );
}

/// Sets the harness packet; `counter` continues across rounds so no flow repeats.
fn set_bench_packet(fx: &mut Fixture, pkt: &[u8], vary: Option<(u32, u32)>, counter: u32) -> anyhow::Result<()> {
    ensure!(pkt.len() <= 128, "bench packet longer than the harness buffer");
    let mut data = [0u8; 128];
    data[..pkt.len()].copy_from_slice(pkt);
    let (vary_offset, vary_port_offset) = vary.unwrap_or((0, 0));
    let value = BenchPacket {
        len: pkt.len() as u32,
        vary_offset,
        counter,
        vary_port_offset,
        data,
    };
    let mut m: Array<_, BenchPacket> = fx.ebpf.map_mut(MAP_BENCH_PACKET).context("bench map")?.try_into()?;
    m.set(0, value, 0)?;
    Ok(())
}

fn set_tail(fx: &mut Fixture, prog: &str) -> anyhow::Result<()> {
    let fd = {
        let p: &Xdp = fx.ebpf.program(prog).context("program")?.try_into()?;
        p.fd()?.try_clone()?
    };
    let mut progs: ProgramArray<_> = fx.ebpf.map_mut(MAP_BENCH_PROGS).context("bench progs")?.try_into()?;
    progs.set(0, &fd, 0)?;
    Ok(())
}
