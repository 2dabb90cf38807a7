//! Every rule an operator's input must pass, in one place. The config load and the API's
//! edits both call these, so a value is accepted or refused the same way wherever it comes
//! from; callers add where it came from (file, line and field, or the request).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Weight of a backend that names none.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Longest duration any setting takes: far beyond any sensible value, and far from where
/// clock arithmetic overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A refused value: what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(m: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(m.into()))
}

/// A VIP name: letters, digits, '-', '_' or '.'.
pub fn vip_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return invalid(format!("{name:?}: use letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

/// `IP:PORT` or `[IPv6]:PORT` with a port that can be a service.
pub fn service_address(s: &str) -> Result<SocketAddr, Invalid> {
    match s.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        Ok(_) => invalid("port 0 is not a service port"),
        Err(_) => invalid(format!("{s:?} is not IP:PORT or [IPv6]:PORT")),
    }
}

/// A backend weight (0 drains).
pub fn weight(n: i64) -> Result<u32, Invalid> {
    if !(0..=MAX_WEIGHT as i64).contains(&n) {
        return invalid(format!("{n} is out of range (0..={MAX_WEIGHT})"));
    }
    Ok(n as u32)
}

/// A backend of VIP `vip`: its family, and an address that can be another host.
pub fn backend_address(addr: SocketAddr, vip: SocketAddr) -> Result<(), Invalid> {
    if addr.is_ipv4() != vip.is_ipv4() {
        return invalid(format!("{addr} is not the VIP's address family ({vip})"));
    }
    let ip = addr.ip();
    let link_local = match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    };
    if ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || link_local
        || ip == IpAddr::V4(Ipv4Addr::BROADCAST)
    {
        return invalid(format!(
            "{addr}: a loopback, link-local, unspecified, multicast or broadcast address cannot be a backend"
        ));
    }
    Ok(())
}

/// A backend of a DSR VIP: the packet reaches it with the VIP's port (DSR rewrites only
/// the MAC), so that is the port it must listen on.
pub fn dsr_backend_port(addr: SocketAddr, vip: SocketAddr) -> Result<(), Invalid> {
    if addr.port() != vip.port() {
        return invalid(format!(
            "{addr}: a backend of a DSR VIP listens on the VIP's port ({}): DSR rewrites only the MAC",
            vip.port()
        ));
    }
    Ok(())
}

/// `ADDR/LEN` with no bits set past the prefix (`10.1.0.0/16`, not `10.1.2.3/16`).
pub fn cidr(s: &str) -> Result<(IpAddr, u8), Invalid> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| Invalid(format!("{s:?} is not a CIDR (ADDR/LEN)")))?;
    let ip: IpAddr = ip.parse().map_err(|_| Invalid(format!("{s:?}: bad address")))?;
    let len: u8 = len.parse().map_err(|_| Invalid(format!("{s:?}: bad prefix length")))?;
    let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
    if len as u32 > bits {
        return invalid(format!("{s:?}: prefix length too long"));
    }
    let host_bits = match ip {
        IpAddr::V4(a) => u32::from(a).checked_shl(len as u32).unwrap_or(0) != 0,
        IpAddr::V6(a) => u128::from(a).checked_shl(len as u32).unwrap_or(0) != 0,
    };
    if host_bits {
        let net = match ip {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
                u32::from(a) & u32::MAX.checked_shl(32 - len as u32).unwrap_or(0),
            )),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
                u128::from(a) & u128::MAX.checked_shl(128 - len as u32).unwrap_or(0),
            )),
        };
        return invalid(format!("{s:?} has host bits set: the network is {net}/{len}"));
    }
    Ok((ip, len))
}

/// A share of new flows, 0..=100 percent, as basis points.
pub fn percent(p: f64) -> Result<u32, Invalid> {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return invalid(format!("percent {p} is out of range (0..=100)"));
    }
    Ok((p * 100.0).round() as u32)
}

/// `10%` or `10`.
pub fn parse_percent(s: &str) -> Result<f64, Invalid> {
    s.trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| Invalid(format!("{s:?} is not a percentage (10% or 10)")))
}

