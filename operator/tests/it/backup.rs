//! Redis backups: the backup command, as the rendered CronJob runs it, against a real
//! Redis holding users of the real auth server, restored into a fresh Redis where every
//! user logs in; and the RedisBackup controller on the real API server (CronJob created,
//! updated, garbage-collected; bad specs rejected or reported).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tanks_operator::api::RedisBackup;
use tanks_operator::backup::cronjob::{self, COMMAND, MOUNT_PATH};
use tanks_testkit::process::{KillOnDrop, free_port, workspace_binary};

/// The shipped scripts (backup/ at the top of the repository).
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backup")
}

fn wait_tcp(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} not listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn redis_server(dir: &Path, port: u16, password: &str) -> KillOnDrop {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            password,
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed (hack/devenv deps)");
    wait_tcp(port, "redis-server");
    KillOnDrop(child)
}

fn redis_cli(port: u16, password: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn authserver(redis_port: u16, password: &str) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = Command::new(workspace_binary("authserver"))
        .args(["--dev", "--listen-addr", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--redis-url",
            &format!("redis://:{password}@127.0.0.1:{redis_port}/0"),
        ])
        .args(["--registrations-per-ip", "1000", "--hash-concurrency", "0"])
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("AUTH_EVENTS_FILE")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_tcp(port, "authserver");
    (KillOnDrop(child), port)
}

fn call(port: u16, request: Value) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    writeln!(s, "{request}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn auth(port: u16, action: &str, user: &str, password: &str) -> Value {
    call(
        port,
        json!({"action": action, "username": user, "password": password}),
    )
}

fn spec_backup(name: &str, ns: &str, redis_port: u16) -> RedisBackup {
    let mut b = RedisBackup::new(
        name,
        serde_json::from_value(json!({
            "schedule": "0 3 * * *",
            "retention": 2,
            "volumeClaim": "redis-backups",
            "redis": {"host": "127.0.0.1", "port": redis_port, "passwordSecret": {"name": "redis-auth"}},
        }))
        .unwrap(),
    );
    b.metadata.namespace = Some(ns.into());
    b
}

/// The container of the rendered CronJob as a local process: its command, its
/// environment with the mount path replaced by `dir` and the Secret by its value.
fn run_rendered_job(backup: &RedisBackup, dir: &Path, password: &str) -> std::process::Output {
    let cj = cronjob::render(backup).unwrap();
    let pod = cj
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.command.as_deref(), Some(&[COMMAND.to_owned()][..]));
    let mut env = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) if v == MOUNT_PATH => dir.display().to_string(),
            (Some(v), _) => v.clone(),
            (None, Some(_)) => password.to_owned(),
            (None, None) => String::new(),
        };
        env.insert(e.name.clone(), value);
    }
    let path = format!("{}:{}", scripts().display(), std::env::var("PATH").unwrap());
    Command::new(COMMAND)
        .env_clear()
        .env("PATH", path)
        .envs(env)
        .output()
        .unwrap()
}

/// Users registered through the real auth server on the Redis at `port`.
fn register_users(auth_port: u16, count: usize, prefix: &str) -> Vec<(String, String)> {
    let users: Vec<(String, String)> = (0..count)
        .map(|i| {
            (
                format!("{prefix}_{i}"),
                format!("pw-{i}-{}", uuid::Uuid::new_v4().simple()),
            )
        })
        .collect();
    for (u, p) in &users {
        let r = auth(auth_port, "register", u, p);
        assert_eq!(r["status"], "success", "register {u}: {r}");
    }
    users
}

/// The documented restore: `tanks-redis-restore` into an empty folder, a fresh Redis
/// on it, and every user logs in through a fresh auth server (a wrong password does not).
fn restore_and_log_in(backup: &Path, dir: &Path, password: &str, users: &[(String, String)]) {
    let out = Command::new(scripts().join("tanks-redis-restore"))
        .arg(backup)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {out:?}");
    let new_port = free_port();
    let _fresh = redis_server(dir, new_port, password);
    // The documented second step: a fresh AOF from the restored data.
    assert_eq!(
        redis_cli(new_port, password, &["CONFIG", "SET", "appendonly", "yes"]),
        "OK"
    );
    let (_auth, auth_port) = authserver(new_port, password);
    for (u, p) in users {
        let r = auth(auth_port, "login", u, p);
        assert_eq!(r["status"], "success", "login {u} after restore: {r}");
    }
    let r = auth(auth_port, "login", &users[0].0, "not-the-password");
    assert_eq!(r["status"], "failure", "{r}");
}

