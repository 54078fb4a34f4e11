//! The matchmaking consumer against real RabbitMQ and the real kube-apiserver: events
//! become Matches, a redelivered event makes no second Match, malformed ones are
//! dead-lettered with the reason.

use crate::common;

use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use tanks_core::rabbit::{DEAD_LETTER_REASON, Publisher, dead_letter_queue};
use tanks_operator::api::Match;
use tanks_operator::matches::consumer::{self, ConsumerConfig};
use tanks_operator::matches::naming::match_name;

#[tokio::test]
async fn events_become_matches_once_and_bad_ones_are_dead_lettered() {
    let amqp = tanks_testkit::require_rabbitmq();
    let client = common::client().await;
    common::apply_crds(&client).await;
    let ns = common::namespace(&client, "match-consumer").await;
    let queue = tanks_testkit::unique("matchmaking-events");

    let publisher = Publisher::connect(&amqp).await.expect("publisher");
    publisher.declare(&queue).await.expect("declare");
    let too_many: Vec<String> = (0..1001).map(|i| format!("p{i}")).collect();
    let bodies: Vec<Vec<u8>> = vec![
        // The seed's body, with a match id that is not a valid name.
        br#"{"event_type":"new_match_created","match_details":{"match_id":"Seed_Match.1","players":["a","b"],"map":"desert"}}"#.to_vec(),
        // Ours, published twice: one Match.
        br#"{"event_type":"new_match_created","event_id":"ev-1","match_details":{"players":["c"],"fleet":"blue","mode":"7v7"}}"#.to_vec(),
        br#"{"event_type":"new_match_created","event_id":"ev-1","match_details":{"players":["c"],"fleet":"blue","mode":"7v7"}}"#.to_vec(),
        b"not json".to_vec(),
        br#"{"event_type":"match_cancelled","event_id":"ev-2"}"#.to_vec(),
        // Valid JSON the API server refuses (more players than the CRD allows).
        serde_json::to_vec(&serde_json::json!({"event_type":"new_match_created","event_id":"ev-3","match_details":{"players": too_many}})).unwrap(),
    ];
    for body in &bodies {
        publisher.publish(&queue, body).await.expect("publish");
    }

    let config = ConsumerConfig {
        amqp_uri: amqp.clone(),
        queue: queue.clone(),
        namespace: ns.clone(),
        default_fleet: Some("tanks".into()),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(consumer::run(client.clone(), config, async {
        let _ = stop_rx.await;
    }));

    let matches: Api<Match> = Api::namespaced(client.clone(), &ns);
    let dead = dead_letter_queue(&queue);
    let channel = publisher.channel();
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let list = loop {
        while let Some(msg) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            let header = msg
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(DEAD_LETTER_REASON).cloned());
            match header {
                Some(AMQPValue::LongString(s)) => reasons.push(s.to_string()),
                other => panic!("dead letter without a reason: {other:?}"),
            }
        }
        let list = matches.list(&ListParams::default()).await.expect("list");
        if list.items.len() >= 2 && reasons.len() >= 3 {
            break list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "matches {} dead letters {reasons:?}",
            list.items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every delivery settled, the duplicate of ev-1 included: the consumer stopped and
    // nothing waits in the work queue. Then the count of Matches is final.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("consumer stops")
        .unwrap();
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 0);
    let again = matches.list(&ListParams::default()).await.expect("list");
    assert_eq!(again.items.len(), 2, "exactly one Match per event id");

    let seed = list
        .items
        .iter()
        .find(|m| m.spec.source_event_id == "Seed_Match.1")
        .expect("seed match");
    assert_eq!(
        seed.metadata.name.as_deref(),
        Some(match_name("Seed_Match.1").as_str())
    );
    assert_eq!(seed.spec.fleet, "tanks");
    assert_eq!(seed.spec.players, ["a", "b"]);
    assert_eq!(seed.spec.map.as_deref(), Some("desert"));
    let ours = list
        .items
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some("ev-1"))
        .expect("ev-1");
    assert_eq!(ours.spec.fleet, "blue");
    assert_eq!(ours.spec.mode.as_deref(), Some("7v7"));

    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("not a matchmaking event")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("unsupported event_type")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("the API server refused the Match")),
        "{reasons:?}"
    );

    for q in [queue.as_str(), dead.as_str()] {
        let _ = channel.queue_delete(q.into(), Default::default()).await;
    }
    common::delete_namespace(&client, &ns).await;
}

/// The regression of the fault tests: a Match played and deleted after its TTL, then
/// its event delivered again (a lost ack redelivered after a broker restart, a
/// matchmaker's republish). Without the consumer's record it became a second match.
#[tokio::test]
async fn an_event_redelivered_after_its_match_was_deleted_starts_no_second_match() {
    let amqp = tanks_testkit::require_rabbitmq();
    let client = common::client().await;
    common::apply_crds(&client).await;
    let ns = common::namespace(&client, "match-redelivered").await;
    let queue = tanks_testkit::unique("matchmaking-events");
    let publisher = Publisher::connect(&amqp).await.expect("publisher");
    publisher.declare(&queue).await.expect("declare");
    let body = br#"{"event_type":"new_match_created","event_id":"ev-once","match_details":{"players":["a"]}}"#;
    let config = ConsumerConfig {
        amqp_uri: amqp.clone(),
        queue: queue.clone(),
        namespace: ns.clone(),
        default_fleet: Some("tanks".into()),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(consumer::run(client.clone(), config, async {
        let _ = stop_rx.await;
    }));
    let matches: Api<Match> = Api::namespaced(client.clone(), &ns);
    publisher.publish(&queue, body).await.expect("publish");
    common::eventually(30, "the Match of ev-once", || async {
        matches.get_opt("ev-once").await.ok().flatten().map(|_| ())
    })
    .await;
    // Played and reaped (what the TTL does), then the same event again.
    matches
        .delete("ev-once", &Default::default())
        .await
        .expect("delete");
    common::eventually(30, "the Match gone", || async {
        matches
            .get_opt("ev-once")
            .await
            .ok()
            .and_then(|m| m.is_none().then_some(()))
    })
    .await;
    publisher
        .publish(&queue, body)
        .await
        .expect("publish again");
    // Settled once the queue is empty with the consumer stopped (unsettled deliveries
    // go back to the queue when its channel closes).
    let channel = publisher.channel();
    let passive = || async {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    };
    common::eventually(30, "the second delivery taken", || async {
        (passive().await == 0).then_some(())
    })
    .await;
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("consumer stops")
        .unwrap();
    assert_eq!(passive().await, 0, "the second delivery was settled");
    assert!(
        matches.get_opt("ev-once").await.expect("get").is_none(),
        "the redelivered event started a second match"
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = channel
        .queue_delete(
            dead_letter_queue(&queue).as_str().into(),
            Default::default(),
        )
        .await;
    common::delete_namespace(&client, &ns).await;
}
