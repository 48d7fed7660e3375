//! DNS wire format: the strict query parser and the name helpers of the query path.
//!
//! The parser reads a query in place with no allocation and bounded work: every byte is looked
//! at a constant number of times, compression pointers must point strictly backwards (so they
//! cannot loop), labels are at most 63 octets and names at most 255. It accepts exactly what a
//! well-formed query is (RFC 1035, RFC 6891) and says which reply anything else gets.

/// Record types the server knows by number.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
}

pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

/// Response codes, including the extended BADVERS (16) of RFC 6891.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
    BadVers = 16,
}

/// Header size.
pub const HEADER_LEN: usize = 12;
/// Longest name in wire format, root label included (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// The EDNS UDP payload size we advertise and the cap on what we send over UDP (DNS flag day
/// 2020: fits every path without fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// EDNS information of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A query that parsed. Borrowed from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    /// Opcode in the low four bits (always 0 here: other opcodes are refused earlier).
    pub opcode: u8,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question name as sent: uncompressed wire format ending in the root label.
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    /// The whole question section as sent (name, type, class), echoed byte for byte.
    pub question: &'a [u8],
    pub edns: Option<Edns>,
}

/// Why a packet is not a query we answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not worth a reply: shorter than a header, or a response (QR=1).
    Drop,
    /// Reply with this rcode, echoing id, opcode and RD only.
    Header { id: u16, flags: u16, rcode: Rcode },
}

#[inline]
fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Skips one name starting at `pos`, allowing backward compression pointers. Returns the
/// offset after the name and whether it was the root name.
pub(crate) fn skip_name(msg: &[u8], mut pos: usize) -> Option<(usize, bool)> {
    let start = pos;
    let mut end = None; // offset after the name in the original stream
    let mut total = 0usize;
    let mut limit = start; // a pointer must land strictly before this
    loop {
        let len = *msg.get(pos)? as usize;
        match len & 0xC0 {
            0x00 => {
                total += len + 1;
                if total > MAX_NAME_LEN {
                    return None;
                }
                if len == 0 {
                    let after = end.unwrap_or(pos + 1);
                    return Some((after, total == 1 && pos == start));
                }
                if pos + 1 + len > msg.len() {
                    return None;
                }
                pos += 1 + len;
            }
            0xC0 => {
                let target = (u16_at(msg, pos)? & 0x3FFF) as usize;
                if target >= limit {
                    return None; // forward pointer, or a loop
                }
                end.get_or_insert(pos + 2);
                limit = target;
                pos = target;
            }
            _ => return None, // 0x40 and 0x80 label types are obsolete or unassigned
        }
    }
}

/// Parses a query. `Err` says what to do instead of answering.
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, Reject> {
    if msg.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err(Reject::Drop);
    }
    let formerr = Err(Reject::Header {
        id,
        flags,
        rcode: Rcode::FormErr,
    });
    let opcode = ((flags >> 11) & 0xF) as u8;
    if opcode != 0 {
        return Err(Reject::Header {
            id,
            flags,
            rcode: Rcode::NotImp,
        });
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let nscount = u16::from_be_bytes([msg[8], msg[9]]);
    let arcount = u16::from_be_bytes([msg[10], msg[11]]);
    if qdcount != 1 {
        return formerr;
    }

    // The question name: no compression (nothing precedes it to point at).
    let mut pos = HEADER_LEN;
    loop {
        let Some(&len) = msg.get(pos) else {
            return formerr;
        };
        if len == 0 {
            pos += 1;
            break;
        }
        if len & 0xC0 != 0 || pos + 1 + len as usize > msg.len() {
            return formerr;
        }
        pos += 1 + len as usize;
        if pos - HEADER_LEN >= MAX_NAME_LEN {
            return formerr;
        }
    }
    let qname_end = pos;
    let (Some(qtype), Some(qclass)) = (u16_at(msg, pos), u16_at(msg, pos + 2)) else {
        return formerr;
    };
    pos += 4;
    let question_end = pos;

    // A query carries a question and, in the additional section, at most one OPT at the root.
    // Anything else is FORMERR, as NSD answers: records in the answer or authority section of
    // a query mean nothing to this server, and refusing them leaves no record data to parse
    // (TSIG is not supported, so a signed query is refused the same way).
    if ancount != 0 || nscount != 0 || arcount > 1 {
        return formerr;
    }
    let mut edns = None;
    if arcount == 1 {
        let Some((after, root)) = skip_name(msg, pos) else {
            return formerr;
        };
        let (Some(rtype), Some(class)) = (u16_at(msg, after), u16_at(msg, after + 2)) else {
            return formerr;
        };
        let (Some(ttl_hi), Some(ttl_lo), Some(rdlen)) = (
            u16_at(msg, after + 4),
            u16_at(msg, after + 6),
            u16_at(msg, after + 8),
        ) else {
            return formerr;
        };
        let rdata = after + 10;
        let next = rdata + rdlen as usize;
        if next > msg.len() || rtype != rtype::OPT || !root {
            return formerr;
        }
        // Options are TLV pairs; they must tile the rdata exactly.
        let mut o = rdata;
        while o < next {
            let Some(olen) = u16_at(msg, o + 2) else {
                return formerr;
            };
            o += 4 + olen as usize;
        }
        if o != next {
            return formerr;
        }
        edns = Some(Edns {
            payload: class,
            version: (ttl_hi & 0xFF) as u8,
            dnssec_ok: ttl_lo & 0x8000 != 0,
        });
        pos = next;
    }
    if pos != msg.len() {
        return formerr;
    }
    Ok(Query {
        id,
        opcode,
        recursion_desired: flags & 0x0100 != 0,
        checking_disabled: flags & 0x0010 != 0,
        qname: &msg[HEADER_LEN..qname_end],
        qtype,
        qclass,
        question: &msg[HEADER_LEN..question_end],
        edns,
    })
}

