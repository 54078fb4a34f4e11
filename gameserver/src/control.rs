//! The control interface the operator calls (see `tanks_core::protocol::control`):
//! load, session creation (idempotent on the match id), drain, and probes. Every
//! call but the probes needs `Authorization: Bearer <secret>`, compared in constant
//! time.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Json, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;
use tanks_core::protocol::control::{
    ControlError, CreateSession, DRAIN_PATH, HEALTHZ_PATH, LOAD_PATH, READYZ_PATH, SESSIONS_PATH,
};

use crate::metrics::Metrics;
use crate::sessions::SessionManager;

#[derive(Clone)]
pub struct ControlState {
    pub manager: Arc<Mutex<SessionManager>>,
    pub secret: Arc<str>,
    pub metrics: Metrics,
}

pub fn router(state: ControlState) -> Router {
    Router::new()
        .route(LOAD_PATH, get(load))
        .route(SESSIONS_PATH, post(create_session))
        .route(DRAIN_PATH, post(drain))
        .route(HEALTHZ_PATH, get(|| async { "ok" }))
        .route(READYZ_PATH, get(ready))
        .with_state(state)
}

fn lock(manager: &Mutex<SessionManager>) -> std::sync::MutexGuard<'_, SessionManager> {
    manager
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ControlError {
            error: code.to_owned(),
            message: message.into(),
        }),
    )
        .into_response()
}

fn authorized(state: &ControlState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(state.secret.as_bytes())) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer secret",
        )))
    }
}

async fn load(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    Json(lock(&state.manager).load_report()).into_response()
}

async fn create_session(
    State(state): State<ControlState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    let request: CreateSession = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid CreateSession: {e}"),
            );
        }
    };
    let result = lock(&state.manager).create_match(&request);
    match result {
        Ok(created) => {
            state.metrics.command(
                "create_session",
                "control",
                if created.created { "created" } else { "exists" },
            );
            // 200 whether created or found: the body's `created` tells them apart.
            Json(created).into_response()
        }
        Err(e) => {
            state.metrics.command("create_session", "control", e.code());
            let status = match e {
                crate::sessions::CreateError::BadMatchId => StatusCode::BAD_REQUEST,
                _ => StatusCode::CONFLICT,
            };
            error(status, e.code(), e.to_string())
        }
    }
}

async fn drain(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&state, &headers) {
        return *denied;
    }
    let mut manager = lock(&state.manager);
    if !manager.is_draining() {
        tracing::info!("draining on request of the control interface");
    }
    manager.drain();
    Json(manager.load_report()).into_response()
}

async fn ready(State(state): State<ControlState>) -> Response {
    if lock(&state.manager).is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}
