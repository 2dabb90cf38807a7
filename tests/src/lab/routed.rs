//! A client behind two routers, with a narrow hop between them: client (1500) — near
//! router — `hop_mtu` link — far router — the lab's bridge (1500) — balancer. The far
//! router must fragment or refuse what the balancer sends towards the client: with DF
//! (TCP, always for IPv6) it answers the VIP with fragmentation needed / packet too big,
//! which only a balancer that translates ICMP delivers to the backend.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{LB4, LB6, Lab, Netns, VIP4, VIP6, run_cmd};

/// The far router's address on the lab's bridge.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x50);
/// The routed client's addresses.
pub const ROUTED4: Ipv4Addr = Ipv4Addr::new(10, 79, 2, 10);
pub const ROUTED6: Ipv6Addr = Ipv6Addr::new(0xfd79, 2, 0, 0, 0, 0, 0, 0x10);

/// The routed client's namespaces (deleted on drop, which removes their veths).
pub struct RoutedClient {
    pub client: Netns,
    pub near: Netns,
    pub far: Netns,
}

impl Lab {
    /// Adds a client behind two routers joined by a link of `hop_mtu` bytes, routed both
    /// ways (the balancer reaches 10.79.0.0/16 and fd79::/16 through the far router, whose
    /// neighbour entry it is given, as a host's static route to its upstream would be).
    pub fn add_routed_client(&self, hop_mtu: u32) -> anyhow::Result<RoutedClient> {
        let p = &self.prefix;
        let rc = RoutedClient {
            client: Netns::new(&format!("{p}-rc"))?,
            near: Netns::new(&format!("{p}-rn"))?,
            far: Netns::new(&format!("{p}-rf"))?,
        };
        let (br, lb) = (self.bridge.name.as_str(), self.lb.name.as_str());
        let (cl, near, far) = (rc.client.name.as_str(), rc.near.name.as_str(), rc.far.name.as_str());
        let mtu = hop_mtu.to_string();
        let (r4, r6) = (ROUTER4.to_string(), ROUTER6.to_string());
        let (lb4, lb6) = (LB4.to_string(), LB6.to_string());
        let (vip4, vip6) = (format!("{VIP4}/32"), format!("{VIP6}/128"));
        let (r4net, r6net) = (format!("{ROUTER4}/24"), format!("{ROUTER6}/64"));
        let (c4net, c6net) = (format!("{ROUTED4}/24"), format!("{ROUTED6}/64"));
        let steps: Vec<Vec<&str>> = vec![
            // The far router's leg on the bridge.
            vec![
                "ip", "-n", br, "link", "add", "name", "eth0", "type", "veth", "peer", "name", "p-rf",
            ],
            vec!["ip", "-n", br, "link", "set", "dev", "eth0", "netns", far],
            vec!["ip", "-n", br, "link", "set", "dev", "p-rf", "master", "br0", "up"],
            vec!["ip", "-n", far, "addr", "add", &r4net, "dev", "eth0"],
            vec!["ip", "-n", far, "addr", "add", &r6net, "dev", "eth0", "nodad"],
            // The narrow hop, the same MTU at both ends.
            vec![
                "ip", "-n", far, "link", "add", "eth1", "mtu", &mtu, "type", "veth", "peer", "name", "eth1", "netns",
                near,
            ],
            vec!["ip", "-n", near, "link", "set", "dev", "eth1", "mtu", &mtu],
            vec!["ip", "-n", far, "addr", "add", "10.79.1.2/24", "dev", "eth1"],
            vec!["ip", "-n", far, "addr", "add", "fd79:1::2/64", "dev", "eth1", "nodad"],
            vec!["ip", "-n", near, "addr", "add", "10.79.1.1/24", "dev", "eth1"],
            vec!["ip", "-n", near, "addr", "add", "fd79:1::1/64", "dev", "eth1", "nodad"],
            // The client's own link, full size: it announces an MSS of 1460.
            vec![
                "ip", "-n", near, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", cl,
            ],
            vec!["ip", "-n", near, "addr", "add", "10.79.2.1/24", "dev", "eth0"],
            vec!["ip", "-n", near, "addr", "add", "fd79:2::1/64", "dev", "eth0", "nodad"],
            vec!["ip", "-n", cl, "addr", "add", &c4net, "dev", "eth0"],
            vec!["ip", "-n", cl, "addr", "add", &c6net, "dev", "eth0", "nodad"],
        ];
        for s in &steps {
            run_cmd(s)?;
        }
        for ns in [cl, near, far] {
            run_cmd(&["ip", "-n", ns, "link", "set", "dev", "lo", "up"])?;
            for dev in ["eth0", "eth1"] {
                if ns != cl || dev == "eth0" {
                    run_cmd(&["ip", "-n", ns, "link", "set", "dev", dev, "up"])?;
                }
            }
        }
        // The far router sends into the balancer's XDP program: no checksum offload.
        run_cmd(&["ip", "netns", "exec", far, "ethtool", "-K", "eth0", "tx", "off"])?;
        for ns in [near, far] {
            for s in [
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
            ] {
                run_cmd(&["ip", "netns", "exec", ns, "sysctl", "-qw", s])?;
            }
        }
        let routes: Vec<Vec<&str>> = vec![
            vec!["ip", "-n", cl, "route", "add", "default", "via", "10.79.2.1"],
            vec!["ip", "-n", cl, "-6", "route", "add", "default", "via", "fd79:2::1"],
            vec!["ip", "-n", near, "route", "add", "default", "via", "10.79.1.2"],
            vec!["ip", "-n", near, "-6", "route", "add", "default", "via", "fd79:1::2"],
            vec!["ip", "-n", far, "route", "add", "10.79.2.0/24", "via", "10.79.1.1"],
            vec!["ip", "-n", far, "-6", "route", "add", "fd79:2::/64", "via", "fd79:1::1"],
            // The VIPs sit in the bridge's subnet: routed to the balancer, not resolved on-link.
            vec!["ip", "-n", far, "route", "add", &vip4, "via", &lb4],
            vec!["ip", "-n", far, "-6", "route", "add", &vip6, "via", &lb6],
            vec!["ip", "-n", lb, "route", "add", "10.79.0.0/16", "via", &r4],
            vec!["ip", "-n", lb, "-6", "route", "add", "fd79::/16", "via", &r6],
        ];
        for s in &routes {
            run_cmd(s)?;
        }
        // The balancer's XDP path needs the far router's MAC resolved (it never resolves a
        // neighbour itself): a permanent entry, as for a host's upstream router.
        let mac = link_mac(far, "eth0")?;
        for addr in [&r4, &r6] {
            run_cmd(&[
                "ip",
                "-n",
                lb,
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        // Until duplicate address detection ends, the link-local addresses are tentative and
        // neighbour discovery through the routers fails: wait (bounded) for it to end.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for ns in [cl, near, far] {
            loop {
                let out = std::process::Command::new("ip")
                    .args(["-n", ns, "-6", "addr", "show", "tentative"])
                    .output()?;
                if out.stdout.is_empty() {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{ns}: IPv6 addresses still tentative after 5 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Ok(rc)
    }
}

/// The MAC address of `dev` in namespace `ns`.
fn link_mac(ns: &str, dev: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", "dev", dev])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split_whitespace()
        .find(|w| w.len() == 17 && w.matches(':').count() == 5)
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("no MAC for {dev} in {ns}: {line:?}"))
}
