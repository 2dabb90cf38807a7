//! Running commands with context, and finding the workspace.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Runs `cmd`, inheriting stdio; fails with the command line on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("failed to run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Replaces this process with `cmd`: the last step of a task, so Ctrl-C reaches that
/// command alone (the lab and the agent clean up on SIGINT) and its exit code is ours.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    let err = cmd.exec();
    anyhow::Error::new(err).context(format!("failed to run {cmd:?}"))
}

/// Runs `cmd` and returns its stdout; fails with stderr on a non-zero exit.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory of this workspace.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let meta = output(
        Command::new("cargo")
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(workspace_root()),
    )?;
    let v: serde_json::Value = serde_json::from_str(&meta).context("parse cargo metadata")?;
    let dir = v["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// A `cargo` command in the workspace with bpf-linker on PATH.
pub fn cargo(linker_dir: &std::path::Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new("cargo");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![linker_dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).context("PATH")?)
        .current_dir(workspace_root());
    Ok(cmd)
}

/// Effective uid 0, read from /proc (no libc dependency for one call).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Arguments passed through after `--`.
#[derive(clap::Args)]
pub struct PassThrough {
    #[arg(last = true)]
    pub args: Vec<String>,
}
