//! Audit events on the real Kafka (`hack/devenv up`): each outcome lands on
//! `auth_events`, keyed by user, with the agreed fields.

use std::time::{Duration, Instant};

use crate::common::{config, login, metrics, once, register, start, username};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use tanks_core::events::AUTH_EVENTS;
use tanks_core::protocol::auth::Request;

const PASSWORD: &str = "correct horse battery";

/// A consumer in a fresh group, positioned at the current end of every partition of
/// `auth_events`, so it sees exactly what happens from now on.
fn consumer_at_end(brokers: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", tanks_testkit::unique("authserver-test"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(AUTH_EVENTS), Duration::from_secs(10))
        .expect("auth_events metadata");
    let topic = &metadata.topics()[0];
    assert!(
        !topic.partitions().is_empty(),
        "topic {AUTH_EVENTS} has no partitions: create it (hack/devenv up does)"
    );
    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        let (_, high) = consumer
            .fetch_watermarks(AUTH_EVENTS, partition.id(), Duration::from_secs(10))
            .expect("watermarks");
        assignment
            .add_partition_offset(AUTH_EVENTS, partition.id(), Offset::Offset(high))
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// Events keyed `key`, until `count` arrived (or 30 s passed), with their partitions.
fn collect(consumer: &BaseConsumer, key: &str, count: usize) -> Vec<(i32, Value)> {
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while found.len() < count && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("consume");
        if message.key() != Some(key.as_bytes()) {
            continue;
        }
        let payload: Value =
            serde_json::from_slice(message.payload().unwrap()).expect("JSON event");
        found.push((message.partition(), payload));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_audited_on_auth_events() {
    let brokers = tanks_testkit::require_kafka();
    let consumer = tokio::task::block_in_place(|| consumer_at_end(&brokers));
    let mut cfg = config();
    cfg.kafka_brokers = Some(brokers);
    let server = start(cfg).await;

    let name = username("Kafka");
    let started = tanks_core::events::timestamp_now();
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    let token = once(&server, &login(&name, PASSWORD)).await.token.unwrap();
    assert!(
        !once(&server, &login(&name, "wrong-password"))
            .await
            .is_success()
    );
    assert!(once(&server, &Request::Logout { token }).await.is_success());

    let key = name.to_lowercase();
    let events = tokio::task::block_in_place(|| collect(&consumer, &key, 4));
    let types: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "user_registered",
            "user_logged_in",
            "user_login_failed",
            "user_logged_out"
        ]
    );
    assert!(
        events.iter().all(|(p, _)| *p == events[0].0),
        "one user's events share a partition"
    );
    let mut last = started - 1.0;
    for (_, event) in &events {
        assert_eq!(event["username"], name.as_str(), "{event}");
        assert_eq!(event["source_ip"], "127.0.0.1", "{event}");
        let ts = event["timestamp"].as_f64().expect("numeric timestamp");
        assert!(
            ts >= last && ts < started + 60.0,
            "timestamps in order: {event}"
        );
        last = ts;
        let text = event.to_string();
        assert!(
            !text.contains(PASSWORD) && !text.contains("wrong-password"),
            "no secrets: {text}"
        );
    }
    let (login_event, failed, logout) = (&events[1].1, &events[2].1, &events[3].1);
    assert!(
        login_event["token_id"]
            .as_str()
            .is_some_and(|j| j.len() == 32),
        "{login_event}"
    );
    assert!(login_event["expires_at"].as_u64().is_some());
    assert_eq!(failed["reason"], "wrong_password");
    assert_eq!(logout["token_id"], login_event["token_id"]);

    // The broker's acknowledgements reach the counter after the consumer may already
    // have read the events: wait for it, with a deadline.
    let wanted = "authserver_events_produced_total{topic=\"auth_events\"} 4";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(&server).await;
        if text.contains(wanted) {
            break;
        }
        assert!(Instant::now() < deadline, "{wanted} within 10 s: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kafka_never_blocks_requests_and_events_wait() {
    let mut cfg = config();
    // Nothing listens here: the producer keeps the events and retries.
    cfg.kafka_brokers = Some("127.0.0.1:1".into());
    cfg.shutdown_grace_secs = 1;
    let server = start(cfg).await;
    let name = username("offline");
    let t = Instant::now();
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    assert!(once(&server, &login(&name, PASSWORD)).await.is_success());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "requests did not wait for Kafka: {:?}",
        t.elapsed()
    );
    // Both events wait in the buffer (none delivered, none dropped).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics(&server).await;
        if text.contains("authserver_events_pending 2") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "2 events pending within 10 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The buffer-full losses are exported from the start, at 0.
    assert!(
        text.lines()
            .any(|l| l.starts_with("authserver_events_dropped_total{")
                && l.contains("queue_full")
                && l.contains("auth_events")
                && l.ends_with(" 0")),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("authserver_events_dropped_total{") && !l.ends_with(" 0")),
        "{text}"
    );
    server.shutdown().await;
}
