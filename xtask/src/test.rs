//! `cargo xtask test`: setup, build `veer`, then every test of the workspace (the eBPF
//! crate is built for the kernel by lb-userspace, never for the host). Tests that
//! need root and BPF run here (CI is root); they skip with a reason elsewhere.

use crate::{build::build_veer, setup, util};

/// Extra arguments for `cargo test`, e.g. `-- e2e_deploy` or `-- -- --nocapture`.
pub type Options = util::PassThrough;

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let linker = setup::prepare(setup::System::BestEffort)?;
    build_veer(&linker, false)?;
    let veer = util::target_dir()?.join("debug/veer");
    let mut cmd = util::cargo(&linker)?;
    // --no-fail-fast: one run reports every failing suite, not just the first.
    cmd.args(["test", "--workspace", "--exclude", "lb-ebpf", "--no-fail-fast"])
        .args(&opts.args)
        .env("VEER_BIN", &veer);
    Err(util::exec(&mut cmd))
}
