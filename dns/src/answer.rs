//! From query bytes to reply bytes, with no I/O, no locks and no allocation on a hit.
//!
//! ```text
//!  packet ──parse_query──> Query ──answer(view)──> Answer ──encode──> reply bytes
//!            (wire.rs)               (pure lookup        (header, question echoed,
//!                                     in the view)        precomputed sections, OPT, TC)
//! ```

use std::net::IpAddr;

use crate::forward::{ClientFlags, Forwarder, Question};
use crate::view::{
    CLUSTER_ZONE, DnsView, PodMode, Rrset, V4_REVERSE_ZONE, V6_REVERSE_ZONE, parse_pod_label,
};
use crate::wire::{
    CLASS_ANY, CLASS_IN, EDNS_PAYLOAD, Edns, HEADER_LEN, MAX_NAME_LEN, Query, Rcode, Reject,
    is_subdomain, label_suffix_at, labels, lowercase_into, parse_query, rtype,
};

/// How a query arrived: it decides the size limit and how zone transfers are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The records of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records<'v> {
    None,
    /// A precomputed RRset (or CNAME chain) with its glue.
    Set(Rrset<'v>),
    /// A pod record, synthesized from the name.
    Pod(IpAddr),
}

/// What a query gets, before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'v> {
    pub rcode: Rcode,
    pub authoritative: bool,
    pub records: Records<'v>,
    /// The zone (index into [`DnsView::zones`]) whose SOA goes in AUTHORITY.
    pub soa: Option<usize>,
    /// The zone the question is in; `None` outside every zone the view serves.
    pub zone: Option<usize>,
    /// A forwarder may answer this instead: the name is outside every zone, or a reverse name
    /// the cluster does not know.
    pub forwardable: bool,
    /// A CNAME chain that leaves the zone at this name (lower-case wire): a forwarder may
    /// append the target's records.
    pub external: Option<&'v [u8]>,
}

impl Answer<'_> {
    /// An answer with no records.
    fn empty(rcode: Rcode, zone: Option<usize>) -> Self {
        Self {
            rcode,
            authoritative: false,
            records: Records::None,
            soa: None,
            zone,
            forwardable: false,
            external: None,
        }
    }

    /// Before the first full sync, absence proves nothing: SERVFAIL, never a false NXDOMAIN.
    fn not_synced(zone: usize) -> Self {
        Self::empty(Rcode::ServFail, Some(zone))
    }

    /// NXDOMAIN or NODATA: authoritative, with the zone's SOA.
    fn negative(rcode: Rcode, zone: usize) -> Self {
        Self {
            rcode,
            authoritative: true,
            records: Records::None,
            soa: Some(zone),
            zone: Some(zone),
            forwardable: false,
            external: None,
        }
    }
}

fn zone_of(view: &DnsView, lname: &[u8]) -> Option<usize> {
    [CLUSTER_ZONE, V4_REVERSE_ZONE, V6_REVERSE_ZONE]
        .into_iter()
        .find(|&z| is_subdomain(lname, &view.zones[z].apex))
}

/// The answer to a question about `qname` (wire form, any case) of type `qtype`.
///
/// Pure and synchronous: the whole of the server's knowledge is `view`.
pub fn answer<'v>(view: &'v DnsView, qname: &[u8], qtype: u16, qclass: u16) -> Answer<'v> {
    let mut buf = [0u8; MAX_NAME_LEN];
    let len = lowercase_into(qname, &mut buf);
    answer_lower(view, &buf[..len], qtype, qclass)
}

