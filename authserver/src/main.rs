//! `authserver`: see `authserver --help` and docs/authserver.md.
#![forbid(unsafe_code)]

use authserver::{Config, Server};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tanks_core::telemetry::init_tracing();
    let server = Server::start(config).await?;
    server
        .run_until(tanks_core::telemetry::shutdown_signal())
        .await;
    Ok(())
}
