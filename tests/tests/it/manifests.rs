//! The shipped manifests (`manifests/`, issue 16): kustomize builds them and their
//! overlays; the real API server accepts all of it (server-side dry run, CRDs first when
//! the cluster has none); and the operator's RBAC, really applied into a temporary
//! namespace, allows what the operator does and nothing else (`kubectl auth can-i`,
//! positives and negatives), with the Deployments turning into pods.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

pub(crate) fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(tanks_testkit::kubeconfig())
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("kubectl is not runnable ({e}); hack/devenv puts it on PATH"))
}

/// `kubectl ARGS`, which must succeed; its stdout.
pub(crate) fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The install's secrets, as an install makes them (kept when they exist).
pub(crate) fn gen_secrets() {
    let status = Command::new(repo().join("hack/gen-secrets"))
        .status()
        .expect("hack/gen-secrets runs");
    assert!(status.success(), "hack/gen-secrets failed");
}

/// The documents of a multi-document YAML stream.
pub(crate) fn documents(yaml: &str) -> Vec<&str> {
    yaml.split("\n---\n")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

pub(crate) fn kind_of(doc: &str) -> &str {
    doc.lines()
        .find_map(|l| l.strip_prefix("kind: "))
        .unwrap_or_default()
}

/// `to` relative to `from` (kustomize takes no absolute resource paths).
pub(crate) fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path
}

#[test]
fn kustomize_builds_the_product_and_its_overlays() {
    gen_secrets();
    let all = kubectl_ok(&["kustomize", "manifests/"]);
    let docs = documents(&all);
    let kinds: Vec<&str> = docs.iter().map(|d| kind_of(d)).collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Secret",
        "GameFleet",
        "Edge",
    ] {
        assert!(
            kinds.contains(&kind),
            "no {kind} in `kubectl kustomize manifests/`"
        );
    }
    // Namespaced RBAC by default: no cluster-wide grant to the operator.
    assert!(!kinds.contains(&"ClusterRole") && !kinds.contains(&"ClusterRoleBinding"));
    assert_eq!(kinds.iter().filter(|k| **k == "StatefulSet").count(), 3);
    for name in [
        "gamefleets.tanks.dev",
        "matches.tanks.dev",
        "edges.tanks.dev",
    ] {
        assert!(all.contains(&format!("name: {name}")), "CRD {name} missing");
    }

    // Every CRD crdgen writes is in crds/kustomization.yaml.
    let list = std::fs::read_to_string(repo().join("crds/kustomization.yaml")).unwrap();
    for entry in std::fs::read_dir(repo().join("crds")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                list.contains(&format!("- {name}")),
                "crds/{name} not in crds/kustomization.yaml"
            );
        }
    }

    // Cluster scope only through its overlay, which also lifts the namespace limit.
    let cluster = kubectl_ok(&["kustomize", "manifests/overlays/cluster-scope"]);
    assert!(cluster.contains("kind: ClusterRole\n"));
    assert!(all.contains("OPERATOR_NAMESPACE") && !cluster.contains("OPERATOR_NAMESPACE"));
    // Existing Redis, RabbitMQ and Kafka: no StatefulSet left.
    let external = kubectl_ok(&["kustomize", "manifests/overlays/external-services"]);
    assert!(!external.contains("kind: StatefulSet"));
    assert!(external.contains("kind: Deployment"));

    // No secret value in git: no tracked manifest is a Secret.
    let tracked = Command::new("git")
        .args(["ls-files", "manifests"])
        .current_dir(repo())
        .output()
        .expect("git");
    for file in String::from_utf8_lossy(&tracked.stdout).lines() {
        let text = std::fs::read_to_string(repo().join(file)).unwrap_or_default();
        assert!(
            !text.lines().any(|l| l.trim() == "kind: Secret"),
            "{file} holds a Secret"
        );
    }
}

