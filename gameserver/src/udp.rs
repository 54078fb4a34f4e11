//! The UDP play port: one thread receives datagrams, limits each source's rate,
//! parses, and either answers at once (joins, leaves, errors) or queues the input
//! for the next tick. Snapshots are sent by the tick thread ([`crate::tick`]).
//!
//! A plain blocking thread rather than async tasks: one `recvmmsg` takes every
//! datagram already queued (up to [`crate::batch::RECV_BATCH`]), into buffers reused
//! from call to call. While datagrams keep coming it polls every
//! [`POLL_WHILE_BUSY`] instead of blocking: at thousands of players a wake-up per
//! datagram or two cost more CPU than the datagrams, and inputs wait for the tick
//! anyway.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use socket2::{Domain, Protocol, Socket, Type};
use tanks_core::protocol::game::broker::PlayerCommand;
use tanks_core::protocol::game::udp::{Datagram, MSG_LEFT, MSG_NOT_IN_GAME, Reply, parse_datagram};
use tanks_core::token::{Claims, TokenSigner};

use crate::batch::Receiver;
use crate::commands::CommandBus;
use crate::config::CommandPath;
use crate::metrics::Metrics;
use crate::rate_limit::{RateLimit, RateLimiter};
use crate::revocation::RevocationCheck;
use crate::sessions::{InputError, JoinOutcome, SessionManager};

pub type SharedManager = Arc<Mutex<SessionManager>>;

pub const MSG_TOKEN_REQUIRED: &str = "Token required";
pub const MSG_BAD_TOKEN: &str = "Invalid or expired token";
pub const MSG_TOKEN_MISMATCH: &str = "Token does not match player_id";
pub const MSG_BUSY: &str = "Server busy";
/// The answer to a bound player's input from a new address.
pub const MSG_REJOIN: &str = "Not in a game from this address; join again with your token";

/// Most sources the rate limiter tracks.
const MAX_SOURCES: usize = 200_000;

/// How long the receive thread sleeps after draining the socket while players are
/// sending. Inputs are applied at the next tick (33 ms at 30 Hz): only one that lands
/// in the last millisecond before a tick can miss it and wait for the one after; a
/// join's answer comes at most this much later. An idle server blocks instead (see
/// [`UdpHandler::run`]).
pub const POLL_WHILE_BUSY: Duration = Duration::from_millis(1);

/// Binds the play socket with large buffers: a tick's snapshots leave in a burst, and
/// inputs from thousands of players arrive in bursts too.
pub fn bind(addr: SocketAddr, buffer: usize) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket
        .bind(&addr.into())
        .map_err(|e| anyhow::anyhow!("binding UDP {addr}: {e}"))?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(socket)
}

/// Counters resolved once, so the per-datagram path does no label lookups.
struct HotCounters {
    moves: IntCounter,
    shots: IntCounter,
    not_in_game: IntCounter,
    rate_limited: IntCounter,
}

pub struct UdpHandler {
    manager: SharedManager,
    socket: Arc<UdpSocket>,
    signer: TokenSigner,
    require_token: bool,
    path: CommandPath,
    bus: Option<CommandBus>,
    metrics: Metrics,
    hot: HotCounters,
    limiter: RateLimiter,
    /// Logged-out tokens, checked at join (none: not checked).
    revocations: Option<RevocationCheck>,
    reply: Vec<u8>,
}

