//! `cargo xtask dist`: the Debian package, built with dpkg-deb from a staged tree: the
//! `veer` binary (XDP objects embedded), the systemd unit, /etc/veer/veer.toml as a
//! conffile, bash/zsh/fish completions and man pages generated from veer's own clap
//! command (by `veer-gen`, built beside `veer`), and the docs.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{build::build_veer, setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Package the debug build (quick to build and to compress; for tests), not the
    /// release build.
    #[arg(long)]
    pub debug: bool,
    /// Directory for the .deb (default: target/dist).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Package the binaries already in target/ without running cargo (they must exist).
    #[arg(long)]
    pub no_build: bool,
}

pub const PACKAGE: &str = "veer";
const CONFFILE: &str = "etc/veer/veer.toml";

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !opts.no_build {
        let linker = setup::prepare(setup::System::Skip)?;
        build_veer(&linker, !opts.debug)?;
    }
    let target = util::target_dir()?;
    let bin_dir = target.join(if opts.debug { "debug" } else { "release" });
    let out = opts.out.clone().unwrap_or_else(|| target.join("dist"));
    let deb = package(&bin_dir, &out, !opts.debug)?;
    println!("{}", deb.display());
    Ok(())
}

/// Stages the package tree under `out` and builds `out/veer_VERSION_ARCH.deb` from it.
/// `small`: xz at the default level (release), else gzip -1 (a debug binary is large).
fn package(bin_dir: &Path, out: &Path, small: bool) -> anyhow::Result<PathBuf> {
    let root = util::workspace_root();
    let veer = bin_dir.join("veer");
    let generator = bin_dir.join("veer-gen");
    for bin in [&veer, &generator] {
        if !bin.is_file() {
            bail!("{} is missing: build it first (cargo xtask build)", bin.display());
        }
    }
    let stage = out.join("stage");
    let generated = out.join("generated");
    for dir in [&stage, &generated] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        }
    }
    fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    util::run(Command::new(&generator).arg(&generated))?;

    install(&veer, &stage.join("usr/bin/veer"), 0o755)?;
    install(
        &root.join("dist/veer.service"),
        &stage.join("usr/lib/systemd/system/veer.service"),
        0o644,
    )?;
    install(&root.join("dist/veer.toml"), &stage.join(CONFFILE), 0o644)?;
    let completions = generated.join("completions");
    for (file, dest) in [
        ("veer.bash", "usr/share/bash-completion/completions/veer"),
        ("_veer", "usr/share/zsh/vendor-completions/_veer"),
        ("veer.fish", "usr/share/fish/vendor_completions.d/veer.fish"),
    ] {
        install(&completions.join(file), &stage.join(dest), 0o644)?;
    }
    let man1 = stage.join("usr/share/man/man1");
    for page in sorted_files(&generated.join("man"))? {
        let name = page
            .file_name()
            .context("man page name")?
            .to_string_lossy()
            .into_owned();
        gzip(&page, &man1.join(format!("{name}.gz")))?;
    }
    let doc = stage.join("usr/share/doc/veer");
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    copy_tree(&root.join("docs"), &doc)?;
    write(
        &doc.join("copyright"),
        &format!(
            "veer\nLicense: {}\n\nThe full license texts are in /usr/share/common-licenses \
             (Apache-2.0) and at the project's repository (MIT).\n",
            env!("CARGO_PKG_LICENSE")
        ),
        0o644,
    )?;

    let debian = stage.join("DEBIAN");
    let arch = util::output(Command::new("dpkg").arg("--print-architecture"))?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: veer developers <veer@localhost>\n\
         Installed-Size: {size}\n\
         Depends: libc6 (>= {glibc})\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP load balancer for zero-downtime deployments\n \
         An XDP program picks a backend for every new flow (weighted Maglev consistent\n \
         hashing) and rewrites packets in the driver; the agent turns blue/green\n \
         switches, canaries, A/B splits and rolling rollouts into atomic map updates.\n \
         Established connections stay on their backend through every deployment.\n",
        version = env!("CARGO_PKG_VERSION"),
        arch = arch.trim(),
        size = tree_size(&stage)?.div_ceil(1024),
        glibc = glibc_needed(&veer)?,
    );
    write(&debian.join("control"), &control, 0o644)?;
    write(&debian.join("conffiles"), &format!("/{CONFFILE}\n"), 0o644)?;
    for (name, script) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        write(&debian.join(name), script, 0o755)?;
    }

    dir_modes(&stage)?;
    let deb = out.join(format!("{PACKAGE}_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim()));
    let (format, level) = if small { ("xz", "6") } else { ("gzip", "1") };
    util::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Z", format, "-z", level, "--build"])
            .arg(&stage)
            .arg(&deb)
            .stdout(Stdio::null()),
    )?;
    Ok(deb)
}

