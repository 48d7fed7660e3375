//! Malformed input never panics the server and never gets a malformed reply: every query of the
//! case table, mutated many ways (bit flips, truncation, inserted and overwritten bytes, counts
//! and label lengths bent), goes through `handle()`; each reply must parse with hickory-proto,
//! keep the id and fit the size limit. Deterministic (seeded), so a failure reproduces.

use clusterdns::view::{DnsView, ViewConfig};
use clusterdns::{Transport, handle};
use discovery::ClusterSnapshot;
use discovery::manifests::ManifestsDir;
use integration::{case_query, fixture_cluster, load_cases};

/// xorshift64*: a tiny deterministic generator, enough to spread mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, q: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if q.is_empty() {
            q.push(rng.next() as u8);
        }
        match rng.below(7) {
            0 => {
                let i = rng.below(q.len());
                q[i] ^= 1 << rng.below(8);
            }
            1 => q.truncate(rng.below(q.len() + 1)),
            2 => {
                let i = rng.below(q.len() + 1);
                q.insert(i, rng.next() as u8);
            }
            3 => {
                let i = rng.below(q.len());
                q[i] = [0, 0xC0, 0x3F, 0x40, 0xFF, 12][rng.below(6)];
            }
            4 if q.len() >= 12 => {
                // Bend a section count.
                let i = 4 + 2 * rng.below(4);
                q[i + 1] = rng.below(4) as u8;
            }
            5 => q.extend_from_slice(&q.clone()[12.min(q.len())..]),
            _ => {
                // A compression pointer somewhere, forward or backward.
                if q.len() > 13 {
                    let i = 12 + rng.below(q.len() - 13);
                    q[i] = 0xC0;
                    q[i + 1] = rng.next() as u8;
                }
            }
        }
    }
}

#[test]
fn mutated_queries_get_well_formed_replies_or_none() {
    let mut dir = ManifestsDir::open(fixture_cluster()).expect("fixture");
    dir.scan();
    let view = DnsView::build(
        &ClusterSnapshot::new(dir.objects(), 1, 1, true),
        &ViewConfig::default(),
    )
    .expect("view");
    let cases = load_cases("contract.cases");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut replies, mut silent) = (0u32, 0u32);
    let mut out = Vec::new();
    for c in &cases {
        let base = case_query(c, 0xBEEF);
        for _ in 0..2000 {
            let mut q = base.clone();
            mutate(&mut rng, &mut q);
            for (t, max) in [(Transport::Udp, 1232), (Transport::Tcp, 65535)] {
                if handle(&view, &q, t, &mut out).is_some() {
                    replies += 1;
                    assert!(
                        out.len() >= 12 && out.len() <= max,
                        "{q:02x?}: reply of {} octets",
                        out.len()
                    );
                    assert_eq!(out[..2], q[..2], "{q:02x?}: id not copied");
                    if let Err(e) = hickory_proto::op::Message::from_vec(&out) {
                        panic!("{q:02x?}: reply {out:02x?} does not parse: {e}");
                    }
                } else {
                    silent += 1;
                    assert!(
                        q.len() < 12 || q[2] & 0x80 != 0,
                        "{q:02x?}: dropped but is a query"
                    );
                }
            }
        }
    }
    // The mutations reach both outcomes, so the test checks something on each side.
    assert!(
        replies > 10_000 && silent > 100,
        "replies {replies}, dropped {silent}"
    );
}
