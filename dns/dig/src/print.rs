//! Printing a reply as dig 9.18 prints it, field for field.
//!
//! Records are laid out on dig's columns with its tab arithmetic (BIND's `masterdump.c`
//! `indent()`): each field starts at its column, reached with tabs of width 8 and then spaces,
//! and at least one character after the previous field. The columns are TTL 24, class 32,
//! type 40, data 48; with `+nottlid` or `+noclass` 24, 24, 32, 40; with both 24, 24, 24, 32.

use std::fmt::Write as _;
use std::net::SocketAddr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};

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
    let mut line = name_text(&record.name);
    if options.ttlid {
        at(&mut line, c.ttl, &record.ttl.to_string());
    }
    if options.class {
        at(&mut line, c.class, &record.dns_class.to_string());
    }
    at(&mut line, c.kind, &type_text(record.record_type()));
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

/// A name as BIND writes it: `"().;\\@$` escaped with a backslash, other bytes outside
/// printable ASCII as `\DDD` in decimal (hickory's own form differs: octal, and more escapes).
pub fn name_text(name: &Name) -> String {
    if name.is_root() {
        return ".".to_string();
    }
    let mut out = String::new();
    for label in name.iter() {
        for &b in label {
            escape(&mut out, b, b"\"().;\\@$", 0x21);
        }
        out.push('.');
    }
    if !name.is_fqdn() {
        out.pop();
    }
    out
}

/// Writes one byte as BIND does: `special` bytes after a backslash, bytes from `printable` to
/// `~` as they are, the rest as `\DDD` in decimal.
fn escape(out: &mut String, b: u8, special: &[u8], printable: u8) {
    if special.contains(&b) {
        out.push('\\');
        out.push(b as char);
    } else if (printable..=0x7e).contains(&b) {
        out.push(b as char);
    } else {
        let _ = write!(out, "\\{b:03}");
    }
}

/// A type as dig writes it: its mnemonic, or `TYPEnn`.
pub fn type_text(kind: RecordType) -> String {
    match kind {
        RecordType::ZERO => "TYPE0".to_string(),
        RecordType::Unknown(n) => format!("TYPE{n}"),
        other => other.to_string(),
    }
}

