//! A network-namespace lab: a client, the balancer and backends joined by a bridge that
//! lives in a namespace of its own, real HTTP/UDP servers, real clients, the real agent.
//! Everything it creates is removed on drop, pass or fail.

mod fill;
mod netns;
mod routed;
mod servers;
mod traffic;
mod watch;

use std::{
    collections::BTreeMap,
    fs::{self, File},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
pub use fill::fill_connection_table;
pub use netns::{Netns, run_cmd};
pub use routed::{ROUTED4, ROUTED6, ROUTER4, ROUTER6, RoutedClient};
pub use servers::Servers;
pub use traffic::{
    Outcome, http_get, http_get_bound, http_get_from, keepalive_get, run_http_load, run_http_load_until, udp_request,
    wait_for_requests, without_counters,
};
pub use watch::{Watch, syn_retransmits};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100);
pub const LB4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The balancer's NAT source addresses: dedicated, never the source of the host's own
/// connections (health probes use LB4/LB6), so a probe's port can never meet a NAT port.
pub const SNAT4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
pub const SNAT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 3);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10);
pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

pub fn backend4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 11 + i as u8)
}
pub fn backend6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x11 + i as u16)
}
pub fn backend_name(i: usize) -> String {
    format!("b{}", i + 1)
}

/// Is this process root? The lab and the fixtures need it. Outside `cargo xtask test` a test
/// that is not root skips with a printed reason; under it (VEER_REQUIRE_ROOT=1, as in CI) a
/// skip would hide a whole suite, so not being root is a failure.
pub fn is_root() -> bool {
    // SAFETY: trivial libc call.
    let root = unsafe { libc::geteuid() == 0 };
    if !root && std::env::var_os("VEER_REQUIRE_ROOT").is_some_and(|v| v == "1") {
        panic!(
            "this test needs root (network namespaces, XDP, BPF_PROG_TEST_RUN) and VEER_REQUIRE_ROOT=1 \
             forbids skipping it: run `cargo xtask test` as root"
        );
    }
    root
}

/// The `veer` binary: $VEER_BIN (set by `cargo xtask test/run`), else next to this test
/// binary's target directory.
pub fn veer_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VEER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("veer");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("cannot find the veer binary: run through `cargo xtask test`, or set VEER_BIN")
}

/// Serialises labs: the agent's pin directory is global to the machine.
struct LabLock {
    _file: File,
}

impl LabLock {
    fn acquire() -> anyhow::Result<Self> {
        let f = File::create("/run/veer-lab.lock").context("create lab lock")?;
        // SAFETY: valid fd; blocks until the other lab is gone.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock: {}", std::io::Error::last_os_error());
        }
        Ok(LabLock { _file: f })
    }
}

/// The running agent: SIGTERM on drop, SIGKILL if it does not stop within 5 s. Either way
/// the data path stays (as on a host); the lab removes it with `--cleanup` when it goes.
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (SIGHUP: reload the config file).
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// SIGKILL: the agent dies without cleaning up; the data path must keep forwarding.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent; returns its exit status (None if it had to be killed).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Backends of the lab's VIP: (weight) per backend; the lab has `weights.len()` backends.
pub struct LabOptions {
    pub weights: Vec<u32>,
}

pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    bridge: Netns,
    pub servers: Vec<Servers>,
    pub agent: Option<Agent>,
    _pass: Option<aya::Ebpf>,
    _lock: LabLock,
    /// The lab set no sysctl in the balancer's namespace: it is as a fresh host finds it.
    untuned: bool,
    /// The config the agent was last started with: the lab's cleanup reads it.
    config: Option<PathBuf>,
}

impl Lab {
    pub fn new(opts: &LabOptions) -> anyhow::Result<Lab> {
        Lab::build(opts, false)
    }

    /// A lab whose balancer namespace is left as a fresh host is: no sysctl set by the lab
    /// (forwarding, accept_local, rp_filter, redirects keep their defaults), no neighbour
    /// resolved by earlier traffic. What the data path needs, the agent must do itself.
    pub fn untuned(opts: &LabOptions) -> anyhow::Result<Lab> {
        Lab::build(opts, true)
    }

