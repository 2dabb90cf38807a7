//! Neighbour entries for every backend and next hop, kept resolved by the kernel.
//!
//! XDP traffic never resolves or refreshes a neighbour: `bpf_fib_lookup` only reads the
//! table and answers NO_NEIGH for an address the host never talked to. The agent therefore
//! asks the kernel where each backend is reached (RTM_GETROUTE: egress interface and
//! gateway) and installs a *managed* entry for that hop (NTF_EXT_MANAGED, Linux 5.16+):
//! the kernel resolves it at once and keeps it fresh without traffic.
//!
//! Raw rtnetlink with libc, not a netlink crate: four fixed-layout messages (get route, add,
//! delete and get a neighbour) are less code than an async netlink stack, and need no
//! runtime of their own (the keeper runs on a plain thread).

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTN_UNICAST: u8 = 1;
const NDA_DST: u16 = 1;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_MANAGED: u32 = 1;
const NUD_NONE: u16 = 0;
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_PERMANENT: u16 = 0x80;
const NUD_NOARP: u16 = 0x40;
/// States in which bpf_fib_lookup returns the MAC (anything but none/incomplete/failed).
const NUD_VALID: u16 = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP;

/// One hop the data path forwards to: an interface and the neighbour's address on it
/// (the backend itself when it is on-link, else the route's gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub ifindex: u32,
    pub addr: IpAddr,
}

