//! nginx.conf from plain data.
//!
//! The output is a pure function of [`EdgeConfig`]: lists are sorted and deduplicated,
//! nothing depends on time or map order, so the same input always gives the same bytes
//! and the operator can write (and the edge reload) only when the bytes change.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::net::{Cidr, Upstream, is_server_key};

/// Everything the config is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    pub runtime: NginxRuntime,
    pub limits: Limits,
    pub access: Access,
    /// The TCP listener in front of the auth server; `None` for an edge that only
    /// carries game traffic.
    pub auth: Option<AuthRoute>,
    pub udp: UdpPolicy,
    /// One UDP listener per game server, in any order.
    pub game: Vec<GameRoute>,
}

/// Where nginx runs: paths and modules belong to the image, not to the Edge spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxRuntime {
    /// `load_module` paths (Debian's nginx has the stream module as a dynamic module;
    /// the official image builds it in and needs none).
    pub load_modules: Vec<String>,
    pub pid: String,
    pub error_log: String,
    /// Render `daemon off;`: for running nginx directly in the foreground. The official
    /// image passes `-g 'daemon off;'` itself, and nginx refuses the directive twice.
    pub daemon_off: bool,
    /// Bind listeners to one address (tests, a host with several); `None`: all.
    pub listen_address: Option<IpAddr>,
}

impl Default for NginxRuntime {
    /// The edge container: a read-only root file system with /tmp writable, logs to
    /// the container's stderr.
    fn default() -> Self {
        NginxRuntime {
            load_modules: Vec::new(),
            pid: "/tmp/nginx.pid".into(),
            error_log: "stderr".into(),
            daemon_off: false,
            listen_address: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub worker_processes: u32,
    /// Proxied connections one worker may hold. Each proxied TCP connection or UDP
    /// session takes two (client side and upstream side). The rendered
    /// `worker_connections` adds one per listener: nginx counts its listening sockets
    /// against the same limit and refuses a config without room for them ("worker
    /// connections are not enough for N listening sockets"), so without this a
    /// scale-up past the limit would make the next reload fail.
    pub worker_connections: u32,
}

/// Source address rules for every listener. A deny wins over an allow; a non-empty
/// allow list makes everything else denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRoute {
    pub listen_port: u16,
    /// The auth server's addresses (its Service's cluster IP, or its pods).
    pub upstreams: Vec<Upstream>,
    /// Send the PROXY protocol v1 header upstream, so the auth server sees the
    /// client's address; the auth server must then run with `--proxy-protocol` and
    /// the edge's addresses in `--trusted-proxies`.
    pub proxy_protocol: bool,
    /// Concurrent connections from one address; 0: no limit.
    pub max_connections_per_source: u32,
    pub connect_timeout_seconds: u32,
    /// The connection closes after this long without a byte either way.
    pub idle_timeout_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPolicy {
    /// A session (client address and port ↔ upstream) ends after this long without a
    /// datagram either way (`proxy_timeout`).
    pub idle_timeout_seconds: u32,
    /// `proxy_responses`: datagrams expected back per client datagram. `None` (no
    /// limit) suits the game: the server streams state at its own pace.
    pub proxy_responses: Option<u32>,
    /// Concurrent UDP sessions from one address across all game listeners; 0: none.
    pub max_sessions_per_source: u32,
    /// Prepend the PROXY v1 header to the first datagram of each session. The game
    /// server does not read it (players are their token, see docs/operator.md,
    /// "Client addresses"): leave it off.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GameRoute {
    /// The server's key in the port map (`namespace/pod`), shown in a comment.
    pub server: String,
    pub edge_port: u16,
    /// Node IP and host port, or pod IP and game port.
    pub upstream: Upstream,
}

/// The config and its SHA-256, hex: the status and the reloader compare this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("edge port {port} is used by both {first} and {second}")]
    PortTwice {
        port: u16,
        first: String,
        second: String,
    },
    #[error("game server name {0:?} has characters a config comment cannot carry")]
    ServerKey(String),
    #[error("the auth route has no upstream address")]
    NoAuthUpstream,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("nginx runtime path {0:?} must be a plain path (no spaces, quotes, `;`, braces)")]
    Path(String),
}

/// Zone sizes: 10 MiB holds about 160,000 IPv4 sources (64 bytes a state). Fixed,
/// since the edge's memory is set by its Deployment rather than per spec.
const ZONE_SIZE: &str = "10m";
/// File descriptors beyond the connection slots (logs, the pid file, the master's
/// channels).
const FD_SLACK: u32 = 64;

