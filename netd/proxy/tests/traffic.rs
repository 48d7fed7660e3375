//! `netd-proxy` on a node made of network namespaces, with real TCP and UDP traffic.
//!
//! ```text
//!   outside (192.0.2.2, 2001:db8::2; routes 203.0.113.0/24 and 2001:db8:ff::/64 to the node)
//!      │ eth0 ─ up0
//!   node  (192.0.2.1, 2001:db8::1, default route via outside; bridge br0 10.244.0.1/24,
//!          fd00:244::1/64; runs netd-proxy)
//!      │ br0
//!   pod0 .10   pod1 .11   pod2 .12   client .20   (10.244.0.x, fd00:244::x)
//! ```
//!
//! Every pod but the client runs a [`Server`] on port 8080 (TCP and UDP) that answers with its
//! own address and the client address it saw, so each check knows which backend answered and
//! whether the client was masqueraded. Services are manifests in a directory the proxy
//! watches; endpoints say `nodeName: node-a` (this node) or `node-b` (another node).
//!
//! A check that waits for a change polls until the traffic shows it (no timing is asserted;
//! the deadline only bounds a failure). SCTP is planned like TCP and UDP but not checked here:
//! this kernel has no SCTP sockets.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use netd_testnet::{
    NODE_V4, NODE_V6, Ns, OUTSIDE_V4, OUTSIDE_V6, Outcome, Server, can_run, sh, tcp, udp,
};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const OTHER: &str = "node-b";
const BRIDGE_V4: &str = "10.244.0.1";
const PORT: u16 = 8080;
/// How long a check waits for an answer before calling the packets dropped.
const DROP: Duration = Duration::from_millis(700);
/// How long a change may take to show in the traffic before the test fails.
const CONVERGE: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

struct Pod {
    ns: Ns,
    v4: IpAddr,
    v6: IpAddr,
}

struct Cluster {
    proxy: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
    pods: Vec<Pod>,
    client: Pod,
    outside: Ns,
    node: Ns,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.proxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- netd-proxy log ---\n{log}");
        }
    }
}

