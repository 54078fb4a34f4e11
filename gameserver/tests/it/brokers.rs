//! Against the real RabbitMQ and Kafka of `hack/devenv up` (these tests fail, naming
//! the service, when it is not running): the `broker` command path through a
//! per-test command queue, dead-lettering of poison commands, matchmaking events
//! becoming sessions, and the events a session leaves in Kafka, in order.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use gameserver::config::CommandPath;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tanks_core::events::{
    GAME_EVENTS, KafkaSettings, PLAYER_SESSIONS_HISTORY, SinkConfig, TANK_COORDINATES_HISTORY,
};
use tanks_core::rabbit::{self, DEAD_LETTER_REASON, Publisher};

async fn delete_queues(uri: &str, queue: &str) {
    if let Ok(conn) = rabbit::connect(uri).await
        && let Ok(channel) = conn.create_channel().await
    {
        for q in [queue.to_owned(), rabbit::dead_letter_queue(queue)] {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_path_applies_commands_through_rabbitmq_and_dead_letters_poison() {
    let uri = tanks_testkit::require_rabbitmq();
    let queue = tanks_testkit::unique("player_commands.test");
    let (mut settings, _memory) = memory_settings();
    settings.amqp_url = Some(uri.clone());
    settings.command_queue = queue.clone();
    settings.command_path = CommandPath::Broker;
    let server = start(settings).await;

    let player = Player::new(server.udp_addr).await;
    let joined = player.join("dora").await;
    let tank = joined["tank_id"].as_str().unwrap().to_owned();
    let start_pos = &joined["initial_state"]["position"];
    let target = [
        start_pos[0].as_f64().unwrap() + 4.0,
        start_pos[1].as_f64().unwrap() + 3.0,
    ];
    // A seed UDP move, published to the command queue, consumed, applied in a tick.
    player
        .send(json!({"action":"move","player_id":"dora","position":target,"seq":7}))
        .await;
    let update = player
        .expect("the brokered move", |v| shows(v, &tank, target))
        .await;
    assert_eq!(update["tanks"][0]["ack"], 7);

    // A command published by someone else in the seed's body shape works too.
    let publisher = Publisher::connect(&uri).await.unwrap();
    let next = [target[0] + 1.0, target[1]];
    publisher
        .publish_json(
            &queue,
            &json!({"player_id":"dora","command":"move","details":{"new_position":next}}),
        )
        .await
        .unwrap();
    player
        .expect("the seed-shaped command", |v| shows(v, &tank, next))
        .await;

    // Poison: dead-lettered with a reason, not retried forever.
    publisher.publish(&queue, b"{not json").await.unwrap();
    publisher
        .publish_json(
            &queue,
            &json!({"player_id":"ghost","command":"move","details":{"new_position":[1,1]}}),
        )
        .await
        .unwrap();
    let conn = rabbit::connect(&uri).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let dead = rabbit::dead_letter_queue(&queue);
    let mut reasons = Vec::new();
    for _ in 0..100 {
        if let Some(message) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let headers = message.properties.headers().clone().unwrap_or_default();
            let reason = match headers.inner().get(DEAD_LETTER_REASON) {
                Some(lapin::types::AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                other => format!("{other:?}"),
            };
            reasons.push(reason);
            if reasons.len() == 2 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(reasons.len(), 2, "both poison messages reach {dead}");
    assert!(reasons[0].contains("not a player command"), "{reasons:?}");
    assert!(reasons[1].contains("not in a game"), "{reasons:?}");
    let applied = server
        .metrics
        .commands
        .with_label_values(&["move", "broker", "applied"])
        .get();
    assert!(applied >= 2, "applied {applied}");
    server.drain_and_stop().await;
    delete_queues(&uri, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matchmaking_event_creates_a_session_once() {
    let uri = tanks_testkit::require_rabbitmq();
    let queue = tanks_testkit::unique("matchmaking_events.test");
    let (mut settings, _memory) = memory_settings();
    settings.amqp_url = Some(uri.clone());
    settings.command_queue = tanks_testkit::unique("player_commands.test");
    settings.matchmaking_queue = Some(queue.clone());
    let server = start(settings).await;
    let publisher = Publisher::connect(&uri).await.unwrap();
    publisher.declare(&queue).await.unwrap();
    let event = json!({"event_type":"new_match_created","match_details":{"match_id":"mm-1","players":["p1","p2"]}});
    publisher.publish_json(&queue, &event).await.unwrap();
    publisher.publish_json(&queue, &event).await.unwrap();
    publisher
        .publish(&queue, br#"{"event_type":"match_cancelled"}"#)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, load) = http(server.control_addr, "GET", "/v1/load", Some(SECRET), None).await;
        let created = server
            .metrics
            .commands
            .with_label_values(&["create_session", "broker", "exists"])
            .get();
        if load["sessions"] == 1 && created == 1 {
            assert_eq!(load["matches"][0]["match_id"], "mm-1");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session from the event: {load}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let player = Player::new(server.udp_addr).await;
    let (_, load) = http(server.control_addr, "GET", "/v1/load", Some(SECRET), None).await;
    assert_eq!(
        player.join("p2").await["session_id"],
        load["matches"][0]["session_id"]
    );
    server.drain_and_stop().await;
    delete_queues(&uri, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_leaves_its_events_in_kafka_in_order() {
    let brokers = tanks_testkit::require_kafka();
    let (mut settings, _memory) = memory_settings();
    settings.sink = SinkConfig::Kafka(KafkaSettings::new(brokers.clone(), "gameserver-test"));
    settings.manager.rules.shot_cooldown_ticks = 1;
    settings.manager.rules.shot_range = 5000.0;
    let server = start(settings).await;

    // Start from each partition's current end, so we read only this run's events.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", tanks_testkit::unique("gameserver-test"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for topic in [
        PLAYER_SESSIONS_HISTORY,
        TANK_COORDINATES_HISTORY,
        GAME_EVENTS,
    ] {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for partition in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .unwrap();
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Offset(high))
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let mut stream = consumer.stream();

    let a = Player::new(server.udp_addr).await;
    let b = Player::new(server.udp_addr).await;
    let (a_player, b_player) = (
        tanks_testkit::unique("kafka-a"),
        tanks_testkit::unique("kafka-b"),
    );
    let joined = a.join(&a_player).await;
    let session = joined["session_id"].as_str().unwrap().to_owned();
    let a_id = joined["tank_id"].as_str().unwrap().to_owned();
    let b_tank = b.join(&b_player).await["tank_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pos = &joined["initial_state"]["position"];
    let target = [pos[0].as_f64().unwrap() + 1.0, pos[1].as_f64().unwrap()];
    // Move, then four shots to destroy b, then both leave.
    a.send(json!({"action":"move","player_id":a_player,"position":target}))
        .await;
    for _ in 0..4 {
        a.expect("a tick", |v| v["action"] == "game_update").await;
        a.send(json!({"action":"shoot","player_id":a_player,"target":b_tank}))
            .await;
        a.expect("a tick", |v| v["action"] == "game_update").await;
    }
    a.send(json!({"action":"leave_game","player_id":a_player}))
        .await;
    a.reply().await;
    b.send(json!({"action":"leave_game","player_id":b_player}))
        .await;
    b.reply().await;
    server.drain_and_stop().await;

    let mut by_topic: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sessions_done = by_topic
            .get(PLAYER_SESSIONS_HISTORY)
            .is_some_and(|e| e.iter().any(|e| e["event_type"] == "session_removed"));
        let destroyed = by_topic
            .get(GAME_EVENTS)
            .is_some_and(|e| e.iter().any(|e| e["event_type"] == "tank_destroyed"));
        if sessions_done && destroyed && by_topic.contains_key(TANK_COORDINATES_HISTORY) {
            break;
        }
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events within 30 s")
            .unwrap()
            .unwrap();
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        if key != session {
            continue; // another test's session
        }
        let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(value["session_id"], session.as_str(), "keyed by session id");
        assert!(value["timestamp"].as_f64().unwrap() > 0.0);
        by_topic
            .entry(message.topic().to_owned())
            .or_default()
            .push(value);
    }
    let kinds = |topic: &str| -> Vec<String> {
        by_topic[topic]
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        kinds(PLAYER_SESSIONS_HISTORY),
        [
            "session_created",
            "player_joined_session",
            "player_joined_session",
            "player_left_session",
            "player_left_session",
            "session_removed"
        ]
    );
    let sessions = &by_topic[PLAYER_SESSIONS_HISTORY];
    assert_eq!(sessions[1]["tank_id"], a_id.as_str());
    assert_eq!(sessions[3]["reason"], "left");
    assert_eq!(sessions[5]["reason"], "abandoned");
    let game = kinds(GAME_EVENTS);
    assert_eq!(
        game,
        [
            "tank_shot",
            "tank_took_damage",
            "tank_shot",
            "tank_took_damage",
            "tank_shot",
            "tank_took_damage",
            "tank_shot",
            "tank_took_damage",
            "tank_destroyed"
        ]
    );
    let healths: Vec<i64> = by_topic[GAME_EVENTS]
        .iter()
        .filter_map(|e| e["health"].as_i64())
        .collect();
    assert_eq!(healths, [75, 50, 25, 0]);
    assert!(
        by_topic[GAME_EVENTS]
            .iter()
            .all(|e| e["event_type"] != "tank_shot" || e["tank_id"] == a_id.as_str())
    );
    let moved = &by_topic[TANK_COORDINATES_HISTORY];
    assert!(moved.iter().all(|e| e["event_type"] == "tank_moved"));
    let ticks: Vec<u64> = moved.iter().map(|e| e["tick"].as_u64().unwrap()).collect();
    assert!(
        ticks.windows(2).all(|w| w[0] < w[1]),
        "tank_moved batches in tick order: {ticks:?}"
    );
    assert!(moved.iter().any(|e| {
        e["moves"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["tank_id"] == a_id.as_str() && near(&m["position"], target))
    }));
}
