//! The data path's opt-in debug trace (lb-ebpf/src/trace.rs): the trace program, the
//! prefixes it traces, and a reader that hands its aya-log records to the agent's log at
//! debug level (target `veer::trace`), with reasons and actions named.

use std::{net::IpAddr, os::fd::AsRawFd as _};

use aya::{Ebpf, maps::lpm_trie::Key, programs::Xdp};
use lb_common::{FAMILY_V4, FAMILY_V6, MAP_TRACE_FILTER, MAP_TRACE_PROGS, PROG_TRACE, Reason, TraceKey};
use tracing::info;

use super::{DataplaneError, map_err};
use crate::config::TracePrefix;

/// Loads the trace program where the balancer tail-calls it, writes the prefixes, and
/// starts a thread that logs its records. The object must have been loaded with
/// GLOBAL_TRACE = 1.
pub(super) fn install(ebpf: &mut Ebpf, prefixes: &[TracePrefix]) -> Result<(), DataplaneError> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_TRACE)
        .ok_or(DataplaneError::StubObject)?
        .try_into()?;
    prog.load()?;
    let fd = prog.fd()?.try_clone()?;
    {
        let map = ebpf.map_mut(MAP_TRACE_PROGS).ok_or(DataplaneError::StubObject)?;
        let mut progs: aya::maps::ProgramArray<_> = map.try_into().map_err(map_err(MAP_TRACE_PROGS))?;
        progs.set(0, &fd, 0).map_err(map_err(MAP_TRACE_PROGS))?;
    }
    {
        let map = ebpf.map_mut(MAP_TRACE_FILTER).ok_or(DataplaneError::StubObject)?;
        let mut filter: aya::maps::LpmTrie<_, TraceKey, u8> = map.try_into().map_err(map_err(MAP_TRACE_FILTER))?;
        for p in prefixes {
            let (family, addr_be) = match p.addr {
                IpAddr::V4(a) => (FAMILY_V4, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
                IpAddr::V6(a) => {
                    let o = a.octets();
                    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                    (FAMILY_V6, [w(0), w(4), w(8), w(12)])
                }
            };
            let key = Key::new(
                32 + u32::from(p.len),
                TraceKey {
                    family_be: u32::from(family).to_be(),
                    addr_be,
                },
            );
            filter.insert(&key, 1, 0).map_err(map_err(MAP_TRACE_FILTER))?;
        }
    }
    let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, TraceLog)
        .map_err(|e| DataplaneError::Io(std::io::Error::other(format!("trace log: {e}"))))?;
    std::thread::Builder::new().name("veer-trace".into()).spawn(move || {
        loop {
            let mut pfd = libc::pollfd {
                fd: logger.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a timeout bounds every wait.
            unsafe { libc::poll(&mut pfd, 1, 500) };
            logger.flush();
        }
    })?;
    let list: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
    if !tracing::enabled!(target: "veer::trace", tracing::Level::DEBUG) {
        tracing::warn!(
            "the data path trace logs at debug level, which this agent's log does not show: run it with --log-level debug"
        );
    }
    info!(prefixes = ?list, "data path trace on: decisions about these clients and VIPs are logged at debug level (target veer::trace)");
    Ok(())
}

/// Names the numbers in a trace record and logs it through tracing.
struct TraceLog;

fn action_name(a: u32) -> &'static str {
    match a {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "?",
    }
}

/// "reason R action A proto P SRC -> DST" into "R-NAME (xdp A-NAME) tcp|udp SRC -> DST".
fn render(msg: &str) -> String {
    let mut words = msg.splitn(7, ' ');
    let mut field = |name: &str| -> Option<u32> {
        (words.next()? == name).then_some(())?;
        words.next()?.parse().ok()
    };
    let (Some(r), Some(a), Some(p)) = (field("reason"), field("action"), field("proto")) else {
        return msg.to_string();
    };
    let rest = words.next().unwrap_or("");
    let reason = Reason::ALL.get(r as usize).map(|r| r.name()).unwrap_or("?");
    let proto = match p {
        6 => "tcp",
        17 => "udp",
        _ => "ip",
    };
    format!("{reason} (xdp {}) {proto} {rest}", action_name(a))
}

impl log::Log for TraceLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        tracing::debug!(target: "veer::trace", "{}", render(&record.args().to_string()));
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_rendered_with_names() {
        assert_eq!(
            render("reason 9 action 4 proto 6 10.77.0.10:40000 -> 10.77.0.100:80"),
            "redirect (xdp redirect) tcp 10.77.0.10:40000 -> 10.77.0.100:80"
        );
        assert_eq!(render("something else"), "something else");
    }
}
