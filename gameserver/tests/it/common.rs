//! Helpers shared by the game server's integration tests: a server started in this
//! process on loopback ephemeral ports, a UDP player, and a tiny HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use gameserver::config::Settings;
use gameserver::server::{self, Running};
use serde_json::Value;
use tanks_core::events::{MemorySink, SinkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

pub fn memory_settings() -> (Settings, MemorySink) {
    let memory = MemorySink::new(100_000);
    let mut settings = Settings::local(SinkConfig::Memory(memory.clone()));
    settings.manager.max_sessions = 8;
    settings.drain_timeout = Duration::from_millis(500);
    (settings, memory)
}

pub async fn start(settings: Settings) -> Running {
    server::start(settings).await.expect("server starts")
}

/// One player's UDP socket.
pub struct Player {
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

impl Player {
    pub async fn new(server: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
        }
    }

    pub async fn send(&self, value: Value) {
        self.send_raw(value.to_string().as_bytes()).await;
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    /// The next datagram that satisfies `want`, skipping others (snapshots mostly).
    pub async fn expect(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let mut buf = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {what} within 5 s"))
                .unwrap();
            let value: Value = serde_json::from_slice(&buf[..got]).expect("server sends JSON");
            if want(&value) {
                return value;
            }
        }
    }

    /// The next reply (not a snapshot).
    pub async fn reply(&self) -> Value {
        self.expect("reply", |v| v.get("status").is_some()).await
    }

    pub async fn join(&self, player_id: &str) -> Value {
        self.send(serde_json::json!({"action":"join_game","player_id":player_id}))
            .await;
        self.reply().await
    }
}

/// A plain HTTP/1.1 request; returns the status and the body parsed as JSON (or Null).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    secret: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = secret
        .map(|s| format!("Authorization: Bearer {s}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

pub const SECRET: &str = gameserver::config::DEVELOPMENT_CONTROL_SECRET;

/// Whether a JSON `[x, y]` is within 0.01 of `target` (positions are kept to 1/100).
pub fn near(position: &Value, target: [f64; 2]) -> bool {
    let xy = |i: usize| position.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN);
    (xy(0) - target[0]).abs() < 0.011 && (xy(1) - target[1]).abs() < 0.011
}

/// Whether `update` is a snapshot showing tank `id` near `target`.
pub fn shows(update: &Value, id: &str, target: [f64; 2]) -> bool {
    update["action"] == "game_update"
        && update["tanks"].as_array().is_some_and(|tanks| {
            tanks
                .iter()
                .any(|t| t["id"] == id && near(&t["position"], target))
        })
}
