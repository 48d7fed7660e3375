//! The Kubernetes API as a discovery source: kube-rs watchers on Namespaces, Services,
//! EndpointSlices and (optionally) Pods.
//!
//! ```text
//!  watcher(Namespace) ─┐   strip at ingestion     ┌──────────────┐  coalesce   ┌───────────┐
//!  watcher(Service) ───┼─> (model::TryFrom) ────> │ stores, one  │ ─(window)─> │ Publisher │ ─watch─>
//!  watcher(EpSlice) ───┤   unchanged? no-op       │ per kind and │  dirty?     └───────────┘
//!  watcher(Pod) ───────┘   relist? buffer, swap   │ scope        │
//!                          on InitDone            └──────────────┘
//! ```
//!
//! - A relist (start, `410 Gone`, API server restart) is buffered and swapped in whole when it
//!   completes, so a consumer never sees a half-listed cluster: no false NXDOMAIN mid-relist.
//! - Objects are stripped into the model before they are stored; an event whose stripped object
//!   equals the stored one changes nothing and publishes nothing (status churn, annotations...).
//! - Bursts are coalesced: every change inside one window (default 50 ms) makes one snapshot.
//! - Errors (disconnects, failing lists, objects that do not convert) are logged once per
//!   streak and retried with kube-runtime's backoff; the last good objects keep being served.
//! - Each snapshot carries when its changes happened (an EndpointSlice's
//!   `endpoints.kubernetes.io/last-change-trigger-time`, else when the event arrived), from
//!   which consumers measure the programming latency.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as disc;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use crate::model::{ConvertError, EndpointSlice, Fields, Namespace, ObjectKey, Pod, Service};
use crate::policy::{AdminPolicy, NetworkPolicy, Node};
use crate::snapshot::{ClusterSnapshot, ObjectStore, Publisher};

/// The resources this source lists and watches, as RBAC names them: `(apiGroup, resource)`.
/// Pods are watched only when pod records are verified.
pub const WATCHED_RESOURCES: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("", "services"),
    ("", "pods"),
    ("discovery.k8s.io", "endpointslices"),
    // With Fields::policy only.
    ("", "nodes"),
    ("networking.k8s.io", "networkpolicies"),
    ("policy.networking.k8s.io", "adminnetworkpolicies"),
    ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
];

/// The annotation the EndpointSlice controller sets to when the change behind a slice began.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no discovery source: pass --manifests DIR or --kubeconfig PATH, or run in a pod (KUBERNETES_SERVICE_HOST is not set)"
    )]
    NoSource,
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client from a kubeconfig file, or from the pod's service account when `kubeconfig` is
/// `None` and `KUBERNETES_SERVICE_HOST` is set.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let kerr = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(kerr)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kerr)?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().map_err(ClientError::InCluster)?
        }
        None => return Err(ClientError::NoSource),
    };
    Client::try_from(config).map_err(ClientError::Client)
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Watch only these namespaces (one watcher each); empty means the whole cluster. With a
    /// list, Namespace objects are not watched: the listed namespaces are taken to exist.
    pub namespaces: Vec<String>,
    /// Watch Pods too (needed for verified pod records).
    pub pods: bool,
    /// Watch Services and EndpointSlices (everyone but the policy daemon).
    pub services: bool,
    /// Changes within this window make one snapshot.
    pub coalesce: Duration,
    /// Watcher page size for lists.
    pub page_size: u32,
    /// What to keep beyond what DNS reads.
    pub fields: Fields,
}

impl KubeOptions {
    /// The API group and resource of everything these options watch (what RBAC must grant).
    pub fn watched_resources(&self) -> Vec<(&'static str, &'static str)> {
        WATCHED_RESOURCES
            .iter()
            .copied()
            .filter(|(_, r)| match *r {
                "pods" => self.pods,
                "services" | "endpointslices" => self.services,
                "namespaces" => self.namespaces.is_empty(),
                "nodes"
                | "networkpolicies"
                | "adminnetworkpolicies"
                | "baselineadminnetworkpolicies" => self.fields.policy,
                _ => true,
            })
            .collect()
    }
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            pods: true,
            services: true,
            coalesce: Duration::from_millis(50),
            page_size: 500,
            fields: Fields::default(),
        }
    }
}

