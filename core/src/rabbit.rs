//! RabbitMQ: work queues with dead-lettering, a reconnecting consumer that acks only
//! after the handler says the message took effect, and a confirmed publisher.

pub mod acks;

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{Notify, Semaphore};

use acks::AckWindow;

pub const PLAYER_COMMANDS: &str = "player_commands";
pub const MATCHMAKING_EVENTS: &str = "matchmaking_events";
/// Where the operator tells matchmakers which endpoint a match got.
pub const MATCH_ALLOCATIONS: &str = "match_allocations";
/// Header carrying why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";

/// The dead-letter queue that goes with a work queue.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Connects once, failing with a message that names the address.
pub async fn connect(uri: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default();
    tokio::time::timeout(Duration::from_secs(10), Connection::connect(uri, props))
        .await
        .map_err(|_| anyhow::anyhow!("RabbitMQ at {} did not answer within 10 s", redact(uri)))?
        .map_err(|e| anyhow::anyhow!("RabbitMQ at {} is not reachable: {e}", redact(uri)))
}

/// Connects, retrying with capped exponential backoff until it works.
pub async fn connect_with_backoff(uri: &str) -> Connection {
    let mut backoff = Backoff::default();
    loop {
        match connect(uri).await {
            Ok(conn) => return conn,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "RabbitMQ connect failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Declares a durable work queue and its dead-letter queue. Both are plain durable
/// queues, so declaring them twice, from several processes, is harmless.
pub async fn declare_work_queue(channel: &Channel, queue: &str) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            dead_letter_queue(queue).as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    Ok(())
}

/// What a handler decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect: ack.
    Ack,
    /// It can never take effect (malformed, unknown...): move it to the dead-letter
    /// queue with the reason, then ack.
    DeadLetter(String),
    /// It could not take effect now (a dependency is down): requeue it.
    Retry,
}

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub uri: String,
    pub queue: String,
    /// Unacked messages in flight, which is also how many handlers run at once.
    pub prefetch: u16,
    pub tag: String,
}