// Maintainer scripts. Nothing is enabled or started on install: the example config names
// placeholder interfaces and addresses. An upgrade restarts a running agent, which adopts
// the pinned data path (no flow is dropped). DPKG_ROOT is set when installing into
// another root (dpkg --root): the host's systemd is none of its business then.
const POSTINST: &str = "#!/bin/sh\nset -e\n\
if [ -z \"${DPKG_ROOT:-}\" ] && [ -d /run/systemd/system ]; then\n\
\tsystemctl daemon-reload || true\n\
\tif [ \"$1\" = configure ] && [ -n \"$2\" ]; then\n\
\t\tsystemctl try-restart veer.service || true\n\
\tfi\n\
fi\n";
const PRERM: &str = "#!/bin/sh\nset -e\n\
if [ -z \"${DPKG_ROOT:-}\" ] && [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then\n\
\tsystemctl stop veer.service || true\n\
fi\n";
const POSTRM: &str = "#!/bin/sh\nset -e\n\
if [ -z \"${DPKG_ROOT:-}\" ] && [ -d /run/systemd/system ]; then\n\
\tsystemctl daemon-reload || true\n\
fi\n";

/// The highest GLIBC_2.N symbol version the binary asks for (read from its version-needed
/// strings), so `Depends` names the oldest libc6 that runs it.
fn glibc_needed(bin: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(bin).with_context(|| format!("read {}", bin.display()))?;
    let tag = b"GLIBC_2.";
    let mut best: Option<(u32, u32)> = None;
    for i in 0..bytes.len().saturating_sub(tag.len()) {
        if &bytes[i..i + tag.len()] != tag {
            continue;
        }
        let rest = &bytes[i + tag.len()..];
        let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
        let n = digits(rest);
        let Some(minor) = std::str::from_utf8(&rest[..n]).ok().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let patch = match rest.get(n) {
            Some(b'.') => {
                let m = digits(&rest[n + 1..]);
                std::str::from_utf8(&rest[n + 1..n + 1 + m])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            }
            _ => 0,
        };
        best = best.max(Some((minor, patch)));
    }
    match best {
        Some((minor, 0)) => Ok(format!("2.{minor}")),
        Some((minor, patch)) => Ok(format!("2.{minor}.{patch}")),
        None => bail!(
            "{} names no GLIBC version: not a dynamically linked glibc binary?",
            bin.display()
        ),
    }
}

fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        create_dirs(dir)?;
    }
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    set_mode(to, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        create_dirs(dir)?;
    }
    fs::write(to, text).with_context(|| format!("write {}", to.display()))?;
    set_mode(to, mode)
}

/// gzip -9n (no name or time stamp in the header: the same page, the same bytes).
fn gzip(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        create_dirs(dir)?;
    }
    let file = fs::File::create(to).with_context(|| format!("create {}", to.display()))?;
    util::run(Command::new("gzip").args(["-9n", "-c"]).arg(from).stdout(file))?;
    set_mode(to, 0o644)
}

fn create_dirs(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// Every directory 0755 whatever the umask (dpkg-deb keeps the modes it finds).
fn dir_modes(dir: &Path) -> anyhow::Result<()> {
    set_mode(dir, 0o755)?;
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            dir_modes(&path)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))
}

fn sorted_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Copies every file under `from` into `to`, keeping relative paths.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let path = entry?.path();
        let dest = to.join(path.file_name().context("file name")?);
        if path.is_dir() {
            copy_tree(&path, &dest)?;
        } else {
            install(&path, &dest, 0o644)?;
        }
    }
    Ok(())
}

fn tree_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            tree_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