fn add_pod(node: &Ns, n: usize, last: u8) -> Pod {
    let ns = Ns::new(&format!("pod{n}"));
    let host = format!("veth{n}");
    sh(&[
        "ip", "link", "add", &host, "netns", &node.name, "type", "veth", "peer", "name", "eth0",
        "netns", &ns.name,
    ]);
    node.sh(&["ip", "link", "set", &host, "master", "br0", "up"]);
    node.sh(&["bridge", "link", "set", "dev", &host, "hairpin", "on"]);
    let v4 = ip(&format!("10.244.0.{last}"));
    let v6 = ip(&format!("fd00:244::{last}"));
    ns.sh(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
    ns.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    ns.sh(&["ip", "link", "set", "eth0", "up"]);
    ns.sh(&["ip", "route", "add", "default", "via", BRIDGE_V4]);
    ns.sh(&["ip", "-6", "route", "add", "default", "via", "fd00:244::1"]);
    Pod { ns, v4, v6 }
}

impl Cluster {
    /// The hosts, three backend pods serving on 8080, a client pod, and the proxy running on
    /// an empty manifests directory (plus `extra` flags).
    fn new(extra: &[&str]) -> Cluster {
        let node = Ns::new("node");
        let outside = Ns::new("out");
        netd_testnet::uplink(&node, &outside);
        // The node's default gateway is the outside host, as a real node's is its upstream
        // router. The outside host reaches external and load-balancer addresses through the
        // node, and has no route to the pods.
        node.sh(&["ip", "route", "add", "default", "via", OUTSIDE_V4]);
        node.sh(&["ip", "-6", "route", "add", "default", "via", OUTSIDE_V6]);
        outside.sh(&["ip", "route", "add", "203.0.113.0/24", "via", NODE_V4]);
        outside.sh(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:ff::/64",
            "via",
            NODE_V6,
        ]);
        node.sh(&["ip", "link", "add", "br0", "type", "bridge"]);
        node.sh(&["ip", "addr", "add", "10.244.0.1/24", "dev", "br0"]);
        node.sh(&["ip", "addr", "add", "fd00:244::1/64", "dev", "br0", "nodad"]);
        node.sh(&["ip", "link", "set", "br0", "up"]);
        let pods: Vec<Pod> = (0..3).map(|n| add_pod(&node, n, 10 + n as u8)).collect();
        for pod in &pods {
            Server::start(&pod.ns, pod.v4, PORT);
            Server::start(&pod.ns, pod.v6, PORT);
        }
        let client = add_pod(&node, 3, 20);
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("proxy.log");
        std::fs::create_dir(dir.path().join("manifests")).expect("manifests dir");
        let mut cluster = Cluster {
            proxy: None,
            dir,
            log,
            pods,
            client,
            outside,
            node,
        };
        cluster.start_proxy(extra);
        cluster
    }

    fn start_proxy(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let manifests = self.dir.path().join("manifests");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node.name])
            .arg(env!("CARGO_BIN_EXE_netd-proxy"))
            .arg("--manifests")
            .arg(&manifests)
            .args([
                "--node-name",
                NODE,
                "--node-ip",
                NODE_V4,
                "--node-ip",
                NODE_V6,
            ])
            .args([
                "--cluster-cidr",
                "10.244.0.0/16",
                "--cluster-cidr",
                "fd00:244::/48",
            ])
            .args(extra)
            .env("RUST_LOG", "debug,kube=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn netd-proxy");
        self.proxy = Some(child);
    }

    /// Writes service `name` (a ClusterIP service with `spec` merged in, one TCP port 80 named
    /// http) with one IPv4 slice of `endpoints` on 8080.
    fn serve(&self, name: &str, spec: Value, endpoints: Vec<Value>) {
        self.put(
            name,
            &[
                service(name, spec),
                slice(name, "IPv4", ("http", "TCP"), endpoints),
            ],
        );
    }

    /// The first answer from `vip:80` to the client pod, once the proxy has programmed it.
    fn answer(&self, vip: IpAddr) -> Outcome {
        eventually(
            &format!("{vip} answers"),
            || tcp(&self.client.ns, vip, 80, DROP),
            answered,
        )
    }

    /// Writes (or replaces) one manifest file; the proxy picks it up.
    fn put(&self, name: &str, objects: &[Value]) {
        let text: String = objects.iter().map(|o| format!("{o}\n")).collect();
        let path = self
            .dir
            .path()
            .join("manifests")
            .join(format!("{name}.json"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write manifest");
        std::fs::rename(&tmp, &path).expect("rename manifest");
    }

    fn pod(&self, n: usize) -> &Pod {
        &self.pods[n]
    }

    /// Sends SIGTERM and returns the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.proxy.take().expect("running");
        sh(&["kill", "-TERM", &child.id().to_string()]);
        child.wait().expect("wait netd-proxy")
    }

    fn tables(&self) -> String {
        self.node.sh(&["nft", "list", "tables"])
    }
}

/// A Service with `spec` (merged over a ClusterIP service with one TCP port 80 named http).
fn service(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    });
    merge(&mut base["spec"], spec);
    base
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// An endpoint of `pod` on `node`, ready unless `conditions` say otherwise.
fn endpoint(pod: &Pod, v6: bool, node: &str, conditions: Value) -> Value {
    let addr = if v6 { pod.v6 } else { pod.v4 };
    json!({"addresses": [addr.to_string()], "nodeName": node, "conditions": conditions})
}

/// An EndpointSlice of service `svc` with port `name`/`protocol` on 8080.
fn slice(svc: &str, family: &str, port: (&str, &str), endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-{}", family.to_lowercase()), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family,
        "ports": [{"name": port.0, "port": PORT, "protocol": port.1}],
        "endpoints": endpoints
    })
}

fn ready() -> Value {
    json!({"ready": true})
}

/// Polls `probe` until `done` holds for what it returns; panics with the last value after
/// [`CONVERGE`].
fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let value = probe();
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: still {value:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The servers that answered `n` TCP connections from `ns`, and the client addresses they saw.
fn spread(ns: &Ns, to: IpAddr, port: u16, n: usize) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let mut servers = BTreeSet::new();
    let mut clients = BTreeSet::new();
    for _ in 0..n {
        let outcome = tcp(ns, to, port, DROP);
        servers.insert(outcome.server());
        clients.insert(outcome.client());
    }
    (servers, clients)
}

