//! Forwarding: names the server is not authoritative for go to upstreams, with a cache in front.
//!
//! ```text
//!  query ──route (longest zone)──> cache ──hit──────────────> patch id, case, TTLs ──> reply
//!                                    │miss
//!                                    └─> in-flight cap ─> group (policy, skip unhealthy)
//!                                          └─> upstream: UDP (TCP on TC) or TLS, new id,
//!                                              reply matched on id and question ──> cache ──> reply
//! ```
//!
//! It relays wire messages: the upstream's reply goes back to the client with the client's id,
//! flags and spelling of the question, never rebuilt. An upstream that fails twice in a row is
//! skipped until a background probe gets an answer from it. When every upstream fails the client
//! gets SERVFAIL, or a stale answer when `cache.serve_stale` allows (RFC 8767).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::config::{ForwardConfig, GroupSpec, Policy, Transport, UpstreamSpec};
use crate::metrics::Histogram;
use crate::wire::{EDNS_PAYLOAD, HEADER_LEN, Rcode, records, rtype, ttl_of};

/// How long one upstream gets to answer one try.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; more get SERVFAIL at once (and a metric).
pub const MAX_IN_FLIGHT: usize = 1000;
/// Consecutive failures that mark an upstream down.
pub const MAX_FAILS: u32 = 2;
/// How often down upstreams are probed.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// TTL of SERVFAIL replies from upstreams in the cache.
pub const SERVFAIL_TTL: Duration = Duration::from_secs(3);
/// TTL given to stale answers (RFC 8767 recommends 30 s).
pub const STALE_TTL: u32 = 30;

/// What a forwarded question is.
#[derive(Debug, Clone)]
pub struct Question {
    /// The question section as the client sent it (name in the client's case, type, class).
    pub question: Vec<u8>,
    /// The name in lower case, wire form.
    pub lname: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

/// Per-upstream state.
#[derive(Debug)]
pub struct Upstream {
    pub spec: UpstreamSpec,
    pub label: String,
    /// Consecutive failures; at MAX_FAILS or more the upstream is down. One word, so a success
    /// racing a failure cannot leave it marked down after it answered.
    fails: AtomicU32,
    pub requests: AtomicU64,
    pub healthcheck_failures: AtomicU64,
    /// Replies by rcode (index: rcode value, 16 for everything else).
    pub responses: [AtomicU64; 17],
    pub duration: Histogram,
}

impl Upstream {
    fn new(spec: UpstreamSpec) -> Self {
        Self {
            label: spec.label(),
            spec,
            fails: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            healthcheck_failures: AtomicU64::new(0),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            duration: Histogram::new(crate::metrics::DURATION_BOUNDS),
        }
    }

    pub fn is_down(&self) -> bool {
        self.fails.load(Ordering::Relaxed) >= MAX_FAILS
    }

    /// A failed try. Any answer in between resets the count, so one slow name among answered
    /// ones does not take a working upstream down.
    fn failed(&self, why: &str) {
        if self.fails.fetch_add(1, Ordering::Relaxed) + 1 == MAX_FAILS {
            tracing::warn!(upstream = %self.label, error = why, "upstream down; skipping it until it answers a probe");
        }
    }

    fn succeeded(&self) {
        if self.fails.swap(0, Ordering::Relaxed) >= MAX_FAILS {
            tracing::info!(upstream = %self.label, "upstream up again");
        }
    }
}

/// A group of upstreams with its policy.
#[derive(Debug)]
pub struct Group {
    pub spec: Arc<GroupSpec>,
    pub upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
    /// The zone this group forwards (root for the default group), for its loop probe.
    zone: Vec<u8>,
    /// Set once the loop probe went out: on the group's first forwarded query, so that a server
    /// that never forwards sends nothing upstream.
    probed: AtomicBool,
}

impl Group {
    /// The order to try the upstreams in: healthy ones by policy, then nothing (when all are
    /// down the query fails at once; probes bring them back).
    fn order(&self) -> Vec<Arc<Upstream>> {
        let n = self.upstreams.len();
        let start = match self.spec.policy {
            Policy::Random => fastrand::usize(..n),
            Policy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Policy::Sequential => 0,
        };
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .filter(|u| !u.is_down())
            .cloned()
            .collect()
    }
}

/// Why forwarding produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("every upstream failed: {0}")]
    AllFailed(String),
    #[error("too many forwarded queries in flight")]
    Overloaded,
}

