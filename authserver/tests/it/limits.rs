//! Attacks on the limits: concurrent password guesses must cost at most the limit in
//! Argon2 verifications (per username and per address, on one replica and on two
//! sharing Redis), and one address must not hold every connection slot.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use authserver::{Config, Server};
use redis::AsyncCommands;
use tanks_core::protocol::auth::Response;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Barrier;

use crate::common::{Client, config, login, metrics, once, register, start, username};

const PASSWORD: &str = "correct horse battery";
const GUESSES: usize = 64;

/// The server's count of login password verifications, from its metrics endpoint.
async fn verifications(server: &Server) -> u64 {
    let text = metrics(server).await;
    text.lines()
        .find_map(|l| l.strip_prefix("authserver_password_verifications_total "))
        .unwrap_or_else(|| panic!("no verification counter in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn verifications_on(servers: &[&Server]) -> u64 {
    let mut total = 0;
    for server in servers {
        total += verifications(server).await;
    }
    total
}

/// Sends `GUESSES` wrong-password logins at once, spread over `servers`; `name(i)` is
/// the username of guess i. Every connection is open and the request written only
/// once all are, so the guesses really race. Returns the answers' reasons.
async fn guess_at_once(servers: &[&Server], name: impl Fn(usize) -> String) -> Vec<String> {
    let start = Arc::new(Barrier::new(GUESSES));
    let mut tasks = Vec::with_capacity(GUESSES);
    for i in 0..GUESSES {
        let addr = servers[i % servers.len()].addr;
        let request = login(&name(i), "wrong-guess-123").to_line();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
            start.wait().await;
            client
                .get_mut()
                .write_all(request.as_bytes())
                .await
                .unwrap();
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(60), client.read_line(&mut line))
                .await
                .expect("an answer within 60 s")
                .unwrap();
            let response: Response = serde_json::from_str(&line).unwrap();
            response.reason.unwrap_or_default()
        }));
    }
    let mut reasons = Vec::with_capacity(GUESSES);
    for task in tasks {
        reasons.push(task.await.unwrap());
    }
    reasons
}

/// The verifications the guesses cost stay within `limit`, every other guess was
/// refused as rate limited, and the rest were plain wrong passwords.
fn assert_bounded(reasons: &[String], spent: u64, limit: u32) {
    let limited = reasons.iter().filter(|r| *r == "rate_limited").count();
    let wrong = reasons
        .iter()
        .filter(|r| *r == "invalid_credentials")
        .count();
    assert_eq!(limited + wrong, GUESSES, "unexpected answers: {reasons:?}");
    assert!(
        spent <= u64::from(limit),
        "{GUESSES} concurrent guesses cost {spent} password verifications, limit {limit}"
    );
    assert_eq!(
        wrong as u64, spent,
        "each checked guess is one verification"
    );
    assert!(spent >= 1, "the first guesses are checked");
}

fn limited(mut cfg: Config, per_user: u32, per_ip: u32) -> Config {
    cfg.failures_per_user = per_user;
    cfg.failures_per_ip = per_ip;
    // Enough hashing slots that, without the limit, many guesses would hash at once.
    cfg.hash_concurrency = 8;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_for_one_user_cost_at_most_the_limit() {
    let server = start(limited(config(), 5, 1000)).await;
    let name = username("victim");
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    let before = verifications(&server).await;
    let reasons = guess_at_once(&[&server], |_| name.clone()).await;
    assert_bounded(&reasons, verifications(&server).await - before, 5);
    // Locked for the window, even with the right password, without a verification.
    let before = verifications(&server).await;
    let locked = once(&server, &login(&name, PASSWORD)).await;
    assert_eq!(locked.reason.as_deref(), Some("rate_limited"));
    assert_eq!(verifications(&server).await, before);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_from_one_address_cost_at_most_the_limit() {
    let server = start(limited(config(), 1000, 7)).await;
    let prefix = username("spray");
    // A different (unknown) user per guess: only the per-address limit applies.
    let reasons = guess_at_once(&[&server], |i| format!("{prefix}{i}")).await;
    assert_bounded(&reasons, verifications(&server).await, 7);
    server.shutdown().await;
}

/// A config on the real Redis under a fresh prefix.
fn redis_config(prefix: &str) -> Config {
    let mut cfg = config();
    cfg.redis_url = Some(tanks_testkit::require_redis());
    cfg.redis_prefix = prefix.to_owned();
    cfg
}

async fn cleanup(prefix: &str) {
    let mut conn = tanks_core::redis_store::connect(&tanks_testkit::require_redis())
        .await
        .unwrap();
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_redis_share_the_per_user_limit_under_concurrent_guesses() {
    let prefix = format!("{}:", tanks_testkit::unique("authlimits"));
    let cfg = limited(redis_config(&prefix), 6, 1000);
    let (a, b) = (start(cfg.clone()).await, start(cfg).await);
    let name = username("victim");
    assert!(once(&a, &register(&name, PASSWORD)).await.is_success());
    let before = verifications_on(&[&a, &b]).await;
    let reasons = guess_at_once(&[&a, &b], |_| name.clone()).await;
    assert_bounded(&reasons, verifications_on(&[&a, &b]).await - before, 6);
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_redis_share_the_per_address_limit_under_concurrent_guesses() {
    let prefix = format!("{}:", tanks_testkit::unique("authlimits"));
    let cfg = limited(redis_config(&prefix), 1000, 9);
    let (a, b) = (start(cfg.clone()).await, start(cfg).await);
    let spray = username("spray");
    let reasons = guess_at_once(&[&a, &b], |i| format!("{spray}{i}")).await;
    assert_bounded(&reasons, verifications_on(&[&a, &b]).await, 9);
    // A correct login from the exhausted address is refused too: the address limit
    // holds for every account.
    let name = username("owner");
    assert!(once(&a, &register(&name, PASSWORD)).await.is_success());
    let refused = once(&b, &login(&name, PASSWORD)).await;
    assert_eq!(refused.reason.as_deref(), Some("rate_limited"));
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&prefix).await;
}

/// A connection to `to` from the local address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    Client::from_stream(socket.connect(to).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection_slot() {
    let mut cfg = config();
    cfg.max_connections = 20;
    cfg.max_connections_per_source = 4;
    let server = start(cfg).await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from(local, server.addr).await;
        // A round trip proves the server has taken the connection.
        assert_eq!(c.call_raw(b"{}\n").await["status"], "error");
        held.push(c);
    }
    // Every further connection from the same address is told why and closed.
    for _ in 0..3 {
        let mut extra = connect_from(local, server.addr).await;
        let reply = extra.read().await;
        assert_eq!(reply["status"], "error");
        assert_eq!(reply["reason"], "busy");
        assert_eq!(
            reply["message"],
            "Too many connections from your address, close some and try again"
        );
        assert_eq!(extra.read_line().await, None);
    }
    // Another address still gets in while the first one is at its cap.
    let mut other = connect_from("127.0.0.2".parse().unwrap(), server.addr).await;
    assert_eq!(
        other.call_raw(b"{}\n").await["message"],
        "Unknown or missing action"
    );
    assert!(
        metrics(&server)
            .await
            .contains("authserver_connections_rejected_total{reason=\"per_source\"} 3")
    );
    // A slot frees when one of the address's connections closes: wait for it.
    held.pop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect_from(local, server.addr).await;
        let reply = again.call_raw(b"{}\n").await;
        if reply["message"] == "Unknown or missing action" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}
