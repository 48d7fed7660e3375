//! The Kubernetes API source, end to end: the real `kube::Client` (from a kubeconfig) against
//! the API server double, the server answering over real UDP. One test per fault the source
//! claims to survive.

use std::net::SocketAddr;
use std::time::Duration;

use integration::apiserver::{ApiServer, Res};
use integration::{
    eventually, fixture_cluster, load_cases, lookup, run_table, start_kube_server, udp_exchange,
};
use serde_json::{Value, json};

const NOERROR: u8 = 0;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;
const WAIT: Duration = Duration::from_secs(20);

fn ns(name: &str) -> Value {
    json!({"kind": "Namespace", "metadata": {"name": name}})
}

fn svc(ns: &str, name: &str, ip: &str) -> Value {
    json!({"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, "clusterIPs": [ip]}})
}

fn headless(ns: &str, name: &str) -> Value {
    json!({"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": "None"}})
}

fn slice(ns: &str, name: &str, svc: &str, endpoints: Value) -> Value {
    json!({"kind": "EndpointSlice", "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "endpoints": endpoints})
}

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({"kind": "Pod", "metadata": {"name": name, "namespace": ns}, "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// Waits until `name` answers `rcode` with exactly `data`.
async fn until(addr: SocketAddr, name: &str, qtype: &str, rcode: u8, data: &[&str]) {
    let ok = eventually(WAIT, || {
        let (r, d) = lookup(addr, name, qtype);
        r == rcode && d == data
    })
    .await;
    assert!(
        ok,
        "{name} {qtype}: got {:?}, want ({rcode}, {data:?})",
        lookup(addr, name, qtype)
    );
}

/// A server on the double's cluster, synced, and its DNS address.
async fn serving(api: &ApiServer) -> (clusterdns::Running, SocketAddr) {
    let srv = start_kube_server(&api.kubeconfig(), |_| {}).await;
    synced(&srv).await;
    let addr = srv.server.local_addrs()[0];
    (srv, addr)
}

async fn synced(srv: &clusterdns::Running) {
    let ok = eventually(WAIT, || srv.view.load().synced).await;
    assert!(ok, "the view never synced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_through_the_api() {
    let api = ApiServer::start().await;
    api.load_dir(&fixture_cluster());
    let (srv, addr) = serving(&api).await;
    tokio::task::spawn_blocking(move || {
        run_table(&load_cases("contract.cases"), |_, q| udp_exchange(addr, q))
    })
    .await
    .expect("table");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_of_every_kind_shows_in_answers() {
    let api = ApiServer::start().await;
    let (srv, addr) = serving(&api).await;

    // Namespace
    until(addr, "live.svc.cluster.local.", "A", NXDOMAIN, &[]).await;
    api.apply(ns("live"));
    until(addr, "live.svc.cluster.local.", "A", NOERROR, &[]).await;

    // Service
    api.apply(svc("live", "web", "10.96.7.1"));
    until(
        addr,
        "web.live.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.7.1"],
    )
    .await;
    api.apply(svc("live", "web", "10.96.7.2"));
    until(
        addr,
        "web.live.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.7.2"],
    )
    .await;

    // EndpointSlice
    api.apply(headless("live", "db"));
    until(addr, "db.live.svc.cluster.local.", "A", NXDOMAIN, &[]).await;
    api.apply(slice(
        "live",
        "db-1",
        "db",
        json!([{"addresses": ["10.1.7.1"]}]),
    ));
    until(
        addr,
        "db.live.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.1.7.1"],
    )
    .await;
    api.apply(slice(
        "live",
        "db-1",
        "db",
        json!([{"addresses": ["10.1.7.1"]}, {"addresses": ["10.1.7.2"], "hostname": "db-1"}]),
    ));
    until(
        addr,
        "db.live.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.1.7.1", "10.1.7.2"],
    )
    .await;
    until(
        addr,
        "db-1.db.live.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.1.7.2"],
    )
    .await;
    api.delete("EndpointSlice", "live", "db-1");
    until(addr, "db.live.svc.cluster.local.", "A", NXDOMAIN, &[]).await;

    // Pod (verified mode)
    api.apply(pod("live", "p", "10.1.7.9"));
    until(
        addr,
        "10-1-7-9.live.pod.cluster.local.",
        "A",
        NOERROR,
        &["10.1.7.9"],
    )
    .await;
    api.delete("Pod", "live", "p");
    until(addr, "10-1-7-9.live.pod.cluster.local.", "A", NXDOMAIN, &[]).await;

    // Deletes
    api.delete("Service", "live", "web");
    until(addr, "web.live.svc.cluster.local.", "A", NXDOMAIN, &[]).await;
    api.delete("Service", "live", "db");
    api.delete("Namespace", "", "live");
    until(addr, "live.svc.cluster.local.", "A", NXDOMAIN, &[]).await;

    // Every change was measured from event to answer.
    assert!(
        srv.metrics.programming_duration.count() >= 10,
        "{}",
        srv.metrics.programming_duration.count()
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_until_synced_then_answers() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(svc("a", "web", "10.96.8.1"));
    api.set_list_delay(Some(Duration::from_secs(3)));
    let srv = start_kube_server(&api.kubeconfig(), |c| {
        c.startup_timeout = Duration::from_secs(60)
    })
    .await;
    let addr = srv.server.local_addrs()[0];
    // Lists take 3 s: meanwhile nothing in the zone may be NXDOMAIN.
    assert_eq!(lookup(addr, "web.a.svc.cluster.local.", "A").0, SERVFAIL);
    assert_eq!(lookup(addr, "nope.a.svc.cluster.local.", "A").0, SERVFAIL);
    assert!(!srv.view.load().synced);
    until(
        addr,
        "web.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.8.1"],
    )
    .await;
    assert!(srv.view.load().synced);
    assert_eq!(lookup(addr, "nope.a.svc.cluster.local.", "A").0, NXDOMAIN);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_startup_timeout_it_serves_what_it_has() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(svc("a", "web", "10.96.8.1"));
    api.fail_next_lists(u32::MAX);
    let srv = start_kube_server(&api.kubeconfig(), |c| {
        c.startup_timeout = Duration::from_secs(1)
    })
    .await;
    let addr = srv.server.local_addrs()[0];
    // Lists fail (HTTP 500): SERVFAIL until the start-up timeout, then authoritative answers
    // from the (empty) data it has.
    until(addr, "web.a.svc.cluster.local.", "A", NXDOMAIN, &[]).await;
    // The API comes back: the names appear.
    api.fail_next_lists(0);
    until(
        addr,
        "web.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.8.1"],
    )
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_on_watch_relists_and_swaps_whole() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(svc("a", "keep", "10.96.9.1"));
    api.apply(svc("a", "gone", "10.96.9.2"));
    let (srv, addr) = serving(&api).await;
    until(
        addr,
        "gone.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.9.2"],
    )
    .await;
    let lists = api.lists(Res::Services);

    // The history the client would resume from is lost while it is cut off: its resumed watch
    // gets an ERROR event with 410, it relists, and the relist is swapped in whole. (Cut off
    // first: an open watch would stream the changes live and need no relist.)
    api.set_down(true);
    api.delete("Service", "a", "gone");
    api.apply(svc("a", "new", "10.96.9.3"));
    api.compact();
    api.set_down(false);
    until(
        addr,
        "new.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.9.3"],
    )
    .await;
    until(addr, "gone.a.svc.cluster.local.", "A", NXDOMAIN, &[]).await;
    assert_eq!(
        lookup(addr, "keep.a.svc.cluster.local.", "A"),
        (NOERROR, vec!["10.96.9.1".to_string()])
    );
    assert!(api.lists(Res::Services) > lists, "a relist happened");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_on_list_is_retried_while_the_last_snapshot_is_served() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(svc("a", "web", "10.96.10.1"));
    let (srv, addr) = serving(&api).await;
    let lists = api.lists(Res::Services);

    // Force relists, and make the first two Service lists fail with 410 Gone.
    api.expire_next_lists(Res::Services, 2);
    api.restart();
    api.apply(svc("a", "web", "10.96.10.2"));
    // While the lists fail the old answer stays (never SERVFAIL, never NXDOMAIN).
    let mut seen_old = 0;
    let ok = eventually(WAIT, || {
        let (r, d) = lookup(addr, "web.a.svc.cluster.local.", "A");
        assert_eq!(r, NOERROR, "web answered {r} during the relist");
        if d == ["10.96.10.1"] {
            seen_old += 1;
        }
        d == ["10.96.10.2"]
    })
    .await;
    assert!(ok, "the relist never succeeded");
    assert!(
        api.lists(Res::Services) >= lists + 3,
        "two failed lists, then a good one"
    );
    assert!(
        seen_old > 0,
        "the old answer was served while the lists failed"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_resume() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    let (srv, addr) = serving(&api).await;
    for i in 1..=3 {
        api.drop_connections();
        let ip = format!("10.96.11.{i}");
        api.apply(svc("a", "web", &ip));
        until(addr, "web.a.svc.cluster.local.", "A", NOERROR, &[&ip]).await;
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_loses_history_is_survived() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(svc("a", "web", "10.96.12.1"));
    api.apply(svc("a", "old", "10.96.12.9"));
    let (srv, addr) = serving(&api).await;

    // Down for a while; changes happen meanwhile; the old answers keep being served.
    api.set_down(true);
    api.restart();
    api.apply(svc("a", "web", "10.96.12.2"));
    api.delete("Service", "a", "old");
    api.apply(svc("a", "added", "10.96.12.3"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        lookup(addr, "web.a.svc.cluster.local.", "A"),
        (NOERROR, vec!["10.96.12.1".to_string()])
    );
    api.set_down(false);
    until(
        addr,
        "web.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.12.2"],
    )
    .await;
    until(addr, "old.a.svc.cluster.local.", "A", NXDOMAIN, &[]).await;
    until(
        addr,
        "added.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.12.3"],
    )
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_relist_serves_the_last_snapshot() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(svc("a", "web", "10.96.13.1"));
    let (srv, addr) = serving(&api).await;

    api.set_list_delay(Some(Duration::from_secs(2)));
    api.restart();
    api.apply(svc("a", "web", "10.96.13.2"));
    let mut during = 0;
    let ok = eventually(WAIT, || {
        let (r, d) = lookup(addr, "web.a.svc.cluster.local.", "A");
        assert_eq!(r, NOERROR, "answered {r} during a slow relist");
        during += 1;
        d == ["10.96.13.2"]
    })
    .await;
    assert!(
        ok && during > 1,
        "answered from the last snapshot {during} times, then the new one"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_that_do_not_convert_keep_their_last_good_version() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(svc("a", "web", "10.96.14.1"));
    let (srv, addr) = serving(&api).await;
    until(
        addr,
        "web.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.14.1"],
    )
    .await;

    api.apply(svc("a", "web", "not-an-ip"));
    api.apply(svc("a", "bad", "300.1.1.1"));
    api.apply(svc("a", "marker", "10.96.14.9"));
    until(
        addr,
        "marker.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.14.9"],
    )
    .await;
    assert_eq!(
        lookup(addr, "web.a.svc.cluster.local.", "A"),
        (NOERROR, vec!["10.96.14.1".to_string()])
    );
    assert_eq!(lookup(addr, "bad.a.svc.cluster.local.", "A").0, NXDOMAIN);
    // Fixed: taken.
    api.apply(svc("a", "web", "10.96.14.2"));
    until(
        addr,
        "web.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.14.2"],
    )
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_option_watches_and_serves_only_those() {
    let api = ApiServer::start().await;
    api.load_dir(&fixture_cluster());
    let srv = start_kube_server(&api.kubeconfig(), |c| {
        if let clusterdns::Source::Kubernetes { options, .. } = &mut c.source {
            options.namespaces = vec!["alpha".into()];
        }
        c.view.namespaces = Some(["alpha".to_string()].into());
    })
    .await;
    synced(&srv).await;
    let addr = srv.server.local_addrs()[0];
    until(
        addr,
        "web.alpha.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.1.1"],
    )
    .await;
    assert_eq!(lookup(addr, "big.beta.svc.cluster.local.", "A").0, NXDOMAIN);
    assert_eq!(
        lookup(addr, "alpha.svc.cluster.local.", "A").0,
        NOERROR,
        "a listed namespace exists"
    );
    assert_eq!(
        api.lists(Res::Namespaces),
        0,
        "Namespace objects are not read"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_pod_names() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(headless("a", "db"));
    api.apply(slice(
        "a",
        "db-1",
        "db",
        json!([{"addresses": ["10.1.15.1"], "targetRef": {"kind": "Pod", "name": "db-7f9c-x2x", "namespace": "a"}},
               {"addresses": ["10.1.15.2"], "hostname": "named", "targetRef": {"kind": "Pod", "name": "other", "namespace": "a"}}]),
    ));
    let srv = start_kube_server(&api.kubeconfig(), |c| c.view.endpoint_pod_names = true).await;
    synced(&srv).await;
    let addr = srv.server.local_addrs()[0];
    until(
        addr,
        "db-7f9c-x2x.db.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.1.15.1"],
    )
    .await;
    assert_eq!(
        lookup(addr, "named.db.a.svc.cluster.local.", "A").1,
        ["10.1.15.2"],
        "a hostname wins"
    );
    assert_eq!(
        lookup(addr, "10-1-15-1.db.a.svc.cluster.local.", "A").0,
        NXDOMAIN
    );
    srv.shutdown().await;
}

