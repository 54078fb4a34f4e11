//! Publishes allocations to RabbitMQ `match_allocations` for the matchmaker, reconnecting
//! after a failure (the next publish connects again).

use tanks_core::protocol::matchmaking::MatchAllocated;
use tanks_core::rabbit::Publisher;
use tokio::sync::Mutex;

pub struct AllocationPublisher {
    uri: String,
    queue: String,
    publisher: Mutex<Option<Publisher>>,
}

impl AllocationPublisher {
    pub fn new(uri: impl Into<String>, queue: impl Into<String>) -> Self {
        AllocationPublisher {
            uri: uri.into(),
            queue: queue.into(),
            publisher: Mutex::new(None),
        }
    }

    async fn current(&self) -> anyhow::Result<Publisher> {
        let mut slot = self.publisher.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let p = Publisher::connect(&self.uri).await?;
        p.declare(&self.queue).await?;
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Returns once the broker confirmed the message.
    pub async fn publish(&self, message: &MatchAllocated) -> anyhow::Result<()> {
        let publisher = self.current().await?;
        let result = publisher.publish_json(&self.queue, message).await;
        if result.is_err() {
            // The channel may be dead: connect again next time.
            *self.publisher.lock().await = None;
        }
        result
    }
}
