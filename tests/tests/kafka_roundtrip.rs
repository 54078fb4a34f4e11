//! Proof that the shared event publisher produces to the real Kafka of `hack/devenv`,
//! and that a consumer reads the events back keyed and in order.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tanks_core::events::{EventMetrics, EventPublisher, KafkaSettings, SinkConfig};

#[tokio::test]
async fn produce_and_consume_through_real_kafka() {
    let brokers = tanks_testkit::require_kafka();
    // A fresh topic per run: auto-created by the broker on first produce.
    let topic: &'static str = Box::leak(tanks_testkit::unique("roundtrip").into_boxed_str());
    let metrics = EventMetrics::detached();
    let (publisher, pump) = EventPublisher::start(
        SinkConfig::Kafka(KafkaSettings::new(&brokers, "roundtrip-test")),
        metrics.clone(),
    )
    .expect("producer");
    for n in 0..300u32 {
        let key = format!("tank-{}", n % 3);
        let event = serde_json::json!({"event_type": "tank_moved", "timestamp": 0.0, "n": n});
        assert!(publisher.publish(topic, &key, &event));
    }
    pump.finish(Duration::from_secs(20)).await;
    assert_eq!(
        metrics.produced.with_label_values(&[topic]).get(),
        300,
        "all acknowledged by Kafka"
    );
    assert_eq!(metrics.pending.get(), 0);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", tanks_testkit::unique("roundtrip-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    let mut stream = consumer.stream();
    let mut total = 0;
    while total < 300 {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("all 300 events consumed within 30 s")
            .expect("stream open")
            .expect("message");
        let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
        let event: serde_json::Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        assert_eq!(event["event_type"], "tank_moved");
        per_key
            .entry(key)
            .or_default()
            .push(event["n"].as_u64().unwrap());
        total += 1;
    }
    assert_eq!(per_key.len(), 3);
    for (key, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(
            ns, sorted,
            "events of {key} arrive in the order they were published"
        );
        assert_eq!(ns.len(), 100);
    }
}

#[tokio::test]
async fn events_wait_while_kafka_is_unreachable() {
    // Nothing listens on port 1: the producer keeps the events instead of dropping them.
    let metrics = EventMetrics::detached();
    let (publisher, pump) = EventPublisher::start(
        SinkConfig::Kafka(KafkaSettings::new("127.0.0.1:1", "outage-test")),
        metrics.clone(),
    )
    .expect("producer starts without a broker");
    for n in 0..50 {
        assert!(publisher.publish("outage", "k", &serde_json::json!({"n": n})));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metrics.pending.get(), 50, "held, waiting for the broker");
    assert_eq!(
        metrics
            .dropped
            .with_label_values(&["outage", "refused"])
            .get(),
        0
    );
    pump.finish(Duration::from_millis(200)).await;
}
