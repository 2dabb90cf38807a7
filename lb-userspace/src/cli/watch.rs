//! `veer status --watch`: the status again every interval. On a terminal the screen is
//! redrawn; elsewhere a block is printed whenever it changed (a time line first); with
//! --json one status object per line.

use std::{
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::{Duration, SystemTime},
};

use super::{
    client::{self, ClientError},
    render,
};
use crate::api::types::Status;

pub fn status(socket: &Path, json: bool, every: Duration) -> Result<(), ClientError> {
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let s: Status = client::call(socket, "GET", "/v1/status", None::<&()>)?;
        let text = if json {
            format!("{}\n", serde_json::to_string(&s).unwrap_or_default())
        } else {
            render::status(&s)
        };
        let mut out = std::io::stdout().lock();
        if json {
            let _ = write!(out, "{text}");
        } else if tty {
            // Clear the screen, home the cursor, draw.
            let _ = write!(out, "\x1b[2J\x1b[H{}\n{text}", stamp());
        } else if text != last {
            let _ = write!(out, "--- {}\n{text}", stamp());
        }
        let _ = out.flush();
        last = text;
        std::thread::sleep(every);
    }
}

/// The wall-clock time, UTC, to the second.
fn stamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
