//! 5,000 clients connected at once: every one served, memory bounded, all slots
//! returned afterwards.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{Client, config, login, metrics, once, register, start, username};
use tanks_core::protocol::auth::Request;
use tokio::sync::{Barrier, Semaphore};

const CLIENTS: usize = 5_000;
const PASSWORD: &str = "correct horse battery";

/// The soft limit on open files: each connection costs two descriptors here (client and
/// server live in this process).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(u64::MAX)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_concurrent_connections() {
    let needed = (2 * CLIENTS + 500) as u64;
    let limit = open_files_limit();
    assert!(
        limit >= needed,
        "this test holds {CLIENTS} connections (client and server side, {needed} file descriptors) \
         but the open-files limit is {limit}: raise it (ulimit -n {needed}) and run again"
    );
    let mut cfg = config();
    cfg.max_connections = CLIENTS + 100;
    // Every client here comes from 127.0.0.1.
    cfg.max_connections_per_source = CLIENTS + 100;
    // A hundred logins of one user from one address race below, and a login attempt
    // counts against both limits until its password check resolves: room for all.
    cfg.failures_per_user = CLIENTS as u32;
    cfg.failures_per_ip = CLIENTS as u32;
    let server = Arc::new(start(cfg).await);
    let name = username("crowd");
    assert!(once(&server, &register(&name, PASSWORD)).await.is_success());
    let token = once(&server, &login(&name, PASSWORD)).await.token.unwrap();
    let rss_before = rss_bytes();

    let all_connected = Arc::new(Barrier::new(CLIENTS + 1));
    let done = Arc::new(Barrier::new(CLIENTS + 1));
    // Connect at most 256 at a time: the listen backlog would otherwise overflow and
    // the kernel would retry SYNs a second later; the connections still all stay open.
    let connecting = Arc::new(Semaphore::new(256));
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let (server, token, name) = (server.clone(), token.clone(), name.clone());
        let (all_connected, done, connecting) =
            (all_connected.clone(), done.clone(), connecting.clone());
        clients.push(tokio::spawn(async move {
            let permit = connecting.acquire().await.unwrap();
            let mut c = Client::connect(&server).await;
            let first = c
                .call(&Request::Verify {
                    token: token.clone(),
                })
                .await;
            drop(permit);
            assert!(first.is_success(), "client {i}: {first:?}");
            all_connected.wait().await;
            // Everyone is connected: now a second request on every connection, one in
            // fifty a login that needs an Argon2 hash.
            let second = if i % 50 == 0 {
                c.call(&login(&name, PASSWORD)).await
            } else {
                c.call(&Request::Verify { token }).await
            };
            assert!(second.is_success(), "client {i}: {second:?}");
            done.wait().await;
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), all_connected.wait())
        .await
        .expect("all connected");
    let text = metrics(&server).await;
    assert!(
        text.contains(&format!("authserver_connections_active {CLIENTS}\n")),
        "{}",
        text.lines()
            .find(|l| l.starts_with("authserver_connections_active"))
            .unwrap_or("")
    );
    tokio::time::timeout(Duration::from_secs(120), done.wait())
        .await
        .expect("all answered");
    let grown = rss_bytes().saturating_sub(rss_before);
    for client in clients {
        client.await.expect("client task");
    }
    // Client and server side together; about 20 KiB per connection pair.
    assert!(
        grown < 256 << 20,
        "memory grew {} MiB for {CLIENTS} connections",
        grown >> 20
    );
    eprintln!(
        "memory for {CLIENTS} connections (both ends): {} MiB",
        grown >> 20
    );

    // Every slot is returned.
    let mut active = String::new();
    for _ in 0..50 {
        let text = metrics(&server).await;
        active = text
            .lines()
            .find(|l| l.starts_with("authserver_connections_active"))
            .unwrap()
            .to_owned();
        if active == "authserver_connections_active 0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active, "authserver_connections_active 0");
    let text = metrics(&server).await;
    assert!(
        !text.contains("connections_rejected_total{"),
        "no connection refused"
    );
    Arc::into_inner(server)
        .expect("clients are gone")
        .shutdown()
        .await;
}
