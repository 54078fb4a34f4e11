//! Commands that come through a broker: the seed's `player_commands` flow
//! (`PlayerCommandConsumer`) and `matchmaking_events` (`MatchmakingEventConsumer`).
//!
//! With RabbitMQ configured, the UDP thread hands command bodies to the [`CommandBus`],
//! whose task publishes them to this server's command queue with publisher confirms;
//! the consumer takes them from the queue and acks each only once the tick that
//! applied it has completed. Without RabbitMQ, the bus delivers bodies to the same
//! consumer in-process: the embedded default, same code, no broker.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use tanks_core::protocol::control::CreateSession;
use tanks_core::protocol::game::broker::{CommandAction, PlayerCommand};
use tanks_core::protocol::matchmaking::{MatchRequest, NEW_MATCH_CREATED};
use tanks_core::rabbit::{self, ConsumerSpec, Outcome, Publisher};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::metrics::Metrics;
use crate::sessions::{CreateError, InputError, SessionManager};

/// Commands waiting to be published; beyond this the UDP thread drops them (and
/// says so to the client) rather than block or grow.
pub const BUS_QUEUE: usize = 65_536;
/// Publishes awaiting their broker confirm.
const CONFIRM_WINDOW: usize = 1024;
/// How long a consumer waits for the tick that applies its command.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The sending side of the broker path; cheap to clone, never blocks.
#[derive(Clone)]
pub struct CommandBus {
    tx: mpsc::Sender<Vec<u8>>,
}

impl CommandBus {
    pub fn try_send(&self, body: Vec<u8>) -> bool {
        self.tx.try_send(body).is_ok()
    }
}

fn lock(manager: &Mutex<SessionManager>) -> std::sync::MutexGuard<'_, SessionManager> {
    manager
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies `player_commands` messages.
pub struct PlayerCommandConsumer {
    pub manager: Arc<Mutex<SessionManager>>,
    /// The last completed tick.
    pub completed: watch::Receiver<u64>,
    pub metrics: Metrics,
}

impl PlayerCommandConsumer {
    /// Queues the command for the next tick and returns once that tick has run, so
    /// the caller acks only what took effect.
    pub async fn handle(&self, body: &[u8]) -> Outcome {
        let command: PlayerCommand = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.command("unknown", "broker", "dead_letter");
                return Outcome::DeadLetter(format!("not a player command: {e}"));
            }
        };
        let action = match command.action() {
            Ok(a) => a,
            Err(reason) => {
                self.metrics.command("unknown", "broker", "dead_letter");
                return Outcome::DeadLetter(reason);
            }
        };
        let (kind, queued) = {
            let mut manager = lock(&self.manager);
            match &action {
                CommandAction::Move { position, seq } => (
                    "move",
                    manager.queue_move(&command.player_id, None, *position, *seq),
                ),
                CommandAction::Shoot { target, seq } => (
                    "shoot",
                    manager.queue_shot(&command.player_id, None, target.as_deref(), *seq),
                ),
            }
        };
        let tick = match queued {
            Ok(tick) => tick,
            Err(InputError::NotInGame | InputError::WrongSource) => {
                self.metrics.command(kind, "broker", "dead_letter");
                return Outcome::DeadLetter(format!(
                    "player {:?} is not in a game",
                    command.player_id
                ));
            }
        };
        let mut completed = self.completed.clone();
        match tokio::time::timeout(APPLY_TIMEOUT, completed.wait_for(|&done| done >= tick)).await {
            Ok(Ok(_)) => {
                self.metrics.command(kind, "broker", "applied");
                Outcome::Ack
            }
            // The tick stopped (shutdown) or stalled: let the broker redeliver it.
            _ => Outcome::Retry,
        }
    }
}

/// Creates sessions from `matchmaking_events`.
pub struct MatchmakingEventConsumer {
    pub manager: Arc<Mutex<SessionManager>>,
    pub metrics: Metrics,
}

