//! The immutable view of the cluster that every consumer reads, and the channel it travels in.
//!
//! ```text
//!  source (manifests, API) ──ObjectStore──> Publisher::publish ──watch──> consumers
//!                                           (index, generation,            (build their own
//!                                            serial, synced)                view, swap it in)
//! ```
//!
//! A snapshot is built whole and never changed; consumers hold an `Arc` to it for as long as they
//! need. Objects are shared between consecutive snapshots through `Arc`, so publishing after a
//! small change costs an index rebuild, not a deep copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::model::{EndpointSlice, Object, ObjectKey, Pod, Service};
use crate::policy::{AdminPolicy, Labels, NetworkPolicy, Node};

/// Every object a source currently knows, keyed by identity. Sources mutate this; the publisher
/// turns it into an immutable [`ClusterSnapshot`].
#[derive(Debug, Clone, Default)]
pub struct ObjectStore {
    pub namespaces: BTreeSet<String>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub pods: BTreeMap<ObjectKey, Arc<Pod>>,
    /// Read only with [`crate::Fields::policy`]; empty otherwise.
    pub policy: PolicyObjects,
}

/// What the policy daemon reads beyond the DNS kinds.
#[derive(Debug, Clone, Default)]
pub struct PolicyObjects {
    /// Labels of the namespaces that have any.
    pub namespace_labels: BTreeMap<String, Arc<Labels>>,
    pub network_policies: BTreeMap<ObjectKey, Arc<NetworkPolicy>>,
    /// AdminNetworkPolicies by name.
    pub admin: BTreeMap<String, Arc<AdminPolicy>>,
    /// BaselineAdminNetworkPolicies by name (only `default` converts).
    pub baseline: BTreeMap<String, Arc<AdminPolicy>>,
    pub nodes: BTreeMap<String, Arc<Node>>,
}

fn share<K: Clone + Ord, V>(into: &mut BTreeMap<K, Arc<V>>, from: &BTreeMap<K, Arc<V>>) {
    for (k, v) in from {
        into.insert(k.clone(), Arc::clone(v));
    }
}

fn keep<K: Ord, V>(into: &mut BTreeMap<K, V>, old: BTreeMap<K, V>) {
    for (k, v) in old {
        into.entry(k).or_insert(v);
    }
}

impl PolicyObjects {
    fn share_all(&mut self, other: &PolicyObjects) {
        share(&mut self.namespace_labels, &other.namespace_labels);
        share(&mut self.network_policies, &other.network_policies);
        share(&mut self.admin, &other.admin);
        share(&mut self.baseline, &other.baseline);
        share(&mut self.nodes, &other.nodes);
    }

    fn keep_missing(&mut self, old: PolicyObjects) {
        keep(&mut self.namespace_labels, old.namespace_labels);
        keep(&mut self.network_policies, old.network_policies);
        keep(&mut self.admin, old.admin);
        keep(&mut self.baseline, old.baseline);
        keep(&mut self.nodes, old.nodes);
    }

    fn len(&self) -> usize {
        self.network_policies.len() + self.admin.len() + self.baseline.len() + self.nodes.len()
    }
}

impl ObjectStore {
    /// Adds or replaces an object. Returns true when an object with the same identity was
    /// already there (the new one wins).
    pub fn insert(&mut self, obj: Object) -> bool {
        match obj {
            Object::Namespace(n) => {
                if !n.labels.is_empty() {
                    self.policy
                        .namespace_labels
                        .insert(n.name.clone(), Arc::new(n.labels));
                }
                !self.namespaces.insert(n.name)
            }
            Object::NetworkPolicy(p) => self
                .policy
                .network_policies
                .insert(p.key(), Arc::new(p))
                .is_some(),
            Object::AdminNetworkPolicy(p) => self
                .policy
                .admin
                .insert(p.name.clone(), Arc::new(p))
                .is_some(),
            Object::BaselineAdminNetworkPolicy(p) => self
                .policy
                .baseline
                .insert(p.name.clone(), Arc::new(p))
                .is_some(),
            Object::Node(n) => self
                .policy
                .nodes
                .insert(n.name.clone(), Arc::new(n))
                .is_some(),
            Object::Service(s) => self.services.insert(s.key(), Arc::new(s)).is_some(),
            Object::EndpointSlice(s) => self.endpoint_slices.insert(s.key(), Arc::new(s)).is_some(),
            Object::Pod(p) => self.pods.insert(p.key(), Arc::new(p)).is_some(),
        }
    }

    /// Adds every object of `other`, sharing its `Arc`s; `other` wins on the same identity.
    pub fn share_all(&mut self, other: &ObjectStore) {
        self.namespaces.extend(other.namespaces.iter().cloned());
        share(&mut self.services, &other.services);
        share(&mut self.endpoint_slices, &other.endpoint_slices);
        share(&mut self.pods, &other.pods);
        self.policy.share_all(&other.policy);
    }

    /// Adds the objects of `old` whose identity this store does not have.
    pub fn keep_missing(&mut self, old: ObjectStore) {
        self.namespaces.extend(old.namespaces);
        keep(&mut self.services, old.services);
        keep(&mut self.endpoint_slices, old.endpoint_slices);
        keep(&mut self.pods, old.pods);
        self.policy.keep_missing(old.policy);
    }

