//! A runner for a CNI plugin on a node made of network namespaces.
//!
//! A test builds a [`Node`]: a namespace playing the node (where the plugin runs, as a runtime
//! would run it), an outside host behind it on 192.0.2.0/24 and 2001:db8::/64 (which has no
//! route back to the pods, so only masqueraded traffic gets answers), and pods as namespaces
//! added with the plugin. The namespaces and traffic helpers are `netd-testnet`'s.

#![allow(dead_code)] // Each test file uses its own part of the support.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[allow(unused_imports)] // The benchmark uses the node only.
pub use netd_testnet::{
    Listener, NODE_V4, NODE_V6, Ns, OUTSIDE_V4, OUTSIDE_V6, can_run, connect, sh,
};
use serde_json::{Value, json};

/// Which plugin a test runs: this one, or the reference `bridge` + `host-local` from Debian's
/// containernetworking-plugins (which stop at CNI 1.0.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Ours,
    Reference,
}

pub const REFERENCE_DIR: &str = "/usr/lib/cni";

impl Flavor {
    pub fn binary(self) -> PathBuf {
        match self {
            Flavor::Ours => PathBuf::from(env!("CARGO_BIN_EXE_netd-cni")),
            Flavor::Reference => Path::new(REFERENCE_DIR).join("bridge"),
        }
    }

    /// The newest version the plugin speaks.
    pub fn version(self) -> &'static str {
        match self {
            Flavor::Ours => "1.1.0",
            Flavor::Reference => "1.0.0",
        }
    }

    pub fn prerequisites(self) -> Vec<&'static str> {
        match self {
            Flavor::Ours => Vec::new(),
            Flavor::Reference => vec!["/usr/lib/cni/bridge", "/usr/lib/cni/host-local"],
        }
    }
}

/// The answer of one plugin run.
#[derive(Debug)]
pub struct Answer {
    pub success: bool,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    fn from(output: Output) -> Answer {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        Answer {
            success: output.status.success(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The error code of a failed run.
    pub fn code(&self) -> u64 {
        assert!(!self.success, "expected a failure, got {}", self.stdout);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error object: {self:?}"))
    }

    pub fn ok(self) -> Value {
        assert!(
            self.success,
            "plugin failed: {} {}",
            self.stdout, self.stderr
        );
        self.json
    }

    /// The addresses of the result.
    pub fn addresses(json: &Value) -> Vec<IpAddr> {
        json["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|ip| {
                let text = ip["address"].as_str().expect("address");
                text.split('/')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .expect("an address")
            })
            .collect()
    }
}

/// The node: its namespace, the outside host, the data directory and the configuration.
pub struct Node {
    pub flavor: Flavor,
    pub ns: Ns,
    pub outside: Ns,
    pub data: tempfile::TempDir,
    pub conf: Value,
    /// A directory searched first in `CNI_PATH` (for test delegates).
    pub extra_path: Option<PathBuf>,
}

impl Node {
    /// A node with a dual-stack pod network 10.22.0.0/24 + fd00:22::/64 on bridge `cni0`.
    pub fn new(flavor: Flavor) -> Node {
        let ns = Ns::new("node");
        let outside = Ns::new("out");
        netd_testnet::uplink(&ns, &outside);
        let data = tempfile::tempdir().expect("tempdir");
        let ipam = match flavor {
            Flavor::Ours => json!({
                "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]],
                "dataDir": data.path(),
            }),
            Flavor::Reference => json!({
                "type": "host-local",
                "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]],
                "dataDir": data.path(),
            }),
        };
        let plugin_type = match flavor {
            Flavor::Ours => "netd-cni",
            Flavor::Reference => "bridge",
        };
        let conf = json!({
            "cniVersion": flavor.version(),
            "name": "pods",
            "type": plugin_type,
            "bridge": "cni0",
            "isDefaultGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "mtu": 1400,
            "ipam": ipam,
        });
        Node {
            flavor,
            ns,
            outside,
            data,
            conf,
            extra_path: None,
        }
    }

    /// Runs the plugin in the node's namespace, as a runtime would.
    pub fn run(&self, command: &str, container: &str, netns: Option<&str>, conf: &Value) -> Answer {
        self.run_env(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_IFNAME", "eth0"),
            ],
            netns,
            conf,
        )
    }

    /// Runs the plugin with exactly the `CNI_*` variables given (and `CNI_NETNS` if `netns`).
    pub fn run_env(&self, vars: &[(&str, &str)], netns: Option<&str>, conf: &Value) -> Answer {
        let mut cni_path = format!(
            "{}:{REFERENCE_DIR}",
            self.flavor.binary().parent().expect("dir").display()
        );
        if let Some(extra) = &self.extra_path {
            cni_path = format!("{}:{cni_path}", extra.display());
        }
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns.name])
            .arg(self.flavor.binary())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in vars {
            command.env(key, value);
        }
        if let Some(netns) = netns {
            command.env("CNI_NETNS", netns);
        }
        let mut child = command.spawn().expect("spawn plugin");
        let input = conf.to_string();
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        Answer::from(child.wait_with_output().expect("wait plugin"))
    }

    /// Adds a pod namespace to the network; returns it and the ADD result.
    pub fn add_pod(&self, id: &str) -> (Ns, Value) {
        let pod = Ns::new(id);
        let result = self.run("ADD", id, Some(&pod.path()), &self.conf).ok();
        (pod, result)
    }

    pub fn del_pod(&self, id: &str, pod: Option<&Ns>) -> Answer {
        let mut conf = self.conf.clone();
        conf["prevResult"] = Value::Null;
        self.run("DEL", id, pod.map(|p| p.path()).as_deref(), &conf)
    }

    /// The configuration with `prevResult` set, as a runtime sends CHECK and DEL.
    pub fn with_prev(&self, prev: &Value) -> Value {
        let mut conf = self.conf.clone();
        conf["prevResult"] = prev.clone();
        conf
    }

    /// The allocation records in the data directory (host-local's layout, both plugins).
    pub fn records(&self) -> Vec<String> {
        let dir = self.data.path().join("pods");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|listing| {
                listing
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|name| name.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}
