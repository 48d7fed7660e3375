//! Support for the cross-crate tests: the DNS case table, DNS clients over real sockets, the
//! real `dig`, and starting a server on `127.0.0.1:0`.
//!
//! The case table (`cases/*.cases`) is written in zone-file syntax so that the same cases run
//! in-process against `answer()`, over UDP and TCP against a running server, and later through
//! every discovery source:
//!
//! ```text
//! query web.alpha.svc.cluster.local. A        # name and type; options: +noedns +bufsize=N +dnssec +norec
//! rcode NOERROR
//! flags qr aa rd                              # exactly these header flags
//! answer web.alpha.svc.cluster.local. 5 IN A 10.96.1.1
//! authority cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5
//! additional ...
//! ```
//!
//! Sections compare as sets; a section without lines must be empty. `SERIAL` stands for any SOA
//! serial. Every reply is also checked for what every reply must have: the query's id, QR, the
//! question echoed byte for byte, and an OPT (version 0, payload 1232, DO copied) exactly when
//! the query had one.

pub mod apiserver;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, Record, RecordType};

/// One case of the table.
#[derive(Debug, Clone, Default)]
pub struct Case {
    /// Where the case starts in its file, for messages.
    pub line: usize,
    pub qname: String,
    pub qtype: String,
    pub edns: Option<u16>,
    pub dnssec_ok: bool,
    pub recursion_desired: bool,
    pub rcode: String,
    pub flags: Option<String>,
    pub answer: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
}

/// Parses a case table.
pub fn parse_cases(text: &str) -> anyhow::Result<Vec<Case>> {
    let mut cases = Vec::new();
    let mut cur: Option<Case> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim().to_string();
        if key == "query" {
            if let Some(c) = cur.take() {
                cases.push(c);
            }
            let mut parts = rest.split_whitespace();
            let (Some(qname), Some(qtype)) = (parts.next(), parts.next()) else {
                bail!("line {}: query NAME TYPE [options]", i + 1);
            };
            let mut c = Case {
                line: i + 1,
                qname: qname.into(),
                qtype: qtype.into(),
                edns: Some(1232),
                recursion_desired: true,
                rcode: "NOERROR".into(),
                ..Case::default()
            };
            for opt in parts {
                match opt {
                    "+noedns" => c.edns = None,
                    "+dnssec" => c.dnssec_ok = true,
                    "+norec" => c.recursion_desired = false,
                    o if o.starts_with("+bufsize=") => c.edns = Some(o[9..].parse()?),
                    o => bail!("line {}: unknown option {o}", i + 1),
                }
            }
            cur = Some(c);
            continue;
        }
        let Some(c) = cur.as_mut() else {
            bail!("line {}: {key} before any query", i + 1)
        };
        match key {
            "rcode" => c.rcode = rest,
            "flags" => c.flags = Some(rest),
            "answer" => c.answer.push(normalize_line(&rest)),
            "authority" => c.authority.push(normalize_line(&rest)),
            "additional" => c.additional.push(normalize_line(&rest)),
            _ => bail!("line {}: unknown key {key}", i + 1),
        }
    }
    cases.extend(cur);
    Ok(cases)
}

/// Loads a table from `tests/cases/`.
pub fn load_cases(name: &str) -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_cases(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture cluster every table runs against.
pub fn fixture_cluster() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cluster")
}

/// The example cluster the README serves.
pub fn example_cluster() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/cluster")
}

fn normalize_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A record as a table line: `name ttl IN TYPE rdata`, with an SOA's serial as `SERIAL`.
pub fn render(r: &Record) -> String {
    let mut s = normalize_line(&r.to_string());
    if r.record_type() == RecordType::SOA {
        let mut f: Vec<&str> = s.split(' ').collect();
        if f.len() > 6 {
            f[6] = "SERIAL";
        }
        s = f.join(" ");
    }
    s
}

/// The query bytes for a case.
pub fn case_query(c: &Case, id: u16) -> Vec<u8> {
    build_query(
        id,
        &c.qname,
        &c.qtype,
        c.edns,
        c.dnssec_ok,
        c.recursion_desired,
    )
}