/// Consumes `spec.queue` until `shutdown` resolves, reconnecting with backoff. Each
/// message goes to `handler`, up to `prefetch` at once; it is acked only after the
/// handler returns [`Outcome::Ack`] (or dead-lettered after [`Outcome::DeadLetter`]),
/// so a crash mid-handling redelivers it.
pub async fn consume<H, Fut>(spec: ConsumerSpec, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Arc<Delivery>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let handler = Arc::new(handler);
    tokio::pin!(shutdown);
    let mut backoff = Backoff::default();
    loop {
        let session = consume_session(&spec, handler.clone(), &mut backoff);
        tokio::select! {
            _ = &mut shutdown => return,
            result = session => {
                let wait = backoff.next_delay();
                match result {
                    Ok(()) => tracing::warn!(queue = %spec.queue, "RabbitMQ consumer stream ended; reconnecting"),
                    Err(e) => tracing::warn!(queue = %spec.queue, error = %e, retry_in_ms = wait.as_millis() as u64, "RabbitMQ consumer failed; reconnecting"),
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn consume_session<H, Fut>(
    spec: &ConsumerSpec,
    handler: Arc<H>,
    backoff: &mut Backoff,
) -> anyhow::Result<()>
where
    H: Fn(Arc<Delivery>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let conn = connect(&spec.uri).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    declare_work_queue(&channel, &spec.queue).await?;
    let mut deliveries = channel
        .basic_consume(
            spec.queue.as_str().into(),
            spec.tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %spec.queue, prefetch = spec.prefetch, "consuming");
    *backoff = Backoff::default();
    let slots = Arc::new(Semaphore::new(spec.prefetch.max(1) as usize));
    let dead_queue = Arc::new(dead_letter_queue(&spec.queue));
    let acks = Arc::new(AckSender::new(channel.clone(), spec.prefetch));
    tokio::spawn(acks.clone().run());
    // When the session ends, the sender acks what its handlers still finish, then stops.
    let _closing = WakeOnDrop(acks.clone());
    while let Some(delivery) = deliveries.next().await {
        let delivery = Arc::new(delivery?);
        let permit = slots.clone().acquire_owned().await?;
        let handler = handler.clone();
        let channel = channel.clone();
        let dead_queue = dead_queue.clone();
        let acks = acks.clone();
        let tag = delivery.delivery_tag;
        acks.delivered(tag);
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = handler(delivery.clone()).await;
            let settled = match &outcome {
                Outcome::Ack => {
                    acks.took_effect(tag);
                    Ok(())
                }
                Outcome::Retry => {
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    };
                    // Unless the nack went out, the delivery stays "being handled":
                    // a multiple ack must never pass over it.
                    let nacked = channel.basic_nack(tag, requeue).await;
                    if nacked.is_ok() {
                        acks.settled(tag);
                    }
                    nacked
                }
                Outcome::DeadLetter(reason) => {
                    tracing::warn!(queue = %dead_queue, %reason, "dead-lettering a message");
                    match publish_dead_letter(&channel, &dead_queue, &delivery, reason).await {
                        Ok(()) => {
                            acks.took_effect(tag);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = settled {
                // The channel is gone; the broker redelivers the message to the next consumer.
                tracing::warn!(error = %e, ?outcome, "could not settle a message; it will be redelivered");
            }
        });
    }
    Ok(())
}

/// Sends a channel's acks in batches ([`acks`]): handlers report outcomes, one task
/// sends what may be acked whenever it runs, so outcomes that arrive together leave in
/// one frame and none is delayed by a timer.
struct AckSender {
    channel: Channel,
    window: Mutex<AckWindow>,
    wake: Notify,
    /// Acks held behind a slow delivery before they go one by one: half the prefetch, so
    /// the broker keeps sending.
    max_held: usize,
}

impl AckSender {
    fn new(channel: Channel, prefetch: u16) -> Self {
        AckSender {
            channel,
            window: Mutex::default(),
            wake: Notify::new(),
            max_held: usize::from(prefetch / 2),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, AckWindow> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn delivered(&self, tag: u64) {
        self.window().delivered(tag);
    }

    fn took_effect(&self, tag: u64) {
        self.window().took_effect(tag);
        self.wake.notify_one();
    }

    fn settled(&self, tag: u64) {
        self.window().settled(tag);
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            let acks = self.window().take(self.max_held);
            let multiple = BasicAckOptions { multiple: true };
            let sent = async {
                if let Some(tag) = acks.up_to {
                    self.channel.basic_ack(tag, multiple).await?;
                }
                for tag in acks.each {
                    self.channel
                        .basic_ack(tag, BasicAckOptions::default())
                        .await?;
                }
                lapin::Result::Ok(())
            };
            if let Err(e) = sent.await {
                // The channel is gone; the broker redelivers what was not acked.
                tracing::warn!(error = %e, "could not ack; the messages will be redelivered");
                return;
            }
            // The session and every handler are gone: nothing more will be acked.
            if Arc::strong_count(&self) == 1 {
                return;
            }
        }
    }
}

/// Wakes the ack sender when its session ends, so it notices it is the last owner.
struct WakeOnDrop(Arc<AckSender>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.wake.notify_one();
    }
}

async fn publish_dead_letter(
    channel: &Channel,
    dead_queue: &str,
    delivery: &Delivery,
    reason: &str,
) -> lapin::Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        DEAD_LETTER_REASON.into(),
        AMQPValue::LongString(reason.into()),
    );
    let props = delivery.properties.clone().with_headers(headers);
    channel
        .basic_publish(
            "".into(),
            dead_queue.into(),
            BasicPublishOptions::default(),
            &delivery.data,
            props,
        )
        .await?
        .await?;
    Ok(())
}

/// Publishes to queues through the default exchange with publisher confirms: `publish`
/// returns only once the broker has the message.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    _conn: Arc<Connection>,
}

impl Publisher {
    pub async fn connect(uri: &str) -> anyhow::Result<Self> {
        let conn = connect(uri).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            _conn: Arc::new(conn),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Declares `queue` as a work queue (with its dead-letter queue).
    pub async fn declare(&self, queue: &str) -> lapin::Result<()> {
        declare_work_queue(&self.channel, queue).await
    }

    pub async fn publish(&self, queue: &str, body: &[u8]) -> anyhow::Result<()> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            anyhow::bail!("RabbitMQ refused a message for {queue}");
        }
        Ok(())
    }

    pub async fn publish_json<T: serde::Serialize>(
        &self,
        queue: &str,
        value: &T,
    ) -> anyhow::Result<()> {
        self.publish(queue, &serde_json::to_vec(value)?).await
    }
}

/// Capped exponential backoff, 100 ms to 5 s.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        now
    }
}

/// The URI without its password, for logs.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &uri[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@localhost:5672/%2f"),
            "amqp://guest:***@localhost:5672/%2f"
        );
        assert_eq!(redact("amqp://localhost"), "amqp://localhost");
    }
}
