//! The TCP command port's connection caps: one client address cannot hold every slot,
//! and refused connections are told why before they are closed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gameserver::tcp::TcpLimits;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

use crate::common::{memory_settings, start};

/// A line client on a connection made from the local address `from`.
struct Line(BufReader<TcpStream>);

impl Line {
    async fn connect(from: &str, to: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
            .unwrap();
        Self(BufReader::new(socket.connect(to).await.unwrap()))
    }

    /// The next line, None at end of stream; panics after 10 s.
    async fn read(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.0.read_line(&mut line))
            .await
            .expect("a line within 10 s")
            .unwrap_or(0);
        (n > 0).then(|| line.trim_end().to_owned())
    }

    async fn ask(&mut self, line: &str) -> Option<String> {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .ok()?;
        self.read().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_command_connection() {
    let (mut settings, _memory) = memory_settings();
    settings.tcp_limits = TcpLimits {
        max_connections: 10,
        max_per_source: 3,
    };
    let server = start(settings).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Line::connect("127.0.0.1", server.tcp_addr).await;
        // A round trip proves the server has taken the connection.
        assert_eq!(c.ask("").await.as_deref(), Some("EMPTY_COMMAND"));
        held.push(c);
    }
    for _ in 0..3 {
        let mut extra = Line::connect("127.0.0.1", server.tcp_addr).await;
        assert_eq!(
            extra.read().await.as_deref(),
            Some("BUSY Too many connections from your address")
        );
        assert_eq!(extra.read().await, None, "then closed");
    }
    // Another address still gets in while the first is at its cap.
    let mut other = Line::connect("127.0.0.2", server.tcp_addr).await;
    assert_eq!(other.ask("").await.as_deref(), Some("EMPTY_COMMAND"));
    // A slot frees once one of the first address's connections closes.
    held.pop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Line::connect("127.0.0.1", server.tcp_addr).await;
        let reply = again.ask("").await;
        if reply.as_deref() == Some("EMPTY_COMMAND") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.drain_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_global_cap_are_told_so() {
    let (mut settings, _memory) = memory_settings();
    settings.tcp_limits = TcpLimits {
        max_connections: 4,
        max_per_source: 3,
    };
    let server = start(settings).await;
    let mut held = Vec::new();
    for from in ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let mut c = Line::connect(from, server.tcp_addr).await;
        assert_eq!(c.ask("").await.as_deref(), Some("EMPTY_COMMAND"));
        held.push(c);
    }
    let mut extra = Line::connect("127.0.0.4", server.tcp_addr).await;
    assert_eq!(
        extra.read().await.as_deref(),
        Some("BUSY Server busy, try again later")
    );
    assert_eq!(extra.read().await, None, "then closed");
    server.drain_and_stop().await;
}
