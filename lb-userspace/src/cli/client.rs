//! The CLI's side of the API: HTTP/1.1 to the agent, one request per connection, over its
//! Unix socket or over the remote TCP API (TLS with a bearer token; plaintext only to
//! loopback). [`call`] sends and reads the API's own types.

use std::{
    fmt,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use super::exit::CliError as ClientError;

/// The CA bundle trusted for `--api https://...` when no `--ca-file` is given (Debian's).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where the agent's API is.
pub enum Endpoint {
    /// The agent's Unix socket (the default).
    Socket(PathBuf),
    /// The agent's TCP listener (`--api`).
    Remote(Box<Remote>),
}

/// The remote API: address, bearer token, and TLS unless the address is loopback and the
/// URL says `http://`.
pub struct Remote {
    url: String,
    host: String,
    addr: SocketAddr,
    token: String,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// What `--api` needs besides the URL.
pub struct RemoteOptions<'a> {
    pub token: String,
    pub ca_file: Option<&'a Path>,
    pub client_cert: Option<(&'a Path, &'a Path)>,
}

fn rejected(what: impl fmt::Display) -> ClientError {
    ClientError::Rejected(what.to_string())
}

impl Remote {
    /// Parses `https://HOST:PORT` (or `http://` to a loopback address) and builds the TLS
    /// client; every mistake is rejected input (exit 1) before anything is sent.
    pub fn new(url: &str, opts: RemoteOptions<'_>) -> Result<Remote, ClientError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(rejected(format!("--api {url}: expected https://HOST:PORT")));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(rejected(format!("--api {url}: give only https://HOST:PORT, no path")));
        }
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| rejected(format!("--api {url}: {e} (expected HOST:PORT)")))?
            .next()
            .ok_or_else(|| rejected(format!("--api {url}: no address")))?;
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !tls && !addr.ip().is_loopback() {
            return Err(rejected(format!(
                "--api {url}: plaintext only to loopback (the token would cross the network in the clear); use https://"
            )));
        }
        let tls = match tls {
            false => None,
            true => {
                let name = ServerName::try_from(host.clone()).map_err(|e| rejected(format!("--api {url}: {e}")))?;
                Some((Arc::new(client_config(&opts)?), name))
            }
        };
        Ok(Remote {
            url: url.to_string(),
            host,
            addr,
            token: opts.token,
            tls,
        })
    }
}

fn pem_error(path: &Path, what: &str, e: impl fmt::Display) -> ClientError {
    rejected(format!("{}: {what}: {e}", path.display()))
}

fn client_config(opts: &RemoteOptions<'_>) -> Result<ClientConfig, ClientError> {
    let ca = opts.ca_file.unwrap_or(Path::new(SYSTEM_CAS));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_error(ca, "CA certificates (--ca-file)", e))? {
        let cert = cert.map_err(|e| pem_error(ca, "CA certificates", e))?;
        // A system bundle may hold a certificate rustls cannot use; the rest still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(pem_error(ca, "CA certificates", "none usable"));
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_root_certificates(roots);
    let mut config = match opts.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_error(cert, "client certificate", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(cert, "client certificate", e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, "client key", e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| pem_error(cert, "client certificate and key", e))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Socket(p) => write!(f, "{}", p.display()),
            Endpoint::Remote(r) => f.write_str(&r.url),
        }
    }
}

trait Connection: Read + Write {}
impl<T: Read + Write> Connection for T {}

impl Endpoint {
    fn connect(&self) -> Result<Box<dyn Connection>, ClientError> {
        let unreachable = |e: std::io::Error| ClientError::Unreachable(format!("{self}: {e}"));
        match self {
            Endpoint::Socket(path) => {
                let s = UnixStream::connect(path).map_err(unreachable)?;
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let _ = s.set_write_timeout(Some(TIMEOUT));
                Ok(Box::new(s))
            }
            Endpoint::Remote(r) => {
                let s = TcpStream::connect_timeout(&r.addr, Duration::from_secs(10)).map_err(unreachable)?;
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let _ = s.set_write_timeout(Some(TIMEOUT));
                match &r.tls {
                    None => Ok(Box::new(s)),
                    Some((config, name)) => {
                        let conn = ClientConnection::new(config.clone(), name.clone())
                            .map_err(|e| ClientError::Unreachable(format!("{self}: TLS: {e}")))?;
                        Ok(Box::new(StreamOwned::new(conn, s)))
                    }
                }
            }
        }
    }

    /// The request's head lines that depend on where it goes.
    fn headers(&self) -> String {
        match self {
            Endpoint::Socket(_) => "Host: veer\r\n".to_string(),
            Endpoint::Remote(r) => format!("Host: {}\r\nAuthorization: Bearer {}\r\n", r.host, r.token),
        }
    }
}

/// Sends one request; returns the JSON body of a 2xx answer.
pub fn request(agent: &Endpoint, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
    let mut s = agent.connect()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        agent.headers(),
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| ClientError::Unreachable(format!("{agent}: send: {e}")))?;
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp) {
        // A TLS peer that closes without close_notify after its whole answer still answered.
        if resp.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(ClientError::Unreachable(format!("{agent}: read: {e}")));
        }
    }
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
    agent: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<T, ClientError> {
    let body = body
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ClientError::Rejected(format!("encode the request: {e}")))?;
    let answer = request(agent, method, path, body.as_ref())?;
    serde_json::from_value(answer).map_err(|e| ClientError::Unreachable(format!("unexpected answer to {path}: {e}")))
}
