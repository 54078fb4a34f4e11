//! SIGTERM drains the real binary: no new sessions, running ones may finish within
//! the deadline, the rest are ended (players told), and the process exits cleanly.

use std::net::{SocketAddr, TcpListener, UdpSocket as StdUdp};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

fn free_port() -> u16 {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    // The same number must be free for UDP too (the play port).
    StdUdp::bind(("127.0.0.1", port))
        .map(|_| port)
        .unwrap_or_else(|_| free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_matches_finish_then_ends_the_rest() {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let events = std::env::temp_dir().join(format!(
        "{}.jsonl",
        tanks_testkit::unique("gameserver-drain")
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gameserver"))
        .args(["--udp-addr", &addr(ports[0]).to_string()])
        .args(["--tcp-addr", &addr(ports[1]).to_string()])
        .args(["--control-addr", &addr(ports[2]).to_string()])
        .args(["--metrics-addr", &addr(ports[3]).to_string()])
        .args(["--drain-seconds", "6"])
        .args(["--max-speed", "600"])
        .args(["--events-file", events.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let control = addr(ports[2]);
    let up = Instant::now();
    while http_ok(control).await.is_none() {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "the game server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A match that can finish (elimination, two players), and an open seed session that cannot.
    let match_request = json!({"match_id":"drain-1","players":["ann","ben"],"mode":"elimination"});
    assert_eq!(
        http(
            control,
            "POST",
            "/v1/sessions",
            Some(SECRET),
            Some(match_request)
        )
        .await
        .0,
        200
    );
    let ann = Player::new(addr(ports[0])).await;
    let ben = Player::new(addr(ports[0])).await;
    let seed = Player::new(addr(ports[0])).await;
    assert_eq!(ann.join("ann").await["status"], "joined");
    assert_eq!(ben.join("ben").await["status"], "joined");
    assert_eq!(seed.join("seedy").await["status"], "joined");

    let term = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        http(control, "GET", "/readyz", None, None).await.0,
        503,
        "draining is not ready"
    );
    let (status, body) = http(
        control,
        "POST",
        "/v1/sessions",
        Some(SECRET),
        Some(json!({"match_id":"drain-2"})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("draining")));

    // Ann finishes the match while the server drains: they meet in the middle (the
    // teams spawn out of range) and four hits destroy Ben.
    let shooting = async {
        loop {
            ann.send(json!({"action":"move","player_id":"ann","position":[480, 500]}))
                .await;
            ben.send(json!({"action":"move","player_id":"ben","position":[520, 500]}))
                .await;
            ann.send(json!({"action":"shoot","player_id":"ann"})).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let over = tokio::select! {
        over = ann.expect("game_over", |v| v["action"] == "game_over") => over,
        _ = shooting => unreachable!(),
    };
    assert_eq!(
        (over["reason"].as_str(), over["winner"].as_u64()),
        (Some("completed"), Some(0))
    );
    assert!(
        term.elapsed() < Duration::from_secs(6),
        "the match ended by the rules, before the deadline"
    );

    // The seed session cannot end by itself: the deadline ends it.
    let ended = seed
        .expect("game_over at the deadline", |v| v["action"] == "game_over")
        .await;
    assert_eq!(ended["reason"], "server_shutdown");
    let exited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exited.success(), "exit status {exited:?}");
    assert!(
        term.elapsed() < Duration::from_secs(12),
        "exited {:?} after SIGTERM",
        term.elapsed()
    );

    let written = std::fs::read_to_string(&events).unwrap();
    let removed: Vec<serde_json::Value> = written
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|l| l["event"].clone())
        .filter(|e| e["event_type"] == "session_removed")
        .collect();
    let reasons: Vec<&str> = removed
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["completed", "server_shutdown"],
        "events flushed before exit"
    );
    let _ = std::fs::remove_file(&events);
}

async fn http_ok(addr: SocketAddr) -> Option<()> {
    tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
}
