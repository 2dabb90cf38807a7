//! `cargo xtask bench`: the data-path bench (BPF_PROG_TEST_RUN, ratios to an XDP_TX floor
//! measured in the same run), the control-plane figures, which drive a release `veer`, and
//! the end-to-end section (HTTP through veer, HAProxy, nftables and direct, side by side).

use crate::{build::build_veer, setup, util};

/// What the end-to-end section runs: the load generator, the backends, the balancers it
/// compares veer with, and conntrack to flush the kernel's NAT state between cases.
const E2E_PACKAGES: &[&str] = &["wrk", "nginx", "haproxy", "nftables", "conntrack"];

#[derive(clap::Args)]
pub struct Options {
    /// Only the end-to-end section (wrk against nginx through veer, HAProxy, nftables DNAT
    /// and direct); it is also the last section of the full bench.
    #[arg(long)]
    e2e: bool,
    /// Arguments for the bench binary, e.g. `-- --repeat 2000000 --json`.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let linker = setup::prepare(setup::System::Require)?;
    let partial = opts
        .args
        .iter()
        .any(|a| a == "--data-path-only" || a == "--only" || a.starts_with("--only="));
    if opts.e2e || !partial {
        setup::ensure_packages(E2E_PACKAGES, setup::System::Require)?;
    }
    build_veer(&linker, true)?;
    let veer = util::target_dir()?.join("release/veer");
    let mut cmd = util::cargo(&linker)?;
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "veer-tests",
        "--bin",
        "veer-bench",
        "--",
    ])
    .args(&opts.args)
    .env("VEER_BIN", &veer);
    if opts.e2e {
        cmd.arg("--e2e");
    }
    Err(util::exec(&mut cmd))
}