/// A query built with hickory-proto, a client independent of the server's own code.
pub fn build_query(
    id: u16,
    qname: &str,
    qtype: &str,
    edns: Option<u16>,
    dnssec_ok: bool,
    rd: bool,
) -> Vec<u8> {
    let name = Name::from_ascii(qname).unwrap_or_else(|e| panic!("bad name {qname}: {e}"));
    let rtype: RecordType = qtype
        .parse()
        .unwrap_or_else(|_| RecordType::Unknown(qtype.parse().unwrap_or(0)));
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = rd;
    m.add_query(Query::query(name, rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_dnssec_ok(dnssec_ok);
        m.edns = Some(e);
    }
    m.to_vec().expect("query encodes")
}

/// The number of an rcode name as dig prints it.
pub fn rcode_value(name: &str) -> Option<u16> {
    Some(match name {
        "NOERROR" => 0,
        "FORMERR" => 1,
        "SERVFAIL" => 2,
        "NXDOMAIN" => 3,
        "NOTIMP" => 4,
        "REFUSED" => 5,
        "BADVERS" => 16,
        _ => return None,
    })
}

fn flags_of(m: &Message) -> String {
    let h = &m.metadata;
    let mut f = Vec::new();
    for (on, name) in [
        (
            h.message_type == hickory_proto::op::MessageType::Response,
            "qr",
        ),
        (h.authoritative, "aa"),
        (h.truncation, "tc"),
        (h.recursion_desired, "rd"),
        (h.recursion_available, "ra"),
        (h.authentic_data, "ad"),
        (h.checking_disabled, "cd"),
    ] {
        if on {
            f.push(name);
        }
    }
    f.join(" ")
}

/// Checks a reply against a case. The error says every difference.
pub fn check_reply(c: &Case, query: &[u8], reply: &[u8]) -> Result<(), String> {
    let m = Message::from_vec(reply).map_err(|e| format!("reply does not parse: {e}"))?;
    let mut errs = Vec::new();
    if reply[..2] != query[..2] {
        errs.push("id not copied".to_string());
    }
    let qlen = question_len(query);
    if reply.get(12..12 + qlen) != query.get(12..12 + qlen) {
        errs.push("question not echoed byte for byte".into());
    }
    let rcode = u16::from(m.metadata.response_code);
    match rcode_value(&c.rcode) {
        Some(want) if want == rcode => {}
        Some(_) => errs.push(format!(
            "rcode {rcode} ({}), want {}",
            m.metadata.response_code, c.rcode
        )),
        None => errs.push(format!("unknown rcode name {} in the case", c.rcode)),
    }
    if let Some(want) = &c.flags
        && flags_of(&m) != *want
    {
        errs.push(format!("flags [{}], want [{want}]", flags_of(&m)));
    }
    match (c.edns, &m.edns) {
        (Some(_), None) => errs.push("no OPT in the reply to a query with one".into()),
        (None, Some(_)) => errs.push("OPT in the reply to a query without one".into()),
        (Some(_), Some(e)) => {
            if e.max_payload() != 1232 || e.version() != 0 || e.flags().dnssec_ok != c.dnssec_ok {
                errs.push(format!(
                    "OPT {e:?}: want payload 1232, version 0, DO {}",
                    c.dnssec_ok
                ));
            }
        }
        (None, None) => {}
    }
    for (name, got, want) in [
        ("answer", &m.answers, &c.answer),
        ("authority", &m.authorities, &c.authority),
        ("additional", &m.additionals, &c.additional),
    ] {
        let mut got: Vec<String> = got.iter().map(render).collect();
        let mut want = want.clone();
        got.sort();
        want.sort();
        if got != want {
            errs.push(format!(
                "{name}:\n    got  {}\n    want {}",
                got.join("\n         "),
                want.join("\n         ")
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n  "))
    }
}

/// Length of the question section of a query built by [`build_query`].
fn question_len(q: &[u8]) -> usize {
    let mut p = 12;
    while p < q.len() && q[p] != 0 {
        p += 1 + q[p] as usize;
    }
    p + 1 + 4 - 12
}

/// Runs every case through `exchange` and panics with all failures at once.
pub fn run_table(
    cases: &[Case],
    mut exchange: impl FnMut(&Case, &[u8]) -> anyhow::Result<Vec<u8>>,
) {
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let q = case_query(c, 0x4000 + i as u16);
        match exchange(c, &q) {
            Ok(reply) => {
                if let Err(e) = check_reply(c, &q, &reply) {
                    failures.push(format!("line {}: {} {}:\n  {e}", c.line, c.qname, c.qtype));
                }
            }
            Err(e) => failures.push(format!("line {}: {} {}: {e:#}", c.line, c.qname, c.qtype)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// One query over UDP.
pub fn udp_exchange(server: SocketAddr, query: &[u8]) -> anyhow::Result<Vec<u8>> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.send_to(query, server)?;
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock
        .recv_from(&mut buf)
        .context("no UDP reply within 5 s")?;
    buf.truncate(n);
    Ok(buf)
}

/// Several queries over one TCP connection, all written before any reply is read.
pub fn tcp_exchange_many(server: SocketAddr, queries: &[Vec<u8>]) -> anyhow::Result<Vec<Vec<u8>>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = Vec::new();
    for q in queries {
        out.extend_from_slice(&(q.len() as u16).to_be_bytes());
        out.extend_from_slice(q);
    }
    s.write_all(&out)?;
    let mut replies = Vec::new();
    for _ in queries {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).context("TCP reply length")?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).context("TCP reply")?;
        replies.push(buf);
    }
    Ok(replies)
}

/// One query over TCP.
pub fn tcp_exchange(server: SocketAddr, query: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(tcp_exchange_many(server, &[query.to_vec()])?.remove(0))
}

/// True when `tool` runs. When it does not: outside CI, print why and return false (the test
/// skips); under `CI=true`, panic, so CI can never pass by skipping.
pub fn have_tool(tool: &str) -> bool {
    let ok = Command::new(tool).arg("-v").output().is_ok();
    if !ok {
        let msg = format!("{tool} is not installed (apt-get install bind9-dnsutils)");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg}; CI must have it"
        );
        eprintln!("SKIP: {msg}");
    }
    ok
}

/// Runs the real dig against `server` and returns its stdout.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn test_config(source: clusterdns::Source) -> clusterdns::ServeConfig {
    clusterdns::ServeConfig {
        server: clusterdns::ServerConfig {
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            udp_workers: 2,
            ..Default::default()
        },
        view: clusterdns::ViewConfig::default(),
        source,
        startup_timeout: Duration::from_secs(5),
        admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
        // Never the machine's resolver: tests forward only to upstreams they start.
        forward: None,
    }
}