/// Objects of one kind from one watcher.
#[derive(Debug)]
struct KindStore<T> {
    objects: BTreeMap<ObjectKey, Arc<T>>,
    /// Objects of a relist in progress; swapped in at InitDone.
    buffer: Option<BTreeMap<ObjectKey, Arc<T>>>,
    listed: bool,
}

impl<T> Default for KindStore<T> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            buffer: None,
            listed: false,
        }
    }
}

#[derive(Debug, Default)]
struct Stores {
    namespaces: BTreeMap<String, KindStore<Namespace>>,
    services: BTreeMap<String, KindStore<Service>>,
    slices: BTreeMap<String, KindStore<EndpointSlice>>,
    pods: BTreeMap<String, KindStore<Pod>>,
    network_policies: BTreeMap<String, KindStore<NetworkPolicy>>,
    nodes: BTreeMap<String, KindStore<Node>>,
    admin: BTreeMap<String, KindStore<AdminPolicy>>,
    baseline: BTreeMap<String, KindStore<AdminPolicy>>,
    /// Namespaces given on the command line (when Namespace objects are not watched).
    fixed_namespaces: Vec<String>,
    /// What conversions keep.
    fields: Fields,
    dirty: bool,
    /// When the unpublished changes happened.
    changed_at: Vec<SystemTime>,
}

/// At most this many change times ride on one snapshot (a burst of thousands needs no more to
/// measure its latency).
const MAX_CHANGE_TIMES: usize = 256;

impl Stores {
    fn mark(&mut self, at: SystemTime) {
        self.dirty = true;
        if self.changed_at.len() < MAX_CHANGE_TIMES {
            self.changed_at.push(at);
        }
    }

    fn all_listed(&self) -> bool {
        fn listed<T>(m: &BTreeMap<String, KindStore<T>>) -> bool {
            m.values().all(|s| s.listed)
        }
        listed(&self.namespaces)
            && listed(&self.services)
            && listed(&self.slices)
            && listed(&self.pods)
            && listed(&self.network_policies)
            && listed(&self.nodes)
            && listed(&self.admin)
            && listed(&self.baseline)
    }

