//! The bpffs that holds the agent's pins, and whether it outlives the agent.
//!
//! Pins keep the data path alive across agent restarts only on the host's own bpffs.
//! `ip netns exec` starts its command in a private mount namespace with a fresh /sys;
//! a bpffs mounted there (by the agent, since none is) dies with the process, and a
//! kill -9 then takes the data path with it. That is detected and said in plain words.

use std::path::Path;

use tracing::{info, warn};

/// statfs(2) f_type of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "agent.pin_dir {dir}: {parent} is not a bpffs; mount one there (mount -t bpf bpf {parent}) or pick a pin_dir under {DEFAULT_BPFFS}"
    )]
    NotBpffs { dir: String, parent: String },
    #[error("mounting a bpffs at {DEFAULT_BPFFS}: {0}")]
    Mount(std::io::Error),
}

/// What was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bpffs {
    /// The agent mounted the bpffs itself: none was there.
    pub mounted_by_agent: bool,
    /// The agent's mount namespace is not the host's (PID 1's, or if that cannot be read,
    /// the parent's): its mounts are not the host's. None: could not tell.
    pub private_mounts: Option<bool>,
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-buffer; valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Whether this process's mount namespace differs from PID 1's. PID 1's may be closed to
/// us (ptrace rules); then a parent in another namespace still tells (under `ip netns
/// exec` the parent is the shell, in the host's), a parent in ours does not. None: unknown.
fn private_mount_namespace() -> Option<bool> {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    if let Ok(init) = std::fs::read_link("/proc/1/ns/mnt") {
        return Some(init != own);
    }
    // SAFETY: getppid cannot fail.
    let parent = std::fs::read_link(format!("/proc/{}/ns/mnt", unsafe { libc::getppid() })).ok()?;
    (parent != own).then_some(true)
}

/// Makes sure `pin_dir` can hold pins (mounting a bpffs at /sys/fs/bpf when none is
/// there and the pins go under it) and warns when the pins will not outlive the agent.
pub fn prepare(pin_dir: &Path) -> Result<Bpffs, BpffsError> {
    // The nearest existing ancestor decides which filesystem the pins land on.
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let mut mounted_by_agent = false;
    if !is_bpffs(existing) {
        let under_default = pin_dir.starts_with(DEFAULT_BPFFS);
        if !under_default || !Path::new(DEFAULT_BPFFS).is_dir() || is_bpffs(Path::new(DEFAULT_BPFFS)) {
            return Err(BpffsError::NotBpffs {
                dir: pin_dir.display().to_string(),
                parent: existing.display().to_string(),
            });
        }
        let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: valid C strings; mounting needs CAP_SYS_ADMIN, which loading XDP needs too.
        if unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
            return Err(BpffsError::Mount(std::io::Error::last_os_error()));
        }
        mounted_by_agent = true;
    }
    let found = Bpffs {
        mounted_by_agent,
        private_mounts: private_mount_namespace(),
    };
    match (found.private_mounts, found.mounted_by_agent) {
        (Some(true), true) => warn!(
            pin_dir = %pin_dir.display(),
            "the agent runs in a mount namespace of its own (as under `ip netns exec`) where no bpffs \
             was mounted, and mounted one itself: its pins vanish when it exits, and a crash or kill -9 \
             then stops the data path. Start it in the host's mount namespace (systemd, or \
             `nsenter --net=/run/netns/NAME veer agent ...` for a network namespace)"
        ),
        // systemd's sandboxing (ProtectSystem=) makes a mount namespace too, with the
        // host's bpffs propagated into it: pins there are the host's.
        (Some(true), false) => info!(
            pin_dir = %pin_dir.display(),
            "the agent runs in a mount namespace of its own; its bpffs was mounted there already \
             (as systemd's sandboxing passes on the host's)"
        ),
        (Some(false), true) => info!("no bpffs was mounted at {DEFAULT_BPFFS}: mounted one (pins outlive the agent)"),
        (None, true) => warn!(
            pin_dir = %pin_dir.display(),
            "no bpffs was mounted at {DEFAULT_BPFFS}: the agent mounted one. If it runs in a mount \
             namespace of its own (as under `ip netns exec`), its pins vanish when it exits and a \
             crash then stops the data path; start it in the host's mount namespace (systemd, or \
             `nsenter --net=/run/netns/NAME veer agent ...`)"
        ),
        (_, false) => {}
    }
    Ok(found)
}
