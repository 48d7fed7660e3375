//! A bounded soak: several clients query while the manifests change several times a second.
//! Names that exist before and after every change must always answer, with the right address
//! (an NXDOMAIN or a lost query is a failure), and memory must stay flat. Loopback only, 20 s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use integration::{build_query, start_server, udp_exchange};

const SOAK: Duration = Duration::from_secs(20);

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn service(ns: &str, name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{clusterIP: {ip}}}\n---\n"
    )
}

fn client(addr: SocketAddr, stop: Arc<AtomicBool>, seed: u64) -> (u64, Vec<String>) {
    let mut rng = seed;
    let (mut ok, mut failures) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (rng >> 33) % 51;
        let (name, want) = if i == 50 {
            (
                "always.churn.svc.cluster.local.".to_string(),
                [10, 101, 0, 1],
            )
        } else {
            (
                format!("s{i}.stable.svc.cluster.local."),
                [10, 100, 0, i as u8 + 1],
            )
        };
        let q = build_query((rng >> 48) as u16, &name, "A", Some(1232), false, true);
        match udp_exchange(addr, &q) {
            Ok(r) if r[3] & 0x0F == 0 && r.len() >= 4 && r[r.len() - 15..r.len() - 11] == want => {
                ok += 1
            }
            Ok(r) => failures.push(format!(
                "{name}: rcode {} reply {:02x?}",
                r[3] & 0x0F,
                &r[r.len().saturating_sub(16)..]
            )),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    (ok, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stay_right_while_manifests_churn() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut stable =
        String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: stable}\n---\n");
    for i in 0..50 {
        stable.push_str(&service(
            "stable",
            &format!("s{i}"),
            &format!("10.100.0.{}", i + 1),
        ));
    }
    std::fs::write(dir.path().join("stable.yaml"), stable).expect("write");
    let churn = dir.path().join("churn.yaml");
    let write_churn = |round: u32| {
        // `always` is in every version; the others come and go.
        let mut text = service("churn", "always", "10.101.0.1");
        for j in 0..(round % 30) {
            text.push_str(&service(
                "churn",
                &format!("c{round}-{j}"),
                &format!("10.102.{}.{}", round % 250, j + 1),
            ));
        }
        let tmp = churn.with_extension("tmp~");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &churn).expect("rename");
    };
    write_churn(0);
    let srv = start_server(dir.path(), |_| {}).await;
    let addr = srv.server.local_addrs()[0];

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || client(addr, stop, 0x5EED + i))
        })
        .collect();

    let start = Instant::now();
    let mut rounds = 0;
    let mut rss_warm = 0;
    while start.elapsed() < SOAK {
        rounds += 1;
        write_churn(rounds);
        tokio::time::sleep(Duration::from_millis(150)).await;
        if rss_warm == 0 && start.elapsed() > SOAK / 4 {
            rss_warm = rss_kib();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut failures = Vec::new();
    for c in clients {
        let (ok, f) = c.join().expect("client");
        total += ok;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failures in {} queries, e.g. {:?}",
        failures.len(),
        total,
        &failures[..failures.len().min(5)]
    );
    assert!(total > 1000, "only {total} queries");
    assert!(rounds > 50, "only {rounds} manifest changes");
    let rss_end = rss_kib();
    // Flat: growth after warm-up bounded (the test process holds clients, server and tests).
    assert!(
        rss_end < rss_warm + 64 * 1024,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    srv.shutdown().await;
}
