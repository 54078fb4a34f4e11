//! A logged-out token stops joining games before it expires: the real `authserver` and
//! `gameserver` binaries sharing the real Redis (under a key prefix of this run's own)
//! and a token key. Alice logs in and out; her token, still unexpired, is refused at
//! `join_game` with the revocation's message, while Bob's token joins. Alice's next
//! login joins again.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};

/// The message the game server gives a revoked token (gameserver::revocation).
const MSG_TOKEN_REVOKED: &str = "Token revoked: you logged out, log in again";

fn start(name: &str, args: &[String]) -> KillOnDrop {
    let child = Command::new(workspace_binary(name))
        .args(args)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("REDIS_URL")
        .env_remove("GAMESERVER_KAFKA_BROKERS")
        .env(
            "AUTH_EVENTS_FILE",
            std::env::temp_dir().join(format!("revocation-auth-{}.jsonl", std::process::id())),
        )
        .env(
            "GAMESERVER_EVENTS_FILE",
            std::env::temp_dir().join(format!("revocation-game-{}.jsonl", std::process::id())),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    KillOnDrop(child)
}

fn wait_for_tcp(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing on {port} after 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request line to the auth server, its answer.
fn auth(port: u16, request: Value) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("auth server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    writeln!(stream, "{request}").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn login(port: u16, user: &str) -> String {
    let password = "correct horse battery staple";
    let registered = auth(
        port,
        json!({"action": "register", "username": user, "password": password}),
    );
    assert!(
        registered["status"] == "success" || registered["reason"] == "username_taken",
        "{registered}"
    );
    let answer = auth(
        port,
        json!({"action": "login", "username": user, "password": password}),
    );
    assert_eq!(answer["status"], "success", "{answer}");
    answer["token"].as_str().expect("a token").to_owned()
}

/// Sends `join_game` for `user` with `token`, returns the join's answer (snapshots
/// skipped).
fn join(game: u16, user: &str, token: &str) -> Value {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = json!({"action": "join_game", "player_id": user, "token": token});
    socket
        .send_to(request.to_string().as_bytes(), ("127.0.0.1", game))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut buf).expect("an answer to join_game");
        let answer: Value = serde_json::from_slice(&buf[..n]).expect("JSON");
        if answer["status"] != "game_update" {
            return answer;
        }
    }
}

#[test]
fn a_logged_out_token_is_refused_at_join_while_others_join() {
    let redis = tanks_testkit::require_redis();
    let prefix = format!("{}:", tanks_testkit::unique("revocation"));
    let key = std::env::temp_dir().join(format!("revocation-key-{}", std::process::id()));
    std::fs::write(&key, tanks_testkit::unique("token-key-of-this-test-run-")).unwrap();
    let key = key.display().to_string();
    let [auth_port, auth_metrics, udp, tcp, control, game_metrics] = [(); 6].map(|_| free_port());
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let _auth = start(
        "authserver",
        &[
            "--listen-addr".into(),
            addr(auth_port),
            "--metrics-addr".into(),
            addr(auth_metrics),
            "--redis-url".into(),
            redis.clone(),
            "--redis-prefix".into(),
            prefix.clone(),
            "--token-key-file".into(),
            key.clone(),
        ],
    );
    let _game = start(
        "gameserver",
        &[
            "--udp-addr".into(),
            addr(udp),
            "--tcp-addr".into(),
            addr(tcp),
            "--control-addr".into(),
            addr(control),
            "--metrics-addr".into(),
            addr(game_metrics),
            "--token-key-file".into(),
            key,
            "--require-token".into(),
            "true".into(),
            "--redis-url".into(),
            redis,
            "--redis-prefix".into(),
            prefix,
        ],
    );
    wait_for_tcp(auth_port);
    wait_for_tcp(tcp);

    let alice = tanks_testkit::unique("alice");
    let bob = tanks_testkit::unique("bob");
    let old = login(auth_port, &alice);
    let bobs = login(auth_port, &bob);
    let out = auth(auth_port, json!({"action": "logout", "token": old}));
    assert_eq!(out["status"], "success", "{out}");

    let refused = join(udp, &alice, &old);
    assert_eq!(refused["status"], "join_failed", "{refused}");
    assert_eq!(refused["reason"], MSG_TOKEN_REVOKED, "{refused}");
    let joined = join(udp, &bob, &bobs);
    assert_eq!(joined["status"], "joined", "{joined}");
    // Logged in again: a new token, not revoked.
    let new = login(auth_port, &alice);
    let joined = join(udp, &alice, &new);
    assert_eq!(joined["status"], "joined", "{joined}");
}
