//! Proof that the shared RabbitMQ client publishes, consumes, acks and dead-letters
//! against the real RabbitMQ of `hack/devenv`.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use tanks_core::rabbit::{self, ConsumerSpec, Outcome, Publisher};
use tokio::sync::{mpsc, oneshot};

async fn message_count(publisher: &Publisher, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    publisher
        .channel()
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("passive declare")
        .message_count()
}

async fn delete(publisher: &Publisher, queue: &str) {
    for q in [queue.to_owned(), rabbit::dead_letter_queue(queue)] {
        let _ = publisher
            .channel()
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

fn spec(url: &str, queue: &str) -> ConsumerSpec {
    ConsumerSpec {
        uri: url.to_owned(),
        queue: queue.to_owned(),
        prefetch: 8,
        tag: "roundtrip".into(),
    }
}

#[tokio::test]
async fn publish_consume_and_ack_through_real_rabbitmq() {
    let url = tanks_testkit::require_rabbitmq();
    let queue = tanks_testkit::unique("roundtrip");
    let publisher = Publisher::connect(&url).await.expect("connect to RabbitMQ");
    publisher.declare(&queue).await.expect("declare");
    for n in 0..20 {
        publisher
            .publish_json(&queue, &serde_json::json!({"n": n}))
            .await
            .expect("publish");
    }

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let consumer = tokio::spawn(rabbit::consume(
        spec(&url, &queue),
        move |delivery| {
            let seen_tx = seen_tx.clone();
            async move {
                let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
                seen_tx.send(body["n"].as_u64().unwrap()).unwrap();
                Outcome::Ack
            }
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
            .await
            .expect("all 20 messages consumed within 10 s")
            .unwrap();
        seen.push(n);
    }
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    // Acks are sent after the handler returns: give them a moment, then the queue is empty.
    let mut remaining = u32::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        remaining = message_count(&publisher, &queue).await;
        if remaining == 0 {
            break;
        }
    }
    let _ = stop_tx.send(());
    consumer.await.unwrap();
    assert_eq!(remaining, 0, "acked messages left the queue");
    delete(&publisher, &queue).await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason() {
    let url = tanks_testkit::require_rabbitmq();
    let queue = tanks_testkit::unique("poison");
    let publisher = Publisher::connect(&url).await.expect("connect to RabbitMQ");
    publisher.declare(&queue).await.expect("declare");
    publisher
        .publish(&queue, b"not json")
        .await
        .expect("publish");

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handled = Arc::new(tokio::sync::Notify::new());
    let notify = handled.clone();
    let consumer = tokio::spawn(rabbit::consume(
        spec(&url, &queue),
        move |delivery| {
            let notify = notify.clone();
            async move {
                let outcome = match serde_json::from_slice::<serde_json::Value>(&delivery.data) {
                    Ok(_) => Outcome::Ack,
                    Err(e) => Outcome::DeadLetter(format!("invalid JSON: {e}")),
                };
                notify.notify_one();
                outcome
            }
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::timeout(Duration::from_secs(10), handled.notified())
        .await
        .expect("handled");

    let dead = rabbit::dead_letter_queue(&queue);
    let mut got = None;
    for _ in 0..50 {
        got = publisher
            .channel()
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.expect("the poison message reached the dead-letter queue");
    assert_eq!(got.delivery.data, b"not json");
    let headers = got.delivery.properties.headers().clone().expect("headers");
    let reason = headers.inner().get(rabbit::DEAD_LETTER_REASON).cloned();
    match reason {
        Some(AMQPValue::LongString(reason)) => {
            assert!(reason.to_string().starts_with("invalid JSON"), "{reason}")
        }
        other => panic!("no reason header: {other:?}"),
    }
    assert_eq!(
        message_count(&publisher, &queue).await,
        0,
        "original was acked"
    );
    let _ = stop_tx.send(());
    consumer.await.unwrap();
    delete(&publisher, &queue).await;
}

async fn next_delivery(rx: &mut mpsc::UnboundedReceiver<(u64, bool)>) -> (u64, bool) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a delivery within 10 s")
        .unwrap()
}

/// Acks go in batches (`multiple`), but never over a message whose handler has not
/// finished: with the first message held, the others' acks still reach the broker (it
/// sends the fifth past a prefetch of four), and when the held one asks to be retried it
/// comes back, so nothing had acked it.
#[tokio::test]
async fn batched_acks_never_cover_a_message_still_being_handled() {
    let url = tanks_testkit::require_rabbitmq();
    let queue = tanks_testkit::unique("batched-acks");
    let publisher = Publisher::connect(&url).await.expect("connect to RabbitMQ");
    publisher.declare(&queue).await.expect("declare");
    for n in 0..5 {
        publisher
            .publish_json(&queue, &serde_json::json!({"n": n}))
            .await
            .expect("publish");
    }

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let consumer = tokio::spawn(rabbit::consume(
        ConsumerSpec {
            prefetch: 4,
            ..spec(&url, &queue)
        },
        move |delivery| {
            let (seen_tx, release) = (seen_tx.clone(), release.clone());
            async move {
                let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
                let n = body["n"].as_u64().unwrap();
                seen_tx.send((n, delivery.redelivered)).unwrap();
                if n != 0 || delivery.redelivered {
                    return Outcome::Ack;
                }
                // The first delivery of message 0 waits, then did not take effect.
                let held = release.lock().await.take();
                if let Some(rx) = held {
                    let _ = rx.await;
                }
                Outcome::Retry
            }
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut first = Vec::new();
    while first.len() < 5 {
        first.push(next_delivery(&mut seen_rx).await);
    }
    first.sort();
    assert_eq!(
        first,
        (0..5).map(|n| (n, false)).collect::<Vec<_>>(),
        "message 4 arrived only if 1-3 were acked while 0 was held"
    );
    release_tx.send(()).unwrap();
    assert_eq!(
        next_delivery(&mut seen_rx).await,
        (0, true),
        "message 0 was never acked, so it came back"
    );

    let mut remaining = u32::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        remaining = message_count(&publisher, &queue).await;
        if remaining == 0 {
            break;
        }
    }
    let _ = stop_tx.send(());
    consumer.await.unwrap();
    assert_eq!(remaining, 0);
    delete(&publisher, &queue).await;
}
