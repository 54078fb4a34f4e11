//! The operator's control interface over real HTTP.

use crate::common::*;
use serde_json::json;
use tanks_core::protocol::control::{LoadReport, SessionCreated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_load_and_drain_follow_the_contract() {
    let (mut settings, _memory) = memory_settings();
    settings.manager.max_sessions = 2;
    settings.require_token = true;
    let signer = settings.signer.clone();
    let server = start(settings).await;
    let control = server.control_addr;

    assert_eq!(http(control, "GET", "/v1/load", None, None).await.0, 401);
    assert_eq!(
        http(control, "GET", "/v1/load", Some("wrong"), None)
            .await
            .0,
        401
    );
    assert_eq!(http(control, "GET", "/healthz", None, None).await.0, 200);
    assert_eq!(http(control, "GET", "/readyz", None, None).await.0, 200);

    let request = json!({"match_id":"match-1","players":["ann","ben"]});
    let (status, body) = http(
        control,
        "POST",
        "/v1/sessions",
        Some(SECRET),
        Some(request.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let created: SessionCreated = serde_json::from_value(body).unwrap();
    assert!(created.created);
    let (_, again) = http(control, "POST", "/v1/sessions", Some(SECRET), Some(request)).await;
    let again: SessionCreated = serde_json::from_value(again).unwrap();
    assert_eq!(
        (again.created, again.session_id.as_str()),
        (false, created.session_id.as_str())
    );
    let (status, body) = http(
        control,
        "POST",
        "/v1/sessions",
        Some(SECRET),
        Some(json!({"nope":1})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));

    // The match's player joins with a token and lands in the match's session.
    let (token, _) = signer.issue("ann", std::time::Duration::from_secs(60));
    let ann = Player::new(server.udp_addr).await;
    ann.send(json!({"action":"join_game","player_id":"ann","token":token}))
        .await;
    assert_eq!(ann.reply().await["session_id"], created.session_id.as_str());

    let (_, load) = http(control, "GET", "/v1/load", Some(SECRET), None).await;
    let load: LoadReport = serde_json::from_value(load).unwrap();
    assert_eq!(
        (
            load.sessions,
            load.players,
            load.session_capacity,
            load.players_per_session
        ),
        (1, 1, 2, 14)
    );
    assert_eq!(load.matches[0].match_id, "match-1");
    assert!(load.ready && !load.draining);

    http(
        control,
        "POST",
        "/v1/sessions",
        Some(SECRET),
        Some(json!({"match_id":"match-2"})),
    )
    .await;
    let (status, body) = http(
        control,
        "POST",
        "/v1/sessions",
        Some(SECRET),
        Some(json!({"match_id":"match-3"})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("full")));

    let (status, drained) = http(control, "POST", "/v1/drain", Some(SECRET), None).await;
    assert_eq!((status, drained["draining"].as_bool()), (200, Some(true)));
    assert_eq!(http(control, "GET", "/readyz", None, None).await.0, 503);
    let (status, body) = http(
        control,
        "POST",
        "/v1/sessions",
        Some(SECRET),
        Some(json!({"match_id":"match-4"})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("draining")));
    // The running match goes on while draining.
    ann.send(json!({"action":"move","player_id":"ann","position":[1,1]}))
        .await;
    ann.expect("a snapshot while draining", |v| {
        v["action"] == "game_update"
    })
    .await;
    server.drain_and_stop().await;
}
