//! Sockets and tasks: the only part of the server that does I/O.
//!
//! ```text
//!  snapshot watch ──> updater task ──DnsView::update─> ArcSwap<DnsView> ──load──┬─> UDP workers
//!                     (coalesces, off the               (one pointer)           │   (one OS thread and one
//!                      query path)                                              │    SO_REUSEPORT socket each)
//!                                                                               └─> TCP tasks (tokio)
//! ```
//!
//! UDP workers are plain threads blocking in `recvmmsg` on their own socket: the kernel spreads
//! datagrams across the sockets of a port, and a worker never waits on another. A worker takes
//! every datagram already queued (up to 32) in one call and sends the replies it can give at once
//! in one `sendmmsg`; replies that wait on an upstream are sent by their own task. TCP follows
//! RFC 7766: many queries per connection, pipelined, an idle timeout and a cap on connections.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use discovery::ClusterSnapshot;
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::answer::{Handled, Step, Transport, combine_chase, handle_query};
use crate::forward::{ClientFlags, Forwarder, Question, rcode_of};
use crate::metrics::{Metrics, Observation, QueryStats};
use crate::rrl::{Rrl, Verdict};
use crate::view::DnsView;
use crate::wire::EDNS_PAYLOAD;

/// Socket and connection settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to serve on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// UDP sockets (and threads) per address.
    pub udp_workers: usize,
    /// Concurrent TCP connections across all addresses; more wait in the accept queue.
    pub tcp_max_connections: usize,
    /// A TCP connection with no complete query for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Log one query in this many (0: no query log).
    pub query_log_every: u64,
    /// On shutdown, how long open TCP connections may take to finish the query in flight.
    pub tcp_drain: Duration,
    /// Response rate limiting on UDP; `None` for none.
    pub rrl: Option<Arc<Rrl>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 53))],
            udp_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            tcp_max_connections: 1024,
            tcp_idle_timeout: Duration::from_secs(10),
            query_log_every: 0,
            tcp_drain: Duration::from_secs(5),
            rrl: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: io::Error,
    },
}

/// How long a blocked worker waits before looking at the stop flag.
const UDP_POLL: Duration = Duration::from_millis(200);

/// The CPUs this process may run on, in order (all of them when that cannot be read).
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    let cpus: Vec<usize> = sched_getaffinity(Pid::from_raw(0))
        .map(|set| {
            (0..CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .collect()
        })
        .unwrap_or_default();
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}

/// A UDP socket of the listen address's `SO_REUSEPORT` group. `cpu` is the CPU whose datagrams
/// it takes (`SO_INCOMING_CPU`): the kernel hands a datagram to the group's socket for the CPU
/// that received it, and spreads by hash only when no socket is for that CPU. A client's
/// datagrams then reach one worker, in batches, instead of waking every worker in turn: on a
/// 2-core machine two workers used 40% more CPU per query than one at the same rate without
/// it, and the same as one with it.
fn udp_socket(addr: SocketAddr, cpu: usize) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    if let Err(e) = s.set_cpu_affinity(cpu) {
        // Older kernels: the group spreads datagrams by hash alone.
        tracing::debug!(cpu, error = %e, "SO_INCOMING_CPU not set");
    }
    // Bursts from many pods arrive together; a larger buffer drops fewer of them.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(UDP_POLL))?;
    Ok(s)
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Binds UDP then TCP on the same port. With port 0 the kernel picks the UDP port; should TCP
/// find it taken, another port is tried.
fn bind_pair(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<UdpSocket>, std::net::TcpListener), StartError> {
    let bind_err = |proto, source| StartError::Bind {
        addr,
        proto,
        source,
    };
    let cpus = allowed_cpus();
    let cpu = |i: usize| cpus[i % cpus.len()];
    let mut attempts = 0;
    loop {
        let first = udp_socket(addr, cpu(0)).map_err(|e| bind_err("udp", e))?;
        let local = first.local_addr().map_err(|e| bind_err("udp", e))?;
        match tcp_listener(local) {
            Ok(tcp) => {
                let mut udp = vec![first];
                for i in 1..workers.max(1) {
                    udp.push(udp_socket(local, cpu(i)).map_err(|e| bind_err("udp", e))?);
                }
                return Ok((udp, tcp));
            }
            Err(e) if addr.port() == 0 && attempts < 16 => {
                attempts += 1;
                tracing::debug!(%local, error = %e, "tcp port taken; trying another");
            }
            Err(e) => return Err(bind_err("tcp", e)),
        }
    }
}

