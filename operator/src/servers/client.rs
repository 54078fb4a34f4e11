//! One HTTP client for every call the operator makes to a game server's control
//! interface (`tanks_core::protocol::control`): load polls, drains and match sessions
//! all go to the same port with the same token, so they share one connection pool and
//! one error type.

use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use tanks_core::protocol::control::{
    ControlError, CreateSession, DRAIN_PATH, LOAD_PATH, LoadReport, SESSIONS_PATH, SessionCreated,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// The server said no (`full`, `draining`): another server may say yes.
    #[error("game server refused: {0}: {1}")]
    Refused(String, String),
    #[error("game server request timed out")]
    Timeout,
    #[error("game server request failed: {0}")]
    Transport(String),
    #[error("game server answered {0}: {1}")]
    Status(u16, String),
    #[error("game server answer not understood: {0}")]
    Decode(String),
}

/// Speaks to one game server at a base URL such as `http://10.0.0.7:8890` (see
/// [`super::address`]). A trait so reconciler tests can script the servers.
pub trait ServerClient: Send + Sync {
    fn load<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ServerError>>;
    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ServerError>>;
    /// `POST /v1/sessions`, idempotent on the match id.
    fn create_session<'a>(
        &'a self,
        base: &'a str,
        request: &'a CreateSession,
    ) -> BoxFuture<'a, Result<SessionCreated, ServerError>>;
}

/// The real client: HTTP/1.1 keep-alive, a bearer token, a short timeout.
pub struct HttpServerClient {
    client: HttpClient<HttpConnector, Full<Bytes>>,
    token: Option<String>,
    timeout: Duration,
}

impl HttpServerClient {
    pub fn new(token: Option<String>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpServerClient {
            client,
            token,
            timeout,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, ServerError> {
        let mut req = Request::builder().method(method).uri(url);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
            .map_err(|e| ServerError::Transport(e.to_string()))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ServerError::Transport(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ServerError::Transport(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| ServerError::Decode(e.to_string()));
            }
            Err(refusal(status, &bytes))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ServerError::Timeout)?
    }
}

/// A non-success answer: 409 with the protocol's error body is a refusal another server
/// may not give; anything else is a failure, with what the body says about it.
fn refusal(status: StatusCode, body: &[u8]) -> ServerError {
    match serde_json::from_slice::<ControlError>(body) {
        Ok(e) if status == StatusCode::CONFLICT => ServerError::Refused(e.error, e.message),
        Ok(e) => ServerError::Status(status.as_u16(), e.message),
        Err(_) => ServerError::Status(
            status.as_u16(),
            String::from_utf8_lossy(body).chars().take(200).collect(),
        ),
    }
}

impl ServerClient for HttpServerClient {
    fn load<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ServerError>> {
        Box::pin(self.call(Method::GET, format!("{base}{LOAD_PATH}"), None))
    }

    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<LoadReport, ServerError>> {
        Box::pin(self.call(Method::POST, format!("{base}{DRAIN_PATH}"), None))
    }

    fn create_session<'a>(
        &'a self,
        base: &'a str,
        request: &'a CreateSession,
    ) -> BoxFuture<'a, Result<SessionCreated, ServerError>> {
        Box::pin(async move {
            let body =
                serde_json::to_vec(request).map_err(|e| ServerError::Transport(e.to_string()))?;
            self.call(Method::POST, format!("{base}{SESSIONS_PATH}"), Some(body))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_with_the_protocol_body_is_a_refusal() {
        let body = br#"{"error":"full","message":"no room"}"#;
        assert_eq!(
            refusal(StatusCode::CONFLICT, body),
            ServerError::Refused("full".into(), "no room".into())
        );
        assert_eq!(
            refusal(
                StatusCode::UNAUTHORIZED,
                br#"{"error":"unauthorized","message":"token"}"#
            ),
            ServerError::Status(401, "token".into())
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, b"upstream"),
            ServerError::Status(502, "upstream".into())
        );
    }
}
