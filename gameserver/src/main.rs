//! `gameserver`: see `--help`. With no flags it runs on embedded defaults and says
//! which in its first log line.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use gameserver::config::Args;
use tanks_core::telemetry;

fn main() -> ExitCode {
    let args = Args::from_env();
    telemetry::init_tracing();
    let settings = match args.and_then(Args::into_settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gameserver: {e:#}");
            return ExitCode::from(2);
        }
    };
    if settings.defaults_in_use.is_empty() {
        tracing::info!(server = %settings.manager.server, "gameserver starting");
    } else {
        tracing::info!(
            server = %settings.manager.server,
            defaults = %settings.defaults_in_use.join(", "),
            "gameserver starting on embedded defaults"
        );
    }
    // Two workers: the hot paths (UDP receive, tick) have threads of their own; the
    // runtime carries the control interface, TCP commands, brokers and events.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gameserver: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gameserver::server::run(
        settings,
        telemetry::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gameserver failed");
            ExitCode::FAILURE
        }
    }
}
