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
    Ebpf,
    maps::{Array, PerCpuArray, ProgramArray},
    programs::Xdp,
};
use clap::Parser;
use lb_common::{
    BenchPacket, FloodGuard, FlowKey, MAP_BENCH_KEYS, MAP_BENCH_PACKET, MAP_BENCH_PROGS, MAP_FLOOD_GUARD,
    PROG_BALANCER, PROG_BENCH_FLOOR, PROG_BENCH_HARNESS, Reason,
    conntrack::{
        FlowWays, Heads, RevWays, TAG_CONFIRMED, TAKE_CONFIRMED, TAKE_FREE, TAKE_UNCONFIRMED, WAYS, buckets, slot,
    },
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
    /// Skip the control-plane measurements (table build, API flip, agent memory) and the
    /// end-to-end section.
    #[arg(long)]
    data_path_only: bool,
    /// Only the agent's memory and status/scrape times (see agent.rs).
    #[arg(long)]
    agent_only: bool,
    /// An older `veer` binary measured beside this build in the agent section.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
    /// The end-to-end bench instead: HTTP through veer, HAProxy, nftables and direct.
    #[arg(long)]
    e2e: bool,
    /// End-to-end: seconds per case and load shape.
    #[arg(long, default_value_t = 5)]
    e2e_seconds: u32,
    /// End-to-end: repetitions (cases interleaved and rotated).
    #[arg(long, default_value_t = 3)]
    e2e_reps: u32,
    /// End-to-end: where the JSON report and the SVG plot go.
    #[arg(long, default_value = "target/bench")]
    e2e_out: std::path::PathBuf,
}

const FLOW_CAPACITY: u32 = 65_536;
/// Flows in rotation on the established path over many flows: as many as the table holds.
const ROTATION: u32 = FLOW_CAPACITY;

/// How a path's flows vary from run to run (through the harness).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vary {
    /// One packet, the same flow every run.
    None,
    /// Client address and port from a counter: every run a new flow.
    Counter,
    /// Client address and port from BENCH_KEYS: [`ROTATION`] established flows in turn.
    Rotation,
    /// Backend address and NAT port from BENCH_KEYS: the replies of those flows in turn.
    RotationReply,
}

/// How a path is run.
struct Path {
    name: &'static str,
    packet: Vec<u8>,
    /// Runs under the restoring harness (the balancer rewrites this packet).
    harness: bool,
    vary: Vary,
    verdict: u32,
    /// Counter that must grow by exactly `repeat` per round.
    proof: Reason,
    /// Every run is a new flow (else none is).
    new_flows: bool,
    target: Option<f64>,
    /// Sent before measuring (through the harness over every flow in rotation, for the
    /// rotating paths): re-creates the flows the new-flow path evicted.
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
    let e2e_opts = e2e::Options {
        seconds: opts.e2e_seconds,
        reps: opts.e2e_reps,
        out: opts.e2e_out.clone(),
        json: opts.json,
    };
    if opts.e2e {
        return e2e::run(&e2e_opts);
    }
    let full = !(opts.data_path_only || opts.only.is_some());
    let control = if full { Some(control::run()?) } else { None };
    let agent = if full {
        Some(agent::run(opts.baseline.as_deref())?)
    } else {
        None
    };
    let json_out = opts.json;
    let data = std::thread::spawn(move || data_path(opts))
        .join()
        .map_err(|_| anyhow::anyhow!("data-path bench panicked"))??;
    if let Some(c) = control {
        c.print(data);
    }
    if let Some(a) = agent {
        a.print(json_out);
    }
    if full {
        // The last section: real connections through real balancers.
        e2e::run(&e2e_opts)?;
    }
    Ok(())
}

/// The bench harness's object, loaded beside the balancer's (which carries no bench code).
struct Harness {
    ebpf: Ebpf,
    /// Entries of BENCH_KEYS in use.
    keys: u32,
}

