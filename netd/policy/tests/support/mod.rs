//! The cluster the policy tests share: three namespaces of three pods, two nodes, an outside
//! address, as manifests and as network namespaces.

#![allow(dead_code)] // Each test file uses its own part.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use discovery::model::Protocol;
use discovery::{ClusterSnapshot, Fields, ObjectStore};
use netd_policy::eval::Flow;
use netd_testnet::{Ns, sh};

pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: blue}}
---
apiVersion: v1
kind: Namespace
metadata: {name: c, labels: {team: green}}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2, labels: {role: control}}
status: {addresses: [{type: InternalIP, address: 192.0.2.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: a, labels: {app: web}}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.0.2.1}
"#;

pub fn pods() -> String {
    let mut out = String::new();
    for (n, ns) in ["a", "b", "c"].iter().enumerate() {
        for (i, (pod, app, ports)) in [
            (
                "x",
                "web",
                "[{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]",
            ),
            ("y", "db", "[{name: pg, containerPort: 5432}]"),
            ("z", "client", "[]"),
        ]
        .iter()
        .enumerate()
        {
            out.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: '{pod}', namespace: {ns}, labels: {{app: {app}}}}}\n\
                 spec: {{nodeName: node-1, containers: [{{name: c, ports: {ports}}}]}}\n\
                 status: {{podIP: 10.0.{}.{}}}\n",
                n + 1,
                i + 1
            ));
        }
    }
    out
}

/// The cluster with `policies` (more manifests) as a snapshot.
pub fn snapshot(policies: &str) -> ClusterSnapshot {
    let text = format!("{CLUSTER}{}---\n{policies}", pods());
    let parsed =
        discovery::manifests::parse_manifest_with(Path::new("case.yaml"), &text, Fields::POLICY);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut store = ObjectStore::default();
    for obj in parsed.objects {
        store.insert(obj);
    }
    ClusterSnapshot::new(store, 1, 1, true)
}

/// The address of `ns/pod`, or the address itself.
pub fn address(end: &str) -> IpAddr {
    if let Ok(ip) = end.parse() {
        return ip;
    }
    let (ns, pod) = end.split_once('/').expect("ns/pod or an address");
    let n = match ns {
        "a" => 1,
        "b" => 2,
        "c" => 3,
        other => panic!("no namespace {other}"),
    };
    let i = match pod {
        "x" => 1,
        "y" => 2,
        "z" => 3,
        other => panic!("no pod {other}"),
    };
    format!("10.0.{n}.{i}").parse().expect("address")
}

/// `"a/z -> b/x tcp/80"`.
pub fn flow(text: &str) -> Flow {
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() == 4 && words[1] == "->", "bad flow {text:?}");
    let (proto, port) = words[3].split_once('/').expect("proto/port");
    Flow {
        src: address(words[0]),
        dst: address(words[2]),
        protocol: match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            other => panic!("protocol {other}"),
        },
        port: port.parse().expect("port"),
    }
}

pub const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";
pub const ANP: &str = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n";
pub const BANP: &str =
    "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\n";

/// Writes `NP`, `ANP` and `BANP` at the start of a document as their apiVersion and kind.
pub fn expand(policies: &str) -> String {
    policies
        .split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            let d = d.trim_start();
            if let Some(rest) = d.strip_prefix("BANP ") {
                format!("{BANP}{rest}")
            } else if let Some(rest) = d.strip_prefix("ANP ") {
                format!("{ANP}{rest}")
            } else if let Some(rest) = d.strip_prefix("NP ") {
                format!("{NP}{rest}")
            } else {
                d.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The cluster as network namespaces: every pod on one bridge in the node (all are on
/// node-1, with 10.0.N.i/16 and the node's bridge at 10.0.255.254), the node at 192.0.2.1, an
/// outside host at 192.0.2.2 (node-2's address) and 198.51.100.9, routing to the pods
/// through the node.
pub struct Net {
    pub hosts: BTreeMap<String, Ns>,
    pub outside: Ns,
    pub node: Ns,
}

impl Net {
    pub fn new() -> Net {
        let node = Ns::new("pnode");
        let outside = Ns::new("pout");
        netd_testnet::uplink(&node, &outside);
        outside.sh(&["ip", "addr", "add", "198.51.100.9/24", "dev", "eth0"]);
        outside.sh(&["ip", "route", "add", "10.0.0.0/16", "via", "192.0.2.1"]);
        node.sh(&["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.2"]);
        node.sh(&["ip", "link", "add", "br0", "type", "bridge"]);
        node.sh(&["ip", "addr", "add", "10.0.255.254/16", "dev", "br0"]);
        node.sh(&["ip", "link", "set", "br0", "up"]);
        for (path, value) in [
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
        ] {
            node.sh(&["sh", "-c", &format!("echo {value} > {path}")]);
        }
        let mut hosts: BTreeMap<String, Ns> = BTreeMap::new();
        for (n, ns) in ["a", "b", "c"].iter().enumerate() {
            for (i, pod) in ["x", "y", "z"].iter().enumerate() {
                let name = format!("{ns}/{pod}");
                let host = Ns::new(&format!("p{ns}{pod}"));
                let veth = format!("v{ns}{pod}");
                sh(&[
                    "ip", "link", "add", &veth, "netns", &node.name, "type", "veth", "peer",
                    "name", "eth0", "netns", &host.name,
                ]);
                node.sh(&["ip", "link", "set", &veth, "master", "br0", "up"]);
                let ip = format!("10.0.{}.{}", n + 1, i + 1);
                host.sh(&["ip", "addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
                host.sh(&["ip", "link", "set", "eth0", "up"]);
                host.sh(&["ip", "route", "add", "default", "via", "10.0.255.254"]);
                hosts.insert(name, host);
            }
        }
        Net {
            hosts,
            outside,
            node,
        }
    }

    /// The namespace that speaks as `end` (a pod, the node, or the outside host).
    pub fn ns_of(&self, end: &str) -> &Ns {
        match end {
            "198.51.100.9" | "192.0.2.2" => &self.outside,
            "192.0.2.1" => &self.node,
            pod => &self.hosts[pod],
        }
    }
}
