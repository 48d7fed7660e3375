//! Printing a reply as dig 9.18 prints it, field for field.
//!
//! Records are laid out on dig's columns with its tab arithmetic (BIND's `masterdump.c`
//! `indent()`): each field starts at its column, reached with tabs of width 8 and then spaces,
//! and at least one character after the previous field. The columns are TTL 24, class 32,
//! type 40, data 48; with `+nottlid` or `+noclass` 24, 24, 32, 40; with both 24, 24, 24, 32.

use std::fmt::Write as _;
use std::net::SocketAddr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};

use crate::args::{Lookup, Options};
use crate::exchange::{Reply, Transport};

/// Columns of one record line.
#[derive(Debug, Clone, Copy)]
struct Columns {
    ttl: usize,
    class: usize,
    kind: usize,
    data: usize,
}

fn columns(options: &Options) -> Columns {
    match (options.ttlid, options.class) {
        (true, true) => Columns {
            ttl: 24,
            class: 32,
            kind: 40,
            data: 48,
        },
        (false, false) => Columns {
            ttl: 24,
            class: 24,
            kind: 24,
            data: 32,
        },
        _ => Columns {
            ttl: 24,
            class: 24,
            kind: 32,
            data: 40,
        },
    }
}

/// Appends `field` at column `to` of `line` (BIND's `indent()`).
fn at(line: &mut String, to: usize, field: &str) {
    // The column the line has reached, tabs expanded.
    let from = line.chars().fold(0, |column, c| {
        if c == '\t' {
            (column / 8 + 1) * 8
        } else {
            column + 1
        }
    });
    let to = to.max(from + 1);
    let tabs = to / 8 - from / 8;
    let mut column = from;
    if tabs > 0 {
        line.extend(std::iter::repeat_n('\t', tabs));
        column = (to / 8) * 8;
    }
    line.extend(std::iter::repeat_n(' ', to - column));
    line.push_str(field);
}

/// One record as dig prints it in a section.
pub fn record_line(record: &Record, options: &Options) -> String {
    let c = columns(options);
    let mut line = record.name.to_string();
    if options.ttlid {
        at(&mut line, c.ttl, &record.ttl.to_string());
    }
    if options.class {
        at(&mut line, c.class, &record.dns_class.to_string());
    }
    at(&mut line, c.kind, &record.record_type().to_string());
    at(&mut line, c.data, &rdata_text(record));
    line
}

/// The question line: `;name.` then class and type on the record columns. The `;` does not
/// count towards the columns, and the class is shown even with `+noclass`, as dig does.
pub fn question_line(name: &str, class: &str, kind: &str, options: &Options) -> String {
    let c = columns(options);
    let mut line = name.to_string();
    at(&mut line, c.class, class);
    at(&mut line, c.kind, kind);
    format!(";{line}")
}