impl Harness {
    fn load() -> anyhow::Result<Harness> {
        let mut ebpf = Ebpf::load(veer::dataplane::BENCH_OBJECT).context("load the bench object")?;
        for name in [PROG_BENCH_FLOOR, PROG_BENCH_HARNESS] {
            let p: &mut Xdp = ebpf.program_mut(name).context("program")?.try_into()?;
            p.load().with_context(|| format!("load {name}"))?;
        }
        Ok(Harness { ebpf, keys: 0 })
    }

    fn prog(&self, name: &str) -> anyhow::Result<&Xdp> {
        Ok(self.ebpf.program(name).context("program")?.try_into()?)
    }

    fn run(&self, name: &str, pkt: &[u8], ingress: Option<u32>, repeat: u32) -> anyhow::Result<(u32, Duration)> {
        let (v, _, d) = test_run(self.prog(name)?, pkt, ingress, repeat);
        Ok((v, d))
    }

    /// Sets the packet the harness restores; `counter` is where its flow counter starts.
    fn set_packet(&mut self, pkt: &[u8], vary: Vary, counter: u32) -> anyhow::Result<()> {
        let keys = self.keys;
        self.set_packet_keys(pkt, vary, counter, keys)
    }

    fn set_packet_keys(&mut self, pkt: &[u8], vary: Vary, counter: u32, keys: u32) -> anyhow::Result<()> {
        ensure!(pkt.len() <= 128, "bench packet longer than the harness buffer");
        let mut data = [0u8; 128];
        data[..pkt.len()].copy_from_slice(pkt);
        let (vary_offset, vary_port_offset, keys) = match vary {
            Vary::None => (0, 0, 0),
            Vary::Counter => (OFF_SRC4, OFF_SPORT4, 0),
            Vary::Rotation => (OFF_SRC4, OFF_SPORT4, keys),
            Vary::RotationReply => (OFF_SRC4, OFF_DPORT4, keys),
        };
        let value = BenchPacket {
            len: pkt.len() as u32,
            vary_offset,
            counter,
            vary_port_offset,
            keys,
            data,
        };
        let mut m: Array<_, BenchPacket> = self.ebpf.map_mut(MAP_BENCH_PACKET).context("bench map")?.try_into()?;
        m.set(0, value, 0)?;
        Ok(())
    }

    fn set_keys(&mut self, keys: &[[u32; 2]]) -> anyhow::Result<()> {
        let mut m: Array<_, [u32; 2]> = self.ebpf.map_mut(MAP_BENCH_KEYS).context("bench keys")?.try_into()?;
        for (i, k) in keys.iter().enumerate() {
            m.set(i as u32, *k, 0)?;
        }
        self.keys = keys.len() as u32;
        Ok(())
    }

    /// The harness tail-calls this object's floor program: measures the harness's own cost.
    fn tail_to_floor(&mut self) -> anyhow::Result<()> {
        let fd = self.prog(PROG_BENCH_FLOOR)?.fd()?.try_clone()?;
        self.set_tail_fd(&fd)
    }

    /// The harness tail-calls `prog` (the balancer, from its own object).
    fn set_tail(&mut self, prog: &Xdp) -> anyhow::Result<()> {
        self.set_tail_fd(prog.fd()?)
    }

    fn set_tail_fd(&mut self, fd: &aya::programs::ProgramFd) -> anyhow::Result<()> {
        let mut progs: ProgramArray<_> = self.ebpf.map_mut(MAP_BENCH_PROGS).context("bench progs")?.try_into()?;
        progs.set(0, fd, 0)?;
        Ok(())
    }
}

/// Offsets of the IPv4 source address and TCP source port in an untagged frame.
const OFF_SRC4: u32 = 26;
const OFF_SPORT4: u32 = 34;
const OFF_DPORT4: u32 = 36;

