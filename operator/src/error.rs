//! The operator's one error type. Each variant has a short kind used as a metric label
//! and in Events.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("invalid fleet spec: {0}")]
    InvalidSpec(String),
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("pod cache not ready")]
    CacheNotReady,
    #[error("game server session: {0}")]
    Session(#[from] crate::servers::ServerError),
    #[error("publishing an allocation: {0}")]
    Publish(String),
}

impl Error {
    /// A short, stable category for metrics labels and Events.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "kube",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
            Error::InvalidSpec(_) => "spec",
            Error::Serialize(_) => "serialize",
            Error::CacheNotReady => "cache",
            Error::Session(_) => "session",
            Error::Publish(_) => "publish",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
