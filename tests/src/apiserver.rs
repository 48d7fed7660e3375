//! A Kubernetes API server double: the real list/watch protocol over HTTP/1.1, for the real
//! `kube::Client`, with a handle to change objects and inject faults.
//!
//! What it speaks (what kube-runtime's watcher uses):
//! - lists of namespaces, services, pods (core/v1) and endpointslices (discovery.k8s.io/v1),
//!   cluster-wide and per namespace, with `resourceVersion`, `limit` and `continue`;
//! - `?watch=true&resourceVersion=N` streams of `ADDED`/`MODIFIED`/`DELETED` events as JSON
//!   lines, replayed from the history after N, then live; periodic `BOOKMARK`s when asked;
//!   `timeoutSeconds`;
//! - `410 Gone`: as an `ERROR` event with a Status of code 410 (reason `Expired`) when a watch
//!   starts before the retained history, and as an HTTP 410 on a list whose `continue` token has
//!   expired or when a test asks for it.
//!
//! Faults: dropped connections, a restart that loses the watch history (resumes then get 410),
//! slow lists, failing lists (HTTP 500) and expired lists (HTTP 410).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

/// The resources the double serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Namespaces,
    Services,
    EndpointSlices,
    Pods,
    Nodes,
    NetworkPolicies,
    AdminNetworkPolicies,
    BaselineAdminNetworkPolicies,
}

impl Res {
    fn of_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Namespace" => Self::Namespaces,
            "Service" => Self::Services,
            "EndpointSlice" => Self::EndpointSlices,
            "Pod" => Self::Pods,
            "Node" => Self::Nodes,
            "NetworkPolicy" => Self::NetworkPolicies,
            "AdminNetworkPolicy" => Self::AdminNetworkPolicies,
            "BaselineAdminNetworkPolicy" => Self::BaselineAdminNetworkPolicies,
            _ => return None,
        })
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Namespaces => "Namespace",
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::Pods => "Pod",
            Self::Nodes => "Node",
            Self::NetworkPolicies => "NetworkPolicy",
            Self::AdminNetworkPolicies => "AdminNetworkPolicy",
            Self::BaselineAdminNetworkPolicies => "BaselineAdminNetworkPolicy",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::EndpointSlices => "discovery.k8s.io/v1",
            Self::NetworkPolicies => "networking.k8s.io/v1",
            Self::AdminNetworkPolicies | Self::BaselineAdminNetworkPolicies => {
                "policy.networking.k8s.io/v1alpha1"
            }
            _ => "v1",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(
            self,
            Self::Namespaces
                | Self::Nodes
                | Self::AdminNetworkPolicies
                | Self::BaselineAdminNetworkPolicies
        )
    }
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    res: Res,
    namespace: String,
    type_: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Faults {
    list_delay: Option<Duration>,
    fail_lists: u32,
    expire_lists: BTreeMap<Res, u32>,
    /// Close every new connection at once (the server is "down").
    down: bool,
    /// Resources answered with 404, as when their CRD is not installed.
    missing: std::collections::BTreeSet<Res>,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<(Res, String, String), Value>,
    history: Vec<Event>,
    /// Watches from before this resourceVersion get 410 Gone.
    oldest: u64,
    faults: Faults,
    lists: BTreeMap<Res, u32>,
    watches: BTreeMap<Res, u32>,
}

#[derive(Debug)]
struct State {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    /// Bumped to end every open watch stream.
    kill: broadcast::Sender<()>,
    bookmark_every: Duration,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running double. Dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<State>,
    conns: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// `(resource, namespace)` of a request path.
fn route(path: &str) -> Option<(Res, Option<String>)> {
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    let res = |s: &str| match s {
        "namespaces" => Some(Res::Namespaces),
        "services" => Some(Res::Services),
        "pods" => Some(Res::Pods),
        "endpointslices" => Some(Res::EndpointSlices),
        "nodes" => Some(Res::Nodes),
        _ => None,
    };
    match p.as_slice() {
        ["api", "v1", r] => res(r)
            .filter(|r| *r != Res::EndpointSlices)
            .map(|r| (r, None)),
        ["apis", "networking.k8s.io", "v1", "networkpolicies"] => {
            Some((Res::NetworkPolicies, None))
        }
        [
            "apis",
            "networking.k8s.io",
            "v1",
            "namespaces",
            ns,
            "networkpolicies",
        ] => Some((Res::NetworkPolicies, Some(ns.to_string()))),
        [
            "apis",
            "policy.networking.k8s.io",
            "v1alpha1",
            "adminnetworkpolicies",
        ] => Some((Res::AdminNetworkPolicies, None)),
        [
            "apis",
            "policy.networking.k8s.io",
            "v1alpha1",
            "baselineadminnetworkpolicies",
        ] => Some((Res::BaselineAdminNetworkPolicies, None)),
        ["api", "v1", "namespaces", ns, r] => res(r)
            .filter(|r| matches!(r, Res::Services | Res::Pods))
            .map(|r| (r, Some(ns.to_string()))),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => Some((Res::EndpointSlices, None)),
        [
            "apis",
            "discovery.k8s.io",
            "v1",
            "namespaces",
            ns,
            "endpointslices",
        ] => Some((Res::EndpointSlices, Some(ns.to_string()))),
        _ => None,
    }
}

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect()
}