/// The production object and binary must carry no bench program or map.
fn no_bench_code(fx: &Fixture) -> anyhow::Result<String> {
    for name in [PROG_BENCH_HARNESS, PROG_BENCH_FLOOR] {
        ensure!(
            fx.ebpf.program(name).is_none(),
            "the balancer object has program {name}"
        );
    }
    for name in [MAP_BENCH_PACKET, MAP_BENCH_PROGS, MAP_BENCH_KEYS] {
        ensure!(fx.ebpf.map(name).is_none(), "the balancer object has map {name}");
    }
    let bin = veer_tests::lab::veer_bin()?;
    let bytes = std::fs::read(&bin).with_context(|| format!("read {}", bin.display()))?;
    for needle in [
        PROG_BENCH_HARNESS,
        PROG_BENCH_FLOOR,
        MAP_BENCH_PACKET,
        MAP_BENCH_PROGS,
        MAP_BENCH_KEYS,
    ] {
        ensure!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} contains {needle}: bench code in the production binary",
            bin.display()
        );
    }
    Ok(format!(
        "no bench program or map in the balancer object nor in {}",
        bin.display()
    ))
}

fn data_path(opts: Options) -> anyhow::Result<bool> {
    ensure!(
        opts.repeat >= 1 && opts.rounds >= 1,
        "--repeat and --rounds must be positive"
    );
    // A full connection table: every new flow evicts an old one, as on a busy balancer. It
    // also keeps the NAT port space (65536 ports per backend and SNAT address) from running out.
    let mut fx = Fixture::new(FLOW_CAPACITY);
    let clean = no_bench_code(&fx)?;
    let mut h = Harness::load()?;
    let ingress = Some(fx.ifindex);
    add_wide_pools(&mut fx);
    let keys = rotation_keys(ROTATION);
    h.set_keys(&keys)?;

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
    let ack4_wide = Spec {
        dport: WIDE_PORT,
        ..ack4.clone()
    };
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
    // A backend's answer to one of the flows in rotation; the harness writes the backend's
    // address and the flow's NAT port.
    let reply_wide = Spec {
        src_mac: [0x02, 0, 0, 0, 0x02, 0],
        dst_mac: IF_MAC,
        src: std::net::Ipv4Addr::new(10, 9, 0, 200).into(),
        sport: WIDE_VIPS[0].backend_port,
        dst: SNAT4.into(),
        dport: 1024,
        l4: L4::Tcp {
            syn: false,
            ack: true,
            seq: 5000,
        },
        payload: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ..syn4.clone()
    };
    // The clients in rotation are reached through CLIENT4's neighbour entry.
    run_cmd(&[
        "ip",
        "-n",
        &fx.ns.name,
        "route",
        "replace",
        "198.16.0.0/12",
        "via",
        &CLIENT4.to_string(),
        "dev",
        "fx0",
    ]);

    let paths = [
        Path {
            name: "non-VIP pass",
            packet: other.build(),
            harness: false,
            vary: Vary::None,
            verdict: XDP_PASS,
            proof: Reason::PassNotVip,
            new_flows: false,
            target: Some(2.0),
            warmup: None,
        },
        Path {
            name: "established TCP flow (IPv4)",
            packet: ack4.build(),
            harness: true,
            vary: Vary::None,
            verdict: XDP_TX,
            proof: Reason::Tx,
            new_flows: false,
            target: Some(6.0),
            warmup: Some(ack4.build()),
        },
        Path {
            name: "established TCP, 65536 flows",
            packet: ack4_wide.build(),
            harness: true,
            vary: Vary::Rotation,
            verdict: XDP_TX,
            proof: Reason::Tx,
            new_flows: false,
            target: None,
            warmup: Some(syn4_wide.build()),
        },
        Path {
            name: "NAT reply, ~52k flows",
            packet: reply_wide.build(),
            harness: true,
            vary: Vary::RotationReply,
            verdict: XDP_TX,
            proof: Reason::TxReply,
            new_flows: false,
            target: None,
            // The flows of the path before (re-created there); their replies are read
            // from the tables.
            warmup: Some(reply_wide.build()),
        },
        Path {
            name: "NAT reply (IPv4)",
            packet: reply4.build(),
            harness: true,
            vary: Vary::None,
            verdict: XDP_TX,
            proof: Reason::TxReply,
            new_flows: false,
            target: None,
            warmup: Some(syn4.build()),
        },
        Path {
            name: "established TCP flow (IPv6)",
            packet: ack6.build(),
            harness: true,
            vary: Vary::None,
            verdict: XDP_TX,
            proof: Reason::Tx,
            new_flows: false,
            target: None,
            warmup: Some(ack6.build()),
        },
    ];

    // One new-flow path per scheduler case, right after the non-VIP pass.
    let mut paths: Vec<Path> = paths.into_iter().collect();
    for (k, w) in WIDE_VIPS.iter().enumerate() {
        let syn = Spec::tcp_syn((CLIENT4.into(), 40000), (VIP4.into(), w.port));
        paths.insert(
            1 + k,
            Path {
                name: if k == 0 {
                    "new TCP flow (IPv4)"
                } else {
                    Box::leak(format!("new TCP flow (IPv4, {})", w.name).into_boxed_str())
                },
                packet: syn.build(),
                harness: true,
                vary: Vary::Counter,
                verdict: XDP_TX,
                proof: Reason::Tx,
                new_flows: true,
                target: (k == 0).then_some(13.0),
                warmup: None,
            },
        );
    }
    let paths: Vec<Path> = paths
        .into_iter()
        .filter(|p| opts.only.as_ref().is_none_or(|o| p.name.contains(o.as_str())))
        .collect();
    // Fill both connection tables before timing, so every insert of every round evicts.
    let mut counter = 1u32;
    let balancer: &Xdp = fx.ebpf.program(PROG_BALANCER).context("balancer")?.try_into()?;
    h.set_tail(balancer)?;
    let prefill = prefill(&fx, &mut h, &syn4_wide.build(), &mut counter)?;

    let floor_pkt = syn4.build();
    let mut floor = Vec::new();
    let mut per_path: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut harness_cost: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut evictions = [0u64; 2];
    let mut reply_flows = 0usize;
    for _round in 0..opts.rounds {
        floor.push(ns(h.run(PROG_BENCH_FLOOR, &floor_pkt, ingress, opts.repeat)?.1));
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
                per_path[i].push(ns(d));
                continue;
            }
            // The harness's own cost, with this path's packet and variation.
            h.set_packet(&path.packet, path.vary, counter)?;
            h.tail_to_floor()?;
            let (v, d_floor_via_harness) = h.run(PROG_BENCH_HARNESS, &path.packet, ingress, opts.repeat)?;
            ensure!(v == XDP_TX, "harness -> floor verdict {v}");
            let floor_now = ns(h.run(PROG_BENCH_FLOOR, &path.packet, ingress, opts.repeat)?.1);
            harness_cost[i].push(ns(d_floor_via_harness) - floor_now);
            h.set_tail(balancer)?;

            if let Some(w) = &path.warmup {
                if path.vary == Vary::RotationReply {
                    // The replies of the flows in rotation whose reverse entries are in the
                    // table: reply tuples hash independently of the flows, and a bucket
                    // that gets more than its ways keeps the newest (about 80% stay).
                    let replies = rotation_replies(&fx, &keys)?;
                    ensure!(
                        replies.len() * 4 >= keys.len() * 3,
                        "{}: only {} of {} flows in rotation have their reverse entry",
                        path.name,
                        replies.len(),
                        keys.len()
                    );
                    reply_flows = replies.len();
                    h.set_keys(&replies)?;
                } else if path.vary == Vary::Rotation {
                    // Re-create the flows in rotation (the new-flow path evicted them), then
                    // check that every one of them is in the table.
                    h.set_keys(&keys)?;
                    h.set_packet(w, Vary::Rotation, 0)?;
                    let vip = vip_of(w);
                    let (tx, flows) = (fx.reason(Reason::Tx), fx.vip_counters(vip).new_flows);
                    let (v, _) = h.run(PROG_BENCH_HARNESS, w, ingress, h.keys)?;
                    let (tx, flows) = (fx.reason(Reason::Tx) - tx, fx.vip_counters(vip).new_flows - flows);
                    ensure!(
                        v == XDP_TX && tx == h.keys as u64 && flows == tx,
                        "{}: {tx} of {} rotation SYNs forwarded as new flows ({flows} new); reasons: {}",
                        path.name,
                        h.keys,
                        reasons(&fx)
                    );
                } else {
                    let (_, out) = fx.run(w, ingress);
                    if path.proof == Reason::TxReply {
                        // The flow may have been re-created with another NAT port: answer that one.
                        let reply = reply_to(&syn4, &out)?.build();
                        h.set_packet(&reply, Vary::None, 0)?;
                    }
                }
            }
            match path.vary {
                Vary::Counter => h.set_packet(&path.packet, Vary::Counter, counter)?,
                // The warmup set the reply to the flow's current NAT port.
                Vary::None if path.proof == Reason::TxReply => {}
                v => h.set_packet(&path.packet, v, 0)?,
            }
            let before = fx.reason(path.proof);
            let flows_before = fx.vip_counters(vip_of(&path.packet)).new_flows;
            let guard_before = flood_guard(&fx)?;
            let (v, d) = h.run(PROG_BENCH_HARNESS, &path.packet, ingress, opts.repeat)?;
            if path.vary == Vary::Counter {
                counter = counter.wrapping_add(opts.repeat);
            }
            let counted = fx.reason(path.proof) - before;
            let new_flows = fx.vip_counters(vip_of(&path.packet)).new_flows - flows_before;
            let guard = flood_guard(&fx)?;
            let expect_new = if path.new_flows { opts.repeat as u64 } else { 0 };
            ensure!(
                v == path.verdict && counted == opts.repeat as u64 && new_flows == expect_new,
                "{}: last verdict {v} (expected {}), {} counted {counted} and new flows {new_flows} \
                 of {} runs (expected {} and {expect_new}): wrong path measured; reasons: {}",
                path.name,
                path.verdict,
                path.proof.name(),
                opts.repeat,
                opts.repeat,
                reasons(&fx)
            );
            if path.new_flows {
                let free = guard[TAKE_FREE as usize] - guard_before[TAKE_FREE as usize];
                ensure!(
                    free == 0,
                    "{}: {free} new flows found a free way: the table was not full",
                    path.name
                );
                evictions[0] += guard[TAKE_UNCONFIRMED as usize] - guard_before[TAKE_UNCONFIRMED as usize];
                evictions[1] += guard[TAKE_CONFIRMED as usize] - guard_before[TAKE_CONFIRMED as usize];
            }
            per_path[i].push(ns(d) - harness_cost[i].last().copied().unwrap_or(0.0));
        }
    }
    let floor_ns = median(&mut floor);
    let results: Vec<Result> = paths
        .iter()
        .zip(per_path.iter_mut())
        .zip(harness_cost.iter_mut())
        .map(|((p, samples), h)| {
            let ns = median(samples);
            let mut proof = format!("{} +{} per round", p.proof.name(), opts.repeat);
            if p.new_flows {
                proof += &format!(
                    ", new_flows +{} (every SYN forwarded), each insert evicting ({} of {} evictions)",
                    opts.repeat,
                    evictions[0] + evictions[1],
                    opts.repeat as u64 * opts.rounds as u64
                );
            } else if p.harness {
                proof += ", new_flows +0";
            }
            if p.vary == Vary::Rotation {
                proof += &format!(", {ROTATION} flows re-created before each round");
            }
            if p.vary == Vary::RotationReply {
                proof += &format!(
                    ", the replies of the {reply_flows} of those flows whose reverse entries are in the table (last round)"
                );
            }
            if p.harness {
                proof += &format!(", harness {:.1} ns subtracted", median(h));
            }
            Result {
                name: p.name,
                ns,
                ratio: ns / floor_ns,
                target: p.target,
                proof,
            }
        })
        .collect();
    let by_name = |name: &str| results.iter().find(|r| r.name == name).map(|r| r.ns);
    let v4 = by_name("established TCP flow (IPv4)").unwrap_or(1.0);
    let v6 = by_name("established TCP flow (IPv6)").unwrap_or(0.0);
    if opts.json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| serde_json::json!({"path": r.name, "ns_per_packet": r.ns, "ratio_to_floor": r.ratio, "target_ratio": r.target, "proof": r.proof}))
            .collect();
        let doc = serde_json::json!({
            "repeat": opts.repeat, "rounds": opts.rounds, "floor_ns": floor_ns,
            "paths": rows, "ipv6_over_ipv4_established": v6 / v4,
            "prefill": prefill, "bench_code_in_production": false,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "XDP data path, BPF_PROG_TEST_RUN x{} per measurement, median of {} rounds",
            opts.repeat, opts.rounds
        );
        println!("{clean}");
        println!("before timing: {prefill}");
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
        if let Some(maglev) = by_name("new TCP flow (IPv4)") {
            for w in &WIDE_VIPS[1..] {
                if let Some(ns) = by_name(&format!("new TCP flow (IPv4, {})", w.name)) {
                    println!("new flow, {} / Maglev: {:.2} (target <= 1.2)", w.name, ns / maglev);
                }
            }
        }
    }
    Ok(opts.json)
}

