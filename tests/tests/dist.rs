//! The Debian package: `cargo xtask dist` packages the binaries `cargo xtask test` built
//! (debug, so the suite stays quick); dpkg-deb reads its contents and metadata back, and
//! dpkg installs, removes and purges it in a scratch root (never this machine's /usr).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use clap::CommandFactory as _;
use veer_tests::lab::{is_root, veer_bin};

/// A directory removed when the test ends, pass or fail.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package with the real `cargo xtask dist` code from the binaries in target/.
fn build_package(out: &Path) -> PathBuf {
    let veer = veer_bin().unwrap();
    let bin_dir = veer.parent().unwrap();
    let xtask = bin_dir.join("xtask");
    assert!(
        xtask.is_file(),
        "{} missing: run through `cargo xtask test`",
        xtask.display()
    );
    let mut cmd = Command::new(&xtask);
    cmd.args(["dist", "--no-build", "--out"]).arg(out);
    if !bin_dir.ends_with("release") {
        cmd.arg("--debug");
    }
    let stdout = run(&mut cmd);
    PathBuf::from(stdout.lines().last().expect("xtask dist prints the package path"))
}

/// `dpkg-deb -c`: (path, mode, owner) per entry.
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| {
                (
                    f[5].trim_start_matches('.').to_string(),
                    f[0].to_string(),
                    f[1].to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn dist_package_holds_binary_unit_conffile_completions_man_pages_and_docs() {
    if !is_root() {
        eprintln!("skipped: dpkg --root installs as root");
        return;
    }
    let scratch = Scratch(std::env::temp_dir().join(format!("veer-dist-test-{}", std::process::id())));
    let deb = build_package(&scratch.0.join("out"));
    assert!(deb.is_file(), "{} was not built", deb.display());

    let files = contents(&deb);
    let paths: BTreeSet<&str> = files.iter().map(|(p, _, _)| p.as_str()).collect();
    let mut expected = vec![
        "/usr/bin/veer".to_string(),
        "/usr/lib/systemd/system/veer.service".into(),
        "/etc/veer/veer.toml".into(),
        "/usr/share/bash-completion/completions/veer".into(),
        "/usr/share/zsh/vendor-completions/_veer".into(),
        "/usr/share/fish/vendor_completions.d/veer.fish".into(),
        "/usr/share/man/man1/veer.1.gz".into(),
        "/usr/share/doc/veer/README.md".into(),
        "/usr/share/doc/veer/copyright".into(),
        "/usr/share/doc/veer/decisions.md".into(),
        "/usr/share/doc/veer/deployments.md".into(),
    ];
    // One man page per verb of the real command line.
    let cli = veer::cli::Cli::command();
    let verbs: Vec<String> = cli.get_subcommands().map(|c| c.get_name().to_string()).collect();
    assert!(verbs.iter().any(|v| v == "switch"), "verbs: {verbs:?}");
    expected.extend(verbs.iter().map(|v| format!("/usr/share/man/man1/veer-{v}.1.gz")));
    for want in &expected {
        assert!(paths.contains(want.as_str()), "{want} not in the package:\n{paths:#?}");
    }
    for (path, mode, owner) in &files {
        assert_eq!(owner, "root/root", "{path} owned by {owner}");
        if path == "/usr/bin/veer" {
            assert_eq!(mode, "-rwxr-xr-x", "{path}");
        } else if path.ends_with('/') {
            assert_eq!(mode, "drwxr-xr-x", "{path}");
        } else {
            assert_eq!(mode, "-rw-r--r--", "{path}");
        }
    }

    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for want in [
        "Package: veer",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Depends: libc6 (>= 2.",
        "Description: XDP load balancer",
        " conffiles",
        " postinst",
    ] {
        assert!(info.contains(want), "{want:?} not in dpkg-deb -I:\n{info}");
    }
    let conffiles = run(Command::new("dpkg-deb").args(["-I"]).arg(&deb).arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/veer/veer.toml");

    // Install into a scratch root with its own dpkg database. The maintainer scripts run
    // outside a chroot there (the root has no shell) and leave the host's systemd alone
    // because dpkg sets DPKG_ROOT.
    let root = scratch.0.join("root");
    let db = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(db.join(d)).unwrap();
    }
    std::fs::write(db.join("status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.display()))
            .args(["--force-script-chrootless", "--force-depends", "--log=/dev/null"])
            .args(args);
        run(&mut cmd)
    };
    dpkg(&["-i", deb.to_str().unwrap()]);
    let status = dpkg(&["-s", "veer"]);
    assert!(status.contains("Status: install ok installed"), "{status}");
    let installed = root.join("usr/bin/veer");
    let version = run(Command::new(&installed).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    // The shipped example is a valid config (checked against the loopback interface).
    let conf = root.join("etc/veer/veer.toml");
    run(Command::new(&installed)
        .args(["check", "--iface", "lo", "--config"])
        .arg(&conf));
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/veer.service")).unwrap();
    for want in [
        "Type=notify",
        "ExecStart=/usr/bin/veer agent --config /etc/veer/veer.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "StateDirectory=veer",
        "RuntimeDirectory=veer",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
    ] {
        assert!(unit.lines().any(|l| l == want), "{want:?} not in the unit:\n{unit}");
    }
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/veer")).unwrap();
    assert!(bash.contains("complete -F") && bash.contains("rollback"), "{bash}");
    let fish = std::fs::read_to_string(root.join("usr/share/fish/vendor_completions.d/veer.fish")).unwrap();
    assert!(
        fish.contains("complete -c veer") && fish.contains("drain-timeout"),
        "{fish}"
    );
    let man = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/veer-switch.1.gz")));
    assert!(
        man.contains(".TH veer-switch") && man.contains("drain\\-timeout"),
        "{man}"
    );

    // An operator's edit to the conffile survives removal; purge takes it.
    std::fs::write(&conf, "# edited\n").unwrap();
    dpkg(&["-r", "veer"]);
    assert!(!installed.exists(), "remove left /usr/bin/veer");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "# edited\n");
    dpkg(&["--purge", "veer"]);
    assert!(!conf.exists(), "purge left the conffile");
}