/// Whether the listeners run: shared with the admin endpoint's `/health`.
#[derive(Debug, Clone)]
pub struct Liveness {
    alive: Arc<AtomicUsize>,
    expected: usize,
    stop: Arc<AtomicBool>,
}

impl Liveness {
    /// True while every UDP worker and TCP acceptor runs and no stop was asked.
    pub fn is_running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.alive.load(Ordering::Relaxed) == self.expected
    }
}

/// Counts a running worker; uncounted when the worker ends, however it ends.
struct AliveGuard(Arc<AtomicUsize>);

impl AliveGuard {
    fn new(alive: &Arc<AtomicUsize>) -> Self {
        alive.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(alive))
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    local: Vec<SocketAddr>,
    liveness: Liveness,
    stop: Arc<AtomicBool>,
    stop_tx: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds every address and starts answering from `view`. Must be called inside a tokio
    /// runtime.
    pub fn start(
        cfg: &ServerConfig,
        view: Arc<ArcSwap<DnsView>>,
        forwarder: Arc<ArcSwapOption<Forwarder>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let rt = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut local = Vec::new();
        let alive = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        let mut tasks = Vec::new();
        let conns = Arc::new(Semaphore::new(cfg.tcp_max_connections.max(1)));
        for addr in &cfg.listen {
            let (udp, tcp) = bind_pair(*addr, cfg.udp_workers)?;
            let bound = tcp.local_addr().map_err(|source| StartError::Bind {
                addr: *addr,
                proto: "tcp",
                source,
            })?;
            local.push(bound);
            for (i, sock) in udp.into_iter().enumerate() {
                let (view, stop) = (Arc::clone(&view), Arc::clone(&stop));
                let (fwd, rt, rrl) = (Arc::clone(&forwarder), rt.clone(), cfg.rrl.clone());
                let guard = AliveGuard::new(&alive);
                let obs = Observer::new(
                    metrics.register(&bound.to_string(), "udp"),
                    cfg.query_log_every,
                    "udp",
                );
                let t = std::thread::Builder::new()
                    .name(format!("udp-{i}"))
                    .spawn(move || {
                        let _alive = guard;
                        udp_worker(Arc::new(sock), view, fwd, stop, obs, rt, rrl)
                    })
                    .map_err(|source| StartError::Bind {
                        addr: *addr,
                        proto: "udp",
                        source,
                    })?;
                threads.push(t);
            }
            let tcp = TcpListener::from_std(tcp).map_err(|source| StartError::Bind {
                addr: *addr,
                proto: "tcp",
                source,
            })?;
            let obs = Observer::new(
                metrics.register(&bound.to_string(), "tcp"),
                cfg.query_log_every,
                "tcp",
            );
            let guard = AliveGuard::new(&alive);
            let accept = tcp_accept(
                tcp,
                Arc::clone(&view),
                Arc::clone(&forwarder),
                Arc::clone(&conns),
                TcpLimits {
                    idle: cfg.tcp_idle_timeout,
                    drain: cfg.tcp_drain,
                },
                stop_rx.clone(),
                obs,
            );
            tasks.push(tokio::spawn(async move {
                let _alive = guard;
                accept.await
            }));
            tracing::info!(%bound, workers = cfg.udp_workers, "listening (udp, tcp)");
        }
        let expected = alive.load(Ordering::Relaxed);
        Ok(Self {
            local,
            liveness: Liveness {
                alive,
                expected,
                stop: Arc::clone(&stop),
            },
            stop,
            stop_tx,
            threads,
            tasks,
        })
    }

