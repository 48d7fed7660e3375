//! Time per ADD and per DEL, this plugin beside the reference `bridge` + `host-local`, on a node
//! made of network namespaces (root, iproute2, nftables, containernetworking-plugins).
//!
//! `cargo bench -p netd-cni --bench add_del [-- PODS]` (default 100 pods per run).
//!
//! The bench moves into the node's namespace and runs the plugin as a runtime does: one
//! process per command, configuration on stdin. Pod namespaces are made before the clock
//! starts. Each run is made with and without `ipMasq` (which costs this plugin an `nft` run and
//! the reference its iptables calls).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use serde_json::Value;
use support::{Flavor, Node, Ns};

fn main() {
    let pods: usize = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(100);
    if !support::can_run(&Flavor::Reference.prerequisites()) {
        return;
    }
    println!("{pods} pods per run; times per command, including the process start");
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "plugin", "ADD p50", "ADD mean", "DEL p50", "DEL mean"
    );
    for masq in [false, true] {
        for flavor in [Flavor::Ours, Flavor::Reference] {
            let (add, del) = run(flavor, masq, pods);
            let label = format!(
                "{} {}",
                match flavor {
                    Flavor::Ours => "netd-cni",
                    Flavor::Reference => "bridge+host-local",
                },
                if masq { "ipMasq" } else { "no masq" }
            );
            println!(
                "{label:<28} {:>10} {:>10} {:>10} {:>10}",
                ms(median(&add)),
                ms(mean(&add)),
                ms(median(&del)),
                ms(mean(&del))
            );
        }
    }
}

fn run(flavor: Flavor, masq: bool, pods: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut node = Node::new(flavor);
    node.conf["ipMasq"] = Value::Bool(masq);
    // The cluster's pod network, as a real configuration has it (the reference ignores it).
    node.conf["nonMasqueradeCIDRs"] = serde_json::json!(["10.0.0.0/8"]);
    node.conf["ipam"]["ranges"] = serde_json::json!([[{"subnet": "10.22.0.0/16"}]]);
    let namespaces: Vec<Ns> = (0..pods).map(|i| Ns::new(&format!("b{i}"))).collect();
    let binary = flavor.binary();
    let conf = node.conf.to_string();
    let node_path = node.ns.path();
    // The node's namespace for this thread (and the plugins it starts), and back afterwards.
    let (add, del) = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&node_path).expect("node namespace");
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                let mut add = Vec::with_capacity(pods);
                let mut del = Vec::with_capacity(pods);
                for (i, pod) in namespaces.iter().enumerate() {
                    add.push(time(&binary, "ADD", &format!("b{i}"), &pod.path(), &conf));
                }
                for (i, pod) in namespaces.iter().enumerate() {
                    del.push(time(&binary, "DEL", &format!("b{i}"), &pod.path(), &conf));
                }
                (add, del)
            })
            .join()
            .expect("bench thread")
    });
    (add, del)
}

fn time(binary: &std::path::Path, command: &str, id: &str, netns: &str, conf: &str) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_PATH", support::REFERENCE_DIR)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("stdin");
    let output = child.wait_with_output().expect("wait");
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "{command} {id}: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    took
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn mean(samples: &[Duration]) -> Duration {
    samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap_or(u32::MAX)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
