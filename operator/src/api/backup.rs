//! `RedisBackup`: scheduled, verified snapshots of one Redis onto one PVC.
//!
//! A resource of its own rather than a section of GameFleet: the Redis it backs up
//! serves the auth server, which belongs to no fleet, and one backup schedule per Redis
//! must not be repeated (or disagree) across fleets. See docs/operator.md, "Redis backups".
// Every `printcolumn(..)` repeats `type_ = ..`: that is the macro's syntax.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image whose command is `tanks-redis-backup` (built from backup/Dockerfile).
pub const DEFAULT_BACKUP_IMAGE: &str = "tanks/redis-backup:0.1.0";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tanks.dev",
    version = "v1alpha1",
    kind = "RedisBackup",
    plural = "redisbackups",
    namespaced,
    status = "RedisBackupStatus",
    derive = "PartialEq",
    shortname = "rbk",
    category = "tanks",
    doc = "Scheduled, verified snapshots of one Redis onto a PersistentVolumeClaim, by a CronJob the operator owns.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Last", type_ = "string", json_path = ".status.lastResult"),
    printcolumn(name = "At", type_ = "date", json_path = ".status.lastBackupTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RedisBackupSpec {
    /// When to back up, in the five-field cron syntax of CronJobs (UTC unless
    /// `timeZone`), or a macro such as `@daily`. The CRD checks the shape; the operator
    /// checks every field's range and reports a bad one in the `Ready` condition.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9A-Za-z*?/,-]+( +[0-9A-Za-z*?/,-]+){4})$')")
        .message("schedule must be five cron fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly"))]
    pub schedule: String,

    /// An IANA time zone for `schedule`, e.g. `Europe/Berlin` (default: UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// Backups kept on the volume, newest first; older ones are pruned only after a new
    /// one verified.
    #[serde(default = "default_retention")]
    #[schemars(range(max = 10000))]
    #[x_kube(validation = Rule::new("self >= 1").message("retention must be at least 1: a backup job must never delete every backup"))]
    pub retention: i32,

    /// The PersistentVolumeClaim (in this namespace) the backups are written to.
    #[schemars(length(min = 1, max = 253))]
    pub volume_claim: String,

    pub redis: RedisTarget,

    /// Pause the schedule (a running backup finishes).
    #[serde(default)]
    pub suspend: bool,

    /// The image with `tanks-redis-backup`, `redis-cli`, `redis-check-rdb` and `sha256sum`.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// A backup not finished after this long is killed and counts as failed.
    #[serde(default = "default_active_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub active_deadline_seconds: i32,

    /// A run missed (operator or controller-manager down) by more than this is skipped.
    #[serde(default = "default_starting_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub starting_deadline_seconds: i32,

    /// Finished Jobs kept, per outcome, for `kubectl logs` and for the status.
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100))]
    pub successful_jobs_history_limit: i32,
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100))]
    pub failed_jobs_history_limit: i32,

    /// Nodes the backup pods may run on (the ones that can attach the volume, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the backup pods tolerate (a dedicated node pool's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// The Redis to snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisTarget {
    /// Host name or IP, e.g. the Redis Service `redis`.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    #[serde(default = "default_redis_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// An ACL user (default: the `default` user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub username: Option<String>,
    /// The Secret holding the password (none: Redis without a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKey>,
}

/// One key of a Secret in this namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_retention() -> i32 {
    7
}
fn default_image() -> String {
    DEFAULT_BACKUP_IMAGE.to_owned()
}
fn default_active_deadline() -> i32 {
    1800
}
fn default_starting_deadline() -> i32 {
    600
}
fn default_history() -> i32 {
    3
}
fn default_redis_port() -> i32 {
    6379
}
fn default_secret_key() -> String {
    "password".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisBackupStatus {
    /// The CronJob that runs the backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job: Option<String>,
    /// When the newest finished backup Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<Time>,
    /// `Succeeded` or `Failed`: that Job's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// That Job's name, for `kubectl logs job/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
    /// When the newest successful backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the CronJob matches the spec) and `LastBackupSucceeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