#[test]
fn a_backup_restores_into_a_fresh_redis_where_every_user_logs_in() {
    let root = std::env::temp_dir().join(tanks_testkit::unique("redis-backup"));
    let (src_dir, backups, restored) = (
        root.join("src"),
        root.join("backups"),
        root.join("restored"),
    );
    for d in [&src_dir, &backups, &restored] {
        std::fs::create_dir_all(d).unwrap();
    }
    let password = "backup-test-password";
    let src_port = free_port();
    let src = redis_server(&src_dir, src_port, password);
    let (auth_a, auth_port) = authserver(src_port, password);
    let users = register_users(auth_port, 12, "restore_user");

    // Three runs with retention 2: each verified, the oldest pruned.
    let backup = spec_backup("auth-redis", "tanks", src_port);
    for run in 0..3 {
        if run > 0 {
            // Names have second resolution.
            std::thread::sleep(Duration::from_millis(1100));
        }
        let out = run_rendered_job(&backup, &backups, password);
        assert!(out.status.success(), "backup run {run}: {out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("redis-check-rdb ok"), "{said}");
    }
    let mut files: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "2 backups and their checksums: {files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("auth-redis-") && !f.contains("partial"))
    );
    let newest = backups.join(files.iter().rfind(|f| f.ends_with(".rdb")).unwrap());

    // A failing run exits non-zero with one clear line and prunes nothing.
    let out = run_rendered_job(&backup, &backups, "wrong-password");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tanks-redis-backup: error: snapshot"), "{err}");
    assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 4);

    // The original Redis and auth server are gone for good.
    drop(auth_a);
    drop(src);

    restore_and_log_in(&newest, &restored, password, &users);

    // A corrupted backup is refused by the restore command.
    let bad = restored.join("corrupt.rdb");
    std::fs::copy(&newest, &bad).unwrap();
    std::fs::copy(
        newest.with_extension("rdb.sha256"),
        restored.join("corrupt.rdb.sha256"),
    )
    .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&bad)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    let out = Command::new(scripts().join("tanks-redis-restore"))
        .arg(&bad)
        .arg(&restored)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a corrupt backup must be refused");
    let _ = std::fs::remove_dir_all(&root);
}