/// `GET path` over HTTP/1.0 from `ns`: the status code and the body.
fn http_get(ns: &Ns, to: IpAddr, port: u16, path: &str) -> Result<(u16, String), String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {to}\r\n\r\n");
    netd_testnet::in_ns(ns.path(), move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(to, port),
            Duration::from_secs(2),
        )
        .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| e.to_string())?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line: {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })
    .join()
    .expect("http thread")
}

fn answered(o: &Outcome) -> bool {
    matches!(o, Outcome::Answered { .. })
}

macro_rules! netns_test {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { if can_run(&["/usr/sbin/bridge", "/usr/sbin/conntrack"]) { scenarios::$name() } })*
    };
}

netns_test!(
    cluster_ip_spreads_over_ready_endpoints_and_keeps_the_pod_address,
    udp_cluster_ip_and_dual_stack,
    refused_without_endpoints_and_on_ports_the_service_lacks,
    the_node_itself_reaches_cluster_ips,
    nodeport_external_and_load_balancer_ips_from_outside,
    external_traffic_policy_local,
    internal_traffic_policy_local,
    session_affinity_pins_a_client,
    terminating_serving_endpoints_are_used_when_none_is_ready,
    hairpin_a_pod_reaches_itself_through_its_service,
    load_balancer_source_ranges,
    updates_while_traffic_flows,
    udp_flows_move_off_a_removed_endpoint,
    udp_flows_move_off_an_endpoint_removed_while_the_proxy_was_down,
    sigterm_leaves_the_rules_and_never_touches_other_tables,
    cleanup_on_exit_removes_only_its_table,
    a_failed_transaction_is_repaired_by_a_full_rewrite,
    health_check_node_ports_and_healthz,
    a_deleted_table_is_rewritten_without_a_change,
);

mod scenarios {
    use super::*;

    pub fn cluster_ip_spreads_over_ready_endpoints_and_keeps_the_pod_address() {
        let c = Cluster::new(&[]);
        let eps = (0..3)
            .map(|n| endpoint(c.pod(n), false, NODE, ready()))
            .collect();
        c.serve("web", json!({}), eps);
        let vip = ip("10.96.0.10");
        c.answer(vip);
        let (servers, clients) = spread(&c.client.ns, vip, 80, 45);
        let all: BTreeSet<IpAddr> = c.pods.iter().map(|p| p.v4).collect();
        assert_eq!(servers, all, "every ready endpoint takes a share");
        assert_eq!(
            clients,
            BTreeSet::from([c.client.v4]),
            "pod-to-service traffic is not masqueraded"
        );
    }