/// New flows through the harness until no way of either connection table is free (at most
/// 16 table-fulls); returns what it took, for the report.
fn prefill(fx: &Fixture, h: &mut Harness, syn: &[u8], counter: &mut u32) -> anyhow::Result<String> {
    let vip = vip_of(syn);
    let mut sent = 0u64;
    for _ in 0..16 {
        h.set_packet(syn, Vary::Counter, *counter)?;
        let (tx, flows) = (fx.reason(Reason::Tx), fx.vip_counters(vip).new_flows);
        let (v, _) = h.run(PROG_BENCH_HARNESS, syn, Some(fx.ifindex), FLOW_CAPACITY)?;
        let (tx, flows) = (fx.reason(Reason::Tx) - tx, fx.vip_counters(vip).new_flows - flows);
        ensure!(
            v == XDP_TX && tx == FLOW_CAPACITY as u64 && flows == tx,
            "prefill: {tx} of {FLOW_CAPACITY} SYNs forwarded as new flows ({flows} new); reasons: {}",
            reasons(fx)
        );
        *counter = counter.wrapping_add(FLOW_CAPACITY);
        sent += FLOW_CAPACITY as u64;
        let free = [
            free_ways(fx, lb_common::MAP_FLOW_HEADS)?,
            free_ways(fx, lb_common::MAP_REV_HEADS)?,
        ];
        if free == [0, 0] {
            return Ok(format!(
                "{sent} new flows sent; 0 free ways left in the connection and reverse-NAT tables ({} flows each)",
                buckets(FLOW_CAPACITY) as usize * WAYS
            ));
        }
    }
    bail!("prefill: the connection tables still have free ways after {sent} new flows")
}