    /// A handle that tells whether the listeners run.
    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
    }

    /// The bound addresses, in the order of [`ServerConfig::listen`] (ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Stops accepting, closes every socket and waits for the workers.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stop_tx.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Records what each query got (metrics, and the sampled query log).
#[derive(Debug, Clone)]
struct Observer {
    stats: Arc<QueryStats>,
    log_every: u64,
    seen: Arc<AtomicU64>,
    proto: &'static str,
}

impl Observer {
    fn new(stats: Arc<QueryStats>, log_every: u64, proto: &'static str) -> Self {
        Self {
            stats,
            log_every,
            seen: Arc::new(AtomicU64::new(0)),
            proto,
        }
    }

    fn observe(&self, peer: SocketAddr, query: &[u8], reply: &[u8], h: &Handled, started: Instant) {
        let duration = started.elapsed();
        self.stats.record(&Observation {
            zone: h.zone,
            ipv6_client: peer.is_ipv6() && !peer.ip().to_canonical().is_ipv4(),
            qtype: h.qtype,
            rcode: h.rcode,
            request_len: query.len(),
            response_len: reply.len(),
            duration,
        });
        if self.log_every > 0
            && self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.log_every)
        {
            let name = crate::wire::parse_query(query)
                .map(|q| crate::wire::wire_to_string(q.qname))
                .unwrap_or_default();
            tracing::info!(
                target: "clusterdns::query",
                client = %peer,
                proto = self.proto,
                name = %name,
                qtype = h.qtype,
                rcode = ?h.rcode,
                size = reply.len(),
                duration_us = duration.as_micros() as u64,
                "query"
            );
        }
    }
}

/// Datagrams taken from the socket, and replies sent to it, per system call.
const UDP_BATCH: usize = 32;

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    a.as_sockaddr_in()
        .map(|v4| SocketAddr::V4((*v4).into()))
        .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
}

/// Receives up to [`UDP_BATCH`] datagrams (at least one, waiting at most the socket's read
/// timeout) into `bufs`; `got` gets each one's length and sender.
fn recv_batch(
    fd: RawFd,
    hdrs: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [Vec<u8>; UDP_BATCH],
    got: &mut Vec<(usize, SocketAddr)>,
) -> io::Result<()> {
    got.clear();
    let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
    let msgs = recvmmsg(fd, hdrs, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None)?;
    for m in msgs {
        match m.address.as_ref().and_then(to_std) {
            Some(peer) => got.push((m.bytes, peer)),
            // Keeps indexes aligned with `bufs`; a length of 0 is never a query.
            None => got.push((0, SocketAddr::from(([0, 0, 0, 0], 0)))),
        }
    }
    Ok(())
}

