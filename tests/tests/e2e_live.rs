//! End-to-end: the live views under real load. `veer status --watch` prints one block per
//! refresh in a CI log (NDJSON with --json) with packet rates that follow the traffic;
//! `veer top` draws VIPs, pools and backends in a real terminal (tmux) and quits on `q`.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use veer_tests::lab::*;

const WEIGHTS: [u32; 3] = [1, 1, 2];

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.into(), 80)
}

/// Load that stops (and is joined) when the guard goes, pass or fail.
struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Outcome>>,
}

impl Load {
    fn start(lab: &Lab) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = lab.background_load(vip(), stop.clone(), 20_000).unwrap();
        Load {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn status_watch_prints_a_block_per_refresh_with_rates_that_follow_the_load() {
    let Some(lab) = Lab::with_agent(&WEIGHTS) else { return };
    lab.wait_for_vip(vip()).unwrap();
    let watch = lab.watch().unwrap();
    let load = Load::start(&lab);

    // Piped (not a terminal): plain blocks, one per refresh, each headed by a timestamp.
    let out = lab.veer_ok(&["status", "--watch", "--interval", "300ms", "--count", "4"]);
    let blocks: Vec<&str> = out.split("-- ").filter(|b| !b.is_empty()).collect();
    assert_eq!(blocks.len(), 4, "one block per refresh:\n{out}");
    for b in &blocks {
        assert!(
            b.contains("web4 10.77.0.100:80 active=main"),
            "every block shows the VIP:\n{b}"
        );
        assert!(!b.contains("\x1b["), "no terminal escapes in a log:\n{b}");
    }
    let rate = |block: &str| -> f64 {
        let line = block.lines().find(|l| l.starts_with("web4 ")).unwrap();
        let field = line.split_whitespace().find(|w| w.starts_with("pkt/s=")).unwrap();
        field["pkt/s=".len()..].parse().unwrap()
    };
    assert_eq!(rate(blocks[0]), 0.0, "the first refresh has nothing to compare with");
    assert!(
        rate(blocks[3]) > 0.0,
        "under load the VIP's packets/s is above zero:\n{out}"
    );

    // --json: NDJSON, one event per refresh, backends with their rates.
    let out = lab.veer_ok(&["status", "--watch", "--json", "--interval", "300ms", "--count", "3"]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    assert_eq!(events.len(), 3, "{out}");
    let last = &events[2]["rows"];
    let backends: Vec<&serde_json::Value> = last
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "backend" && r["vip"] == "web4")
        .collect();
    assert_eq!(backends.len(), 3, "{last}");
    let moving: f64 = backends
        .iter()
        .map(|b| b["rate"]["new_flows_per_s"].as_f64().unwrap())
        .sum();
    assert!(moving > 0.0, "new flows per second reach the backends: {last}");

    let outcome = load.finish();
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    lab.assert_no_drops(&watch, &[]);

    // Once the load stops, the rates fall back to zero.
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.veer_ok(&["status", "--watch", "--json", "--interval", "300ms", "--count", "2"]);
    let quiet = out.lines().last().unwrap();
    let quiet: serde_json::Value = serde_json::from_str(quiet).unwrap();
    let vip_row = quiet["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "vip" && r["name"] == "web4")
        .unwrap();
    assert_eq!(vip_row["rate"]["packets_per_s"], 0.0, "{quiet}");

    let (code, _, err) = lab
        .veer(&["status", "--watch", "--interval", "10ms", "--count", "1"])
        .unwrap();
    assert_eq!(code, 1, "an interval under 100ms is rejected: {err}");
}

/// A private tmux server (its own socket name), killed when the guard goes.
struct Tmux {
    name: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.name]);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The packets/s `veer top` shows for the web4 VIP: the number after its `active=` cell.
fn vip_pps(screen: &str) -> Option<f64> {
    let line = screen.lines().find(|l| l.contains("web4 10.77.0.100:80"))?;
    let mut words = line.split_whitespace().skip_while(|w| !w.starts_with("active="));
    words.next()?;
    words.next()?.parse().ok()
}

fn pps_positive(screen: &str) -> bool {
    vip_pps(screen).is_some_and(|pps| pps > 0.0)
}

#[test]
fn top_draws_backends_with_live_rates_in_a_terminal_and_quits_on_q() {
    let Some(lab) = Lab::with_agent(&WEIGHTS) else { return };
    lab.wait_for_vip(vip()).unwrap();
    // Off a terminal, top says where to look instead.
    let (code, _, err) = lab.veer(&["top"]).unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("status --watch"), "{err}");

    let tmux = Tmux {
        name: format!("veer-test-{}", std::process::id()),
    };
    let command = format!(
        "{} --socket {} top --interval 300ms; echo veer-top-exited-$?; sleep 30",
        veer_bin().unwrap().display(),
        lab.socket().display()
    );
    let started = tmux
        .cmd()
        .args(["new-session", "-d", "-x", "150", "-y", "20", "-s", "top", &command])
        .status()
        .expect("tmux (installed by cargo xtask setup)");
    assert!(started.success());
    let load = Load::start(&lab);
    // Bounded: wait until the view shows traffic on the VIP, at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let screen = loop {
        let screen = tmux.run(&["capture-pane", "-p", "-t", "top"]);
        let busy = vip_pps(&screen).is_some_and(|pps| pps > 0.0);
        if busy || Instant::now() > deadline {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let outcome = load.finish();
    assert_eq!(outcome.failed, 0);
    eprintln!("veer top, as captured:\n{screen}");
    assert!(screen.contains("veer top"), "{screen}");
    for i in 0..WEIGHTS.len() {
        assert!(
            screen.contains(&format!("{}:{HTTP_PORT}", backend4(i))),
            "backend {i} shown:\n{screen}"
        );
    }
    assert!(screen.contains("pool main"), "{screen}");
    assert!(pps_positive(&screen), "the VIP's packets/s follows the load:\n{screen}");

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let exited = loop {
        let screen = tmux.run(&["capture-pane", "-p", "-t", "top"]);
        if screen.contains("veer-top-exited-") || Instant::now() > deadline {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exited.contains("veer-top-exited-0"), "q quits with exit 0:\n{exited}");
}
