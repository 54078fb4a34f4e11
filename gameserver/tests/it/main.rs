//! The integration tests of `gameserver`, one binary: each file is one subject.

mod brokers;
mod common;
mod control;
mod drain;
mod seed_protocol;
