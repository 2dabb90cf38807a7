//! `cargo xtask build`: the `veer` binary with its embedded XDP objects.

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Optimised build.
    #[arg(long)]
    pub release: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let linker = setup::run(&setup::Options { no_apt: true })?;
    build_veer(&linker, opts.release)
}

pub fn build_veer(linker: &std::path::Path, release: bool) -> anyhow::Result<()> {
    let mut cmd = util::cargo(linker)?;
    cmd.args(["build", "-p", "lb-userspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)
}