    /// Calls `f` with the kind, namespace and name of every object.
    pub fn for_each_identity<'s>(&'s self, mut f: impl FnMut(&'static str, &'s str, &'s str)) {
        for n in &self.namespaces {
            f("Namespace", "", n);
        }
        for (kind, keys) in [
            ("Service", self.services.keys().collect::<Vec<_>>()),
            ("EndpointSlice", self.endpoint_slices.keys().collect()),
            ("Pod", self.pods.keys().collect()),
            (
                "NetworkPolicy",
                self.policy.network_policies.keys().collect(),
            ),
        ] {
            for k in keys {
                f(kind, &k.namespace, &k.name);
            }
        }
        for (kind, names) in [
            (
                "AdminNetworkPolicy",
                self.policy.admin.keys().collect::<Vec<_>>(),
            ),
            (
                "BaselineAdminNetworkPolicy",
                self.policy.baseline.keys().collect(),
            ),
            ("Node", self.policy.nodes.keys().collect()),
        ] {
            for n in names {
                f(kind, "", n);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.pods.len()
            + self.policy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One immutable state of the cluster with the indexes consumers need.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    /// Increases by one with every published snapshot of a source.
    pub generation: u64,
    /// A serial for the DNS SOA: seconds since the epoch of the last change, strictly increasing.
    pub serial: u32,
    /// True once every required kind has been listed completely. Consumers must not treat a
    /// missing object as absent before this (DNS answers SERVFAIL instead of NXDOMAIN).
    pub synced: bool,
    pub objects: ObjectStore,
    /// When the changes this snapshot carries happened (at most a few hundred; empty when the
    /// source does not know). Consumers measure their programming latency from these.
    pub changed_at: Vec<SystemTime>,
    /// EndpointSlices by the `namespace/name` of the Service they belong to, in slice-name order.
    pub slices_by_service: BTreeMap<ObjectKey, Vec<Arc<EndpointSlice>>>,
}

impl ClusterSnapshot {
    /// Builds the indexes over `objects`.
    pub fn new(objects: ObjectStore, generation: u64, serial: u32, synced: bool) -> Self {
        let mut slices_by_service: BTreeMap<ObjectKey, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        for slice in objects.endpoint_slices.values() {
            if let Some(svc) = &slice.service {
                slices_by_service
                    .entry(ObjectKey::new(&slice.namespace, svc))
                    .or_default()
                    .push(Arc::clone(slice));
            }
        }
        Self {
            generation,
            serial,
            synced,
            objects,
            changed_at: Vec::new(),
            slices_by_service,
        }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        // BTreeMap lookups need an owned key; this is off the query path.
        self.objects.services.get(&ObjectKey::new(namespace, name))
    }

    pub fn slices_of(&self, svc: &Service) -> &[Arc<EndpointSlice>] {
        self.slices_by_service
            .get(&svc.key())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// Publishes snapshots of one source through a `watch` channel.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Arc<ClusterSnapshot>>,
}

impl Publisher {
    /// A publisher whose first value is an empty, unsynced snapshot (generation 0).
    pub fn new() -> (Self, watch::Receiver<Arc<ClusterSnapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(ClusterSnapshot::default()));
        (Self { tx }, rx)
    }

    /// Builds and sends the next snapshot. Receivers that lag only ever see the newest one.
    pub fn publish(&self, objects: ObjectStore, synced: bool) -> Arc<ClusterSnapshot> {
        self.publish_changes(objects, synced, Vec::new())
    }

    /// [`Publisher::publish`], saying when the changes in it happened.
    pub fn publish_changes(
        &self,
        objects: ObjectStore,
        synced: bool,
        changed_at: Vec<SystemTime>,
    ) -> Arc<ClusterSnapshot> {
        let prev = self.tx.borrow().clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let now = u32::try_from(now).unwrap_or(u32::MAX);
        let serial = now.max(prev.serial.wrapping_add(1));
        let mut snap = ClusterSnapshot::new(objects, prev.generation + 1, serial, synced);
        snap.changed_at = changed_at;
        let snap = Arc::new(snap);
        self.tx.send_replace(Arc::clone(&snap));
        snap
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterSnapshot>> {
        self.tx.subscribe()
    }

    /// Resolves when every receiver has been dropped: nobody needs this source any more.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AddressType, Namespace};

    fn slice(ns: &str, name: &str, svc: &str) -> Object {
        Object::EndpointSlice(EndpointSlice {
            namespace: ns.into(),
            name: name.into(),
            service: Some(svc.into()),
            address_type: AddressType::V4,
            ports: vec![],
            endpoints: vec![],
        })
    }

    #[test]
    fn publish_indexes_slices_and_advances_generation_and_serial() {
        let (p, rx) = Publisher::new();
        assert!(!rx.borrow().synced);
        let mut store = ObjectStore::default();
        store.insert(Object::Namespace(Namespace {
            name: "a".into(),
            labels: Default::default(),
        }));
        store.insert(slice("a", "web-1", "web"));
        store.insert(slice("a", "web-2", "web"));
        store.insert(slice("b", "web-1", "web"));
        let s1 = p.publish(store.clone(), true);
        assert_eq!(s1.generation, 1);
        assert!(s1.synced);
        assert_eq!(s1.slices_by_service[&ObjectKey::new("a", "web")].len(), 2);
        assert_eq!(s1.slices_by_service[&ObjectKey::new("b", "web")].len(), 1);
        let s2 = p.publish(store, true);
        assert_eq!(s2.generation, 2);
        assert!(s2.serial > s1.serial);
        assert_eq!(rx.borrow().generation, 2);
    }

    #[test]
    fn insert_reports_replacement() {
        let mut store = ObjectStore::default();
        assert!(!store.insert(slice("a", "x", "web")));
        assert!(store.insert(slice("a", "x", "other")));
        assert_eq!(store.endpoint_slices.len(), 1);
    }
}
