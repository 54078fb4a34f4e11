//! The integration tests of `gameserver`, one binary: each file is one subject.

mod brokers;
mod common;
mod connection_caps;
mod control;
mod drain;
mod fleet_secrets;
mod rebinding;
mod seed_protocol;