/// Sends `replies` (reply, peer) with as few system calls as the kernel allows. A reply that
/// cannot be sent is logged and skipped; the others still go.
fn send_batch(
    fd: RawFd,
    hdrs: &mut MultiHeaders<SockaddrStorage>,
    outs: &[Vec<u8>; UDP_BATCH],
    peers: &[SocketAddr],
) {
    let n = peers.len();
    let iovs: [[IoSlice<'_>; 1]; UDP_BATCH] = std::array::from_fn(|i| [IoSlice::new(&outs[i])]);
    let addrs: Vec<Option<SockaddrStorage>> = peers
        .iter()
        .map(|p| Some(SockaddrStorage::from(*p)))
        .collect();
    let mut start = 0;
    while start < n {
        match sendmmsg(
            fd,
            hdrs,
            iovs[start..n].iter(),
            &addrs[start..n],
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        ) {
            Ok(sent) => match sent.count() {
                0 => break,
                k => start += k,
            },
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::debug!(peer = %peers[start], error = %e, "udp send error");
                start += 1;
            }
        }
    }
}

fn udp_worker(
    sock: Arc<UdpSocket>,
    view: Arc<ArcSwap<DnsView>>,
    forwarder: Arc<ArcSwapOption<Forwarder>>,
    stop: Arc<AtomicBool>,
    obs: Observer,
    rt: tokio::runtime::Handle,
    rrl: Option<Arc<Rrl>>,
) {
    let fd = sock.as_raw_fd();
    // Pages of these buffers are only made resident by the datagrams that use them.
    let mut bufs: [Vec<u8>; UDP_BATCH] = std::array::from_fn(|_| vec![0u8; 65535]);
    let mut outs: [Vec<u8>; UDP_BATCH] = std::array::from_fn(|_| Vec::with_capacity(4096));
    let mut got = Vec::with_capacity(UDP_BATCH);
    let mut peers = Vec::with_capacity(UDP_BATCH);
    let mut recv_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut send_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    while !stop.load(Ordering::Relaxed) {
        match recv_batch(fd, &mut recv_hdrs, &mut bufs, &mut got) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                // ICMP errors from earlier sends surface here on some systems; keep serving.
                tracing::debug!(error = %e, "udp receive error");
                continue;
            }
        }
        let v = view.load();
        let fwd = forwarder.load();
        peers.clear();
        for (i, &(n, peer)) in got.iter().enumerate() {
            let query = &bufs[i][..n];
            let out = &mut outs[peers.len()];
            if udp_query(query, peer, &v, fwd.as_ref(), out, &sock, &obs, &rt, &rrl) {
                peers.push(peer);
            }
        }
        send_batch(fd, &mut send_hdrs, &outs, &peers);
    }
}

/// One datagram: true when `out` holds a reply to send to `peer` now; false when there is
/// nothing to send now (dropped, rate limited, or handed to a task that sends its own reply
/// once an upstream answers).
#[allow(clippy::too_many_arguments)]
fn udp_query(
    query: &[u8],
    peer: SocketAddr,
    v: &DnsView,
    fwd: Option<&Arc<Forwarder>>,
    out: &mut Vec<u8>,
    sock: &Arc<UdpSocket>,
    obs: &Observer,
    rt: &tokio::runtime::Handle,
    rrl: &Option<Arc<Rrl>>,
) -> bool {
    let started = Instant::now();
    // A reply in `out` to send now, rate limited, and counted before it is sent: a client that
    // has its reply sees it in /metrics.
    let send_now = |h: &Handled, out: &mut Vec<u8>| {
        if !rate_limit(rrl.as_deref(), h, peer, started, out) {
            return false;
        }
        obs.observe(peer, query, out, h, started);
        true
    };
    match handle_query(v, fwd.map(|f| &**f), query, Transport::Udp, out) {
        Step::Drop => false,
        Step::Reply(h) => send_now(&h, out),
        Step::Forward {
            question,
            id,
            flags,
            handled,
        } => {
            let Some(f) = fwd.map(Arc::clone) else {
                return false;
            };
            if f.cached(&question, id, flags, out) {
                let h = Handled {
                    rcode: rcode_of(out),
                    ..handled
                };
                return send_now(&h, out);
            }
            let (sock, obs, query, rrl) =
                (Arc::clone(sock), obs.clone(), query.to_vec(), rrl.clone());
            rt.spawn(async move {
                let mut out = Vec::new();
                let rcode = f.resolve(&question, id, flags, &mut out).await;
                let h = Handled { rcode, ..handled };
                if rate_limit(rrl.as_deref(), &h, peer, started, &mut out) {
                    obs.observe(peer, &query, &out, &h, started);
                    let _ = sock.send_to(&out, peer);
                }
            });
            false
        }
        Step::Chase {
            question,
            flags,
            handled,
        } => {
            let Some(f) = fwd.map(Arc::clone) else {
                return false;
            };
            let (sock, obs, query, local, rrl) = (
                Arc::clone(sock),
                obs.clone(),
                query.to_vec(),
                out.clone(),
                rrl.clone(),
            );
            rt.spawn(async move {
                let mut out = chase(&f, &question, flags, &local).await;
                let h = Handled {
                    rcode: rcode_of(&out),
                    ..handled
                };
                if !rate_limit(rrl.as_deref(), &h, peer, started, &mut out) {
                    return;
                }
                obs.observe(peer, &query, &out, &h, started);
                let _ = sock.send_to(&out, peer);
            });
            false
        }
    }
}

