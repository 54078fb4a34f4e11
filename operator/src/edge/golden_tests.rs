//! Golden files of the rendering, and the real `nginx -t` on every one of them.
//!
//! `UPDATE_GOLDEN=1 cargo test -p operator --lib edge` rewrites the files; review the
//! diff like code, since it is exactly what every edge will load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::net::{Cidr, Upstream};
use super::plan::{GameServer, plan};
use super::ports::{EdgePortMap, PortPolicy};
use super::render::{
    Access, AuthRoute, EdgeConfig, GameRoute, Limits, NginxRuntime, RenderError, UdpPolicy, render,
};

fn up(host: &str, port: u16) -> Upstream {
    Upstream::new(host, port).unwrap()
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

fn route(server: &str, edge_port: u16, host: &str, port: u16) -> GameRoute {
    GameRoute {
        server: server.into(),
        edge_port,
        upstream: up(host, port),
    }
}

fn auth() -> AuthRoute {
    AuthRoute {
        listen_port: 8888,
        upstreams: vec![up("10.96.0.20", 8888)],
        proxy_protocol: true,
        max_connections_per_source: 16,
        connect_timeout_seconds: 5,
        idle_timeout_seconds: 300,
    }
}

fn udp() -> UdpPolicy {
    UdpPolicy {
        idle_timeout_seconds: 30,
        proxy_responses: None,
        max_sessions_per_source: 8,
        proxy_protocol: false,
    }
}

fn base() -> EdgeConfig {
    EdgeConfig {
        runtime: NginxRuntime::default(),
        limits: Limits {
            worker_processes: 1,
            worker_connections: 8192,
        },
        access: Access::default(),
        auth: Some(auth()),
        udp: udp(),
        game: Vec::new(),
    }
}

/// The scenarios: name (the golden file's stem) and config.
fn scenarios() -> Vec<(&'static str, EdgeConfig)> {
    let mut v = Vec::new();

    // An edge with only the auth server behind it, no per-source limits.
    let mut c = base();
    c.auth.as_mut().unwrap().max_connections_per_source = 0;
    c.auth.as_mut().unwrap().proxy_protocol = false;
    v.push(("auth_only", c));

    // The usual: auth and a fleet of three, given out of order, with access lists that
    // need normalizing (duplicates, host bits set).
    let mut c = base();
    c.auth.as_mut().unwrap().upstreams = vec![
        up("10.244.2.9", 8888),
        up("10.244.1.4", 8888),
        up("10.244.2.9", 8888),
    ];
    c.access = Access {
        allow: cidrs(&[
            "203.0.113.0/24",
            "198.51.100.7",
            "10.0.0.0/8",
            "203.0.113.99/24",
        ]),
        deny: cidrs(&["203.0.113.128/25"]),
    };
    c.game = vec![
        route("tanks/arena-7k2p9", 20002, "192.168.1.12", 7003),
        route("tanks/arena-b8x4q", 20000, "192.168.1.11", 7000),
        route("tanks/arena-c1m0z", 20001, "192.168.1.11", 7001),
    ];
    v.push(("fleet", c));

    // Game only, pod IPs over IPv6, PROXY header on UDP, proxy_responses, several
    // workers, a foreground nginx bound to one address with a dynamic stream module.
    let mut c = base();
    c.auth = None;
    c.runtime = NginxRuntime {
        load_modules: vec!["/usr/lib/nginx/modules/ngx_stream_module.so".into()],
        pid: "logs/nginx.pid".into(),
        error_log: "logs/error.log".into(),
        daemon_off: true,
        listen_address: Some("::".parse().unwrap()),
    };
    c.limits = Limits {
        worker_processes: 4,
        worker_connections: 1024,
    };
    c.udp = UdpPolicy {
        idle_timeout_seconds: 10,
        proxy_responses: Some(1),
        max_sessions_per_source: 0,
        proxy_protocol: true,
    };
    c.access.deny = cidrs(&["2001:db8:bad::/48"]);
    c.game = vec![
        route("tanks/duel-0", 30000, "fd00:10:244::5", 9999),
        route("tanks/duel-1", 30001, "fd00:10:244::6", 9999),
    ];
    v.push(("game_only_ipv6", c));

    // Through the port map: four servers, one scaled away (its port in quarantine, no
    // listener), one not yet scheduled (a port held, no listener).
    let policy = PortPolicy {
        start: 20000,
        end: 20099,
        quarantine: Duration::from_secs(300),
    };
    let mut map = EdgePortMap::new();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let server = |key: &str, host: Option<(&str, u16)>| GameServer {
        key: key.into(),
        upstream: host.map(|(h, p)| up(h, p)),
    };
    let first = [
        server("tanks/arena-a", Some(("192.168.1.11", 7000))),
        server("tanks/arena-b", Some(("192.168.1.11", 7001))),
        server("tanks/arena-c", Some(("192.168.1.12", 7000))),
    ];
    plan(&base(), &policy, &mut map, &first, t0).unwrap();
    let second = [
        server("tanks/arena-a", Some(("192.168.1.11", 7000))),
        server("tanks/arena-c", Some(("192.168.1.12", 7000))),
        server("tanks/arena-d", None),
        server("tanks/arena-e", Some(("192.168.1.13", 7000))),
    ];
    let p = plan(
        &base(),
        &policy,
        &mut map,
        &second,
        t0 + Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        p.endpoints
            .iter()
            .map(|(s, port)| (s.as_str(), *port))
            .collect::<Vec<_>>(),
        [
            ("tanks/arena-a", 20000),
            ("tanks/arena-c", 20002),
            ("tanks/arena-e", 20004)
        ]
    );
    assert_eq!(p.ports.assigned["tanks/arena-d"], 20003);
    let mut c = base();
    c.game = parse_routes(&p.rendered.text);
    assert_eq!(
        render(&c).as_ref(),
        Ok(&p.rendered),
        "parse_routes lost something"
    );
    v.push(("after_scale_down", c));
    v
}

/// The game routes back out of a rendered config (comment, listen, proxy_pass), so the
/// port-map scenario's golden file is a plain `render` like the others.
fn parse_routes(text: &str) -> Vec<GameRoute> {
    let mut routes = Vec::new();
    let mut server = None;
    let mut port = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# Game server ") {
            server = Some(rest.trim_end_matches('.').to_owned());
        } else if let Some(rest) = line.strip_prefix("listen ") {
            port = rest.split([' ', ';']).next().and_then(|p| p.parse().ok());
        } else if let (Some(rest), Some(s), Some(p)) =
            (line.strip_prefix("proxy_pass "), &server, port)
            && rest != "auth;"
        {
            let (host, up_port) = rest.trim_end_matches(';').rsplit_once(':').unwrap();
            routes.push(route(s, p, host, up_port.parse().unwrap()));
            server = None;
        }
    }
    routes
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/edge/golden")
}