fn soa_serial(addr: SocketAddr) -> u32 {
    let q = integration::build_query(3, "cluster.local.", "SOA", Some(1232), false, true);
    let r = udp_exchange(addr, &q).expect("soa");
    let m = hickory_proto::op::Message::from_vec(&r).expect("parses");
    match &m.answers[0].data {
        hickory_proto::rr::RData::SOA(soa) => soa.serial,
        other => panic!("not an SOA: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_coalesced_and_the_serial_follows_the_data() {
    let api = ApiServer::start().await;
    api.apply(ns("a"));
    api.apply(headless("a", "web"));
    let (srv, addr) = serving(&api).await;
    let serial = soa_serial(addr);
    let generation = srv.view.load().generation;

    // A rollout: 2000 EndpointSlice updates at once. The last state is what must be served.
    for i in 0..2000u32 {
        let ip = format!("10.1.{}.{}", 16 + i / 250, 1 + i % 250);
        api.apply(slice(
            "a",
            &format!("web-{}", i % 20),
            "web",
            json!([{"addresses": [ip]}]),
        ));
    }
    let last: Vec<String> = (1980..2000u32)
        .map(|i| format!("10.1.{}.{}", 16 + i / 250, 1 + i % 250))
        .collect();
    let mut want = last.clone();
    want.sort();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    until(addr, "web.a.svc.cluster.local.", "A", NOERROR, &want).await;
    let built = srv.view.load().generation - generation;
    assert!(
        built < 200,
        "2000 changes made {built} snapshots: not coalesced"
    );
    assert!(
        soa_serial(addr) > serial,
        "the SOA serial moves with the data"
    );

    // A change that DNS cannot see (a label) publishes nothing.
    let generation = srv.view.load().generation;
    let mut s = svc("a", "other", "10.96.16.1");
    api.apply(s.clone());
    until(
        addr,
        "other.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.16.1"],
    )
    .await;
    let generation_after_add = srv.view.load().generation;
    assert!(generation_after_add > generation);
    s["metadata"]["labels"] = json!({"team": "blue"});
    api.apply(s);
    // Well past the 50 ms coalescing window, so a snapshot for the label would be its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.apply(svc("a", "marker", "10.96.16.2"));
    until(
        addr,
        "marker.a.svc.cluster.local.",
        "A",
        NOERROR,
        &["10.96.16.2"],
    )
    .await;
    assert_eq!(
        srv.view.load().generation,
        generation_after_add + 1,
        "only the marker made a snapshot"
    );
    srv.shutdown().await;
}