/// [`answer`] for a name already in lower case (the query path lowercases once).
fn answer_lower<'v>(view: &'v DnsView, lname: &[u8], qtype: u16, qclass: u16) -> Answer<'v> {
    if qclass != CLASS_IN && qclass != CLASS_ANY {
        return Answer::empty(Rcode::Refused, None);
    }

    if let Some(node) = view.get(lname) {
        let zone = node.zone();
        let set = if qtype == rtype::ANY {
            // RFC 8482: one RRset is enough.
            node.rrsets().next().or_else(|| node.fallback())
        } else {
            node.get(qtype).or_else(|| node.fallback())
        };
        return match set {
            Some(rr) if rr.rcode == Rcode::NxDomain && !view.synced => Answer::not_synced(zone),
            Some(rr) => Answer {
                rcode: rr.rcode,
                authoritative: true,
                records: Records::Set(rr),
                soa: rr.negative.then_some(zone),
                zone: Some(zone),
                forwardable: false,
                external: rr
                    .external
                    .filter(|_| qtype == rtype::A || qtype == rtype::AAAA),
            },
            None => Answer {
                // An empty non-terminal of a reverse zone is only there because the cluster
                // knows an address below it: the name is the upstream's to answer.
                forwardable: zone != CLUSTER_ZONE && !node.has_rrsets(),
                ..Answer::negative(Rcode::NoError, zone)
            },
        };
    }

    let Some(zone) = zone_of(view, lname) else {
        return Answer {
            forwardable: true,
            ..Answer::empty(Rcode::Refused, None)
        };
    };
    if zone == CLUSTER_ZONE
        && let Some(a) = pod_answer(view, lname, qtype)
    {
        return a;
    }
    if !view.synced {
        return Answer {
            forwardable: zone != CLUSTER_ZONE,
            ..Answer::not_synced(zone)
        };
    }
    Answer {
        forwardable: zone != CLUSTER_ZONE,
        ..Answer::negative(Rcode::NxDomain, zone)
    }
}

/// `<ip>.<ns>.pod.<zone>`; `None` when the name is not a pod name that exists.
fn pod_answer<'v>(view: &'v DnsView, lname: &[u8], qtype: u16) -> Option<Answer<'v>> {
    if view.pods == PodMode::Disabled {
        return None;
    }
    let at = label_suffix_at(lname, view.pod_apex.len())?;
    if !is_subdomain(lname, &view.pod_apex) {
        return None;
    }
    let mut it = labels(&lname[..at]);
    let ip_label = it.next()?;
    let Some(ns_label) = it.next() else {
        // `<ns>.pod.<zone>`: in insecure mode names exist below every namespace label, so the
        // namespace name exists too (RFC 8020: NXDOMAIN would deny everything below it).
        return (view.pods == PodMode::Insecure)
            .then(|| Answer::negative(Rcode::NoError, CLUSTER_ZONE));
    };
    if it.next().is_some() {
        return None;
    }
    let ip = parse_pod_label(ip_label)?;
    if view.pods == PodMode::Verified
        && !view
            .pod_ips
            .get(&ip)
            .is_some_and(|nss| nss.iter().any(|n| **n == *ns_label))
    {
        return None;
    }
    let want = if ip.is_ipv4() { rtype::A } else { rtype::AAAA };
    Some(if qtype == want || qtype == rtype::ANY {
        Answer {
            rcode: Rcode::NoError,
            authoritative: true,
            records: Records::Pod(ip),
            soa: None,
            zone: Some(CLUSTER_ZONE),
            forwardable: false,
            external: None,
        }
    } else {
        Answer::negative(Rcode::NoError, CLUSTER_ZONE)
    })
}

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;
const OPCODE_MASK: u16 = 0x7800;

fn put_header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

fn put_opt(out: &mut Vec<u8>, edns: &Edns, rcode: Rcode) {
    let ext = ((rcode as u16) >> 4) as u8;
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[ext, 0]);
    out.extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// Largest reply for this query: 512 without EDNS, the client's size clamped to 512..=1232
/// with it, 65535 over TCP.
pub fn max_reply(q: &Query<'_>, transport: Transport) -> usize {
    match (transport, q.edns) {
        (Transport::Tcp, _) => u16::MAX as usize,
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(e)) => e.payload.clamp(512, EDNS_PAYLOAD) as usize,
    }
}

/// Writes a pod A/AAAA record (owner: the question) into `buf`; returns its length.
fn pod_record(ip: &IpAddr, ttl: u32, buf: &mut [u8; 28]) -> usize {
    let (t, len) = match ip {
        IpAddr::V4(v4) => {
            buf[12..16].copy_from_slice(&v4.octets());
            (rtype::A, 4u16)
        }
        IpAddr::V6(v6) => {
            buf[12..28].copy_from_slice(&v6.octets());
            (rtype::AAAA, 16u16)
        }
    };
    buf[0..2].copy_from_slice(&[0xC0, 0x0C]);
    buf[2..4].copy_from_slice(&t.to_be_bytes());
    buf[4..6].copy_from_slice(&CLASS_IN.to_be_bytes());
    buf[6..10].copy_from_slice(&ttl.to_be_bytes());
    buf[10..12].copy_from_slice(&len.to_be_bytes());
    12 + len as usize
}

