//! `cargo xtask fuzz --frames N [--seed S]`: the data-path fuzzer of `cargo xtask test`
//! (tests/tests/fuzz.rs: seeded random frames through BPF_PROG_TEST_RUN on the real
//! object, with live flows loaded), run for N frames. Needs root.

use anyhow::bail;

use crate::{build::build_veer, setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Frames to run.
    #[arg(long, default_value_t = 1_000_000)]
    pub frames: u64,
    /// Generator seed (a failure names the seed and frame that broke an invariant).
    #[arg(long, default_value_t = 0x5eed_f022)]
    pub seed: u64,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("cargo xtask fuzz must run as root: it loads the XDP program (BPF_PROG_TEST_RUN) in a network namespace");
    }
    let linker = setup::prepare(setup::System::Require)?;
    build_veer(&linker, false)?;
    let mut cmd = util::cargo(&linker)?;
    cmd.args(["test", "-p", "veer-tests", "--test", "fuzz", "--", "--nocapture"])
        .env("VEER_FUZZ_FRAMES", opts.frames.to_string())
        .env("VEER_FUZZ_SEED", opts.seed.to_string())
        .env("VEER_REQUIRE_ROOT", "1");
    Err(util::exec(&mut cmd))
}