/// Response rate limiting for one UDP reply: false when it must be dropped; `out` is cut to a
/// truncated reply when it slips. The cluster's own zones only with `--rrl-cluster`.
fn rate_limit(
    rrl: Option<&Rrl>,
    h: &Handled,
    peer: SocketAddr,
    now: Instant,
    out: &mut Vec<u8>,
) -> bool {
    let Some(r) = rrl else { return true };
    if h.zone.is_some() && !r.cluster_too {
        return true;
    }
    match r.check(peer.ip(), now) {
        Verdict::Send => true,
        Verdict::Slip => {
            crate::rrl::truncate(out);
            true
        }
        Verdict::Drop => false,
    }
}

/// Resolves an ExternalName chain's target through the forwarder and appends it to `local`.
async fn chase(f: &Forwarder, target: &Question, flags: ClientFlags, local: &[u8]) -> Vec<u8> {
    let inner = ClientFlags {
        recursion_desired: true,
        checking_disabled: flags.checking_disabled,
        edns: Some(crate::wire::Edns {
            payload: EDNS_PAYLOAD,
            version: 0,
            dnssec_ok: false,
        }),
        max: u16::MAX as usize,
    };
    let mut t = Vec::new();
    if !f.cached(target, 0, inner, &mut t) {
        f.resolve(target, 0, inner, &mut t).await;
    }
    combine_chase(local, &t, flags.max)
}

#[derive(Debug, Clone, Copy)]
struct TcpLimits {
    idle: Duration,
    drain: Duration,
}

async fn tcp_accept(
    listener: TcpListener,
    view: Arc<ArcSwap<DnsView>>,
    forwarder: Arc<ArcSwapOption<Forwarder>>,
    conns: Arc<Semaphore>,
    limits: TcpLimits,
    mut stop: watch::Receiver<bool>,
    obs: Observer,
) {
    let mut conn_tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&conns).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "tcp accept error");
                    // Out of descriptors and similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let (view, stop, obs) = (Arc::clone(&view), stop.clone(), obs.clone());
        let fwd = Arc::clone(&forwarder);
        conn_tasks.spawn(async move {
            if let Err(e) = tcp_conn(stream, peer, &view, &fwd, limits.idle, stop, &obs).await {
                tracing::debug!(%peer, error = %e, "tcp connection closed");
            }
            drop(permit);
        });
        while conn_tasks.try_join_next().is_some() {}
    }
    // Draining: connections finish the query in flight and close; stragglers are cut.
    drop(listener);
    let drained = tokio::time::timeout(limits.drain, async {
        while conn_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            left = conn_tasks.len(),
            "tcp connections cut after the drain timeout"
        );
    }
    conn_tasks.shutdown().await;
}

