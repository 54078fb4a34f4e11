//! The container's environment as the kubelet builds it, and the two rewrites a
//! process without its own mount and network namespaces needs (see [`Rewrites`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};

use crate::RunnerNode;

/// The container's variables, in order, `$(VAR)` expanded against the earlier ones.
pub async fn resolve(
    client: &Client,
    pod: &Pod,
    node: &RunnerNode,
    container: &Container,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    let namespace = pod.namespace().unwrap_or_default();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            match api.get_opt(&cm.name).await? {
                Some(c) => c.data.unwrap_or_default(),
                None if cm.optional == Some(true) => continue,
                None => anyhow::bail!("envFrom: configmap {} not found", cm.name),
            }
        } else if let Some(s) = &from.secret_ref {
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            match api.get_opt(&s.name).await? {
                Some(s) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if s.optional == Some(true) => continue,
                None => anyhow::bail!("envFrom: secret {} not found", s.name),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            env.insert(format!("{prefix}{k}"), v);
        }
    }
    for var in container.env.clone().unwrap_or_default() {
        let value = if let Some(value) = &var.value {
            expand(value, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field(pod, node, &f.field_path).ok_or_else(|| {
                    anyhow::anyhow!("env {}: unsupported fieldRef {}", var.name, f.field_path)
                })?
            } else if let Some(secret) = &from.secret_key_ref {
                let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
                let value = api
                    .get_opt(&secret.name)
                    .await?
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(&secret.key).cloned());
                match value {
                    Some(bytes) => String::from_utf8_lossy(&bytes.0).into_owned(),
                    None if secret.optional == Some(true) => continue,
                    None => anyhow::bail!(
                        "env {}: secret {}/{} not found",
                        var.name,
                        secret.name,
                        secret.key
                    ),
                }
            } else if let Some(cm) = &from.config_map_key_ref {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
                let value = api
                    .get_opt(&cm.name)
                    .await?
                    .and_then(|c| c.data)
                    .and_then(|d| d.get(&cm.key).cloned());
                match value {
                    Some(v) => v,
                    None if cm.optional == Some(true) => continue,
                    None => anyhow::bail!(
                        "env {}: configmap {}/{} not found",
                        var.name,
                        cm.name,
                        cm.key
                    ),
                }
            } else {
                anyhow::bail!("env {}: unsupported valueFrom", var.name)
            }
        } else {
            String::new()
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// A `fieldRef` of the downward API.
pub fn field(pod: &Pod, node: &RunnerNode, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let ip = node.address.to_string();
    Some(match path {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone()?,
        "metadata.uid" => meta.uid.clone()?,
        "spec.nodeName" => node.name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()?
            .service_account_name
            .clone()
            .unwrap_or_default(),
        "status.podIP" | "status.hostIP" => ip,
        "metadata.labels" | "metadata.annotations" => {
            let map = if path == "metadata.labels" {
                meta.labels.clone()
            } else {
                meta.annotations.clone()
            };
            map.unwrap_or_default()
                .iter()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect()
        }
        _ => {
            let (map, key) = if let Some(rest) = path.strip_prefix("metadata.labels['") {
                (meta.labels.as_ref()?, rest.strip_suffix("']")?)
            } else if let Some(rest) = path.strip_prefix("metadata.annotations['") {
                (meta.annotations.as_ref()?, rest.strip_suffix("']")?)
            } else {
                return None;
            };
            map.get(key).cloned().unwrap_or_default()
        }
    })
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` escapes, and
/// unknown references stay as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What stands in for the container's own mount and network namespaces. The process
/// runs in the runner's, so:
///
/// - a volume's `mountPath` (`/etc/tanks/token`) does not exist; the volume is a host
///   folder, and every mention of the mount path in the container's command, args,
///   environment values and `workingDir` is replaced by that folder
///   (`--token-key-file=/etc/tanks/token/key` → `--token-key-file=<state>/pods/<uid>/volumes/token-key/key`).
///   A path is replaced only as a whole path or a prefix of one (after start, `=`,
///   `:`, `,`, a space or a quote; followed by the end, `/` or one of those), so
///   `/data` does not touch `/database`. A binary that opens a fixed path it was not
///   given finds nothing there: that is the limit of running without a mount namespace.
/// - binding the wildcard address `0.0.0.0` would take the port on every node at once;
///   it is replaced by the node's address, the pod's IP, which is what a pod's
///   wildcard reaches in its own network namespace.
#[derive(Debug, Clone, Default)]
pub struct Rewrites {
    /// Mount path → host folder, longest mount path first.
    mounts: Vec<(String, String)>,
    pod_ip: Option<Ipv4Addr>,
}

impl Rewrites {
    pub fn new(mounts: impl IntoIterator<Item = (String, PathBuf)>, pod_ip: Ipv4Addr) -> Self {
        let mut mounts: Vec<(String, String)> = mounts
            .into_iter()
            .map(|(m, p)| {
                let m = m.trim_end_matches('/').to_owned();
                (m, p.display().to_string())
            })
            .filter(|(m, _)| !m.is_empty())
            .collect();
        mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
        Self {
            mounts,
            pod_ip: Some(pod_ip),
        }
    }

    pub fn apply(&self, input: &str) -> String {
        let wildcard = self.pod_ip.map(|ip| ("0.0.0.0".to_owned(), ip.to_string()));
        let candidates: Vec<(&str, &str)> = self
            .mounts
            .iter()
            .map(|(m, p)| (m.as_str(), p.as_str()))
            .chain(wildcard.as_ref().map(|(w, ip)| (w.as_str(), ip.as_str())))
            .collect();
        let mut out = String::with_capacity(input.len());
        let mut i = 0;
        let bytes = input.as_bytes();
        'scan: while i < input.len() {
            let at_start = i == 0 || is_delimiter(bytes[i - 1]);
            if at_start {
                for (from, to) in &candidates {
                    if input[i..].starts_with(from) {
                        let end = i + from.len();
                        let path_continues = from.starts_with('/') && bytes.get(end) == Some(&b'/');
                        if end == input.len() || is_delimiter(bytes[end]) || path_continues {
                            out.push_str(to);
                            i = end;
                            continue 'scan;
                        }
                    }
                }
            }
            let ch = input[i..].chars().next().unwrap_or_default();
            out.push(ch);
            i += ch.len_utf8();
        }
        out
    }
}

fn is_delimiter(b: u8) -> bool {
    matches!(b, b'=' | b':' | b',' | b' ' | b'"' | b'\'')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env: BTreeMap<String, String> = [
            ("POD_IP".to_owned(), "127.0.0.2".to_owned()),
            ("PORT".to_owned(), "7001".to_owned()),
        ]
        .into();
        assert_eq!(expand("$(POD_IP):$(PORT)", &env), "127.0.0.2:7001");
        assert_eq!(expand("$(MISSING)-x", &env), "$(MISSING)-x");
        assert_eq!(expand("$$(POD_IP)", &env), "$(POD_IP)");
        assert_eq!(expand("cost $5", &env), "cost $5");
        assert_eq!(expand("$(unterminated", &env), "$(unterminated");
    }

    #[test]
    fn mount_paths_and_the_wildcard_are_rewritten_as_whole_paths() {
        let r = Rewrites::new(
            [
                ("/data".to_owned(), PathBuf::from("/state/v/data")),
                (
                    "/etc/tanks/token/".to_owned(),
                    PathBuf::from("/state/v/token"),
                ),
                ("/etc/tanks".to_owned(), PathBuf::from("/state/v/etc")),
            ],
            Ipv4Addr::new(127, 0, 0, 9),
        );
        for (input, output) in [
            ("/data", "/state/v/data"),
            ("/data/dump.rdb", "/state/v/data/dump.rdb"),
            ("--dir=/data", "--dir=/state/v/data"),
            ("/database", "/database"),
            ("x/data", "x/data"),
            (
                "--token-key-file=/etc/tanks/token/key",
                "--token-key-file=/state/v/token/key",
            ),
            ("/etc/tanks/other", "/state/v/etc/other"),
            ("0.0.0.0:8888", "127.0.0.9:8888"),
            ("10.0.0.0:1", "10.0.0.0:1"),
            ("a=0.0.0.0", "a=127.0.0.9"),
            ("/data:/etc/tanks", "/state/v/data:/state/v/etc"),
            ("héllo /data", "héllo /state/v/data"),
        ] {
            assert_eq!(r.apply(input), output, "{input}");
        }
    }
}