pub fn render(cfg: &EdgeConfig) -> Result<Rendered, RenderError> {
    check(cfg)?;

    let mut game: Vec<&GameRoute> = cfg.game.iter().collect();
    game.sort_by(|a, b| (a.edge_port, &a.server).cmp(&(b.edge_port, &b.server)));

    let listeners_per_worker = game.len() + usize::from(cfg.auth.is_some());
    let worker_connections = u64::from(cfg.limits.worker_connections)
        .saturating_add(listeners_per_worker as u64)
        .min(u64::from(u32::MAX));
    let nofile = worker_connections.saturating_add(u64::from(FD_SLACK));

    let mut out = String::new();
    // Writing to a String cannot fail; `w!` drops the Ok.
    macro_rules! w {
        ($($arg:tt)*) => { let _ = writeln!(out, $($arg)*); };
    }
    // One blank line between sections, never two, whichever sections are present.
    macro_rules! section {
        () => {
            if !out.ends_with("{\n") && !out.ends_with("\n\n") {
                out.push('\n');
            }
        };
    }

    w!("# Rendered by the tanks operator. Do not edit: the next render replaces it.");
    for module in sorted(&cfg.runtime.load_modules) {
        w!("load_module {module};");
    }
    if cfg.runtime.daemon_off {
        w!("daemon off;");
    }
    w!("pid {};", cfg.runtime.pid);
    w!("error_log {} warn;", cfg.runtime.error_log);
    w!("worker_processes {};", cfg.limits.worker_processes);
    w!("worker_rlimit_nofile {nofile};");
    w!();
    w!("events {{");
    w!(
        "    # {} for proxied connections + {listeners_per_worker} listener(s).",
        cfg.limits.worker_connections
    );
    w!("    worker_connections {worker_connections};");
    w!("}}");
    w!();
    w!("stream {{");

    let deny = sorted(&cfg.access.deny);
    let allow = sorted(&cfg.access.allow);
    if !deny.is_empty() || !allow.is_empty() {
        section!();
        // First match wins: denies first, so a denied range inside an allowed one stays
        // denied.
        w!("    # Source address rules, for every listener.");
        for cidr in &deny {
            w!("    deny {cidr};");
        }
        for cidr in &allow {
            w!("    allow {cidr};");
        }
        if !allow.is_empty() {
            w!("    deny all;");
        }
    }

    let auth_limit = cfg
        .auth
        .as_ref()
        .map_or(0, |a| a.max_connections_per_source);
    let game_limit = if game.is_empty() {
        0
    } else {
        cfg.udp.max_sessions_per_source
    };
    if auth_limit > 0 || game_limit > 0 {
        section!();
    }
    if auth_limit > 0 {
        w!("    limit_conn_zone $binary_remote_addr zone=auth_per_source:{ZONE_SIZE};");
    }
    if game_limit > 0 {
        // One zone for every game listener: the cap is per player address, whichever
        // server they play on.
        w!("    limit_conn_zone $binary_remote_addr zone=game_per_source:{ZONE_SIZE};");
    }

    let listen = |port: u16| match cfg.runtime.listen_address {
        None => port.to_string(),
        Some(IpAddr::V4(v4)) => format!("{v4}:{port}"),
        Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
    };

    if let Some(auth) = &cfg.auth {
        section!();
        w!("    upstream auth {{");
        for upstream in sorted(&auth.upstreams) {
            w!("        server {upstream};");
        }
        w!("    }}");
        w!();
        w!("    # The auth server: TCP, JSON lines.");
        w!("    server {{");
        w!("        listen {};", listen(auth.listen_port));
        if auth_limit > 0 {
            w!("        limit_conn auth_per_source {auth_limit};");
        }
        w!(
            "        proxy_connect_timeout {}s;",
            auth.connect_timeout_seconds
        );
        w!("        proxy_timeout {}s;", auth.idle_timeout_seconds);
        if auth.proxy_protocol {
            w!("        proxy_protocol on;");
        }
        w!("        proxy_pass auth;");
        w!("    }}");
    }

    for route in &game {
        section!();
        w!("    # Game server {}.", route.server);
        w!("    server {{");
        // reuseport: the kernel hashes a client's datagrams to one worker, so with
        // several workers a player's flow never splits into two upstream sessions.
        w!("        listen {} udp reuseport;", listen(route.edge_port));
        if game_limit > 0 {
            w!("        limit_conn game_per_source {game_limit};");
        }
        w!("        proxy_timeout {}s;", cfg.udp.idle_timeout_seconds);
        if let Some(n) = cfg.udp.proxy_responses {
            w!("        proxy_responses {n};");
        }
        if cfg.udp.proxy_protocol {
            w!("        proxy_protocol on;");
        }
        w!("        proxy_pass {};", route.upstream);
        w!("    }}");
    }
    w!("}}");

    let hash = hex(&Sha256::digest(out.as_bytes()));
    Ok(Rendered { text: out, hash })
}

fn check(cfg: &EdgeConfig) -> Result<(), RenderError> {
    if cfg.limits.worker_processes == 0 {
        return Err(RenderError::Zero("worker_processes"));
    }
    if cfg.limits.worker_connections == 0 {
        return Err(RenderError::Zero("worker_connections"));
    }
    if cfg.udp.idle_timeout_seconds == 0 {
        return Err(RenderError::Zero("the UDP idle timeout"));
    }
    let runtime = &cfg.runtime;
    for path in runtime
        .load_modules
        .iter()
        .chain([&runtime.pid, &runtime.error_log])
    {
        if !is_plain_path(path) {
            return Err(RenderError::Path(path.clone()));
        }
    }

    let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
    if let Some(auth) = &cfg.auth {
        if auth.upstreams.is_empty() {
            return Err(RenderError::NoAuthUpstream);
        }
        if auth.connect_timeout_seconds == 0 {
            return Err(RenderError::Zero("the auth connect timeout"));
        }
        if auth.idle_timeout_seconds == 0 {
            return Err(RenderError::Zero("the auth idle timeout"));
        }
        ports.insert(auth.listen_port, "the auth listener");
    }
    for route in &cfg.game {
        if !is_server_key(&route.server) {
            return Err(RenderError::ServerKey(route.server.clone()));
        }
        // TCP and UDP could share a number, but one port meaning one thing keeps the
        // Service, firewalls and people's heads simple.
        if let Some(first) = ports.insert(route.edge_port, &route.server) {
            return Err(RenderError::PortTwice {
                port: route.edge_port,
                first: first.to_owned(),
                second: route.server.clone(),
            });
        }
    }
    Ok(())
}

fn is_plain_path(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(b, b';' | b'{' | b'}' | b'"' | b'\'' | b'#' | b'$' | b'\\')
        })
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items.dedup();
    items
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