    fn build(opts: &LabOptions, untuned: bool) -> anyhow::Result<Lab> {
        let lock = LabLock::acquire()?;
        ensure!(
            !Path::new(veer::dataplane::PIN_DIR).exists(),
            "{} exists: another veer agent is running on this machine",
            veer::dataplane::PIN_DIR
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("vlab{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let bridge = Netns::new(&format!("{prefix}-br"))?;
        let mut lab = Lab {
            client: Netns::new(&format!("{prefix}-cl"))?,
            lb: Netns::new(&format!("{prefix}-lb"))?,
            backends: Vec::new(),
            bridge,
            servers: Vec::new(),
            agent: None,
            _pass: None,
            _lock: lock,
            untuned,
            config: None,
            prefix: prefix.clone(),
            dir: std::env::temp_dir().join(&prefix),
        };
        // Created once the lab exists: its drop removes the directory on any later error.
        fs::create_dir_all(&lab.dir)?;
        for i in 0..opts.weights.len() {
            lab.backends.push(Netns::new(&format!("{prefix}-b{}", i + 1))?);
        }
        lab.wire()?;
        for (i, ns) in lab.backends.iter().enumerate() {
            lab.servers
                .push(Servers::start(ns, &backend_name(i), HTTP_PORT, UDP_PORT)?);
        }
        Ok(lab)
    }

    /// Bridge, veths, addresses, routes, sysctls, offloads, and the XDP_PASS program on the
    /// balancer's bridge-side peer (XDP_TX into a veth needs one, see TOOLCHAIN.md).
    fn wire(&mut self) -> anyhow::Result<()> {
        let br = self.bridge.name.clone();
        run_cmd(&["ip", "-n", &br, "link", "add", "name", "br0", "type", "bridge"])?;
        run_cmd(&["ip", "-n", &br, "link", "set", "dev", "br0", "up"])?;
        let mut hosts: Vec<(&Netns, String, Vec<String>)> = vec![
            (
                &self.client,
                "p-cl".into(),
                vec![format!("{CLIENT4}/24"), format!("{CLIENT6}/64")],
            ),
            (
                &self.lb,
                "p-lb".into(),
                vec![
                    format!("{LB4}/24"),
                    format!("{LB6}/64"),
                    format!("{SNAT4}/24"),
                    // Deprecated at once: never picked as a source address, still answered.
                    format!("{SNAT6}/64 preferred_lft 0"),
                ],
            ),
        ];
        for (i, ns) in self.backends.iter().enumerate() {
            hosts.push((
                ns,
                format!("p-b{}", i + 1),
                vec![format!("{}/24", backend4(i)), format!("{}/64", backend6(i))],
            ));
        }
        for (ns, peer, addrs) in &hosts {
            let n = ns.name.as_str();
            run_cmd(&[
                "ip", "-n", &br, "link", "add", "name", "eth0", "type", "veth", "peer", "name", peer,
            ])?;
            run_cmd(&["ip", "-n", &br, "link", "set", "dev", "eth0", "netns", n])?;
            run_cmd(&["ip", "-n", &br, "link", "set", "dev", peer, "master", "br0", "up"])?;
            run_cmd(&["ip", "-n", n, "link", "set", "dev", "lo", "up"])?;
            run_cmd(&["ip", "-n", n, "link", "set", "dev", "eth0", "up"])?;
            for a in addrs {
                let mut args = vec!["ip", "-n", n, "addr", "add"];
                let mut words = a.split(' ');
                args.push(words.next().unwrap_or_default());
                args.extend(["dev", "eth0"]);
                args.extend(words);
                if a.contains(':') {
                    args.push("nodad");
                }
                run_cmd(&args)?;
            }
            // Senders into the XDP program must not leave checksums to offload.
            run_cmd(&["ip", "netns", "exec", n, "ethtool", "-K", "eth0", "tx", "off"])?;
        }
        let cl = self.client.name.as_str();
        run_cmd(&[
            "ip",
            "-n",
            cl,
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &LB4.to_string(),
        ])?;
        run_cmd(&[
            "ip",
            "-n",
            cl,
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &LB6.to_string(),
        ])?;
        let lb = self.lb.name.as_str();
        let tuning: &[&str] = if self.untuned {
            &[]
        } else {
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.accept_local=1",
                "net.ipv4.conf.eth0.accept_local=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.eth0.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
            ]
        };
        for s in tuning {
            run_cmd(&["ip", "netns", "exec", lb, "sysctl", "-qw", s])?;
        }
        let pass = self.bridge.run(|| -> anyhow::Result<aya::Ebpf> {
            let mut ebpf = aya::Ebpf::load(veer::dataplane::PASS_OBJECT).context("load the XDP_PASS object")?;
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(lb_common::PROG_PASS)
                .context("veer_pass")?
                .try_into()?;
            prog.load()?;
            prog.attach("p-lb", aya::programs::XdpMode::Driver)
                .context("attach veer_pass to p-lb")?;
            Ok(ebpf)
        })??;
        self._pass = Some(pass);
        Ok(())
    }

    /// Writes a config for one TCP VIP (HTTP) and one UDP VIP per family over all backends.
    pub fn write_config(&self, weights: &[u32]) -> anyhow::Result<PathBuf> {
        let mut text = self.agent_section();
        let pools = |v6: bool, port: u16| -> String {
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let addr = if v6 {
                        format!("[{}]:{port}", backend6(i))
                    } else {
                        format!("{}:{port}", backend4(i))
                    };
                    format!("{{ address = \"{addr}\", weight = {w} }}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (name, vip, proto, port) in [
            ("web4", format!("{VIP4}:80"), "tcp", HTTP_PORT),
            ("dns4", format!("{VIP4}:53"), "udp", UDP_PORT),
            ("web6", format!("[{VIP6}]:80"), "tcp", HTTP_PORT),
            ("dns6", format!("[{VIP6}]:53"), "udp", UDP_PORT),
        ] {
            let v6 = vip.starts_with('[');
            text.push_str(&format!(
                "\n[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nprotocol = \"{proto}\"\nactive = \"main\"\n\n[[vip.pool]]\nname = \"main\"\nbackends = [ {} ]\n",
                pools(v6, port)
            ));
        }
        let path = self.dir.join("veer.toml");
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts `veer agent` in the balancer namespace and waits until it says it is ready.
    pub fn start_agent(&mut self, config: &Path) -> anyhow::Result<()> {
        self.start_agent_with(config, &[])
    }

    /// [`Lab::start_agent`] with more `veer agent` arguments.
    pub fn start_agent_with(&mut self, config: &Path, extra: &[&str]) -> anyhow::Result<()> {
        self.start_agent_bin_with(&veer_bin()?, config, extra)
    }

    /// [`Lab::start_agent`] with another `veer` binary (the bench compares two builds).
    pub fn start_agent_bin(&mut self, veer: &Path, config: &Path) -> anyhow::Result<()> {
        self.start_agent_bin_with(veer, config, &[])
    }

    /// [`Lab::start_agent_bin`] with more `veer agent` arguments.
    pub fn start_agent_bin_with(&mut self, veer: &Path, config: &Path, extra: &[&str]) -> anyhow::Result<()> {
        let log = self.dir.join("agent.log");
        let out = File::create(&log)?;
        let mut cmd = command_in(&self.lb, veer)?;
        let child = cmd
            .args(["agent", "--config"])
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("failed to run {} agent", veer.display()))?;
        let mut agent = Agent {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if agent.log_text().contains("veer agent ready") {
                break;
            }
            if let Some(c) = agent.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "veer agent exited ({status}) before it was ready:\n{}",
                    agent.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("veer agent not ready after 20 s:\n{}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.agent = Some(agent);
        self.config = Some(config.to_path_buf());
        Ok(())
    }

    /// `veer agent --config FILE --cleanup` in the balancer namespace (the agent must be
    /// stopped): removes program, pins, state; returns (exit code, stdout, stderr).
    pub fn cleanup(&self) -> anyhow::Result<(i32, String, String)> {
        let config = self.config.as_ref().context("no agent was started")?;
        let out = command_in(&self.lb, &veer_bin()?)?
            .args(["agent", "--config"])
            .arg(config)
            .arg("--cleanup")
            .stdin(Stdio::null())
            .output()
            .context("run veer agent --cleanup")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Stops backend `i`'s servers (connections to it are refused from now on).
    pub fn stop_backend(&mut self, i: usize) {
        self.servers[i].stop();
    }

    /// Starts backend `i`'s servers again.
    pub fn start_backend(&mut self, i: usize) -> anyhow::Result<()> {
        self.servers[i] = Servers::start(&self.backends[i], &backend_name(i), HTTP_PORT, UDP_PORT)?;
        Ok(())
    }

    /// The common start of an end-to-end test: a lab with backends weighted `weights`, the
    /// lab's standard config and the agent running; None (with a printed reason) when not
    /// root.
    pub fn with_agent(weights: &[u32]) -> Option<Lab> {
        if !is_root() {
            eprintln!("skipped: the lab needs root (network namespaces, XDP)");
            return None;
        }
        let mut lab = Lab::new(&LabOptions {
            weights: weights.to_vec(),
        })
        .expect("build the lab");
        let config = lab.write_config(weights).expect("write config");
        lab.start_agent(&config).expect("start the agent");
        Some(lab)
    }

    /// A lab of `backends` backends whose agent runs `agent_extra` (more `[agent]` keys) and
    /// `vips` (the `[[vip]]` tables); None (with a printed reason) when not root.
    pub fn with_config(backends: usize, agent_extra: &str, vips: &str) -> Option<Lab> {
        if !is_root() {
            eprintln!("skipped: the lab needs root (network namespaces, XDP)");
            return None;
        }
        let mut lab = Lab::new(&LabOptions {
            weights: vec![1; backends],
        })
        .expect("build the lab");
        let text = format!("{}{agent_extra}\n{vips}", lab.agent_section());
        let config = lab.write_config_text("veer.toml", &text).expect("write config");
        lab.start_agent(&config).expect("start the agent");
        Some(lab)
    }

    /// Writes `text` as a config file in the lab directory.
    pub fn write_config_text(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        fs::write(&path, text)?;
        Ok(path)
    }

    /// The `[agent]` section every lab config uses.
    pub fn agent_section(&self) -> String {
        format!(
            "[agent]\ninterfaces = [\"eth0\"]\nsnat_v4 = \"{SNAT4}\"\nsnat_v6 = \"{SNAT6}\"\nflow_capacity = 65536\nsocket = \"{}\"\nstate_file = \"{}\"\nmetrics = \"127.0.0.1:9477\"\n",
            self.socket().display(),
            self.dir.join("state.json").display()
        )
    }

    /// Adds `n` IPv4 addresses to the client (10.77.0.150 upwards): distinct clients.
    pub fn add_client_aliases(&self, n: usize) -> anyhow::Result<Vec<std::net::IpAddr>> {
        let mut out = Vec::new();
        for i in 0..n {
            let a = Ipv4Addr::new(10, 77, 0, 150 + i as u8);
            run_cmd(&[
                "ip",
                "-n",
                &self.client.name,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                "eth0",
            ])?;
            out.push(a.into());
        }
        Ok(out)
    }

    /// The agent's API socket (a path: reachable from any network namespace).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("veer.sock")
    }

    /// Runs the `veer` CLI against this lab's agent; returns (exit code, stdout, stderr).
    pub fn veer(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = Command::new(veer_bin()?)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .context("run veer")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `veer ARGS` against this lab's agent in its own process, stdout and stderr piped (as
    /// in a CI job: stdout is no terminal).
    pub fn spawn_veer(&self, args: &[&str]) -> Child {
        Command::new(veer_bin().expect("the veer binary"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn veer")
    }

    /// Runs the `veer` CLI and asserts exit 0 (with the agent's log on failure); returns stdout.
    pub fn veer_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.veer(args).expect("run veer");
        assert_eq!(code, 0, "veer {args:?} failed: {err}\nagent log:\n{}", self.agent_log());
        out
    }

    /// `veer status --json`, parsed.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (code, out, err) = self.veer(&["status", "--json"])?;
        ensure!(code == 0, "veer status failed ({code}): {err}");
        Ok(serde_json::from_str(&out)?)
    }

    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(|a| a.log_text()).unwrap_or_default()
    }

    /// Continuous new-connection load until `stop` is set or `max` requests were sent.
    pub fn background_load(
        &self,
        vip: SocketAddr,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        max: usize,
    ) -> anyhow::Result<std::thread::JoinHandle<Outcome>> {
        self.client
            .spawn(move || run_http_load_until(vip, max, Duration::from_secs(3), &stop))
    }

    /// Continuous mixed load: new connections and keep-alive connections (reopened every
    /// 20 requests), until `stop`. Join both handles for the outcomes.
    pub fn mixed_load(
        &self,
        vip: SocketAddr,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<[std::thread::JoinHandle<Outcome>; 2]> {
        let keepalive_stop = stop.clone();
        Ok([
            self.background_load(vip, stop, 50_000)?,
            self.client
                .spawn(move || traffic::run_keepalive_load(vip, 20, 50_000, &keepalive_stop))?,
        ])
    }

    /// A TCP connection to `vip` opened from the client namespace (usable from any thread).
    pub fn connect(&self, vip: SocketAddr) -> anyhow::Result<std::net::TcpStream> {
        self.client
            .run(move || std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(3)))?
            .context("connect")
    }

    /// `n` new-connection HTTP GETs from the client to `vip` (bounded: each has a timeout),
    /// fewer when [`INTERRUPTED`] is set.
    pub fn http_load(&self, vip: SocketAddr, n: usize) -> anyhow::Result<Outcome> {
        self.client
            .run(move || traffic::run_http_load_until(vip, n, Duration::from_secs(3), &INTERRUPTED))
    }

    /// Waits (bounded) until the VIP answers once: the first packets resolve neighbours.
    pub fn wait_for_vip(&self, vip: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = self.client.run(move || http_get(vip, Duration::from_secs(1)).is_ok())?;
            if ok {
                return Ok(());
            }
            if interrupted() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!("VIP {vip} never answered; agent log:\n{}", self.agent_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn udp(&self, vip: SocketAddr, payload: &'static [u8]) -> anyhow::Result<String> {
        self.client
            .run(move || udp_request(vip, payload, Duration::from_secs(2)))?
    }

    /// Names of every namespace of this lab.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![self.bridge.name.clone(), self.client.name.clone(), self.lb.name.clone()];
        v.extend(self.backends.iter().map(|b| b.name.clone()));
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.stop();
        }
        for s in &mut self.servers {
            s.stop();
        }
        self._pass = None;
        // Namespaces are deleted by their own guards (fields drop after this). A stopped
        // agent leaves its data path, as on a host: removing it is explicit. Should that
        // fail, the pins are removed by hand (a lab never leaves any behind).
        if self.config.is_some() {
            match self.cleanup() {
                Ok((0, _, _)) => {}
                Ok((code, _, err)) => eprintln!("lab: veer agent --cleanup exited {code}: {err}"),
                Err(e) => eprintln!("lab: veer agent --cleanup: {e:#}"),
            }
        }
        if let Ok(entries) = fs::read_dir(veer::dataplane::PIN_DIR) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
            let _ = fs::remove_dir(veer::dataplane::PIN_DIR);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Set by a front end's SIGINT handler (the lab binary): load loops stop early and the
/// front end tears the lab down.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A config's backend list: IPv4 backends `range` at `port`, default weight.
pub fn backend_list(range: std::ops::Range<usize>, port: u16) -> String {
    range
        .map(|i| format!("{{ address = \"{}:{port}\" }}", backend4(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A command that will run inside `ns`'s network namespace. Not `ip netns exec`: that
/// also makes a mount namespace with a fresh /sys, hiding the host's bpffs where the agent
/// pins its maps. The child gets a process group of its own, so a terminal's Ctrl-C reaches
/// only the lab, which then stops its children in order (the agent would otherwise detach
/// while traffic still runs).
pub fn command_in(ns: &Netns, program: &Path) -> anyhow::Result<Command> {
    use std::os::unix::process::CommandExt as _;
    let fd = File::open(format!("/run/netns/{}", ns.name))?;
    let mut cmd = Command::new(program);
    cmd.process_group(0);
    // SAFETY: setns is async-signal-safe; the fd stays open until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// A child process killed (by PID) and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Requests per backend name, and the share in percent.
pub fn shares(outcome: &Outcome) -> BTreeMap<String, (usize, f64)> {
    let total = outcome.by_backend.values().sum::<usize>().max(1);
    outcome
        .by_backend
        .iter()
        .map(|(k, &n)| (k.clone(), (n, n as f64 * 100.0 / total as f64)))
        .collect()
}

/// Names of namespaces that still exist with this prefix.
pub fn leftover_namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}
