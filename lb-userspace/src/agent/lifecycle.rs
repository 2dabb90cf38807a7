//! The agent's life after start: signals (SIGTERM/SIGINT exit and leave the data path to
//! the next agent, SIGHUP re-reads the config file) and the explicit removal of everything
//! (`veer agent --config F --cleanup`, `veer detach`).

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};

use super::{AgentError, Change, Shared};
use crate::config;

/// The signals the agent handles, installed before the data path is touched.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("install SIGHUP handler")?,
        })
    }

    /// Serves SIGHUP reloads of `config_path` until SIGTERM or SIGINT arrives.
    pub async fn until_stopped(&mut self, core: &Shared, config_path: &Path) {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    info!("SIGTERM: exiting; the data path stays attached for the next agent");
                    crate::host::systemd::notify("STOPPING=1");
                    return;
                }
                _ = self.int.recv() => {
                    info!("SIGINT: exiting; the data path stays attached for the next agent");
                    crate::host::systemd::notify("STOPPING=1");
                    return;
                }
                _ = self.hup.recv() => reload(core, config_path).await,
            }
        }
    }
}

/// SIGHUP: the config file again, applied like `veer apply -f FILE` (validated, one
/// step, runtime changes kept for what remains). A bad file is logged and changes nothing.
async fn reload(core: &Shared, path: &Path) {
    crate::host::systemd::notify("RELOADING=1");
    reload_file(core, path).await;
    crate::host::systemd::notify("READY=1");
}

async fn reload_file(core: &Shared, path: &Path) {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            error!(file = %name, "SIGHUP: cannot read the config file ({e}): nothing changed");
            return;
        }
    };
    let cfg = match config::parse(&text, &name) {
        Ok(c) => c,
        Err(e) => {
            error!(file = %name, "SIGHUP: {e}: nothing changed");
            return;
        }
    };
    let mut core = core.lock().await;
    match core.apply(Change::Config(Box::new(cfg)), false) {
        Ok(report) => {
            core.config_source(&text);
            if report.changes.is_empty() {
                info!(file = %name, "SIGHUP: config re-read, nothing to change");
            } else {
                info!(file = %name, changes = report.changes.len(), "SIGHUP: config re-read and applied");
            }
        }
        Err(e) => error!(file = %name, "SIGHUP: {e}: nothing changed"),
    }
}

/// What to remove.
pub struct Cleanup {
    pub pin_dir: PathBuf,
    pub state_file: PathBuf,
    pub socket: PathBuf,
    /// Backends whose managed neighbour entries go too (from the config and the state).
    pub backends: BTreeSet<IpAddr>,
}

impl Cleanup {
    /// From a config file (`veer agent --config F --cleanup`); the state file's backends too.
    pub fn from_config(path: &Path, socket: Option<PathBuf>) -> Result<Cleanup, AgentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentError::Rejected(format!("{}: cannot read: {e}", path.display())))?;
        let cfg = config::parse(&text, &path.display().to_string()).map_err(|e| AgentError::Rejected(e.to_string()))?;
        let mut backends = crate::host::backend_addresses(&cfg);
        backends.extend(saved_backends(&cfg.agent.state_file));
        Ok(Cleanup {
            socket: socket.unwrap_or(cfg.agent.socket),
            pin_dir: cfg.agent.pin_dir,
            state_file: cfg.agent.state_file,
            backends,
        })
    }

    /// With the default paths, or those given (`veer detach`).
    pub fn from_paths(pin_dir: Option<PathBuf>, state_file: Option<PathBuf>, socket: PathBuf) -> Cleanup {
        let state_file = state_file.unwrap_or_else(|| config::DEFAULT_STATE_FILE.into());
        Cleanup {
            backends: saved_backends(&state_file),
            pin_dir: pin_dir.unwrap_or_else(|| config::DEFAULT_PIN_DIR.into()),
            state_file,
            socket,
        }
    }

    /// Removes the program (link pins), every pin, the state file, the neighbour entries
    /// the agent kept and a stale socket; refuses while an agent answers on the socket.
    /// Returns what was done, a line each.
    pub fn run(self) -> Result<String, AgentError> {
        if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
            return Err(AgentError::Rejected(format!(
                "an agent is running (it answers on {}): stop it first (SIGTERM, or systemctl stop veer), \
                 then clean up",
                self.socket.display()
            )));
        }
        let mut out = String::new();
        let names = crate::dataplane::remove_pins(&self.pin_dir)
            .with_context(|| format!("remove the pins under {}", self.pin_dir.display()))?;
        for n in names.iter().filter_map(|n| n.strip_prefix("link_")) {
            out.push_str(&format!("detached from {n}\n"));
        }
        if names.is_empty() {
            out.push_str(&format!("no pins under {}\n", self.pin_dir.display()));
        } else {
            out.push_str(&format!(
                "removed {} pins and {}\n",
                names.len(),
                self.pin_dir.display()
            ));
        }
        match std::fs::remove_file(&self.state_file) {
            Ok(()) => out.push_str(&format!("removed the state file {}\n", self.state_file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("remove {}: {e}", self.state_file.display()).into()),
        }
        let _ = std::fs::remove_file(&self.socket);
        match crate::host::neigh::Neighbours::new() {
            Ok(mut n) => {
                let removed = n.remove_managed(&self.backends);
                if removed > 0 {
                    out.push_str(&format!("removed {removed} managed neighbour entries\n"));
                }
            }
            Err(e) => warn!("netlink socket ({e}): managed neighbour entries left in place"),
        }
        Ok(out)
    }
}

/// Backend addresses of the desired state in `state_file`, if it is readable.
fn saved_backends(state_file: &Path) -> BTreeSet<IpAddr> {
    #[derive(serde::Deserialize)]
    struct Saved {
        desired: crate::state::Desired,
    }
    std::fs::read_to_string(state_file)
        .ok()
        .and_then(|t| serde_json::from_str::<Saved>(&t).ok())
        .map(|s| crate::host::backend_addresses(&s.desired.config))
        .unwrap_or_default()
}
