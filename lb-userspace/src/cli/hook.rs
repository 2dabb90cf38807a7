//! The rollout hook's command line: placeholders for the backend it runs for.

use std::net::SocketAddr;

/// `template` with `{addr}` (`IP:PORT`, an IPv6 address in brackets), `{host}` (the address
/// alone, without brackets: what ssh and scp take) and `{port}` replaced for `backend`.
/// Other braces are left to the shell.
pub fn hook_command(template: &str, backend: SocketAddr) -> String {
    template
        .replace("{addr}", &backend.to_string())
        .replace("{host}", &backend.ip().to_string())
        .replace("{port}", &backend.port().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_name_the_backend() {
        let cases = [
            ("upgrade {addr}", "10.0.1.10:8080", "upgrade 10.0.1.10:8080"),
            (
                "ssh {host} upgrade --port {port}",
                "10.0.1.10:8080",
                "ssh 10.0.1.10 upgrade --port 8080",
            ),
            (
                "ssh {host} systemctl restart app@{port}",
                "[fd00::10]:8080",
                "ssh fd00::10 systemctl restart app@8080",
            ),
            (
                "curl http://{addr}/drain",
                "[fd00::10]:8080",
                "curl http://[fd00::10]:8080/drain",
            ),
            ("echo {host} {host}", "10.0.1.10:80", "echo 10.0.1.10 10.0.1.10"),
            (
                "for f in {a,b}; do x {addr%:*}; done",
                "10.0.1.10:80",
                "for f in {a,b}; do x {addr%:*}; done",
            ),
        ];
        for (template, backend, want) in cases {
            assert_eq!(hook_command(template, backend.parse().unwrap()), want, "{template}");
        }
    }
}