/// A NETLINK_ROUTE socket doing one request at a time.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A kernel that never answers must not hang the agent.
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        // SAFETY: valid fd and option struct.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sends one request (header filled here) and returns the payloads of the replies of
    /// `want` type; an NLMSG_ERROR with a non-zero code is the error.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8], want: u16) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sockaddr_nl zeroed = the kernel; buffer valid for its length.
        let sent = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            // SAFETY: buffer valid for its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
                let typ = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap_or_default());
                if len < 16 || len > rest.len() {
                    return Err(io::Error::other("malformed netlink reply"));
                }
                let payload = &rest[16..len];
                rest = &rest[align4(len).min(rest.len())..];
                if mseq != seq {
                    continue;
                }
                match typ {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        return if code == 0 {
                            Ok(out)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    NLMSG_DONE => return Ok(out),
                    t if t == want => {
                        out.push(payload.to_vec());
                        // Single-object answers (no dump) end with the object unless acked.
                        if flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Where the kernel sends a packet to `dst`: (egress ifindex, gateway), or None when
    /// `dst` is not reached through a unicast route (a local address, say).
    pub fn route_to(&mut self, dst: IpAddr) -> io::Result<Option<Hop>> {
        let (family, bytes) = family_bytes(dst);
        let mut body = vec![family, (bytes.len() * 8) as u8, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&0u32.to_ne_bytes());
        push_attr(&mut body, RTA_DST, &bytes);
        let replies = self.request(RTM_GETROUTE, 0, &body, RTM_NEWROUTE)?;
        let Some(r) = replies.first() else { return Ok(None) };
        if r.len() < 12 || r[7] != RTN_UNICAST {
            return Ok(None);
        }
        let (mut oif, mut gateway) = (0u32, None);
        for (typ, data) in attrs(&r[12..]) {
            match typ {
                RTA_OIF if data.len() == 4 => oif = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
                RTA_GATEWAY => gateway = ip_from(data),
                _ => {}
            }
        }
        Ok((oif != 0).then_some(Hop {
            ifindex: oif,
            addr: gateway.unwrap_or(dst),
        }))
    }

    /// Installs (or turns an existing entry into) a managed entry for `hop`.
    pub fn add_managed(&mut self, hop: Hop) -> io::Result<()> {
        let mut body = ndmsg(hop, NUD_NONE);
        push_attr(&mut body, NDA_DST, &family_bytes(hop.addr).1);
        push_attr(&mut body, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        self.request(
            RTM_NEWNEIGH,
            NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
            &body,
            RTM_NEWNEIGH,
        )
        .map(drop)
    }

    pub fn delete(&mut self, hop: Hop) -> io::Result<()> {
        let mut body = ndmsg(hop, NUD_NONE);
        push_attr(&mut body, NDA_DST, &family_bytes(hop.addr).1);
        self.request(RTM_DELNEIGH, NLM_F_ACK, &body, RTM_NEWNEIGH).map(drop)
    }

    /// The entry's NUD state and whether it is managed; None when there is no entry.
    pub fn entry(&mut self, hop: Hop) -> io::Result<Option<(u16, bool)>> {
        let mut body = ndmsg(hop, NUD_NONE);
        push_attr(&mut body, NDA_DST, &family_bytes(hop.addr).1);
        match self.request(RTM_GETNEIGH, 0, &body, RTM_NEWNEIGH) {
            Ok(r) => Ok(r.first().filter(|m| m.len() >= 12).map(|m| {
                let managed = attrs(&m[12..]).any(|(t, d)| {
                    t == NDA_FLAGS_EXT
                        && d.len() == 4
                        && u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) & NTF_EXT_MANAGED != 0
                });
                (u16::from_ne_bytes([m[8], m[9]]), managed)
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn ndmsg(hop: Hop, state: u16) -> Vec<u8> {
    let mut b = vec![family_bytes(hop.addr).0, 0, 0, 0];
    b.extend_from_slice(&(hop.ifindex as i32).to_ne_bytes());
    b.extend_from_slice(&state.to_ne_bytes());
    b.extend_from_slice(&[0, 0]);
    b
}

fn family_bytes(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

fn ip_from(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
        _ => None,
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(buf: &mut Vec<u8>, typ: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&typ.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

/// Route attributes of a message body: (type, data).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let typ = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((typ, data))
    })
}

/// The managed entries this agent installed, kept in step with the backends.
pub struct Neighbours {
    nl: Netlink,
    /// Hop -> backends reached through it.
    hops: BTreeMap<Hop, BTreeSet<IpAddr>>,
    backends: BTreeSet<IpAddr>,
    refreshed: Option<Instant>,
}

/// Routes are looked up again this often (a gateway can change under a backend).
const REFRESH: Duration = Duration::from_secs(30);

impl Neighbours {
    pub fn new() -> io::Result<Neighbours> {
        Ok(Neighbours {
            nl: Netlink::open()?,
            hops: BTreeMap::new(),
            backends: BTreeSet::new(),
            refreshed: None,
        })
    }

    /// Brings the managed entries in step with `backends`: a hop for each (installed
    /// again on every refresh, which also repairs an entry someone deleted); hops no
    /// backend needs any more are deleted. Cheap when nothing changed.
    pub fn sync(&mut self, backends: &BTreeSet<IpAddr>) {
        let due = self.refreshed.is_none_or(|t| t.elapsed() >= REFRESH);
        if !due && *backends == self.backends {
            return;
        }
        let mut hops: BTreeMap<Hop, BTreeSet<IpAddr>> = BTreeMap::new();
        for &b in backends {
            match self.nl.route_to(b) {
                Ok(Some(hop)) => {
                    hops.entry(hop).or_default().insert(b);
                }
                Ok(None) => debug!(backend = %b, "no unicast route: no neighbour entry to keep"),
                Err(e) => warn!(backend = %b, "no route to the backend ({e}): its packets are dropped (drop_fib)"),
            }
        }
        for hop in hops.keys() {
            if due || !self.hops.contains_key(hop) {
                match self.nl.add_managed(*hop) {
                    Ok(()) => debug!(neighbour = %hop.addr, ifindex = hop.ifindex, "managed neighbour entry"),
                    Err(e) => warn!(
                        neighbour = %hop.addr,
                        ifindex = hop.ifindex,
                        "cannot install a managed neighbour entry ({e}): needs Linux 5.16+; \
                         first packets to it take the stack's path"
                    ),
                }
            }
        }
        for hop in self.hops.keys().filter(|h| !hops.contains_key(h)) {
            match self.nl.delete(*hop) {
                Ok(()) => info!(neighbour = %hop.addr, "neighbour entry removed: no backend uses it any more"),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => warn!(neighbour = %hop.addr, "removing a neighbour entry: {e}"),
            }
        }
        if due {
            self.refreshed = Some(Instant::now());
        }
        self.hops = hops;
        self.backends = backends.clone();
    }

    /// Waits (at most `limit`) until every hop is resolved; returns the unresolved ones.
    pub fn wait_resolved(&mut self, limit: Duration) -> Vec<Hop> {
        let deadline = Instant::now() + limit;
        loop {
            let pending: Vec<Hop> = self
                .hops
                .keys()
                .copied()
                .collect::<Vec<_>>()
                .into_iter()
                .filter(|h| !matches!(self.nl.entry(*h), Ok(Some((s, _))) if s & NUD_VALID != 0))
                .collect();
            if pending.is_empty() || Instant::now() >= deadline {
                return pending;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Deletes the managed entries of the hops towards `backends` (a full cleanup, by a
    /// process that did not install them); returns how many went.
    pub fn remove_managed(&mut self, backends: &BTreeSet<IpAddr>) -> usize {
        let hops: BTreeSet<Hop> = backends
            .iter()
            .filter_map(|b| self.nl.route_to(*b).ok().flatten())
            .collect();
        hops.into_iter()
            .filter(|h| matches!(self.nl.entry(*h), Ok(Some((_, true)))) && self.nl.delete(*h).is_ok())
            .count()
    }

    pub fn hops(&self) -> usize {
        self.hops.len()
    }
}
