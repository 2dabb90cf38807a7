//! `cargo xtask run`: with no arguments, the lab (namespaces, demo backends, the agent,
//! bounded demo traffic, the spread printed); with arguments, `veer agent ARGS` for real.

use crate::{build::build_veer, setup, util};

/// Arguments for `veer agent`, e.g. `-- --iface eth0 --config veer.toml`.
pub type Options = util::PassThrough;

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let linker = setup::prepare(setup::System::Require)?;
    build_veer(&linker, true)?;
    let veer = util::target_dir()?.join("release/veer");
    if opts.args.is_empty() {
        let mut cmd = util::cargo(&linker)?;
        cmd.args(["run", "--release", "-q", "-p", "veer-tests", "--bin", "veer-lab"])
            .env("VEER_BIN", &veer);
        return Err(util::exec(&mut cmd));
    }
    Err(util::exec(
        std::process::Command::new(&veer).arg("agent").args(&opts.args),
    ))
}