impl MatchmakingEventConsumer {
    pub async fn handle(&self, body: &[u8], message_id: Option<&str>) -> Outcome {
        let event: MatchRequest = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => return Outcome::DeadLetter(format!("not a matchmaking event: {e}")),
        };
        if event.event_type != NEW_MATCH_CREATED {
            return Outcome::DeadLetter(format!("unknown event_type {:?}", event.event_type));
        }
        // Idempotence needs an id: the event's key (the operator's rule), else the
        // body's hash, since a standalone server has no one to refuse the event to.
        let match_id = event.key(message_id).map(str::to_owned).unwrap_or_else(|| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut hasher);
            format!("mm-{:016x}", hasher.finish())
        });
        let details = event.match_details;
        let request = CreateSession {
            match_id,
            players: details.players,
            map: details.map,
            mode: details.mode,
        };
        let created = lock(&self.manager).create_match(&request);
        match created {
            Ok(created) => {
                self.metrics.command(
                    "create_session",
                    "broker",
                    if created.created { "created" } else { "exists" },
                );
                tracing::info!(match_id = %created.match_id, session_id = %created.session_id, "session for a matchmaking event");
                Outcome::Ack
            }
            Err(CreateError::BadMatchId) => {
                Outcome::DeadLetter("match_id must be 1 to 128 characters".into())
            }
            Err(e @ (CreateError::Full | CreateError::Draining)) => {
                // Another server may have room: give it back, after a pause so a full
                // server does not spin on it.
                self.metrics.command("create_session", "broker", e.code());
                tokio::time::sleep(Duration::from_secs(1)).await;
                Outcome::Retry
            }
        }
    }
}

/// Starts the broker path. With `amqp_url`, publishes to `queue` and consumes it;
/// without, delivers in-process. Runs until `shutdown` fires.
pub fn start_command_path(
    amqp_url: Option<String>,
    queue: String,
    prefetch: u16,
    consumer: Arc<PlayerCommandConsumer>,
    shutdown: watch::Receiver<bool>,
) -> (CommandBus, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel(BUS_QUEUE);
    let bus = CommandBus { tx };
    let tasks = match amqp_url {
        Some(uri) => {
            let publish = tokio::spawn(publish_loop(
                uri.clone(),
                queue.clone(),
                rx,
                consumer.metrics.clone(),
            ));
            let spec = ConsumerSpec {
                uri,
                queue,
                prefetch,
                tag: format!("gameserver-commands-{}", std::process::id()),
            };
            let consume = tokio::spawn(rabbit::consume(
                spec,
                move |delivery| {
                    let consumer = consumer.clone();
                    async move { consumer.handle(&delivery.data).await }
                },
                wait_for(shutdown),
            ));
            // The publisher loops until aborted at shutdown; the consumer ends with `shutdown`.
            vec![publish, consume]
        }
        None => vec![tokio::spawn(in_process(rx, prefetch, consumer, shutdown))],
    };
    (bus, tasks)
}

/// Consumes `matchmaking_events` until shutdown.
pub fn start_matchmaking(
    amqp_url: String,
    queue: String,
    consumer: Arc<MatchmakingEventConsumer>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let spec = ConsumerSpec {
        uri: amqp_url,
        queue,
        prefetch: 16,
        tag: format!("gameserver-matchmaking-{}", std::process::id()),
    };
    tokio::spawn(rabbit::consume(
        spec,
        move |delivery| {
            let consumer = consumer.clone();
            async move {
                let message_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string());
                consumer.handle(&delivery.data, message_id.as_deref()).await
            }
        },
        wait_for(shutdown),
    ))
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// The embedded broker: the same consumer, fed from memory, `prefetch` at a time.
async fn in_process(
    mut rx: mpsc::Receiver<Vec<u8>>,
    prefetch: u16,
    consumer: Arc<PlayerCommandConsumer>,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
    let stop = wait_for(shutdown);
    tokio::pin!(stop);
    loop {
        let body = tokio::select! {
            _ = &mut stop => return,
            body = rx.recv() => match body { Some(b) => b, None => return },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Outcome::DeadLetter(reason) = consumer.handle(&body).await {
                tracing::debug!(%reason, "in-process command dropped");
            }
        });
    }
}

