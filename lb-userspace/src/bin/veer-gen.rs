//! `veer-gen DIR`: shell completions and man pages generated from veer's own clap
//! command, for `cargo xtask dist`. A separate binary so that `veer` carries neither
//! generator.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::CommandFactory as _;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        bail!("usage: veer-gen DIR (writes DIR/completions and DIR/man)");
    };
    let dir = PathBuf::from(dir);
    let mut cmd = veer::cli::Cli::command();
    let completions = dir.join("completions");
    fs::create_dir_all(&completions).with_context(|| format!("create {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "veer", &completions)
            .with_context(|| format!("write {shell} completions to {}", completions.display()))?;
    }
    let man = dir.join("man");
    fs::create_dir_all(&man).with_context(|| format!("create {}", man.display()))?;
    cmd.build();
    man_pages(&cmd, &man)
}

/// veer.1 and one page per verb (veer-switch.1, veer-backend-set.1, ...); clap's own
/// `help` verbs get none.
fn man_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    let page = clap_mangen::Man::new(cmd.clone());
    page.generate_to(dir)
        .with_context(|| format!("write the {} man page to {}", cmd.get_name(), dir.display()))?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        man_pages(sub, dir)?;
    }
    Ok(())
}
