//! The integration tests of `operator`, one binary: each file is one subject.

mod backup;
mod cel;
mod common;
mod edge;
mod eviction;
mod gamefleet;
mod match_allocation;
mod match_consumer;
