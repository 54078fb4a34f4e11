//! The edge's per-source cap on UDP, where the game server cannot see client
//! addresses: the real Nginx on a rendered config (`limit_conn game_per_source`) lets
//! each client address hold `udp.maxSessionsPerSource` sessions and drops the rest,
//! while other addresses go on being served.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use tanks_operator::edge::net::Upstream;
use tanks_operator::edge::render::{EdgeConfig, GameRoute, Limits, NginxRuntime, UdpPolicy};
use tanks_testkit::process::free_port;

use crate::edge_nginx::Nginx;

fn client(ip: &str, edge: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket.connect(edge).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

#[test]
fn the_edge_caps_udp_sessions_per_client_address() {
    // A UDP echo standing in for a game server: it answers every datagram and
    // remembers what it got.
    let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = upstream.recv_from(&mut buf) {
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = upstream.send_to(&buf[..n], from);
        }
    });
    let edge_port = free_port();
    let cfg = EdgeConfig {
        runtime: NginxRuntime::default(),
        limits: Limits {
            worker_processes: 1,
            worker_connections: 64,
        },
        access: Default::default(),
        auth: None,
        udp: UdpPolicy {
            idle_timeout_seconds: 30,
            proxy_responses: None,
            max_sessions_per_source: 2,
            proxy_protocol: false,
        },
        game: vec![GameRoute {
            server: "tanks/capped".into(),
            edge_port,
            upstream: Upstream::new("127.0.0.1", upstream_port).unwrap(),
        }],
    };
    let _nginx = Nginx::start("limits", &cfg);
    let edge = SocketAddr::from(([127, 0, 0, 1], edge_port));

    let mut buf = [0u8; 512];
    let mut echo = |socket: &UdpSocket, text: &str| {
        socket.send(text.as_bytes()).unwrap();
        let n = socket.recv(&mut buf).expect("an echo through the edge");
        assert_eq!(&buf[..n], text.as_bytes());
    };
    // Two sessions from one address pass.
    let (a1, a2) = (client("127.0.2.1", edge), client("127.0.2.1", edge));
    echo(&a1, "a1");
    echo(&a2, "a2");
    // A third from the same address is dropped; then another address is served,
    // which (one worker, datagrams in order) proves the third was handled.
    let a3 = client("127.0.2.1", edge);
    a3.send(b"a3").unwrap();
    let b = client("127.0.2.2", edge);
    echo(&b, "b1");
    assert_eq!(*seen.lock().unwrap(), ["a1", "a2", "b1"]);
    // The sessions already open keep working.
    echo(&a1, "a1 again");
}
