//! Control-plane measurements: Maglev table build time, the time from an API call to the
//! flip being visible to new flows, and the agent's memory at idle with 100 VIPs × 100
//! backends.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_common::maglev::{TableBackend, build_table};
use serde_json::json;
use veer_tests::lab::*;

pub struct Report {
    build_fresh_ms: f64,
    build_rebuild_ms: f64,
    api_ms: f64,
    flips: usize,
    late_flips: usize,
    first_conn_ms: f64,
    rss: Rss,
    startup_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run() -> anyhow::Result<Report> {
    let (build_fresh_ms, build_rebuild_ms) = table_build();
    let (api_ms, flips, late_flips, first_conn_ms) = api_flip()?;
    let (rss, startup_ms) = idle_memory()?;
    Ok(Report {
        build_fresh_ms,
        build_rebuild_ms,
        api_ms,
        flips,
        late_flips,
        first_conn_ms,
        rss,
        startup_ms,
    })
}

/// 1000 backends, M = 65537: from scratch, and after one weight change (with the previous
/// table, as the agent does).
fn table_build() -> (f64, f64) {
    let m = 65537;
    let mut backends: Vec<TableBackend> = (0..1000u32)
        .map(|i| TableBackend {
            id: i + 1,
            addr_be: [u32::from_ne_bytes([10, 1, (i >> 8) as u8, i as u8]), 0, 0, 0],
            port_be: 80u16.to_be(),
            weight: 100,
        })
        .collect();
    let mut fresh = Vec::new();
    let mut rebuild = Vec::new();
    for round in 0..21 {
        let t = Instant::now();
        let table = build_table(&backends, m, None);
        fresh.push(t.elapsed().as_secs_f64() * 1e3);
        backends[round % 1000].weight = 50 + round as u32;
        let t = Instant::now();
        let _ = build_table(&backends, m, Some(&table));
        rebuild.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(fresh), median(rebuild))
}

/// Alternates the VIP between weights 1:0:0 and 0:0:1 with `veer apply` through the API.
/// After each answer the very next new connection must reach the one backend with weight:
/// no connection chosen by the old tables can reach it, so every late flip is seen.
fn api_flip() -> anyhow::Result<(f64, usize, usize, f64)> {
    let weights = [1, 1, 2];
    let mut lab = Lab::new(&LabOptions {
        weights: weights.to_vec(),
    })?;
    let config = lab.write_config(&weights)?;
    lab.start_agent(&config)?;
    let vip = SocketAddr::new(VIP4.into(), 80);
    lab.wait_for_vip(vip)?;
    let text = std::fs::read_to_string(&config)?;
    let weighted = |w: [u32; 3]| -> anyhow::Result<String> {
        let mut out = text.clone();
        for (i, (from, to)) in weights.iter().zip(w).enumerate() {
            let (a, b) = (
                format!("{}:{HTTP_PORT}\", weight = {from} }}", backend4(i)),
                format!("{}:{HTTP_PORT}\", weight = {to} }}", backend4(i)),
            );
            ensure!(out.contains(&a), "config has no {a}");
            out = out.replacen(&a, &b, 1);
        }
        Ok(out)
    };
    let states = [(weighted([1, 0, 0])?, "b1"), (weighted([0, 0, 1])?, "b3")];
    let socket = veer::client::Endpoint::Socket(lab.socket());
    let mut api = Vec::new();
    let mut first = Vec::new();
    let mut late = 0;
    let flips = 40;
    for (cfg, only) in states.iter().cycle().take(flips) {
        let t = Instant::now();
        veer::client::request(&socket, "POST", "/v1/apply", Some(&json!({ "config": cfg })))
            .map_err(|e| anyhow::anyhow!("apply: {e}"))?;
        api.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let name = lab.client.run(move || http_get(vip, Duration::from_secs(2)))??;
        first.push(t.elapsed().as_secs_f64() * 1e3);
        if name != *only {
            late += 1;
        }
    }
    Ok((median(api), flips, late, median(first)))
}

/// An agent with 100 VIPs × 100 backends, idle: resident memory.
fn idle_memory() -> anyhow::Result<(Rss, f64)> {
    let mut lab = Lab::new(&LabOptions { weights: vec![1] })?;
    let mut text = format!(
        "[agent]\ninterfaces = [\"eth0\"]\nsnat_v4 = \"{SNAT4}\"\nmax_backends = 16384\nflow_capacity = 65536\nsocket = \"{}\"\nstate_file = \"{}\"\n",
        lab.socket().display(),
        lab.dir.join("state.json").display()
    );
    for v in 0..100u32 {
        let backends: Vec<String> = (0..100u32)
            .map(|b| {
                format!(
                    "{{ address = \"10.{}.{}.{}:8080\" }}",
                    100 + v / 50,
                    (v % 50) * 4 + b / 250,
                    b % 250 + 1
                )
            })
            .collect();
        text.push_str(&format!(
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"10.200.{}.{}:80\"\nactive = \"p\"\n[[vip.pool]]\nname = \"p\"\nbackends = [ {} ]\n",
            v / 250,
            v % 250 + 1,
            backends.join(", ")
        ));
    }
    let config = lab.dir.join("big.toml");
    std::fs::write(&config, text)?;
    let t = Instant::now();
    lab.start_agent(&config)?;
    let startup_ms = t.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(Duration::from_secs(1));
    let pid = lab.agent.as_ref().and_then(|a| a.pid()).context("agent pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Pages of the kernel's Maglev tables mapped into the agent count as file-backed (a BPF
    // map's mapping is a file), like the binary's own; anonymous pages are the agent's heap.
    // smaps tells them apart by what each mapping maps.
    let by_mapping = rss_by_mapping(pid)?;
    Ok((
        Rss {
            total_mb: kb("VmRSS:") / 1024.0,
            anon_mb: kb("RssAnon:") / 1024.0,
            file_mb: kb("RssFile:") / 1024.0,
            shmem_mb: kb("RssShmem:") / 1024.0,
            binary_mb: by_mapping.binary_kb / 1024.0,
            libraries_mb: by_mapping.libraries_kb / 1024.0,
            bpf_maps_mb: by_mapping.bpf_maps_kb / 1024.0,
        },
        startup_ms,
    ))
}

/// Resident kB by what is mapped: the agent's own executable, shared libraries, BPF maps.
struct ByMapping {
    binary_kb: f64,
    libraries_kb: f64,
    bpf_maps_kb: f64,
}

fn rss_by_mapping(pid: u32) -> anyhow::Result<ByMapping> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut out = ByMapping {
        binary_kb: 0.0,
        libraries_kb: 0.0,
        bpf_maps_kb: 0.0,
    };
    let mut current: Option<&str> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: address range, perms, offset, device, inode, [path].
            current = line.split_whitespace().nth(5);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kb: f64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0.0);
            match current {
                Some(p) if p == exe => out.binary_kb += kb,
                Some(p) if p.contains("bpf-map") || p.contains("bpf_map") => out.bpf_maps_kb += kb,
                Some(p) if p.contains(".so") => out.libraries_kb += kb,
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Resident memory by kind (/proc/PID/status).
#[derive(Clone, Copy)]
pub struct Rss {
    total_mb: f64,
    anon_mb: f64,
    file_mb: f64,
    shmem_mb: f64,
    /// Of the file-backed pages: the veer executable's, shared libraries', BPF maps'.
    binary_mb: f64,
    libraries_mb: f64,
    bpf_maps_mb: f64,
}

impl Report {
    pub fn print(&self, json_out: bool) {
        if json_out {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "table_build_ms": { "fresh": self.build_fresh_ms, "rebuild_after_weight_change": self.build_rebuild_ms, "backends": 1000, "ring_size": 65537 },
                    "api_flip": { "api_call_ms_median": self.api_ms, "flips": self.flips, "first_connection_not_on_new_table": self.late_flips, "first_connection_ms_median": self.first_conn_ms },
                    "agent_idle": { "vips": 100, "backends_per_vip": 100, "rss_mb": self.rss.total_mb, "rss_anon_mb": self.rss.anon_mb, "rss_file_mb": self.rss.file_mb, "rss_shmem_mb": self.rss.shmem_mb, "rss_binary_mb": self.rss.binary_mb, "rss_libraries_mb": self.rss.libraries_mb, "rss_bpf_maps_mb": self.rss.bpf_maps_mb, "startup_ms": self.startup_ms },
                }))
                .unwrap_or_default()
            );
            return;
        }
        println!("\ncontrol plane");
        println!(
            "  Maglev table, 1000 backends, M=65537: {:.2} ms from scratch, {:.2} ms rebuild after a weight change (target < 1 ms)",
            self.build_fresh_ms, self.build_rebuild_ms
        );
        println!(
            "  API call to flip: {:.2} ms median per `apply` answered; {} of {} flips not yet visible to the first new connection after the answer (that connection took {:.2} ms)",
            self.api_ms, self.late_flips, self.flips, self.first_conn_ms
        );
        println!(
            "  agent at idle, 100 VIPs x 100 backends: RSS {:.1} MB = anonymous {:.1} MB (the agent's heap; target <= 50) + file-backed {:.1} MB + shmem {:.1} MB, ready in {:.0} ms",
            self.rss.total_mb, self.rss.anon_mb, self.rss.file_mb, self.rss.shmem_mb, self.startup_ms
        );
        println!(
            "    file-backed: the veer binary {:.1} MB, shared libraries {:.1} MB, the kernel's BPF maps mapped in (Maglev tables, flow tables) {:.1} MB",
            self.rss.binary_mb, self.rss.libraries_mb, self.rss.bpf_maps_mb
        );
    }
}
