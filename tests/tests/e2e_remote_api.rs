//! End-to-end: the remote API as a CI runner off the host meets it. The agent's TCP
//! listener on the balancer's own address serves TLS with named bearer tokens (and, when
//! configured, client certificates); a plaintext request from the client's namespace is
//! refused; plaintext off loopback is refused by the config itself.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use veer_tests::lab::*;

const WEIGHTS: [u32; 2] = [1, 1];
const PORT: u16 = 9479;
const CI_TOKEN: &str = "0123456789abcdef-ci-runner";

fn api() -> SocketAddr {
    SocketAddr::new(LB4.into(), PORT)
}

/// A CA, a server certificate for the balancer's address and a client certificate, as
/// PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: String,
    client_key: String,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec![LB4.to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["ci-runner".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// What a TLS client got: the HTTP answer, or the error that ended the handshake.
fn tls_get(ca_pem: &str, client: Option<(&str, &str)>, token: Option<&str>) -> Result<String, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let name = ServerName::IpAddress(std::net::IpAddr::from(LB4).into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect_timeout(&api(), Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tls.write_all(format!("GET /v1/status HTTP/1.1\r\nHost: veer\r\nConnection: close\r\n{auth}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
        // A server that closes without close_notify after a full answer is still an answer.
        Err(_) if !out.is_empty() => Ok(String::from_utf8_lossy(&out).into_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// A plaintext HTTP request to the TLS port, as a misconfigured client sends it.
fn plaintext_get() -> String {
    let mut s = TcpStream::connect_timeout(&api(), Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(
        format!(
            "GET /v1/status HTTP/1.1\r\nHost: veer\r\nAuthorization: Bearer {CI_TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `veer --api ...` run from the client's namespace (a CI runner off the balancer host):
/// (exit code, stdout, stderr).
fn remote_veer(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = command_in(&lab.client, &veer_bin().unwrap())
        .unwrap()
        .env_remove("VEER_SOCKET")
        .env_remove("VEER_TOKEN")
        .args(args)
        .output()
        .expect("run veer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A lab whose agent each test starts with its own API keys (None: not root, skipped).
fn lab_without_agent() -> Option<Lab> {
    if !is_root() {
        eprintln!("skipped: the lab needs root");
        return None;
    }
    Some(
        Lab::new(&LabOptions {
            weights: WEIGHTS.to_vec(),
        })
        .unwrap(),
    )
}

fn config_with(lab: &Lab, name: &str, agent_keys: &str) -> PathBuf {
    let config = lab.write_config(&WEIGHTS).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("[agent]\n", &format!("[agent]\n{agent_keys}\n"), 1);
    lab.write_config_text(name, &text).unwrap()
}

#[test]
fn tcp_api_serves_tls_with_named_tokens_and_refuses_plaintext_off_loopback() {
    let Some(mut lab) = lab_without_agent() else { return };
    let pki = pki(&lab.dir);
    let tokens = lab.dir.join("api.tokens");
    std::fs::write(
        &tokens,
        format!("# who may drive deployments\nci {CI_TOKEN}\nops 0123456789abcdef-operator\n"),
    )
    .unwrap();
    let keys = format!(
        "api_listen = \"{}\"\napi_token_file = \"{}\"\napi_tls_cert = \"{}\"\napi_tls_key = \"{}\"",
        api(),
        tokens.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    );

    // Plaintext off loopback never gets as far as an agent: the config is refused.
    let plain = config_with(
        &lab,
        "plain.toml",
        &format!("api_listen = \"{}\"\napi_token_file = \"{}\"", api(), tokens.display()),
    );
    let (code, _, err) = lab.veer(&["check", "--config", plain.to_str().unwrap()]).unwrap();
    assert_eq!(code, 1, "plaintext on a non-loopback address is rejected input: {err}");
    assert!(err.contains("plaintext is served only on loopback"), "{err}");

    let tls = config_with(&lab, "tls.toml", &keys);
    lab.start_agent(&tls).unwrap();
    let ca = std::fs::read_to_string(&pki.ca).unwrap();
    let get = |token: Option<&'static str>| {
        let ca = ca.clone();
        lab.client.run(move || tls_get(&ca, None, token)).unwrap()
    };
    let with = get(Some(CI_TOKEN)).expect("TLS handshake with the agent's certificate");
    assert!(with.starts_with("HTTP/1.1 200") && with.contains("\"vips\""), "{with}");
    let without = get(None).expect("TLS handshake");
    assert!(without.starts_with("HTTP/1.1 401"), "{without}");
    let wrong = get(Some("0123456789abcdef-not-a-token")).expect("TLS handshake");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let plaintext = lab.client.run(plaintext_get).unwrap();
    assert!(
        !plaintext.contains("HTTP/1.") && !plaintext.contains("vips"),
        "plaintext from the client's namespace must get no HTTP answer: {plaintext:?}"
    );
    // The CLI itself over TLS, from the client's namespace: read, then change traffic.
    let url = format!("https://{}", api());
    let token_file = lab.dir.join("ci.token");
    std::fs::write(&token_file, format!("{CI_TOKEN}\n")).unwrap();
    let (ca_s, tok_s) = (pki.ca.to_str().unwrap(), token_file.to_str().unwrap());
    let remote = ["--api", url.as_str(), "--ca-file", ca_s, "--token-file", tok_s];
    let (code, out, err) = remote_veer(&lab, &[&remote[..], &["status", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"web4\""), "{out}");
    let backend = format!("{}:{HTTP_PORT}", backend4(0));
    let (code, _, err) = remote_veer(
        &lab,
        &[&remote[..], &["backend", "set", "web4", &backend, "weight", "3"]].concat(),
    );
    assert_eq!(code, 0, "a change through the remote API: {err}");
    let status = lab.status().unwrap();
    let weight = status["vips"][0]["pools"][0]["backends"][0]["weight"].clone();
    assert_eq!(weight, 3, "the change reached the agent: {status}");
    // Plaintext to a non-loopback address is refused by the CLI before anything is sent.
    let plain_url = format!("http://{}", api());
    let (code, _, err) = remote_veer(&lab, &["--api", &plain_url, "--token-file", tok_s, "status"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("plaintext only to loopback"), "{err}");
    // A certificate the CA did not sign is not trusted: the agent is unreachable (exit 2).
    let (code, _, err) = remote_veer(
        &lab,
        &[
            "--api",
            &url,
            "--ca-file",
            pki.server_cert.to_str().unwrap(),
            "--token-file",
            tok_s,
            "status",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the remote API given by --api"), "{err}");
    // A wrong token: the agent refuses (401), exit 1.
    std::fs::write(&token_file, "0123456789abcdef-not-a-token\n").unwrap();
    let (code, _, err) = remote_veer(&lab, &[&remote[..], &["status"]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bearer token"), "{err}");
    std::fs::write(&token_file, format!("{CI_TOKEN}\n")).unwrap();

    // The agent logs the refusal just after it closes the connection: give it a moment.
    let logged = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        lab.agent_log().contains("TLS handshake refused")
    });
    assert!(logged, "the refusal is logged:\n{}", lab.agent_log());

    // With a client CA, a token alone is not enough: the client must hold a certificate.
    lab.agent.as_mut().unwrap().stop();
    let mtls = config_with(
        &lab,
        "mtls.toml",
        &format!("{keys}\napi_tls_client_ca = \"{}\"", pki.ca.display()),
    );
    lab.start_agent(&mtls).unwrap();
    let (cert, key) = (pki.client_cert.clone(), pki.client_key.clone());
    let ca2 = ca.clone();
    let with_cert = lab
        .client
        .run(move || tls_get(&ca2, Some((&cert, &key)), Some(CI_TOKEN)))
        .unwrap()
        .expect("handshake with a client certificate");
    assert!(with_cert.starts_with("HTTP/1.1 200"), "{with_cert}");
    let (cert_file, key_file) = (lab.dir.join("client.pem"), lab.dir.join("client.key"));
    std::fs::write(&cert_file, &pki.client_cert).unwrap();
    std::fs::write(&key_file, &pki.client_key).unwrap();
    let (code, _, err) = remote_veer(
        &lab,
        &[
            &remote[..],
            &[
                "--client-cert",
                cert_file.to_str().unwrap(),
                "--client-key",
                key_file.to_str().unwrap(),
                "status",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "the CLI with a client certificate: {err}");
    let (code, _, err) = remote_veer(&lab, &[&remote[..], &["status"]].concat());
    assert_ne!(code, 0, "the CLI without a client certificate is refused: {err}");
    let no_cert = lab.client.run(move || tls_get(&ca, None, Some(CI_TOKEN))).unwrap();
    assert!(
        !no_cert.as_deref().is_ok_and(|a| a.contains(" 200 ")),
        "a client without a certificate is refused: {no_cert:?}"
    );
}

#[test]
fn loopback_tcp_api_serves_plaintext_to_named_tokens_only() {
    let Some(mut lab) = lab_without_agent() else { return };
    let tokens = lab.dir.join("api.tokens");
    std::fs::write(&tokens, format!("ci {CI_TOKEN}\n")).unwrap();
    let config = config_with(
        &lab,
        "loopback.toml",
        &format!(
            "api_listen = \"127.0.0.1:{PORT}\"\napi_token_file = \"{}\"",
            tokens.display()
        ),
    );
    lab.start_agent(&config).unwrap();
    let get = |auth: Option<&'static str>| -> String {
        lab.lb
            .run(move || {
                let mut s = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
                let auth = auth
                    .map(|t| format!("Authorization: Bearer {t}\r\n"))
                    .unwrap_or_default();
                s.write_all(format!("GET /v1/status HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .unwrap()
    };
    assert!(get(None).contains(" 401 "), "no token");
    assert!(get(Some("wrong-token-wrong-token")).contains(" 401 "), "wrong token");
    let with = get(Some(CI_TOKEN));
    assert!(with.contains(" 200 ") && with.contains("\"vips\""), "{with}");
    // The CLI over loopback plaintext, from the balancer's own namespace.
    let url = format!("http://127.0.0.1:{PORT}");
    let out = command_in(&lab.lb, &veer_bin().unwrap())
        .unwrap()
        .env("VEER_TOKEN", CI_TOKEN)
        .args(["--api", &url, "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("web4 "));
}
