//! `cargo xtask test`: setup, build `veer`, then every test of the workspace (the eBPF
//! crate is built for the kernel by lb-userspace, never for the host). Tests that
//! need root and BPF run here (CI is root); they skip with a reason elsewhere.

use crate::{build::build_veer, setup, util};

/// Extra arguments for `cargo test`.
pub type Options = util::PassThrough;

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let linker = setup::run(&setup::Options::default())?;
    build_veer(&linker, false)?;
    let veer = util::target_dir()?.join("debug/veer");
    let mut cmd = util::cargo(&linker)?;
    cmd.args(["test", "--workspace", "--exclude", "lb-ebpf"])
        .args(&opts.args)
        .env("VEER_BIN", &veer);
    util::run(&mut cmd)
}