fn free_ways(fx: &Fixture, map: &str) -> anyhow::Result<usize> {
    let m: Array<_, Heads> = fx.ebpf.map(map).context("heads map")?.try_into()?;
    let mut free = 0;
    for i in 0..m.len() {
        free += m.get(&i, 0)?.tags.iter().filter(|t| **t == 0).count();
    }
    Ok(free)
}

/// The flood guard's new-flow counters by how each got its way (TAKE_*), summed over CPUs.
fn flood_guard(fx: &Fixture) -> anyhow::Result<[u64; 4]> {
    let m: PerCpuArray<_, FloodGuard> = fx.ebpf.map(MAP_FLOOD_GUARD).context("flood guard")?.try_into()?;
    let mut out = [0u64; 4];
    for g in m.get(&0, 0)?.iter() {
        for (o, t) in out.iter_mut().zip(g.taken) {
            *o += t;
        }
    }
    Ok(out)
}

/// For each flow in rotation found in the connection table whose reverse entry is still in
/// the reverse-NAT table, its backend's answer: (backend address, NAT port) from that entry.
fn rotation_replies(fx: &Fixture, keys: &[[u32; 2]]) -> anyhow::Result<Vec<[u32; 2]>> {
    let mask = buckets(FLOW_CAPACITY) - 1;
    let read = |heads: &str| -> anyhow::Result<Vec<Heads>> {
        let h: Array<_, Heads> = fx.ebpf.map(heads).context("heads")?.try_into()?;
        Ok((0..=mask)
            .map(|i| h.get(&i, 0))
            .collect::<std::result::Result<Vec<_>, _>>()?)
    };
    let flow_heads = read(lb_common::MAP_FLOW_HEADS)?;
    let rev_heads = read(lb_common::MAP_REV_HEADS)?;
    let flows: Array<_, FlowWays> = fx.ebpf.map(lb_common::MAP_FLOWS).context("flows")?.try_into()?;
    let revs: Array<_, RevWays> = fx.ebpf.map(lb_common::MAP_NAT_REV).context("nat rev")?.try_into()?;
    let port = WIDE_VIPS[0].port;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let key = FlowKey {
            src_be: [k[0], 0, 0, 0],
            dst_be: addr_be(VIP4.into()),
            sport_be: k[1] as u16,
            dport_be: port.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let sl = slot(&key, mask);
        let head = &flow_heads[sl.index as usize];
        let ways = flows.get(&sl.index, 0)?;
        // Match tag and key: different keys can share a bucket and a tag.
        let Some(entry) = (0..WAYS)
            .find(|&w| head.tags[w] & !TAG_CONFIRMED == sl.tag && ways.ways[w].key == key)
            .map(|w| &ways.ways[w])
        else {
            continue;
        };
        // The flow's own link to its reverse entry, checked as the data path checks it.
        let (index, way) = (entry.rev_link >> 2, (entry.rev_link & 3) as usize);
        let Some(rhead) = rev_heads.get(index as usize) else {
            continue;
        };
        if rhead.tags[way] & !TAG_CONFIRMED != entry.rev_tag & !TAG_CONFIRMED {
            continue;
        }
        let rev = revs.get(&index, 0)?.ways[way];
        if rev.rev.client_be != key.src_be || rev.rev.client_port_be != key.sport_be {
            continue;
        }
        out.push([rev.key.src_be[0], rev.key.dport_be as u32]);
    }
    Ok(out)
}

