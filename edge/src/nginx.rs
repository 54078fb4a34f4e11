//! nginx as a child process: check a config (`nginx -t`), start it in the foreground,
//! reload it (SIGHUP to the master: new workers take the new config, old ones finish
//! their connections; never a restart), stop it gracefully (SIGQUIT).
//!
//! The rendered config is included from a small top file the supervisor writes, which
//! first loads the modules this nginx needs (`--load-module`: Debian builds the stream
//! module as a dynamic one, the official image builds it in). The operator's bytes are
//! thus loaded unchanged, whatever the image.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub struct Nginx {
    pub binary: PathBuf,
    /// Where the config files are written (also nginx's prefix).
    pub dir: PathBuf,
    pub load_modules: Vec<PathBuf>,
}

/// The file nginx runs from: the modules, then the live rendered config.
const TOP: &str = "nginx.conf";
const LIVE: &str = "edge.conf";
const CANDIDATE_TOP: &str = "candidate-top.conf";
const CANDIDATE: &str = "candidate.conf";

impl Nginx {
    /// Writes `text` as the candidate and runs `nginx -t` on it; the error is what
    /// nginx said.
    pub async fn check(&self, text: &str) -> anyhow::Result<()> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .with_context(|| format!("creating {}", self.dir.display()))?;
        self.write(CANDIDATE, text).await?;
        self.write(CANDIDATE_TOP, &self.top(CANDIDATE)).await?;
        let out = Command::new(&self.binary)
            .args(["-t", "-q", "-e", "stderr", "-p"])
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join(CANDIDATE_TOP))
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {} -t", self.binary.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "nginx -t refused the config ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Makes the checked candidate the live config (a rename: nginx never reads half a
    /// file).
    pub async fn promote(&self) -> anyhow::Result<()> {
        self.write(TOP, &self.top(LIVE)).await?;
        tokio::fs::rename(self.dir.join(CANDIDATE), self.dir.join(LIVE))
            .await
            .context("installing the checked config")
    }

    /// nginx in the foreground, its logs on ours.
    pub fn start(&self) -> anyhow::Result<Child> {
        Command::new(&self.binary)
            .args(["-e", "stderr", "-g", "daemon off;", "-p"])
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join(TOP))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))
    }

    fn top(&self, include: &str) -> String {
        let mut top =
            String::from("# Written by tanks-edge: modules, then the operator's config.\n");
        for module in &self.load_modules {
            top.push_str(&format!("load_module {};\n", module.display()));
        }
        top.push_str(&format!("include {};\n", self.dir.join(include).display()));
        top
    }

    async fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, text)
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Asks the master to reload its config.
pub fn reload(pid: u32) -> anyhow::Result<()> {
    signal(pid, Signal::SIGHUP)
}

/// Graceful stop: workers finish their connections first.
pub fn quit(pid: u32) -> anyhow::Result<()> {
    signal(pid, Signal::SIGQUIT)
}

fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    kill(Pid::from_raw(pid), sig).with_context(|| format!("sending {sig} to nginx ({pid})"))
}

/// Where the config files go by default.
pub fn default_dir() -> PathBuf {
    Path::new("/tmp").join("tanks-edge")
}
