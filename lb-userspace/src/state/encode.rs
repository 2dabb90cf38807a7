//! How the desired state is spelled in the maps: addresses, families, backend states and
//! VIP keys in the data path's layouts.

use std::net::IpAddr;

use lb_common::{BACKEND_DOWN, BACKEND_DRAIN, BACKEND_READY, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, VipKey};

use super::AdminState;
use crate::config::{Protocol, VipConfig};

/// Address as stored in maps: IPv4 in word 0, or the IPv6 address, network byte order.
pub fn addr_be(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            std::array::from_fn(|i| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]))
        }
    }
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

/// The backend value the data path gets for a config weight and admin state.
pub fn backend_state(weight: u32, admin: AdminState) -> u8 {
    match admin {
        AdminState::Ready if weight > 0 => BACKEND_READY,
        AdminState::Ready | AdminState::Drain => BACKEND_DRAIN,
        AdminState::Maint => BACKEND_DOWN,
    }
}

pub fn vip_key(v: &VipConfig) -> VipKey {
    VipKey {
        addr_be: addr_be(v.address.ip()),
        port_be: v.address.port().to_be(),
        proto: match v.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family: family(v.address.ip()),
    }
}

/// An A/B rule's LPM entry: prefix length over (VIP id, address) and the key words, as
/// the data path's `AbKey` holds them.
pub fn ab_rule(vip_id: u32, net: IpAddr, len: u8) -> (u32, [u32; 5]) {
    let a = addr_be(net);
    (32 + len as u32, [vip_id.to_be(), a[0], a[1], a[2], a[3]])
}