/// A cached reply.
#[derive(Debug)]
struct Entry {
    reply: Box<[u8]>,
    stored: Instant,
    ttl: Duration,
    negative: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    lname: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl Key {
    fn of(q: &Question) -> Self {
        Self {
            lname: q.lname.clone().into_boxed_slice(),
            qtype: q.qtype,
            qclass: q.qclass,
            dnssec_ok: q.dnssec_ok,
            checking_disabled: q.checking_disabled,
        }
    }
}

/// The response cache in front of forwarding.
#[derive(Debug)]
pub struct Cache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    capacity: u64,
    /// How long entries are kept at most (the longest TTL cap plus serve_stale).
    keep: Duration,
    pub hits_success: AtomicU64,
    pub hits_denial: AtomicU64,
    pub misses: AtomicU64,
    pub served_stale: AtomicU64,
}

impl Cache {
    pub fn new(capacity: u64, keep_for: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(keep_for.max(Duration::from_secs(1)))
                .build(),
            capacity,
            keep: keep_for,
            hits_success: AtomicU64::new(0),
            hits_denial: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            served_stale: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// (positive, negative) entries.
    pub fn counts(&self) -> (u64, u64) {
        let (mut p, mut n) = (0, 0);
        for (_, e) in self.entries.iter() {
            if e.negative { n += 1 } else { p += 1 }
        }
        (p, n)
    }
}

/// The forwarder of one config generation.
#[derive(Debug)]
pub struct Forwarder {
    pub config: ForwardConfig,
    zones: Vec<(Vec<u8>, Arc<Group>)>,
    default: Option<Arc<Group>>,
    pub cache: Arc<Cache>,
    in_flight: Arc<Semaphore>,
    pub rejects: AtomicU64,
    /// The first label of loop probes: a query for it coming back means a forwarding loop.
    pub loop_label: Vec<u8>,
    pub loop_detected: AtomicBool,
}

impl Forwarder {
    /// A forwarder for `config`, reusing `cache` when given (a reload keeps cached answers).
    pub fn new(config: ForwardConfig, cache: Option<Arc<Cache>>) -> Self {
        let mut made: Vec<Arc<Group>> = Vec::new();
        let mut group_of = |spec: &Arc<GroupSpec>| {
            if let Some(g) = made.iter().find(|g| Arc::ptr_eq(&g.spec, spec)) {
                return Arc::clone(g);
            }
            let zone = config
                .zones
                .iter()
                .find(|(_, g)| Arc::ptr_eq(g, spec))
                .map(|(z, _)| z.clone())
                .unwrap_or_else(|| vec![0]);
            let g = Arc::new(Group {
                spec: Arc::clone(spec),
                upstreams: spec
                    .upstreams
                    .iter()
                    .cloned()
                    .map(|u| Arc::new(Upstream::new(u)))
                    .collect(),
                next: AtomicUsize::new(0),
                zone,
                probed: AtomicBool::new(false),
            });
            made.push(Arc::clone(&g));
            g
        };
        let zones = config
            .zones
            .iter()
            .map(|(z, g)| (z.clone(), group_of(g)))
            .collect();
        let default = config.default.as_ref().map(&mut group_of);
        let keep =
            config.cache.max_ttl.max(config.cache.max_negative_ttl) + config.cache.serve_stale;
        let cache = cache
            .filter(|c| c.capacity() == config.cache.capacity && c.keep == keep)
            .unwrap_or_else(|| Arc::new(Cache::new(config.cache.capacity, keep)));
        let loop_label = format!("clusterdns-loop-{:016x}", fastrand::u64(..)).into_bytes();
        Self {
            config,
            zones,
            default,
            cache,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            rejects: AtomicU64::new(0),
            loop_label,
            loop_detected: AtomicBool::new(false),
        }
    }

    /// The group that forwards `lname` (lower-case wire), if any.
    pub fn route(&self, lname: &[u8]) -> Option<&Arc<Group>> {
        crate::config::longest_zone(&self.zones, self.default.as_ref(), lname)
    }

