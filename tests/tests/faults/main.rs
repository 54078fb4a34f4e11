//! Fault tests: each stops and starts a REAL dependency of `hack/devenv` (or SIGKILLs a
//! real process) under load, and counts what a user would lose. One binary of its own,
//! run one test at a time ([`outage::serialized`]); every test brings the service back
//! even when it fails. The services are shared: each outage is as short as the test
//! needs. What each test asserts and what it measured: docs/RELIABILITY.md.

mod allocation_burst;
mod cluster;
mod fleet_scale;
mod kafka;
mod metrics;
mod outage;
mod redis;