    pub fn udp_cluster_ip_and_dual_stack() {
        let c = Cluster::new(&[]);
        let v4: Vec<Value> = (0..2)
            .map(|n| endpoint(c.pod(n), false, NODE, ready()))
            .collect();
        let v6: Vec<Value> = (0..2)
            .map(|n| endpoint(c.pod(n), true, NODE, ready()))
            .collect();
        c.put(
            "dns",
            &[
                service(
                    "dns",
                    json!({"clusterIPs": ["10.96.0.53", "fd00:96::53"], "clusterIP": "10.96.0.53",
                           "ipFamilies": ["IPv4", "IPv6"],
                           "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                     {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}),
                ),
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "dns-v4", "namespace": "shop",
                                 "labels": {"kubernetes.io/service-name": "dns"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "dns", "port": PORT, "protocol": "UDP"},
                              {"name": "dns-tcp", "port": PORT, "protocol": "TCP"}],
                    "endpoints": v4
                }),
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "dns-v6", "namespace": "shop",
                                 "labels": {"kubernetes.io/service-name": "dns"}},
                    "addressType": "IPv6",
                    "ports": [{"name": "dns", "port": PORT, "protocol": "UDP"},
                              {"name": "dns-tcp", "port": PORT, "protocol": "TCP"}],
                    "endpoints": v6
                }),
            ],
        );
        let (vip4, vip6) = (ip("10.96.0.53"), ip("fd00:96::53"));
        let backends4: BTreeSet<IpAddr> = [c.pod(0).v4, c.pod(1).v4].into();
        let backends6: BTreeSet<IpAddr> = [c.pod(0).v6, c.pod(1).v6].into();
        let u4 = eventually(
            "UDP over IPv4",
            || udp(&c.client.ns, vip4, 53, 0, DROP),
            answered,
        );
        assert!(backends4.contains(&u4.server()), "{u4:?}");
        assert_eq!(u4.client(), c.client.v4);
        let u6 = eventually(
            "UDP over IPv6",
            || udp(&c.client.ns, vip6, 53, 0, DROP),
            answered,
        );
        assert!(backends6.contains(&u6.server()), "{u6:?}");
        assert_eq!(u6.client(), c.client.v6);
        let (servers, clients) = spread(&c.client.ns, vip6, 53, 30);
        assert_eq!(
            servers, backends6,
            "TCP over IPv6 spreads over the IPv6 endpoints"
        );
        assert_eq!(clients, BTreeSet::from([c.client.v6]));
    }

    pub fn refused_without_endpoints_and_on_ports_the_service_lacks() {
        let c = Cluster::new(&[]);
        c.serve(
            "empty",
            json!({"clusterIP": "10.96.0.20",
                           "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                     {"name": "q", "port": 5000, "protocol": "UDP"}]}),
            vec![],
        );
        c.serve(
            "web",
            json!({}),
            vec![endpoint(c.pod(0), false, NODE, ready())],
        );
        let web = ip("10.96.0.10");
        c.answer(web);
        let empty = ip("10.96.0.20");
        let t = eventually(
            "no endpoints: TCP refused",
            || tcp(&c.client.ns, empty, 80, DROP),
            |o| *o == Outcome::Refused,
        );
        assert_eq!(t, Outcome::Refused);
        assert_eq!(udp(&c.client.ns, empty, 5000, 0, DROP), Outcome::Refused);
        assert_eq!(
            tcp(&c.client.ns, web, 81, DROP),
            Outcome::Refused,
            "a cluster IP on a port the service does not define is refused"
        );
        assert_eq!(
            tcp(&c.node, web, 81, DROP),
            Outcome::Refused,
            "from the node too"
        );
    }

    pub fn the_node_itself_reaches_cluster_ips() {
        let c = Cluster::new(&[]);
        c.serve(
            "web",
            json!({}),
            vec![endpoint(c.pod(1), false, NODE, ready())],
        );
        let o = eventually(
            "node to web",
            || tcp(&c.node, ip("10.96.0.10"), 80, DROP),
            answered,
        );
        assert_eq!(o.server(), c.pod(1).v4);
    }

    pub fn nodeport_external_and_load_balancer_ips_from_outside() {
        let c = Cluster::new(&[]);
        let v4 = vec![endpoint(c.pod(0), false, OTHER, ready())];
        let v6 = vec![endpoint(c.pod(0), true, OTHER, ready())];
        let mut svc = service(
            "lb",
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.0.30", "fd00:96::30"],
                   "clusterIP": "10.96.0.30", "ipFamilies": ["IPv4", "IPv6"],
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
                   "externalIPs": ["203.0.113.7", "2001:db8:ff::7"]}),
        );
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}});
        c.put(
            "lb",
            &[
                svc,
                slice("lb", "IPv4", ("http", "TCP"), v4),
                slice("lb", "IPv6", ("http", "TCP"), v6),
            ],
        );
        for (to, port) in [
            (NODE_V4, 30080),
            (NODE_V6, 30080),
            ("203.0.113.7", 80),
            ("2001:db8:ff::7", 80),
            ("203.0.113.9", 80),
        ] {
            let o = eventually(
                &format!("outside to {to}:{port}"),
                || tcp(&c.outside, ip(to), port, DROP),
                answered,
            );
            let pod = c.pod(0);
            let (server, node_side) = if ip(to).is_ipv4() {
                (pod.v4, ip(BRIDGE_V4))
            } else {
                (pod.v6, ip("fd00:244::1"))
            };
            assert_eq!(o.server(), server, "{to}:{port}");
            assert_eq!(
                o.client(),
                node_side,
                "{to}:{port}: under the Cluster policy outside clients are masqueraded to the node"
            );
        }
        // The pod network and the node itself reach the NodePort and the external IP as well.
        for (from, to, port) in [
            (&c.client.ns, NODE_V4, 30080),
            (&c.client.ns, "203.0.113.7", 80),
            (&c.node, NODE_V4, 30080),
            (&c.node, "203.0.113.9", 80),
        ] {
            let o = tcp(from, ip(to), port, DROP);
            assert_eq!(o.server(), c.pod(0).v4, "{} to {to}:{port}", from.name);
        }
    }

    pub fn external_traffic_policy_local() {
        let c = Cluster::new(&[]);
        let spec = json!({"type": "NodePort", "clusterIP": "10.96.0.40", "externalTrafficPolicy": "Local",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30081}],
                   "externalIPs": ["203.0.113.8"]});
        let both = vec![
            endpoint(c.pod(0), false, NODE, ready()),
            endpoint(c.pod(1), false, OTHER, ready()),
        ];
        c.serve("local", spec.clone(), both);
        for (to, port) in [(NODE_V4, 30081), ("203.0.113.8", 80)] {
            eventually(
                "the NodePort answers",
                || tcp(&c.outside, ip(to), port, DROP),
                answered,
            );
            let (servers, clients) = spread(&c.outside, ip(to), port, 20);
            assert_eq!(
                servers,
                BTreeSet::from([c.pod(0).v4]),
                "{to}: only the local endpoint"
            );
            assert_eq!(
                clients,
                BTreeSet::from([ip(OUTSIDE_V4)]),
                "{to}: the client address is kept"
            );
        }
        // Pods still reach every endpoint through the cluster IP.
        let (servers, _) = spread(&c.client.ns, ip("10.96.0.40"), 80, 30);
        assert_eq!(servers, [c.pod(0).v4, c.pod(1).v4].into());

        // Only a remote endpoint left: outside traffic is dropped, not refused.
        c.serve(
            "local",
            spec,
            vec![endpoint(c.pod(1), false, OTHER, ready())],
        );
        eventually(
            "no local endpoint: dropped",
            || tcp(&c.outside, ip(NODE_V4), 30081, DROP),
            |o| *o == Outcome::TimedOut,
        );
        assert_eq!(
            tcp(&c.outside, ip("203.0.113.8"), 80, DROP),
            Outcome::TimedOut
        );
        let o = tcp(&c.client.ns, ip("10.96.0.40"), 80, DROP);
        assert_eq!(
            o.server(),
            c.pod(1).v4,
            "pods still reach the remote endpoint"
        );
    }

    pub fn internal_traffic_policy_local() {
        let c = Cluster::new(&[]);
        let spec = json!({"clusterIP": "10.96.0.50", "internalTrafficPolicy": "Local"});
        let both = vec![
            endpoint(c.pod(0), false, OTHER, ready()),
            endpoint(c.pod(2), false, NODE, ready()),
        ];
        c.serve("near", spec.clone(), both);
        let vip = ip("10.96.0.50");
        c.answer(vip);
        let (servers, _) = spread(&c.client.ns, vip, 80, 20);
        assert_eq!(
            servers,
            BTreeSet::from([c.pod(2).v4]),
            "only this node's endpoint"
        );
        c.serve(
            "near",
            spec,
            vec![endpoint(c.pod(0), false, OTHER, ready())],
        );
        eventually(
            "no local endpoint: dropped",
            || tcp(&c.client.ns, vip, 80, DROP),
            |o| *o == Outcome::TimedOut,
        );
    }

    pub fn session_affinity_pins_a_client() {
        let c = Cluster::new(&[]);
        let eps = (0..3)
            .map(|n| endpoint(c.pod(n), false, NODE, ready()))
            .collect();
        c.serve(
            "sticky",
            json!({"clusterIP": "10.96.0.60", "sessionAffinity": "ClientIP",
                           "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
            eps,
        );
        let vip = ip("10.96.0.60");
        c.answer(vip);
        let (servers, _) = spread(&c.client.ns, vip, 80, 20);
        assert_eq!(servers.len(), 1, "one client, one endpoint: {servers:?}");
        let (from_node, _) = spread(&c.node, vip, 80, 10);
        assert_eq!(
            from_node.len(),
            1,
            "the node is pinned as well: {from_node:?}"
        );
    }

    pub fn terminating_serving_endpoints_are_used_when_none_is_ready() {
        let c = Cluster::new(&[]);
        let draining = json!({"ready": false, "serving": true, "terminating": true});
        let gone = json!({"ready": false, "serving": false, "terminating": true});
        let spec = json!({"clusterIP": "10.96.0.70"});
        c.serve(
            "drain",
            spec.clone(),
            vec![
                endpoint(c.pod(0), false, NODE, draining.clone()),
                endpoint(c.pod(1), false, NODE, gone),
            ],
        );
        let vip = ip("10.96.0.70");
        c.answer(vip);
        let (servers, _) = spread(&c.client.ns, vip, 80, 20);
        assert_eq!(
            servers,
            BTreeSet::from([c.pod(0).v4]),
            "only the serving one"
        );
        // Once an endpoint is ready, the terminating one gets nothing.
        c.serve(
            "drain",
            spec,
            vec![
                endpoint(c.pod(0), false, NODE, draining),
                endpoint(c.pod(2), false, NODE, ready()),
            ],
        );
        eventually(
            "the ready endpoint takes over",
            || spread(&c.client.ns, vip, 80, 10).0,
            |s| *s == BTreeSet::from([c.pod(2).v4]),
        );
    }

    pub fn hairpin_a_pod_reaches_itself_through_its_service() {
        let c = Cluster::new(&[]);
        c.serve(
            "self",
            json!({"clusterIP": "10.96.0.80"}),
            vec![endpoint(c.pod(0), false, NODE, ready())],
        );
        let o = eventually(
            "pod0 reaches itself",
            || tcp(&c.pod(0).ns, ip("10.96.0.80"), 80, DROP),
            answered,
        );
        assert_eq!(o.server(), c.pod(0).v4);
        assert_eq!(
            o.client(),
            ip(BRIDGE_V4),
            "hairpin traffic is masqueraded so the reply returns through the node"
        );
    }

    pub fn load_balancer_source_ranges() {
        let c = Cluster::new(&[]);
        let lb = |ranges: Value| {
            let mut svc = service(
                "guarded",
                json!({"type": "LoadBalancer", "clusterIP": "10.96.0.90",
                       "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30090}],
                       "loadBalancerSourceRanges": ranges}),
            );
            svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
            svc
        };
        let eps = || {
            slice(
                "guarded",
                "IPv4",
                ("http", "TCP"),
                vec![endpoint(c.pod(1), false, NODE, ready())],
            )
        };
        let lb_ip = ip("203.0.113.10");
        c.put("guarded", &[lb(json!([format!("{OUTSIDE_V4}/32")])), eps()]);
        let o = eventually(
            "inside the range",
            || tcp(&c.outside, lb_ip, 80, DROP),
            answered,
        );
        assert_eq!(o.server(), c.pod(1).v4);
        c.put("guarded", &[lb(json!(["198.51.100.0/24"])), eps()]);
        eventually(
            "outside the range: dropped",
            || tcp(&c.outside, lb_ip, 80, DROP),
            |o| *o == Outcome::TimedOut,
        );
        // The ranges guard the load-balancer IP only, as in kube-proxy.
        let o = tcp(&c.outside, ip(NODE_V4), 30090, DROP);
        assert_eq!(o.server(), c.pod(1).v4);
    }

    pub fn updates_while_traffic_flows() {
        let c = Cluster::new(&[]);
        let put_web = |pods: &[usize]| {
            let eps = pods
                .iter()
                .map(|n| endpoint(c.pod(*n), false, NODE, ready()))
                .collect();
            c.serve("web", json!({}), eps);
        };
        put_web(&[0, 1]);
        let vip = ip("10.96.0.10");
        c.answer(vip);

        // A steady stream of connections while services change around it.
        let stop = AtomicBool::new(false);
        let outcomes = thread::scope(|scope| {
            let flow = scope.spawn(|| {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    outcomes.push(tcp(&c.client.ns, vip, 80, Duration::from_secs(2)));
                }
                outcomes
            });
            put_web(&[0, 1, 2]);
            eventually(
                "the new endpoint takes a share",
                || spread(&c.client.ns, vip, 80, 10).0,
                |s| s.contains(&c.pod(2).v4),
            );
            for n in 0..5 {
                // Unrelated services come and go.
                c.put(
                    &format!("other{n}"),
                    &[service(
                        &format!("other{n}"),
                        json!({"clusterIP": format!("10.96.1.{n}")}),
                    )],
                );
            }
            put_web(&[1, 2]);
            eventually(
                "the removed endpoint gets nothing",
                || spread(&c.client.ns, vip, 80, 15).0,
                |s| !s.contains(&c.pod(0).v4),
            );
            stop.store(true, Ordering::Relaxed);
            flow.join().expect("traffic thread")
        });
        let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !answered(o)).collect();
        assert!(
            failed.is_empty(),
            "{} of {} connections failed during updates: {failed:?}",
            failed.len(),
            outcomes.len()
        );
        assert!(outcomes.len() > 10, "traffic flowed: {}", outcomes.len());
    }

    /// The UDP service `q` (10.96.0.99:5000) served by one pod.
    fn put_q(c: &Cluster, pod: usize) {
        c.put(
            "q",
            &[
                service(
                    "q",
                    json!({"clusterIP": "10.96.0.99",
                           "ports": [{"name": "q", "port": 5000, "protocol": "UDP"}]}),
                ),
                slice(
                    "q",
                    "IPv4",
                    ("q", "UDP"),
                    vec![endpoint(c.pod(pod), false, NODE, ready())],
                ),
            ],
        );
    }

    /// One datagram to `q` from a fixed source port: one conntrack flow.
    fn send_q(c: &Cluster) -> Outcome {
        udp(&c.client.ns, ip("10.96.0.99"), 5000, 40000, DROP)
    }

    pub fn udp_flows_move_off_a_removed_endpoint() {
        let c = Cluster::new(&[]);
        put_q(&c, 0);
        let o = eventually("q answers", || send_q(&c), answered);
        assert_eq!(o.server(), c.pod(0).v4);
        // pod0 keeps serving on its address, so only a cleared flow can move.
        put_q(&c, 1);
        eventually(
            "the flow moves to pod1",
            || send_q(&c),
            |o| answered(o) && o.server() == c.pod(1).v4,
        );
    }

    pub fn udp_flows_move_off_an_endpoint_removed_while_the_proxy_was_down() {
        let mut c = Cluster::new(&[]);
        put_q(&c, 0);
        let o = eventually("q answers", || send_q(&c), answered);
        assert_eq!(o.server(), c.pod(0).v4);
        assert!(c.terminate().success());
        put_q(&c, 1);
        c.start_proxy(&[]);
        eventually(
            "the flow moves to pod1",
            || send_q(&c),
            |o| answered(o) && o.server() == c.pod(1).v4,
        );
    }

    pub fn sigterm_leaves_the_rules_and_never_touches_other_tables() {
        let mut c = Cluster::new(&[]);
        c.node.sh(&["nft", "add", "table", "inet", "other"]);
        c.node.sh(&["nft", "add", "chain", "inet", "other", "keep"]);
        c.serve(
            "web",
            json!({}),
            vec![endpoint(c.pod(0), false, NODE, ready())],
        );
        let vip = ip("10.96.0.10");
        c.answer(vip);
        let status = c.terminate();
        assert!(status.success(), "exit status {status}");
        let tables = c.tables();
        assert!(tables.contains("table inet netd-proxy"), "{tables}");
        assert!(tables.contains("table inet other"), "{tables}");
        assert!(
            c.node
                .sh(&["nft", "list", "table", "inet", "other"])
                .contains("chain keep")
        );
        assert_eq!(
            tcp(&c.client.ns, vip, 80, DROP).server(),
            c.pod(0).v4,
            "services keep working while the proxy is down"
        );
        // A restart takes over the table it left, and follows changes again.
        c.start_proxy(&[]);
        c.serve(
            "web",
            json!({}),
            vec![endpoint(c.pod(2), false, NODE, ready())],
        );
        eventually(
            "the restarted proxy follows",
            || tcp(&c.client.ns, vip, 80, DROP),
            |o| answered(o) && o.server() == c.pod(2).v4,
        );
    }

    pub fn cleanup_on_exit_removes_only_its_table() {
        let mut c = Cluster::new(&["--cleanup-on-exit"]);
        c.node.sh(&["nft", "add", "table", "ip", "other"]);
        c.put("web", &[service("web", json!({}))]);
        eventually(
            "the table is made",
            || c.tables(),
            |t| t.contains("netd-proxy"),
        );
        let status = c.terminate();
        assert!(status.success(), "exit status {status}");
        let tables = c.tables();
        assert!(!tables.contains("netd-proxy"), "{tables}");
        assert!(tables.contains("table ip other"), "{tables}");
    }

    pub fn a_failed_transaction_is_repaired_by_a_full_rewrite() {
        // No periodic check: the repair must come from the failed transaction.
        let c = Cluster::new(&["--check-period", "0s"]);
        let put_web = |pod: usize| {
            c.serve(
                "web",
                json!({}),
                vec![endpoint(c.pod(pod), false, NODE, ready())],
            );
        };
        put_web(0);
        let vip = ip("10.96.0.10");
        c.answer(vip);
        // Someone deletes the table: the next incremental transaction cannot apply.
        c.node.sh(&["nft", "delete", "table", "inet", "netd-proxy"]);
        put_web(1);
        let o = eventually(
            "the table is rebuilt",
            || tcp(&c.client.ns, vip, 80, DROP),
            answered,
        );
        assert_eq!(o.server(), c.pod(1).v4);
        let log = std::fs::read_to_string(&c.log).expect("log");
        assert!(
            log.contains("retrying with a full rewrite"),
            "the failure is logged: {log}"
        );
    }

    pub fn health_check_node_ports_and_healthz() {
        let c = Cluster::new(&[]);
        let lb = |endpoints: Vec<Value>| {
            let mut svc = service(
                "checked",
                json!({"type": "LoadBalancer", "clusterIP": "10.96.0.95",
                       "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                       "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30095}]}),
            );
            svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}});
            c.put(
                "checked",
                &[svc, slice("checked", "IPv4", ("http", "TCP"), endpoints)],
            );
        };
        lb(vec![
            endpoint(c.pod(0), false, NODE, ready()),
            endpoint(c.pod(1), false, NODE, ready()),
            endpoint(c.pod(2), false, OTHER, ready()),
        ]);
        let node = ip(NODE_V4);
        let (status, body) = eventually(
            "the health check port answers",
            || http_get(&c.outside, node, 32000, "/"),
            |r| r.is_ok(),
        )
        .expect("answered");
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["localEndpoints"], 2, "{body}");
        assert_eq!(body["service"]["name"], "checked", "{body}");

        // No endpoint here: the load balancer is told to skip this node.
        lb(vec![endpoint(c.pod(2), false, OTHER, ready())]);
        let _ = eventually(
            "503 without a local endpoint",
            || http_get(&c.outside, node, 32000, "/"),
            |r| matches!(r, Ok((503, _))),
        );

        // The proxy's own health.
        let (status, body) = http_get(&c.outside, node, 10256, "/healthz").expect("healthz");
        assert_eq!(status, 200, "{body}");
        let (status, _) = http_get(&c.outside, node, 10256, "/nope").expect("404");
        assert_eq!(status, 404);

        // The port closes with the Service.
        std::fs::remove_file(c.dir.path().join("manifests/checked.json")).expect("remove");
        let _ = eventually(
            "the health check port closes",
            || http_get(&c.outside, node, 32000, "/"),
            |r| r.is_err(),
        );
    }

    pub fn a_deleted_table_is_rewritten_without_a_change() {
        let c = Cluster::new(&["--check-period", "1s"]);
        c.serve(
            "web",
            json!({}),
            vec![endpoint(c.pod(0), false, NODE, ready())],
        );
        let vip = ip("10.96.0.10");
        c.answer(vip);
        c.node.sh(&["nft", "delete", "table", "inet", "netd-proxy"]);
        let o = eventually(
            "the periodic check rewrites the table",
            || tcp(&c.client.ns, vip, 80, DROP),
            answered,
        );
        assert_eq!(o.server(), c.pod(0).v4);
    }
}
