//! Running the workspace's own binaries from integration tests.

use std::path::PathBuf;
use std::process::Child;

/// The workspace binary `name` built with the same profile as the running program:
/// integration tests live in `target/<profile>/deps`, binaries (a benchmark starting the
/// operator, say) in `target/<profile>` itself, beside the others. Panics with the
/// command that builds it when it is missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running program's path");
    let mut dir = exe.parent().expect("the running program's folder");
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir = dir.parent().expect("the profile folder");
    }
    let path = dir.join(name);
    let release = if dir.file_name().is_some_and(|d| d == "release") {
        " --release"
    } else {
        ""
    };
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build{release} --workspace --bins`)",
        path.display()
    );
    path
}

/// A loopback port free right now (the OS picks it; a tiny race with other processes
/// is accepted in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed and reaped when dropped (also when the test panics).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
