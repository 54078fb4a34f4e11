//! Wiring: builds the service from the configuration, accepts connections under the
//! connection cap, serves metrics, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tanks_core::events::{EventPublisher, EventPump, KafkaSettings, MemorySink, SinkConfig};
use tanks_core::protocol::auth::{Response, reason};
use tanks_core::telemetry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, MessageTexts};
use crate::connection::{self, ConnLimits};
use tanks_core::proxy_protocol::{self, TrustedProxies};
use tanks_core::sources::SourceConnections;

use crate::limits::{Limits, RateLimiter};
use crate::metrics::Metrics;
use crate::password::Hasher;
use crate::revocation::Revocations;
use crate::service::AuthService;
use crate::users::UserStore;

/// Events kept by the embedded in-memory sink (oldest dropped first).
pub const MEMORY_EVENTS: usize = 10_000;
/// Connections over the cap being told so at once; beyond this they are just closed.
const REJECTS_IN_FLIGHT: usize = 256;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub service: Arc<AuthService>,
    /// The embedded event sink, when neither Kafka nor a file is configured.
    pub memory_events: Option<MemorySink>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts everything and returns once the ports are bound.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        // First line of the log: what this process runs on, embedded parts named.
        tracing::info!("authserver starting: {}", describe(&config));

        let proxies = config.proxy_protocol()?;
        let metrics = Metrics::new(telemetry::registry("authserver"))?;
        let (signer, development_key) = config.token_signer()?;
        if development_key {
            tracing::warn!(
                "using the built-in development token key; set TOKEN_KEY_FILE in production"
            );
        }
        let limits = Limits {
            window: config.rate_window(),
            failures_per_user: config.failures_per_user,
            failures_per_ip: config.failures_per_ip,
            registrations_per_ip: config.registrations_per_ip,
        };
        let (users, limiter, revocations) = match &config.redis_url {
            Some(url) => {
                let conn = tanks_core::redis_store::connect(url).await?;
                let prefix = &config.redis_prefix;
                (
                    UserStore::redis(conn.clone(), prefix),
                    RateLimiter::redis(limits, conn.clone(), prefix),
                    Revocations::redis(conn, prefix),
                )
            }
            None => (
                UserStore::memory(config.max_memory_users),
                RateLimiter::memory(limits),
                Revocations::memory(),
            ),
        };
        let hasher = Hasher::new_async(
            config.hash_params(),
            config.hash_concurrency(),
            config.allow_weak_hash,
            metrics.hash_waiting.clone(),
            metrics.hash_duration.clone(),
        )
        .await?;
        let (sink, memory_events) = event_sink(&config);
        let (events, pump) = EventPublisher::start(sink, metrics.events.clone())?;

        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen_addr))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let mut on_stop = stopped.clone();
        let (metrics_addr, metrics_task) = telemetry::serve_http(
            config.metrics_addr,
            telemetry::metrics_router(metrics.registry.clone()),
            async move { connection::stopping(&mut on_stop).await },
        )
        .await?;

        let service = Arc::new(AuthService {
            signer,
            token_ttl: config.token_ttl(),
            messages: config.messages.into(),
            hasher,
            users,
            limiter,
            revocations,
            events,
            metrics,
        });
        let limits = ConnLimits {
            max_line: config.max_line_bytes.max(64),
            idle: config.idle_timeout(),
            read: config.read_timeout(),
        };
        let accept = Acceptor {
            listener,
            service: service.clone(),
            limits,
            max_connections: config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            sources: Arc::new(SourceConnections::new(config.max_connections_per_source)),
            proxies,
            grace: Duration::from_secs(config.shutdown_grace_secs),
        };
        let task = tokio::spawn(async move {
            accept.run(stopped, pump).await;
            let _ = metrics_task.await;
        });
        tracing::info!(%addr, %metrics_addr, "authserver listening");
        Ok(Self {
            addr,
            metrics_addr,
            service,
            memory_events,
            stop,
            task,
        })
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), closes
    /// idle connections with a notice, and flushes events.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Acceptor {
    listener: TcpListener,
    service: Arc<AuthService>,
    limits: ConnLimits,
    max_connections: usize,
    sources: Arc<SourceConnections>,
    /// With --proxy-protocol: whose headers are believed.
    proxies: Option<TrustedProxies>,
    grace: Duration,
}

