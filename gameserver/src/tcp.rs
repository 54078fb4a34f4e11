//! The TCP command port: one text command per line, the seed's replies.
//!
//! `LOGIN user pass` is checked against the auth server; `MOVE x y` and `SHOOT`
//! then act for that user's tank, through the configured command path. Lines are
//! bounded, idle connections time out, connections are capped (in all and per client
//! address, so one client cannot hold every slot), and each connection is paced to a
//! number of lines per second (TCP pushes back on the client).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tanks_core::protocol::auth::{Request, Response};
use tanks_core::protocol::game::broker::PlayerCommand;
use tanks_core::protocol::game::tcp::{Line, MAX_LINE, TCP_UNAUTHORIZED, parse_line};
use tanks_core::sources::SourceConnections;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::commands::CommandBus;
use crate::config::CommandPath;
use crate::metrics::Metrics;
use crate::sessions::SessionManager;

pub const MAX_CONNECTIONS: usize = 10_000;
/// Players behind one NAT share an address; 64 leaves room for a LAN party or an
/// office while one client can take well under 1% of the slots.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// Refused connections being told so at once; beyond this they get one
/// non-blocking write and are closed, so a flood cannot pile up tasks.
const REJECTS_IN_FLIGHT: usize = 256;
const REFUSED_PER_SOURCE: &str = "BUSY Too many connections from your address\n";
const REFUSED_FULL: &str = "BUSY Server busy, try again later\n";
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines per second one connection may send before it is slowed down.
const LINES_PER_SECOND: u32 = 60;

/// Connection caps of the command port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub max_per_source: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_per_source: MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

#[derive(Clone)]
pub struct TcpContext {
    pub manager: Arc<Mutex<SessionManager>>,
    pub auth_addr: String,
    pub path: CommandPath,
    pub bus: Option<CommandBus>,
    pub metrics: Metrics,
    pub limits: TcpLimits,
}

pub async fn serve(listener: TcpListener, ctx: TcpContext, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(
        ctx.limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let sources = SourceConnections::new(ctx.limits.max_per_source);
    let rejects = Arc::new(Semaphore::new(REJECTS_IN_FLIGHT));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|&stop| stop) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Per source first: a client at its own cap is told so without taking a slot.
        let Some(source) = sources.try_open(peer.ip()) else {
            tracing::debug!(%peer, "TCP connection refused: per-source cap");
            refuse(stream, REFUSED_PER_SOURCE, &rejects);
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "TCP connection refused: connection cap");
            refuse(stream, REFUSED_FULL, &rejects);
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slots = (permit, source);
            ctx.metrics.tcp_connections.inc();
            if let Err(e) = connection(stream, &ctx, shutdown).await {
                tracing::debug!(%peer, error = %e, "TCP connection ended");
            }
            ctx.metrics.tcp_connections.dec();
        });
    }
}

/// Tells a refused client why and closes: half-close, then read what it already sent
/// (briefly), since closing with unread input makes the kernel send a reset that can
/// destroy the reply before the client reads it.
fn refuse(mut stream: TcpStream, reply: &'static str, rejects: &Arc<Semaphore>) {
    let Ok(slot) = rejects.clone().try_acquire_owned() else {
        let _ = stream.try_write(reply.as_bytes());
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(reply.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
        drop(slot);
    });
}

async fn connection(
    stream: TcpStream,
    ctx: &TcpContext,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(128);
    let mut user: Option<String> = None;
    let mut pace = tokio::time::interval(Duration::from_secs(1) / LINES_PER_SECOND);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let n = tokio::select! {
            _ = shutdown.wait_for(|&stop| stop) => return Ok(()),
            n = tokio::time::timeout(IDLE_TIMEOUT, read) => match n {
                Ok(n) => n?,
                Err(_) => return Ok(()), // idle
            },
        };
        if n == 0 {
            return Ok(());
        }
        pace.tick().await;
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() > MAX_LINE {
            write.write_all(b"UNKNOWN_COMMAND Line too long\n").await?;
            return Ok(()); // the rest of the line is unframed: close
        }
        let reply = handle_line(&line, &mut user, ctx).await;
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\n").await?;
    }
}

