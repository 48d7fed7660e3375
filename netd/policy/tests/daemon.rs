//! `netd-policy` running on the shared cluster (tests/support) from a watched manifests
//! directory, with real traffic: policies added, updated and deleted, and labels of pods and
//! namespaces changed, each converging (the deadline only bounds a failure; no timing is
//! asserted).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use netd_testnet::{Outcome, Server, tcp_from, udp_from};
use support::{Net, address, expand, flow};

const WAIT: Duration = Duration::from_millis(700);
const CONVERGE: Duration = Duration::from_secs(30);

struct Daemon {
    net: Net,
    dir: tempfile::TempDir,
    log: PathBuf,
    child: Option<Child>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- netd-policy log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Daemon {
    /// The cluster, servers on tcp/80 and udp/53 of every pod, and the daemon on node-1.
    fn start() -> Daemon {
        let net = Net::new();
        for n in ["a", "b", "c"] {
            for p in ["x", "y", "z"] {
                let end = format!("{n}/{p}");
                Server::start(net.ns_of(&end), address(&end), 80);
                Server::start(net.ns_of(&end), address(&end), 53);
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("m")).expect("dir");
        let log = dir.path().join("policy.log");
        let mut d = Daemon {
            net,
            dir,
            log,
            child: None,
        };
        d.put(
            "cluster",
            &format!("{}{}", support::CLUSTER, support::pods()),
        );
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.node.name])
            .arg(env!("CARGO_BIN_EXE_netd-policy"))
            .arg("--manifests")
            .arg(self.dir.path().join("m"))
            .args(["--node-name", "node-1", "--check-period", "1s"])
            .env("RUST_LOG", "debug,kube=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn netd-policy");
        self.child = Some(child);
    }

    /// Writes one manifest file (replacing it); the daemon picks it up.
    fn put(&self, name: &str, yaml: &str) {
        let path = self.dir.path().join("m").join(format!("{name}.yaml"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join("m").join(format!("{name}.yaml")))
            .expect("remove");
    }

    /// One connection, as `"a/z -> b/x tcp/80"`.
    fn probe(&self, text: &str) -> Outcome {
        let f = flow(text);
        let src = text.split_whitespace().next().expect("src");
        let bind = (!src.contains('/')).then_some(f.src);
        let from = self.net.ns_of(src);
        match f.protocol {
            discovery::model::Protocol::Udp => udp_from(from, bind, f.dst, f.port, WAIT),
            _ => tcp_from(from, bind, f.dst, f.port, WAIT),
        }
    }

    /// Waits until `text` is answered (`true`) or dropped (`false`).
    fn converges(&self, text: &str, allowed: bool) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let o = self.probe(text);
            let ok = match o {
                Outcome::Answered { .. } => allowed,
                Outcome::TimedOut => !allowed,
                _ => false,
            };
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text}: still {o:?}, want {}",
                if allowed { "answered" } else { "dropped" }
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Labels are set by rewriting the objects' manifests.
fn namespace(name: &str, team: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\n"
    )
}

#[test]
fn policies_added_updated_deleted_and_labels_changed_converge() {
    if !netd_testnet::can_run(&[]) {
        return;
    }
    let d = Daemon::start();
    d.converges("b/z -> a/x tcp/80", true);

    // Added: default deny into a.
    d.put(
        "deny",
        &expand("NP metadata: {name: deny, namespace: a}\nspec: {podSelector: {}}"),
    );
    d.converges("b/z -> a/x tcp/80", false);
    d.converges("b/z -> a/x udp/53", false);
    d.converges("a/z -> b/x tcp/80", true);

    // Updated: allow from team blue.
    d.put(
        "deny",
        &expand(
            "NP metadata: {name: deny, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
        ),
    );
    d.converges("b/z -> a/x tcp/80", true);
    d.converges("c/z -> a/x tcp/80", false);

    // A namespace's labels change: c joins team blue.
    d.put("ns-c", &namespace("c", "blue"));
    d.converges("c/z -> a/x tcp/80", true);
    d.put("ns-c", &namespace("c", "green"));
    d.converges("c/z -> a/x tcp/80", false);

    // A pod's labels change: a policy selecting app=web stops isolating a/x when it is
    // relabelled.
    d.put(
        "web-only",
        &expand(
            "NP metadata: {name: web-only, namespace: b}\nspec: {podSelector: {matchLabels: {app: web}}}",
        ),
    );
    d.converges("a/z -> b/x tcp/80", false);
    d.put(
        "relabel",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: 'x', namespace: b, labels: {app: api}}\n\
         spec: {nodeName: node-1, containers: [{name: c}]}\nstatus: {podIP: 10.0.2.1}\n",
    );
    d.converges("a/z -> b/x tcp/80", true);

    // Admin tiers: a Deny over the NetworkPolicy allow, then the baseline.
    d.put(
        "anp",
        &expand(
            "ANP metadata: {name: no-blue}\nspec:\n  priority: 1\n  subject: {namespaces: {matchLabels: {team: red}}}\n  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: blue}}}]}]",
        ),
    );
    d.converges("b/z -> a/x tcp/80", false);
    d.remove("anp");
    d.converges("b/z -> a/x tcp/80", true);
    d.put(
        "banp",
        &expand(
            "BANP metadata: {name: default}\nspec:\n  subject: {namespaces: {matchLabels: {team: green}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]",
        ),
    );
    d.converges("a/z -> c/x tcp/80", false);
    d.converges("a/z -> b/y tcp/80", true);

    // Deleted: everything allowed again.
    d.remove("deny");
    d.remove("banp");
    d.remove("web-only");
    d.converges("c/z -> a/x tcp/80", true);
    d.converges("a/z -> c/x tcp/80", true);
}

#[test]
fn sigterm_leaves_the_rules_and_cleanup_removes_only_its_table() {
    if !netd_testnet::can_run(&[]) {
        return;
    }
    let mut d = Daemon::start();
    d.net.node.sh(&["nft", "add", "table", "inet", "other"]);
    d.put(
        "deny",
        &expand("NP metadata: {name: deny, namespace: a}\nspec: {podSelector: {}}"),
    );
    d.converges("b/z -> a/x tcp/80", false);
    let mut child = d.child.take().expect("running");
    netd_testnet::sh(&["kill", "-TERM", &child.id().to_string()]);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    // The pods stay protected while the daemon is down; other tables are untouched.
    d.converges("b/z -> a/x tcp/80", false);
    let tables = d.net.node.sh(&["nft", "list", "tables"]);
    assert!(tables.contains("table inet netd-policy"), "{tables}");
    assert!(tables.contains("table inet other"), "{tables}");

    // With --cleanup-on-exit the table goes, and only it.
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&d.log)
        .expect("log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &d.net.node.name])
        .arg(env!("CARGO_BIN_EXE_netd-policy"))
        .arg("--manifests")
        .arg(d.dir.path().join("m"))
        .args(["--node-name", "node-1", "--cleanup-on-exit"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    d.converges("b/z -> a/x tcp/80", false);
    thread::sleep(Duration::from_millis(300));
    netd_testnet::sh(&["kill", "-TERM", &child.id().to_string()]);
    assert!(child.wait().expect("wait").success());
    let tables = d.net.node.sh(&["nft", "list", "tables"]);
    assert!(!tables.contains("netd-policy"), "{tables}");
    assert!(tables.contains("table inet other"), "{tables}");
    d.converges("b/z -> a/x tcp/80", true);
}
