//! The integration tests of `tests`, one binary: each file is one subject.

mod edge_auth;
mod edge_end_to_end;
mod edge_limits;
mod edge_nginx;
mod edge_reload;
mod images;
mod install;
mod kafka_roundtrip;
mod kube_crd;
mod main_job;
mod manifests;
mod match_end_to_end;
mod pod_runner;
mod quickstart;
mod rabbitmq_roundtrip;
mod redis_roundtrip;
mod token_revocation;