/// One resource record of a message, located.
#[derive(Debug, Clone)]
pub struct RrRef {
    /// 0 answer, 1 authority, 2 additional.
    pub section: u8,
    pub start: usize,
    pub rtype: u16,
    /// Offset of the 4-octet TTL.
    pub ttl_at: usize,
    pub rdata: std::ops::Range<usize>,
    pub end: usize,
}

/// Every record after the question of a well-formed message, in order; `None` when the message
/// is malformed. Work is bounded by the message length.
pub fn records(msg: &[u8]) -> Option<Vec<RrRef>> {
    if msg.len() < HEADER_LEN {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]) as usize;
    let (qd, counts) = (count(4), [count(6), count(8), count(10)]);
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = skip_name(msg, pos)?.0 + 4;
    }
    let mut out = Vec::with_capacity(counts.iter().sum::<usize>().min(msg.len() / 11));
    for (section, n) in counts.into_iter().enumerate() {
        for _ in 0..n {
            let start = pos;
            let (after, _) = skip_name(msg, pos)?;
            let rtype = u16_at(msg, after)?;
            let rdlen = u16_at(msg, after + 8)? as usize;
            let rdata = after + 10..after + 10 + rdlen;
            if rdata.end > msg.len() {
                return None;
            }
            pos = rdata.end;
            out.push(RrRef {
                section: section as u8,
                start,
                rtype,
                ttl_at: after + 4,
                rdata,
                end: pos,
            });
        }
    }
    (pos <= msg.len()).then_some(out)
}

/// The TTL of a located record.
pub fn ttl_of(msg: &[u8], rr: &RrRef) -> u32 {
    u32::from_be_bytes([
        msg[rr.ttl_at],
        msg[rr.ttl_at + 1],
        msg[rr.ttl_at + 2],
        msg[rr.ttl_at + 3],
    ])
}

/// Copies a wire name into `dst` in lower case. Length octets are below 64 and never change.
#[inline]
pub fn lowercase_into(name: &[u8], dst: &mut [u8; MAX_NAME_LEN]) -> usize {
    let n = name.len().min(MAX_NAME_LEN);
    for (d, s) in dst.iter_mut().zip(&name[..n]) {
        *d = s.to_ascii_lowercase();
    }
    n
}

/// Where a suffix of `suffix_len` octets starts, if that is a label boundary of the
/// uncompressed wire name `name`. Compares no bytes: see [`is_subdomain`].
#[inline]
pub fn label_suffix_at(name: &[u8], suffix_len: usize) -> Option<usize> {
    let want = name.len().checked_sub(suffix_len)?;
    let mut pos = 0;
    while pos < want {
        pos += 1 + *name.get(pos)? as usize;
    }
    (pos == want).then_some(want)
}

/// True when the lower-case wire name `name` is `apex` or below it.
#[inline]
pub fn is_subdomain(name: &[u8], apex: &[u8]) -> bool {
    label_suffix_at(name, apex.len()).is_some_and(|at| name[at..] == *apex)
}

/// The labels of an uncompressed wire name, without the root.
pub fn labels(name: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let len = *name.get(pos)? as usize;
        if len == 0 {
            return None;
        }
        let label = name.get(pos + 1..pos + 1 + len)?;
        pos += 1 + len;
        Some(label)
    })
}

/// Error for a presentation-format name that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty label in {0:?}")]
    EmptyLabel(String),
    #[error("label longer than 63 octets in {0:?}")]
    LongLabel(String),
    #[error("name longer than 255 octets: {0:?}")]
    LongName(String),
}

/// Presentation format (`a.b.c`, trailing dot optional) to lower-case wire format.
pub fn name_to_wire(name: &str) -> Result<Vec<u8>, NameError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel(name.into()));
            }
            if label.len() > 63 {
                return Err(NameError::LongLabel(name.into()));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() > MAX_NAME_LEN {
        return Err(NameError::LongName(name.into()));
    }
    Ok(out)
}

