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
    /// retransmitted a SYN, or the UDP helper resent a datagram. `allowed` names what the
    /// scenario expects to grow: a reason, "syn_retrans" or "udp_resends", alone (any
    /// growth) or as "name<=N" (at most N).
    pub fn assert_no_drops(&self, since: &Watch, allowed: &[&str]) {
        let grew = self.drops_since(since, allowed).expect("read the drop counters");
        assert!(
            grew.is_empty(),
            "packets were lost although every request succeeded: {}\nagent log:\n{}",
            grew.join(", "),
            self.agent_log()
        );
    }

    /// What grew since `since` beyond `allowed` (see [`Lab::assert_no_drops`]), e.g.
    /// `["drop_no_backend +3", "client SYN retransmits +3"]`; empty when nothing did.
    pub fn drops_since(&self, since: &Watch, allowed: &[&str]) -> anyhow::Result<Vec<String>> {
        let now = self.watch()?;
        let limit = |name: &str| -> u64 {
            allowed
                .iter()
                .find_map(|a| match a.split_once("<=") {
                    Some((n, max)) if n == name => max.parse().ok(),
                    None if *a == name => Some(u64::MAX),
                    _ => None,
                })
                .unwrap_or(0)
        };
        let mut grew = Vec::new();
        let mut check = |what: &str, name: &str, before: u64, after: u64| {
            if after.saturating_sub(before) > limit(name) {
                grew.push(format!("{what} +{}", after - before));
            }
        };
        for (k, &n) in &now.reasons {
            check(k, k, since.reasons.get(k).copied().unwrap_or(0), n);
        }
        check(
            "client SYN retransmits",
            "syn_retrans",
            since.syn_retrans,
            now.syn_retrans,
        );
        check("UDP resends", "udp_resends", since.udp_resends, now.udp_resends);
        Ok(grew)
    }
}
