//! Audit events: every change asked for through the API is logged once it is decided, with
//! who asked (the socket peer's uid and pid, or the TCP client with the bearer token), the
//! verb, the outcome and the state of what it touched before and after. Field names follow
//! ECS (`event.kind`, `event.action`, `event.outcome`, `user.id`, `client.address`); the
//! states are `veer.change.before` / `veer.change.after`.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Request},
    middleware::Next,
    response::Response,
    serve::{IncomingStream, Listener},
};
use serde_json::{Value, json};

use super::{limits::Limited, types::ChangeReport};
use crate::{
    agent::{Change, Core, CoreError},
    logs::json_field,
};

/// Who is on the other end of an API connection.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A Unix-socket client, by SO_PEERCRED (None: the kernel did not say).
    Local { uid: Option<u32>, pid: Option<i32> },
    /// A TCP client, and the name of the bearer token its request carried.
    Tcp(SocketAddr, Option<String>),
}

tokio::task_local! {
    static PEER: Peer;
}

/// The API socket, its connections known by their [`Peer`].
pub struct PeeredUnix(pub tokio::net::UnixListener);

/// A TCP listener of the API (TLS or loopback), its connections known by their [`Peer`].
pub struct PeeredTcp<L>(pub L);

impl Listener for PeeredUnix {
    type Io = tokio::net::UnixStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, _) = Listener::accept(&mut self.0).await;
        let cred = io.peer_cred().ok();
        let peer = Peer::Local {
            uid: cred.map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        };
        (io, peer)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer::Local { uid: None, pid: None })
    }
}

impl<L: Listener<Addr = SocketAddr>> Listener for PeeredTcp<L> {
    type Io = L::Io;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (io, Peer::Tcp(addr, None))
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr().map(|a| Peer::Tcp(a, None))
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, Limited<PeeredUnix>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Limited<PeeredUnix>>) -> Peer {
        stream.remote_addr().clone()
    }
}

impl<L: Listener<Addr = SocketAddr>> axum::extract::connect_info::Connected<IncomingStream<'_, Limited<PeeredTcp<L>>>>
    for Peer
{
    fn connect_info(stream: IncomingStream<'_, Limited<PeeredTcp<L>>>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// Middleware: the request's handler runs knowing its peer (read by [`Audit`]), with the
/// name of the token a TCP request carried (see [`super::remote::Caller`]).
pub async fn with_peer(req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<super::remote::Caller>().map(|c| c.0.clone());
    match req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0.clone()) {
        Some(Peer::Tcp(addr, _)) => PEER.scope(Peer::Tcp(addr, caller), next.run(req)).await,
        Some(peer) => PEER.scope(peer, next.run(req)).await,
        None => next.run(req).await,
    }
}

/// The verb and the VIP a change touches (None: the whole configuration).
fn verb(change: &Change) -> (&'static str, Option<&str>) {
    match change {
        Change::BackendSet { vip, .. } => ("backend-set", Some(vip)),
        Change::BackendAdd { vip, .. } => ("backend-add", Some(vip)),
        Change::BackendDel { vip, .. } => ("backend-del", Some(vip)),
        Change::Config(_) => ("apply", None),
        Change::Switch { vip, .. } => ("switch", Some(vip)),
        Change::Split { vip, .. } => ("split", Some(vip)),
        Change::Ab { vip, .. } => ("ab", Some(vip)),
        Change::Rollback { vip } => ("rollback", Some(vip)),
        Change::Canary { vip, .. } => ("canary", Some(vip)),
        Change::CanaryControl { vip, action } => (
            match action {
                crate::deploy::CanaryAction::Pause => "canary-pause",
                crate::deploy::CanaryAction::Resume => "canary-resume",
                crate::deploy::CanaryAction::Promote => "canary-promote",
                crate::deploy::CanaryAction::Gate { .. } => "canary-gate",
            },
            Some(vip),
        ),
        Change::CanaryTick => ("canary-tick", None),
        Change::Observed(_) => ("health", None),
    }
}

/// What a change can alter of VIP `vip` (None: the VIPs and a digest of the whole state,
/// not every backend of every VIP).
fn view(core: &Core, vip: Option<&str>) -> Value {
    let d = core.desired();
    match vip {
        Some(name) => match d.vip(name) {
            None => Value::Null,
            Some(v) => json!({
                "vip": v.name,
                "active": v.active,
                "pools": v.pools.iter().map(|p| json!({
                    "name": p.name,
                    "backends": p.backends.iter().map(|b| json!({
                        "address": b.address.to_string(),
                        "weight": b.weight,
                        "admin": d.admin(name, b.address),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "deployment": d.deploy.get(name),
            }),
        },
        None => json!({
            "vips": d.config.vips.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
            "digest": crate::agent::fnv1a(&serde_json::to_string(d).unwrap_or_default()),
        }),
    }
}

/// One change's audit event: begun before it is applied, logged when it is decided.
pub struct Audit {
    verb: &'static str,
    vip: Option<String>,
    before: Value,
}

impl Audit {
    pub fn begin(core: &Core, change: &Change) -> Audit {
        let (verb, vip) = verb(change);
        Audit {
            verb,
            vip: vip.map(str::to_string),
            before: view(core, vip),
        }
    }

    pub fn end(self, core: &Core, result: &Result<ChangeReport, CoreError>) {
        let after = view(core, self.vip.as_deref());
        let peer = PEER.try_with(Clone::clone).ok();
        let (uid, token, pid, client) = match &peer {
            Some(Peer::Local { uid, pid }) => (uid.map(|u| u.to_string()), None, *pid, None),
            Some(Peer::Tcp(addr, token)) => (None, token.clone(), None, Some(addr.ip().to_string())),
            None => (None, None, None, None),
        };
        let who = match &peer {
            Some(Peer::Local { uid: Some(u), .. }) => format!("uid {u}"),
            Some(Peer::Local { uid: None, .. }) => "a local client".to_string(),
            Some(Peer::Tcp(a, Some(t))) => format!("token {t:?} from {a}"),
            Some(Peer::Tcp(a, None)) => format!("{a}"),
            None => "the agent".to_string(),
        };
        let changes = match result {
            Ok(r) => r.changes.clone(),
            Err(_) => Vec::new(),
        };
        let vip = self.vip.as_deref().unwrap_or("");
        let before = json_field(&self.before);
        let after = json_field(&after);
        match result {
            Ok(_) => tracing::info!(
                event.kind = "event",
                event.category = "configuration",
                event.type = "change",
                event.action = self.verb,
                event.outcome = "success",
                user.id = uid.as_deref(),
                user.name = token.as_deref(),
                veer.peer.pid = pid,
                client.address = client.as_deref(),
                veer.vip = vip,
                veer.changes = ?changes,
                veer.change.before = %before,
                veer.change.after = %after,
                "{} {vip} by {who}: {}",
                self.verb,
                if changes.is_empty() { "nothing to change".to_string() } else { changes.join("; ") }
            ),
            Err(e) => tracing::warn!(
                event.kind = "event",
                event.category = "configuration",
                event.type = "change",
                event.action = self.verb,
                event.outcome = "failure",
                user.id = uid.as_deref(),
                user.name = token.as_deref(),
                veer.peer.pid = pid,
                client.address = client.as_deref(),
                veer.vip = vip,
                error.message = %e,
                veer.change.before = %before,
                veer.change.after = %after,
                "{} {vip} by {who} refused: {e}",
                self.verb
            ),
        }
    }
}
