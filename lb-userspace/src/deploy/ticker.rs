//! The agent side of stepped canaries: every tenth of a second the core looks at running
//! canaries (see `plan::canary_tick`). The state is part of the persisted desired state,
//! so a restarted agent resumes a canary where it was.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::agent::{Change, Shared};

pub fn spawn(core: Shared) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if let Err(e) = core.lock().await.apply(Change::CanaryTick, false) {
                tracing::error!("canary step: {e}");
            }
        }
    })
}
