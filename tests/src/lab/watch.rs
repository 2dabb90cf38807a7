//! Drops nobody would see otherwise. A load that reports "0 failed" can still have lost
//! packets: TCP resends a lost SYN, the UDP helper resends an unanswered datagram. A
//! [`Watch`] snapshots the data path's drop/pass reasons and the client's resends, and
//! [`Lab::assert_no_drops`] says which of them grew.

use std::{
    collections::BTreeMap,
    fs,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;

use super::Lab;

/// Datagrams the UDP helper had to send again because no answer came in time.
pub static UDP_RESENDS: AtomicU64 = AtomicU64::new(0);

/// The counters a load must not move.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// `drop_*` and `pass_no_neigh` reasons of the data path, by name.
    reasons: BTreeMap<String, u64>,
    /// The client namespace's TcpExt TCPSynRetrans.
    syn_retrans: u64,
    udp_resends: u64,
}

/// Is this reason one that loses or delays a packet a client sent to a VIP?
fn is_loss(reason: &str) -> bool {
    reason.starts_with("drop_") || reason == "pass_no_neigh"
}

/// Reasons tolerated in every scenario until the agent keeps neighbour entries resolved
/// itself: today the first flow to each backend meets NO_NEIGH and rides the stack.
const TOLERATED_FOR_NOW: &[&str] = &["pass_no_neigh"];

/// TcpExt TCPSynRetrans of the calling thread's network namespace.
pub fn syn_retransmits() -> anyhow::Result<u64> {
    // thread-self: /proc/self/net is the namespace of the thread-group leader, not ours.
    let text = fs::read_to_string("/proc/thread-self/net/netstat").context("read netstat")?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPSynRetrans")
        .and_then(|(_, v)| v.parse().ok())
        .context("no TcpExt TCPSynRetrans in netstat")
}

impl Lab {
    /// The counters now (the agent must be running: reasons come from `veer status`).
    pub fn watch(&self) -> anyhow::Result<Watch> {
        let status = self.status()?;
        let reasons = status["counters"]["reasons"]
            .as_object()
            .context("status has no counters.reasons")?
            .iter()
            .filter(|(k, _)| is_loss(k))
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
        Ok(Watch {
            reasons,
            syn_retrans: self.client.run(syn_retransmits)??,
            udp_resends: UDP_RESENDS.load(Ordering::Relaxed),
        })
    }

    /// Panics when, since `since`, a drop reason (or pass_no_neigh) grew, the client
    /// retransmitted a SYN, or the UDP helper resent a datagram. `allowed` names reasons
    /// (or "syn_retrans", "udp_resends") the scenario expects to grow.
    pub fn assert_no_drops(&self, since: &Watch, allowed: &[&str]) {
        let now = self.watch().expect("read the drop counters");
        let mut grew: Vec<String> = now
            .reasons
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()) && !TOLERATED_FOR_NOW.contains(&k.as_str()))
            .filter_map(|(k, &n)| {
                let before = since.reasons.get(k).copied().unwrap_or(0);
                (n > before).then(|| format!("{k} +{}", n - before))
            })
            .collect();
        if now.syn_retrans > since.syn_retrans && !allowed.contains(&"syn_retrans") {
            grew.push(format!(
                "client SYN retransmits +{}",
                now.syn_retrans - since.syn_retrans
            ));
        }
        if now.udp_resends > since.udp_resends && !allowed.contains(&"udp_resends") {
            grew.push(format!("UDP resends +{}", now.udp_resends - since.udp_resends));
        }
        assert!(
            grew.is_empty(),
            "packets were lost although every request succeeded: {}\nagent log:\n{}",
            grew.join(", "),
            self.agent_log()
        );
    }
}
