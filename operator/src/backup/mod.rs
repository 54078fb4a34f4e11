//! Redis backups: the `RedisBackup` resource becomes a CronJob whose pods run
//! `tanks-redis-backup` (backup/ at the top of the repository).
//!
//! - [`schedule`]: the cron check the CRD's regex cannot do (field ranges);
//! - [`cronjob`]: the CronJob rendered from a spec, with no Kubernetes calls;
//! - [`history`]: the last backup's time and result, read from the CronJob's Jobs;
//! - [`controller`]: applies the CronJob, writes the status, the metric and Events.

pub mod controller;
pub mod cronjob;
pub mod history;
pub mod schedule;
