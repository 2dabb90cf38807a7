//! The API's listeners: a Unix socket (mode 0600), and an optional TCP listener that
//! requires a named bearer token and, off loopback, TLS.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use axum::{http::StatusCode, response::IntoResponse as _};
use tokio::{net::UnixListener, task::JoinHandle};

use super::{
    audit::{Peer, PeeredTcp, PeeredUnix},
    remote::{LoopbackOnly, TlsListener, Tokens},
    routes::{ApiError, router},
};
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
        let listener = super::limits::Limited::new(PeeredUnix(listener), "api socket");
        let app = app.into_make_service_with_connect_info::<Peer>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("API server: {e}");
        }
    }))
}

/// The optional TCP listener: the same API, every request must carry
/// `Authorization: Bearer <token>` with one of the named tokens; TLS when `tls` is given,
/// plaintext otherwise (loopback peers only). The caller's token name goes into the
/// request's extensions as [`super::remote::Caller`].
pub async fn serve_tcp(
    core: Shared,
    addr: SocketAddr,
    tokens: Tokens,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let tokens = Arc::new(tokens);
    let app = router(core).layer(axum::middleware::from_fn(
        move |mut req: axum::extract::Request, next: axum::middleware::Next| {
            let tokens = tokens.clone();
            async move {
                let given = req
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                match tokens.caller(given) {
                    Some(caller) => {
                        req.extensions_mut().insert(caller);
                        next.run(req).await
                    }
                    None => ApiError {
                        status: StatusCode::UNAUTHORIZED,
                        message: "missing or wrong bearer token".into(),
                    }
                    .into_response(),
                }
            }
        },
    ));
    Ok(match tls {
        Some(config) => {
            let listener = TlsListener::new(listener, config)?;
            tokio::spawn(async move {
                let listener = super::limits::Limited::new(PeeredTcp(listener), "TCP API (TLS)");
                let app = app.into_make_service_with_connect_info::<Peer>();
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("TCP API server: {e}");
                }
            })
        }
        None => tokio::spawn(async move {
            let listener = super::limits::Limited::new(PeeredTcp(LoopbackOnly(listener)), "TCP API");
            let app = app.into_make_service_with_connect_info::<Peer>();
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("TCP API server: {e}");
            }
        }),
    })
}
