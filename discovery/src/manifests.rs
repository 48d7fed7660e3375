//! A directory of Kubernetes manifests as a discovery source.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file below the directory (recursively; entries whose
//! name starts with `.` are skipped, which also skips the `..data` farm of a mounted ConfigMap)
//! is read as a stream of documents: multi-document YAML, one or more JSON values, and `List` /
//! `<Kind>List` wrappers. Objects of kinds the model does not know are ignored.
//!
//! Bad input loses nothing. Each problem is reported with its file, document index and reason,
//! and:
//! - a document that does not convert is skipped; the other documents of the file are served;
//! - a file that does not parse at all keeps the objects it had at its last good read;
//! - a file with any problem also keeps the previous version of every object it no longer
//!   yields, so breaking one object in an edit never drops it. Once the file is clean again it
//!   is taken exactly as written.
//!
//! The directory is watched with inotify (through `notify`), changes are coalesced for
//! [`WatchOptions::debounce`], and a slow periodic rescan catches what events miss. A file is
//! reparsed only when its bytes changed.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as disc;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::model::{EndpointSlice, Fields, Namespace, Object, Pod, Service};
use crate::policy::{AdminPolicy, NetworkPolicy, Node};

/// The API group and version of AdminNetworkPolicy and BaselineAdminNetworkPolicy.
pub const POLICY_API: &str = "policy.networking.k8s.io/v1alpha1";
use crate::snapshot::{ClusterSnapshot, ObjectStore, Publisher};

/// A problem with one file or one document in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// The document's index in the file (0-based) and, inside a `List`, the item's index.
    pub document: Option<(usize, Option<usize>)>,
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match self.document {
            Some((d, Some(i))) => write!(f, " document {d} item {i}")?,
            Some((d, None)) => write!(f, " document {d}")?,
            None => {}
        }
        write!(f, ": {}", self.reason)
    }
}

/// Errors that stop the source from starting.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("manifests directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("manifests directory {0}: not a directory")]
    NotADir(PathBuf),
    #[error("watching manifests directory {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// What one file yielded.
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Object>,
    pub errors: Vec<ManifestError>,
    /// True when the file as a whole could not be read or parsed: no object came from it.
    pub unreadable: bool,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn yaml_options() -> serde_saphyr::Options {
    // Generated clusters put thousands of objects in one file; the defaults (1024 documents,
    // 250k nodes) are sized for config files. Depth and alias limits stay as they are.
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 10_000_000,
            max_nodes: 200_000_000,
            max_events: 400_000_000,
        },
    }
}

/// Parses the text of one manifest file, keeping what DNS reads. `file` is only used in error
/// messages.
pub fn parse_manifest(file: &Path, text: &str) -> Parsed {
    parse_manifest_with(file, text, Fields::default())
}

/// [`parse_manifest`], keeping `fields` as well.
pub fn parse_manifest_with(file: &Path, text: &str, fields: Fields) -> Parsed {
    let err = |document, reason: String| ManifestError {
        file: file.to_path_buf(),
        document,
        reason,
    };
    let docs: Result<Vec<Value>, String> = if file.extension().is_some_and(|e| e == "json") {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid JSON: {e}"))
    } else {
        serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options())
            .map_err(|e| format!("invalid YAML: {e}"))
    };
    let docs = match docs {
        Ok(d) => d,
        Err(reason) => {
            return Parsed {
                objects: vec![],
                errors: vec![err(None, reason)],
                unreadable: true,
            };
        }
    };

    let mut out = Parsed::default();
    for (d, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        let is_list = kind == "List" || (kind.ends_with("List") && doc.get("items").is_some());
        if is_list {
            let Some(items) = doc.get("items").and_then(Value::as_array) else {
                out.errors.push(err(
                    Some((d, None)),
                    format!("{kind} without an items array"),
                ));
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                match convert_value(item.clone(), list_item_kind(kind), fields) {
                    Ok(Some(obj)) => out.objects.push(obj),
                    Ok(None) => {}
                    Err(reason) => out.errors.push(err(Some((d, Some(i))), reason)),
                }
            }
        } else {
            match convert_value(doc, None, fields) {
                Ok(Some(obj)) => out.objects.push(obj),
                Ok(None) => {}
                Err(reason) => out.errors.push(err(Some((d, None)), reason)),
            }
        }
    }
    out
}

