//! `cargo xtask build`: the `veer` binary with its embedded XDP objects.

use std::path::Path;

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Optimised build.
    #[arg(long)]
    pub release: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let linker = setup::prepare(setup::System::Skip)?;
    build_veer(&linker, opts.release)
}

/// `cargo build -p lb-userspace --bins` with bpf-linker on PATH (lb-userspace's build script
/// builds the XDP program with it).
pub fn build_veer(linker: &Path, release: bool) -> anyhow::Result<()> {
    let mut cmd = util::cargo(linker)?;
    cmd.args(["build", "-p", "lb-userspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)
}
