//! The kernel settings the data path depends on, checked (and set) on the agent's
//! interfaces at start.
//!
//! - `bpf_fib_lookup` answers FWD_DISABLED (the program drops: drop_fib) unless
//!   forwarding is on for the interface the packet came in on.
//! - A flow's first packet to a neighbour the host has not resolved yet goes to the stack
//!   already rewritten (pass_no_neigh), with the NAT source, a local address. IPv4 drops
//!   such a packet as a martian unless accept_local is on, and a strict reverse-path filter
//!   drops it too; the stack forwards it back out of the interface it came in on, and
//!   would send an ICMP redirect for each. IPv6 forwards it only with forwarding on for the
//!   whole host, or with the interface's force_forwarding (Linux 6.17+).

use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// One setting that differs from what the data path needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted name, as `sysctl` spells it.
    pub name: String,
    pub old: String,
    pub new: String,
    pub why: &'static str,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {} ({})", self.name, self.old, self.new, self.why)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error(
        "the data path needs these kernel settings, and agent.manage_sysctls = false forbids \
         the agent to set them:\n{}\nset them (sysctl -w NAME=VALUE, and in /etc/sysctl.d/ to \
         keep them) or let the agent do it (agent.manage_sysctls = true)",
        .0.iter().map(|c| format!("  sysctl -w {}={}   # now {}: {}", c.name, c.new, c.old, c.why)).collect::<Vec<_>>().join("\n")
    )]
    Refused(Vec<Change>),
    #[error("setting {name} to {value}: {source}")]
    Write {
        name: String,
        value: String,
        source: std::io::Error,
    },
}

