//! Kubernetes discovery at scale, measured: the generated cluster fed through the API server
//! double to the real `clusterdns` binary (release), reporting
//! - time from start to ready (a known name answers and an unknown one is NXDOMAIN, i.e. synced),
//! - the server's peak resident memory,
//! - p50/p99/max latency from an update in the API to the changed answer, while updates arrive
//!   at a fixed rate.
//!
//!   python3 ../shared/bench/gen_cluster.py /tmp/cluster
//!   cargo build --release
//!   cargo bench -p integration --bench kube_sync -- /tmp/cluster/manifests [RATE] [SECONDS]
//!
//! Not a test: it asserts nothing about speed and prints numbers for the README and notes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::apiserver::ApiServer;
use serde_json::json;

fn vm(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_else(|| "?".into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!(
            "usage: cargo bench -p integration --bench kube_sync -- MANIFESTS_DIR [RATE] [SECONDS]"
        );
        std::process::exit(64);
    };
    let rate: u64 = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(100);
    let secs: u64 = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(20);
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/clusterdns");
    assert!(
        bin.is_file(),
        "build the server first: cargo build --release"
    );

    let api = Arc::new(ApiServer::start().await);
    let t = Instant::now();
    api.load_dir(&dir);
    eprintln!("double loaded {} in {:?}", dir.display(), t.elapsed());

    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let start = Instant::now();
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", &addr.to_string(), "--kubeconfig"])
        .arg(api.kubeconfig())
        .args([
            "--startup-timeout",
            "10m",
            "--upstream",
            "off",
            "--admin-listen",
            "off",
        ])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let pid = child.id();

    // Ready: a name from the last namespace answers and a missing one is NXDOMAIN (synced).
    let known = "svc0.ns99.svc.cluster.local.";
    loop {
        let ok = tokio::task::spawn_blocking(move || {
            lookup_quiet(addr, known).is_some_and(|r| r == 0)
                && lookup_quiet(addr, "nope.ns0.svc.cluster.local.").is_some_and(|r| r == 3)
        })
        .await
        .expect("probe");
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "not ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = start.elapsed();
    println!("start to ready: {:.2} s", ready.as_secs_f64());
    println!(
        "rss after sync: {} kB (peak {} kB)",
        vm(pid, "VmRSS:"),
        vm(pid, "VmHWM:")
    );

    // Updates at a fixed rate: each moves one service to a new cluster IP; a prober per update
    // polls until the answer shows it.
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut probes = tokio::task::JoinSet::new();
    let began = Instant::now();
    for i in 0..total {
        let due = began + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (ns, svc) = (i % 100, (i / 100) % 100);
        if (svc + 1) % 10 == 0 {
            continue; // headless in the generated cluster
        }
        let ip = format!(
            "10.{}.{}.{}",
            100 + (i >> 16) % 100,
            (i >> 8) % 256,
            i % 256
        );
        api.apply(json!({"kind": "Service", "metadata": {"name": format!("svc{svc}"), "namespace": format!("ns{ns}")},
                         "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}));
        let sent = Instant::now();
        let name = format!("svc{svc}.ns{ns}.svc.cluster.local.");
        probes.spawn_blocking(move || {
            loop {
                if answer_of(addr, &name).is_some_and(|d| d == [ip.as_str()]) {
                    return Some(sent.elapsed());
                }
                if sent.elapsed() > Duration::from_secs(60) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
    let mut lat: Vec<Duration> = Vec::new();
    let mut lost = 0;
    while let Some(r) = probes.join_next().await {
        match r.expect("probe") {
            Some(d) => lat.push(d),
            None => lost += 1,
        }
    }
    lat.sort();
    let q =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "update to answer at {rate}/s for {secs} s: {} updates, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, never seen {lost}",
        lat.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    println!("peak rss: {} kB", vm(pid, "VmHWM:"));
    let _ = child.kill();
    let _ = child.wait();
}

/// The A records of `name`, or None when no reply came (a lost datagram is not an answer).
fn answer_of(addr: SocketAddr, name: &str) -> Option<Vec<String>> {
    let q = integration::build_query(9, name, "A", Some(1232), false, true);
    let r = integration::udp_exchange(addr, &q).ok()?;
    let m = hickory_proto::op::Message::from_vec(&r).ok()?;
    Some(m.answers.iter().map(|a| a.data.to_string()).collect())
}

/// The rcode of an A query, or None when no reply came within 100 ms (so that a probe sent
/// before the server listens does not hold up the start-to-ready figure).
fn lookup_quiet(addr: SocketAddr, name: &str) -> Option<u8> {
    let q = integration::build_query(7, name, "A", Some(1232), false, true);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    sock.send_to(&q, addr).ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    (n >= 12).then_some(buf[3] & 0x0F)
}
