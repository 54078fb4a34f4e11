//! Clients behind the edge keep their identity at the auth server: the real Nginx,
//! on a config rendered by the operator (`proxy_protocol on;`), in front of the real
//! `authserver` binary with `--proxy-protocol`. Two clients from two addresses share
//! the edge; one exhausting its failed-login budget does not lock out the other, and
//! the audit events name each client's own address.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tanks_operator::edge::net::Upstream;
use tanks_operator::edge::render::{AuthRoute, EdgeConfig, Limits, NginxRuntime, UdpPolicy};
use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};

use crate::edge_nginx::{Nginx, wait_for};

/// A line client from a chosen loopback source address (all of 127/8 is local).
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(from: [u8; 4], to: SocketAddr) -> Client {
        let socket = nix_bind_connect(from, to);
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            reader: BufReader::new(socket.try_clone().unwrap()),
            writer: socket,
        }
    }

    fn call(&mut self, request: Value) -> Value {
        self.send(format!("{request}\n").as_bytes());
        self.read()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

/// A TCP connection from `from` (std cannot bind before connecting).
fn nix_bind_connect(from: [u8; 4], to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let [a, b, c, d] = from;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(a, b, c, d, 0),
    )
    .unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

fn login(user: &str, password: &str) -> Value {
    json!({"action":"login","username":user,"password":password})
}

#[test]
fn clients_behind_the_edge_keep_their_own_address_and_rate_limit() {
    let dir = std::env::temp_dir().join(format!("tanks-edge-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("token.key");
    std::fs::write(&key, "k".repeat(48)).unwrap();
    let events = dir.join("events.jsonl");
    let _ = std::fs::remove_file(&events);
    let (auth_port, metrics_port, edge_port) = (free_port(), free_port(), free_port());
    let auth = SocketAddr::from(([127, 0, 0, 1], auth_port));
    let _authserver = KillOnDrop(
        Command::new(workspace_binary("authserver"))
            .args(["--listen-addr", &auth.to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg("--token-key-file")
            .arg(&key)
            .arg("--events-file")
            .arg(&events)
            .args(["--proxy-protocol", "--trusted-proxies", "127.0.0.1"])
            .args(["--failures-per-ip", "3", "--failures-per-user", "100"])
            .args(["--allow-weak-hash", "--argon2-memory-kib", "256"])
            .args(["--argon2-iterations", "1"])
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env_remove("REDIS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting authserver"),
    );
    wait_for("the auth server", Duration::from_secs(20), || {
        TcpStream::connect(auth).is_ok()
    });

    let cfg = EdgeConfig {
        runtime: NginxRuntime::default(),
        limits: Limits {
            worker_processes: 1,
            worker_connections: 256,
        },
        access: Default::default(),
        auth: Some(AuthRoute {
            listen_port: edge_port,
            upstreams: vec![Upstream::new("127.0.0.1", auth_port).unwrap()],
            proxy_protocol: true,
            max_connections_per_source: 16,
            connect_timeout_seconds: 5,
            idle_timeout_seconds: 30,
        }),
        udp: UdpPolicy {
            idle_timeout_seconds: 30,
            proxy_responses: None,
            max_sessions_per_source: 8,
            proxy_protocol: false,
        },
        game: Vec::new(),
    };
    let _nginx = Nginx::start("auth", &cfg);
    let edge = SocketAddr::from(([127, 0, 0, 1], edge_port));

    let user = format!("edge{}", std::process::id());
    let mut alice = Client::connect([127, 0, 0, 2], edge);
    let registered =
        alice.call(json!({"action":"register","username":user,"password":"Correct-Horse-9"}));
    assert_eq!(registered["status"], "success", "{registered}");
    // The address 127.0.0.2 guesses until it is refused.
    for _ in 0..3 {
        let r = alice.call(login(&user, "wrong"));
        assert_eq!(r["reason"], "invalid_credentials", "{r}");
    }
    let refused = alice.call(login(&user, "Correct-Horse-9"));
    assert_eq!(refused["reason"], "rate_limited", "{refused}");
    // Through the same edge, 127.0.0.3 has its own budget.
    let mut bob = Client::connect([127, 0, 0, 3], edge);
    let r = bob.call(login(&user, "wrong"));
    assert_eq!(r["reason"], "invalid_credentials", "{r}");
    let ok = bob.call(login(&user, "Correct-Horse-9"));
    assert_eq!(ok["status"], "success", "{ok}");

    // The audit names the clients, never the edge.
    wait_for("the audit events", Duration::from_secs(10), || {
        std::fs::read_to_string(&events)
            .is_ok_and(|t| t.matches(r#""source_ip":"127.0.0.3""#).count() >= 2)
    });
    let audit = std::fs::read_to_string(&events).unwrap();
    assert!(
        audit.matches(r#""source_ip":"127.0.0.2""#).count() >= 5,
        "{audit}"
    );
    assert!(!audit.contains(r#""source_ip":"127.0.0.1""#), "{audit}");

    // Straight to the auth server: a header from an untrusted address is refused...
    let mut forger = Client::connect([127, 0, 0, 4], auth);
    forger.send(b"PROXY TCP4 198.51.100.1 127.0.0.1 1 2\r\n");
    let r = forger.read();
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("not a trusted proxy"),
        "{r}"
    );
    // ...a client without one is served as itself...
    let mut direct = Client::connect([127, 0, 0, 5], auth);
    let r = direct.call(login(&user, "wrong"));
    assert_eq!(r["reason"], "invalid_credentials", "{r}");
    // ...and the trusted proxy's address without a header is refused.
    let mut headless = Client::connect([127, 0, 0, 1], auth);
    let r = headless.call(login(&user, "wrong"));
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("PROXY protocol header is required"),
        "{r}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
