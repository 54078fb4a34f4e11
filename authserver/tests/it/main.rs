//! The integration tests of `authserver`, one binary: each file is one subject.

mod binary;
mod common;
mod concurrency;
mod kafka;
mod limits;
mod protocol;
mod prototype_client;
mod redis;