/// Writes the reply for `a` into `out` (cleared first).
pub fn encode(
    view: &DnsView,
    q: &Query<'_>,
    a: &Answer<'_>,
    max: usize,
    recursion_available: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    let mut flags = FLAG_QR | ((q.opcode as u16) << 11) | (a.rcode as u16 & 0xF);
    if recursion_available {
        flags |= FLAG_RA;
    }
    if q.recursion_desired {
        flags |= FLAG_RD;
    }
    if q.checking_disabled {
        flags |= FLAG_CD;
    }
    if a.authoritative {
        flags |= FLAG_AA;
    }
    let (answer, ancount, additional, arcount): (&[u8], u16, &[u8], u16) = match a.records {
        Records::None => (&[], 0, &[], 0),
        Records::Set(rr) => (rr.answer, rr.ancount, rr.additional, rr.arcount),
        Records::Pod(_) => (&[], 1, &[], 0),
    };
    let mut pod = [0u8; 28];
    let pod_len = match a.records {
        Records::Pod(ip) => pod_record(&ip, view.ttl, &mut pod),
        _ => 0,
    };
    let answer = if pod_len > 0 { &pod[..pod_len] } else { answer };
    let soa = a.soa.map(|z| &view.zones[z]);
    let soa_len = soa.map_or(0, |z| 2 + z.soa_tail.len());
    let opt_len = if q.edns.is_some() { 11 } else { 0 };

    let base = HEADER_LEN + q.question.len() + answer.len() + soa_len + opt_len;
    let (answer, ancount, soa, additional, arcount) = if base + additional.len() <= max {
        (answer, ancount, soa, additional, arcount)
    } else if base <= max {
        // Glue is optional: leave it out rather than truncate.
        (answer, ancount, soa, &[][..], 0)
    } else {
        // RFC 2181 9: never a partial RRset. TC with the question; the client retries on TCP.
        flags |= FLAG_TC;
        (&[][..], 0, None, &[][..], 0)
    };
    let nscount = u16::from(soa.is_some());
    put_header(
        out,
        q.id,
        flags,
        [1, ancount, nscount, arcount + u16::from(q.edns.is_some())],
    );
    out.extend_from_slice(q.question);
    out.extend_from_slice(answer);
    if let Some(z) = soa {
        // Owner: a pointer to where the apex starts inside the question name.
        let at = (HEADER_LEN + q.qname.len() - z.apex.len()) as u16;
        out.extend_from_slice(&(0xC000 | at).to_be_bytes());
        out.extend_from_slice(&z.soa_tail);
    }
    out.extend_from_slice(additional);
    if let Some(e) = &q.edns {
        put_opt(out, e, a.rcode);
    }
}

/// What [`handle`] answered, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// The question's type; 0 when the question did not parse.
    pub qtype: u16,
    /// The zone the question is in (index into [`DnsView::zones`]).
    pub zone: Option<usize>,
    pub rcode: Rcode,
}

/// Handles one query packet, writing the reply into `out`. `None` when nothing must be sent
/// back (not a query). No forwarding: names outside the zones get REFUSED.
pub fn handle(
    view: &DnsView,
    packet: &[u8],
    transport: Transport,
    out: &mut Vec<u8>,
) -> Option<Handled> {
    match handle_query(view, None, packet, transport, out) {
        Step::Reply(h) => Some(h),
        _ => None,
    }
}

/// What to do with a query once the view (and the forwarder's routes) have been consulted.
#[derive(Debug)]
pub enum Step {
    /// `out` holds the reply.
    Reply(Handled),
    /// Nothing is sent back.
    Drop,
    /// The forwarder answers this question for the client.
    Forward {
        question: Question,
        id: u16,
        flags: ClientFlags,
        handled: Handled,
    },
    /// `out` holds the local reply (a CNAME chain that leaves the zone); the forwarder resolves
    /// `question` (the chain's target) and its answer is appended.
    Chase {
        question: Question,
        flags: ClientFlags,
        handled: Handled,
    },
}

fn forward_question(
    question: Vec<u8>,
    lname: &[u8],
    qtype: u16,
    qclass: u16,
    q: &Query<'_>,
) -> Question {
    Question {
        question,
        lname: lname.to_vec(),
        qtype,
        qclass,
        dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
        checking_disabled: q.checking_disabled,
    }
}

