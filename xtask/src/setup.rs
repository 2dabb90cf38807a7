//! `cargo xtask setup`: nightly's rust-src, bpf-linker built against nightly's own libLLVM
//! (cached, keyed on that library's file name), the Debian packages the tests and the lab
//! call, and bpffs. Every step checks first, so a second run changes nothing.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{is_root, output, run as run_cmd};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Tools the lab, the end-to-end tests and the metrics test call (procps: sysctl; bpftool
/// and curl: inspecting a running agent by hand; prometheus: the scrape test; tmux: the
/// live-view test, which drives `veer top` in a terminal).
const APT_PACKAGES: &[&str] = &["iproute2", "ethtool", "procps", "bpftool", "curl", "prometheus", "tmux"];

#[derive(clap::Args, Default)]
pub struct Options {
    /// Only what building needs: skip apt packages and bpffs.
    #[arg(long)]
    pub no_apt: bool,
}

/// How the system step (apt packages, bpffs) treats a missing piece.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Building only: leave the system alone.
    Skip,
    /// Install or fail (`setup`, and the root-only `run` and `bench`).
    Require,
    /// Install when root; otherwise warn, since the tests that need them skip without root.
    BestEffort,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let system = if opts.no_apt { System::Skip } else { System::Require };
    let linker = prepare(system)?;
    eprintln!("setup: done; bpf-linker is in {}", linker.display());
    Ok(())
}

/// Everything a build (and with `system`, a test or lab run) needs; returns the directory
/// holding `bpf-linker`, to put first on PATH for the cargo commands that build lb-userspace.
pub fn prepare(system: System) -> anyhow::Result<PathBuf> {
    ensure_rust_src()?;
    let linker = bpf_linker_dir()?;
    if system != System::Skip {
        ensure_apt_packages(system)?;
        ensure_bpffs(system)?;
    }
    Ok(linker)
}

/// Where tools are cached: $VEER_CACHE_DIR, else $XDG_CACHE_HOME/veer, else ~/.cache/veer.
fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = env::var_os("VEER_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("veer"));
    }
    let home = env::var_os("HOME").context("neither VEER_CACHE_DIR, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/veer"))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    // `nightly-<host>`, not a dated `nightly-2026-...` one: `+nightly` names the channel.
    let has_nightly = toolchains.lines().any(|l| {
        l.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if !has_nightly {
        bail!(
            "no nightly toolchain: the XDP program is built with nightly (-Z build-std); \
             install it with `rustup toolchain install nightly`"
        );
    }
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: rust-src for nightly: present");
        return Ok(());
    }
    eprintln!("setup: rust-src for nightly: adding");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The directory holding a bpf-linker that links against the libLLVM of the installed
/// nightly (the LLVM rustc emits bitcode for), built into the cache the first time.
pub fn bpf_linker_dir() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib)
        .with_context(|| format!("read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in nightly's {}", lib.display()))?;
    let llvm_major = libllvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| format!("cannot read an LLVM major version from {libllvm}"))?
        .to_string();

    let cache = cache_dir()?;
    // bpf-linker's RUNPATH points here, so the links must exist before it can run.
    let prefix_lib = cache.join(format!("llvm-{libllvm}")).join("lib");
    fs::create_dir_all(&prefix_lib).with_context(|| format!("create {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let target = lib.join(&libllvm);
        if fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("remove stale {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("symlink {}", link.display()))?;
    }

    let root = cache.join(format!("bpf-linker-{libllvm}"));
    let bin = root.join("bin");
    if linker_runs(&bin) {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} for {libllvm}: present");
        return Ok(bin);
    }
    eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} for {libllvm}: building (about a minute)");
    run_cmd(
        Command::new("cargo")
            .args(["install", "--locked", "--force", "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(&root)
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .env("LLVM_PREFIX", prefix_lib.parent().context("prefix")?),
    )?;
    if !linker_runs(&bin) {
        bail!(
            "bpf-linker was built but does not run: {}",
            bin.join("bpf-linker").display()
        );
    }
    Ok(bin)
}

/// Does `<bin>/bpf-linker --version` run and report the pinned version?
fn linker_runs(bin: &Path) -> bool {
    let linker = bin.join("bpf-linker");
    linker.exists()
        && output(Command::new(&linker).arg("--version"))
            .is_ok_and(|v| v.split_whitespace().any(|w| w == BPF_LINKER_VERSION))
}

fn ensure_apt_packages(system: System) -> anyhow::Result<()> {
    ensure_packages(APT_PACKAGES, system)
}

/// Installs the Debian packages of `packages` that are missing. Their services are not
/// started (a policy-rc.d answers "no" during the install): the bench starts nginx and
/// HAProxy itself, by PID, in namespaces of its own.
pub fn ensure_packages(packages: &[&str], system: System) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("setup: packages {}: present", packages.join(" "));
        return Ok(());
    }
    if !is_root() {
        let msg = format!("missing packages {} and not root to apt-get them", missing.join(" "));
        if system == System::BestEffort {
            eprintln!("setup: warning: {msg}; the tests that need them need root and will skip");
            return Ok(());
        }
        bail!("{msg}: run `cargo xtask setup` as root");
    }
    eprintln!("setup: packages {}: installing", missing.join(" "));
    let _no_start = NoServiceStart::new()?;
    run_cmd(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// /usr/sbin/policy-rc.d exiting 101 ("action forbidden") while it lives, if none was
/// there: packages with services (nginx, HAProxy) install without starting them.
struct NoServiceStart(Option<PathBuf>);

impl NoServiceStart {
    fn new() -> anyhow::Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        fs::write(
            &path,
            "#!/bin/sh\n# written by cargo xtask setup during apt-get install\nexit 101\n",
        )
        .with_context(|| format!("write {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn ensure_bpffs(system: System) -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some("/sys/fs/bpf") && fstype == Some("bpf")
    });
    if mounted {
        eprintln!("setup: bpffs at /sys/fs/bpf: mounted");
        return Ok(());
    }
    if !is_root() {
        let msg = "bpffs is not mounted at /sys/fs/bpf and mounting it needs root";
        if system == System::BestEffort {
            eprintln!("setup: warning: {msg}");
            return Ok(());
        }
        bail!("{msg}");
    }
    eprintln!("setup: bpffs at /sys/fs/bpf: mounting");
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
