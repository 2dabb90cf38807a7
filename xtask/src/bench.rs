//! `cargo xtask bench`: the data-path bench (BPF_PROG_TEST_RUN, ratios to an XDP_TX floor
//! measured in the same run) and the control-plane figures, which drive a release `veer`.

use crate::{build::build_veer, setup, util};

/// Arguments for the bench binary, e.g. `-- --repeat 2000000 --json`.
pub type Options = util::PassThrough;

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let linker = setup::prepare(setup::System::Require)?;
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
    Err(util::exec(&mut cmd))
}