/// Publishes bus bodies to `queue`, keeping up to [`CONFIRM_WINDOW`] unconfirmed.
/// On a broker failure it reconnects with backoff and retries the body in hand.
async fn publish_loop(
    uri: String,
    queue: String,
    mut rx: mpsc::Receiver<Vec<u8>>,
    metrics: Metrics,
) {
    let mut pending: Option<Vec<u8>> = None;
    let mut backoff = rabbit::Backoff::default();
    loop {
        let publisher = match Publisher::connect(&uri).await {
            Ok(p) => p,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "command publisher cannot connect");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if let Err(e) = publisher.declare(&queue).await {
            tracing::warn!(error = %e, "declaring the command queue");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        backoff = rabbit::Backoff::default();
        let mut confirms = FuturesUnordered::new();
        loop {
            let body = match pending.take() {
                Some(b) => b,
                None => tokio::select! {
                    body = rx.recv() => match body { Some(b) => b, None => return },
                    Some(confirm) = confirms.next(), if !confirms.is_empty() => {
                        note_confirm(confirm, &metrics);
                        continue;
                    }
                },
            };
            let props = BasicProperties::default().with_content_type("application/json".into());
            let sent = publisher
                .channel()
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await;
            match sent {
                Ok(confirm) => confirms.push(confirm),
                Err(e) => {
                    tracing::warn!(error = %e, "publishing a command failed; reconnecting");
                    pending = Some(body);
                    break;
                }
            }
            while confirms.len() >= CONFIRM_WINDOW {
                if let Some(confirm) = confirms.next().await {
                    note_confirm(confirm, &metrics);
                }
            }
        }
    }
}

fn note_confirm(confirm: lapin::Result<lapin::Confirmation>, metrics: &Metrics) {
    match confirm {
        Ok(c) if !c.is_nack() => {}
        _ => metrics.command("publish", "broker", "unconfirmed"),
    }
}

#[cfg(test)]
mod tests {
    use tanks_core::events::{EventMetrics, EventPublisher, MemorySink, SinkConfig};

    use super::*;
    use crate::rules::Rules;
    use crate::sessions::ManagerConfig;

    /// The standalone consumer keys a session by the operator's rule
    /// (`MatchRequest::key`), and by the body's hash only when the event names no id.
    #[tokio::test]
    async fn matchmaking_events_key_their_sessions_by_the_shared_rule() {
        let (events, _pump) = EventPublisher::start(
            SinkConfig::Memory(MemorySink::new(100)),
            EventMetrics::detached(),
        )
        .unwrap();
        let manager = SessionManager::new(ManagerConfig::new("test", Rules::default()), events);
        let consumer = MatchmakingEventConsumer {
            manager: Arc::new(Mutex::new(manager)),
            metrics: Metrics::new(),
        };
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                br#"{"event_type":"new_match_created","event_id":"ev","match_details":{"match_id":"m"}}"#,
                Some("msg-1"),
            ),
            (
                br#"{"event_type":"new_match_created","match_details":{"match_id":"m"}}"#,
                Some("msg-2"),
            ),
            (br#"{"event_type":"new_match_created"}"#, Some("msg-3")),
            (br#"{"event_type":"new_match_created"}"#, None),
        ];
        for (body, message_id) in cases {
            assert_eq!(consumer.handle(body, *message_id).await, Outcome::Ack);
        }
        let report = lock(&consumer.manager).load_report();
        let keys: Vec<&str> = report.matches.iter().map(|m| m.match_id.as_str()).collect();
        assert_eq!(keys.len(), 4);
        for key in ["ev", "m", "msg-3"] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
        assert!(
            keys.iter().any(|k| k.starts_with("mm-")),
            "a hash for an event without an id: {keys:?}"
        );
    }
}
