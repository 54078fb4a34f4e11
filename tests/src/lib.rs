//! Where the real services started by `hack/devenv up` listen, and checks that fail
//! loudly, naming the missing service, when one is not there. Tests never skip.
//!
//! Each address can be overridden with the environment variable named beside it.
#![forbid(unsafe_code)]

pub mod fake_servers;
pub mod namespace;
pub mod process;

/// The kubelet stand-in, now a product crate of its own (`podrunner/`); kept under
/// this name for the tests and the demo.
pub use tanks_pod_runner as pod_runner;

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub fn redis_url() -> String {
    env_or("TANKS_REDIS_URL", "redis://127.0.0.1:6379/0")
}

pub fn amqp_url() -> String {
    env_or("TANKS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

pub fn kafka_brokers() -> String {
    env_or("TANKS_KAFKA_BROKERS", "127.0.0.1:9092")
}

/// The kubeconfig of the local kube-apiserver, the one lookup every test, tool and
/// benchmark of the workspace uses: `TANKS_KUBECONFIG` (what `hack/devenv env`
/// exports), else the admin kubeconfig `hack/devenv up` writes in [`devenv_state`].
///
/// `KUBECONFIG` is deliberately not read: tests and benchmarks create and delete
/// namespaces, nodes and CRDs, and must not land on whatever cluster the shell points
/// `kubectl` at. Tools take `--kubeconfig` for another cluster.
pub fn kubeconfig() -> PathBuf {
    std::env::var_os("TANKS_KUBECONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| devenv_state().join("kubeconfig"))
}

/// The folder `hack/devenv` keeps its state, logs and generated configs in.
pub fn devenv_state() -> PathBuf {
    if let Some(dir) = std::env::var_os("TANKS_DEVENV_STATE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/tanks-devenv")
}

/// A client for the cluster a kubeconfig file names.
pub async fn kube_client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let raw = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(raw, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// How pods run by the pod runner reach the API server of `kubeconfig` (see
/// [`pod_runner::ApiAccess`]): its pods with a service-account token get a kubeconfig.
pub async fn pod_api_access(kubeconfig: &std::path::Path) -> anyhow::Result<pod_runner::ApiAccess> {
    let raw = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(raw, &Default::default()).await?;
    Ok(pod_runner::ApiAccess::from_config(&config))
}

/// Applies CRDs by server-side apply and waits until the API server serves them.
pub async fn apply_crds(
    client: &kube::Client,
    crds: impl IntoIterator<Item = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::ResourceExt;
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::{conditions, wait::await_condition};

    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("tanks-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("CRD {name} not established within 30 s"))??;
    }
    Ok(())
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Panics with a message naming `service` unless something accepts TCP at `addr`.
pub fn require_tcp(service: &str, addr: &str) {
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{service} is not running at {addr}. Start the local services with `hack/devenv up` \
         (this test needs the real {service} and does not skip)."
    );
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

pub fn require_redis() -> String {
    let url = redis_url();
    require_tcp("Redis", &host_port(&url));
    url
}

pub fn require_rabbitmq() -> String {
    let url = amqp_url();
    require_tcp("RabbitMQ", &host_port(&url));
    url
}

pub fn require_kafka() -> String {
    let brokers = kafka_brokers();
    let first = brokers.split(',').next().unwrap_or(&brokers).to_owned();
    require_tcp("Kafka", &first);
    brokers
}

/// The kubeconfig of the local kube-apiserver, after checking it exists.
pub fn require_kube_apiserver() -> PathBuf {
    let path = kubeconfig();
    assert!(
        path.exists(),
        "kube-apiserver kubeconfig {} is missing. Start the local control plane with \
         `hack/devenv up` (this test needs the real kube-apiserver and does not skip).",
        path.display()
    );
    path
}

/// A client for the local kube-apiserver, after checking its kubeconfig exists.
pub async fn require_kube_client() -> kube::Client {
    let path = require_kube_apiserver();
    kube_client(&path)
        .await
        .unwrap_or_else(|e| panic!("a client for the kube-apiserver of {}: {e}", path.display()))
}

/// A name unique to one test run, for queues, topics, namespaces and users.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_strips_scheme_credentials_and_path() {
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672"
        );
        assert_eq!(host_port("redis://127.0.0.1:6379/0"), "127.0.0.1:6379");
    }

    #[test]
    #[should_panic(expected = "Nothing is not running at 127.0.0.1:1")]
    fn a_missing_service_fails_loudly() {
        require_tcp("Nothing", "127.0.0.1:1");
    }
}
