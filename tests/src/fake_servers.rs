//! Many game servers' control interfaces in one in-process HTTP listener, for tests and
//! benchmarks of allocation at a scale where a thousand real game-server processes would
//! not fit on the machine. It keeps the contract of `tanks_core::protocol::control`:
//! sessions idempotent on the match id, 409 `full` / `draining`, load reports with live
//! and finished match sessions. It also records what no real server can tell: the most
//! sessions any server ever held at once, and every server a match id reached.
//!
//! [`FakeServers::accept_past_capacity`] turns the `full` refusal off: a server then
//! takes every session it is asked for and counts those past its capacity, so a test
//! sees an allocator that overbooks instead of a server that quietly saved it.
//!
//! Server `name` answers under `http://127.0.0.1:<port>/s/<name>`; [`FakeServers::resolver`]
//! maps a pod to that base URL.
//!
//! It lives here rather than in the operator so the product crate carries no test
//! doubles; it needs nothing of the operator's (the resolver is a plain closure over a
//! pod), so this crate does not depend on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tanks_core::protocol::control::{
    ControlError, CreateSession, FinishedSession, LoadReport, MatchSession, SessionCreated,
};

/// The operator's `servers::EndpointResolver`: a pod to the base URL of its control
/// interface.
pub type EndpointResolver = Arc<dyn Fn(&Pod) -> Option<String> + Send + Sync>;

#[derive(Debug, Default, Clone)]
struct Server {
    capacity: u32,
    draining: bool,
    /// match id → (session id, players).
    live: HashMap<String, (String, u32)>,
    finished: Vec<FinishedSession>,
    peak: u32,
}

#[derive(Default)]
struct Inner {
    servers: HashMap<String, Server>,
    /// match id → servers that created a session for it.
    placements: HashMap<String, Vec<String>>,
    next_session: u64,
    /// Sessions taken past capacity are accepted (and counted) instead of refused.
    lenient: bool,
    /// Sessions accepted while the server already held its capacity.
    over_capacity: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct FakeServers {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    default_capacity: u32,
    /// Sessions created so far (for [`FakeServers::sessions_created`]).
    created: Arc<tokio::sync::watch::Sender<usize>>,
}

impl FakeServers {
    /// Starts the listener; servers unknown so far are created on first contact with
    /// `default_capacity` sessions.
    pub async fn start(default_capacity: u32) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let fake = FakeServers {
            inner: Arc::default(),
            addr,
            default_capacity,
            created: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        let router = axum::Router::new()
            .route("/s/{server}/v1/load", get(load))
            .route("/s/{server}/v1/sessions", post(create))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(fake)
    }

    pub fn base_url(&self, server: &str) -> String {
        format!("http://{}/s/{server}", self.addr)
    }

    /// Pods to their fake server, by pod name.
    pub fn resolver(&self) -> EndpointResolver {
        let fake = self.clone();
        Arc::new(move |pod: &Pod| Some(fake.base_url(&pod.name_any())))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("fake servers lock"))
    }

    pub fn set_draining(&self, server: &str, draining: bool) {
        let cap = self.default_capacity;
        self.with(|i| {
            i.servers
                .entry(server.into())
                .or_insert_with(|| Server {
                    capacity: cap,
                    ..Default::default()
                })
                .draining = draining
        });
    }

    /// Players joined a match's session.
    pub fn join(&self, match_id: &str, players: u32) {
        self.with(|i| {
            for s in i.servers.values_mut() {
                if let Some(live) = s.live.get_mut(match_id) {
                    live.1 = players;
                }
            }
        });
    }

    /// The session of a match ended: the slot frees and the report lists it as finished.
    pub fn finish(&self, match_id: &str) {
        self.with(|i| {
            for s in i.servers.values_mut() {
                if let Some((session_id, _)) = s.live.remove(match_id) {
                    s.finished.push(FinishedSession {
                        match_id: match_id.into(),
                        session_id,
                        finished_at: 0,
                        reason: "completed".into(),
                    });
                }
            }
        });
    }

