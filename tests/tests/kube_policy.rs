//! The policy kinds through the Kubernetes API: the real `kube::Client` against the API server
//! double, with `Fields::POLICY` (what netd-policy watches).

use std::sync::Arc;
use std::time::Duration;

use discovery::ClusterSnapshot;
use discovery::kubernetes::{KubeOptions, client, watch_api};
use integration::apiserver::{ApiServer, Res};
use serde_json::json;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

/// What netd-policy watches.
fn options() -> KubeOptions {
    KubeOptions {
        coalesce: Duration::from_millis(20),
        ..netd_policy::cli::kube_options()
    }
}

async fn until(
    rx: &mut watch::Receiver<Arc<ClusterSnapshot>>,
    what: &str,
    ok: impl Fn(&ClusterSnapshot) -> bool,
) {
    let done = tokio::time::timeout(WAIT, async {
        loop {
            if ok(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok() && ok(&rx.borrow()), "{what}: never happened");
}

fn cluster(api: &ApiServer) {
    api.apply(json!({"kind": "Namespace", "metadata": {"name": "a", "labels": {"team": "red"}}}));
    api.apply(json!({"kind": "Pod", "metadata": {"name": "web", "namespace": "a", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"podIP": "10.0.1.1", "podIPs": [{"ip": "10.0.1.1"}]}}));
    api.apply(
        json!({"kind": "Node", "metadata": {"name": "node-1", "labels": {"role": "worker"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
    );
    api.apply(
        json!({"kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "a"},
        "spec": {"podSelector": {}}}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_kinds_and_labels_arrive_and_follow_changes() {
    let api = ApiServer::start().await;
    cluster(&api);
    api.apply(json!({"kind": "AdminNetworkPolicy", "metadata": {"name": "first"},
        "spec": {"priority": 1, "subject": {"namespaces": {}},
                 "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "blue"}}}]}]}}));
    api.apply(json!({"kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
        "spec": {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}));
    let c = client(Some(&api.kubeconfig())).await.expect("client");
    let mut rx = watch_api(c, options());
    until(&mut rx, "synced with every kind", |s| {
        s.synced
            && s.objects.policy.network_policies.len() == 1
            && s.objects.policy.admin.len() == 1
            && s.objects.policy.baseline.len() == 1
            && s.objects.policy.nodes.len() == 1
    })
    .await;
    assert_eq!(
        api.lists(Res::Services),
        0,
        "the policy daemon needs no Services"
    );
    assert_eq!(api.lists(Res::EndpointSlices), 0);
    {
        let s = rx.borrow();
        let labels = &s.objects.policy.namespace_labels["a"];
        assert_eq!(labels.get("team").map(String::as_str), Some("red"));
        let pod = s.objects.pods.values().next().expect("pod");
        let policy = pod.policy.as_deref().expect("pod policy fields");
        assert_eq!(policy.node_name.as_deref(), Some("node-1"));
        assert_eq!(policy.ports[0].name, "http");
    }
    // Changes: a namespace relabelled, a policy deleted, an admin policy updated.
    api.apply(json!({"kind": "Namespace", "metadata": {"name": "a", "labels": {"team": "blue"}}}));
    until(&mut rx, "the namespace's new labels", |s| {
        s.objects
            .policy
            .namespace_labels
            .get("a")
            .is_some_and(|l| l.get("team").map(String::as_str) == Some("blue"))
    })
    .await;
    assert!(api.delete("NetworkPolicy", "a", "deny"));
    until(&mut rx, "the policy gone", |s| {
        s.objects.policy.network_policies.is_empty()
    })
    .await;
    api.apply(
        json!({"kind": "AdminNetworkPolicy", "metadata": {"name": "first"},
        "spec": {"priority": 7, "subject": {"namespaces": {}}}}),
    );
    until(&mut rx, "the admin policy updated", |s| {
        s.objects
            .policy
            .admin
            .get("first")
            .is_some_and(|p| p.priority == Some(7))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_admin_policy_crds_mean_none_and_are_picked_up_once_installed() {
    let api = ApiServer::start().await;
    api.set_missing(Res::AdminNetworkPolicies, true);
    api.set_missing(Res::BaselineAdminNetworkPolicies, true);
    cluster(&api);
    let c = client(Some(&api.kubeconfig())).await.expect("client");
    let mut rx = watch_api(c, options());
    until(&mut rx, "synced without the CRDs", |s| {
        s.synced
            && s.objects.policy.network_policies.len() == 1
            && s.objects.policy.admin.is_empty()
    })
    .await;
    // The CRD is installed and a policy created: the watcher, still retrying, finds it.
    api.set_missing(Res::AdminNetworkPolicies, false);
    api.apply(
        json!({"kind": "AdminNetworkPolicy", "metadata": {"name": "late"},
        "spec": {"priority": 3, "subject": {"namespaces": {}}}}),
    );
    until(&mut rx, "the late admin policy", |s| {
        s.objects.policy.admin.contains_key("late")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dns_options_watch_no_policy_kind() {
    let api = ApiServer::start().await;
    cluster(&api);
    let c = client(Some(&api.kubeconfig())).await.expect("client");
    let mut rx = watch_api(c, KubeOptions::default());
    until(&mut rx, "synced", |s| s.synced).await;
    assert_eq!(api.lists(Res::NetworkPolicies), 0);
    assert_eq!(api.lists(Res::Nodes), 0);
    let s = rx.borrow();
    assert!(s.objects.policy.network_policies.is_empty());
    assert!(
        s.objects.policy.namespace_labels.is_empty(),
        "no labels kept"
    );
}
