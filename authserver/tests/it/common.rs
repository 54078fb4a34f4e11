//! Shared by the integration tests: a server on ephemeral ports and a line client.
#![allow(dead_code)]

use std::time::Duration;

use authserver::{Config, Server};
use clap::Parser;
use serde_json::Value;
use tanks_core::protocol::auth::{Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Embedded defaults on ephemeral ports, whatever the environment says.
pub fn config() -> Config {
    let mut config = Config::parse_from([
        "authserver",
        "--listen-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    config.redis_url = None;
    config.kafka_brokers = None;
    config.events_file = None;
    config.token_key_file = None;
    config.hash_concurrency = 0;
    config
}

pub async fn start(config: Config) -> Server {
    // Quiet unless asked: the harness does not capture output from server threads.
    if std::env::var_os("RUST_LOG").is_some() {
        tanks_core::telemetry::init_tracing();
    }
    Server::start(config).await.expect("server starts")
}

pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(server: &Server) -> Self {
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        Self::from_stream(stream)
    }

    /// A client on a connection made elsewhere (e.g. from a chosen local address).
    pub fn from_stream(stream: TcpStream) -> Self {
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// The next answer line as JSON; panics on end of stream or after 10 s.
    pub async fn read(&mut self) -> Value {
        let line = self
            .read_line()
            .await
            .expect("an answer, not end of stream");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?} is not JSON: {e}"))
    }

    /// The next raw line, None at end of stream.
    pub async fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
            .await
            .expect("answer within 10 s")
            .expect("read");
        (n > 0).then_some(line)
    }

    pub async fn call_raw(&mut self, bytes: &[u8]) -> Value {
        self.send_raw(bytes).await;
        self.read().await
    }

    pub async fn call(&mut self, request: &Request) -> Response {
        self.send_raw(request.to_line().as_bytes()).await;
        serde_json::from_value(self.read().await).expect("a Response")
    }

    pub async fn shutdown_write(&mut self) {
        self.writer.shutdown().await.unwrap();
    }
}

/// One request on its own connection, the seed client's way.
pub async fn once(server: &Server, request: &Request) -> Response {
    Client::connect(server).await.call(request).await
}

pub fn register(username: &str, password: &str) -> Request {
    Request::Register {
        username: username.into(),
        password: password.into(),
    }
}

pub fn login(username: &str, password: &str) -> Request {
    Request::Login {
        username: username.into(),
        password: password.into(),
    }
}

/// A fresh, valid username.
pub fn username(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// The server's /metrics text.
pub async fn metrics(server: &Server) -> String {
    let mut stream = TcpStream::connect(server.metrics_addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut body)
        .await
        .unwrap();
    body
}
