//! Asking a game server for a match's session: `POST /v1/sessions` of its control
//! interface (`tanks_core::protocol::control`), idempotent on the match id.

use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use tanks_core::protocol::control::{ControlError, CreateSession, SESSIONS_PATH, SessionCreated};

use crate::api::labels;
use crate::reconcile::pods::{DEFAULT_GAME_PORT, host_port};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The server said no (`full`, `draining`): another server may say yes.
    #[error("game server refused the session: {0}: {1}")]
    Refused(String, String),
    #[error("session request timed out")]
    Timeout,
    #[error("session request failed: {0}")]
    Transport(String),
    #[error("game server answered {0}: {1}")]
    Status(u16, String),
}

pub trait SessionControl: Send + Sync {
    fn create<'a>(
        &'a self,
        base: &'a str,
        request: &'a CreateSession,
    ) -> BoxFuture<'a, Result<SessionCreated, SessionError>>;
}

/// The real client: HTTP/1.1 keep-alive, a bearer token, a short timeout.
pub struct HttpSessions {
    client: HttpClient<HttpConnector, Full<Bytes>>,
    token: Option<String>,
    timeout: Duration,
}

impl HttpSessions {
    pub fn new(token: Option<String>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpSessions {
            client,
            token,
            timeout,
        }
    }

    async fn post(
        &self,
        base: &str,
        request: &CreateSession,
    ) -> Result<SessionCreated, SessionError> {
        let body =
            serde_json::to_vec(request).map_err(|e| SessionError::Transport(e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{base}{SESSIONS_PATH}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SessionError::Transport(e.to_string()))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| SessionError::Transport(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| SessionError::Transport(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| {
                    SessionError::Status(status.as_u16(), format!("not a session: {e}"))
                });
            }
            match serde_json::from_slice::<ControlError>(&bytes) {
                Ok(e) if status == http::StatusCode::CONFLICT => {
                    Err(SessionError::Refused(e.error, e.message))
                }
                Ok(e) => Err(SessionError::Status(status.as_u16(), e.message)),
                Err(_) => Err(SessionError::Status(
                    status.as_u16(),
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                )),
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| SessionError::Timeout)?
    }
}

impl SessionControl for HttpSessions {
    fn create<'a>(
        &'a self,
        base: &'a str,
        request: &'a CreateSession,
    ) -> BoxFuture<'a, Result<SessionCreated, SessionError>> {
        Box::pin(self.post(base, request))
    }
}

/// Where a client reaches a game-server pod: the node's address and the host port when
/// the pod has one (`Dynamic`, `Static`), else the pod IP and the game container port
/// (`PodIp`). (With an Nginx edge this is where the edge forwards to; the edge's own
/// address is not known here yet.)
pub fn endpoint_of(pod: &Pod) -> Option<(String, u16)> {
    let status = pod.status.as_ref()?;
    if let Some(port) = host_port(pod)
        && let Some(host) = status.host_ip.as_ref().filter(|h| !h.is_empty())
    {
        return Some((host.clone(), port));
    }
    let ip = status.pod_ip.as_ref().filter(|h| !h.is_empty())?;
    let port = pod
        .spec
        .as_ref()
        .and_then(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(labels::GAME_PORT_NAME))
        })
        .map(|p| p.container_port as u16)
        .unwrap_or(DEFAULT_GAME_PORT);
    Some((ip.clone(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn endpoints_prefer_the_host_port() {
        let dynamic = pod(serde_json::json!({
            "metadata": {"name": "p", "annotations": {labels::GAME_PORT: "7003"}},
            "spec": {"containers": [{"name": "g", "ports": [{"name": "game", "containerPort": 7003, "hostPort": 7003, "protocol": "UDP"}]}]},
            "status": {"hostIP": "10.0.0.1", "podIP": "10.1.0.5"},
        }));
        assert_eq!(endpoint_of(&dynamic), Some(("10.0.0.1".into(), 7003)));
        let pod_ip = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "g", "ports": [{"name": "game", "containerPort": 9999, "protocol": "UDP"}]}]},
            "status": {"hostIP": "10.0.0.1", "podIP": "10.1.0.5"},
        }));
        assert_eq!(endpoint_of(&pod_ip), Some(("10.1.0.5".into(), 9999)));
        let unscheduled = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}, "status": {}}),
        );
        assert_eq!(endpoint_of(&unscheduled), None);
    }
}