/// [`ROTATION`]-many client (address, port) pairs to the wide VIP chosen so that no
/// connection-table bucket gets more than its ways: all of them fit in the table at once.
/// Stored as the harness writes them into the packet (network byte order in memory).
fn rotation_keys(n: u32) -> Vec<[u32; 2]> {
    let mask = buckets(FLOW_CAPACITY) - 1;
    let mut per_bucket = vec![0u8; mask as usize + 1];
    let mut out = Vec::with_capacity(n as usize);
    let mut c = 0u32;
    while out.len() < n as usize {
        c += 1;
        assert!(c < 1 << 24, "no {n} flows fit the table");
        // Scattered over 198.16.0.0/12 (the route to the clients in rotation) and ports
        // 1024..61023: the flow hash is weak on keys that differ in step (see the report).
        let x = c.wrapping_mul(0x9e37_79b1);
        let ip = std::net::Ipv4Addr::from(0xc610_0000 | x >> 12);
        // Never an address the counter-varied new-flow path can produce (its last byte is 0).
        if ip.octets()[3] == 0 {
            continue;
        }
        let port = 1024 + (x % 60000) as u16;
        let key = FlowKey {
            src_be: addr_be(ip.into()),
            dst_be: addr_be(VIP4.into()),
            sport_be: port.to_be(),
            dport_be: WIDE_PORT.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let b = &mut per_bucket[slot(&key, mask).index as usize];
        if (*b as usize) < WAYS {
            *b += 1;
            out.push([
                u32::from_ne_bytes(ip.octets()),
                u16::from_ne_bytes(port.to_be_bytes()) as u32,
            ]);
        }
    }
    out
}

mod agent;
mod control;
mod e2e;

fn ns(d: Duration) -> f64 {
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
        return 1;
    }
    let port = u16::from_be_bytes([pkt[36], pkt[37]]);
    WIDE_VIPS.iter().find(|w| w.port == port).map_or(0, |w| w.vip_id)
}

