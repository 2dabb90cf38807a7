//! `cargo xtask setup`: nightly's rust-src, bpf-linker built against nightly's own libLLVM
//! (cached, keyed on that library's file name), the Debian packages tests use, and bpffs.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{is_root, output, run as run_cmd, succeeds};

const BPF_LINKER: &str = "bpf-linker@0.13.0";
/// Packages the lab and end-to-end tests call: ip, ethtool, sysctl.
const APT_PACKAGES: &[&str] = &["iproute2", "ethtool", "procps", "prometheus"];

#[derive(clap::Args, Default)]
pub struct Options {
    /// Skip apt packages (for builds that never run the lab or the tests).
    #[arg(long)]
    pub no_apt: bool,
}

/// Where tools are cached: $VEER_CACHE_DIR, else $XDG_CACHE_HOME/veer, else ~/.cache/veer.
fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = env::var_os("VEER_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("veer"));
    }
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/veer"))
}

/// Everything; returns the directory holding `bpf-linker`, for PATH.
pub fn run(opts: &Options) -> anyhow::Result<PathBuf> {
    ensure_rust_src()?;
    let linker = ensure_bpf_linker()?;
    if !opts.no_apt {
        ensure_apt_packages()?;
        ensure_bpffs()?;
    }
    Ok(linker)
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!("no nightly toolchain: the eBPF crate needs nightly (-Z build-std); install it with rustup");
    }
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must use the LLVM nightly rustc emits bitcode for: link it against the
/// libLLVM shipped inside the nightly toolchain.
fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib)
        .with_context(|| format!("read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let cache = cache_dir()?;
    let root = cache.join(format!("bpf-linker-{libllvm}"));
    let bin = root.join("bin");
    if succeeds(Command::new(bin.join("bpf-linker")).arg("--version")) {
        return Ok(bin);
    }
    let prefix = cache.join(format!("llvm-{libllvm}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib).with_context(|| format!("create {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&libllvm), &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    let llvm_major = libllvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("22")
        .to_string();
    eprintln!("setup: building {BPF_LINKER} against {libllvm} (about a minute)");
    run_cmd(
        Command::new("cargo")
            .args(["install", BPF_LINKER, "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !succeeds(Command::new(bin.join("bpf-linker")).arg("--version")) {
        bail!("bpf-linker was built but does not run: {}", bin.display());
    }
    Ok(bin)
}

fn ensure_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing packages {missing:?}: run `cargo xtask setup` as root (apt-get)");
    }
    eprintln!("setup: apt-get install {missing:?}");
    run_cmd(
        Command::new("apt-get")
            .arg("update")
            .arg("-q")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
        || !is_root()
    {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
