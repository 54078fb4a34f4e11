//! What the API server itself allows for allocations: create a Match-sized custom
//! resource, then patch its status, at a fixed concurrency, and nothing else. The
//! operator's allocation rate is reported as a ratio to this figure, measured in the
//! same run on the same machine.
//!
//! `api-ceiling --concurrency 8,32,64 --count 2000`
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{conditions, wait::await_condition};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Raw create + status patch rate of a Match-sized custom resource")]
struct Args {
    /// Concurrent clients; each level is one measurement.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    concurrency: Vec<usize>,
    /// Objects created (and status-patched) per level.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Kubeconfig of the cluster (default: `TANKS_KUBECONFIG`, then hack/devenv's).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
}

const GROUP: &str = "bench.tanks.dev";
const PLURAL: &str = "allocationprobes";

fn crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{PLURAL}.{GROUP}") },
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": { "plural": PLURAL, "singular": "allocationprobe", "kind": "AllocationProbe" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                }},
            }],
        },
    })
}

/// About what a Match carries: a fleet, fourteen players, map and mode, the event id.
fn object(name: &str) -> DynamicObject {
    let players: Vec<String> = (0..14).map(|i| format!("player-{i:04}")).collect();
    serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "AllocationProbe",
        "metadata": { "name": name },
        "spec": { "fleet": "tanks", "players": players, "map": "desert", "mode": "7v7", "sourceEventId": name },
    }))
    .expect("object")
}

fn status(name: &str) -> serde_json::Value {
    json!({ "status": {
        "phase": "Allocated", "gameServer": "tanks-abcde", "sessionId": format!("session-{name}"),
        "endpoint": { "address": "127.0.0.2", "port": 7001, "protocol": "UDP" },
        "allocatedAt": "2026-01-01T00:00:00Z",
    }})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args
        .kubeconfig
        .clone()
        .unwrap_or_else(tanks_testkit::kubeconfig);
    let client = tanks_testkit::kube_client(&path).await?;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(crd())?;
    let crd_name = format!("{PLURAL}.{GROUP}");
    crds.patch(
        &crd_name,
        &PatchParams::apply("api-ceiling").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    await_condition(crds, &crd_name, conditions::is_crd_established()).await?;

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "AllocationProbe"),
        PLURAL,
    );
    println!("concurrency,count,seconds,per_second,p50_ms,p99_ms");
    for &concurrency in &args.concurrency {
        let ns = tanks_testkit::namespace::create(&client, "ceiling").await?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);

        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let api = api.clone();
            let next = next.clone();
            let count = args.count;
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let name = format!("m-{i}");
                    let t = Instant::now();
                    api.create(&PostParams::default(), &object(&name)).await?;
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status(&name)))
                        .await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut latencies: Vec<Duration> = Vec::new();
        for w in workers {
            latencies.extend(w.await??);
        }
        let secs = started.elapsed().as_secs_f64();
        latencies.sort();
        let pct = |p: f64| {
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
                .as_secs_f64()
                * 1e3
        };
        println!(
            "{concurrency},{},{secs:.2},{:.0},{:.1},{:.1}",
            latencies.len(),
            latencies.len() as f64 / secs,
            pct(0.50),
            pct(0.99)
        );
        tanks_testkit::namespace::delete(&client, &ns).await;
    }
    Ok(())
}
