//! Network namespaces owned by RAII guards, and running code inside them on a thread.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Runs a command; fails with its stderr. The command gets a process group of its own, so
/// a terminal's Ctrl-C cannot cut it short half-way (a killed `ip netns add` leaves a
/// namespace that no guard owns): the lab finishes the step, then tears down.
pub fn run_cmd(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .process_group(0)
        .output()
        .with_context(|| format!("failed to run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Netns> {
        run_cmd(&["ip", "netns", "add", name])?;
        Ok(Netns { name: name.to_string() })
    }

    /// Moves the calling thread into this namespace (setns is per thread).
    pub fn enter_this_thread(&self) -> anyhow::Result<()> {
        let file =
            File::open(format!("/run/netns/{}", self.name)).with_context(|| format!("open netns {}", self.name))?;
        // SAFETY: valid fd of a network namespace; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` on a new thread that has entered this namespace (setns is per thread), and
    /// waits for it. A panic inside is re-raised here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let handle = self.spawn(f)?;
        match handle.join() {
            Ok(v) => Ok(v),
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Starts `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<T>> {
        let file =
            File::open(format!("/run/netns/{}", self.name)).with_context(|| format!("open netns {}", self.name))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: valid fd of a network namespace; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Its own process group: a second Ctrl-C during teardown must not skip the delete.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .process_group(0)
            .status();
    }
}
