//! `cargo xtask test`: setup, build `veer`, then every test of the workspace (the eBPF
//! crate is built for the kernel by lb-userspace, never for the host). Root is required:
//! most suites load XDP programs and build network namespaces, and a run that skipped them
//! would look green having tested little. VEER_REQUIRE_ROOT=1 makes any skip a failure, and
//! the closing line counts the tests that really ran.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::{build::build_veer, setup, util};

/// Extra arguments for `cargo test`, e.g. `-- e2e_deploy` or `-- -- --nocapture`.
pub type Options = util::PassThrough;

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "cargo xtask test must run as root: the packet fixtures and the end-to-end tests load \
             XDP programs and create network namespaces, and skipping them would leave only the unit \
             tests (run it with sudo, or as root in CI)"
        );
    }
    let linker = setup::prepare(setup::System::Require)?;
    build_veer(&linker, false)?;
    let veer = util::target_dir()?.join("debug/veer");
    let mut cmd = util::cargo(&linker)?;
    // --no-fail-fast: one run reports every failing suite, not just the first.
    cmd.args(["test", "--workspace", "--exclude", "lb-ebpf", "--no-fail-fast"])
        .args(&opts.args)
        .env("VEER_BIN", &veer)
        .env("VEER_REQUIRE_ROOT", "1")
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("failed to run {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut tally = Tally::default();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read cargo test output")?;
        tally.add(&line);
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let status = child.wait().context("wait for cargo test")?;
    // One plain closing line over every suite: tests that ran, not tests that exist.
    writeln!(
        out,
        "\nxtask test: {} suites; {} ignored, {} filtered out\nall: {} passed, {} failed",
        tally.suites, tally.ignored, tally.filtered, tally.passed, tally.failed
    )?;
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Sums cargo's `test result: ok. N passed; M failed; K ignored; ...; F filtered out` lines.
#[derive(Default)]
struct Tally {
    suites: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
    filtered: u64,
}

impl Tally {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        self.suites += 1;
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                "filtered" => self.filtered += n,
                _ => {}
            }
        }
    }
}