/// `ServiceList` items may omit their own kind and apiVersion.
fn list_item_kind(list_kind: &str) -> Option<(&'static str, &'static str)> {
    match list_kind {
        "NamespaceList" => Some(("v1", "Namespace")),
        "ServiceList" => Some(("v1", "Service")),
        "EndpointSliceList" => Some(("discovery.k8s.io/v1", "EndpointSlice")),
        "PodList" => Some(("v1", "Pod")),
        "NodeList" => Some(("v1", "Node")),
        "NetworkPolicyList" => Some(("networking.k8s.io/v1", "NetworkPolicy")),
        "AdminNetworkPolicyList" => Some((POLICY_API, "AdminNetworkPolicy")),
        "BaselineAdminNetworkPolicyList" => Some((POLICY_API, "BaselineAdminNetworkPolicy")),
        _ => None,
    }
}

/// Converts one document. `Ok(None)` for kinds the model does not use.
fn convert_value(
    mut doc: Value,
    default_kind: Option<(&'static str, &'static str)>,
    fields: Fields,
) -> Result<Option<Object>, String> {
    let Some(map) = doc.as_object_mut() else {
        return Err("not a Kubernetes object (expected a mapping with apiVersion and kind)".into());
    };
    if let Some((api, kind)) = default_kind {
        map.entry("apiVersion").or_insert_with(|| api.into());
        map.entry("kind").or_insert_with(|| kind.into());
    }
    let api = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind.is_empty() {
        return Err("no kind".into());
    }
    fn typed<T: serde::de::DeserializeOwned>(doc: Value, kind: &str) -> Result<T, String> {
        serde_json::from_value(doc).map_err(|e| format!("{kind}: {e}"))
    }
    let obj = match (api.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(
            Namespace::convert(&typed::<core::Namespace>(doc, &kind)?, fields)
                .map_err(|e| e.to_string())?,
        ),
        ("v1", "Service") => Object::Service(
            Service::convert(&typed::<core::Service>(doc, &kind)?, fields)
                .map_err(|e| e.to_string())?,
        ),
        ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(
            EndpointSlice::convert(&typed::<disc::EndpointSlice>(doc, &kind)?, fields)
                .map_err(|e| e.to_string())?,
        ),
        ("v1", "Pod") => Object::Pod(
            Pod::convert(&typed::<core::Pod>(doc, &kind)?, fields).map_err(|e| e.to_string())?,
        ),
        (_, "Namespace" | "Service" | "EndpointSlice" | "Pod") => {
            return Err(format!("{kind} with unsupported apiVersion {api:?}"));
        }
        ("networking.k8s.io/v1", "NetworkPolicy") if fields.policy => Object::NetworkPolicy(
            NetworkPolicy::convert(&typed::<k8s_openapi::api::networking::v1::NetworkPolicy>(
                doc, &kind,
            )?)
            .map_err(|e| e.to_string())?,
        ),
        (POLICY_API, "AdminNetworkPolicy") if fields.policy => {
            Object::AdminNetworkPolicy(AdminPolicy::convert(doc, false).map_err(|e| e.to_string())?)
        }
        (POLICY_API, "BaselineAdminNetworkPolicy") if fields.policy => {
            Object::BaselineAdminNetworkPolicy(
                AdminPolicy::convert(doc, true).map_err(|e| e.to_string())?,
            )
        }
        ("v1", "Node") if fields.policy => Object::Node(
            Node::convert(&typed::<core::Node>(doc, &kind)?).map_err(|e| e.to_string())?,
        ),
        (_, "NetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" | "Node")
            if fields.policy =>
        {
            return Err(format!("{kind} with unsupported apiVersion {api:?}"));
        }
        _ => {
            tracing::debug!(%api, %kind, "ignoring object of a kind DNS does not use");
            return Ok(None);
        }
    };
    Ok(Some(obj))
}