/// Wire format to presentation format with a trailing dot (for logs and tests).
pub fn wire_to_string(name: &[u8]) -> String {
    let mut s = String::new();
    for l in labels(name) {
        for &b in l {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                s.push(b as char);
            } else {
                s.push_str(&format!("\\{b:03}"));
            }
        }
        s.push('.');
    }
    if s.is_empty() {
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16, extra: &[u8], arcount: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0];
        m.extend(arcount.to_be_bytes());
        m.extend(name);
        m.extend(qtype.to_be_bytes());
        m.extend(CLASS_IN.to_be_bytes());
        m.extend(extra);
        m
    }

    const OPT: [u8; 11] = [0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0];

    #[test]
    fn parses_a_plain_query_with_edns() {
        let name = b"\x03Web\x07Default\x00";
        let m = query(name, rtype::A, &OPT, 1);
        let q = parse_query(&m).expect("parses");
        assert_eq!((q.id, q.qtype, q.qclass), (0x1234, rtype::A, CLASS_IN));
        assert!(q.recursion_desired);
        assert_eq!(q.qname, name);
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 1232,
                version: 0,
                dnssec_ok: true
            })
        );
    }

    #[test]
    fn rejects_what_is_not_a_query() {
        assert_eq!(parse_query(&[0; 11]), Err(Reject::Drop));
        let mut m = query(b"\x00", rtype::A, &[], 0);
        m[2] |= 0x80;
        assert_eq!(parse_query(&m), Err(Reject::Drop));
        let mut m = query(b"\x00", rtype::A, &[], 0);
        m[2] |= 5 << 3; // UPDATE
        assert!(matches!(
            parse_query(&m),
            Err(Reject::Header {
                rcode: Rcode::NotImp,
                ..
            })
        ));
    }

    #[test]
    fn formerr_cases() {
        let fe = |m: &[u8]| {
            matches!(
                parse_query(m),
                Err(Reject::Header {
                    rcode: Rcode::FormErr,
                    ..
                })
            )
        };
        // Two OPT records.
        let mut two = OPT.to_vec();
        two.extend(OPT);
        assert!(fe(&query(b"\x00", rtype::A, &two, 2)));
        // OPT not at the root.
        assert!(fe(&query(
            b"\x00",
            rtype::A,
            &[1, b'a', 0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0],
            1
        )));
        // Trailing garbage.
        assert!(fe(&query(b"\x00", rtype::A, &[0xFF], 0)));
        // Truncated question.
        assert!(fe(&query(b"\x03abc", 0, &[], 0)[..17]));
        // Bad label type.
        assert!(fe(&query(b"\x41abc\x00", rtype::A, &[], 0)));
        // Compression pointer in the question.
        assert!(fe(&query(b"\xC0\x0C", rtype::A, &[], 0)));
        // Name longer than 255 octets.
        let mut long = Vec::new();
        for _ in 0..5 {
            long.push(63);
            long.extend([b'a'; 63]);
        }
        long.push(0);
        assert!(fe(&query(&long, rtype::A, &[], 0)));
        // A pointer to itself in the additional section (a loop).
        assert!(fe(&query(
            b"\x00",
            rtype::A,
            &[0xC0, 17, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0],
            1
        )));
        // QDCOUNT 0.
        let mut m = query(b"\x00", rtype::A, &[], 0);
        m[5] = 0;
        assert!(fe(&m));
    }

    #[test]
    fn only_a_question_and_an_opt() {
        let fe = |m: &[u8]| {
            matches!(
                parse_query(m),
                Err(Reject::Header {
                    rcode: Rcode::FormErr,
                    ..
                })
            )
        };
        // An answer record, even a well-formed one pointing at the question.
        let rr = [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1];
        let mut m = query(b"\x01a\x00", rtype::A, &rr, 0);
        m[7] = 1; // ANCOUNT
        assert!(fe(&m));
        // The fuzzer's find: an empty type-0 record in the answer section (hickory rejects it).
        let crash = [
            0x0a, 0, 0, 0xc7, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0,
        ];
        assert!(fe(&crash));
        // An authority record.
        let mut m = query(b"\x01a\x00", rtype::A, &rr, 0);
        m[9] = 1; // NSCOUNT
        assert!(fe(&m));
        // An additional record that is not an OPT.
        assert!(fe(&query(b"\x01a\x00", rtype::A, &rr, 1)));
        // The OPT alone is fine.
        assert!(parse_query(&query(b"\x01a\x00", rtype::A, &OPT, 1)).is_ok());
    }

    #[test]
    fn names() {
        assert_eq!(name_to_wire("Foo.Bar.").expect("ok"), b"\x03foo\x03bar\x00");
        assert_eq!(name_to_wire("").expect("root"), b"\x00");
        assert!(name_to_wire("a..b").is_err());
        assert_eq!(wire_to_string(b"\x03foo\x03bar\x00"), "foo.bar.");
        assert_eq!(label_suffix_at(b"\x01a\x03bar\x00", 5), Some(2));
        assert_eq!(label_suffix_at(b"\x01a\x03bar\x00", 4), None);
        assert!(is_subdomain(b"\x01a\x03bar\x00", b"\x03bar\x00"));
        assert!(!is_subdomain(b"\x01a\x03baz\x00", b"\x03bar\x00"));
        let mut buf = [0u8; MAX_NAME_LEN];
        let n = lowercase_into(b"\x03FoO\x00", &mut buf);
        assert_eq!(&buf[..n], b"\x03foo\x00");
    }
}