impl Acceptor {
    async fn run(self, mut stop: watch::Receiver<bool>, pump: EventPump) {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let rejects = Arc::new(Semaphore::new(REJECTS_IN_FLIGHT));
        let metrics = &self.service.metrics;
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                _ = connection::stopping(&mut stop) => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            match &self.proxies {
                Some(trusted) if trusted.contains(peer.ip()) => {
                    self.accept_proxied(stream, peer, &permits, &stop);
                }
                _ => self.accept_direct(stream, peer, &permits, &rejects, &stop),
            }
        }
        drop(self.listener);
        tracing::info!("stopped accepting; waiting for in-flight requests");
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(self.grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                open = metrics.connections_active.get(),
                "grace period over with connections still open"
            );
        }
        pump.finish(Duration::from_secs(5)).await;
        tracing::info!("authserver stopped");
    }
}

impl Acceptor {
    /// A client's own connection: its address is the peer's.
    fn accept_direct(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permits: &Arc<Semaphore>,
        rejects: &Arc<Semaphore>,
        stop: &watch::Receiver<bool>,
    ) {
        let metrics = &self.service.metrics;
        // The per-source check comes first, so a client at its own cap is told that
        // rather than taking (and being refused) a global slot.
        let Some(source) = self.sources.try_open(peer.ip()) else {
            metrics
                .connections_rejected
                .with_label_values(&["per_source"])
                .inc();
            refuse(stream, busy_source(), rejects);
            return;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics
                .connections_rejected
                .with_label_values(&["limit"])
                .inc();
            let busy = Response::error(reason::BUSY, "Server busy, try again later");
            refuse(stream, busy, rejects);
            return;
        };
        let (service, limits, stop) = (self.service.clone(), self.limits, stop.clone());
        let expect_no_header = self.proxies.is_some();
        tokio::spawn(async move {
            if expect_no_header && opens_with_proxy_header(&stream, limits.idle).await {
                service
                    .metrics
                    .connections_rejected
                    .with_label_values(&["proxy_untrusted"])
                    .inc();
                let refused = Response::error(
                    reason::BAD_REQUEST,
                    "PROXY protocol header from an address that is not a trusted proxy",
                );
                goodbye(stream, &refused).await;
                return;
            }
            serve(stream, peer, service, limits, stop).await;
            drop((permit, source));
        });
    }

    /// A connection from a trusted proxy: the client's address is in the PROXY header
    /// it must start with. A global slot is taken first, so connections still sending
    /// their header count against the cap too; the per-source cap applies to the
    /// client once the header names it.
    fn accept_proxied(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        permits: &Arc<Semaphore>,
        stop: &watch::Receiver<bool>,
    ) {
        let metrics = &self.service.metrics;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics
                .connections_rejected
                .with_label_values(&["limit"])
                .inc();
            // Answered in this connection's own task below would need the slot we do
            // not have; a non-blocking write and close, as for a flood.
            let busy = Response::error(reason::BUSY, "Server busy, try again later");
            let _ = stream.try_write(&busy.to_line());
            return;
        };
        let (service, limits, stop) = (self.service.clone(), self.limits, stop.clone());
        let sources = self.sources.clone();
        tokio::spawn(async move {
            let rejected = |why: &str| {
                service
                    .metrics
                    .connections_rejected
                    .with_label_values(&[why])
                    .inc();
            };
            let client = match proxy_protocol::read_header(&mut stream, limits.read).await {
                Ok(header) => header.client_or(peer),
                Err(e) => {
                    rejected("proxy_header");
                    tracing::warn!(%peer, error = %e, "refused a trusted proxy's connection");
                    let refused = Response::error(
                        reason::BAD_REQUEST,
                        format!("A PROXY protocol header is required from this address: {e}"),
                    );
                    goodbye(stream, &refused).await;
                    return;
                }
            };
            let Some(source) = sources.try_open(client.ip()) else {
                rejected("per_source");
                goodbye(stream, &busy_source()).await;
                return;
            };
            serve(stream, client, service, limits, stop).await;
            drop((permit, source));
        });
    }
}

