//! Event publishing to Kafka (or an embedded sink), never blocking the caller.
//!
//! Callers hand a serialized event to [`EventPublisher::publish`], which only pushes
//! onto a bounded in-process queue. A pump task moves events into the sink in
//! batches. With Kafka, librdkafka holds undelivered messages and retries for as
//! long as the broker is away (`message.timeout.ms=0`), so an outage loses nothing
//! until both buffers are full: librdkafka's queue ([`KafkaSettings::max_buffered`]
//! messages, default 1,000,000 / 512 MiB) plus ours ([`PUBLISH_QUEUE`]). Past that,
//! events are dropped and counted in `events_dropped_total`, so memory stays bounded.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub const AUTH_EVENTS: &str = "auth_events";
pub const PLAYER_SESSIONS_HISTORY: &str = "player_sessions_history";
pub const TANK_COORDINATES_HISTORY: &str = "tank_coordinates_history";
pub const GAME_EVENTS: &str = "game_events";
/// Every topic this project writes.
pub const ALL_TOPICS: &[&str] = &[
    AUTH_EVENTS,
    PLAYER_SESSIONS_HISTORY,
    TANK_COORDINATES_HISTORY,
    GAME_EVENTS,
];

/// `events_dropped_total` reasons meaning a buffer was full: ours (`queue_full`) or
/// librdkafka's (`refused`). The only losses of a broker outage.
pub const BUFFER_FULL_REASONS: &[&str] = &["queue_full", "refused"];

/// Events waiting for the pump, beyond what the sink itself buffers.
pub const PUBLISH_QUEUE: usize = 65_536;
const BATCH: usize = 1024;

/// Seconds since the Unix epoch with sub-second precision, the seed's `timestamp`.
pub fn timestamp_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One event on its way to a topic. `key` keeps one user's, session's or tank's
/// events in one partition, hence in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: &'static str,
    pub key: String,
    pub payload: Vec<u8>,
}

/// Where events go.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Kafka(KafkaSettings),
    /// JSON lines `{"topic","key","event"}` appended to a file: the embedded default.
    File(PathBuf),
    /// Kept in memory (bounded, oldest dropped first): for tests and embedding.
    Memory(MemorySink),
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub client_id: String,
    pub max_buffered: u32,
    /// Extra librdkafka properties, e.g. `linger.ms`.
    pub overrides: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: client_id.into(),
            max_buffered: 1_000_000,
            overrides: Vec::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // Idempotence keeps per-partition order and avoids duplicates across retries.
            .set("enable.idempotence", "true")
            // Retry forever: an outage delays events, it does not drop them.
            .set("message.timeout.ms", "0")
            .set(
                "queue.buffering.max.messages",
                self.max_buffered.to_string(),
            )
            .set("queue.buffering.max.kbytes", (512 * 1024).to_string())
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("compression.type", "lz4");
        for (k, v) in &self.overrides {
            config.set(k, v);
        }
        config
    }
}

/// Counters every publisher exports, under the binary's metric prefix.
#[derive(Clone)]
pub struct EventMetrics {
    pub produced: IntCounterVec,
    pub dropped: IntCounterVec,
    pub pending: IntGauge,
}

impl EventMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let produced = IntCounterVec::new(
            Opts::new(
                "events_produced_total",
                "Events delivered to their sink, by topic",
            ),
            &["topic"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new("events_dropped_total", "Events lost, by topic and reason"),
            &["topic", "reason"],
        )?;
        // The losses of a full buffer are exported at 0 from the start, so an alert on
        // them has a series to watch before the first loss (not only after it).
        for topic in ALL_TOPICS {
            for reason in BUFFER_FULL_REASONS {
                dropped.with_label_values(&[topic, reason]);
            }
        }
        let pending = IntGauge::new("events_pending", "Events accepted but not yet delivered")?;
        registry.register(Box::new(produced.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        Ok(Self {
            produced,
            dropped,
            pending,
        })
    }

    /// Unregistered metrics, for tests and tools that do not export them.
    pub fn detached() -> Self {
        Self::register(&Registry::new()).expect("fresh registry")
    }
}

/// The cheap, cloneable handle callers publish through.
#[derive(Clone)]
pub struct EventPublisher {
    tx: mpsc::Sender<Record>,
    metrics: EventMetrics,
}

/// Owns the pump task; [`EventPump::finish`] flushes on shutdown.
pub struct EventPump {
    stop: oneshot::Sender<Duration>,
    task: tokio::task::JoinHandle<()>,
}

impl EventPublisher {
    /// Starts the pump for `sink`. Kafka connects lazily: a broker that is down now is
    /// retried in the background, and events wait for it.
    pub fn start(sink: SinkConfig, metrics: EventMetrics) -> anyhow::Result<(Self, EventPump)> {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let sink = Sink::open(sink, &metrics)?;
        let task = tokio::spawn(pump(rx, stop_rx, sink, metrics.clone()));
        Ok((
            Self { tx, metrics },
            EventPump {
                stop: stop_tx,
                task,
            },
        ))
    }

    /// Queues one event. Never waits: when the queue is full the event is dropped and
    /// counted, and `false` says so.
    pub fn publish<E: Serialize>(&self, topic: &'static str, key: &str, event: &E) -> bool {
        let payload = match serde_json::to_vec(event) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(topic, error = %e, "event does not serialize");
                self.metrics
                    .dropped
                    .with_label_values(&[topic, "serialize"])
                    .inc();
                return false;
            }
        };
        self.publish_raw(Record {
            topic,
            key: key.to_owned(),
            payload,
        })
    }

    pub fn publish_raw(&self, record: Record) -> bool {
        let topic = record.topic;
        match self.tx.try_send(record) {
            Ok(()) => {
                self.metrics.pending.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics
                    .dropped
                    .with_label_values(&[topic, "queue_full"])
                    .inc();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics
                    .dropped
                    .with_label_values(&[topic, "closed"])
                    .inc();
                false
            }
        }
    }

    pub fn metrics(&self) -> &EventMetrics {
        &self.metrics
    }
}