/// A 16-backend VIP that new flows run against, one per scheduler case: with NAT, each
/// (backend, SNAT address) pair offers 64512 source ports, and three backends behind a full
/// 65536-flow table would measure port exhaustion instead of the data path. A case for
/// another scheduler is one more entry (`sched` sets the VIP's table and flags); its new-flow
/// figure is printed beside the first (Maglev) one.
struct WideVip {
    name: &'static str,
    port: u16,
    vip_id: u32,
    table: u32,
    /// Backend ids first_backend.., at 10.9.0.200.. port `backend_port`.
    first_backend: u32,
    backend_port: u16,
    sched: Sched,
}

/// How a case's VIP picks within its pool.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sched {
    Maglev,
    /// The agent's smooth weighted sequence in the table, walked by a per-CPU cursor.
    RoundRobin,
    /// Two Maglev candidates, the one with fewer live flows per unit of weight.
    LeastConn,
}

const WIDE_VIPS: &[WideVip] = &[
    WideVip {
        name: "Maglev",
        port: 443,
        vip_id: 5,
        table: 6,
        first_backend: 100,
        backend_port: 8080,
        sched: Sched::Maglev,
    },
    WideVip {
        name: "round-robin",
        port: 444,
        vip_id: 6,
        table: 7,
        first_backend: 120,
        backend_port: 8081,
        sched: Sched::RoundRobin,
    },
    WideVip {
        name: "least-conn",
        port: 445,
        vip_id: 7,
        // Tables 1-4 hold the fixture's own VIPs; the object has 8.
        table: 5,
        first_backend: 140,
        backend_port: 8082,
        sched: Sched::LeastConn,
    },
];