async fn serve(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some((res, ns)) = route(req.uri().path()) else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "no such path"),
        ));
    };
    if state.lock().faults.missing.contains(&res) {
        return Ok(full(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ));
    }
    let q = query(req.uri());
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return Ok(watch(state, res, ns, &q));
    }
    Ok(list(&state, res, ns, &q).await)
}

async fn list(
    state: &State,
    res: Res,
    ns: Option<String>,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let delay = {
        let mut i = state.lock();
        *i.lists.entry(res).or_default() += 1;
        i.faults.list_delay
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut i = state.lock();
    if i.faults.fail_lists > 0 {
        i.faults.fail_lists -= 1;
        return full(
            StatusCode::INTERNAL_SERVER_ERROR,
            &status(500, "InternalError", "injected list failure"),
        );
    }
    if let Some(n) = i.faults.expire_lists.get_mut(&res).filter(|n| **n > 0) {
        *n -= 1;
        return full(
            StatusCode::GONE,
            &status(410, "Expired", "injected: the resourceVersion is too old"),
        );
    }
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let (list_rv, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let Some((rv, off)) = c
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)))
            else {
                return full(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "bad continue token"),
                );
            };
            if rv < i.oldest {
                return full(
                    StatusCode::GONE,
                    &status(410, "Expired", "the continue token has expired"),
                );
            }
            (rv, off)
        }
        None => (i.rv, 0),
    };
    let items: Vec<Value> = i
        .objects
        .iter()
        .filter(|((r, n, _), _)| *r == res && ns.as_ref().is_none_or(|ns| ns == n))
        .map(|(_, v)| v.clone())
        .skip(offset)
        .take(limit.saturating_add(1))
        .collect();
    let more = items.len() > limit;
    let items: Vec<Value> = items.into_iter().take(limit).collect();
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if more {
        meta["continue"] = json!(format!("{list_rv}-{}", offset + limit));
    }
    full(
        StatusCode::OK,
        &json!({"kind": format!("{}List", res.kind()), "apiVersion": res.api_version(), "metadata": meta, "items": items}),
    )
}