    fn object_store(&self) -> ObjectStore {
        let mut out = ObjectStore::default();
        for s in self.namespaces.values() {
            for n in s.objects.values() {
                out.namespaces.insert(n.name.clone());
                if !n.labels.is_empty() {
                    out.policy
                        .namespace_labels
                        .insert(n.name.clone(), Arc::new(n.labels.clone()));
                }
            }
        }
        out.namespaces.extend(self.fixed_namespaces.iter().cloned());
        for s in self.services.values() {
            out.services
                .extend(s.objects.iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
        }
        for s in self.slices.values() {
            out.endpoint_slices
                .extend(s.objects.iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
        }
        for s in self.pods.values() {
            out.pods
                .extend(s.objects.iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
        }
        for s in self.network_policies.values() {
            out.policy
                .network_policies
                .extend(s.objects.iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
        }
        for s in self.nodes.values() {
            out.policy
                .nodes
                .extend(s.objects.values().map(|v| (v.name.clone(), Arc::clone(v))));
        }
        for s in self.admin.values() {
            out.policy
                .admin
                .extend(s.objects.values().map(|v| (v.name.clone(), Arc::clone(v))));
        }
        for s in self.baseline.values() {
            out.policy
                .baseline
                .extend(s.objects.values().map(|v| (v.name.clone(), Arc::clone(v))));
        }
        out
    }
}

#[derive(Debug)]
struct Shared {
    stores: Mutex<Stores>,
    wake: Notify,
}

impl Shared {
    fn stores(&self) -> std::sync::MutexGuard<'_, Stores> {
        // A panic while holding the lock cannot leave a store half-updated in a way that matters
        // more than stopping would: keep serving.
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How one kind is converted and where it is stored.
trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    type Model: PartialEq + Send + Sync + 'static;
    const NAME: &'static str;
    fn convert(&self, fields: Fields) -> Result<Self::Model, ConvertError>;
    fn key(m: &Self::Model) -> ObjectKey;
    fn stores(s: &mut Stores) -> &mut BTreeMap<String, KindStore<Self::Model>>;
    /// When the change behind this object began, if the object says.
    fn trigger_time(&self) -> Option<SystemTime> {
        None
    }
    /// A kind from a CRD that may not be installed: a 404 means none exist.
    const OPTIONAL: bool = false;
}

impl Kind for core::Namespace {
    type Model = Namespace;
    const NAME: &'static str = "Namespace";
    fn convert(&self, fields: Fields) -> Result<Namespace, ConvertError> {
        Namespace::convert(self, fields)
    }
    fn key(m: &Namespace) -> ObjectKey {
        ObjectKey::new("", &m.name)
    }
    fn stores(s: &mut Stores) -> &mut BTreeMap<String, KindStore<Namespace>> {
        &mut s.namespaces
    }
}

impl Kind for core::Service {
    type Model = Service;
    const NAME: &'static str = "Service";
    fn convert(&self, fields: Fields) -> Result<Service, ConvertError> {
        Service::convert(self, fields)
    }
    fn key(m: &Service) -> ObjectKey {
        m.key()
    }
    fn stores(s: &mut Stores) -> &mut BTreeMap<String, KindStore<Service>> {
        &mut s.services
    }
}

impl Kind for disc::EndpointSlice {
    type Model = EndpointSlice;
    const NAME: &'static str = "EndpointSlice";
    fn convert(&self, fields: Fields) -> Result<EndpointSlice, ConvertError> {
        EndpointSlice::convert(self, fields)
    }
    fn key(m: &EndpointSlice) -> ObjectKey {
        m.key()
    }
    fn stores(s: &mut Stores) -> &mut BTreeMap<String, KindStore<EndpointSlice>> {
        &mut s.slices
    }
    fn trigger_time(&self) -> Option<SystemTime> {
        let raw = self
            .metadata
            .annotations
            .as_ref()?
            .get(TRIGGER_TIME_ANNOTATION)?;
        raw.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
    }
}

impl Kind for core::Pod {
    type Model = Pod;
    const NAME: &'static str = "Pod";
    fn convert(&self, fields: Fields) -> Result<Pod, ConvertError> {
        Pod::convert(self, fields)
    }
    fn key(m: &Pod) -> ObjectKey {
        m.key()
    }
    fn stores(s: &mut Stores) -> &mut BTreeMap<String, KindStore<Pod>> {
        &mut s.pods
    }
}

impl Kind for core::Node {
    type Model = Node;
    const NAME: &'static str = "Node";
    fn convert(&self, _: Fields) -> Result<Node, ConvertError> {
        Node::convert(self)
    }
    fn key(m: &Node) -> ObjectKey {
        ObjectKey::new("", &m.name)
    }
    fn stores(s: &mut Stores) -> &mut BTreeMap<String, KindStore<Node>> {
        &mut s.nodes
    }
}

impl Kind for net::NetworkPolicy {
    type Model = NetworkPolicy;
    const NAME: &'static str = "NetworkPolicy";
    fn convert(&self, _: Fields) -> Result<NetworkPolicy, ConvertError> {
        NetworkPolicy::convert(self)
    }
    fn key(m: &NetworkPolicy) -> ObjectKey {
        m.key()
    }
    fn stores(s: &mut Stores) -> &mut BTreeMap<String, KindStore<NetworkPolicy>> {
        &mut s.network_policies
    }
}

/// An AdminNetworkPolicy or BaselineAdminNetworkPolicy as the API sends it (k8s-openapi has no
/// type for these CRDs); the spec is converted by [`AdminPolicy::convert`].
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct AdminObject<const BASELINE: bool> {
    #[serde(default)]
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

impl<const BASELINE: bool> Resource for AdminObject<BASELINE> {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        if BASELINE {
            "BaselineAdminNetworkPolicy".into()
        } else {
            "AdminNetworkPolicy".into()
        }
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "policy.networking.k8s.io".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        if BASELINE {
            "baselineadminnetworkpolicies".into()
        } else {
            "adminnetworkpolicies".into()
        }
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}

impl<const BASELINE: bool> Kind for AdminObject<BASELINE> {
    type Model = AdminPolicy;
    const NAME: &'static str = if BASELINE {
        "BaselineAdminNetworkPolicy"
    } else {
        "AdminNetworkPolicy"
    };
    const OPTIONAL: bool = true;
    fn convert(&self, _: Fields) -> Result<AdminPolicy, ConvertError> {
        let value = serde_json::json!({"metadata": self.metadata, "spec": self.spec});
        AdminPolicy::convert(value, BASELINE)
    }
    fn key(m: &AdminPolicy) -> ObjectKey {
        ObjectKey::new("", &m.name)
    }
    fn stores(s: &mut Stores) -> &mut BTreeMap<String, KindStore<AdminPolicy>> {
        if BASELINE {
            &mut s.baseline
        } else {
            &mut s.admin
        }
    }
}

/// Whether a watcher error says the resource does not exist (its CRD is not installed).
fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.is_not_found(),
        _ => false,
    }
}

/// Applies one watcher event to its store. Returns true when something DNS-visible changed.
fn apply_event<K: Kind>(
    store: &mut KindStore<K::Model>,
    ev: watcher::Event<K>,
    fields: Fields,
) -> bool {
    let convert = |obj: &K| match obj.convert(fields) {
        Ok(m) => Some(m),
        Err(e) => {
            // Once per bad version of an object: a watcher repeats nothing unless it changes.
            tracing::warn!(kind = K::NAME, error = %e, "object does not convert; keeping its previous version");
            None
        }
    };
    match ev {
        watcher::Event::Init => {
            store.buffer = Some(BTreeMap::new());
            false
        }
        watcher::Event::InitApply(obj) => {
            let Some(buf) = store.buffer.as_mut() else {
                return false;
            };
            match convert(&obj) {
                Some(m) => {
                    // Share the stored Arc when nothing changed, so equal snapshots stay cheap.
                    let key = K::key(&m);
                    let arc = match store.objects.get(&key) {
                        Some(old) if **old == m => Arc::clone(old),
                        _ => Arc::new(m),
                    };
                    buf.insert(key, arc);
                }
                None => {
                    // Keep the last good version of an object that no longer converts.
                    let key = key_of(&obj);
                    if let Some(old) = store.objects.get(&key) {
                        buf.insert(key, Arc::clone(old));
                    }
                }
            }
            false
        }
        watcher::Event::InitDone => {
            let buf = store.buffer.take().unwrap_or_default();
            let first = !store.listed;
            store.listed = true;
            let changed = buf.len() != store.objects.len()
                || buf
                    .iter()
                    .zip(store.objects.iter())
                    .any(|((k1, v1), (k2, v2))| k1 != k2 || !Arc::ptr_eq(v1, v2));
            store.objects = buf;
            changed || first
        }
        watcher::Event::Apply(obj) => match convert(&obj) {
            Some(m) => {
                let key = K::key(&m);
                if store.objects.get(&key).is_some_and(|old| **old == m) {
                    return false;
                }
                store.objects.insert(key, Arc::new(m));
                true
            }
            None => false,
        },
        watcher::Event::Delete(obj) => store.objects.remove(&key_of(&obj)).is_some(),
    }
}

/// The key of an object as the API sent it (namespaced objects from the API always carry their
/// namespace; cluster-scoped ones have none, as in the model).
fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    let m = obj.meta();
    ObjectKey::new(
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

async fn run_kind<K: Kind>(api: Api<K>, cfg: watcher::Config, scope: String, shared: Arc<Shared>) {
    K::stores(&mut shared.stores())
        .entry(scope.clone())
        .or_default();
    let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff());
    let mut failing = false;
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) if K::OPTIONAL && not_found(&e) => {
                // No CRD: no such objects. Keep trying, so that installing it later works.
                let mut stores = shared.stores();
                let store = K::stores(&mut stores).entry(scope.clone()).or_default();
                let first = !store.listed;
                let had = !store.objects.is_empty();
                store.listed = true;
                store.objects.clear();
                if first || had {
                    tracing::info!(
                        kind = K::NAME,
                        "not served by the API (is its CRD installed?); taken as none"
                    );
                    stores.mark(SystemTime::now());
                    drop(stores);
                    shared.wake.notify_one();
                }
                continue;
            }
            Err(e) => {
                if failing {
                    tracing::debug!(kind = K::NAME, scope = %scope, error = %e, "watch still failing");
                } else {
                    tracing::warn!(kind = K::NAME, scope = %scope, error = %e, "watch failed; retrying with backoff, serving the last good objects");
                    failing = true;
                }
                continue;
            }
        };
        if failing {
            tracing::info!(kind = K::NAME, scope = %scope, "watch recovered");
            failing = false;
        }
        let at = match &ev {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => {
                o.trigger_time().unwrap_or_else(SystemTime::now)
            }
            _ => SystemTime::now(),
        };
        let done = matches!(ev, watcher::Event::InitDone);
        let mut stores = shared.stores();
        let fields = stores.fields;
        let store = K::stores(&mut stores).entry(scope.clone()).or_default();
        let changed = apply_event(store, ev, fields);
        if done {
            tracing::debug!(kind = K::NAME, scope = %scope, objects = store.objects.len(), "listed");
        }
        if changed {
            stores.mark(at);
            drop(stores);
            shared.wake.notify_one();
        }
    }
}

