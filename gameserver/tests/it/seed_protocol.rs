//! A seed client's conversation over real UDP and TCP sockets, against a server
//! started in this process: the seed's actions, replies and error strings.

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_client_joins_moves_shoots_and_leaves() {
    let (settings, memory) = memory_settings();
    let server = start(settings).await;
    let alice = Player::new(server.udp_addr).await;
    let bob = Player::new(server.udp_addr).await;

    let joined = alice.join("alice").await;
    assert_eq!(joined["status"], "joined");
    let tank = joined["tank_id"].as_str().unwrap().to_owned();
    assert_eq!(joined["initial_state"]["id"], tank.as_str());
    assert_eq!(joined["initial_state"]["health"], 100);
    assert_eq!(
        joined["initial_state"]["position"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let session = joined["session_id"].as_str().unwrap().to_owned();
    let joined_bob = bob.join("bob").await;
    assert_eq!(
        joined_bob["session_id"],
        session.as_str(),
        "seed players share a session"
    );
    assert_eq!(alice.join("alice").await["status"], "already_in_session");

    let start = joined["initial_state"]["position"].clone();
    let target = [
        start[0].as_f64().unwrap() + 2.0,
        start[1].as_f64().unwrap() + 1.0,
    ];
    alice
        .send(json!({"action":"move","player_id":"alice","position":target}))
        .await;
    // Bob sees Alice's move in a game_update: the seed's broadcast, now per tick.
    let update = bob
        .expect("Alice's move", |v| shows(v, &tank, target))
        .await;
    assert!(update["seq"].as_u64().unwrap() >= 1);

    alice
        .send(json!({"action":"shoot","player_id":"alice"}))
        .await;
    // Inputs apply at the next tick; let one pass before leaving.
    let seq = alice
        .expect("a snapshot", |v| v["action"] == "game_update")
        .await["seq"]
        .as_u64()
        .unwrap();
    alice
        .expect("the next snapshot", |v| v["seq"].as_u64() > Some(seq))
        .await;
    alice
        .send(json!({"action":"leave_game","player_id":"alice"}))
        .await;
    let left = alice.reply().await;
    assert_eq!(
        left,
        json!({"status":"left_game","message":"You have left the game."})
    );
    alice
        .send(json!({"action":"leave_game","player_id":"alice"}))
        .await;
    assert_eq!(
        alice.reply().await,
        json!({"status":"not_in_game","message":"You are not currently in a game."})
    );
    bob.send(json!({"action":"leave_game","player_id":"bob"}))
        .await;
    bob.reply().await;
    server.drain_and_stop().await;

    let history = memory.events(tanks_core::events::PLAYER_SESSIONS_HISTORY);
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "session_created",
            "player_joined_session",
            "player_joined_session",
            "player_left_session",
            "player_left_session",
            "session_removed"
        ]
    );
    assert!(
        history
            .iter()
            .all(|e| e["session_id"] == session.as_str() && e["timestamp"].as_f64().unwrap() > 0.0)
    );
    let shots = memory.events(tanks_core::events::GAME_EVENTS);
    assert_eq!(shots[0]["event_type"], "tank_shot");
    assert_eq!(shots[0]["tank_id"], tank.as_str());
    let moves = memory.events(tanks_core::events::TANK_COORDINATES_HISTORY);
    assert!(moves.iter().any(|e| {
        e["event_type"] == "tank_moved"
            && e["moves"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["tank_id"] == tank.as_str() && near(&m["position"], target))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_get_the_seed_errors_and_do_not_hurt() {
    let (settings, _memory) = memory_settings();
    let server = start(settings).await;
    let client = Player::new(server.udp_addr).await;
    let cases: &[(&[u8], &str)] = &[
        (b"", "Empty JSON payload"),
        (
            b"\xff\xfe\xfd",
            "Invalid character encoding. UTF-8 expected.",
        ),
        (b"{\"action\": ", "Invalid JSON format"),
        (br#"{"action":"fly","player_id":"x"}"#, "Unknown action"),
        (
            br#"{"action":"move","player_id":"x","position":"north"}"#,
            "Invalid field types",
        ),
    ];
    for (bytes, message) in cases {
        client.send_raw(bytes).await;
        assert_eq!(
            client.reply().await,
            json!({"status":"error","message":message}),
            "{bytes:?}"
        );
    }
    client
        .send(json!({"action":"move","player_id":"nobody","position":[1,2]}))
        .await;
    assert_eq!(client.reply().await["status"], "not_in_game");
    // Oversized and random datagrams: no panic, the server still answers.
    client.send_raw(&vec![b'{'; 60_000]).await;
    client.reply().await;
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 97))
            .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(17)) as u8)
            .collect();
        client.send_raw(&junk).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = Player::new(server.udp_addr).await;
    assert_eq!(fresh.join("still-alive").await["status"], "joined");
    server.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_is_rate_limited() {
    let (mut settings, _memory) = memory_settings();
    settings.rate_limit = gameserver::rate_limit::RateLimit {
        per_second: 10.0,
        burst: 10.0,
    };
    let server = start(settings).await;
    let flooder = Player::new(server.udp_addr).await;
    for _ in 0..500 {
        flooder.send_raw(b"").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let limited = server
        .metrics
        .bad_datagrams
        .with_label_values(&["rate_limited"])
        .get();
    assert!(limited >= 480, "rate limited {limited}");
    let other = Player::new(server.udp_addr).await;
    assert_eq!(
        other.join("polite").await["status"],
        "joined",
        "other sources are unaffected"
    );
    server.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_can_be_required() {
    let (mut settings, _memory) = memory_settings();
    settings.require_token = true;
    let signer = settings.signer.clone();
    let server = start(settings).await;
    let player = Player::new(server.udp_addr).await;
    assert_eq!(
        player.join("alice").await,
        json!({"status":"join_failed","reason":"Token required"})
    );
    let (token, _) = signer.issue("alice", Duration::from_secs(60));
    player
        .send(json!({"action":"join_game","player_id":"mallory","token":token}))
        .await;
    assert_eq!(
        player.reply().await["reason"],
        "Token does not match player_id"
    );
    player
        .send(json!({"action":"join_game","player_id":"alice","token":"garbage.token"}))
        .await;
    assert_eq!(player.reply().await["reason"], "Invalid or expired token");
    player
        .send(json!({"action":"join_game","player_id":"alice","token":token}))
        .await;
    assert_eq!(player.reply().await["status"], "joined");
    // Someone else's socket cannot move Alice's tank.
    let spoofer = Player::new(server.udp_addr).await;
    spoofer
        .send(json!({"action":"move","player_id":"alice","position":[1,1]}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server
            .metrics
            .bad_datagrams
            .with_label_values(&["wrong_source"])
            .get(),
        1
    );
    server.drain_and_stop().await;
}

/// A real TCP listener speaking the auth server's protocol (one JSON line in, one
/// out), so LOGIN is exercised over real sockets without this crate depending on
/// the auth server's.
async fn auth_listener() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                BufReader::new(read).read_line(&mut line).await.unwrap();
                let request: serde_json::Value = serde_json::from_str(&line).unwrap();
                let reply = if request["action"] == "login" && request["password"] == "right" {
                    json!({"status":"success","message":"Login successful","session_id":"tok123","username":request["username"]})
                } else {
                    json!({"status":"failure","message":"Authentication failed: invalid username or password"})
                };
                write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_commands_answer_like_the_seed() {
    let (mut settings, _memory) = memory_settings();
    settings.auth_addr = auth_listener().await.to_string();
    let server = start(settings).await;
    let udp = Player::new(server.udp_addr).await;
    let joined = udp.join("carol").await;
    let tank = joined["tank_id"].as_str().unwrap().to_owned();

    let stream = tokio::net::TcpStream::connect(server.tcp_addr)
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut ask = async |line: &str| {
        write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        lines.next_line().await.unwrap().unwrap()
    };
    assert_eq!(ask("MOVE 1 2").await, "UNAUTHORIZED You must login first");
    assert_eq!(ask("SHOOT").await, "UNAUTHORIZED You must login first");
    assert_eq!(ask("").await, "EMPTY_COMMAND");
    assert_eq!(ask("DANCE").await, "UNKNOWN_COMMAND");
    assert_eq!(
        ask("LOGIN carol wrong").await,
        "LOGIN_FAILURE Authentication failed: invalid username or password"
    );
    assert_eq!(
        ask("LOGIN carol right").await,
        "LOGIN_SUCCESS Login successful Token: tok123"
    );
    assert_eq!(ask("MOVE").await, "MOVE_ERROR Missing coordinates");
    assert_eq!(ask("MOVE a b").await, "MOVE_ERROR Invalid coordinates");
    let start = &joined["initial_state"]["position"];
    let target = [start[0].as_f64().unwrap() + 3.0, start[1].as_f64().unwrap()];
    assert_eq!(
        ask(&format!("MOVE {} {}", target[0], target[1])).await,
        "COMMAND_RECEIVED MOVE"
    );
    udp.expect("the TCP move in a snapshot", |v| shows(v, &tank, target))
        .await;
    assert_eq!(ask("SHOOT").await, "COMMAND_RECEIVED SHOOT");
    server.drain_and_stop().await;
}
