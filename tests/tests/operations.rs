//! What an operator sees: /health, /ready through sync and shutdown, and /metrics moving by
//! exactly the queries sent, parsed with a Prometheus text parser.

use std::time::Duration;

use integration::apiserver::ApiServer;
use integration::{
    build_query, eventually, fixture_cluster, http_get, metric, start_kube_server, start_server,
    tcp_exchange, udp_exchange,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_after_sync_and_not_once_shutdown_begins() {
    let api = ApiServer::start().await;
    api.apply(json!({"kind": "Namespace", "metadata": {"name": "a"}}));
    api.set_list_delay(Some(Duration::from_secs(2)));
    let srv = start_kube_server(&api.kubeconfig(), |c| {
        c.startup_timeout = Duration::from_millis(200)
    })
    .await;
    let admin = srv.admin_addr().expect("admin endpoint");
    tokio::task::spawn_blocking(move || {
        assert_eq!(http_get(admin, "/health"), (200, "ok\n".into()));
        // Even after the start-up timeout (negatives answered from partial data), not ready.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            http_get(admin, "/ready"),
            (503, "not ready: discovery has not synced yet\n".into())
        );
        assert_eq!(http_get(admin, "/nope").0, 404);
    })
    .await
    .expect("client");
    let ok = eventually(Duration::from_secs(20), || {
        http_get(admin, "/ready").0 == 200
    })
    .await;
    assert!(ok, "never ready");
    assert_eq!(http_get(admin, "/ready").1, "ready\n");

    // Lameduck: not ready at once, but DNS keeps answering.
    srv.begin_shutdown();
    assert_eq!(
        http_get(admin, "/ready"),
        (503, "not ready: shutting down\n".into())
    );
    let dns = srv.server.local_addrs()[0];
    let q = build_query(1, "a.svc.cluster.local.", "A", None, false, true);
    assert_eq!(udp_exchange(dns, &q).expect("still answering")[3] & 0x0F, 0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_queries_sent() {
    let srv = start_server(&fixture_cluster(), |_| {}).await;
    let admin = srv.admin_addr().expect("admin endpoint");
    let dns = srv.server.local_addrs()[0];
    let server = format!("dns://{dns}");
    tokio::task::spawn_blocking(move || {
        let before = http_get(admin, "/metrics").1;
        let req = |text: &str, proto: &str, zone: &str, t: &str| {
            metric(
                text,
                "clusterdns_dns_requests_total",
                &[
                    ("server", &server),
                    ("proto", proto),
                    ("zone", zone),
                    ("type", t),
                    ("family", "1"),
                ],
            )
        };
        let resp = |text: &str, zone: &str, rcode: &str| {
            metric(
                text,
                "clusterdns_dns_responses_total",
                &[("server", &server), ("zone", zone), ("rcode", rcode)],
            )
        };
        for i in 0..7 {
            udp_exchange(
                dns,
                &build_query(
                    i,
                    "web.alpha.svc.cluster.local.",
                    "A",
                    Some(1232),
                    false,
                    true,
                ),
            )
            .expect("udp");
        }
        for i in 0..3 {
            udp_exchange(
                dns,
                &build_query(
                    i,
                    "nope.alpha.svc.cluster.local.",
                    "AAAA",
                    None,
                    false,
                    true,
                ),
            )
            .expect("udp");
        }
        for i in 0..2 {
            tcp_exchange(
                dns,
                &build_query(i, "1.1.96.10.in-addr.arpa.", "PTR", None, false, true),
            )
            .expect("tcp");
        }
        udp_exchange(
            dns,
            &build_query(1, "example.com.", "MX", None, false, true),
        )
        .expect("udp");
        let after = http_get(admin, "/metrics").1;
        let d = |f: &dyn Fn(&str) -> f64| f(&after) - f(&before);
        assert_eq!(d(&|t| req(t, "udp", "cluster.local.", "A")), 7.0);
        assert_eq!(d(&|t| req(t, "udp", "cluster.local.", "AAAA")), 3.0);
        assert_eq!(d(&|t| req(t, "tcp", "in-addr.arpa.", "PTR")), 2.0);
        assert_eq!(d(&|t| req(t, "udp", ".", "MX")), 1.0);
        assert_eq!(d(&|t| resp(t, "cluster.local.", "NOERROR")), 7.0);
        assert_eq!(d(&|t| resp(t, "cluster.local.", "NXDOMAIN")), 3.0);
        assert_eq!(d(&|t| resp(t, "in-addr.arpa.", "NOERROR")), 2.0);
        assert_eq!(d(&|t| resp(t, ".", "REFUSED")), 1.0);
        let count = |t: &str| {
            metric(
                t,
                "clusterdns_dns_request_duration_seconds_count",
                &[
                    ("server", &server),
                    ("zone", "cluster.local."),
                    ("type", "A"),
                ],
            )
        };
        assert_eq!(d(&count), 7.0);
        let size = |t: &str| {
            metric(
                t,
                "clusterdns_dns_response_size_bytes_count",
                &[
                    ("server", &server),
                    ("zone", "in-addr.arpa."),
                    ("proto", "tcp"),
                ],
            )
        };
        assert_eq!(d(&size), 2.0);
        assert_eq!(metric(&after, "clusterdns_panics_total", &[]), 0.0);
        assert_eq!(
            metric(
                &after,
                "clusterdns_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
    })
    .await
    .expect("client");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programming_latency_is_exported() {
    let api = ApiServer::start().await;
    api.apply(json!({"kind": "Namespace", "metadata": {"name": "a"}}));
    let srv = start_kube_server(&api.kubeconfig(), |_| {}).await;
    let admin = srv.admin_addr().expect("admin");
    assert!(eventually(Duration::from_secs(20), || srv.view.load().listed).await);
    let count = |t: &str| {
        metric(
            t,
            "clusterdns_kubernetes_dns_programming_duration_seconds_count",
            &[],
        )
    };
    let before = count(&http_get(admin, "/metrics").1);
    api.apply(json!({"kind": "Service", "metadata": {"name": "web", "namespace": "a"}, "spec": {"clusterIP": "10.96.0.99"}}));
    let ok = eventually(Duration::from_secs(20), || {
        count(&http_get(admin, "/metrics").1) > before
    })
    .await;
    assert!(ok, "a change was programmed and measured");
    srv.shutdown().await;
}
