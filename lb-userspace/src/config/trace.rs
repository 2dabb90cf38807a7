//! `veer agent --trace PREFIX`: the clients and VIPs whose data-path decisions are
//! logged (see dataplane/trace.rs).

use std::net::IpAddr;

/// A traced network: a client prefix or a VIP (a host prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracePrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::str::FromStr for TracePrefix {
    type Err = String;

    /// `ADDR` (a host) or `ADDR/LEN`; host bits must be zero.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: not an address or ADDR/LEN prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        let host_bits = match addr {
            IpAddr::V4(a) => len < 32 && u32::from(a) & (u32::MAX >> len) != 0,
            IpAddr::V6(a) => len < 128 && u128::from(a) & (u128::MAX >> len) != 0,
        };
        if host_bits {
            return Err(format!("{s:?}: host bits set beyond /{len}"));
        }
        Ok(TracePrefix { addr, len })
    }
}

impl std::fmt::Display for TracePrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        let p: TracePrefix = "10.77.0.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "10.77.0.0/24");
        assert_eq!("10.77.0.100".parse::<TracePrefix>().unwrap().len, 32);
        assert_eq!("fd77::/64".parse::<TracePrefix>().unwrap().len, 64);
        assert!("10.77.0.1/24".parse::<TracePrefix>().unwrap_err().contains("host bits"));
        assert!("fd77::1/64".parse::<TracePrefix>().is_err());
        assert!("10.0.0.0/33".parse::<TracePrefix>().is_err());
        assert!("nope".parse::<TracePrefix>().is_err());
        assert_eq!("0.0.0.0/0".parse::<TracePrefix>().unwrap().len, 0);
    }
}