impl UdpHandler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        manager: SharedManager,
        socket: Arc<UdpSocket>,
        signer: TokenSigner,
        require_token: bool,
        path: CommandPath,
        bus: Option<CommandBus>,
        limit: RateLimit,
        metrics: Metrics,
    ) -> Self {
        let label = path.label();
        let hot = HotCounters {
            moves: metrics.commands.with_label_values(&["move", label, "ok"]),
            shots: metrics.commands.with_label_values(&["shoot", label, "ok"]),
            not_in_game: metrics.bad_datagrams.with_label_values(&["not_in_game"]),
            rate_limited: metrics.bad_datagrams.with_label_values(&["rate_limited"]),
        };
        Self {
            manager,
            socket,
            signer,
            require_token,
            path,
            bus,
            metrics,
            hot,
            limiter: RateLimiter::new(limit, MAX_SOURCES),
            revocations: None,
            reply: Vec::with_capacity(512),
        }
    }

    /// Refuses joins with tokens revoked by a logout.
    pub fn with_revocations(mut self, check: RevocationCheck) -> Self {
        self.revocations = Some(check);
        self
    }

    /// Receives until `stop` is set (checked at least every read timeout).
    ///
    /// A full batch means more are queued: take them at once. A partial one drained
    /// the socket: sleep [`POLL_WHILE_BUSY`], so the next datagrams queue up without
    /// waking this thread, and take them together. The batch after that blocks if
    /// the socket is still empty, so an idle server does not spin.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let mut receiver = Receiver::default();
        while !stop.load(Ordering::Relaxed) {
            let received = self.receive_batch(&mut receiver);
            if received > 0 && received < crate::batch::RECV_BATCH {
                std::thread::sleep(POLL_WHILE_BUSY);
            }
        }
    }

    /// Waits for datagrams and handles each of one batch; returns how many it took.
    pub fn receive_batch(&mut self, receiver: &mut Receiver) -> usize {
        let socket = self.socket.clone();
        // A batch is what was queued at one instant: one clock read, taken when the
        // first datagram is in (not before the wait), serves it all.
        let mut now = None;
        let handle = |bytes: &[u8], from| {
            let now = *now.get_or_insert_with(Instant::now);
            self.handle(bytes, from, now);
        };
        match receiver.recv(&socket, handle) {
            Ok(received) => received,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they are not ours to fix.
                tracing::debug!(error = %e, "UDP receive error");
                0
            }
        }
    }

    /// Handles one datagram. Never panics on its content.
    pub fn handle(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        self.metrics.datagrams_in.inc();
        if !self.limiter.allow(from, now) {
            self.hot.rate_limited.inc();
            return;
        }
        // A datagram that filled the buffer was truncated by the kernel: too large.
        let datagram = match parse_datagram(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.metrics.bad(e.reason());
                self.send_status("error", "message", e.message(), from);
                return;
            }
        };
        match datagram {
            Datagram::Join {
                player_id,
                token,
                session_id,
            } => self.join(&player_id, token.as_deref(), session_id.as_deref(), from),
            Datagram::Move {
                player_id,
                position,
                seq,
            } => match self.path {
                CommandPath::Direct => {
                    let result = self
                        .lock()
                        .queue_move(&player_id, Some(from), position, seq);
                    self.input_result(result.map(|_| ()), &self.hot.moves.clone(), from);
                }
                CommandPath::Broker => self.publish(
                    &player_id,
                    from,
                    || PlayerCommand::moved(&player_id, position, seq),
                    true,
                ),
            },
            Datagram::Shoot {
                player_id,
                target,
                seq,
            } => match self.path {
                CommandPath::Direct => {
                    let result =
                        self.lock()
                            .queue_shot(&player_id, Some(from), target.as_deref(), seq);
                    self.input_result(result.map(|_| ()), &self.hot.shots.clone(), from);
                }
                CommandPath::Broker => self.publish(
                    &player_id,
                    from,
                    || PlayerCommand::shot(&player_id, target.as_deref(), seq),
                    false,
                ),
            },
            Datagram::Leave { player_id } => {
                let result = self.lock().leave(&player_id, Some(from));
                match result {
                    Ok(()) => {
                        self.metrics.command("leave", "udp", "ok");
                        self.send_status("left_game", "message", MSG_LEFT, from);
                    }
                    Err(InputError::NotInGame) => {
                        self.metrics.command("leave", "udp", "not_in_game");
                        self.send_status("not_in_game", "message", MSG_NOT_IN_GAME, from);
                    }
                    Err(InputError::WrongSource) => self.metrics.bad("wrong_source"),
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionManager> {
        // A panic elsewhere while holding the lock must not stop play: the state is
        // still consistent between operations.
        self.manager
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn input_result(&mut self, result: Result<(), InputError>, ok: &IntCounter, from: SocketAddr) {
        match result {
            Ok(()) => ok.inc(),
            Err(InputError::NotInGame) => {
                self.hot.not_in_game.inc();
                self.send_status("not_in_game", "message", MSG_NOT_IN_GAME, from);
            }
            // A token-bound player's input from another address: an edge reload or a
            // NAT rebinding moved the player, or someone else claims it. Nothing moves;
            // the answer (no larger than the datagram, and rate-limited per source
            // like any) tells a real player to join again with its token.
            Err(InputError::WrongSource) => {
                self.metrics.bad("wrong_source");
                self.send_status("not_in_game", "message", MSG_REJOIN, from);
            }
        }
    }

    /// The broker path: check the sender here (the consumer cannot see addresses),
    /// then hand the command to the bus without waiting.
    fn publish(
        &mut self,
        player_id: &str,
        from: SocketAddr,
        command: impl FnOnce() -> PlayerCommand,
        is_move: bool,
    ) {
        let kind = if is_move { "move" } else { "shoot" };
        let checked = self.lock().touch(player_id, Some(from));
        if let Err(e) = checked {
            return self.input_result(Err(e), &self.hot.moves.clone(), from);
        }
        let Some(bus) = &self.bus else {
            self.metrics.command(kind, "broker", "no_bus");
            return;
        };
        let body = serde_json::to_vec(&command()).unwrap_or_default();
        if bus.try_send(body) {
            self.metrics.command(kind, "broker", "published");
        } else {
            self.metrics.command(kind, "broker", "dropped");
            self.send_status("error", "message", MSG_BUSY, from);
        }
    }

    fn join(
        &mut self,
        player_id: &str,
        token: Option<&str>,
        session_id: Option<&str>,
        from: SocketAddr,
    ) {
        let bound = match token {
            Some(token) => match self.signer.verify(token) {
                Ok(claims) if claims.sub == player_id => {
                    if let Some(reason) = self.revoked(&claims) {
                        return self.join_failed(reason, from);
                    }
                    true
                }
                Ok(_) => return self.join_failed(MSG_TOKEN_MISMATCH, from),
                Err(_) => return self.join_failed(MSG_BAD_TOKEN, from),
            },
            None if self.require_token => return self.join_failed(MSG_TOKEN_REQUIRED, from),
            None => false,
        };
        let outcome = self.lock().join(player_id, from, bound, session_id);
        let reply = match outcome {
            JoinOutcome::Rebound { session_id, tank } => {
                self.metrics.command("join", "udp", "rebound");
                Reply::Joined {
                    session_id,
                    tank_id: tank.id.clone(),
                    initial_state: tank,
                    tick_rate: self.lock().config().rules.tick_rate,
                }
            }
            JoinOutcome::Joined { session_id, tank } => {
                self.metrics.command("join", "udp", "joined");
                Reply::Joined {
                    session_id,
                    tank_id: tank.id.clone(),
                    initial_state: tank,
                    tick_rate: self.lock().config().rules.tick_rate,
                }
            }
            JoinOutcome::AlreadyInSession {
                session_id,
                tank_id,
            } => {
                self.metrics.command("join", "udp", "already_in_session");
                Reply::AlreadyInSession {
                    session_id,
                    tank_id,
                }
            }
            JoinOutcome::Failed(reason) => return self.join_failed(reason, from),
        };
        self.reply.clear();
        let _ = serde_json::to_writer(&mut self.reply, &reply);
        self.send_reply(from);
    }

    /// Why a valid token may not join: revoked by a logout, or (failing closed) not
    /// checkable now.
    fn revoked(&mut self, claims: &Claims) -> Option<&'static str> {
        self.revocations.as_mut()?.refusal(&claims.jti, claims.exp)
    }

    fn join_failed(&mut self, reason: &'static str, from: SocketAddr) {
        self.metrics.command("join", "udp", "failed");
        self.send_status("join_failed", "reason", reason, from);
    }

    /// `{"status":<status>,<field>:<text>}`; every text here is one of our constants.
    fn send_status(&mut self, status: &str, field: &str, text: &str, to: SocketAddr) {
        self.reply.clear();
        let _ = write!(self.reply, r#"{{"status":"{status}","{field}":"{text}"}}"#);
        self.send_reply(to);
    }

    fn send_reply(&mut self, to: SocketAddr) {
        match self.socket.send_to(&self.reply, to) {
            Ok(_) => self.metrics.datagrams_out.inc(),
            Err(_) => self.metrics.send_errors.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Receiver;
    use crate::rules::Rules;
    use crate::sessions::ManagerConfig;
    use tanks_core::events::{EventMetrics, EventPublisher, MemorySink, SinkConfig};
    use tanks_core::protocol::game::udp::MAX_DATAGRAM;

    #[tokio::test]
    async fn a_batch_of_mixed_datagrams_is_handled_one_by_one() {
        let (events, _pump) = EventPublisher::start(
            SinkConfig::Memory(MemorySink::new(1_000)),
            EventMetrics::detached(),
        )
        .unwrap();
        let manager = SessionManager::new(ManagerConfig::new("test", Rules::default()), events);
        let socket = Arc::new(bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap());
        let metrics = Metrics::new();
        let mut handler = UdpHandler::new(
            Arc::new(Mutex::new(manager)),
            socket.clone(),
            TokenSigner::new(b"a test key of at least thirty-two bytes").unwrap(),
            false,
            CommandPath::Direct,
            None,
            RateLimit::default(),
            metrics.clone(),
        );
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let server = socket.local_addr().unwrap();
        let oversized = vec![b' '; MAX_DATAGRAM + 500];
        let datagrams: [&[u8]; 8] = [
            br#"{"action":"join_game","player_id":"p1"}"#,
            b"{",
            b"",
            &[0xff, 0xfe],
            &oversized,
            br#"{"action":"move","player_id":"p1","position":[120,130],"seq":1}"#,
            br#"{"action":"fly","player_id":"p1"}"#,
            br#"{"action":"move","player_id":"nobody","position":[1,2]}"#,
        ];
        for d in datagrams {
            client.send_to(d, server).unwrap();
        }
        // All queued at once: one or a few batches take them all, in order.
        let mut receiver = Receiver::default();
        for _ in 0..8 {
            if metrics.datagrams_in.get() == 8 {
                break;
            }
            handler.receive_batch(&mut receiver);
        }
        assert_eq!(metrics.datagrams_in.get(), 8);
        let mut replies = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..7 {
            let n = client.recv(&mut buf).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            let text = v["message"].as_str().unwrap_or_default().to_owned();
            replies.push((v["status"].as_str().unwrap().to_owned(), text));
        }
        let expected = [
            ("joined", ""),
            ("error", "Invalid JSON format"),
            ("error", "Empty JSON payload"),
            ("error", "Invalid character encoding. UTF-8 expected."),
            ("error", "Datagram too large"),
            // (the move is queued for the tick: no reply)
            ("error", "Unknown action"),
            ("not_in_game", MSG_NOT_IN_GAME),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(s, m)| (s.to_string(), m.to_string()))
            .collect();
        assert_eq!(replies, expected);
        let moves = metrics
            .commands
            .with_label_values(&["move", "direct", "ok"]);
        assert_eq!(moves.get(), 1, "the valid move was queued");
    }
}