#[tokio::test]
async fn the_api_server_accepts_everything_and_rbac_is_narrow() {
    let client = tanks_testkit::require_kube_client().await;
    gen_secrets();
    let ns = tanks_testkit::namespace::create(&client, "manifests")
        .await
        .expect("namespace");

    // The whole product, into this namespace: a kustomization over the base.
    let dir = std::env::temp_dir().join(tanks_testkit::unique("tanks-manifests"));
    std::fs::create_dir_all(&dir).unwrap();
    let base = relative(&dir, &repo().join("manifests/base"));
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: {ns}\nresources:\n  - {}\n",
            base.display()
        ),
    )
    .unwrap();
    let dir_s = dir.to_str().unwrap();

    // The custom resources need their CRDs served: on a cluster without them, apply the
    // CRDs for real first (what README.md tells a first install to do).
    let served = kubectl(&[
        "get",
        "crd",
        "gamefleets.tanks.dev",
        "matches.tanks.dev",
        "edges.tanks.dev",
    ]);
    if !served.status.success() {
        kubectl_ok(&["apply", "--server-side", "-k", "crds/"]);
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/gamefleets.tanks.dev",
            "crd/matches.tanks.dev",
            "crd/edges.tanks.dev",
        ]);
    }

    let dry = kubectl_ok(&[
        "apply",
        "-k",
        dir_s,
        "--dry-run=server",
        "--server-side",
        "--force-conflicts",
    ]);
    for object in [
        "deployment.apps/tanks-operator",
        "deployment.apps/tanks-auth",
        "statefulset.apps/tanks-redis",
        "statefulset.apps/tanks-rabbitmq",
        "statefulset.apps/tanks-kafka",
        "networkpolicy.networking.k8s.io/tanks-gameservers",
        "gamefleet.tanks.dev/arena",
        "deployment.apps/tanks-edge",
        "service/tanks-edge",
        "edge.tanks.dev/public",
    ] {
        assert!(dry.contains(object), "{object} not in the dry run:\n{dry}");
    }

    // For real, all but the CRDs (cluster-wide, shared with other tests).
    let built = kubectl_ok(&["kustomize", dir_s]);
    let objects: Vec<&str> = documents(&built)
        .into_iter()
        .filter(|d| kind_of(d) != "CustomResourceDefinition")
        .collect();
    let file = dir.join("objects.yaml");
    std::fs::write(&file, objects.join("\n---\n")).unwrap();
    kubectl_ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);

    let sa = format!("system:serviceaccount:{ns}:tanks-operator");
    let can = |args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i", "--as", sa.as_str()];
        all.extend_from_slice(args);
        let out = kubectl(&all);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("kubectl {all:?}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    };
    let allowed: &[&[&str]] = &[
        &["watch", "gamefleets.tanks.dev"],
        &["patch", "gamefleets.tanks.dev"],
        &["patch", "gamefleets.tanks.dev", "--subresource=status"],
        &["update", "gamefleets.tanks.dev", "--subresource=finalizers"],
        &["create", "matches.tanks.dev"],
        &["delete", "matches.tanks.dev"],
        &["patch", "matches.tanks.dev", "--subresource=status"],
        &["create", "pods"],
        &["delete", "pods"],
        &["patch", "pods"],
        &["list", "pods"],
        &["create", "events.events.k8s.io"],
        &["update", "leases.coordination.k8s.io"],
        &["watch", "edges.tanks.dev"],
        &["patch", "edges.tanks.dev", "--subresource=status"],
        &["create", "configmaps"],
        &["patch", "configmaps"],
        &["get", "services"],
    ];
    for args in allowed {
        let mut a = args.to_vec();
        a.extend(["-n", ns.as_str()]);
        assert!(can(&a), "the operator should be allowed: {a:?}");
    }
    let denied: &[&[&str]] = &[
        // Secrets: neither its own namespace's (it gets the token by env) nor others'.
        &["get", "secrets", "-n", &ns],
        &["list", "secrets", "-n", "kube-system"],
        &["get", "secrets", "-n", "default"],
        &["list", "nodes"],
        &["delete", "customresourcedefinitions.apiextensions.k8s.io"],
        &["update", "customresourcedefinitions.apiextensions.k8s.io"],
        // Nothing outside its namespace without the cluster-scope overlay.
        &["list", "gamefleets.tanks.dev", "-n", "default"],
        &["create", "pods", "-n", "default"],
        &["list", "pods", "--all-namespaces"],
        // Nothing it does not need at home either.
        &["delete", "gamefleets.tanks.dev", "-n", &ns],
        &["update", "pods", "-n", &ns],
        &["create", "roles.rbac.authorization.k8s.io", "-n", &ns],
        &["create", "pods", "--subresource=exec", "-n", &ns],
        &["delete", "configmaps", "-n", &ns],
        &["patch", "edges.tanks.dev", "-n", &ns],
        &["update", "services", "-n", &ns],
    ];
    for args in denied {
        assert!(!can(args), "the operator must be denied: {args:?}");
    }

    // The edge's supervisor reads its one ConfigMap and nothing else.
    let edge_sa = format!("system:serviceaccount:{ns}:tanks-edge");
    let edge_can = |args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i", "--as", edge_sa.as_str(), "-n", ns.as_str()];
        all.extend_from_slice(args);
        let out = kubectl(&all);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("kubectl {all:?}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    };
    for verb in ["get", "watch", "list"] {
        assert!(
            edge_can(&[verb, "configmaps/public-nginx"]),
            "tanks-edge: {verb}"
        );
    }
    for args in [
        &["get", "configmaps/other"][..],
        &["patch", "configmaps/public-nginx"],
        &["list", "configmaps"],
        &["get", "secrets"],
        &["list", "pods"],
    ] {
        assert!(!edge_can(args), "tanks-edge must be denied: {args:?}");
    }

    // The Deployments and StatefulSets become pods (Pending without nodes: a pod runner
    // would start them).
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = [
        ("tanks-operator", 2),
        ("tanks-auth", 2),
        ("tanks-redis", 1),
        ("tanks-rabbitmq", 1),
        ("tanks-kafka", 1),
        ("tanks-edge", 2),
    ];
    for (name, n) in expected {
        loop {
            let pods = kubectl_ok(&[
                "get",
                "pods",
                "-n",
                &ns,
                "-l",
                &format!("app.kubernetes.io/name={name}"),
                "-o",
                "name",
            ]);
            if pods.lines().count() >= n {
                break;
            }
            assert!(Instant::now() < deadline, "no {n} pods of {name} in 60 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let operator_pod = kubectl_ok(&[
        "get",
        "pods",
        "-n",
        &ns,
        "-l",
        "app.kubernetes.io/name=tanks-operator",
        "-o",
        "jsonpath={.items[0].spec.containers[0].securityContext.readOnlyRootFilesystem} {.items[0].spec.securityContext.runAsNonRoot}",
    ]);
    assert_eq!(operator_pod, "true true");

    tanks_testkit::namespace::delete(&client, &ns).await;
    let _ = std::fs::remove_dir_all(&dir);
}
