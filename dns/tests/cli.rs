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
fn a_bad_config_file_at_start_exits_65_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "servers:\n- name: corp\n  zones: [corp.test]\n  forward: {upstreams: [\"192.0.2.1\"], polcy: random}\n").expect("write");
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--manifests",
        ])
        .arg(example())
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("unknown field `polcy`"), "{err}");
    std::fs::write(
        &cfg,
        "upstream_resolvers: {upstreams: [\"tls://192.0.2.1\"]}\n",
    )
    .expect("write");
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--manifests",
        ])
        .arg(example())
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("upstream_resolvers.tls: tls:// upstreams need tls.server_name"),
        "{err}"
    );
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
fn a_port_in_use_exits_1_naming_the_address_and_the_reason_once() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = bin()
        .args(["serve", "--listen", &addr, "--admin-listen", "off"])
        .args(["--upstream", "off", "--manifests"])
        .arg(example())
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("clusterdns: error:"))
        .unwrap_or_else(|| panic!("no error line in {err}"));
    assert!(
        line.contains(&format!("cannot listen on {addr} (udp)")),
        "{line}"
    );
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
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
        "--config",
        "--upstream",
        "--admin-listen",
        "--lameduck",
        "--log-format",
        "--query-log",
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
        .args(["serve", "--upstream", "off", "--manifests"])
        .arg(example())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "off",
            "--lameduck",
            "0s",
        ])
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

/// A free port on loopback (UDP and TCP are both tried by the server; a clash fails loudly).
fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn a_query(name: &[&str]) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name {
        q.push(l.len() as u8);
        q.extend(l.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// The rcode of a UDP query, or None without a reply within a second.
fn rcode(port: u16, ip: &str, q: &[u8]) -> Option<u8> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    sock.send_to(q, (ip, port)).expect("send");
    let mut buf = [0u8; 512];
    sock.recv_from(&mut buf).ok().map(|_| buf[3] & 0x0F)
}

fn http(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    let code = r
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        r.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// Reads stderr lines until one contains `needle`; returns everything read.
fn read_until(lines: &mut impl Iterator<Item = std::io::Result<String>>, needle: &str) -> String {
    let mut log = String::new();
    for line in lines {
        let line = line.expect("log line");
        log.push_str(&line);
        log.push('\n');
        if line.contains(needle) {
            return log;
        }
    }
    panic!("stderr ended without {needle:?}:\n{log}");
}

#[test]
fn sigterm_fails_ready_at_once_keeps_answering_for_the_lameduck_then_exits_0() {
    let (dns, admin) = (free_port(), free_port());
    let lameduck = Duration::from_secs(3);
    let mut child = bin()
        .args(["serve", "--upstream", "off", "--manifests"])
        .arg(example())
        .args([
            "--listen",
            &format!("127.0.0.1:{dns}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--lameduck",
            "3s",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    read_until(&mut lines, "admin endpoint listening");
    assert_eq!(http(admin, "/ready"), (200, "ready\n".into()));
    assert_eq!(http(admin, "/health"), (200, "ok\n".into()));
    let q = a_query(&["frontend", "shop", "svc", "cluster", "local"]);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let signalled = Instant::now();
    let mut became_unready = false;
    while signalled.elapsed() < Duration::from_secs(10) {
        if http(admin, "/ready") == (503, "not ready: shutting down\n".into()) {
            became_unready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(became_unready, "/ready did not fail after SIGTERM");
    if signalled.elapsed() < lameduck {
        // Inside the lameduck period: still answering.
        assert_eq!(
            rcode(dns, "127.0.0.1", &q),
            Some(0),
            "stopped answering during the lameduck"
        );
    }
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            signalled.elapsed() < lameduck + Duration::from_secs(10),
            "did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() >= lameduck,
        "exited before the lameduck ended"
    );
    let rest: String = lines.map_while(Result::ok).collect::<Vec<_>>().join("\n");
    assert!(rest.contains("stopped"), "{rest}");
}

#[test]
fn json_logs_and_the_query_log() {
    let dns = free_port();
    let mut child = bin()
        .args(["serve", "--upstream", "off", "--manifests"])
        .arg(example())
        .args([
            "--listen",
            &format!("127.0.0.1:{dns}"),
            "--admin-listen",
            "off",
            "--log-format",
            "json",
            "--query-log",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let log = read_until(&mut lines, "listening");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["message"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let q = a_query(&["FrontEnd", "shop", "svc", "cluster", "local"]);
    assert_eq!(rcode(dns, "127.0.0.1", &q), Some(0));
    let line = read_until(&mut lines, "\"query\"");
    let v: serde_json::Value =
        serde_json::from_str(line.lines().last().expect("line")).expect("JSON");
    assert_eq!(v["target"], "clusterdns::query");
    assert_eq!(v["name"], "FrontEnd.shop.svc.cluster.local.");
    assert_eq!(v["qtype"], 1);
    assert_eq!(v["proto"], "udp");
    let _ = child.kill();
    let _ = child.wait();
}

/// Port 53 as an unprivileged user holding only CAP_NET_BIND_SERVICE, as the Deployment runs
/// it; and without the capability, a clear bind error. Needs root to switch user (CI is root).
#[test]
fn binds_port_53_as_non_root_with_only_net_bind_service() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let have_setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !(root && have_setpriv) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run as root with setpriv"
        );
        eprintln!("SKIP: needs root and setpriv to switch to an unprivileged user");
        return;
    }
    let manifests = tempfile::tempdir().expect("tempdir");
    let perms = |p: &std::path::Path, mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    perms(manifests.path(), 0o755);
    // The checkout may not be reachable for an unprivileged user: run a copy from here.
    let exe = manifests.path().join("clusterdns");
    std::fs::copy(env!("CARGO_BIN_EXE_clusterdns"), &exe).expect("copy binary");
    perms(&exe, 0o755);
    let manifests_dir = manifests.path().join("m");
    std::fs::create_dir(&manifests_dir).expect("mkdir");
    for f in std::fs::read_dir(example()).expect("example").flatten() {
        std::fs::copy(f.path(), manifests_dir.join(f.file_name())).expect("copy");
    }
    let ip = "127.0.0.153";
    let run = |caps: bool| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        if caps {
            c.args([
                "--inh-caps=+net_bind_service",
                "--ambient-caps=+net_bind_service",
            ]);
        } else {
            c.args(["--inh-caps=-all"]);
        }
        c.arg(&exe)
            .args(["serve", "--upstream", "off", "--manifests"])
            .arg(&manifests_dir)
            .args([
                "--listen",
                &format!("{ip}:53"),
                "--admin-listen",
                "off",
                "--lameduck",
                "0s",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv runs")
    };

    let out = run(false).wait_with_output().expect("exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {ip}:53 (udp)"))
            && err.contains("ermission denied"),
        "{err}"
    );

    let mut child = run(true);
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    read_until(&mut lines, "listening");
    assert_eq!(
        rcode(
            53,
            ip,
            &a_query(&["frontend", "shop", "svc", "cluster", "local"])
        ),
        Some(0)
    );
    let _ = child.kill();
    let _ = child.wait();
}