impl EventPump {
    /// Stops taking new events, delivers what is queued, and waits up to `deadline`
    /// for the sink to confirm.
    pub async fn finish(self, deadline: Duration) {
        let _ = self.stop.send(deadline);
        let _ = self.task.await;
    }
}

/// A bounded in-memory sink whose contents tests can read.
#[derive(Debug, Clone)]
pub struct MemorySink {
    records: Arc<Mutex<VecDeque<Record>>>,
    capacity: usize,
}

impl MemorySink {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: Arc::default(),
            capacity,
        }
    }

    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .expect("memory sink lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The events of one topic, parsed.
    pub fn events(&self, topic: &str) -> Vec<serde_json::Value> {
        self.records()
            .into_iter()
            .filter(|r| r.topic == topic)
            .filter_map(|r| serde_json::from_slice(&r.payload).ok())
            .collect()
    }

    fn push(&self, record: Record) -> bool {
        let mut records = self.records.lock().expect("memory sink lock");
        let evicted = records.len() >= self.capacity;
        if evicted {
            records.pop_front();
        }
        records.push_back(record);
        !evicted
    }
}

enum Sink {
    Kafka(ThreadedProducer<DeliveryCounter>),
    File(std::io::BufWriter<std::fs::File>),
    Memory(MemorySink),
}

struct DeliveryCounter {
    metrics: EventMetrics,
}

impl rdkafka::ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        use rdkafka::message::Message;
        self.metrics.pending.dec();
        match result {
            Ok(m) => self.metrics.produced.with_label_values(&[m.topic()]).inc(),
            Err((e, m)) => {
                tracing::warn!(topic = m.topic(), error = %e, "Kafka refused an event");
                self.metrics
                    .dropped
                    .with_label_values(&[m.topic(), "refused"])
                    .inc();
            }
        }
    }
}

impl Sink {
    fn open(config: SinkConfig, metrics: &EventMetrics) -> anyhow::Result<Self> {
        Ok(match config {
            SinkConfig::Kafka(settings) => {
                let producer = settings
                    .client_config()
                    .create_with_context(DeliveryCounter {
                        metrics: metrics.clone(),
                    })
                    .map_err(|e| anyhow::anyhow!("creating Kafka producer: {e}"))?;
                Sink::Kafka(producer)
            }
            SinkConfig::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| anyhow::anyhow!("opening event file {}: {e}", path.display()))?;
                Sink::File(std::io::BufWriter::new(file))
            }
            SinkConfig::Memory(memory) => Sink::Memory(memory),
        })
    }

    /// Hands one batch to the sink. Kafka's own queue may be full during a long
    /// outage; then we wait here (the publish queue absorbs new events meanwhile).
    async fn write(&mut self, batch: &mut Vec<Record>, metrics: &EventMetrics) {
        match self {
            Sink::Kafka(producer) => {
                for record in batch.drain(..) {
                    let mut backoff = Duration::from_millis(5);
                    loop {
                        let base = BaseRecord::to(record.topic)
                            .key(record.key.as_bytes())
                            .payload(&record.payload);
                        match producer.send(base) {
                            Ok(()) => break,
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                _,
                            )) => {
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_millis(500));
                            }
                            Err((e, _)) => {
                                tracing::warn!(topic = record.topic, error = %e, "event not produced");
                                metrics.pending.dec();
                                metrics
                                    .dropped
                                    .with_label_values(&[record.topic, "refused"])
                                    .inc();
                                break;
                            }
                        }
                    }
                }
            }
            Sink::File(out) => {
                for record in batch.drain(..) {
                    let ok = write_line(&mut *out, &record).is_ok();
                    metrics.pending.dec();
                    if ok {
                        metrics.produced.with_label_values(&[record.topic]).inc();
                    } else {
                        metrics
                            .dropped
                            .with_label_values(&[record.topic, "io"])
                            .inc();
                    }
                }
                if let Err(e) = out.flush() {
                    tracing::warn!(error = %e, "flushing event file");
                }
            }
            Sink::Memory(memory) => {
                for record in batch.drain(..) {
                    metrics.pending.dec();
                    let topic = record.topic;
                    if memory.push(record) {
                        metrics.produced.with_label_values(&[topic]).inc();
                    } else {
                        metrics.produced.with_label_values(&[topic]).inc();
                        metrics
                            .dropped
                            .with_label_values(&[topic, "memory_full"])
                            .inc();
                    }
                }
            }
        }
    }

    fn finish(&mut self, deadline: Duration) {
        if let Sink::Kafka(producer) = self
            && let Err(e) = producer.flush(deadline)
        {
            tracing::warn!(error = %e, in_flight = producer.in_flight_count(), "Kafka flush incomplete");
        }
    }
}