/// A record's data in master-file form, as dig shows it.
pub fn rdata_text(record: &Record) -> String {
    match &record.data {
        RData::A(a) => a.to_string(),
        RData::AAAA(aaaa) => aaaa.to_string(),
        RData::CNAME(name) => name_text(name),
        RData::NS(name) => name_text(name),
        RData::PTR(name) => name_text(name),
        RData::MX(mx) => format!("{} {}", mx.preference, name_text(&mx.exchange)),
        RData::SRV(srv) => format!(
            "{} {} {} {}",
            srv.priority,
            srv.weight,
            srv.port,
            name_text(&srv.target)
        ),
        RData::SOA(soa) => format!(
            "{} {} {} {} {} {} {}",
            name_text(&soa.mname),
            name_text(&soa.rname),
            soa.serial,
            soa.refresh,
            soa.retry,
            soa.expire,
            soa.minimum
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
        escape(&mut out, b, b"\"\\", 0x20);
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

/// A status as dig names it.
pub fn status_text(code: ResponseCode) -> String {
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
        other => match u16::from(other) {
            16 => "BADVERS".into(),
            17 => "BADKEY".into(),
            18 => "BADTIME".into(),
            19 => "BADMODE".into(),
            20 => "BADNAME".into(),
            21 => "BADALG".into(),
            22 => "BADTRUNC".into(),
            23 => "BADCOOKIE".into(),
            n => format!("RESERVED{n}"),
        },
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
    if o.json {
        json(out, reply, message);
        return;
    }
    if o.yaml {
        yaml(out, lookup, reply, message);
        return;
    }
    if o.short {
        if o.answer {
            short(out, o, reply, message, shown_server);
        }
        return;
    }
    let m = &message.metadata;
    if o.comments {
        let _ = writeln!(out, ";; Got answer:");
        let qname = message
            .queries
            .first()
            .map(|q| name_text(q.name()))
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
            status_text(m.response_code),
            m.id
        );
        let flags = flags(message);
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
        if m.recursion_desired && !m.recursion_available {
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
            if let Some(line) = cookie_line(edns, reply.sent_cookie) {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    if o.question {
        if o.comments {
            let _ = writeln!(out, ";; QUESTION SECTION:");
        }
        for q in &message.queries {
            let line = question_line(
                &name_text(q.name()),
                &q.query_class().to_string(),
                &type_text(q.query_type()),
                o,
            );
            let _ = writeln!(out, "{line}");
        }
        if o.comments {
            let _ = writeln!(out);
        }
    }
    for (title, records) in sections(o, message) {
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
    } else if o.identify {
        let _ = writeln!(
            out,
            ";; Received {} bytes from {}({shown_server}) in {} ms\n",
            reply.bytes.len(),
            server_text(reply.server),
            reply.elapsed.as_millis()
        );
    }
}

/// The `; COOKIE:` line, as dig judges the cookie that came back: `(good)` when it starts with
/// the client cookie sent and carries a server cookie, `(echoed)` when it is the client cookie
/// alone, `(bad)` otherwise.
fn cookie_line(edns: &hickory_proto::op::Edns, sent: Option<[u8; 8]>) -> Option<String> {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    let data = edns
        .options()
        .as_ref()
        .iter()
        .find_map(|(code, option)| match (code, option) {
            (EdnsCode::Cookie, EdnsOption::Unknown(_, data)) => Some(data.clone()),
            _ => None,
        })?;
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let client_matches = sent.is_some_and(|sent| data.get(..8) == Some(&sent[..]));
    let verdict = match (client_matches, data.len()) {
        (true, 8) => " (echoed)",
        (true, _) => " (good)",
        (false, _) => " (bad)",
    };
    Some(format!("; COOKIE: {hex}{verdict}"))
}

/// `+short`: the answers' data, one per line; with `+identify`, who answered and how fast.
fn short(out: &mut String, o: &Options, reply: &Reply, message: &Message, shown_server: &str) {
    for record in message
        .answers
        .iter()
        .filter(|r| r.record_type() != RecordType::OPT)
    {
        if o.identify {
            let _ = writeln!(
                out,
                "{} from server {shown_server} in {} ms.",
                rdata_text(record),
                reply.elapsed.as_millis()
            );
        } else {
            let _ = writeln!(out, "{}", rdata_text(record));
        }
    }
}

/// A record on one line with single spaces, as `+yaml` quotes it.
fn record_flat(record: &Record) -> String {
    format!(
        "{} {} {} {} {}",
        name_text(&record.name),
        record.ttl,
        record.dns_class,
        type_text(record.record_type()),
        rdata_text(record)
    )
}

/// `+yaml`: dig's YAML document for the reply.
fn yaml(out: &mut String, lookup: &Lookup, reply: &Reply, message: &Message) {
    let o = &lookup.options;
    let m = &message.metadata;
    let _ = writeln!(out, "- type: MESSAGE\n  message:");
    let kind = if m.recursion_desired && m.recursion_available {
        "RECURSIVE_RESPONSE"
    } else {
        "AUTH_RESPONSE"
    };
    let _ = writeln!(out, "    type: {kind}");
    let received = jiff::Timestamp::now();
    let sent = received
        .checked_sub(jiff::SignedDuration::try_from(reply.elapsed).unwrap_or_default())
        .unwrap_or(received);
    let iso = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let _ = writeln!(out, "    query_time: !!timestamp {}", iso(sent));
    let _ = writeln!(out, "    response_time: !!timestamp {}", iso(received));
    let _ = writeln!(out, "    message_size: {}b", reply.bytes.len());
    let family = if reply.server.is_ipv4() {
        "INET"
    } else {
        "INET6"
    };
    let protocol = match reply.transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
    };
    let _ = writeln!(
        out,
        "    socket_family: {family}\n    socket_protocol: {protocol}"
    );
    let _ = writeln!(out, "    response_address: \"{}\"", reply.server.ip());
    let _ = writeln!(out, "    response_port: {}", reply.server.port());
    let any = if reply.server.is_ipv4() {
        "0.0.0.0"
    } else {
        "::0"
    };
    let _ = writeln!(out, "    query_address: \"{any}\"\n    query_port: 0");
    let _ = writeln!(out, "    response_message_data:");
    let _ = writeln!(
        out,
        "      opcode: {}",
        format!("{:?}", m.op_code).to_ascii_uppercase()
    );
    let _ = writeln!(out, "      status: {}", status_text(m.response_code));
    let _ = writeln!(out, "      id: {}", m.id);
    let _ = writeln!(out, "      flags: {}", flags(message).join(" "));
    let additional = message.additionals.len() + usize::from(message.edns.is_some());
    let _ = writeln!(out, "      QUESTION: {}", message.queries.len());
    let _ = writeln!(out, "      ANSWER: {}", message.answers.len());
    let _ = writeln!(out, "      AUTHORITY: {}", message.authorities.len());
    let _ = writeln!(out, "      ADDITIONAL: {additional}");
    if o.short {
        short(out, o, reply, message, "");
        return;
    }
    if let Some(edns) = message.edns.as_ref().filter(|_| o.comments) {
        let _ = writeln!(out, "      OPT_PSEUDOSECTION:\n        EDNS:");
        let _ = writeln!(out, "          version: {}", edns.version());
        let flags = if edns.flags().dnssec_ok { " do" } else { "" };
        let _ = writeln!(out, "          flags:{flags}");
        let _ = writeln!(out, "          udp: {}", edns.max_payload());
    }
    if o.question && !message.queries.is_empty() {
        let _ = writeln!(out, "      QUESTION_SECTION:");
        for q in &message.queries {
            let _ = writeln!(
                out,
                "        - '{} {} {}'",
                name_text(q.name()),
                q.query_class(),
                type_text(q.query_type())
            );
        }
    }
    for (title, records) in sections(o, message) {
        let _ = writeln!(out, "      {title}_SECTION:");
        for record in records {
            let _ = writeln!(
                out,
                "        - '{}'",
                record_flat(record).replace('\'', "''")
            );
        }
    }
}

/// The header flags dig lists, in its order.
fn flags(message: &Message) -> Vec<&'static str> {
    let m = &message.metadata;
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
    flags
}

/// The record sections to show (answer, authority, additional), each with its records (the OPT
/// pseudo-record left out); empty sections are not shown.
fn sections<'m>(o: &Options, message: &'m Message) -> Vec<(&'static str, Vec<&'m Record>)> {
    [
        (o.answer, "ANSWER", &message.answers),
        (o.authority, "AUTHORITY", &message.authorities),
        (o.additional, "ADDITIONAL", &message.additionals),
    ]
    .into_iter()
    .filter(|(show, _, _)| *show)
    .map(|(_, title, records)| {
        let records: Vec<&Record> = records
            .iter()
            .filter(|r| r.record_type() != RecordType::OPT)
            .collect();
        (title, records)
    })
    .filter(|(_, records)| !records.is_empty())
    .collect()
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

/// `+json`: the reply as an RFC 8427 message object (the shape kdig prints), one per lookup.
/// Records carry `rdata<TYPE>` in presentation form, as kdig does for every type, and also
/// `RDATAHEX`, which RFC 8427 defines for all.
pub fn json(out: &mut String, reply: &Reply, message: &Message) {
    use serde_json::{Map, Value, json};
    let m = &message.metadata;
    let now = jiff::Timestamp::now();
    let mut object = Map::new();
    object.insert(
        "dateString".into(),
        json!(now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
    );
    object.insert("dateSeconds".into(), json!(now.as_second()));
    object.insert("msgLength".into(), json!(reply.bytes.len()));
    object.insert("ID".into(), json!(m.id));
    object.insert(
        "QR".into(),
        json!(u8::from(m.message_type == MessageType::Response)),
    );
    object.insert("Opcode".into(), json!(u8::from(m.op_code)));
    for (key, on) in [
        ("AA", m.authoritative),
        ("TC", m.truncation),
        ("RD", m.recursion_desired),
        ("RA", m.recursion_available),
        ("AD", m.authentic_data),
        ("CD", m.checking_disabled),
    ] {
        object.insert(key.into(), json!(u8::from(on)));
    }
    object.insert("RCODE".into(), json!(u16::from(m.response_code)));
    object.insert("QDCOUNT".into(), json!(message.queries.len()));
    object.insert("ANCOUNT".into(), json!(message.answers.len()));
    object.insert("NSCOUNT".into(), json!(message.authorities.len()));
    let additional = message.additionals.len() + usize::from(message.edns.is_some());
    object.insert("ARCOUNT".into(), json!(additional));
    if let Some(q) = message.queries.first() {
        object.insert("QNAME".into(), json!(name_text(q.name())));
        object.insert("QTYPE".into(), json!(u16::from(q.query_type())));
        object.insert("QTYPEname".into(), json!(type_text(q.query_type())));
        object.insert("QCLASS".into(), json!(u16::from(q.query_class())));
        object.insert("QCLASSname".into(), json!(q.query_class().to_string()));
    }
    let records = |records: &[Record]| -> Value {
        Value::Array(
            records
                .iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .map(|r| {
                    let mut rr = Map::new();
                    rr.insert("NAME".into(), json!(name_text(&r.name)));
                    rr.insert("TYPE".into(), json!(u16::from(r.record_type())));
                    rr.insert("TYPEname".into(), json!(type_text(r.record_type())));
                    rr.insert("CLASS".into(), json!(u16::from(r.dns_class)));
                    rr.insert("CLASSname".into(), json!(r.dns_class.to_string()));
                    rr.insert("TTL".into(), json!(r.ttl));
                    rr.insert(
                        format!("rdata{}", type_text(r.record_type())),
                        json!(rdata_text(r)),
                    );
                    let mut wire = Vec::new();
                    let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut wire);
                    if hickory_proto::serialize::binary::BinEncodable::emit(&r.data, &mut encoder)
                        .is_ok()
                    {
                        rr.insert("RDLENGTH".into(), json!(wire.len()));
                        let hex: String = wire.iter().map(|b| format!("{b:02X}")).collect();
                        rr.insert("RDATAHEX".into(), json!(hex));
                    }
                    Value::Object(rr)
                })
                .collect(),
        )
    };
    for (key, section) in [
        ("answerRRs", &message.answers),
        ("authorityRRs", &message.authorities),
        ("additionalRRs", &message.additionals),
    ] {
        if section.iter().any(|r| r.record_type() != RecordType::OPT) {
            object.insert(key.into(), records(section));
        }
    }
    if let Some(edns) = &message.edns {
        object.insert(
            "EDNS".into(),
            json!({"version": edns.version(), "DO": u8::from(edns.flags().dnssec_ok), "udpSize": edns.max_payload()}),
        );
    }
    let text = serde_json::to_string_pretty(&Value::Object(object)).unwrap_or_default();
    let _ = writeln!(out, "{text}");
}

/// Colours dig's text for a terminal: the status in the header (green when NOERROR, red
/// otherwise), section titles in bold, warnings in yellow, record owners in cyan. The text
/// itself is unchanged; only escape sequences are added.
pub fn colorize(text: &str) -> String {
    const RESET: &str = "\x1b[0m";
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        if let Some((head, rest)) = body.split_once("status: ") {
            let (word, tail) = rest.split_once(',').unwrap_or((rest, ""));
            let color = if word == "NOERROR" {
                "\x1b[32m"
            } else {
                "\x1b[31m"
            };
            let comma = if tail.is_empty() && !rest.contains(',') {
                ""
            } else {
                ","
            };
            let _ = write!(out, "{head}status: {color}{word}{RESET}{comma}{tail}");
        } else if body.starts_with(";; WARNING") {
            let _ = write!(out, "\x1b[33m{body}{RESET}");
        } else if body.starts_with(";; ")
            && (body.ends_with(" SECTION:") || body.ends_with("PSEUDOSECTION:"))
        {
            let _ = write!(out, "\x1b[1m{body}{RESET}");
        } else if !body.is_empty() && !body.starts_with(';') {
            match body.split_once(['\t', ' ']) {
                Some((owner, rest)) => {
                    let separator = &body[owner.len()..owner.len() + 1];
                    let _ = write!(out, "\x1b[36m{owner}{RESET}{separator}{rest}");
                }
                None => out.push_str(body),
            }
        } else {
            out.push_str(body);
        }
        out.push_str(newline);
    }
    out
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
    fn colour_adds_escapes_and_changes_nothing_else() {
        let text = ";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 7\n;; ANSWER SECTION:\nweb.\t5\tIN\tA\t10.0.0.1\n";
        let colored = colorize(text);
        assert!(colored.contains("status: \x1b[31mNXDOMAIN\x1b[0m, id: 7"));
        assert!(colored.contains("\x1b[36mweb.\x1b[0m\t5"));
        let stripped: String = {
            let mut plain = String::new();
            let mut chars = colored.chars();
            while let Some(c) = chars.next() {
                if c == '\x1b' {
                    for c in chars.by_ref() {
                        if c == 'm' {
                            break;
                        }
                    }
                } else {
                    plain.push(c);
                }
            }
            plain
        };
        assert_eq!(stripped, text);
    }

    #[test]
    fn names_are_escaped_as_bind_does() {
        let name = Name::from_labels(vec![
            &b"a b"[..],
            &b"\xc3\xa4"[..],
            &b"x#y"[..],
            &b"q.r"[..],
        ])
        .unwrap();
        assert_eq!(name_text(&name), "a\\032b.\\195\\164.x#y.q\\.r.");
        assert_eq!(name_text(&Name::root()), ".");
        assert_eq!(type_text(RecordType::ZERO), "TYPE0");
    }

    #[test]
    fn strings_are_quoted_as_dig_does() {
        assert_eq!(quote(b"a \"b\" \\ c\x07"), "\"a \\\"b\\\" \\\\ c\\007\"");
    }
}
