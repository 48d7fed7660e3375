//! Forwarding, end to end: the server in front of real upstream DNS servers on loopback (UDP,
//! TCP and TLS with a test CA), configured by a real config file that is rewritten while queries
//! flow. Nothing here reaches an address outside this machine.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use integration::upstream::{TestCa, Upstream, Zone};
use integration::{
    build_query, eventually, fixture_cluster, http_get, lookup, metric, start_server, udp_exchange,
};

fn zone(origin: &str, records: &[&str]) -> Zone {
    Zone {
        origin: origin.into(),
        records: records.iter().map(|r| r.to_string()).collect(),
        negative_ttl: 60,
    }
}

async fn server_with(config: &Path) -> (clusterdns::Running, SocketAddr) {
    let path = config.to_path_buf();
    let srv = start_server(&fixture_cluster(), move |c| {
        c.forward = Some(clusterdns::reload::ForwardSource {
            config: Some(path),
            upstreams: vec![],
        });
    })
    .await;
    let addr = srv.server.local_addrs()[0];
    (srv, addr)
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("clusterdns.yaml");
    let tmp = dir.join(".clusterdns.yaml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &p).expect("rename");
    p
}

/// A lookup off the runtime's threads.
async fn ask(addr: SocketAddr, name: &str, qtype: &str) -> (u8, Vec<String>) {
    let (name, qtype) = (name.to_string(), qtype.to_string());
    tokio::task::spawn_blocking(move || lookup(addr, &name, &qtype))
        .await
        .expect("client")
}

fn full(addr: SocketAddr, name: &str, qtype: &str) -> hickory_proto::op::Message {
    let r =
        udp_exchange(addr, &build_query(7, name, qtype, Some(1232), false, true)).expect("reply");
    hickory_proto::op::Message::from_vec(&r).expect("parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_route_to_their_upstreams_and_everything_else_to_the_default() {
    let corp = Upstream::start(
        zone(
            "corp.test.",
            &[
                "db.corp.test. 60 IN A 192.0.2.10",
                "1.0.0.10.in-addr.arpa. 60 IN PTR printer.corp.test.",
            ],
        ),
        None,
    )
    .await;
    let world = Upstream::start(
        zone(
            "example.",
            &[
                "www.example. 60 IN A 192.0.2.80",
                "www.example. 60 IN AAAA 2001:db8::80",
            ],
        ),
        None,
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        &format!(
            "servers:\n- name: corp\n  zones: [corp.test, 10.in-addr.arpa]\n  forward: {{upstreams: [\"{}\"]}}\nupstream_resolvers:\n  upstreams: [\"{}\"]\n",
            corp.addr, world.addr
        ),
    );
    let (srv, addr) = server_with(&cfg).await;

    assert_eq!(
        ask(addr, "db.corp.test.", "A").await,
        (0, vec!["192.0.2.10".into()])
    );
    assert_eq!(
        ask(addr, "www.example.", "AAAA").await,
        (0, vec!["2001:db8::80".into()])
    );
    assert_eq!(
        ask(addr, "nope.example.", "A").await.0,
        3,
        "the upstream's NXDOMAIN"
    );
    // Reverse names: the cluster's own answered here, the others forwarded by zone.
    assert_eq!(
        ask(addr, "1.1.96.10.in-addr.arpa.", "PTR").await,
        (0, vec!["web.alpha.svc.cluster.local.".into()])
    );
    assert_eq!(
        ask(addr, "1.0.0.10.in-addr.arpa.", "PTR").await,
        (0, vec!["printer.corp.test.".into()])
    );
    // Cluster names never leave.
    assert_eq!(
        ask(addr, "web.alpha.svc.cluster.local.", "A").await,
        (0, vec!["10.96.1.1".into()])
    );
    assert_eq!(corp.knobs.asked("db.corp.test."), 1);
    assert_eq!(world.knobs.asked("www.example."), 1);
    assert_eq!(world.knobs.asked("web.alpha.svc.cluster.local."), 0);

    // RA on every answer once forwarding is on, and RD copied.
    let m = tokio::task::spawn_blocking(move || full(addr, "web.alpha.svc.cluster.local.", "A"))
        .await
        .expect("q");
    assert!(m.metadata.recursion_available && m.metadata.authoritative);
    let m = tokio::task::spawn_blocking(move || full(addr, "www.example.", "A"))
        .await
        .expect("q");
    assert!(m.metadata.recursion_available && m.metadata.recursion_desired);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_spread_or_order_the_upstreams() {
    let ups = [
        Upstream::start(zone("example.", &["a.example. 0 IN A 192.0.2.1"]), None).await,
        Upstream::start(zone("example.", &["a.example. 0 IN A 192.0.2.1"]), None).await,
    ];
    for (policy, check) in [("sequential", 0), ("round_robin", 1), ("random", 2)] {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = write_config(
            dir.path(),
            &format!(
                "upstream_resolvers:\n  upstreams: [\"{}\", \"{}\"]\n  policy: {policy}\n",
                ups[0].addr, ups[1].addr
            ),
        );
        // Counted by name: the loop probe also reaches the first upstream once.
        let before: Vec<usize> = ups.iter().map(|u| u.knobs.asked("a.example.")).collect();
        let (srv, addr) = server_with(&cfg).await;
        for _ in 0..40 {
            // TTL 0: never cached, every query goes upstream.
            assert_eq!(ask(addr, "a.example.", "A").await.0, 0);
        }
        let n: Vec<usize> = ups
            .iter()
            .zip(&before)
            .map(|(u, b)| u.knobs.asked("a.example.") - b)
            .collect();
        match check {
            0 => assert_eq!(n, [40, 0], "sequential: always the first"),
            1 => assert_eq!(n, [20, 20], "round robin: alternating"),
            _ => assert!(
                n[0] > 0 && n[1] > 0 && n[0] + n[1] == 40,
                "random: both used ({n:?})"
            ),
        }
        srv.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_skipped_then_taken_back() {
    let first = Upstream::start(zone("example.", &["a.example. 0 IN A 192.0.2.1"]), None).await;
    let second = Upstream::start(zone("example.", &["a.example. 0 IN A 192.0.2.2"]), None).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        &format!(
            "upstream_resolvers:\n  upstreams: [\"{}\", \"{}\"]\n  policy: sequential\n",
            first.addr, second.addr
        ),
    );
    let (srv, addr) = server_with(&cfg).await;
    assert_eq!(ask(addr, "a.example.", "A").await.1, ["192.0.2.1"]);

    first.knobs.silent.store(true, Ordering::Relaxed);
    // Each try waits out the timeout on the first, then the second answers.
    for _ in 0..3 {
        assert_eq!(ask(addr, "a.example.", "A").await.1, ["192.0.2.2"]);
    }
    // Marked down: no longer tried for queries (only probed).
    let asked = first.knobs.asked("a.example.");
    for _ in 0..5 {
        assert_eq!(ask(addr, "a.example.", "A").await.1, ["192.0.2.2"]);
    }
    assert_eq!(
        first.knobs.asked("a.example."),
        asked,
        "a down upstream gets no queries"
    );

    // Back: a probe sees it, and sequential order resumes with it.
    first.knobs.silent.store(false, Ordering::Relaxed);
    let ok = eventually(Duration::from_secs(10), || {
        lookup(addr, "a.example.", "A").1 == ["192.0.2.1"]
    })
    .await;
    assert!(ok, "the upstream was not taken back");

    // All down: SERVFAIL.
    first.knobs.silent.store(true, Ordering::Relaxed);
    second.knobs.silent.store(true, Ordering::Relaxed);
    assert_eq!(ask(addr, "a.example.", "A").await.0, 2);
    let metrics = http_get(srv.admin_addr().expect("admin"), "/metrics").1;
    assert!(
        metric(
            &metrics,
            "clusterdns_forward_requests_total",
            &[("to", &first.addr.to_string())]
        ) >= 2.0
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_udp_replies_are_retried_over_tcp() {
    // 90 A records: about 1500 octets, more than a 1232-octet UDP reply holds.
    let many: Vec<String> = (1..=90)
        .map(|i| format!("big.example. 60 IN A 192.0.2.{i}"))
        .collect();
    let up = Upstream::start(
        Zone {
            origin: "example.".into(),
            records: many,
            negative_ttl: 60,
        },
        None,
    )
    .await;
    up.knobs.truncate_udp.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        &format!("upstream_resolvers:\n  upstreams: [\"{}\"]\n", up.addr),
    );
    let (srv, addr) = server_with(&cfg).await;
    // Over TCP to us: the whole answer, fetched from the upstream over TCP after its TC.
    let q = build_query(1, "big.example.", "A", Some(1232), false, true);
    let r = tokio::task::spawn_blocking(move || integration::tcp_exchange(addr, &q))
        .await
        .expect("q")
        .expect("reply");
    let m = hickory_proto::op::Message::from_vec(&r).expect("parses");
    assert_eq!(m.answers.len(), 90);
    assert!(up.knobs.tcp_queries.load(Ordering::Relaxed) >= 1);
    // Over UDP to us (1232 bytes): too big, so TC from us too, never a partial answer.
    let m = tokio::task::spawn_blocking(move || full(addr, "big.example.", "A"))
        .await
        .expect("q");
    assert!(m.metadata.truncation && m.answers.is_empty());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_tls_upstreams_are_verified() {
    let ca = TestCa::new("dns.test");
    let up = Upstream::start(
        zone("example.", &["tls.example. 60 IN A 192.0.2.53"]),
        Some(&ca),
    )
    .await;
    let tls = up.tls_addr.expect("tls");
    let dir = tempfile::tempdir().expect("tmp");
    let good = format!(
        "upstream_resolvers:\n  upstreams: [\"tls://{tls}\"]\n  tls: {{server_name: dns.test, ca_file: {}}}\n",
        ca.ca_file.display()
    );
    let cfg = write_config(dir.path(), &good);
    let (srv, addr) = server_with(&cfg).await;
    assert_eq!(
        ask(addr, "tls.example.", "A").await,
        (0, vec!["192.0.2.53".into()])
    );
    assert!(up.knobs.tls_queries.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        up.knobs.udp_queries.load(Ordering::Relaxed),
        0,
        "nothing in the clear"
    );
    srv.shutdown().await;

    // A certificate for another name is refused: SERVFAIL, and the upstream answers nothing.
    let bad = good.replace("server_name: dns.test", "server_name: other.test");
    let cfg = write_config(dir.path(), &bad);
    let before = up.knobs.tls_queries.load(Ordering::Relaxed);
    let (srv, addr) = server_with(&cfg).await;
    assert_eq!(ask(addr, "tls2.example.", "A").await.0, 2);
    assert_eq!(up.knobs.tls_queries.load(Ordering::Relaxed), before);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_counts_down_and_serves_stale_only_when_allowed() {
    let up = Upstream::start(
        zone(
            "example.",
            &[
                "long.example. 100 IN A 192.0.2.1",
                "short.example. 1 IN A 192.0.2.2",
            ],
        ),
        None,
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    for stale in [false, true] {
        let cfg = write_config(
            dir.path(),
            &format!(
                "upstream_resolvers:\n  upstreams: [\"{}\"]\ncache:\n  max_negative_ttl: 30s\n  serve_stale: {}\n",
                up.addr,
                if stale { "1h" } else { "0" }
            ),
        );
        up.knobs.silent.store(false, Ordering::Relaxed);
        let (srv, addr) = server_with(&cfg).await;
        let base = up.knobs.asked("long.example.");
        assert_eq!(ask(addr, "long.example.", "A").await.1, ["192.0.2.1"]);
        assert_eq!(ask(addr, "Long.Example.", "A").await.1, ["192.0.2.1"]);
        assert_eq!(
            up.knobs.asked("long.example."),
            base + 1,
            "the second came from the cache"
        );
        // Negative answers are cached too (min(SOA TTL 300, MINIMUM 60), capped at 30 s).
        let nx = up.knobs.asked("nope.example.");
        assert_eq!(ask(addr, "nope.example.", "A").await.0, 3);
        assert_eq!(ask(addr, "nope.example.", "A").await.0, 3);
        assert_eq!(up.knobs.asked("nope.example."), nx + 1);
        assert_eq!(ask(addr, "short.example.", "A").await.1, ["192.0.2.2"]);

        // TTLs count down (after more than a second, at most 99 of 100 remain).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let m = tokio::task::spawn_blocking(move || full(addr, "long.example.", "A"))
            .await
            .expect("q");
        assert!(m.answers[0].ttl <= 99, "ttl {}", m.answers[0].ttl);

        // The upstream answers SERVFAIL: a good cached answer wins (fresh, or stale when allowed).
        up.knobs.servfail.store(true, Ordering::Relaxed);
        let (rcode, data) = ask(addr, "short.example.", "A").await;
        if stale {
            assert_eq!(
                (rcode, data),
                (0, vec!["192.0.2.2".to_string()]),
                "stale beats the upstream's SERVFAIL"
            );
        } else {
            assert_eq!(rcode, 2, "expired, no serve_stale: the upstream's SERVFAIL");
        }
        up.knobs.servfail.store(false, Ordering::Relaxed);

        // The upstream goes silent: fresh entries still answer; expired ones only with serve_stale.
        up.knobs.silent.store(true, Ordering::Relaxed);
        assert_eq!(ask(addr, "long.example.", "A").await.1, ["192.0.2.1"]);
        let (rcode, data) = ask(addr, "short.example.", "A").await;
        if stale {
            assert_eq!(
                (rcode, data),
                (0, vec!["192.0.2.2".to_string()]),
                "stale answer served"
            );
            let m = tokio::task::spawn_blocking(move || full(addr, "short.example.", "A"))
                .await
                .expect("q");
            assert_eq!(
                m.answers[0].ttl, 30,
                "stale answers carry TTL 30 (RFC 8767)"
            );
        } else {
            assert_eq!(rcode, 2, "expired and no serve_stale: SERVFAIL");
        }
        let metrics = http_get(srv.admin_addr().expect("admin"), "/metrics").1;
        assert!(
            metric(
                &metrics,
                "clusterdns_cache_hits_total",
                &[("type", "success")]
            ) >= 2.0
        );
        assert!(
            metric(
                &metrics,
                "clusterdns_cache_hits_total",
                &[("type", "denial")]
            ) >= 1.0
        );
        assert!(metric(&metrics, "clusterdns_cache_misses_total", &[]) >= 3.0);
        srv.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_names_outside_the_zone_are_chased_through_the_forwarder() {
    let up = Upstream::start(zone("com.", &["example.com. 60 IN A 192.0.2.80"]), None).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        &format!("upstream_resolvers:\n  upstreams: [\"{}\"]\n", up.addr),
    );
    let (srv, addr) = server_with(&cfg).await;
    let m = tokio::task::spawn_blocking(move || full(addr, "ext.alpha.svc.cluster.local.", "A"))
        .await
        .expect("q");
    let got: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {}", r.record_type(), r.data))
        .collect();
    assert_eq!(got, ["CNAME example.com.", "A 192.0.2.80"]);
    assert_eq!(
        m.answers[0].name.to_string(),
        "ext.alpha.svc.cluster.local."
    );
    assert!(m.metadata.recursion_available);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing_and_bad_reloads_keep_the_running_config() {
    let a = Upstream::start(zone("example.", &["svc.example. 0 IN A 192.0.2.1"]), None).await;
    let b = Upstream::start(zone("example.", &["svc.example. 0 IN A 192.0.2.2"]), None).await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = |u: &Upstream| format!("upstream_resolvers:\n  upstreams: [\"{}\"]\n", u.addr);
    let cfg = write_config(dir.path(), &config(&a));
    let (srv, addr) = server_with(&cfg).await;

    // Steady load from a client thread while the file is rewritten: every query answered.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let q = build_query(ok as u16, "svc.example.", "A", Some(1232), false, true);
                match udp_exchange(addr, &q) {
                    Ok(r) if r[3] & 0x0F == 0 => ok += 1,
                    Ok(r) => failed.push(format!("rcode {}", r[3] & 0x0F)),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..6 {
        write_config(dir.path(), &config(if i % 2 == 0 { &b } else { &a }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = client.join().expect("client");
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "only {ok} queries");
    let reloader = srv.reloader.clone().expect("reloader");
    assert!(
        reloader.reloads.load(Ordering::Relaxed) >= 5,
        "{}",
        reloader.reloads.load(Ordering::Relaxed)
    );
    assert_eq!(
        ask(addr, "svc.example.", "A").await.1,
        ["192.0.2.1"],
        "the last config (a) is in force"
    );

    // A broken file: logged, counted, and the running config stays.
    write_config(dir.path(), "upstream_resolvers:\n  upstreamz: []\n");
    let ok = eventually(Duration::from_secs(10), || {
        reloader.reload_failures.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(ok, "the bad file was not seen");
    assert_eq!(ask(addr, "svc.example.", "A").await.1, ["192.0.2.1"]);
    // SIGHUP's path: an explicit reload of the still-broken file fails the same way.
    srv.reload();
    assert!(reloader.reload_failures.load(Ordering::Relaxed) >= 2);
    let metrics = http_get(srv.admin_addr().expect("admin"), "/metrics").1;
    assert!(metric(&metrics, "clusterdns_reload_failed_total", &[]) >= 2.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_loop_is_detected_and_not_followed() {
    // First a harmless upstream; then the config is pointed at the server itself.
    let up = Upstream::start(zone("example.", &["x.example. 60 IN A 192.0.2.1"]), None).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        &format!("upstream_resolvers:\n  upstreams: [\"{}\"]\n", up.addr),
    );
    let (srv, addr) = server_with(&cfg).await;
    write_config(
        dir.path(),
        &format!("upstream_resolvers:\n  upstreams: [\"{addr}\"]\n"),
    );
    srv.reload();
    let reloader = srv.reloader.clone().expect("reloader");
    // A forwarded query sends the loop probe, which comes straight back.
    let _ = ask(addr, "y.example.", "A").await;
    let detected = eventually(Duration::from_secs(10), || {
        reloader
            .forwarder
            .load_full()
            .is_some_and(|f| f.loop_detected.load(Ordering::Relaxed))
    })
    .await;
    assert!(detected, "the loop was not detected");
    // Once detected, nothing more is forwarded: SERVFAIL, and the query is seen exactly once
    // (by the server itself, as the client's), never again as its own forwarded copy.
    let admin = srv.admin_addr().expect("admin");
    let requests = |m: &str| metric(m, "clusterdns_dns_requests_total", &[("zone", ".")]);
    let before = requests(&http_get(admin, "/metrics").1);
    assert_eq!(ask(addr, "z.example.", "A").await.0, 2);
    let after = requests(&http_get(admin, "/metrics").1);
    assert_eq!(
        after - before,
        1.0,
        "forwarded (to this server) after the loop was found"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting_covers_forwarded_and_cached_answers() {
    let up = Upstream::start(
        zone("example.", &["amp.example. 300 IN TXT big-answer"]),
        None,
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        &format!("upstream_resolvers:\n  upstreams: [\"{}\"]\n", up.addr),
    );
    let path = cfg.clone();
    let srv = start_server(&fixture_cluster(), move |c| {
        c.forward = Some(clusterdns::reload::ForwardSource {
            config: Some(path),
            upstreams: vec![],
        });
        c.server.rrl = Some(Arc::new(clusterdns::rrl::Rrl::new(10, 0, false)));
    })
    .await;
    let addr = srv.server.local_addrs()[0];
    assert_eq!(ask(addr, "amp.example.", "TXT").await.0, 0, "cached now");
    let answered = tokio::task::spawn_blocking(move || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..100u16 {
            s.send_to(
                &build_query(i, "amp.example.", "TXT", None, false, true),
                addr,
            )
            .expect("send");
        }
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        let mut n = 0;
        while s.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    })
    .await
    .expect("client");
    assert!(
        answered < 60,
        "{answered} of 100 forwarded answers went out past a 10/s limit"
    );
    srv.shutdown().await;
}
