//! The CLI's side of the API: HTTP/1.1 over the agent's Unix socket, one request per
//! connection. [`call`] sends and reads the API's own types.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use super::exit::CliError as ClientError;

/// Sends one request; returns the JSON body of a 2xx answer.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| ClientError::Unreachable(format!("{}: {e}", socket.display())))?;
    let timeout = Some(Duration::from_secs(60));
    let _ = s.set_read_timeout(timeout);
    let _ = s.set_write_timeout(timeout);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: veer\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| ClientError::Unreachable(format!("send: {e}")))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| ClientError::Unreachable(format!("read: {e}")))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Unreachable("malformed answer".into()))?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    let json: Value = serde_json::from_str(&payload).unwrap_or(Value::String(payload.clone()));
    if (200..300).contains(&status) {
        Ok(json)
    } else {
        let msg = json
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or(payload);
        Err(ClientError::Rejected(msg))
    }
}

pub(super) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sends `body` (if any) as JSON and reads the answer as `T`.
pub fn call<T: DeserializeOwned>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<T, ClientError> {
    let body = body
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ClientError::Rejected(format!("encode the request: {e}")))?;
    let answer = request(socket, method, path, body.as_ref())?;
    serde_json::from_value(answer).map_err(|e| ClientError::Unreachable(format!("unexpected answer to {path}: {e}")))
}
