//! Stopping and starting the real services of `hack/devenv`, one fault at a time.
//!
//! [`serialized`] takes a lock both process-wide and machine-wide (a `flock` on a file
//! in the devenv's state folder), so two fault tests never overlap, whether they run on
//! two threads of this binary or in two checkouts. [`Outage`] stops a service and
//! starts it again when dropped, also when the test fails: the services are shared
//! with other engineers, so every outage is as short as the test needs and always ends.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static IN_PROCESS: Mutex<()> = Mutex::new(());

/// Held for the whole of one fault test.
pub struct Serialized {
    /// Locked (`flock`); unlocked when closed.
    _file: File,
    _thread: MutexGuard<'static, ()>,
}

/// Waits until no other fault test runs, here or in another process.
pub fn serialized() -> Serialized {
    let thread = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let path = tanks_testkit::devenv_state().join("faults.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    Serialized {
        _file: file,
        _thread: thread,
    }
}

fn devenv_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/devenv")
}

/// Runs `hack/devenv <verb> <service>`, panicking with its output when it fails.
pub fn devenv(verb: &str, service: &str) {
    let out = Command::new(devenv_script())
        .args([verb, service])
        .output()
        .unwrap_or_else(|e| panic!("running hack/devenv {verb} {service}: {e}"));
    assert!(
        out.status.success(),
        "hack/devenv {verb} {service} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pid `hack/devenv` recorded for a running service.
pub fn pid_of(service: &str) -> i32 {
    let path = tanks_testkit::devenv_state()
        .join("pids")
        .join(format!("{service}.pid"));
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{service} is not running ({} unreadable)", path.display()))
}

/// A service kept down until this is dropped (or [`Outage::end`]ed).
pub struct Outage {
    service: &'static str,
    started: Instant,
    ended: Option<Duration>,
}

impl Outage {
    /// Stops `service` the devenv's way (SIGTERM to its process group, then SIGKILL).
    pub fn stop(service: &'static str) -> Outage {
        let started = Instant::now();
        devenv("down", service);
        eprintln!("[faults] {service} stopped");
        Outage {
            service,
            started,
            ended: None,
        }
    }

    /// SIGKILLs `service`'s process group: no shutdown of any kind.
    pub fn kill(service: &'static str) -> Outage {
        let pid = nix::unistd::Pid::from_raw(pid_of(service));
        let started = Instant::now();
        nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL)
            .unwrap_or_else(|e| panic!("SIGKILL {service} (pid {pid}): {e}"));
        // Reaped by nobody of ours: wait until the pid is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("[faults] {service} killed");
        Outage {
            service,
            started,
            ended: None,
        }
    }

    /// Starts the service again and waits until it is ready; returns how long it was
    /// away.
    pub fn end(&mut self) -> Duration {
        if let Some(d) = self.ended {
            return d;
        }
        devenv("up", self.service);
        let away = self.started.elapsed();
        self.ended = Some(away);
        eprintln!("[faults] {} back after {away:.1?}", self.service);
        away
    }

    /// [`Outage::end`] without blocking the async runtime.
    pub async fn end_async(mut self) -> Duration {
        tokio::task::spawn_blocking(move || self.end())
            .await
            .expect("hack/devenv up")
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.ended.is_none() {
            // Also on a failed test: the service is shared.
            self.end();
        }
    }
}

/// [`Outage::stop`] without blocking the async runtime.
pub async fn stop(service: &'static str) -> Outage {
    tokio::task::spawn_blocking(move || Outage::stop(service))
        .await
        .expect("hack/devenv down")
}

/// [`Outage::kill`] without blocking the async runtime.
pub async fn kill(service: &'static str) -> Outage {
    tokio::task::spawn_blocking(move || Outage::kill(service))
        .await
        .expect("SIGKILL")
}

/// Polls `probe` every 100 ms until it yields a value; after `limit`, fails naming what
/// was awaited and the last thing seen.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