fn watch(
    state: Arc<State>,
    res: Res,
    ns: Option<String>,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut live = state.events.subscribe();
    let mut kill = state.kill.subscribe();
    let (backlog, expired, oldest) = {
        let mut i = state.lock();
        *i.watches.entry(res).or_default() += 1;
        let expired = from < i.oldest;
        let backlog: Vec<Event> = if expired {
            Vec::new()
        } else {
            i.history
                .iter()
                .filter(|e| e.rv > from && e.res == res)
                .cloned()
                .collect()
        };
        (backlog, expired, i.oldest)
    };
    let line = |v: &Value| Bytes::from(format!("{v}\n"));
    tokio::spawn(async move {
        if expired {
            let msg = format!("too old resource version: {from} ({oldest})");
            let _ = tx
                .send(line(
                    &json!({"type": "ERROR", "object": status(410, "Expired", &msg)}),
                ))
                .await;
            return;
        }
        let matches = |e: &Event| e.res == res && ns.as_ref().is_none_or(|n| *n == e.namespace);
        let mut last = from;
        for e in backlog.iter().filter(|e| matches(e)) {
            last = e.rv;
            if tx
                .send(line(&json!({"type": e.type_, "object": e.object})))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(state.bookmark_every);
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(e) if e.rv > last && matches(&e) => {
                        last = e.rv;
                        if tx.send(line(&json!({"type": e.type_, "object": e.object}))).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    Err(_) => return, // lagged or closed: the client re-watches
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = state.lock().rv.max(last);
                    let b = json!({"type": "BOOKMARK", "object": {"kind": res.kind(), "apiVersion": res.api_version(), "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(line(&b)).await.is_err() { return; }
                }
                _ = &mut deadline => return,
                _ = kill.recv() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

impl ApiServer {
    /// Starts a double on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                rv: 1,
                oldest: 0,
                ..Inner::default()
            }),
            events: broadcast::channel(65536).0,
            kill: broadcast::channel(16).0,
            bookmark_every: Duration::from_millis(500),
        });
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (st, cs) = (Arc::clone(&state), Arc::clone(&conns));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if st.lock().faults.down {
                    drop(stream);
                    continue;
                }
                let st = Arc::clone(&st);
                let svc = hyper::service::service_fn(move |req| serve(Arc::clone(&st), req));
                cs.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    });
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            addr,
            state,
            conns,
            accept,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for the real client: plain HTTP, a bearer token, and a CA entry (kube's
    /// rustls connector wants one even for http://, see shared/docs/kube-notes.md).
    pub fn kubeconfig(&self) -> PathBuf {
        use base64::Engine as _;
        let ca =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("test CA");
        let ca = base64::engine::general_purpose::STANDARD.encode(ca.cert.pem());
        let path = self.dir.path().join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: http://{}\n    certificate-authority-data: {ca}\n\
             contexts:\n- name: double\n  context: {{cluster: double, user: test}}\ncurrent-context: double\n\
             users:\n- name: test\n  user: {{token: test-token}}\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates or replaces an object (a JSON object with kind and metadata).
    pub fn apply(&self, mut obj: Value) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let res = Res::of_kind(&kind)
            .unwrap_or_else(|| panic!("the double does not serve kind {kind:?}"));
        obj["apiVersion"] = json!(res.api_version());
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let ns = if res.namespaced() {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            obj["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        let mut i = self.state.lock();
        i.rv += 1;
        let rv = i.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{kind}-{ns}-{name}"));
        }
        let type_ = if i
            .objects
            .insert((res, ns.clone(), name), obj.clone())
            .is_some()
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let e = Event {
            rv,
            res,
            namespace: ns,
            type_,
            object: obj,
        };
        i.history.push(e.clone());
        drop(i);
        let _ = self.state.events.send(e);
    }

    /// Deletes an object; true if it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let res = Res::of_kind(kind).expect("known kind");
        let ns = if res.namespaced() { namespace } else { "" };
        let mut i = self.state.lock();
        let Some(mut obj) = i.objects.remove(&(res, ns.to_string(), name.to_string())) else {
            return false;
        };
        i.rv += 1;
        let rv = i.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let e = Event {
            rv,
            res,
            namespace: ns.to_string(),
            type_: "DELETED",
            object: obj,
        };
        i.history.push(e.clone());
        drop(i);
        let _ = self.state.events.send(e);
        true
    }

    /// Applies every object of every manifest under `dir` (YAML or JSON, `List`s expanded).
    pub fn load_dir(&self, dir: &Path) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "yaml" || e == "json"))
        {
            let text = std::fs::read_to_string(f).expect("read");
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("fixture parses");
            for doc in docs.into_iter().filter(|d| !d.is_null()) {
                let kind = doc["kind"].as_str().unwrap_or_default().to_string();
                match kind.strip_suffix("List") {
                    Some(item_kind) if doc["items"].is_array() => {
                        for mut item in doc["items"].as_array().cloned().unwrap_or_default() {
                            if item["kind"].is_null() {
                                item["kind"] = json!(item_kind);
                            }
                            self.apply(item);
                        }
                    }
                    _ => self.apply(doc),
                }
            }
        }
    }

    /// Ends every open watch stream and closes every connection, as a network cut would.
    pub fn drop_connections(&self) {
        let _ = self.state.kill.send(());
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
    }

    /// Forgets the watch history: resuming from any earlier resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut i = self.state.lock();
        i.oldest = i.rv + 1;
        i.history.clear();
    }

    /// An API server restart that loses its watch cache: connections cut, history gone.
    pub fn restart(&self) {
        self.compact();
        self.drop_connections();
    }

    /// While `down`, every new connection is closed at once.
    /// Answers `res` with 404, as when its CRD is not installed (or serves it again).
    pub fn set_missing(&self, res: Res, missing: bool) {
        let mut i = self.state.lock();
        if missing {
            i.faults.missing.insert(res);
        } else {
            i.faults.missing.remove(&res);
        }
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().faults.down = down;
        if down {
            self.drop_connections();
        }
    }

    /// Delay before every list is answered (`None` to stop).
    pub fn set_list_delay(&self, d: Option<Duration>) {
        self.state.lock().faults.list_delay = d;
    }

    /// The next `n` lists fail with HTTP 500.
    pub fn fail_next_lists(&self, n: u32) {
        self.state.lock().faults.fail_lists = n;
    }

    /// The next `n` lists of `res` fail with HTTP 410 Gone.
    pub fn expire_next_lists(&self, res: Res, n: u32) {
        self.state.lock().faults.expire_lists.insert(res, n);
    }

    /// How many lists of `res` were served (or failed) so far.
    pub fn lists(&self, res: Res) -> u32 {
        self.state.lock().lists.get(&res).copied().unwrap_or(0)
    }

    /// How many watches of `res` were started so far.
    pub fn watches(&self, res: Res) -> u32 {
        self.state.lock().watches.get(&res).copied().unwrap_or(0)
    }
}