async fn status_of(api: &Api<RedisBackup>, name: &str) -> Option<(String, String)> {
    let b = api.get(name).await.ok()?;
    let ready = b
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((ready.status, ready.reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cronjob_is_created_updated_and_collected_and_bad_specs_are_reported() {
    let client = client().await;
    apply_crds(&client).await;
    let ns = namespace(&client, "op-backup").await;
    let backups: Api<RedisBackup> = Api::namespaced(client.clone(), &ns);
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // Rejected by the CRD itself.
    for (patch, says) in [
        (json!({"retention": 0}), "retention must be at least 1"),
        (
            json!({"schedule": "every day"}),
            "schedule must be five cron fields",
        ),
    ] {
        let mut b = serde_json::to_value(spec_backup("bad", &ns, 6379)).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            b["spec"][k] = v.clone();
        }
        let b: RedisBackup = serde_json::from_value(b).unwrap();
        let err = backups
            .create(&PostParams::default(), &b)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(tanks_operator::backup::controller::run(
        client.clone(),
        Some(ns.clone()),
        prometheus::Registry::new(),
        "it".into(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    // No Secret yet: reported, no CronJob.
    backups
        .create(
            &PostParams::default(),
            &spec_backup("auth-redis", &ns, 6379),
        )
        .await
        .unwrap();
    eventually(30, "SecretMissing reported", || async {
        (status_of(&backups, "auth-redis").await? == ("False".into(), "SecretMissing".into()))
            .then_some(())
    })
    .await;
    assert!(cronjobs.get_opt("auth-redis").await.unwrap().is_none());

    // The Secret appears: the CronJob follows (the controller looks again within a minute).
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-auth"}, "stringData": {"password": "pw"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let cj = eventually(90, "the CronJob", || async {
        cronjobs.get_opt("auth-redis").await.ok().flatten()
    })
    .await;
    let spec = cj.spec.as_ref().unwrap();
    assert_eq!(spec.schedule, "0 3 * * *");
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let owner = &cj.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("RedisBackup", Some(true))
    );
    eventually(30, "Ready", || async {
        (status_of(&backups, "auth-redis").await? == ("True".into(), "CronJobApplied".into()))
            .then_some(())
    })
    .await;

    // A spec change reaches the CronJob.
    let pp = PatchParams::default();
    backups
        .patch(
            "auth-redis",
            &pp,
            &Patch::Merge(json!({"spec": {"schedule": "*/30 * * * *", "retention": 4}})),
        )
        .await
        .unwrap();
    eventually(30, "the CronJob updated", || async {
        let cj = cronjobs.get("auth-redis").await.ok()?;
        let env = serde_json::to_string(&cj.spec.as_ref()?.job_template).ok()?;
        (cj.spec?.schedule == "*/30 * * * *"
            && env.contains(r#""name":"BACKUP_RETENTION","value":"4""#))
        .then_some(())
    })
    .await;

    // A schedule the CRD's shape check passes but cron does not: reported, CronJob kept.
    backups
        .patch(
            "auth-redis",
            &pp,
            &Patch::Merge(json!({"spec": {"schedule": "61 * * * *"}})),
        )
        .await
        .unwrap();
    eventually(30, "InvalidSchedule reported", || async {
        (status_of(&backups, "auth-redis").await? == ("False".into(), "InvalidSchedule".into()))
            .then_some(())
    })
    .await;
    assert_eq!(
        cronjobs
            .get("auth-redis")
            .await
            .unwrap()
            .spec
            .unwrap()
            .schedule,
        "*/30 * * * *"
    );

    // Deleting the owner collects the CronJob (the controller-manager's garbage collector).
    backups
        .delete("auth-redis", &DeleteParams::default())
        .await
        .unwrap();
    eventually(60, "the CronJob collected", || async {
        cronjobs
            .get_opt("auth-redis")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;
    delete_namespace(&client, &ns).await;
    let _ = cj.name_any();
}

/// The CronJob's Job run for real: `kubectl create job --from=cronjob/...` (the Job the
/// schedule would make), the scheduler binding its pod to a pod-runner node, the pod
/// runner executing the shipped script (image `tanks/redis-backup` → backup/) with
/// the claim as a host folder; then the snapshot on the claim, the RedisBackup status
/// and the metric from that Job, and a restore from that very snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_the_cronjob_runs_on_the_pod_runner_and_reaches_the_status() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use tanks_testkit::pod_runner::{self, RunnerConfig, RunnerNode};

    let client = client().await;
    apply_crds(&client).await;
    let ns = namespace(&client, "op-backup-run").await;
    let root = std::env::temp_dir().join(&ns);
    let (src_dir, restored) = (root.join("src"), root.join("restored"));
    for d in [&src_dir, &restored] {
        std::fs::create_dir_all(d).unwrap();
    }

    // A real Redis holding users registered through the real auth server.
    let password = "backup-run-password";
    let src_port = free_port();
    let _src = redis_server(&src_dir, src_port, password);
    let (_auth, auth_port) = authserver(src_port, password);
    let users = register_users(auth_port, 5, "job_user");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-auth"}, "stringData": {"password": password}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "redis-backups"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();

    // One runner node, tainted so that only this test's pods land on it.
    let node = RunnerNode {
        name: format!("{ns}-node"),
        address: std::net::Ipv4Addr::new(127, 0, 3, (std::process::id() % 200 + 20) as u8),
    };
    let taint = format!("tanks.dev/test-group={ns}:NoSchedule");
    let (stop_runner, runner_stopped) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(pod_runner::run(
        client.clone(),
        RunnerConfig {
            nodes: vec![node.clone()],
            images: vec![
                format!("tanks/redis-backup={}", scripts().display())
                    .parse()
                    .unwrap(),
            ],
            log_dir: root.join("pods"),
            state_dir: root.join("runner"),
            node_taints: vec![taint.parse().unwrap()],
            provision_claims: true,
            max_pods: 4,
            ..RunnerConfig::default()
        },
        runner_stopped,
    ));

    let registry = prometheus::Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(tanks_operator::backup::controller::run(
        client.clone(),
        Some(ns.clone()),
        registry.clone(),
        "it".into(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut backup = serde_json::to_value(spec_backup("auth-redis", &ns, src_port)).unwrap();
    backup["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": node.name});
    backup["spec"]["tolerations"] = json!([{"key": "tanks.dev/test-group", "operator": "Equal", "value": ns, "effect": "NoSchedule"}]);
    let backup: RedisBackup = serde_json::from_value(backup).unwrap();
    let backups: Api<RedisBackup> = Api::namespaced(client.clone(), &ns);
    backups
        .create(&PostParams::default(), &backup)
        .await
        .unwrap();
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    eventually(60, "the CronJob", || async {
        cronjobs.get_opt("auth-redis").await.ok().flatten()
    })
    .await;

    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(tanks_testkit::kubeconfig())
        .args([
            "create",
            "job",
            "--from=cronjob/auth-redis",
            "auth-redis-manual",
            "-n",
            &ns,
        ])
        .output()
        .expect("kubectl is on PATH (hack/devenv)");
    assert!(out.status.success(), "kubectl create job: {out:?}");

    let status = eventually(120, "the Job's success in the status", || async {
        let s = backups.get("auth-redis").await.ok()?.status?;
        (s.last_result.as_deref() == Some("Succeeded")).then_some(s)
    })
    .await;
    assert_eq!(status.last_job.as_deref(), Some("auth-redis-manual"));
    let finished = status.last_backup_time.clone().expect("lastBackupTime");
    assert_eq!(status.last_success_time.as_ref(), Some(&finished));
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(finished.0);
    assert!(
        age.as_secs() < 300,
        "the backup finished just now, not {age:?} ago"
    );

    // The metric, from the same Job.
    let text = tanks_core::telemetry::render(&registry);
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("name=\"auth-redis\""))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    assert_eq!(value("redis_backup_last_result_success"), Some(1.0));
    assert_eq!(
        value("redis_backup_last_success_timestamp_seconds"),
        Some(finished.0.as_second() as f64)
    );

    // The snapshot landed on the claim's volume, with its checksum.
    let volume = claims
        .get("redis-backups")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.volume_name)
        .expect("the claim is bound");
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .unwrap();
    let dir = PathBuf::from(pv.spec.unwrap().host_path.unwrap().path);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "one snapshot and its checksum: {files:?}");
    assert!(
        files[0].starts_with("auth-redis-") && files[0].ends_with(".rdb"),
        "{files:?}"
    );
    let snapshot = dir.join(&files[0]);

    // Restored from that very file: every user logs in.
    restore_and_log_in(&snapshot, &restored, password, &users);

    // Deleting the claim releases its volume, which the runner deletes with its folder
    // (once no pod uses the claim: the Job and its pod go first).
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns);
    jobs.delete("auth-redis-manual", &DeleteParams::background())
        .await
        .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    eventually(60, "the Job's pod deleted", || async {
        pods.list(&Default::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    claims
        .delete("redis-backups", &DeleteParams::default())
        .await
        .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    eventually(60, "the released volume deleted", || async {
        pvs.get_opt(&volume).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!dir.exists(), "{} removed with its volume", dir.display());

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;
    delete_namespace(&client, &ns).await;
    let _ = stop_runner.send(true);
    let _ = runner.await;
    let _ = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .delete(&node.name, &DeleteParams::default())
        .await;
    let _ = std::fs::remove_dir_all(&root);
}