/// [`handle`] with a forwarder: names it routes are handed back as [`Step::Forward`] (or
/// [`Step::Chase`]) instead of REFUSED; RA is set on every reply.
pub fn handle_query(
    view: &DnsView,
    fwd: Option<&Forwarder>,
    packet: &[u8],
    transport: Transport,
    out: &mut Vec<u8>,
) -> Step {
    out.clear();
    let q = match parse_query(packet) {
        Ok(q) => q,
        Err(Reject::Drop) => return Step::Drop,
        Err(Reject::Header { id, flags, rcode }) => {
            let flags = FLAG_QR | (flags & (OPCODE_MASK | FLAG_RD | FLAG_CD)) | rcode as u16;
            put_header(out, id, flags, [0; 4]);
            return Step::Reply(Handled {
                qtype: 0,
                zone: None,
                rcode,
            });
        }
    };
    let max = max_reply(&q, transport);
    let mut buf = [0u8; MAX_NAME_LEN];
    let len = lowercase_into(q.qname, &mut buf);
    let lname = &buf[..len];
    let mut a = if q.edns.is_some_and(|e| e.version > 0) {
        Answer::empty(Rcode::BadVers, None)
    } else if q.qtype == rtype::AXFR || q.qtype == rtype::IXFR {
        let rcode = if transport == Transport::Udp {
            Rcode::NotImp
        } else {
            Rcode::Refused
        };
        Answer::empty(rcode, None)
    } else {
        answer_lower(view, lname, q.qtype, q.qclass)
    };
    if let Some(f) = fwd
        && a.rcode != Rcode::BadVers
    {
        let flags = ClientFlags {
            recursion_desired: q.recursion_desired,
            checking_disabled: q.checking_disabled,
            edns: q.edns,
            max,
        };
        if f.is_loop_probe(lname) {
            if !f
                .loop_detected
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::error!(
                    name = %crate::wire::wire_to_string(q.qname),
                    "FORWARDING LOOP: a probe this server sent upstream came back to it; check the upstreams (an upstream that forwards to this server, or /etc/resolv.conf pointing at it)"
                );
            }
            a = Answer::empty(Rcode::ServFail, None);
        } else if a.forwardable && f.route(lname).is_some() {
            let handled = Handled {
                qtype: q.qtype,
                zone: a.zone,
                rcode: Rcode::NoError,
            };
            let question = forward_question(q.question.to_vec(), lname, q.qtype, q.qclass, &q);
            return Step::Forward {
                question,
                id: q.id,
                flags,
                handled,
            };
        } else if let Some(target) = a.external
            && f.route(target).is_some()
        {
            encode(view, &q, &a, u16::MAX as usize, true, out);
            let mut question = target.to_vec();
            question.extend_from_slice(&q.qtype.to_be_bytes());
            question.extend_from_slice(&CLASS_IN.to_be_bytes());
            let handled = Handled {
                qtype: q.qtype,
                zone: a.zone,
                rcode: a.rcode,
            };
            let question = forward_question(question, target, q.qtype, CLASS_IN, &q);
            return Step::Chase {
                question,
                flags,
                handled,
            };
        }
    }
    encode(view, &q, &a, max, fwd.is_some(), out);
    Step::Reply(Handled {
        qtype: q.qtype,
        zone: a.zone,
        rcode: a.rcode,
    })
}

/// The reply to a chased ExternalName: the local CNAME chain, then the target's answer (and, for
/// a negative, its authority), with the target's rcode; TC with the question alone when it does
/// not fit in `max`.
pub fn combine_chase(local: &[u8], target: &[u8], max: usize) -> Vec<u8> {
    use hickory_proto::op::Message;
    let (Ok(mut m), Ok(t)) = (Message::from_vec(local), Message::from_vec(target)) else {
        return local.to_vec();
    };
    m.metadata.response_code = t.metadata.response_code;
    m.metadata.recursion_available = true;
    let negative = t.answers.is_empty();
    m.answers.extend(t.answers);
    if negative {
        m.authorities = t.authorities;
    }
    match m.to_vec() {
        Ok(v) if v.len() <= max => v,
        _ => {
            m.answers.clear();
            m.authorities.clear();
            m.additionals.clear();
            m.metadata.truncation = true;
            m.to_vec().unwrap_or_else(|_| local.to_vec())
        }
    }
}
