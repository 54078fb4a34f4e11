//! Proof that the shared event publisher produces to the real Kafka of `hack/devenv`,
//! and that a consumer reads the events back keyed and in order.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tanks_core::events::{EventMetrics, EventPublisher, KafkaSettings, SinkConfig};

/// Polls `condition` every 20 ms; fails naming `what` after 10 s.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

/// Consumes `count` events of `topic` from the start, in a fresh group.
async fn consume_all(brokers: &str, topic: &str, count: usize) -> Vec<serde_json::Value> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", tanks_testkit::unique("outage-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut stream = consumer.stream();
    let mut events = Vec::new();
    while events.len() < count {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("events consumed within 30 s")
            .expect("stream open")
            .expect("message");
        events.push(serde_json::from_slice(msg.payload().unwrap()).unwrap());
    }
    events
}

#[tokio::test]
async fn events_published_during_an_outage_are_delivered_when_kafka_returns() {
    let brokers = tanks_testkit::require_kafka();
    // The producer is pointed at a port where Kafka is not (yet) reachable...
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let topic: &'static str = Box::leak(tanks_testkit::unique("outage").into_boxed_str());
    let metrics = EventMetrics::detached();
    let (publisher, pump) = EventPublisher::start(
        SinkConfig::Kafka(KafkaSettings::new(
            format!("127.0.0.1:{port}"),
            "outage-test",
        )),
        metrics.clone(),
    )
    .expect("producer starts without a broker");
    for n in 0..100 {
        assert!(publisher.publish(topic, "k", &serde_json::json!({"event_type": "e", "n": n})));
    }
    wait_until("100 events held while Kafka is away", || {
        metrics.pending.get() == 100
    })
    .await;
    assert_eq!(metrics.produced.with_label_values(&[topic]).get(), 0);

    // ...then Kafka "returns": a forwarder to the real broker opens on that port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let upstream = brokers.split(',').next().unwrap().to_owned();
    let forwarder = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    pump.finish(Duration::from_secs(30)).await;
    forwarder.abort();
    assert_eq!(
        metrics.produced.with_label_values(&[topic]).get(),
        100,
        "all delivered after the outage"
    );
    assert_eq!(metrics.pending.get(), 0);
    let ns: Vec<u64> = consume_all(&brokers, topic, 100)
        .await
        .iter()
        .map(|e| e["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ns,
        (0..100).collect::<Vec<_>>(),
        "in order, none lost, none doubled"
    );
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
    wait_until("50 events held, waiting for the broker", || {
        metrics.pending.get() == 50
    })
    .await;
    assert_eq!(
        metrics
            .dropped
            .with_label_values(&["outage", "refused"])
            .get(),
        0
    );
    pump.finish(Duration::from_millis(200)).await;
}
