//! Wiring: starts every part of the server from [`Settings`], and stops them in the
//! right order. Tests start whole servers in-process with [`start`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tanks_core::events::{EventPublisher, EventPump};
use tanks_core::telemetry;
use tokio::sync::watch;

use crate::commands::{self, MatchmakingEventConsumer, PlayerCommandConsumer};
use crate::config::{CommandPath, Settings};
use crate::control::{self, ControlState};
use crate::metrics::Metrics;
use crate::revocation::RevocationCheck;
use crate::sessions::SessionManager;
use crate::tcp::{self, TcpContext};
use crate::tick::{TickControl, Ticker};
use crate::udp::{self, SharedManager, UdpHandler};

/// A started server.
pub struct Running {
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub manager: SharedManager,
    pub metrics: Metrics,
    stop_udp: Arc<AtomicBool>,
    tick_control: TickControl,
    udp_thread: Option<std::thread::JoinHandle<()>>,
    tick_thread: Option<std::thread::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pump: Option<EventPump>,
    drain_timeout: Duration,
}

pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let (events, pump) = EventPublisher::start(settings.sink.clone(), metrics.events.clone())?;
    let manager: SharedManager = Arc::new(Mutex::new(SessionManager::new(
        settings.manager.clone(),
        events,
    )));
    let socket = Arc::new(udp::bind(settings.udp_addr, settings.socket_buffer)?);
    let udp_addr = socket.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (completed, completed_rx) = watch::channel(0u64);
    let mut tasks = Vec::new();

    let consumer = Arc::new(PlayerCommandConsumer {
        manager: manager.clone(),
        completed: completed_rx,
        metrics: metrics.clone(),
    });
    let broker = settings.command_path == CommandPath::Broker;
    let bus = if broker || settings.amqp_url.is_some() {
        let (bus, started) = commands::start_command_path(
            settings.amqp_url.clone(),
            settings.command_queue.clone(),
            settings.prefetch,
            consumer,
            shutdown_rx.clone(),
        );
        tasks.extend(started);
        broker.then_some(bus)
    } else {
        None
    };
    if let (Some(uri), Some(queue)) = (&settings.amqp_url, &settings.matchmaking_queue) {
        let consumer = Arc::new(MatchmakingEventConsumer {
            manager: manager.clone(),
            metrics: metrics.clone(),
        });
        tasks.push(commands::start_matchmaking(
            uri.clone(),
            queue.clone(),
            consumer,
            shutdown_rx.clone(),
        ));
    }

    let stop_udp = Arc::new(AtomicBool::new(false));
    let handler = UdpHandler::new(
        manager.clone(),
        socket.clone(),
        settings.signer.clone(),
        settings.require_token,
        settings.command_path,
        bus.clone(),
        settings.rate_limit,
        metrics.clone(),
    );
    let handler = match settings.revocation.clone() {
        Some(r) => {
            handler.with_revocations(RevocationCheck::new(r, metrics.revocation_checks.clone()))
        }
        None => handler,
    };
    let stop = stop_udp.clone();
    let udp_thread = std::thread::Builder::new()
        .name("udp-recv".into())
        .spawn(move || handler.run(stop))?;
    let tick_control = TickControl::default();
    let ticker = Ticker {
        manager: manager.clone(),
        socket: socket.clone(),
        metrics: metrics.clone(),
        completed,
        control: tick_control.clone(),
        send_threads: settings.send_threads,
    };
    let tick_thread = std::thread::Builder::new()
        .name("tick".into())
        .spawn(move || ticker.run())?;

    let listener = tokio::net::TcpListener::bind(settings.tcp_addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding TCP {}: {e}", settings.tcp_addr))?;
    let tcp_addr = listener.local_addr()?;
    let tcp_ctx = TcpContext {
        manager: manager.clone(),
        auth_addr: settings.auth_addr.clone(),
        path: settings.command_path,
        bus,
        metrics: metrics.clone(),
        limits: settings.tcp_limits,
    };
    tasks.push(tokio::spawn(tcp::serve(
        listener,
        tcp_ctx,
        shutdown_rx.clone(),
    )));

    let control_state = ControlState {
        manager: manager.clone(),
        secret: settings.control_secret.as_str().into(),
        metrics: metrics.clone(),
    };
    let (control_addr, control_task) = telemetry::serve_http(
        settings.control_addr,
        control::router(control_state),
        stopped(shutdown_rx.clone()),
    )
    .await?;
    tasks.push(control_task);
    let metrics_addr = match settings.metrics_addr {
        Some(addr) => {
            let router = telemetry::metrics_router(metrics.registry.clone());
            let (bound, task) =
                telemetry::serve_http(addr, router, stopped(shutdown_rx.clone())).await?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    tracing::info!(
        udp = %udp_addr, tcp = %tcp_addr, control = %control_addr, metrics = ?metrics_addr,
        command_path = settings.command_path.label(), require_token = settings.require_token,
        tick_rate = settings.manager.rules.tick_rate, max_sessions = settings.manager.max_sessions,
        players_per_session = settings.manager.players_per_session,
        "game server listening"
    );
    Ok(Running {
        udp_addr,
        tcp_addr,
        control_addr,
        metrics_addr,
        manager,
        metrics,
        stop_udp,
        tick_control,
        udp_thread: Some(udp_thread),
        tick_thread: Some(tick_thread),
        shutdown,
        tasks,
        pump: Some(pump),
        drain_timeout: settings.drain_timeout,
    })
}

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// How a drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainSummary {
    /// Sessions that ended by themselves while draining.
    pub finished_in_time: usize,
    /// Sessions still running at the deadline, ended by the server.
    pub ended_at_deadline: usize,
}

impl Running {
    fn sessions(&self) -> usize {
        self.manager
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions()
    }

    /// Stops taking sessions, lets running ones finish until the drain deadline, ends
    /// whatever is left (players get `game_over`), then stops everything and flushes
    /// events.
    pub async fn drain_and_stop(mut self) -> DrainSummary {
        let at_start = {
            let mut manager = self.manager.lock().unwrap_or_else(|p| p.into_inner());
            manager.drain();
            manager.sessions()
        };
        tracing::info!(
            sessions = at_start,
            deadline_s = self.drain_timeout.as_secs(),
            "draining"
        );
        let deadline = Instant::now() + self.drain_timeout;
        while self.sessions() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.sessions();
        self.tick_control.end_all_and_stop();
        join_thread(self.tick_thread.take()).await;
        self.stop_udp.store(true, Ordering::SeqCst);
        join_thread(self.udp_thread.take()).await;
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(pump) = self.pump.take() {
            pump.finish(Duration::from_secs(10)).await;
        }
        tracing::info!(
            finished_in_time = at_start - left,
            ended_at_deadline = left,
            "stopped"
        );
        DrainSummary {
            finished_in_time: at_start - left,
            ended_at_deadline: left,
        }
    }
}

async fn join_thread(thread: Option<std::thread::JoinHandle<()>>) {
    if let Some(thread) = thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Runs until `signal` (SIGTERM), then drains.
pub async fn run(
    settings: Settings,
    signal: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(settings).await?;
    signal.await;
    running.drain_and_stop().await;
    Ok(())
}