    /// Every group once.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        let mut out: Vec<Arc<Group>> = Vec::new();
        for g in self
            .zones
            .iter()
            .map(|(_, g)| g)
            .chain(self.default.as_ref())
        {
            if !out.iter().any(|o| Arc::ptr_eq(o, g)) {
                out.push(Arc::clone(g));
            }
        }
        out
    }

    /// True when `lname` is one of this forwarder's loop probes.
    pub fn is_loop_probe(&self, lname: &[u8]) -> bool {
        crate::wire::labels(lname).next() == Some(self.loop_label.as_slice())
    }

    /// A fresh cached reply for `q`, patched for the client into `out`.
    pub fn cached(&self, q: &Question, id: u16, flags: ClientFlags, out: &mut Vec<u8>) -> bool {
        match self.cache.entries.get(&Key::of(q)) {
            Some(e) if e.stored.elapsed() < e.ttl => {
                let counter = if e.negative {
                    &self.cache.hits_denial
                } else {
                    &self.cache.hits_success
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let age = e.stored.elapsed().as_secs() as u32;
                patch_reply(
                    &e.reply,
                    q,
                    id,
                    flags,
                    TtlRule::Subtract(age),
                    self.cap(&e.reply),
                    out,
                );
                true
            }
            _ => {
                self.cache.misses.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Forwards `q` and writes the reply for the client into `out` (a SERVFAIL when nothing
    /// could be had). Returns the rcode sent.
    pub async fn resolve(
        &self,
        q: &Question,
        id: u16,
        flags: ClientFlags,
        out: &mut Vec<u8>,
    ) -> Rcode {
        // A detected loop stops forwarding under this config: following it would only multiply
        // queries until the in-flight cap. A reload (fixing the upstreams) starts afresh.
        if self.loop_detected.load(Ordering::Relaxed) {
            servfail(q, id, flags, out);
            return Rcode::ServFail;
        }
        let Some(group) = self.route(&q.lname).cloned() else {
            servfail(q, id, flags, out);
            return Rcode::ServFail;
        };
        match self.exchange(&group, q).await {
            Ok(reply) => {
                // An upstream's SERVFAIL does not replace a good answer still in the cache (fresh,
                // or within serve_stale): that answer is served instead (RFC 8767).
                if reply.get(3).is_some_and(|b| b & 0x0F == 2)
                    && let Some(e) = self.cache.entries.get(&Key::of(q))
                    && e.reply[3] & 0x0F != 2
                {
                    let age = e.stored.elapsed();
                    if age < e.ttl {
                        patch_reply(
                            &e.reply,
                            q,
                            id,
                            flags,
                            TtlRule::Subtract(age.as_secs() as u32),
                            self.cap(&e.reply),
                            out,
                        );
                        return rcode_of(out);
                    }
                    if age < e.ttl + self.config.cache.serve_stale {
                        tracing::debug!("upstream SERVFAIL; serving a stale answer");
                        return self.serve_stale(&e, q, id, flags, out);
                    }
                }
                self.store(q, &reply);
                patch_reply(&reply, q, id, flags, TtlRule::Keep, self.cap(&reply), out);
                rcode_of(out)
            }
            Err(e) => {
                let stale = (self.config.cache.serve_stale > Duration::ZERO)
                    .then(|| self.cache.entries.get(&Key::of(q)))
                    .flatten()
                    .filter(|e| e.stored.elapsed() < e.ttl + self.config.cache.serve_stale);
                match stale {
                    Some(entry) => {
                        tracing::debug!(error = %e, "forwarding failed; serving a stale answer");
                        self.serve_stale(&entry, q, id, flags, out)
                    }
                    None => {
                        tracing::debug!(error = %e, "forwarding failed");
                        servfail(q, id, flags, out);
                        Rcode::ServFail
                    }
                }
            }
        }
    }

    /// Serves an expired cache entry within the serve_stale window, with TTL 30 (RFC 8767).
    fn serve_stale(
        &self,
        e: &Entry,
        q: &Question,
        id: u16,
        flags: ClientFlags,
        out: &mut Vec<u8>,
    ) -> Rcode {
        self.cache.served_stale.fetch_add(1, Ordering::Relaxed);
        patch_reply(
            &e.reply,
            q,
            id,
            flags,
            TtlRule::Set(STALE_TTL),
            u32::MAX,
            out,
        );
        rcode_of(out)
    }

    /// The most TTL a client is told for this reply: the cache's caps, so clients keep an
    /// answer no longer than the cache would.
    fn cap(&self, reply: &[u8]) -> u32 {
        let c = &self.config.cache;
        let negative =
            reply.get(3).is_some_and(|b| b & 0x0F != 0) || reply.get(6..8) == Some(&[0, 0]);
        let cap = if negative {
            c.max_negative_ttl
        } else {
            c.max_ttl
        };
        u32::try_from(cap.as_secs()).unwrap_or(u32::MAX)
    }

    fn store(&self, q: &Question, reply: &[u8]) {
        let Some(rrs) = records(reply) else { return };
        let rcode = reply[3] & 0x0F;
        let answers: Vec<_> = rrs.iter().filter(|r| r.section == 0).collect();
        let c = &self.config.cache;
        let (ttl, negative) = match rcode {
            0 if !answers.is_empty() => {
                let min = answers.iter().map(|r| ttl_of(reply, r)).min().unwrap_or(0);
                (Duration::from_secs(min.into()).min(c.max_ttl), false)
            }
            0 | 3 => {
                // RFC 2308: the negative TTL is min(SOA TTL, SOA MINIMUM).
                let soa = rrs.iter().find(|r| r.section == 1 && r.rtype == rtype::SOA);
                let Some(soa) = soa else { return };
                let rd = &reply[soa.rdata.clone()];
                let minimum = rd
                    .len()
                    .checked_sub(4)
                    .map(|i| u32::from_be_bytes([rd[i], rd[i + 1], rd[i + 2], rd[i + 3]]));
                let ttl = ttl_of(reply, soa).min(minimum.unwrap_or(0));
                (
                    Duration::from_secs(ttl.into()).min(c.max_negative_ttl),
                    true,
                )
            }
            2 => (SERVFAIL_TTL.min(c.max_negative_ttl), true),
            _ => return,
        };
        if ttl.is_zero() && c.serve_stale.is_zero() {
            return;
        }
        let entry = Entry {
            reply: reply.into(),
            stored: Instant::now(),
            ttl,
            negative,
        };
        self.cache.entries.insert(Key::of(q), Arc::new(entry));
    }

    /// Tries the group's healthy upstreams in policy order until one answers.
    async fn exchange(&self, group: &Arc<Group>, q: &Question) -> Result<Vec<u8>, ForwardError> {
        if !group.probed.swap(true, Ordering::Relaxed) {
            self.spawn_loop_probe(group);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            self.rejects.fetch_add(1, Ordering::Relaxed);
            return Err(ForwardError::Overloaded);
        };
        let order = group.order();
        if order.is_empty() {
            return Err(ForwardError::AllFailed(format!(
                "all {} upstreams of {} are down",
                group.upstreams.len(),
                group.spec.name
            )));
        }
        let mut errors = Vec::new();
        for up in order {
            up.requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            match query_upstream(&up, group.spec.tls.as_deref(), q).await {
                Ok(reply) => {
                    up.succeeded();
                    let rc = (reply[3] & 0x0F) as usize;
                    up.responses[rc.min(16)].fetch_add(1, Ordering::Relaxed);
                    up.duration.observe(started.elapsed());
                    return Ok(reply);
                }
                Err(e) => {
                    up.failed(&e);
                    errors.push(format!("{}: {e}", up.label));
                }
            }
        }
        Err(ForwardError::AllFailed(errors.join("; ")))
    }

    /// Probes the down upstreams of every group once; used by the health task.
    pub async fn probe_down(&self) {
        let probe = Question {
            question: b"\x00\x00\x02\x00\x01".to_vec(),
            lname: b"\x00".to_vec(),
            qtype: rtype::NS,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        };
        for g in self.groups() {
            for up in g.upstreams.iter().filter(|u| u.is_down()) {
                match query_upstream(up, g.spec.tls.as_deref(), &probe).await {
                    Ok(_) => up.succeeded(),
                    Err(_) => {
                        up.healthcheck_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Sends a loop probe for `<loop label>.<zone>` (HINFO, as CoreDNS's loop plugin) to the
    /// group's first upstream: if it comes back to this server, the query path sees a name that
    /// starts with [`Forwarder::loop_label`] and reports a loop.
    fn spawn_loop_probe(&self, group: &Arc<Group>) {
        let mut name = vec![self.loop_label.len() as u8];
        name.extend_from_slice(&self.loop_label);
        name.extend_from_slice(&group.zone);
        let (Some(up), true) = (
            group.upstreams.first().cloned(),
            name.len() <= crate::wire::MAX_NAME_LEN,
        ) else {
            return;
        };
        let mut question = name.clone();
        question.extend_from_slice(&13u16.to_be_bytes());
        question.extend_from_slice(&1u16.to_be_bytes());
        let q = Question {
            question,
            lname: name,
            qtype: 13,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        };
        let tls = group.spec.tls.clone();
        tokio::spawn(async move {
            let _ = query_upstream(&up, tls.as_deref(), &q).await;
        });
    }
}

/// The client's header bits a reply must carry back.
#[derive(Debug, Clone, Copy)]
pub struct ClientFlags {
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The client's EDNS, if it sent an OPT.
    pub edns: Option<crate::wire::Edns>,
    /// Largest reply the client can take over its transport.
    pub max: usize,
}

#[derive(Debug, Clone, Copy)]
enum TtlRule {
    Keep,
    Subtract(u32),
    Set(u32),
}

/// The rcode in a reply's header (anything unknown counts as SERVFAIL).
pub(crate) fn rcode_of(reply: &[u8]) -> Rcode {
    match reply.get(3).map(|b| b & 0x0F) {
        Some(0) => Rcode::NoError,
        Some(1) => Rcode::FormErr,
        Some(3) => Rcode::NxDomain,
        Some(4) => Rcode::NotImp,
        Some(5) => Rcode::Refused,
        _ => Rcode::ServFail,
    }
}

/// The upstream query: a new random id, RD, the client's CD, the question as the client wrote it,
/// and an OPT with our payload size and the client's DO bit.
fn upstream_query(q: &Question, id: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + q.question.len() + 11);
    m.extend_from_slice(&id.to_be_bytes());
    let flags: u16 = 0x0100 | if q.checking_disabled { 0x0010 } else { 0 };
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    m.extend_from_slice(&q.question);
    m.extend_from_slice(&[0, 0, 41]);
    m.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&(if q.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m
}

/// True when `reply` answers the query with `id` and our question (names compared without case).
fn matches(reply: &[u8], id: u16, q: &Question) -> bool {
    reply.len() >= HEADER_LEN + q.question.len()
        && reply[..2] == id.to_be_bytes()
        && reply[2] & 0x80 != 0
        && reply[4..6] == [0, 1]
        && {
            // The name without case; type and class exactly.
            let (name, tc) = q.question.split_at(q.question.len() - 4);
            let got = &reply[HEADER_LEN..HEADER_LEN + q.question.len()];
            got[..name.len()].eq_ignore_ascii_case(name) && got[name.len()..] == *tc
        }
}

async fn query_upstream(
    up: &Upstream,
    tls: Option<&crate::config::TlsClient>,
    q: &Question,
) -> Result<Vec<u8>, String> {
    let id = fastrand::u16(..);
    let msg = upstream_query(q, id);
    let r = match up.spec.transport {
        Transport::Plain => {
            let reply =
                tokio::time::timeout(UPSTREAM_TIMEOUT, udp_exchange(up.spec.addr, &msg, id, q))
                    .await;
            match reply {
                Ok(Ok(r)) if r[2] & 0x02 != 0 => {
                    // Truncated: the whole answer over TCP.
                    tokio::time::timeout(UPSTREAM_TIMEOUT, tcp_exchange(up.spec.addr, &msg)).await
                }
                other => other,
            }
        }
        Transport::Tls => {
            let Some(tls) = tls else {
                return Err("no TLS settings".into());
            };
            tokio::time::timeout(UPSTREAM_TIMEOUT, tls_exchange(up.spec.addr, tls, &msg)).await
        }
    };
    match r {
        Err(_) => Err(format!("no answer within {UPSTREAM_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(reply)) if matches(&reply, id, q) => Ok(reply),
        Ok(Ok(_)) => Err("a reply that does not match the query".into()),
    }
}

async fn udp_exchange(
    to: SocketAddr,
    msg: &[u8],
    id: u16,
    q: &Question,
) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(to).await?;
    sock.send(msg).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Ignore strays (a late reply to an earlier try, spoofing attempts): keep waiting.
        if matches(&buf[..n], id, q) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn framed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await?;
    s.flush().await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn tcp_exchange(to: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect(to).await?;
    let _ = s.set_nodelay(true);
    framed(s, msg).await
}

async fn tls_exchange(
    to: SocketAddr,
    tls: &crate::config::TlsClient,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect(to).await?;
    let _ = s.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    let s = connector.connect(tls.server_name.clone(), s).await?;
    framed(s, msg).await
}

/// Writes a SERVFAIL for `q` into `out`.
pub fn servfail(q: &Question, id: u16, flags: ClientFlags, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    let f: u16 = 0x8000
        | 0x0080
        | 2
        | if flags.recursion_desired { 0x0100 } else { 0 }
        | if flags.checking_disabled { 0x0010 } else { 0 };
    out.extend_from_slice(&f.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(flags.edns.is_some())]);
    out.extend_from_slice(&q.question);
    if let Some(e) = flags.edns {
        push_opt(out, e.dnssec_ok);
    }
}

fn push_opt(out: &mut Vec<u8>, dnssec_ok: bool) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(if dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// The upstream's (or the cache's) reply, made the client's: its id, RD and CD, RA set, the
/// question in its spelling, TTLs per `ttl`, an OPT only when it sent one, and TC (with the
/// question alone) when it does not fit.
fn patch_reply(
    reply: &[u8],
    q: &Question,
    id: u16,
    flags: ClientFlags,
    ttl: TtlRule,
    cap: u32,
    out: &mut Vec<u8>,
) {
    out.clear();
    let Some(rrs) = records(reply) else {
        servfail(q, id, flags, out);
        return;
    };
    // The upstream's OPT is dropped (ours is appended). Records after it would move, and any
    // compression pointer into them would break: such a reply (and one with an OPT outside the
    // additional section, whose counts would then be wrong) is refused.
    let opts: Vec<usize> = rrs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.rtype == rtype::OPT)
        .map(|(i, _)| i)
        .collect();
    if opts
        .iter()
        .any(|&i| rrs[i].section != 2 || i + 1 != rrs.len())
    {
        servfail(q, id, flags, out);
        return;
    }
    // Drop the upstream's OPT (and any option it carried); ours is added below.
    let mut body = Vec::with_capacity(reply.len());
    body.extend_from_slice(&reply[..HEADER_LEN]);
    body.extend_from_slice(&q.question);
    let mut arcount = 0u16;
    for rr in rrs.iter().filter(|r| r.rtype != rtype::OPT) {
        let at = body.len();
        body.extend_from_slice(&reply[rr.start..rr.end]);
        let t = at + (rr.ttl_at - rr.start);
        let old = u32::from_be_bytes([body[t], body[t + 1], body[t + 2], body[t + 3]]);
        let new = match ttl {
            TtlRule::Keep => old,
            TtlRule::Subtract(age) => old.saturating_sub(age),
            TtlRule::Set(v) => v,
        }
        .min(cap);
        body[t..t + 4].copy_from_slice(&new.to_be_bytes());
        if rr.section == 2 {
            arcount += 1;
        }
    }
    body[0..2].copy_from_slice(&id.to_be_bytes());
    let mut f = u16::from_be_bytes([reply[2], reply[3]]);
    f = (f & !(0x0100 | 0x0010 | 0x0200)) | 0x0080;
    if flags.recursion_desired {
        f |= 0x0100;
    }
    if flags.checking_disabled {
        f |= 0x0010;
    }
    let opt_len = if flags.edns.is_some() { 11 } else { 0 };
    if body.len() + opt_len > flags.max {
        // No partial RRsets: TC with the question alone.
        body.truncate(HEADER_LEN + q.question.len());
        body[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        f |= 0x0200;
        arcount = 0;
    }
    body[2..4].copy_from_slice(&f.to_be_bytes());
    body[4..6].copy_from_slice(&[0, 1]);
    let arcount = arcount + u16::from(flags.edns.is_some());
    body[10..12].copy_from_slice(&arcount.to_be_bytes());
    if let Some(e) = flags.edns {
        push_opt(&mut body, e.dnssec_ok);
    }
    *out = body;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Question {
        Question {
            question: b"\x03WwW\x07example\x03com\x00\x00\x01\x00\x01".to_vec(),
            lname: b"\x03www\x07example\x03com\x00".to_vec(),
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    /// An upstream-style reply: the question (lower case), one A record pointing at it, an OPT.
    fn upstream_reply(ttl: u32) -> Vec<u8> {
        let mut m = vec![0xAB, 0xCD, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1];
        m.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
        m.extend_from_slice(&[0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 0]); // OPT with an option
        m
    }

    #[test]
    fn patch_makes_the_reply_the_clients() {
        let flags = ClientFlags {
            recursion_desired: false,
            checking_disabled: false,
            edns: None,
            max: 512,
        };
        let mut out = Vec::new();
        patch_reply(
            &upstream_reply(300),
            &q(),
            0x1234,
            flags,
            TtlRule::Subtract(100),
            u32::MAX,
            &mut out,
        );
        let m = hickory_proto::op::Message::from_vec(&out).expect("parses");
        assert_eq!(m.metadata.id, 0x1234);
        assert!(!m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.queries[0].name().to_string(), "WwW.example.com.");
        assert_eq!(m.answers[0].ttl, 200);
        assert_eq!(
            m.answers[0].name.to_string(),
            "WwW.example.com.",
            "the owner points at the client's spelling"
        );
        assert!(m.edns.is_none(), "no OPT for a client that sent none");

        let flags = ClientFlags {
            edns: Some(crate::wire::Edns {
                payload: 4096,
                version: 0,
                dnssec_ok: true,
            }),
            ..flags
        };
        patch_reply(
            &upstream_reply(300),
            &q(),
            1,
            flags,
            TtlRule::Set(30),
            u32::MAX,
            &mut out,
        );
        let m = hickory_proto::op::Message::from_vec(&out).expect("parses");
        assert_eq!(m.answers[0].ttl, 30);
        let e = m.edns.expect("OPT");
        assert!(
            e.flags().dnssec_ok && e.options().as_ref().is_empty(),
            "our OPT, the upstream's options dropped"
        );

        let flags = ClientFlags { max: 40, ..flags };
        patch_reply(
            &upstream_reply(300),
            &q(),
            1,
            flags,
            TtlRule::Keep,
            u32::MAX,
            &mut out,
        );
        let m = hickory_proto::op::Message::from_vec(&out).expect("parses");
        assert!(m.metadata.truncation && m.answers.is_empty());
    }

    #[test]
    fn ttls_are_capped_and_a_misplaced_opt_is_refused() {
        let flags = ClientFlags {
            recursion_desired: true,
            checking_disabled: false,
            edns: None,
            max: 512,
        };
        let mut out = Vec::new();
        patch_reply(
            &upstream_reply(86400),
            &q(),
            1,
            flags,
            TtlRule::Keep,
            3600,
            &mut out,
        );
        let m = hickory_proto::op::Message::from_vec(&out).expect("parses");
        assert_eq!(m.answers[0].ttl, 3600, "capped as the cache is");

        // An OPT that is not the last record: dropping it would move what follows.
        let mut r = upstream_reply(60);
        r[11] = 2; // ARCOUNT 2: the OPT, then a record after it
        r.extend_from_slice(&[0xC0, 0x0C, 0, 16, 0, 1, 0, 0, 0, 60, 0, 2, 1, b'x']);
        patch_reply(&r, &q(), 1, flags, TtlRule::Keep, u32::MAX, &mut out);
        assert_eq!(
            out[3] & 0x0F,
            2,
            "SERVFAIL for a reply that cannot be relayed safely"
        );
    }

    #[test]
    fn replies_must_match_id_and_question() {
        let r = upstream_reply(5);
        assert!(matches(&r, 0xABCD, &q()), "question compared without case");
        assert!(!matches(&r, 0xABCE, &q()));
        let mut other = q();
        other.question[1] = b'x';
        assert!(!matches(&r, 0xABCD, &other));
        // Type 65 ('A') asked, type 97 ('a') answered: not a match, though the bytes differ only
        // in ASCII case.
        let mut https = q();
        let n = https.question.len();
        https.question[n - 3] = 65;
        let mut reply = upstream_reply(5);
        reply[12 + n - 3] = 97;
        assert!(!matches(&reply, 0xABCD, &https));
    }
}
