//! The API's listeners: a Unix socket (mode 0600), and an optional TCP listener that
//! requires a bearer token.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use axum::{http::StatusCode, response::IntoResponse as _};
use tokio::{net::UnixListener, task::JoinHandle};

use super::routes::{ApiError, router};
use crate::agent::Shared;

pub async fn serve_unix(core: Shared, socket: &Path) -> std::io::Result<JoinHandle<()>> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    // Created 0600 (the agent runs with umask 077: no moment in which others may connect).
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let app = router(core);
    Ok(tokio::spawn(async move {
        let listener = super::limits::Limited::new(super::audit::Peered(listener), "api socket");
        let app = app.into_make_service_with_connect_info::<super::audit::Peer>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("API server: {e}");
        }
    }))
}

/// The optional TCP listener: the same API, every request must carry
/// `Authorization: Bearer <token>` (token read from a file at start).
pub async fn serve_tcp(core: Shared, addr: SocketAddr, token_file: &Path) -> std::io::Result<JoinHandle<()>> {
    let token = std::fs::read_to_string(token_file)?.trim().to_string();
    if token.len() < 16 {
        return Err(std::io::Error::other(format!(
            "{}: the API token must be at least 16 characters",
            token_file.display()
        )));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let expected = Arc::new(format!("Bearer {token}"));
    let app = router(core).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let expected = expected.clone();
            async move {
                let given = req
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                let ok = constant_time_eq(given, expected.as_bytes());
                if ok {
                    next.run(req).await
                } else {
                    ApiError {
                        status: StatusCode::UNAUTHORIZED,
                        message: "missing or wrong bearer token".into(),
                    }
                    .into_response()
                }
            }
        },
    ));
    Ok(tokio::spawn(async move {
        let listener = super::limits::Limited::new(super::audit::Peered(listener), "TCP API");
        let app = app.into_make_service_with_connect_info::<super::audit::Peer>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("TCP API server: {e}");
        }
    }))
}

/// Equal bytes, compared in time that depends only on the lengths: a wrong token's
/// timing says nothing about how much of it was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(constant_time_eq(b"Bearer 0123456789abcdef", b"Bearer 0123456789abcdef"));
        assert!(!constant_time_eq(
            b"Bearer 0123456789abcdeX",
            b"Bearer 0123456789abcdef"
        ));
        assert!(!constant_time_eq(b"Bearer 0123456789abcde", b"Bearer 0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"Bearer 0123456789abcdef"));
    }
}
