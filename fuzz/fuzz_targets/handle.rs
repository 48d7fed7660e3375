//! Whole request handling: any bytes in, a reply or nothing out, and every reply parses, keeps
//! the id and fits the transport's limit.
#![no_main]

use std::sync::OnceLock;

use clusterdns::view::{DnsView, ViewConfig};
use clusterdns::{Transport, handle};
use discovery::ClusterSnapshot;
use discovery::manifests::ManifestsDir;
use libfuzzer_sys::fuzz_target;

fn view() -> &'static DnsView {
    static VIEW: OnceLock<DnsView> = OnceLock::new();
    VIEW.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/cluster");
        let mut m = ManifestsDir::open(dir).expect("fixture");
        m.scan();
        DnsView::build(&ClusterSnapshot::new(m.objects(), 1, 1, true), &ViewConfig::default()).expect("view")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    for (t, max) in [(Transport::Udp, 1232), (Transport::Tcp, 65535)] {
        if handle(view(), data, t, &mut out).is_some() {
            assert!(out.len() >= 12 && out.len() <= max, "reply size {}", out.len());
            assert_eq!(out[..2], data[..2], "id copied");
            hickory_proto::op::Message::from_vec(&out).expect("every reply parses");
        }
    }
});