/// Serves one connection until the peer closes it, it idles, or the server stops (then after
/// the reply to the query in flight).
async fn tcp_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    view: &ArcSwap<DnsView>,
    forwarder: &ArcSwapOption<Forwarder>,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
    obs: &Observer,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let mut len = [0u8; 2];
        tokio::select! {
            r = tokio::time::timeout(idle, stream.read_exact(&mut len)) => match r {
                Err(_) => return Ok(()), // idle
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(r) => { r?; }
            },
            _ = stop.changed() => return Ok(()),
        }
        let n = u16::from_be_bytes(len) as usize;
        match tokio::time::timeout(idle, stream.read_exact(&mut buf[..n])).await {
            Err(_) => return Ok(()),
            Ok(r) => {
                r?;
            }
        }
        let started = Instant::now();
        let fwd = forwarder.load_full();
        let step = handle_query(
            &view.load(),
            fwd.as_deref(),
            &buf[..n],
            Transport::Tcp,
            &mut out,
        );
        let h = match (step, fwd) {
            (Step::Drop, _) => continue,
            (Step::Reply(h), _) => h,
            (
                Step::Forward {
                    question,
                    id,
                    flags,
                    handled,
                },
                Some(f),
            ) => {
                if !f.cached(&question, id, flags, &mut out) {
                    f.resolve(&question, id, flags, &mut out).await;
                }
                Handled {
                    rcode: rcode_of(&out),
                    ..handled
                }
            }
            (
                Step::Chase {
                    question,
                    flags,
                    handled,
                },
                Some(f),
            ) => {
                out = chase(&f, &question, flags, &out).await;
                Handled {
                    rcode: rcode_of(&out),
                    ..handled
                }
            }
            (_, None) => continue,
        };
        let mut msg = Vec::with_capacity(out.len() + 2);
        msg.extend_from_slice(&(out.len() as u16).to_be_bytes());
        msg.extend_from_slice(&out);
        obs.observe(peer, &buf[..n], &out, &h, started);
        stream.write_all(&msg).await?;
    }
}

/// Updates the view to every snapshot after `built_from` (the one the current view was built
/// from), and swaps it in, until the snapshots end. Only what changed between two snapshots is
/// rebuilt ([`DnsView::update`]). Snapshots that arrive while an update runs are coalesced: the
/// next update goes straight to the newest.
///
/// Until a snapshot is synced, negative answers are SERVFAIL; when `startup_deadline` passes
/// first, the view answers from what has been listed so far (a warning says so).
pub async fn run_view_updater(
    mut snapshots: watch::Receiver<Arc<ClusterSnapshot>>,
    mut built_from: Arc<ClusterSnapshot>,
    view: Arc<ArcSwap<DnsView>>,
    metrics: Arc<Metrics>,
    startup_deadline: Option<tokio::time::Instant>,
) {
    let mut partial_ok = false;
    let mut was_synced = snapshots.borrow().synced;
    loop {
        let waiting = !was_synced && !partial_ok;
        let deadline = startup_deadline.filter(|_| waiting);
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                partial_ok = true;
                tracing::warn!("discovery has not synced within the start-up timeout; answering from what is listed so far");
            }
        }
        let snap = snapshots.borrow_and_update().clone();
        let current = view.load_full();
        let old = Arc::clone(&built_from);
        let started = Instant::now();
        let built = tokio::task::spawn_blocking(move || (current.update(&old, &snap), snap)).await;
        match built {
            Ok((mut v, snap)) => {
                // Negative answers once listed, or once the start-up wait is over; readiness
                // (`listed`) waits for the real thing.
                v.synced |= partial_ok;
                let names = v.len();
                view.store(Arc::new(v));
                built_from = Arc::clone(&snap);
                let now = std::time::SystemTime::now();
                for t in &snap.changed_at {
                    metrics
                        .programming_duration
                        .observe(now.duration_since(*t).unwrap_or_default());
                }
                if snap.synced && !was_synced {
                    tracing::info!(generation = snap.generation, names, "dns view synced");
                }
                was_synced |= snap.synced;
                tracing::debug!(
                    generation = snap.generation,
                    synced = snap.synced,
                    names,
                    update_us = started.elapsed().as_micros() as u64,
                    "dns view updated"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "dns view update panicked; keeping the previous one")
            }
        }
    }
}