/// The VIP the established path over many flows uses.
const WIDE_PORT: u16 = WIDE_VIPS[0].port;

fn add_wide_pools(fx: &mut Fixture) {
    for w in WIDE_VIPS {
        add_wide_pool(fx, w);
    }
}

fn add_wide_pool(fx: &mut Fixture, w: &WideVip) {
    let backends: Vec<(u32, std::net::SocketAddr, u32)> = (0..16u8)
        .map(|i| {
            (
                w.first_backend + i as u32,
                std::net::SocketAddr::new(std::net::Ipv4Addr::new(10, 9, 0, 200 + i).into(), w.backend_port),
                1,
            )
        })
        .collect();
    for &(id, addr, _) in &backends {
        fx.set_backend(id, addr, w.vip_id, lb_common::BACKEND_READY);
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
    let pool = Pool {
        table: w.table,
        backends,
    };
    let flags = match w.sched {
        Sched::Maglev => {
            fx.write_table(&pool);
            0
        }
        Sched::RoundRobin => {
            let members: Vec<lb_common::maglev::TableBackend> = pool
                .backends
                .iter()
                .map(|&(id, a, weight)| lb_common::maglev::TableBackend {
                    id,
                    addr_be: addr_be(a.ip()),
                    port_be: a.port().to_be(),
                    weight,
                })
                .collect();
            let sequence = lb_common::rr::build_sequence(&members, M);
            let mut t: Array<_, u32> = fx.ebpf.map_mut(lb_common::MAP_TABLES).unwrap().try_into().unwrap();
            for (slot, &id) in sequence.iter().enumerate() {
                t.set(w.table * M + slot as u32, id, 0).unwrap();
            }
            lb_common::VIP_F_ROUND_ROBIN
        }
        Sched::LeastConn => {
            fx.write_table(&pool);
            let loads = veer::dataplane::LoadMemory::of(&fx.ebpf).expect("the least-conn load map");
            for &(id, _, weight) in &pool.backends {
                loads.set_weight(id, weight * 100);
            }
            lb_common::VIP_F_LEAST_CONN
        }
    };
    let info = lb_common::VipInfo {
        vip_id: w.vip_id,
        table_current: w.table,
        flags,
        ..Default::default()
    };
    fx.set_vip(
        std::net::SocketAddr::new(VIP4.into(), w.port),
        lb_common::PROTO_TCP,
        info,
    );
}