    /// From now on a full server accepts new sessions anyway, and records each (see
    /// [`FakeServers::over_capacity_acceptances`]): the allocator alone must keep within
    /// capacity.
    pub fn accept_past_capacity(&self) {
        self.with(|i| i.lenient = true);
    }

    /// Resolves as soon as `n` sessions have been created in all (a test can act at
    /// that exact point of an allocation burst, not a poll interval later).
    pub async fn sessions_created(&self, n: usize) {
        let mut rx = self.created.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Sessions created so far, over all servers and the whole run (a match asked twice
    /// of the same server counts once: creation is idempotent on the match id).
    pub fn sessions_created_total(&self) -> usize {
        *self.created.borrow()
    }

    /// `(server, match id)` of every session accepted while its server was full.
    pub fn over_capacity_acceptances(&self) -> Vec<(String, String)> {
        self.with(|i| i.over_capacity.clone())
    }

    /// The most sessions any server held at once, and its capacity.
    pub fn peak_over_capacity(&self) -> Vec<(String, u32, u32)> {
        self.with(|i| {
            i.servers
                .iter()
                .filter(|(_, s)| s.peak > s.capacity)
                .map(|(n, s)| (n.clone(), s.peak, s.capacity))
                .collect()
        })
    }

    /// Match ids that got a session on more than one server.
    pub fn doubly_placed(&self) -> Vec<(String, Vec<String>)> {
        self.with(|i| {
            i.placements
                .iter()
                .filter(|(_, s)| s.len() > 1)
                .map(|(m, s)| (m.clone(), s.clone()))
                .collect()
        })
    }

    /// Live sessions over all servers.
    pub fn live_sessions(&self) -> usize {
        self.with(|i| i.servers.values().map(|s| s.live.len()).sum())
    }
}

async fn load(State(fake): State<FakeServers>, Path(server): Path<String>) -> Json<LoadReport> {
    let cap = fake.default_capacity;
    Json(fake.with(|i| {
        let s = i.servers.entry(server.clone()).or_insert_with(|| Server {
            capacity: cap,
            ..Default::default()
        });
        LoadReport {
            server,
            sessions: s.live.len() as u32,
            players: s.live.values().map(|(_, p)| p).sum(),
            session_capacity: s.capacity,
            players_per_session: 14,
            draining: s.draining,
            ready: true,
            matches: s
                .live
                .iter()
                .map(|(m, (sid, players))| MatchSession {
                    match_id: m.clone(),
                    session_id: sid.clone(),
                    players: *players,
                    created_at: 0,
                })
                .collect(),
            finished: s.finished.clone(),
        }
    }))
}

async fn create(
    State(fake): State<FakeServers>,
    Path(server): Path<String>,
    Json(req): Json<CreateSession>,
) -> Response {
    let cap = fake.default_capacity;
    fake.with(|i| {
        i.next_session += 1;
        let next = i.next_session;
        let s = i.servers.entry(server.clone()).or_insert_with(|| Server {
            capacity: cap,
            ..Default::default()
        });
        if let Some((session_id, _)) = s.live.get(&req.match_id) {
            let body = SessionCreated {
                match_id: req.match_id,
                session_id: session_id.clone(),
                created: false,
            };
            return (StatusCode::OK, Json(body)).into_response();
        }
        let refuse = |error: &str| {
            let body = ControlError {
                error: error.into(),
                message: format!("server {server} is {error}"),
            };
            (StatusCode::CONFLICT, Json(body)).into_response()
        };
        if s.draining {
            return refuse("draining");
        }
        if s.live.len() as u32 >= s.capacity {
            if !i.lenient {
                return refuse("full");
            }
            i.over_capacity.push((server.clone(), req.match_id.clone()));
        }
        let session_id = format!("session-{next}");
        s.live.insert(req.match_id.clone(), (session_id.clone(), 0));
        s.peak = s.peak.max(s.live.len() as u32);
        i.placements
            .entry(req.match_id.clone())
            .or_default()
            .push(server.clone());
        fake.created.send_modify(|c| *c += 1);
        let body = SessionCreated {
            match_id: req.match_id,
            session_id,
            created: true,
        };
        (StatusCode::OK, Json(body)).into_response()
    })
}
