//! The `clusterdns` binary: flags, exit codes and the README's run command.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clusterdns"))
}

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/cluster")
}

#[test]
fn bad_usage_exits_64_naming_the_problem() {
    for (args, needle) in [
        (&["serve", "--manifests", "x", "--ttl", "4000"][..], "--ttl"),
        (
            &["serve", "--manifests", "x", "--pods", "maybe"][..],
            "not one of disabled, insecure, verified",
        ),
        (
            &["serve", "--manifests", "x", "--listen", "nope"][..],
            "--listen",
        ),
        (
            &["serve", "--manifests", "x", "--dns-service", "kube-dns"][..],
            "NAMESPACE/NAME",
        ),
        (
            &["serve", "--manifests", "x", "--kubeconfig", "y"][..],
            "cannot be used with",
        ),
        (
            &["serve", "--kubeconfig", "y", "--namespaces", "Bad_NS"][..],
            "is not a namespace name",
        ),
        (
            &["serve", "--manifests", "x", "--startup-timeout", "soon"][..],
            "not a duration",
        ),
        (
            &["serve", "--manifests", "x", "--cluster-domain", "a..b"][..],
            "empty label",
        ),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        let out = bin()
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn no_discovery_source_is_bad_usage_outside_a_cluster() {
    let out = bin()
        .args(["serve"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(
            "no discovery source: pass --manifests DIR or --kubeconfig PATH, or run in a pod"
        ),
        "{err}"
    );
}

#[test]
fn unreadable_kubeconfig_exits_66() {
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert!(err.contains("kubeconfig /nonexistent/kubeconfig"), "{err}");
}

#[test]
fn missing_manifests_dir_exits_66() {
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--manifests",
            "/nonexistent/manifests",
        ])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert!(
        err.contains("manifests directory /nonexistent/manifests"),
        "{err}"
    );
}

#[test]
fn help_documents_every_flag() {
    let out = bin().args(["serve", "--help"]).output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--manifests",
        "--kubeconfig",
        "--namespaces",
        "--endpoint-pod-names",
        "--startup-timeout",
        "--cluster-domain",
        "--ttl",
        "--pods",
        "--dns-service",
        "--udp-workers",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for env in [
        "CLUSTERDNS_LISTEN",
        "CLUSTERDNS_MANIFESTS",
        "CLUSTERDNS_KUBECONFIG",
        "CLUSTERDNS_STARTUP_TIMEOUT",
        "CLUSTERDNS_TTL",
    ] {
        assert!(help.contains(env), "{env} missing from --help");
    }
}

/// The README's run command, on a free port, answers the example cluster and stops cleanly on
/// SIGTERM.
#[test]
fn serves_the_example_cluster_and_stops_on_sigterm() {
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").port()
    };
    let mut child = bin()
        .args(["serve", "--manifests"])
        .arg(example())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("CLUSTERDNS_PODS", "insecure")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.expect("log line");
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening") {
            break;
        }
    }
    assert!(log.contains("manifests loaded"), "{log}");

    // A hand-made query: ANY client works; this one does not even need dig.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut q = vec![0xAB, 0xCD, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["frontend", "shop", "svc", "cluster", "local"] {
        q.push(l.len() as u8);
        q.extend(l.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    sock.send_to(&q, ("127.0.0.1", port)).expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).expect("answered");
    assert_eq!(&buf[..2], &[0xAB, 0xCD]);
    assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), 1, "one answer");
    assert_eq!(&buf[n - 4..n], &[10, 96, 10, 10], "frontend's cluster IP");

    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