/// Serves one admitted connection, counted while it lasts.
async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    service: Arc<AuthService>,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
) {
    service.metrics.connections_total.inc();
    service.metrics.connections_active.inc();
    connection::serve(stream, client, service.clone(), limits, stop).await;
    service.metrics.connections_active.dec();
}

fn busy_source() -> Response {
    Response::error(
        reason::BUSY,
        "Too many connections from your address, close some and try again",
    )
}

/// Whether a connection's first bytes (waited for up to `wait`) look like a PROXY
/// header. Only for a clear refusal: a header split over several writes passes as
/// an invalid request, and is never believed either way.
async fn opens_with_proxy_header(stream: &TcpStream, wait: Duration) -> bool {
    let mut first = [0u8; 12];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(n)) => proxy_protocol::looks_like_header(&first[..n]),
        _ => false,
    }
}

/// Answers a connection we will not serve and closes it, in the background while few
/// such goodbyes are in flight; past that, one non-blocking write and close, so a flood
/// of refused connections cannot pile up tasks.
fn refuse(stream: TcpStream, busy: Response, rejects: &Arc<Semaphore>) {
    match rejects.clone().try_acquire_owned() {
        Ok(slot) => {
            tokio::spawn(async move {
                goodbye(stream, &busy).await;
                drop(slot);
            });
        }
        Err(_) => {
            let _ = stream.try_write(&busy.to_line());
        }
    }
}

/// Sends a last answer and closes politely: reading what the client already sent, so
/// the kernel does not reset the connection and discard our answer.
async fn goodbye(mut stream: TcpStream, response: &Response) {
    let limit = Duration::from_secs(1);
    connection::send(&mut stream, response, limit).await;
    connection::linger_close(&mut stream, limit).await;
}

fn event_sink(config: &Config) -> (SinkConfig, Option<MemorySink>) {
    if let Some(brokers) = &config.kafka_brokers {
        return (
            SinkConfig::Kafka(KafkaSettings::new(brokers.clone(), "authserver")),
            None,
        );
    }
    if let Some(path) = &config.events_file {
        return (SinkConfig::File(path.clone()), None);
    }
    let memory = MemorySink::new(MEMORY_EVENTS);
    (SinkConfig::Memory(memory.clone()), Some(memory))
}

/// One line naming each backend, embedded ones flagged, secrets left out.
fn describe(config: &Config) -> String {
    let users = match &config.redis_url {
        Some(url) => format!("users=redis ({})", redact(url)),
        None => "users=embedded in-memory store (not persisted; set --redis-url)".into(),
    };
    let events = match (&config.kafka_brokers, &config.events_file) {
        (Some(brokers), _) => format!("events=kafka ({brokers})"),
        (None, Some(path)) => format!("events=embedded file {}", path.display()),
        (None, None) => {
            format!("events=embedded in-memory buffer (last {MEMORY_EVENTS}; set --kafka-brokers)")
        }
    };
    let key = if config.token_key_file.is_some() {
        "token key=file"
    } else if std::env::var_os(crate::config::TOKEN_KEY_ENV).is_some_and(|k| !k.is_empty()) {
        "token key=AUTH_TOKEN_KEY"
    } else {
        "token key=embedded development key (set TOKEN_KEY_FILE)"
    };
    let messages = match config.messages {
        MessageTexts::Prototype => "messages=prototype",
        MessageTexts::English => "messages=english",
    };
    let clients = if config.proxy_protocol {
        format!(
            "client addresses=PROXY header from {}",
            config.trusted_proxies
        )
    } else {
        "client addresses=peer".into()
    };
    let p = config.hash_params();
    format!(
        "{users}, {events}, {key}, {messages}, {clients}, argon2id m={}KiB t={} p={} x{} at once",
        p.memory_kib,
        p.iterations,
        p.parallelism,
        config.hash_concurrency()
    )
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_stay_out_of_the_log() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
