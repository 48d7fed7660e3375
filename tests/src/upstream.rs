//! A small authoritative DNS server for the forwarding tests: real UDP, TCP and TLS on loopback,
//! records given in zone-file syntax, and knobs for what upstreams do wrong (go silent, truncate
//! UDP). Built on hickory-proto, independent of the code under test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Counters and switches of a running upstream.
#[derive(Debug, Default)]
pub struct Knobs {
    /// Drop every query (the upstream is "down").
    pub silent: AtomicBool,
    /// Answer UDP queries with TC and no records.
    pub truncate_udp: AtomicBool,
    /// Answer everything with SERVFAIL.
    pub servfail: AtomicBool,
    pub udp_queries: AtomicU64,
    pub tcp_queries: AtomicU64,
    pub tls_queries: AtomicU64,
    /// Names asked, in order (lower case, with the trailing dot).
    pub asked: std::sync::Mutex<Vec<String>>,
}

impl Knobs {
    pub fn total(&self) -> u64 {
        self.udp_queries.load(Ordering::Relaxed)
            + self.tcp_queries.load(Ordering::Relaxed)
            + self.tls_queries.load(Ordering::Relaxed)
    }

    pub fn asked(&self, name: &str) -> usize {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|n| *n == name)
            .count()
    }
}

/// Records of one upstream: `name ttl IN TYPE rdata` lines. Names below `zone` that are not
/// listed are NXDOMAIN with the zone's SOA (TTL 300, MINIMUM `negative_ttl`).
#[derive(Debug, Clone)]
pub struct Zone {
    pub origin: String,
    pub records: Vec<String>,
    pub negative_ttl: u32,
}