/// One line in, one reply line out (without its newline).
pub async fn handle_line(bytes: &[u8], user: &mut Option<String>, ctx: &TcpContext) -> String {
    let parsed = match parse_line(bytes) {
        Ok(l) => l,
        Err(e) => {
            ctx.metrics.command("line", "tcp", e.reason());
            return e.reply().to_owned();
        }
    };
    match parsed {
        Line::Login { username, password } => {
            let request = Request::Login {
                username: username.to_owned(),
                password: password.to_owned(),
            };
            match ask_auth(&ctx.auth_addr, &request).await {
                Ok(response) if response.is_success() => {
                    let token = response
                        .session_id
                        .clone()
                        .or(response.token.clone())
                        .unwrap_or_default();
                    *user = Some(
                        response
                            .username
                            .clone()
                            .unwrap_or_else(|| username.to_owned()),
                    );
                    ctx.metrics.command("login", "tcp", "success");
                    format!(
                        "LOGIN_SUCCESS {} Token: {token}",
                        one_line(&response.message)
                    )
                }
                Ok(response) => {
                    ctx.metrics.command("login", "tcp", "failure");
                    format!("LOGIN_FAILURE {}", one_line(&response.message))
                }
                Err(e) => {
                    tracing::warn!(error = %e, auth = %ctx.auth_addr, "auth server unavailable");
                    ctx.metrics.command("login", "tcp", "unavailable");
                    "LOGIN_FAILURE Authentication service unavailable".to_owned()
                }
            }
        }
        Line::Register { username, password } => {
            let request = Request::Register {
                username: username.to_owned(),
                password: password.to_owned(),
            };
            match ask_auth(&ctx.auth_addr, &request).await {
                Ok(response) if response.is_success() => {
                    format!("REGISTER_SUCCESS {}", one_line(&response.message))
                }
                Ok(response) => format!("REGISTER_FAILURE {}", one_line(&response.message)),
                Err(_) => "REGISTER_FAILURE Authentication service unavailable".to_owned(),
            }
        }
        Line::Move { x, y } => {
            let Some(player) = user.as_deref() else {
                return TCP_UNAUTHORIZED.to_owned();
            };
            command(
                ctx,
                "move",
                || PlayerCommand::moved(player, [x, y], None),
                |m| m.queue_move(player, None, [x, y], None).map(|_| ()),
            );
            "COMMAND_RECEIVED MOVE".to_owned()
        }
        Line::Shoot => {
            let Some(player) = user.as_deref() else {
                return TCP_UNAUTHORIZED.to_owned();
            };
            command(
                ctx,
                "shoot",
                || PlayerCommand::shot(player, None, None),
                |m| m.queue_shot(player, None, None, None).map(|_| ()),
            );
            "COMMAND_RECEIVED SHOOT".to_owned()
        }
    }
}

/// Sends a command down the configured path. The seed answered `COMMAND_RECEIVED`
/// once it had published, whatever became of the command; so do we, and count
/// what became of it.
fn command(
    ctx: &TcpContext,
    kind: &str,
    body: impl FnOnce() -> PlayerCommand,
    direct: impl FnOnce(&mut SessionManager) -> Result<(), crate::sessions::InputError>,
) {
    let result = match (ctx.path, &ctx.bus) {
        (CommandPath::Broker, Some(bus)) => {
            if bus.try_send(serde_json::to_vec(&body()).unwrap_or_default()) {
                "published"
            } else {
                "dropped"
            }
        }
        _ => {
            let mut manager = ctx.manager.lock().unwrap_or_else(|p| p.into_inner());
            if direct(&mut manager).is_ok() {
                "ok"
            } else {
                "not_in_game"
            }
        }
    };
    ctx.metrics.command(kind, "tcp", result);
}

/// Auth messages come from another service; keep them to one line.
fn one_line(message: &str) -> String {
    message.replace(['\r', '\n'], " ")
}

/// One request to the auth server: newline-delimited JSON over TCP.
pub async fn ask_auth(addr: &str, request: &Request) -> anyhow::Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.to_line().as_bytes()).await?;
        let mut reader = BufReader::new(stream).take(64 * 1024);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await?;
        anyhow::ensure!(!line.is_empty(), "the auth server closed without answering");
        let response: Response = serde_json::from_slice(line.trim_ascii_end())?;
        anyhow::Ok(response)
    };
    tokio::time::timeout(AUTH_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the auth server at {addr} did not answer within {AUTH_TIMEOUT:?}")
        })?
}
