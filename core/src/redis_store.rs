//! Redis connections that survive restarts of the server.

use std::time::Duration;

pub use redis::aio::ConnectionManager;

/// Connects to `url` (`redis://host:port/db`), failing with a message that names the
/// address when Redis is not there. The returned manager reconnects by itself after.
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("Redis URL {url}: {e}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(3);
    tokio::time::timeout(
        Duration::from_secs(10),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("Redis at {url} did not answer within 10 s"))?
    .map_err(|e| anyhow::anyhow!("Redis at {url} is not reachable: {e}"))
}
