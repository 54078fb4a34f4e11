//! `authserver`: see `authserver --help` and docs/authserver.md.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use authserver::{Config, Server};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Before anything else, in one line: a deployed server must not run on the public
    // development key (see --dev).
    if let Err(e) = config.check_token_key() {
        eprintln!("authserver: {e:#}");
        return ExitCode::from(2);
    }
    tanks_core::telemetry::init_tracing();
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("authserver: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    server
        .run_until(tanks_core::telemetry::shutdown_signal())
        .await;
    ExitCode::SUCCESS
}