#[derive(Debug)]
struct FileState {
    hash: u64,
    /// The file's objects, shared (`Arc`) with every store [`ManifestsDir::objects`] makes.
    objects: ObjectStore,
}

/// What a scan changed.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// True when the set of served objects may have changed.
    pub changed: bool,
    /// Problems found in the files that were (re)read by this scan.
    pub errors: Vec<ManifestError>,
    /// Files (re)read.
    pub files_read: usize,
}

/// The current contents of a manifests directory.
#[derive(Debug)]
pub struct ManifestsDir {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    fields: Fields,
}

impl ManifestsDir {
    /// Checks that `root` is a readable directory; reads nothing yet.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, SourceError> {
        let root = root.into();
        let meta = std::fs::metadata(&root).map_err(|source| SourceError::Dir {
            path: root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(SourceError::NotADir(root));
        }
        std::fs::read_dir(&root).map_err(|source| SourceError::Dir {
            path: root.clone(),
            source,
        })?;
        Ok(Self {
            root,
            files: BTreeMap::new(),
            fields: Fields::default(),
        })
    }

    /// Keeps `fields` as well as what DNS reads, from the next scan on.
    pub fn with_fields(mut self, fields: Fields) -> Self {
        self.fields = fields;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lists the directory, rereads files whose bytes changed, and forgets removed files.
    pub fn scan(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let mut found = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    // An unreadable subdirectory: keep what we had from it.
                    report.errors.push(ManifestError {
                        file: dir.clone(),
                        document: None,
                        reason: e.to_string(),
                    });
                    found.extend(self.files.keys().filter(|p| p.starts_with(&dir)).cloned());
                    continue;
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                // metadata() follows symlinks, so ConfigMap-style links to files count.
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => stack.push(path),
                    Ok(m) if m.is_file() && is_manifest(&path) => found.push(path),
                    _ => {}
                }
            }
        }
        found.sort();
        found.dedup();

        let before = self.files.len();
        self.files.retain(|p, _| found.binary_search(p).is_ok());
        report.changed |= self.files.len() != before;

        for path in found {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        report.errors.push(ManifestError {
                            file: path.clone(),
                            document: None,
                            reason: e.to_string(),
                        });
                    } else if self.files.remove(&path).is_some() {
                        report.changed = true;
                    }
                    continue;
                }
            };
            let mut h = DefaultHasher::new();
            bytes.hash(&mut h);
            let hash = h.finish();
            if self.files.get(&path).is_some_and(|f| f.hash == hash) {
                continue;
            }
            report.files_read += 1;
            let parsed = match std::str::from_utf8(&bytes) {
                Ok(text) => parse_manifest_with(&path, text, self.fields),
                Err(e) => Parsed {
                    objects: vec![],
                    errors: vec![ManifestError {
                        file: path.clone(),
                        document: None,
                        reason: format!("not UTF-8: {e}"),
                    }],
                    unreadable: true,
                },
            };
            let mut fresh = ObjectStore::default();
            for obj in parsed.objects {
                fresh.insert(obj);
            }
            let objects = match (self.files.remove(&path), parsed.errors.is_empty()) {
                (_, true) | (None, false) => fresh,
                (Some(old), false) if parsed.unreadable => old.objects,
                (Some(old), false) => {
                    // Keep the old version of every object the broken file no longer yields.
                    fresh.keep_missing(old.objects);
                    fresh
                }
            };
            report.errors.extend(parsed.errors);
            self.files.insert(path, FileState { hash, objects });
            report.changed = true;
        }
        report
    }

    /// Every object of every file, in path order; a later file's object wins over an earlier
    /// one with the same identity (a warning names both).
    pub fn objects(&self) -> ObjectStore {
        let mut store = ObjectStore::default();
        let mut origin: BTreeMap<(&'static str, &str, &str), &Path> = BTreeMap::new();
        for (path, state) in &self.files {
            state.objects.for_each_identity(|kind, ns, name| {
                if let Some(first) = origin.insert((kind, ns, name), path) {
                    tracing::warn!(
                        kind,
                        object = %format_args!("{ns}/{name}"),
                        first = %first.display(),
                        second = %path.display(),
                        "object defined twice; the second file wins"
                    );
                }
            });
            store.share_all(&state.objects);
        }
        store
    }
}

