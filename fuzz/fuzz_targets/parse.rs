//! The query parser against hickory-proto: whatever the fast parser accepts, hickory parses too,
//! to the same question and EDNS. (The parser may refuse more: QDCOUNT other than 1, pointers in
//! the question; those get FORMERR by design.)
#![no_main]

use clusterdns::wire::parse_query;
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = parse_query(data) else { return };
    let m = match Message::from_vec(data) {
        Ok(m) => m,
        Err(e) => {
            // hickory also validates the contents of EDNS options, which the contract says to
            // ignore. With the OPT's options emptied it must parse.
            let Some(without) = strip_options(data, q.question.len()) else {
                panic!("the parser accepted what hickory rejects: {e}");
            };
            match Message::from_vec(&without) {
                Ok(m) => m,
                Err(e) => panic!("the parser accepted what hickory rejects: {e}"),
            }
        }
    };
    let hq = &m.queries[0];
    assert_eq!(u16::from(hq.query_type()), q.qtype);
    assert_eq!(u16::from(hq.query_class()), q.qclass);
    let mut wire = Vec::new();
    for l in hq.name().iter() {
        wire.push(l.len() as u8);
        wire.extend_from_slice(l);
    }
    wire.push(0);
    assert_eq!(wire, q.qname, "same name, same case");
    assert_eq!(m.edns.is_some(), q.edns.is_some());
    if let (Some(e), Some(f)) = (&m.edns, q.edns) {
        assert_eq!(e.max_payload().max(512), f.payload.max(512));
        assert_eq!(e.version(), f.version);
        assert_eq!(e.flags().dnssec_ok, f.dnssec_ok);
    }
});

/// The message with its OPT's RDATA emptied (the OPT is the only record after the question).
fn strip_options(data: &[u8], question_len: usize) -> Option<Vec<u8>> {
    let opt = 12 + question_len;
    if data.len() < opt + 11 {
        return None;
    }
    let mut out = data[..opt + 9].to_vec();
    out.extend_from_slice(&[0, 0]);
    Some(out)
}
