//! A token-bound player whose address changes (an edge reload gives its flow a new
//! upstream socket; a NAT rebinds) is told to join again, and its token moves the
//! binding; a new address without the token never moves anyone.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_player_rejoins_with_its_token_and_a_spoofer_moves_nobody() {
    let (mut settings, _memory) = memory_settings();
    settings.require_token = true;
    let signer = settings.signer.clone();
    let server = start(settings).await;
    let (token, _) = signer.issue("alice", Duration::from_secs(60));
    let join = json!({"action":"join_game","player_id":"alice","token":token});

    let before = Player::new(server.udp_addr).await;
    before.send(join.clone()).await;
    let first = before.reply().await;
    assert_eq!(first["status"], "joined");
    let tank = first["tank_id"].as_str().unwrap().to_owned();
    // A move is one step of at most 10 units (2 × max speed / tick rate): stay close.
    let spawn = &first["initial_state"]["position"];
    let at = |i: usize, d: f64| spawn[i].as_f64().unwrap() + d;
    let start = [at(0, 5.0), at(1, 5.0)];
    before
        .send(json!({"action":"move","player_id":"alice","position":start,"seq":1}))
        .await;
    before
        .expect("the first move", |u| shows(u, &tank, start))
        .await;

    // Same player, new source address: told to join again, and nothing moves.
    let after = Player::new(server.udp_addr).await;
    after
        .send(json!({"action":"move","player_id":"alice","position":[at(0, 0.0), at(1, 0.0)],"seq":2}))
        .await;
    let told = after.reply().await;
    assert_eq!(told["status"], "not_in_game");
    assert!(
        told["message"].as_str().unwrap().contains("join again"),
        "{told}"
    );
    // A stranger without the token cannot take the binding either.
    let stranger = Player::new(server.udp_addr).await;
    assert_eq!(stranger.join("alice").await["reason"], "Token required");
    let (bob_token, _) = signer.issue("bob", Duration::from_secs(60));
    stranger
        .send(json!({"action":"join_game","player_id":"alice","token":bob_token}))
        .await;
    assert_eq!(
        stranger.reply().await["reason"],
        "Token does not match player_id"
    );
    // The old address still plays: the next ten snapshots show the tank where it was.
    for _ in 0..10 {
        let update = before
            .expect("a snapshot", |v| v["action"] == "game_update")
            .await;
        assert!(shows(&update, &tank, start), "moved by a spoofer: {update}");
    }

    // With the token the new address takes over: `joined`, the same tank, where it is.
    after.send(join).await;
    let again = after.reply().await;
    assert_eq!(again["status"], "joined", "{again}");
    assert_eq!(again["tank_id"], tank.as_str());
    assert!(near(&again["initial_state"]["position"], start), "{again}");
    let target = [at(0, 0.0), at(1, 0.0)];
    after
        .send(json!({"action":"move","player_id":"alice","position":target,"seq":3}))
        .await;
    after
        .expect("the move from the new address applied", |u| {
            u["action"] == "game_update" && !shows(u, &tank, start)
        })
        .await;
    // And the old address no longer speaks for it.
    before
        .send(json!({"action":"move","player_id":"alice","position":start,"seq":4}))
        .await;
    assert_eq!(before.reply().await["status"], "not_in_game");
    server.drain_and_stop().await;
}
