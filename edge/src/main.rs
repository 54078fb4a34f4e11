//! `tanks-edge`: the edge pod's supervisor. It follows the ConfigMap the operator
//! renders (`<edge>-nginx`, through the API), starts nginx as its child in the
//! foreground once a config passes `nginx -t`, and reloads it (SIGHUP, never a restart)
//! each time the config's bytes change and the new ones pass `nginx -t`. A config nginx
//! refuses is reported (`/status`, logs) and the running one stays. If nginx dies, so
//! does the supervisor, non-zero, and the pod restarts.
//!
//! `/healthz`: 200 while nginx runs. `/status`: nginx's pid, the SHA-256 of the loaded
//! config, the number of reloads, the last refused config and why.
#![forbid(unsafe_code)]

mod nginx;
mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{error, info, warn};

use nginx::Nginx;

#[derive(Parser, Debug)]
#[command(
    name = "tanks-edge",
    about = "Runs nginx with the config the tanks operator renders, and reloads it when it changes."
)]
struct Args {
    /// The ConfigMap's namespace (in a pod: from the downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The ConfigMap the operator writes: `<edge name>-nginx`.
    #[arg(long, env = "EDGE_CONFIG_MAP")]
    config_map: String,
    #[arg(long, env = "EDGE_NGINX", default_value = "nginx")]
    nginx: PathBuf,
    /// Where the config files are written; nginx's prefix.
    #[arg(long, env = "EDGE_DIR", default_value_os_t = nginx::default_dir())]
    dir: PathBuf,
    /// A dynamic module to load before the config (repeat for several), e.g. Debian's
    /// /usr/lib/nginx/modules/ngx_stream_module.so. None when stream is built in.
    #[arg(long = "load-module", env = "EDGE_LOAD_MODULES", value_delimiter = ',')]
    load_modules: Vec<PathBuf>,
    /// `/healthz` and `/status`.
    #[arg(long, env = "EDGE_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    health_addr: SocketAddr,
}

/// What `/status` shows.
#[derive(Debug, Default, Clone, Serialize)]
struct Status {
    /// nginx's master; stays the same across reloads.
    pid: Option<u32>,
    /// SHA-256 of the config nginx was last told to load (the operator's configHash).
    loaded_hash: Option<String>,
    reloads: u64,
    /// The newest config nginx refused, and why; cleared by the next good one.
    refused_hash: Option<String>,
    refused_error: Option<String>,
}

type Shared = Arc<Mutex<Status>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(supervise(args))
}

async fn supervise(args: Args) -> anyhow::Result<()> {
    // kube brings rustls; install one provider before any TLS connection.
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_tracing();
    let status: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .with_context(|| format!("binding {}", args.health_addr))?;
    info!(addr = %listener.local_addr()?, "health and status listening");
    let router = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status_json))
        .with_state(status.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            error!(error = %e, "health server stopped");
        }
    });

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let (tx, mut configs) = watch::channel(None);
    let (ns, name) = (args.namespace.clone(), args.config_map.clone());
    tokio::spawn(async move { source::follow(client, &ns, &name, tx).await });
    info!(namespace = %args.namespace, configmap = %args.config_map, "waiting for the edge config");

    let nginx = Nginx {
        binary: args.nginx,
        dir: args.dir,
        load_modules: args.load_modules,
    };
    let mut shutdown = std::pin::pin!(shutdown_signal());

    // The first config nginx accepts starts it.
    let first = loop {
        tokio::select! {
            changed = configs.changed() => changed.context("the ConfigMap watch stopped")?,
            _ = &mut shutdown => return Ok(()),
        }
        let Some(text) = configs.borrow_and_update().clone() else {
            continue;
        };
        if try_load(&nginx, &text, &status).await {
            break text;
        }
    };
    let mut child = nginx.start()?;
    let pid = child.id().context("nginx exited at once")?;
    {
        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
        s.pid = Some(pid);
        s.loaded_hash = Some(sha256(&first));
    }
    info!(pid, hash = %sha256(&first), "nginx started");

    loop {
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.context("waiting for nginx")?;
                anyhow::bail!("nginx exited ({exit})");
            }
            changed = configs.changed() => {
                changed.context("the ConfigMap watch stopped")?;
                let Some(text) = configs.borrow_and_update().clone() else { continue };
                let hash = sha256(&text);
                let loaded = status.lock().unwrap_or_else(|p| p.into_inner()).loaded_hash.clone();
                if loaded.as_deref() == Some(hash.as_str()) {
                    continue;
                }
                if try_load(&nginx, &text, &status).await {
                    nginx::reload(pid)?;
                    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                    s.loaded_hash = Some(hash.clone());
                    s.reloads += 1;
                    info!(pid, %hash, reloads = s.reloads, "nginx reloaded");
                }
            }
            _ = &mut shutdown => {
                info!("stopping nginx gracefully");
                nginx::quit(pid)?;
                let exit = child.wait().await.context("waiting for nginx")?;
                info!(%exit, "nginx stopped");
                return Ok(());
            }
        }
    }
}

/// `nginx -t`, then install: true when the text is now the live config.
async fn try_load(nginx: &Nginx, text: &str, status: &Shared) -> bool {
    let hash = sha256(text);
    let result = match nginx.check(text).await {
        Ok(()) => nginx.promote().await,
        Err(e) => Err(e),
    };
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(()) => {
            s.refused_hash = None;
            s.refused_error = None;
            true
        }
        Err(e) => {
            warn!(%hash, error = %format!("{e:#}"), "config refused; nginx keeps the one it runs");
            s.refused_hash = Some(hash);
            s.refused_error = Some(format!("{e:#}"));
            false
        }
    }
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn healthz(State(status): State<Shared>) -> (StatusCode, &'static str) {
    let running = status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pid
        .is_some();
    if running {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for a config nginx accepts",
        )
    }
}

async fn status_json(State(status): State<Shared>) -> Json<Status> {
    Json(status.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