/// A canary's steps: ascending percentages in (0, 100].
pub fn canary_steps(steps: &[f64]) -> Result<(), Invalid> {
    if steps.is_empty() || steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0)) || steps.windows(2).any(|w| w[0] >= w[1]) {
        return invalid(format!("steps {steps:?}: ascending percentages in (0, 100]"));
    }
    Ok(())
}

/// A duration as people write it (`500ms`, `2s`, `1m30s`, `1h`), at most [`MAX_DURATION`].
pub fn duration(s: &str) -> Result<Duration, Invalid> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| Invalid(format!("{s:?} is not a duration (500ms, 2s, 1m30s): {e}")))?;
    if d > MAX_DURATION {
        return invalid(format!("{s:?} is longer than a year"));
    }
    Ok(d)
}

/// A duration within `min..=max`.
pub fn duration_within(s: &str, min: Duration, max: Duration) -> Result<Duration, Invalid> {
    let d = duration(s)?;
    if d < min || d > max {
        return invalid(format!(
            "{s:?} must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_with_host_bits_are_refused_with_the_network_they_meant() {
        assert_eq!(cidr("10.1.0.0/16").unwrap(), ("10.1.0.0".parse().unwrap(), 16));
        assert_eq!(cidr("10.1.2.3/32").unwrap().1, 32);
        assert_eq!(cidr("0.0.0.0/0").unwrap().1, 0);
        assert_eq!(cidr("fd00:1::/32").unwrap().1, 32);
        let e = cidr("10.1.2.3/16").unwrap_err().0;
        assert!(e.contains("host bits") && e.contains("10.1.0.0/16"), "{e}");
        assert!(cidr("fd00:1::1/64").unwrap_err().0.contains("fd00:1::/64"));
        assert!(cidr("10.1.0.0/33").is_err());
        assert!(cidr("10.1.0.0").is_err());
        assert!(cidr("ten/8").is_err());
    }

    #[test]
    fn durations_take_compound_forms_and_huge_ones_are_refused_without_panicking() {
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration(" 2s ").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("1m").unwrap(), Duration::from_secs(60));
        assert!(duration("2").is_err(), "a unit is required");
        for huge in ["99999999999999999999999h", "18446744073709551615s", "400days"] {
            assert!(duration(huge).is_err(), "{huge}");
        }
        assert!(duration("soon").is_err());
        assert!(duration_within("50ms", Duration::from_millis(100), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn backends_that_cannot_be_another_host_are_refused() {
        let vip: SocketAddr = "10.0.0.100:80".parse().unwrap();
        assert!(backend_address("10.0.1.1:80".parse().unwrap(), vip).is_ok());
        for bad in [
            "127.0.0.1:80",
            "169.254.1.1:80",
            "0.0.0.0:80",
            "224.0.0.1:80",
            "[fd00::1]:80",
        ] {
            assert!(backend_address(bad.parse().unwrap(), vip).is_err(), "{bad}");
        }
        let vip6: SocketAddr = "[fd00::100]:80".parse().unwrap();
        for bad in ["[::1]:80", "[fe80::1]:80", "[::]:80"] {
            assert!(backend_address(bad.parse().unwrap(), vip6).is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_percentages_and_steps_have_their_ranges() {
        assert_eq!(weight(0).unwrap(), 0);
        assert!(weight(-1).is_err() && weight(MAX_WEIGHT as i64 + 1).is_err());
        assert_eq!(percent(12.34).unwrap(), 1234);
        assert!(percent(f64::NAN).is_err() && percent(100.1).is_err());
        assert_eq!(parse_percent("10%").unwrap(), 10.0);
        assert!(canary_steps(&[1.0, 5.0, 100.0]).is_ok());
        assert!(canary_steps(&[5.0, 1.0]).is_err() && canary_steps(&[]).is_err() && canary_steps(&[0.0]).is_err());
        assert!(service_address("10.0.0.1:0").is_err() && service_address("10.0.0.1").is_err());
        assert!(vip_name("web-1.a_b").is_ok() && vip_name("we b").is_err() && vip_name("").is_err());
    }
}
