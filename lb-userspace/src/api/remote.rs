//! The remote API's two guards: TLS (rustls, optionally with client certificates) and
//! named bearer tokens. Plaintext is accepted only on a loopback listener; the config
//! refuses anything else, and the accept loop refuses a non-loopback peer on plaintext.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::serve::Listener;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Handshakes in flight at once; a client that opens connections and never finishes one
/// holds a slot for at most [`HANDSHAKE_TIMEOUT`].
const MAX_HANDSHAKES: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest token accepted: 16 characters of a random token are 64+ bits.
pub const MIN_TOKEN_LEN: usize = 16;

/// Who made a request on the TCP API: the name of the token it carried. Handlers and the
/// audit log read it from the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// The named tokens of a token file: one per line, `NAME TOKEN`, or a bare `TOKEN`
/// (named `default`); blank lines and `#` comments are skipped.
#[derive(Debug, Clone)]
pub struct Tokens(Vec<(String, String)>);

impl Tokens {
    pub fn parse(text: &str, origin: &Path) -> io::Result<Tokens> {
        let bad = |line: usize, why: &str| io::Error::other(format!("{}:{line}: {why}", origin.display()));
        let mut tokens: Vec<(String, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (name, token) = match (words.next(), words.next(), words.next()) {
                (Some(t), None, None) => ("default", t),
                (Some(n), Some(t), None) => (n, t),
                _ => return Err(bad(i + 1, "expected `NAME TOKEN` or `TOKEN`")),
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(
                    i + 1,
                    &format!("the token must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
            if tokens.iter().any(|(n, _)| n == name) {
                return Err(bad(i + 1, &format!("token name {name:?} is used twice")));
            }
            let header = format!("Bearer {token}");
            if tokens.iter().any(|(_, t)| *t == header) {
                return Err(bad(i + 1, "the same token is given twice"));
            }
            tokens.push((name.to_string(), header));
        }
        if tokens.is_empty() {
            return Err(io::Error::other(format!("{}: no token in the file", origin.display())));
        }
        Ok(Tokens(tokens))
    }

    pub fn load(path: &Path) -> io::Result<Tokens> {
        let text =
            std::fs::read_to_string(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Tokens::parse(&text, path)
    }

    /// The caller an `Authorization` header names, if its token is one of ours. Every
    /// token is compared, in time that depends only on the lengths.
    pub fn caller(&self, authorization: &[u8]) -> Option<Caller> {
        let mut found = None;
        for (name, expected) in &self.0 {
            if constant_time_eq(authorization, expected.as_bytes()) {
                found = Some(Caller(name.clone()));
            }
        }
        found
    }
}

/// Equal bytes, compared in time that depends only on the lengths: a wrong token's
/// timing says nothing about how much of it was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

/// The TLS files of the TCP listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

fn read_err(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {what}: {e}", path.display()))
}

/// Builds the rustls server configuration from PEM files, with a clear error per file.
pub fn server_config(files: &TlsFiles) -> io::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| read_err(&files.cert, "certificate chain", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(&files.cert, "certificate chain", e))?;
    if certs.is_empty() {
        return Err(read_err(&files.cert, "certificate chain", "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| read_err(&files.key, "private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| read_err(ca, "client CA", e))? {
                roots
                    .add(cert.map_err(|e| read_err(ca, "client CA", e))?)
                    .map_err(|e| read_err(ca, "client CA", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| read_err(ca, "client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| read_err(&files.key, "certificate and key", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TCP listener that hands out only connections that finished a TLS handshake.
/// Handshakes run in their own tasks, so one slow client delays nobody else.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: ServerConfig) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("TCP API accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "TCP API: TLS handshake refused: {e}"),
                        Err(_) => tracing::warn!(%peer, "TCP API: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ends only with the runtime; so does this listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A plaintext listener that serves loopback peers only (the config allows plaintext only
/// on a loopback address; this holds even if the address is a wildcard by mistake).
pub struct LoopbackOnly(pub TcpListener);

impl Listener for LoopbackOnly {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, peer)) if peer.ip().is_loopback() => return (s, peer),
                Ok((_, peer)) => tracing::warn!(%peer, "TCP API: plaintext from a non-loopback peer refused"),
                Err(e) => {
                    tracing::warn!("TCP API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Caller, Tokens, constant_time_eq};

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

    #[test]
    fn a_token_file_names_its_tokens() {
        let f = Path::new("tokens");
        let t = Tokens::parse(
            "# CI runners\nci 0123456789abcdef-ci\n\nops   0123456789abcdef-ops\n",
            f,
        )
        .unwrap();
        assert_eq!(t.caller(b"Bearer 0123456789abcdef-ci"), Some(Caller("ci".into())));
        assert_eq!(t.caller(b"Bearer 0123456789abcdef-ops"), Some(Caller("ops".into())));
        assert_eq!(t.caller(b"Bearer 0123456789abcdef-xx"), None);
        assert_eq!(t.caller(b""), None);
        let bare = Tokens::parse("0123456789abcdef\n", f).unwrap();
        assert_eq!(bare.caller(b"Bearer 0123456789abcdef"), Some(Caller("default".into())));
    }

    #[test]
    fn a_bad_token_file_is_refused_with_its_line() {
        let f = Path::new("tokens");
        let e = |text: &str| Tokens::parse(text, f).unwrap_err().to_string();
        assert!(e("ci short\n").contains("tokens:1: the token must be at least 16"));
        assert!(e("a 0123456789abcdef\na 0123456789abcdeg\n").contains("tokens:2: token name \"a\" is used twice"));
        assert!(e("a 0123456789abcdef\nb 0123456789abcdef\n").contains("tokens:2: the same token"));
        assert!(e("a b c\n").contains("expected `NAME TOKEN`"));
        assert!(e("# nothing\n").contains("no token"));
    }
}