async fn pump(
    mut rx: mpsc::Receiver<Record>,
    mut stop: oneshot::Receiver<Duration>,
    mut sink: Sink,
    metrics: EventMetrics,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let deadline = loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break Duration::from_secs(5);
                }
                sink.write(&mut batch, &metrics).await;
            }
            deadline = &mut stop => break deadline.unwrap_or(Duration::from_secs(5)),
        }
    };
    rx.close();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        sink.write(&mut batch, &metrics).await;
    }
    let sink = tokio::task::spawn_blocking(move || {
        sink.finish(deadline);
        sink
    });
    drop(sink.await);
}

/// One file-sink line, `{"topic":..,"key":..,"event":<payload>}`. The payload is
/// already JSON (every publisher serialises it), so it is copied, not re-parsed: at
/// thousands of events a second, parsing it back into a tree cost more than making it.
fn write_line(out: &mut impl Write, record: &Record) -> std::io::Result<()> {
    out.write_all(b"{\"topic\":")?;
    serde_json::to_writer(&mut *out, record.topic)?;
    out.write_all(b",\"key\":")?;
    serde_json::to_writer(&mut *out, &record.key)?;
    out.write_all(b",\"event\":")?;
    if record.payload.is_empty() {
        out.write_all(b"null")?;
    } else {
        out.write_all(&record.payload)?;
    }
    out.write_all(b"}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Ping {
        event_type: &'static str,
        n: u32,
    }

    #[tokio::test]
    async fn memory_sink_receives_events_in_order() {
        let memory = MemorySink::new(100);
        let (publisher, pump) =
            EventPublisher::start(SinkConfig::Memory(memory.clone()), EventMetrics::detached())
                .unwrap();
        for n in 0..10 {
            assert!(publisher.publish(
                GAME_EVENTS,
                "tank-1",
                &Ping {
                    event_type: "ping",
                    n
                }
            ));
        }
        pump.finish(Duration::from_secs(1)).await;
        let got: Vec<u64> = memory
            .events(GAME_EVENTS)
            .iter()
            .map(|e| e["n"].as_u64().unwrap())
            .collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(
            publisher
                .metrics()
                .produced
                .with_label_values(&[GAME_EVENTS])
                .get(),
            10
        );
        assert_eq!(publisher.metrics().pending.get(), 0);
    }

    #[tokio::test]
    async fn file_sink_writes_json_lines() {
        let path =
            std::env::temp_dir().join(format!("tanks-events-{}.jsonl", uuid::Uuid::new_v4()));
        let (publisher, pump) =
            EventPublisher::start(SinkConfig::File(path.clone()), EventMetrics::detached())
                .unwrap();
        publisher.publish(
            AUTH_EVENTS,
            "alice",
            &Ping {
                event_type: "ping",
                n: 1,
            },
        );
        pump.finish(Duration::from_secs(1)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["topic"], AUTH_EVENTS);
        assert_eq!(line["key"], "alice");
        assert_eq!(line["event"]["event_type"], "ping");
        std::fs::remove_file(path).ok();
    }

    #[tokio::test]
    async fn publishing_after_finish_is_counted_as_dropped() {
        let (publisher, pump) = EventPublisher::start(
            SinkConfig::Memory(MemorySink::new(10)),
            EventMetrics::detached(),
        )
        .unwrap();
        pump.finish(Duration::from_millis(100)).await;
        assert!(!publisher.publish(
            GAME_EVENTS,
            "k",
            &Ping {
                event_type: "late",
                n: 0
            }
        ));
        assert_eq!(
            publisher
                .metrics()
                .dropped
                .with_label_values(&[GAME_EVENTS, "closed"])
                .get(),
            1
        );
    }
}