#[test]
fn rendering_matches_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for (name, cfg) in scenarios() {
        let got = render(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let path = golden_dir().join(format!("{name}.conf"));
        if update {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &got.text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        if got.text != want {
            stale.push(format!(
                "{name}:\n--- want ({})\n{want}\n--- got\n{}",
                path.display(),
                got.text
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "rendering differs from the golden files (UPDATE_GOLDEN=1 to accept):\n{}",
        stale.join("\n")
    );
}

#[test]
fn same_input_same_bytes_and_any_change_changes_the_hash() {
    for (name, cfg) in scenarios() {
        let a = render(&cfg).unwrap();
        let mut shuffled = cfg.clone();
        shuffled.game.reverse();
        shuffled.access.allow.reverse();
        shuffled.access.deny.reverse();
        if let Some(auth) = shuffled.auth.as_mut() {
            auth.upstreams.reverse();
        }
        let b = render(&shuffled).unwrap();
        assert_eq!(a, b, "{name}: order of the input changed the output");
        assert_eq!(a.hash.len(), 64, "{name}");

        let mut changed = cfg.clone();
        changed.udp.idle_timeout_seconds += 1;
        changed
            .game
            .push(route("tanks/new", 40000, "192.168.9.9", 7000));
        assert_ne!(render(&changed).unwrap().hash, a.hash, "{name}");
    }
}

#[test]
fn bad_input_is_an_error_not_a_broken_config() {
    type Mutate = Box<dyn Fn(&mut EdgeConfig)>;
    let cases: Vec<(&str, Mutate, &str)> = vec![
        (
            "two servers on one port",
            Box::new(|c| {
                c.game = vec![
                    route("ns/a", 20000, "10.0.0.1", 1),
                    route("ns/b", 20000, "10.0.0.2", 1),
                ]
            }),
            "edge port 20000 is used by both ns/a and ns/b",
        ),
        (
            "a game port on the auth port",
            Box::new(|c| c.game = vec![route("ns/a", 8888, "10.0.0.1", 1)]),
            "edge port 8888 is used by both the auth listener and ns/a",
        ),
        (
            "a server name that would break out of its comment",
            Box::new(|c| c.game = vec![route("ns/a\n}", 20000, "10.0.0.1", 1)]),
            "characters a config comment cannot carry",
        ),
        (
            "no auth upstream",
            Box::new(|c| c.auth.as_mut().unwrap().upstreams.clear()),
            "no upstream",
        ),
        (
            "zero workers",
            Box::new(|c| c.limits.worker_processes = 0),
            "worker_processes",
        ),
        (
            "zero connections",
            Box::new(|c| c.limits.worker_connections = 0),
            "worker_connections",
        ),
        (
            "zero udp timeout",
            Box::new(|c| c.udp.idle_timeout_seconds = 0),
            "UDP idle timeout",
        ),
        (
            "zero connect timeout",
            Box::new(|c| c.auth.as_mut().unwrap().connect_timeout_seconds = 0),
            "connect timeout",
        ),
        (
            "a path with a directive in it",
            Box::new(|c| c.runtime.pid = "/tmp/x; daemon on".into()),
            "plain path",
        ),
    ];
    for (name, mutate, want) in cases {
        let mut cfg = base();
        mutate(&mut cfg);
        let err: RenderError = render(&cfg).expect_err(name);
        assert!(err.to_string().contains(want), "{name}: {err}");
    }
}

// ---- the real nginx ----

/// The nginx binary, or a loud failure: this test does not skip.
fn nginx() -> (PathBuf, String) {
    let out = Command::new("nginx").arg("-V").output().unwrap_or_else(|e| {
        panic!(
            "nginx is not installed ({e}); this test runs the real `nginx -t` and does not skip. \
             Install it with `hack/devenv` (Debian: apt-get install -y nginx-light libnginx-mod-stream)."
        )
    });
    (
        PathBuf::from("nginx"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `load_module` lines this nginx needs for `stream {}`: none when it is built in.
fn stream_module(version: &str) -> Option<PathBuf> {
    if version.contains("--with-stream ") || version.ends_with("--with-stream") {
        return None;
    }
    let candidates = [
        "/usr/lib/nginx/modules",
        "/usr/lib64/nginx/modules",
        "/usr/share/nginx/modules",
        "/etc/nginx/modules",
    ];
    let found = candidates
        .iter()
        .map(|d| Path::new(d).join("ngx_stream_module.so"))
        .find(|p| p.exists());
    Some(found.unwrap_or_else(|| {
        panic!(
            "nginx has no stream module (`nginx -V`: {version}). Install it \
             (Debian: apt-get install -y libnginx-mod-stream); this test does not skip."
        )
    }))
}

#[test]
fn nginx_accepts_every_rendered_config() {
    let (nginx, version) = nginx();
    let module = stream_module(&version);
    let dir = std::env::temp_dir().join(format!(
        "tanks-edge-nginx-t-{}-{}",
        std::process::id(),
        now_nanos()
    ));
    std::fs::create_dir_all(dir.join("logs")).unwrap();

    let mut failures = Vec::new();
    for (name, cfg) in scenarios() {
        let rendered = render(&cfg).unwrap();
        // The rendered bytes, but for `load_module` lines: the module is where this
        // host's nginx has it (or built in), so a wrapper loads it and includes the rest.
        let body: String = rendered
            .text
            .lines()
            .filter(|l| !l.starts_with("load_module "))
            .map(|l| format!("{l}\n"))
            .collect();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, body).unwrap();
        let top = match &module {
            Some(path) => {
                let wrapper = dir.join(format!("{name}.wrapper.conf"));
                std::fs::write(
                    &wrapper,
                    format!(
                        "load_module {};\ninclude {};\n",
                        path.display(),
                        conf.display()
                    ),
                )
                .unwrap();
                wrapper
            }
            None => conf.clone(),
        };
        let out = Command::new(&nginx)
            .arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&top)
            .output()
            .unwrap_or_else(|e| panic!("running nginx: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        // -q leaves only errors and warnings; a warning (a meaningless CIDR, an fd limit)
        // is a rendering bug too.
        if !out.status.success() || !stderr.trim().is_empty() {
            failures.push(format!(
                "{name}: nginx -t exited {}:\n{stderr}\n{}",
                out.status, rendered.text
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "nginx rejected rendered configs:\n{}",
        failures.join("\n")
    );
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
