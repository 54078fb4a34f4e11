//! The wire protocol against a real server on the embedded store: the seed's shapes,
//! every bad input, limits, timeouts, events and shutdown.

use std::time::{Duration, Instant};

use crate::common::{Client, config, login, metrics, once, register, start, username};
use serde_json::{Value, json};
use tanks_core::protocol::auth::{
    AuthEvent, AuthEventType, LOGIN_FAILED_PREFIX, MSG_BAD_CREDENTIALS, Request, Status,
};
use tanks_core::token::TokenSigner;

const PASSWORD: &str = "correct horse battery";

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_client_shapes_one_request_per_connection() {
    let server = start(config()).await;
    let name = username("Seed");

    // The seed client: connect, one JSON line, read one line, close.
    let mut c = Client::connect(&server).await;
    let reply = c
        .call_raw(
            format!(r#"{{"action": "register", "username": "{name}", "password": "{PASSWORD}"}}"#)
                .as_bytes(),
        )
        .await;
    assert_eq!(reply["status"], "success", "{reply}");
    drop(c);

    let mut c = Client::connect(&server).await;
    let reply = c
        .call_raw(
            format!(
                "{{\"action\":\"login\",\"username\":\"{name}\",\"password\":\"{PASSWORD}\"}}\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(
        keys(&reply),
        [
            "expires_at",
            "message",
            "session_id",
            "status",
            "token",
            "username"
        ]
    );
    assert_eq!(reply["status"], "success");
    assert_eq!(reply["session_id"], reply["token"]);
    assert_eq!(reply["username"], name.as_str());
    let token = reply["session_id"].as_str().unwrap();
    // The game server checks tokens locally with the shared crate.
    let claims = TokenSigner::from_key_file(None)
        .unwrap()
        .0
        .verify(token)
        .unwrap();
    assert_eq!(claims.sub, name);
    assert_eq!(Some(claims.exp), reply["expires_at"].as_u64());
    drop(c);

    let mut c = Client::connect(&server).await;
    let reply = c
        .call_raw(
            format!(r#"{{"action":"login","username":"{name}","password":"nope-nope"}}"#)
                .as_bytes(),
        )
        .await;
    assert_eq!(reply["status"], "failure");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .starts_with(LOGIN_FAILED_PREFIX),
        "{reply}"
    );

    let reply = Client::connect(&server).await.call_raw(b"not json\n").await;
    assert_eq!(
        reply,
        json!({"status":"error","message":"Invalid JSON format","reason":"bad_request"})
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_on_one_connection_including_pipelined() {
    let server = start(config()).await;
    let name = username("many");
    let mut c = Client::connect(&server).await;
    assert!(c.call(&register(&name, PASSWORD)).await.is_success());
    let token = c.call(&login(&name, PASSWORD)).await.token.unwrap();
    assert!(
        c.call(&Request::Verify {
            token: token.clone()
        })
        .await
        .is_success()
    );

    // Three requests in one write: three answers, in order.
    let batch = [
        Request::Verify {
            token: token.clone(),
        }
        .to_line(),
        "{\"action\":\"dance\"}\n".to_owned(),
        Request::Logout {
            token: token.clone(),
        }
        .to_line(),
    ]
    .concat();
    c.send_raw(batch.as_bytes()).await;
    assert_eq!(c.read().await["message"], "Token is valid");
    assert_eq!(c.read().await["message"], "Unknown or missing action");
    assert_eq!(c.read().await["message"], "Logged out");
    let revoked = c.call(&Request::Verify { token }).await;
    assert_eq!(
        (revoked.status, revoked.reason.as_deref()),
        (Status::Failure, Some("token_revoked"))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_an_error_and_the_connection_lives_on() {
    let server = start(config()).await;
    let mut c = Client::connect(&server).await;
    let cases: &[(&[u8], &str)] = &[
        (b"\n", "Empty message received"),
        (b"   \r\n", "Empty message received"),
        (
            b"\xff\xfe\xfd\n",
            "Invalid character encoding. UTF-8 expected.",
        ),
        (b"{\"action\": \"login\"\n", "Invalid JSON format"),
        (b"nonsense\n", "Invalid JSON format"),
        (b"{}\n", "Unknown or missing action"),
        (b"[\"login\"]\n", "Unknown or missing action"),
        (b"{\"action\": null}\n", "Unknown or missing action"),
        (b"{\"action\": \"teleport\"}\n", "Unknown or missing action"),
        (
            b"{\"action\": \"login\", \"username\": \"bob\"}\n",
            "Missing or invalid field: password",
        ),
        (
            b"{\"action\": \"register\", \"password\": \"x\"}\n",
            "Missing or invalid field: username",
        ),
        (
            b"{\"action\": \"login\", \"username\": 5, \"password\": \"x\"}\n",
            "Missing or invalid field: username",
        ),
        (
            b"{\"action\": \"verify\"}\n",
            "Missing or invalid field: token",
        ),
        (
            b"{\"action\": \"logout\", \"token\": [1]}\n",
            "Missing or invalid field: token",
        ),
    ];
    for (line, message) in cases {
        let reply = c.call_raw(line).await;
        assert_eq!(reply["status"], "error", "{line:?} -> {reply}");
        assert_eq!(reply["message"], *message, "{line:?}");
    }
    // Tokens that are garbage are refused, not errors.
    for token in ["", "abc", "a.b", &"x".repeat(2000)] {
        let reply = c
            .call(&Request::Verify {
                token: token.into(),
            })
            .await;
        assert_eq!(reply.reason.as_deref(), Some("invalid_token"), "{token:?}");
    }
    let text = metrics(&server).await;
    assert!(
        text.contains("authserver_requests_total{action=\"invalid\",status=\"error\"} 14"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_line_is_answered_then_the_connection_closed() {
    let mut cfg = config();
    cfg.max_line_bytes = 1024;
    let server = start(cfg).await;
    for with_newline in [true, false] {
        let mut c = Client::connect(&server).await;
        let mut line = vec![b'x'; 5000];
        if with_newline {
            line.push(b'\n');
        }
        let reply = c.call_raw(&line).await;
        assert_eq!(reply["message"], "Message too long (limit 1024 bytes)");
        assert_eq!(reply["reason"], "line_too_long");
        assert_eq!(c.read_line().await, None, "closed after the error");
    }
    // A line just under the limit is fine.
    let mut c = Client::connect(&server).await;
    let padded = format!(
        "{{\"action\":\"verify\",\"token\":\"x\",\"pad\":\"{}\"}}\n",
        "p".repeat(900)
    );
    assert_eq!(
        c.call_raw(padded.as_bytes()).await["reason"],
        "invalid_token"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloppy_framing_still_gets_answers() {
    let server = start(config()).await;
    // An object without a newline, the client waiting for the answer.
    let mut c = Client::connect(&server).await;
    assert_eq!(
        c.call_raw(br#"{"action":"verify","token":"t"}"#).await["reason"],
        "invalid_token"
    );
    // Its late newline is not taken for an empty request.
    c.send_raw(b"\n").await;
    assert_eq!(
        c.call_raw(b"{}\n").await["message"],
        "Unknown or missing action"
    );
    // A last line cut off by the client's half-close.
    let mut c = Client::connect(&server).await;
    c.send_raw(b"{\"action\":\"verify\"").await;
    c.shutdown_write().await;
    assert_eq!(c.read().await["message"], "Invalid JSON format");
    assert_eq!(c.read_line().await, None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_rules() {
    let server = start(config()).await;
    let name = username("Reg");
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    // Case-insensitive uniqueness.
    for dup in [name.clone(), name.to_uppercase(), name.to_lowercase()] {
        let reply = once(&server, &register(&dup, PASSWORD)).await;
        assert_eq!(reply.status, Status::Failure);
        assert_eq!(reply.reason.as_deref(), Some("username_taken"));
        assert_eq!(reply.message, "Registration failed: username already taken");
    }
    // Any case logs in, and the token carries the name as registered.
    let reply = once(&server, &login(&name.to_lowercase(), PASSWORD)).await;
    assert_eq!(reply.username.as_deref(), Some(name.as_str()));

    for bad in ["ab", "_leading", "has space", "sláva", &"x".repeat(33), ""] {
        let reply = once(&server, &register(bad, PASSWORD)).await;
        assert_eq!(reply.reason.as_deref(), Some("invalid_username"), "{bad:?}");
        assert!(
            reply.message.starts_with("Registration failed: "),
            "{}",
            reply.message
        );
    }
    let other = username("pw");
    for bad in [
        "short",
        &"p".repeat(129),
        "tab\tinside-the-password",
        other.as_str(),
    ] {
        let reply = once(&server, &register(&other, bad)).await;
        assert_eq!(reply.reason.as_deref(), Some("invalid_password"), "{bad:?}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_wrong_password_look_the_same() {
    let server = start(config()).await;
    let name = username("real");
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    let mut c = Client::connect(&server).await;
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    // Interleaved, so drift in machine load hits both alike. 8 of each stays under the
    // per-user failure limit (10).
    for i in 0..8 {
        let t = Instant::now();
        let a = c.call(&login(&name, &format!("wrong-password-{i}"))).await;
        wrong.push(t.elapsed());
        let t = Instant::now();
        let b = c
            .call(&login(&username("ghost"), &format!("wrong-password-{i}")))
            .await;
        unknown.push(t.elapsed());
        assert_eq!(a, b, "identical answers");
        assert_eq!(a.message, MSG_BAD_CREDENTIALS);
    }
    // Both run one Argon2id verification. Other tests hash on the same cores at the
    // same time, which only ever adds time: the fastest of each kind is the work itself.
    let fastest = |v: &[Duration]| v.iter().min().expect("samples").as_secs_f64();
    let (w, u) = (fastest(&wrong), fastest(&unknown));
    assert!(
        w / u < 1.5 && u / w < 1.5,
        "fastest wrong password {w:.4}s vs unknown user {u:.4}s"
    );
    assert!(w > 0.002, "a real hash was computed ({w:.4}s)");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_user_and_per_address() {
    let mut cfg = config();
    cfg.failures_per_user = 3;
    cfg.failures_per_ip = 6;
    let server = start(cfg).await;
    let alice = username("alice");
    let bob = username("bob");
    for name in [&alice, &bob] {
        assert!(once(&server, &register(name, PASSWORD)).await.is_success());
    }
    let mut c = Client::connect(&server).await;
    for _ in 0..3 {
        assert_eq!(
            c.call(&login(&alice, "guess-guess"))
                .await
                .reason
                .as_deref(),
            Some("invalid_credentials")
        );
    }
    // Locked: even the right password is not checked now.
    let locked = c.call(&login(&alice, PASSWORD)).await;
    assert_eq!(locked.reason.as_deref(), Some("rate_limited"));
    assert!(locked.message.starts_with(LOGIN_FAILED_PREFIX));
    // Unknown names lock the same way (no enumeration through the limit).
    let ghost = username("ghost");
    for _ in 0..3 {
        c.call(&login(&ghost, "guess-guess")).await;
    }
    // 6 failures from this address now: everyone from here is refused.
    assert_eq!(
        c.call(&login(&bob, PASSWORD)).await.reason.as_deref(),
        Some("rate_limited")
    );
    let text = metrics(&server).await;
    assert!(
        text.contains("authserver_auth_failures_total{action=\"login\",reason=\"rate_limited\"} 2"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_clears_the_users_failures() {
    let mut cfg = config();
    cfg.failures_per_user = 3;
    let server = start(cfg).await;
    let name = username("forgetful");
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    let mut c = Client::connect(&server).await;
    for _ in 0..2 {
        assert!(!c.call(&login(&name, "guess-guess")).await.is_success());
    }
    assert!(c.call(&login(&name, PASSWORD)).await.is_success());
    for _ in 0..2 {
        assert!(!c.call(&login(&name, "guess-guess")).await.is_success());
    }
    assert!(
        c.call(&login(&name, PASSWORD)).await.is_success(),
        "counter restarted after success"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_address() {
    let mut cfg = config();
    cfg.registrations_per_ip = 2;
    let server = start(cfg).await;
    assert!(
        once(&server, &register(&username("r1"), PASSWORD))
            .await
            .is_success()
    );
    assert!(
        once(&server, &register(&username("r2"), PASSWORD))
            .await
            .is_success()
    );
    let reply = once(&server, &register(&username("r3"), PASSWORD)).await;
    assert_eq!(reply.reason.as_deref(), Some("rate_limited"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_told_and_closed() {
    let mut cfg = config();
    cfg.idle_timeout_secs = 1;
    cfg.read_timeout_secs = 1;
    let server = start(cfg).await;

    let mut idle = Client::connect(&server).await;
    let started = Instant::now();
    let reply = idle.read().await;
    assert_eq!(reply["message"], "Idle timeout, closing connection");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(idle.read_line().await, None);

    // Slow loris: starts a line, never finishes it.
    let mut slow = Client::connect(&server).await;
    slow.send_raw(b"{\"action\":").await;
    assert_eq!(
        slow.read().await["message"],
        "Read timeout, closing connection"
    );
    assert_eq!(slow.read_line().await, None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_told_so() {
    let mut cfg = config();
    cfg.max_connections = 3;
    let server = start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&server).await;
        // A round trip proves the server has taken the connection.
        assert_eq!(c.call_raw(b"{}\n").await["status"], "error");
        held.push(c);
    }
    let mut extra = Client::connect(&server).await;
    let reply = extra.read().await;
    assert_eq!(
        reply,
        json!({"status":"error","message":"Server busy, try again later","reason":"busy"})
    );
    assert_eq!(extra.read_line().await, None);
    // A slot frees when a client leaves.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Client::connect(&server).await;
    assert_eq!(
        again.call_raw(b"{}\n").await["message"],
        "Unknown or missing action"
    );
    assert!(
        metrics(&server)
            .await
            .contains("authserver_connections_rejected_total{reason=\"limit\"} 1")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_notifies_idle_clients() {
    let server = start(config()).await;
    let name = username("inflight");
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    let addr = server.addr;

    let mut idle = Client::connect(&server).await;
    assert_eq!(idle.call_raw(b"{}\n").await["status"], "error");
    let mut busy = Client::connect(&server).await;
    // A login takes an Argon2 hash (tens of ms): shutdown starts while it runs.
    busy.send_raw(login(&name, PASSWORD).to_line().as_bytes())
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let stopping = tokio::spawn(server.shutdown());

    let reply = busy.read().await;
    assert_eq!(
        reply["status"], "success",
        "the in-flight login completed: {reply}"
    );
    assert_eq!(idle.read().await["reason"], "shutting_down");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_for_each_outcome() {
    let server = start(config()).await;
    let name = username("Audit");
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    let token = once(&server, &login(&name, PASSWORD)).await.token.unwrap();
    assert!(
        !once(&server, &login(&name, "not-the-password"))
            .await
            .is_success()
    );
    let ghost = username("ghost");
    assert!(
        !once(&server, &login(&ghost, "not-the-password"))
            .await
            .is_success()
    );
    assert!(once(&server, &Request::Logout { token }).await.is_success());

    let memory = server.memory_events.clone().unwrap();
    server.shutdown().await; // flushes the event pump
    let events: Vec<(String, AuthEvent)> = memory
        .records()
        .into_iter()
        .map(|r| (r.key, serde_json::from_slice(&r.payload).unwrap()))
        .collect();
    let mine: Vec<&AuthEvent> = events
        .iter()
        .filter(|(key, _)| *key == name.to_lowercase())
        .map(|(_, e)| e)
        .collect();
    let types: Vec<AuthEventType> = mine.iter().map(|e| e.event_type).collect();
    use AuthEventType::*;
    assert_eq!(
        types,
        [UserRegistered, UserLoggedIn, UserLoginFailed, UserLoggedOut]
    );
    for e in &mine {
        assert_eq!(e.username, name);
        assert_eq!(e.source_ip.as_deref(), Some("127.0.0.1"));
        assert!(e.timestamp > 1.7e9, "{}", e.timestamp);
    }
    assert!(mine[1].token_id.is_some() && mine[1].token_id == mine[3].token_id);
    assert_eq!(mine[2].reason.as_deref(), Some("wrong_password"));
    let ghost_event = &events
        .iter()
        .find(|(key, _)| *key == ghost.to_lowercase())
        .unwrap()
        .1;
    assert_eq!(ghost_event.reason.as_deref(), Some("unknown_user"));
    // Nothing secret in the events.
    let raw = String::from_utf8(
        memory
            .records()
            .iter()
            .flat_map(|r| r.payload.clone())
            .collect(),
    )
    .unwrap();
    assert!(
        !raw.contains(PASSWORD) && !raw.contains("not-the-password") && !raw.contains("argon2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served() {
    let server = start(config()).await;
    let name = username("metrics");
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    assert!(once(&server, &login(&name, PASSWORD)).await.is_success());
    let text = metrics(&server).await;
    for needle in [
        "authserver_connections_active",
        "authserver_connections_total",
        "authserver_auth_success_total{action=\"login\"} 1",
        "authserver_auth_success_total{action=\"register\"} 1",
        "authserver_request_duration_seconds_bucket{action=\"login\"",
        "authserver_events_produced_total{topic=\"auth_events\"}",
        "authserver_events_pending",
        "authserver_hash_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    server.shutdown().await;
}
