//! The real Nginx as the edge, run by tests: a config rendered by the operator's
//! `edge::render` (the bytes a deployed edge loads, with this host's paths), on
//! loopback ports, reloaded with SIGHUP as the edge's reloader does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tanks_operator::edge::render::{EdgeConfig, NginxRuntime, render};
use tanks_testkit::process::KillOnDrop;

pub struct Nginx {
    pub dir: PathBuf,
    master: KillOnDrop,
}

impl Nginx {
    /// Starts nginx in the foreground on `cfg` (its runtime section replaced by this
    /// host's: a private folder, listeners on 127.0.0.1); returns once it listens.
    pub fn start(name: &str, cfg: &EdgeConfig) -> Nginx {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("tanks-edge-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_config(&dir, cfg);
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting nginx ({e}): install it with hack/devenv (Debian: nginx-light libnginx-mod-stream)")
            });
        let nginx = Nginx {
            dir,
            master: KillOnDrop(child),
        };
        // The master writes its pid file after binding every listener.
        wait_for("nginx's pid file", Duration::from_secs(10), || {
            nginx.dir.join("nginx.pid").exists()
        });
        for route in &cfg.game {
            wait_for("nginx's UDP listeners", Duration::from_secs(10), || {
                udp_bound(route.edge_port)
            });
        }
        if let Some(auth) = &cfg.auth {
            let edge = std::net::SocketAddr::from(([127, 0, 0, 1], auth.listen_port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(edge).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nginx does not listen on {edge}:\n{}",
                    nginx.error_log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        nginx
    }

    /// Writes the new config and reloads (SIGHUP, as the reloader sends `nginx -s
    /// reload`); returns once a worker of the new generation runs.
    pub fn reload(&self, cfg: &EdgeConfig) {
        write_config(&self.dir, cfg);
        let before = self.workers();
        kill(Pid::from_raw(self.master.0.id() as i32), Signal::SIGHUP).unwrap();
        wait_for("a new nginx worker", Duration::from_secs(10), || {
            self.workers().iter().any(|w| !before.contains(w))
        });
    }

    /// The master's worker processes (children), by pid.
    pub fn workers(&self) -> Vec<u32> {
        children_of(self.master.0.id())
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // QUIT would wait for sessions; the test is over.
        let _ = kill(Pid::from_raw(self.master.0.id() as i32), Signal::SIGTERM);
        let _ = self.master.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `cfg` with this host's runtime, rendered, checked by `nginx -t`, written.
fn write_config(dir: &Path, cfg: &EdgeConfig) {
    let mut cfg = cfg.clone();
    cfg.runtime = NginxRuntime {
        load_modules: stream_module().into_iter().collect(),
        pid: dir.join("nginx.pid").display().to_string(),
        error_log: dir.join("error.log").display().to_string(),
        daemon_off: true,
        listen_address: Some([127, 0, 0, 1].into()),
    };
    let rendered = render(&cfg).expect("the test's config renders");
    let path = dir.join("nginx.conf");
    let next = dir.join("nginx.conf.next");
    std::fs::write(&next, &rendered.text).unwrap();
    let test = Command::new("nginx")
        .arg("-t")
        .arg("-q")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&next)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "nginx -t refused the rendered config:\n{}\n{}",
        String::from_utf8_lossy(&test.stderr),
        rendered.text
    );
    std::fs::rename(&next, &path).unwrap();
}

/// `load_module` this host's nginx needs for `stream {}`: none when built in.
fn stream_module() -> Option<String> {
    let out = Command::new("nginx").arg("-V").output().expect("nginx -V");
    let version = String::from_utf8_lossy(&out.stderr);
    if version.contains("--with-stream ") || version.trim_end().ends_with("--with-stream") {
        return None;
    }
    let found = [
        "/usr/lib/nginx/modules",
        "/usr/lib64/nginx/modules",
        "/usr/share/nginx/modules",
    ]
    .iter()
    .map(|d| Path::new(d).join("ngx_stream_module.so"))
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("nginx has no stream module (install libnginx-mod-stream)"));
    Some(found.display().to_string())
}

/// Whether a UDP socket is bound to `port` on this host (/proc/net/udp lists local
/// addresses as `HEXIP:HEXPORT`).
fn udp_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").contains(&needle))
        })
    })
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = &stat[stat.rfind(')')? + 2..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
