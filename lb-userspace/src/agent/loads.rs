//! Least-conn's correction task: about once a second, while any VIP is least-conn, a scan
//! of the connection table corrects the data path's live-flow counts (flows gone idle,
//! flows it did not count, drift; see `dataplane::LoadCorrector`). The scan runs without
//! the core's lock.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::{
    agent::Shared,
    dataplane::{FlowScan, LoadCorrector, LoadMemory},
};

/// Between correction rounds: a flow that goes idle stops counting within about this long
/// after agent.tcp_idle / udp_idle.
pub const LOAD_INTERVAL: Duration = Duration::from_secs(1);

/// One round's inputs, taken under the core's lock ([`crate::agent::Core::load_scan`]).
pub struct LoadScan {
    pub(super) scan: FlowScan,
    pub(super) loads: LoadMemory,
    /// Backend ids of least-conn VIPs.
    pub(super) ids: Vec<u32>,
    pub(super) tcp_idle: Duration,
    pub(super) udp_idle: Duration,
}

pub fn spawn(core: Shared) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut corrector = Some(LoadCorrector::default());
        loop {
            tick.tick().await;
            let Some(round) = core.lock().await.load_scan() else {
                continue;
            };
            let Some(mut c) = corrector.take() else {
                return;
            };
            let done = tokio::task::spawn_blocking(move || {
                c.correct(&round.scan, &round.loads, &round.ids, round.tcp_idle, round.udp_idle);
                c
            })
            .await;
            match done {
                Ok(c) => corrector = Some(c),
                Err(e) => {
                    tracing::error!("least-conn correction: {e}");
                    corrector = Some(LoadCorrector::default());
                }
            }
        }
    })
}