/// A server on `127.0.0.1:0` serving `manifests`, with fast manifest watching.
pub async fn start_server(
    manifests: &Path,
    tweak: impl FnOnce(&mut clusterdns::ServeConfig),
) -> clusterdns::Running {
    let mut cfg = test_config(clusterdns::Source::Manifests {
        dir: manifests.to_path_buf(),
        watch: discovery::manifests::WatchOptions {
            debounce: Duration::from_millis(50),
            rescan: Duration::from_secs(5),
            ..Default::default()
        },
    });
    tweak(&mut cfg);
    clusterdns::start(cfg).await.expect("server starts")
}

/// A server on `127.0.0.1:0` watching the Kubernetes API through `kubeconfig`.
pub async fn start_kube_server(
    kubeconfig: &Path,
    tweak: impl FnOnce(&mut clusterdns::ServeConfig),
) -> clusterdns::Running {
    let mut cfg = test_config(clusterdns::Source::Kubernetes {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        options: discovery::kubernetes::KubeOptions::default(),
    });
    tweak(&mut cfg);
    clusterdns::start(cfg).await.expect("server starts")
}

/// One query over UDP: the rcode and the answer records' data, sorted (`10.0.0.1`, a target...).
pub fn lookup(server: SocketAddr, name: &str, qtype: &str) -> (u8, Vec<String>) {
    let q = build_query(0x5151, name, qtype, Some(1232), false, true);
    let r = udp_exchange(server, &q).unwrap_or_else(|e| panic!("{name} {qtype}: {e:#}"));
    let m = Message::from_vec(&r)
        .unwrap_or_else(|e| panic!("{name} {qtype}: reply does not parse: {e}"));
    let mut data: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    data.sort();
    (r[3] & 0x0F, data)
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one Prometheus sample, found by metric name and labels (absent counts as 0).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Polls `f` every 20 ms until it returns true, for at most `limit`. A generous bound on a
/// wait, not a speed assertion.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