/// A record's data in master-file form, as dig shows it.
pub fn rdata_text(record: &Record) -> String {
    match &record.data {
        RData::A(a) => a.to_string(),
        RData::AAAA(aaaa) => aaaa.to_string(),
        RData::CNAME(name) => name.to_string(),
        RData::NS(name) => name.to_string(),
        RData::PTR(name) => name.to_string(),
        RData::MX(mx) => format!("{} {}", mx.preference, mx.exchange),
        RData::SRV(srv) => format!(
            "{} {} {} {}",
            srv.priority, srv.weight, srv.port, srv.target
        ),
        RData::SOA(soa) => format!(
            "{} {} {} {} {} {} {}",
            soa.mname, soa.rname, soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum
        ),
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// A character-string as dig quotes it: `"`, `\` escaped; bytes outside printable ASCII as
/// `\DDD`.
fn quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

/// The `; <<>> cdig … <<>> args` banner. The run's first also has a blank line before it, how
/// many addresses the server has (when one was given) and the global options; later ones (of
/// batch lines) are the one line, as in dig.
pub fn banner(out: &mut String, args: &str, full: bool, servers_found: Option<usize>) {
    let version = env!("CARGO_PKG_VERSION");
    let args = if args.is_empty() {
        String::new()
    } else {
        format!(" {args}")
    };
    if !full {
        let _ = writeln!(out, "; <<>> cdig {version} <<>>{args}");
        return;
    }
    let _ = writeln!(out, "\n; <<>> cdig {version} <<>>{args}");
    if let Some(n) = servers_found {
        let _ = writeln!(out, "; ({n} server{} found)", if n == 1 { "" } else { "s" });
    }
    let _ = writeln!(out, ";; global options: +cmd");
}

fn status(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        other => format!("RESERVED{}", u16::from(other)),
    }
}

/// Prints one reply with the lookup's display options.
pub fn reply(
    out: &mut String,
    lookup: &Lookup,
    reply: &Reply,
    message: &Message,
    shown_server: &str,
) {
    let o = &lookup.options;
    if o.short {
        for record in &message.answers {
            let _ = writeln!(out, "{}", rdata_text(record));
        }
        return;
    }
    let m = &message.metadata;
    if o.comments {
        let _ = writeln!(out, ";; Got answer:");
        let qname = message
            .queries
            .first()
            .map(|q| q.name().to_string())
            .unwrap_or_default();
        let lower = qname.to_ascii_lowercase();
        if lower.ends_with(".local.") || lower == "local." {
            let _ = writeln!(out, ";; WARNING: .local is reserved for Multicast DNS");
            let _ = writeln!(
                out,
                ";; You are currently testing what happens when an mDNS query is leaked to DNS"
            );
        }
        let _ = writeln!(
            out,
            ";; ->>HEADER<<- opcode: {}, status: {}, id: {}",
            format!("{:?}", m.op_code).to_ascii_uppercase(),
            status(m.response_code),
            m.id
        );
        let mut flags = Vec::new();
        if m.message_type == MessageType::Response {
            flags.push("qr");
        }
        for (on, name) in [
            (m.authoritative, "aa"),
            (m.truncation, "tc"),
            (m.recursion_desired, "rd"),
            (m.recursion_available, "ra"),
            (m.authentic_data, "ad"),
            (m.checking_disabled, "cd"),
        ] {
            if on {
                flags.push(name);
            }
        }
        let additional = message.additionals.len() + usize::from(message.edns.is_some());
        let _ = writeln!(
            out,
            ";; flags: {}; QUERY: {}, ANSWER: {}, AUTHORITY: {}, ADDITIONAL: {}",
            flags.join(" "),
            message.queries.len(),
            message.answers.len(),
            message.authorities.len(),
            additional
        );
        if o.recurse && !m.recursion_available {
            let _ = writeln!(out, ";; WARNING: recursion requested but not available");
        }
        let _ = writeln!(out);
        if let Some(edns) = &message.edns {
            let _ = writeln!(out, ";; OPT PSEUDOSECTION:");
            let flags = if edns.flags().dnssec_ok { " do" } else { "" };
            let _ = writeln!(
                out,
                "; EDNS: version: {}, flags:{flags}; udp: {}",
                edns.version(),
                edns.max_payload()
            );
        }
    }
    if o.question {
        if o.comments {
            let _ = writeln!(out, ";; QUESTION SECTION:");
        }
        for q in &message.queries {
            let line = question_line(
                &q.name().to_string(),
                &q.query_class().to_string(),
                &q.query_type().to_string(),
                o,
            );
            let _ = writeln!(out, "{line}");
        }
        if o.comments {
            let _ = writeln!(out);
        }
    }
    for (show, title, records) in [
        (o.answer, "ANSWER", &message.answers),
        (o.authority, "AUTHORITY", &message.authorities),
        (o.additional, "ADDITIONAL", &message.additionals),
    ] {
        let records: Vec<&Record> = records
            .iter()
            .filter(|r| r.record_type() != RecordType::OPT)
            .collect();
        if !show || records.is_empty() {
            continue;
        }
        if o.comments {
            let _ = writeln!(out, ";; {title} SECTION:");
        }
        for record in records {
            let _ = writeln!(out, "{}", record_line(record, o));
        }
        if o.comments {
            let _ = writeln!(out);
        }
    }
    if o.stats {
        stats(out, reply, shown_server);
    }
}

/// The trailing statistics lines.
pub fn stats(out: &mut String, reply: &Reply, shown_server: &str) {
    let transport = match reply.transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
    };
    let _ = writeln!(out, ";; Query time: {} msec", reply.elapsed.as_millis());
    let _ = writeln!(
        out,
        ";; SERVER: {}({shown_server}) ({transport})",
        server_text(reply.server)
    );
    let when = jiff::Zoned::now()
        .strftime("%a %b %d %H:%M:%S %Z %Y")
        .to_string();
    let _ = writeln!(out, ";; WHEN: {when}");
    let _ = writeln!(out, ";; MSG SIZE  rcvd: {}", reply.bytes.len());
    let _ = writeln!(out);
}

/// `127.0.0.1#53`.
pub fn server_text(server: SocketAddr) -> String {
    format!("{}#{}", server.ip(), server.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_on_digs_columns() {
        let mut line = String::from("cluster.local.");
        at(&mut line, 24, "5");
        at(&mut line, 32, "IN");
        at(&mut line, 40, "SOA");
        at(&mut line, 48, "ns.dns.cluster.local.");
        assert_eq!(line, "cluster.local.\t\t5\tIN\tSOA\tns.dns.cluster.local.");
        let mut long = String::from("db-0.db.data.svc.cluster.local.");
        at(&mut long, 24, "5");
        at(&mut long, 32, "IN");
        at(&mut long, 40, "A");
        assert_eq!(long, "db-0.db.data.svc.cluster.local.\t5 IN\tA");
        let mut longer = String::from("frontend.shop.svc.cluster.local.");
        at(&mut longer, 24, "5");
        assert_eq!(longer, "frontend.shop.svc.cluster.local. 5");
    }

    #[test]
    fn strings_are_quoted_as_dig_does() {
        assert_eq!(quote(b"a \"b\" \\ c\x07"), "\"a \\\"b\\\" \\\\ c\\007\"");
    }
}
