//! The rendered config, read through the API: a watch of one named ConfigMap (a list
//! and a watch with a `metadata.name` field selector, which RBAC can restrict to that
//! one name). Reading through the API rather than a mounted volume works under the
//! project's pod runner (no volumes) and in a cluster, and sees a change within the
//! watch's latency instead of the kubelet's sync period (a minute or more).

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::warn;

/// The ConfigMap key of the config (the operator's `edge::controller::CONFIG_KEY`).
pub const CONFIG_KEY: &str = "nginx.conf";

/// Sends every new text of `key` in ConfigMap `name`. The receiver sees only the latest
/// one: a burst of changes is one reload. A deleted ConfigMap or a missing key sends
/// nothing (nginx keeps what it has). Returns when every receiver is gone.
pub async fn follow(
    client: Client,
    namespace: &str,
    name: &str,
    tx: watch::Sender<Option<String>>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(cm) => {
                let text = cm.data.and_then(|mut d| d.remove(CONFIG_KEY));
                match text {
                    Some(text) => {
                        tx.send_if_modified(|current| {
                            let changed = current.as_deref() != Some(text.as_str());
                            if changed {
                                *current = Some(text);
                            }
                            changed
                        });
                    }
                    None => warn!(
                        configmap = name,
                        key = CONFIG_KEY,
                        "no config in the ConfigMap"
                    ),
                }
            }
            Err(e) => warn!(configmap = name, error = %e, "watching the ConfigMap"),
        }
        if tx.is_closed() {
            return;
        }
    }
}