/// Tuning for [`watch_dir`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How long a burst of file events is coalesced before the directory is rescanned.
    pub debounce: Duration,
    /// A full rescan this often, for filesystems whose events do not arrive.
    pub rescan: Duration,
    /// What to keep beyond what DNS reads.
    pub fields: Fields,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            rescan: Duration::from_secs(5),
            fields: Fields::default(),
        }
    }
}

fn log_report(report: &ScanReport) {
    for e in &report.errors {
        tracing::warn!(error = %e, "bad manifest skipped; the objects it had are kept");
    }
}

/// Reads `root` once, publishes the first (synced) snapshot, then keeps watching it and
/// publishing a new snapshot after every change, until every receiver is gone.
///
/// Must be called inside a tokio runtime. Errors only when the directory cannot be used at all;
/// problems in files are logged and never stop the source.
pub fn watch_dir(
    root: impl Into<PathBuf>,
    opts: WatchOptions,
) -> Result<watch::Receiver<Arc<ClusterSnapshot>>, SourceError> {
    use notify::Watcher;

    let mut dir = ManifestsDir::open(root)?.with_fields(opts.fields);
    let (publisher, rx) = Publisher::new();

    // Start watching before the first scan so no change slips between the two.
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
        {
            // A full channel already holds a wake-up: that is enough.
            let _ = ev_tx.try_send(());
        }
    })
    .map_err(|source| SourceError::Watch {
        path: dir.root().to_path_buf(),
        source,
    })?;
    watcher
        .watch(dir.root(), notify::RecursiveMode::Recursive)
        .map_err(|source| SourceError::Watch {
            path: dir.root().to_path_buf(),
            source,
        })?;

    let report = dir.scan();
    log_report(&report);
    let store = dir.objects();
    tracing::info!(
        dir = %dir.root().display(),
        files = report.files_read,
        objects = store.len(),
        errors = report.errors.len(),
        "manifests loaded"
    );
    publisher.publish(store, true);

    tokio::spawn(async move {
        let _watcher = watcher; // dropped (and the inotify watch closed) with this task
        let mut rescan = tokio::time::interval(opts.rescan);
        rescan.tick().await;
        loop {
            tokio::select! {
                ev = ev_rx.recv() => {
                    if ev.is_none() { break; }
                    // Coalesce the rest of the burst.
                    tokio::time::sleep(opts.debounce).await;
                    while ev_rx.try_recv().is_ok() {}
                }
                _ = rescan.tick() => {}
                _ = publisher.closed() => break,
            }
            let root = dir.root().to_path_buf();
            let (d, report) = match tokio::task::spawn_blocking(move || {
                let r = dir.scan();
                (dir, r)
            })
            .await
            {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(dir = %root.display(), error = %e, "manifests scan task failed; stopping the watch");
                    break;
                }
            };
            dir = d;
            log_report(&report);
            if report.changed {
                let store = dir.objects();
                let snap = publisher.publish(store, true);
                tracing::info!(
                    generation = snap.generation,
                    files = report.files_read,
                    objects = snap.objects.len(),
                    "manifests changed"
                );
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Parsed {
        parse_manifest(Path::new("x.yaml"), text)
    }

    #[test]
    fn multi_document_yaml_lists_and_unknown_kinds() {
        let out = p(r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: a}
  spec: {clusterIP: 10.0.0.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: a}
  status: {podIP: 10.1.0.1}
"#);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let kinds: Vec<_> = out.objects.iter().map(Object::kind).collect();
        assert_eq!(kinds, ["Namespace", "Service", "Pod"]);
    }

    #[test]
    fn typed_list_items_may_omit_kind() {
        let out = parse_manifest(
            Path::new("x.json"),
            r#"{"apiVersion":"v1","kind":"ServiceList","items":[{"metadata":{"name":"a"},"spec":{"clusterIP":"None"}}]}"#,
        );
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.objects.len(), 1);
    }

    #[test]
    fn a_bad_document_is_reported_and_the_rest_kept() {
        let out = p(r#"
apiVersion: v1
kind: Service
metadata: {name: good}
---
apiVersion: v1
kind: Service
metadata: {name: bad}
spec: {clusterIP: not-an-ip}
---
apiVersion: v1
kind: Service
metadata: {name: alsogood}
spec: {ports: "eighty"}
"#);
        assert_eq!(out.objects.len(), 1);
        assert_eq!(out.errors.len(), 2);
        assert_eq!(
            out.errors[0].to_string(),
            "x.yaml document 1: Service default/bad: spec.clusterIPs[0] \"not-an-ip\" is not an IP address"
        );
        assert!(
            out.errors[1]
                .to_string()
                .starts_with("x.yaml document 2: Service: "),
            "{}",
            out.errors[1]
        );
        assert!(!out.unreadable);
    }

    #[test]
    fn syntax_errors_make_the_file_unreadable() {
        let out = p("kind: Service\nmetadata: {name: [unclosed\n");
        assert!(out.unreadable);
        assert!(
            out.errors[0].reason.starts_with("invalid YAML"),
            "{}",
            out.errors[0]
        );
    }

    #[test]
    fn scan_keeps_last_good_objects_of_broken_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("a.yaml");
        let svc = |name: &str, ip: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}}}\n"
            )
        };
        std::fs::write(
            &f,
            format!("{}---\n{}", svc("one", "10.0.0.1"), svc("two", "10.0.0.2")),
        )
        .expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), svc("hidden", "10.0.0.9")).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").expect("write");
        let mut m = ManifestsDir::open(dir.path()).expect("open");
        let r = m.scan();
        assert!(r.changed && r.errors.is_empty());
        assert_eq!(m.objects().services.len(), 2);

        // Unchanged bytes: nothing reread.
        assert_eq!(m.scan().files_read, 0);

        // Break one object: the other changes, the broken one keeps its old version.
        std::fs::write(
            &f,
            format!("{}---\n{}", svc("one", "10.0.0.11"), svc("two", "bogus")),
        )
        .expect("write");
        let r = m.scan();
        assert_eq!(r.errors.len(), 1);
        let s = m.objects().services;
        let ip = |n: &str| {
            s.values()
                .find(|x| x.name == n)
                .map(|x| x.cluster_ips[0].to_string())
        };
        assert_eq!(ip("one").as_deref(), Some("10.0.0.11"));
        assert_eq!(ip("two").as_deref(), Some("10.0.0.2"));

        // Unparseable file: everything from its last read stays.
        std::fs::write(&f, "{{{{").expect("write");
        assert_eq!(m.scan().errors.len(), 1);
        assert_eq!(m.objects().services.len(), 2);

        // Fixed, with one object removed: taken exactly as written.
        std::fs::write(&f, svc("one", "10.0.0.1")).expect("write");
        assert!(m.scan().errors.is_empty());
        assert_eq!(m.objects().services.len(), 1);

        // Removed file: its objects go.
        std::fs::remove_file(&f).expect("rm");
        assert!(m.scan().changed);
        assert!(m.objects().is_empty());
    }

    #[test]
    fn open_errors_name_the_path() {
        let e = ManifestsDir::open("/nonexistent/clusterdns").expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("manifests directory /nonexistent/clusterdns:"),
            "{e}"
        );
        let f = tempfile::NamedTempFile::new().expect("tmp");
        let e = ManifestsDir::open(f.path()).expect_err("file");
        assert!(e.to_string().ends_with("not a directory"), "{e}");
    }
}