/// A running upstream.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub knobs: Arc<Knobs>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A CA and a server certificate it signed, written as PEM files for the client side.
pub struct TestCa {
    pub ca_file: PathBuf,
    pub server_name: String,
    acceptor: tokio_rustls::TlsAcceptor,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_file", &self.ca_file)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TestCa {
    /// A fresh CA, and a server certificate for `server_name` signed by it.
    pub fn new(server_name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_params =
            CertificateParams::new(vec![server_name.to_string()]).expect("leaf params");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        let dir = tempfile::tempdir().expect("tmp");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key der");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .expect("server config");
        Self {
            ca_file,
            server_name: server_name.to_string(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            _dir: dir,
        }
    }
}

fn parse_records(zone: &Zone) -> HashMap<(Name, RecordType), Vec<Record>> {
    let mut out: HashMap<(Name, RecordType), Vec<Record>> = HashMap::new();
    for line in &zone.records {
        let f: Vec<&str> = line.split_whitespace().collect();
        let name = Name::from_ascii(f[0]).expect("name").to_lowercase();
        let ttl: u32 = f[1].parse().expect("ttl");
        let rtype = RecordType::from_str(f[3]).expect("type");
        let data = match rtype {
            RecordType::A => RData::A(f[4].parse().expect("ipv4")),
            RecordType::AAAA => RData::AAAA(f[4].parse().expect("ipv6")),
            RecordType::PTR => RData::PTR(rdata::PTR(Name::from_ascii(f[4]).expect("ptr"))),
            RecordType::CNAME => RData::CNAME(rdata::CNAME(Name::from_ascii(f[4]).expect("cname"))),
            RecordType::TXT => RData::TXT(rdata::TXT::new(vec![f[4..].join(" ")])),
            other => panic!("test upstream does not do {other}"),
        };
        out.entry((name.clone(), rtype))
            .or_default()
            .push(Record::from_rdata(name, ttl, data));
    }
    out
}

fn answer(
    zone: &Zone,
    recs: &HashMap<(Name, RecordType), Vec<Record>>,
    query: &[u8],
    tcp: bool,
    knobs: &Knobs,
) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let q = req.queries.first()?.clone();
    let name = q.name().to_lowercase();
    knobs
        .asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(name.to_string());
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.message_type = MessageType::Response;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_query(q.clone());
    if let Some(e) = &req.edns {
        let mut out = hickory_proto::op::Edns::new();
        out.set_max_payload(1232);
        out.set_dnssec_ok(e.flags().dnssec_ok);
        resp.edns = Some(out);
    }
    if knobs.servfail.load(Ordering::Relaxed) {
        resp.metadata.response_code = ResponseCode::ServFail;
        resp.metadata.authoritative = false;
        return resp.to_vec().ok();
    }
    if !tcp && knobs.truncate_udp.load(Ordering::Relaxed) {
        resp.metadata.truncation = true;
        return resp.to_vec().ok();
    }
    let origin = Name::from_ascii(&zone.origin)
        .expect("origin")
        .to_lowercase();
    match recs.get(&(name.clone(), q.query_type())) {
        Some(rs) => resp.answers.extend(rs.iter().cloned()),
        None => {
            let exists = recs.keys().any(|(n, _)| *n == name);
            if !exists {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            let soa = rdata::SOA::new(
                Name::from_ascii(format!("ns.{}", zone.origin)).expect("mname"),
                Name::from_ascii(format!("hostmaster.{}", zone.origin)).expect("rname"),
                1,
                3600,
                600,
                86400,
                zone.negative_ttl,
            );
            resp.authorities
                .push(Record::from_rdata(origin, 300, RData::SOA(soa)));
        }
    }
    resp.to_vec().ok()
}

impl Upstream {
    /// Starts on `127.0.0.1:0` (UDP and TCP on one port), plus TLS when `tls` is given.
    pub async fn start(zone: Zone, tls: Option<&TestCa>) -> Self {
        let recs = Arc::new(parse_records(&zone));
        let zone = Arc::new(zone);
        let knobs = Arc::new(Knobs::default());
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().expect("addr")).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let mut tasks = Vec::new();
        {
            let (recs, zone, knobs) = (Arc::clone(&recs), Arc::clone(&zone), Arc::clone(&knobs));
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65535];
                loop {
                    let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    knobs.udp_queries.fetch_add(1, Ordering::Relaxed);
                    if knobs.silent.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Some(r) = answer(&zone, &recs, &buf[..n], false, &knobs) {
                        let _ = udp.send_to(&r, peer).await;
                    }
                }
            }));
        }
        let serve_stream = |recs: Arc<HashMap<(Name, RecordType), Vec<Record>>>,
                            zone: Arc<Zone>,
                            knobs: Arc<Knobs>| {
            move |mut s: Box<dyn Stream>, counter: fn(&Knobs) -> &AtomicU64| {
                let (recs, zone, knobs) =
                    (Arc::clone(&recs), Arc::clone(&zone), Arc::clone(&knobs));
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        counter(&knobs).fetch_add(1, Ordering::Relaxed);
                        if knobs.silent.load(Ordering::Relaxed) {
                            continue;
                        }
                        let Some(r) = answer(&zone, &recs, &q, true, &knobs) else {
                            return;
                        };
                        let mut out = (r.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&r);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        };
        {
            let serve = serve_stream(Arc::clone(&recs), Arc::clone(&zone), Arc::clone(&knobs));
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Ok((s, _)) = tcp.accept().await {
                        serve(Box::new(s), |k| &k.tcp_queries);
                    }
                }
            }));
        }
        let mut tls_addr = None;
        if let Some(ca) = tls {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("tls");
            tls_addr = Some(listener.local_addr().expect("addr"));
            let acceptor = ca.acceptor.clone();
            let serve = serve_stream(Arc::clone(&recs), Arc::clone(&zone), Arc::clone(&knobs));
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let serve = serve.clone();
                    tokio::spawn(async move {
                        if let Ok(s) = acceptor.accept(s).await {
                            serve(Box::new(s), |k| &k.tls_queries);
                        }
                    });
                }
            }));
        }
        Self {
            addr,
            tls_addr,
            knobs,
            tasks,
        }
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