/// Starts the watchers and returns the snapshot channel. The first snapshots are unsynced; a
/// snapshot is synced once every watcher has completed a list. Runs until every receiver is
/// dropped. Must be called inside a tokio runtime.
pub fn watch_api(client: Client, opts: KubeOptions) -> watch::Receiver<Arc<ClusterSnapshot>> {
    let (publisher, rx) = Publisher::new();
    let shared = Arc::new(Shared {
        stores: Mutex::new(Stores {
            fields: opts.fields,
            ..Stores::default()
        }),
        wake: Notify::new(),
    });
    let cfg = watcher::Config::default().page_size(opts.page_size);
    let mut tasks = tokio::task::JoinSet::new();

    let scopes: Vec<Option<String>> = if opts.namespaces.is_empty() {
        vec![None]
    } else {
        opts.namespaces.iter().cloned().map(Some).collect()
    };
    if opts.namespaces.is_empty() {
        tasks.spawn(run_kind(
            Api::<core::Namespace>::all(client.clone()),
            cfg.clone(),
            String::new(),
            Arc::clone(&shared),
        ));
    } else {
        shared.stores().fixed_namespaces = opts.namespaces.clone();
    }
    for scope in scopes {
        let label = scope.clone().unwrap_or_default();
        macro_rules! api {
            ($k:ty) => {
                match &scope {
                    Some(ns) => Api::<$k>::namespaced(client.clone(), ns),
                    None => Api::<$k>::all(client.clone()),
                }
            };
        }
        // Register every store before any watcher runs, so "all listed" waits for all of them.
        {
            let mut s = shared.stores();
            if opts.services {
                s.services.entry(label.clone()).or_default();
                s.slices.entry(label.clone()).or_default();
            }
            if opts.pods {
                s.pods.entry(label.clone()).or_default();
            }
        }
        if opts.services {
            tasks.spawn(run_kind(
                api!(core::Service),
                cfg.clone(),
                label.clone(),
                Arc::clone(&shared),
            ));
            tasks.spawn(run_kind(
                api!(disc::EndpointSlice),
                cfg.clone(),
                label.clone(),
                Arc::clone(&shared),
            ));
        }
        if opts.pods {
            tasks.spawn(run_kind(
                api!(core::Pod),
                cfg.clone(),
                label.clone(),
                Arc::clone(&shared),
            ));
        }
        if opts.fields.policy {
            shared
                .stores()
                .network_policies
                .entry(label.clone())
                .or_default();
            tasks.spawn(run_kind(
                api!(net::NetworkPolicy),
                cfg.clone(),
                label.clone(),
                Arc::clone(&shared),
            ));
        }
    }
    if opts.fields.policy {
        {
            let mut s = shared.stores();
            s.nodes.entry(String::new()).or_default();
            s.admin.entry(String::new()).or_default();
            s.baseline.entry(String::new()).or_default();
        }
        tasks.spawn(run_kind(
            Api::<core::Node>::all(client.clone()),
            cfg.clone(),
            String::new(),
            Arc::clone(&shared),
        ));
        tasks.spawn(run_kind(
            Api::<AdminObject<false>>::all(client.clone()),
            cfg.clone(),
            String::new(),
            Arc::clone(&shared),
        ));
        tasks.spawn(run_kind(
            Api::<AdminObject<true>>::all(client.clone()),
            cfg.clone(),
            String::new(),
            Arc::clone(&shared),
        ));
    }
    if opts.namespaces.is_empty() {
        shared.stores().namespaces.entry(String::new()).or_default();
    }

    tokio::spawn(async move {
        let _watchers = tasks; // aborted when this task ends
        let mut synced = false;
        loop {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = publisher.closed() => return,
            }
            // Let the rest of the burst arrive.
            tokio::time::sleep(opts.coalesce).await;
            let (objects, all_listed, changed_at) = {
                let mut s = shared.stores();
                if !s.dirty {
                    continue;
                }
                s.dirty = false;
                (
                    s.object_store(),
                    s.all_listed(),
                    std::mem::take(&mut s.changed_at),
                )
            };
            if all_listed && !synced {
                tracing::info!(objects = objects.len(), "kubernetes api synced");
                synced = true;
            }
            let snap = publisher.publish_changes(objects, synced, changed_at);
            tracing::debug!(
                generation = snap.generation,
                synced,
                objects = snap.objects.len(),
                "snapshot published"
            );
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ip: &str, rv: &str) -> core::Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "a", "resourceVersion": rv},
            "spec": {"clusterIP": ip}
        }))
        .expect("valid")
    }

    #[test]
    fn relists_are_buffered_and_swapped_whole() {
        let mut st = KindStore::<Service>::default();
        assert!(!apply_event(
            &mut st,
            watcher::Event::<core::Service>::Init,
            Fields::default()
        ));
        assert!(!apply_event(
            &mut st,
            watcher::Event::InitApply(svc("x", "10.0.0.1", "1")),
            Fields::default()
        ));
        assert!(st.objects.is_empty(), "nothing visible before InitDone");
        assert!(
            apply_event(
                &mut st,
                watcher::Event::<core::Service>::InitDone,
                Fields::default()
            ),
            "first list completes"
        );
        assert_eq!(st.objects.len(), 1);

        // A relist that sees the same objects changes nothing.
        apply_event(
            &mut st,
            watcher::Event::<core::Service>::Init,
            Fields::default(),
        );
        apply_event(
            &mut st,
            watcher::Event::InitApply(svc("x", "10.0.0.1", "9")),
            Fields::default(),
        );
        assert_eq!(st.objects.len(), 1, "old objects stay while relisting");
        assert!(!apply_event(
            &mut st,
            watcher::Event::<core::Service>::InitDone,
            Fields::default()
        ));

        // A relist missing an object drops it at InitDone, not before.
        apply_event(
            &mut st,
            watcher::Event::<core::Service>::Init,
            Fields::default(),
        );
        assert_eq!(st.objects.len(), 1);
        assert!(apply_event(
            &mut st,
            watcher::Event::<core::Service>::InitDone,
            Fields::default()
        ));
        assert!(st.objects.is_empty());
    }

    #[test]
    fn only_dns_visible_changes_count_and_bad_objects_keep_their_last_version() {
        let mut st = KindStore::<Service>::default();
        assert!(apply_event(
            &mut st,
            watcher::Event::Apply(svc("x", "10.0.0.1", "1")),
            Fields::default()
        ));
        // Same stripped object, new resourceVersion (say a label changed): not a change.
        assert!(!apply_event(
            &mut st,
            watcher::Event::Apply(svc("x", "10.0.0.1", "2")),
            Fields::default()
        ));
        assert!(apply_event(
            &mut st,
            watcher::Event::Apply(svc("x", "10.0.0.2", "3")),
            Fields::default()
        ));
        // Does not convert: ignored, previous version kept.
        assert!(!apply_event(
            &mut st,
            watcher::Event::Apply(svc("x", "bogus", "4")),
            Fields::default()
        ));
        assert_eq!(
            st.objects[&ObjectKey::new("a", "x")].cluster_ips[0].to_string(),
            "10.0.0.2"
        );
        // And through a relist too.
        apply_event(
            &mut st,
            watcher::Event::<core::Service>::Init,
            Fields::default(),
        );
        apply_event(
            &mut st,
            watcher::Event::InitApply(svc("x", "bogus", "5")),
            Fields::default(),
        );
        apply_event(
            &mut st,
            watcher::Event::<core::Service>::InitDone,
            Fields::default(),
        );
        assert_eq!(st.objects.len(), 1);
        assert!(apply_event(
            &mut st,
            watcher::Event::Delete(svc("x", "bogus", "6")),
            Fields::default()
        ));
        assert!(st.objects.is_empty());
    }

    #[test]
    fn trigger_time_annotation_is_read() {
        let s: disc::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "s", "annotations": {TRIGGER_TIME_ANNOTATION: "2026-01-02T03:04:05Z"}},
            "addressType": "IPv4", "endpoints": []
        }))
        .expect("valid");
        let t = s.trigger_time().expect("parsed");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch")
                .as_secs(),
            1_767_323_045
        );
    }
}
