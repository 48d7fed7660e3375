//! The case table run in-process against `handle()`: the least powerful test of every row of
//! the contract, with the view built from the fixture manifests exactly as the server builds it.

use clusterdns::view::{DnsView, PodMode, ViewConfig};
use clusterdns::{Transport, handle};
use discovery::ClusterSnapshot;
use discovery::manifests::ManifestsDir;
use integration::{Case, case_query, check_reply, fixture_cluster, load_cases, run_table};

fn snapshot(synced: bool) -> ClusterSnapshot {
    let mut dir = ManifestsDir::open(fixture_cluster()).expect("fixture dir");
    let report = dir.scan();
    assert!(
        report.errors.is_empty(),
        "fixture has errors: {:?}",
        report.errors
    );
    ClusterSnapshot::new(dir.objects(), 1, 42, synced)
}

fn view(pods: PodMode, synced: bool) -> DnsView {
    DnsView::build(
        &snapshot(synced),
        &ViewConfig {
            pods,
            ..ViewConfig::default()
        },
    )
    .expect("view")
}

fn run(view: &DnsView, cases: &[Case]) {
    run_table(cases, |_, q| {
        let mut out = Vec::new();
        anyhow::ensure!(
            handle(view, q, Transport::Udp, &mut out).is_some(),
            "no reply"
        );
        Ok(out)
    });
}

#[test]
fn contract_cases() {
    run(
        &view(PodMode::Verified, true),
        &load_cases("contract.cases"),
    );
}

#[test]
fn pods_insecure_cases() {
    run(
        &view(PodMode::Insecure, true),
        &load_cases("pods-insecure.cases"),
    );
}

#[test]
fn pods_disabled_cases() {
    run(
        &view(PodMode::Disabled, true),
        &load_cases("pods-disabled.cases"),
    );
}

/// Before the first full sync a missing name proves nothing: SERVFAIL, never NXDOMAIN. Names
/// already known still answer.
#[test]
fn unsynced_view_never_says_nxdomain() {
    let v = view(PodMode::Verified, false);
    let mut servfails = 0;
    for c in load_cases("contract.cases") {
        let q = case_query(&c, 7);
        let mut out = Vec::new();
        assert!(handle(&v, &q, Transport::Udp, &mut out).is_some());
        let rcode = out[3] & 0x0F;
        assert_ne!(
            rcode, 3,
            "line {}: {} answered NXDOMAIN before sync",
            c.line, c.qname
        );
        if c.rcode == "NXDOMAIN" && c.answer.is_empty() {
            assert_eq!(
                rcode, 2,
                "line {}: {} should be SERVFAIL before sync",
                c.line, c.qname
            );
            servfails += 1;
        } else if c.rcode == "NOERROR" {
            check_reply(&c, &q, &out).unwrap_or_else(|e| panic!("line {}: {e}", c.line));
        }
    }
    assert!(
        servfails > 10,
        "the table has NXDOMAIN cases to turn into SERVFAIL"
    );
}

#[test]
fn ttl_and_zone_are_configurable() {
    let cfg = ViewConfig {
        zone: "Example.Internal".into(),
        ttl: 0,
        ..ViewConfig::default()
    };
    // The zone as configured is compared without case too.
    let cfg = ViewConfig {
        zone: cfg.zone.to_ascii_lowercase(),
        ..cfg
    };
    let v = DnsView::build(&snapshot(true), &cfg).expect("view");
    let cases = integration::parse_cases(
        "query web.alpha.svc.example.internal. A\n\
         answer web.alpha.svc.example.internal. 0 IN A 10.96.1.1\n\
         query nope.example.internal. A\n\
         rcode NXDOMAIN\n\
         authority example.internal. 0 IN SOA ns.dns.example.internal. hostmaster.example.internal. SERIAL 7200 1800 86400 0\n\
         query web.alpha.svc.cluster.local. A\n\
         rcode REFUSED\n",
    )
    .expect("cases");
    run(&v, &cases);
}