/// Where sysctls live (a parameter so tests can use a fake tree).
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Sysctls {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

const WHY_FORWARD: &str = "the XDP program's FIB lookup fails with forwarding off (drop_fib)";
const WHY_ACCEPT_LOCAL: &str = "a first packet to an unresolved neighbour reaches the stack with the NAT source, a local address: a martian without it";
const WHY_RP_FILTER: &str = "a strict reverse-path filter drops those packets too; loose (2) keeps the check";
const WHY_REDIRECTS: &str =
    "the stack forwards those packets out of the interface they came in on: no ICMP redirect for each";
const WHY_FORCE_FWD6: &str = "IPv6 forwards those packets only with forwarding on for the interface (force_forwarding)";
const WHY_ALL_FWD6: &str =
    "IPv6 forwards those packets only with forwarding on for the whole host (this kernel has no force_forwarding)";

impl Sysctls {
    pub fn at(root: &Path) -> Sysctls {
        Sysctls {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name.replace('.', "/"))
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.path(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// What must change on `interfaces` for the address families in use.
    pub fn plan(&self, interfaces: &[String], v4: bool, v6: bool) -> Vec<Change> {
        let mut out = Vec::new();
        let mut want = |name: String, new: &str, why: &'static str| {
            if let Some(old) = self.read(&name)
                && old != new
            {
                out.push(Change {
                    name,
                    old,
                    new: new.into(),
                    why,
                });
            }
        };
        if v4 {
            let all_rp = self.read("net.ipv4.conf.all.rp_filter");
            for i in interfaces {
                want(format!("net.ipv4.conf.{i}.forwarding"), "1", WHY_FORWARD);
                want(format!("net.ipv4.conf.{i}.accept_local"), "1", WHY_ACCEPT_LOCAL);
                // The effective value is the larger of `all` and the interface's.
                if self.read(&format!("net.ipv4.conf.{i}.rp_filter")).as_deref() == Some("1") {
                    want(format!("net.ipv4.conf.{i}.rp_filter"), "2", WHY_RP_FILTER);
                }
                want(format!("net.ipv4.conf.{i}.send_redirects"), "0", WHY_REDIRECTS);
            }
            if all_rp.as_deref() == Some("1") {
                want("net.ipv4.conf.all.rp_filter".into(), "2", WHY_RP_FILTER);
            }
        }
        if v6 {
            let per_interface = interfaces
                .iter()
                .all(|i| self.path(&format!("net.ipv6.conf.{i}.force_forwarding")).exists());
            for i in interfaces {
                want(format!("net.ipv6.conf.{i}.forwarding"), "1", WHY_FORWARD);
                if per_interface {
                    want(format!("net.ipv6.conf.{i}.force_forwarding"), "1", WHY_FORCE_FWD6);
                }
            }
            if !per_interface {
                want("net.ipv6.conf.all.forwarding".into(), "1", WHY_ALL_FWD6);
            }
        }
        out
    }

    /// Applies `changes` (logging each, old -> new and why), or refuses naming them all
    /// when the operator keeps the settings to themselves.
    pub fn apply(&self, changes: Vec<Change>, allowed: bool) -> Result<(), SysctlError> {
        if changes.is_empty() {
            return Ok(());
        }
        if !allowed {
            return Err(SysctlError::Refused(changes));
        }
        for c in &changes {
            std::fs::write(self.path(&c.name), &c.new).map_err(|source| SysctlError::Write {
                name: c.name.clone(),
                value: c.new.clone(),
                source,
            })?;
            info!(sysctl = %c.name, old = %c.old, new = %c.new, "set: {}", c.why);
            if c.name.starts_with("net.ipv6.conf.")
                && c.name.ends_with(".forwarding")
                && let Some(iface) = c.name.split('.').nth(3)
                && self.read(&format!("net.ipv6.conf.{iface}.accept_ra")).as_deref() == Some("1")
            {
                warn!(
                    sysctl = %c.name,
                    "with forwarding on, {iface} ignores IPv6 router advertisements (accept_ra = 1): \
                     set net.ipv6.conf.{iface}.accept_ra = 2 if this host takes its IPv6 route from them"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(values: &[(&str, &str)]) -> (tempdir::Dir, Sysctls) {
        let dir = tempdir::Dir::new();
        for (name, v) in values {
            let p = dir.0.join(name.replace('.', "/"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        let s = Sysctls::at(&dir.0);
        (dir, s)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "veer-sysctl-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_default_host_needs_forwarding_accept_local_and_no_redirects() {
        let (_d, s) = tree(&[
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.forwarding", "0"),
            ("net.ipv4.conf.eth0.accept_local", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
            ("net.ipv4.conf.eth0.send_redirects", "1"),
            ("net.ipv6.conf.all.forwarding", "0"),
            ("net.ipv6.conf.eth0.forwarding", "0"),
            ("net.ipv6.conf.eth0.force_forwarding", "0"),
        ]);
        let names: Vec<String> = s
            .plan(&["eth0".into()], true, true)
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            [
                "net.ipv4.conf.eth0.forwarding",
                "net.ipv4.conf.eth0.accept_local",
                "net.ipv4.conf.eth0.send_redirects",
                "net.ipv6.conf.eth0.forwarding",
                "net.ipv6.conf.eth0.force_forwarding",
            ]
        );
    }

    #[test]
    fn strict_reverse_path_filter_becomes_loose_and_old_kernels_forward_ipv6_host_wide() {
        let (_d, s) = tree(&[
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.eth0.rp_filter", "1"),
            ("net.ipv6.conf.all.forwarding", "0"),
            ("net.ipv6.conf.eth0.forwarding", "1"),
        ]);
        let plan = s.plan(&["eth0".into()], true, true);
        let got: Vec<(&str, &str)> = plan.iter().map(|c| (c.name.as_str(), c.new.as_str())).collect();
        assert_eq!(
            got,
            [
                ("net.ipv4.conf.eth0.rp_filter", "2"),
                ("net.ipv4.conf.all.rp_filter", "2"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ]
        );
    }

    #[test]
    fn refusal_names_every_setting_and_changes_nothing() {
        let (d, s) = tree(&[("net.ipv4.conf.eth0.accept_local", "0")]);
        let err = s.apply(s.plan(&["eth0".into()], true, false), false).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sysctl -w net.ipv4.conf.eth0.accept_local=1"), "{text}");
        assert_eq!(
            std::fs::read_to_string(d.0.join("net/ipv4/conf/eth0/accept_local")).unwrap(),
            "0\n"
        );
        s.apply(s.plan(&["eth0".into()], true, false), true).unwrap();
        assert!(s.plan(&["eth0".into()], true, false).is_empty());
    }
}
