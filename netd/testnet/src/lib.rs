//! Test hosts in network namespaces, shared by the node daemons' tests (dev-dependency only).
//!
//! A test builds its hosts as network namespaces ([`Ns`]), each removed when its guard drops,
//! also on failure. Traffic is real: a thread moves into a namespace with `setns` and opens TCP
//! and UDP sockets there ([`Listener`], [`connect`], [`Server`], [`tcp`], [`udp`]).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use serde_json::Value;

/// Whether this machine can run the namespace tests: root, `ip`, `nft`, and the files in `also`.
/// Outside CI a missing piece skips the test with one line saying why; with `CI=true` it fails
/// instead.
pub fn can_run(also: &[&str]) -> bool {
    let mut missing = Vec::new();
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        missing.push("root".to_string());
    }
    for tool in ["ip", "nft"] {
        if !Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            missing.push(tool.to_string());
        }
    }
    for path in also {
        if !Path::new(path).exists() {
            missing.push((*path).to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "needs {} (apt-get install iproute2 nftables containernetworking-plugins conntrack)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIP: {why}");
    false
}

/// Runs a command that must succeed, returning its stdout.
pub fn sh(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace, removed on drop.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(role: &str) -> Ns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("nt{}-{n}-{role}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        sh(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
        ]);
        Ns { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside this namespace; it must succeed.
    pub fn sh(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip -j ARGS` inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["ip", "-j"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.sh(&full)).expect("ip -j prints JSON")
    }

    /// Removes the namespace now (a pod whose runtime tore it down before DEL).
    pub fn remove(self) {}
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a thread inside the namespace at `path`.
pub fn in_ns<T: Send + 'static>(
    path: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A TCP listener in a namespace that answers each connection with "hello from <addr>" and
/// reports the client's address it saw.
#[derive(Debug)]
pub struct Listener {
    pub port: u16,
    peer: mpsc::Receiver<SocketAddr>,
}

impl Listener {
    pub fn start(ns: &Ns, bind: IpAddr) -> Listener {
        let (port_tx, port_rx) = mpsc::channel();
        let (peer_tx, peer_rx) = mpsc::channel();
        in_ns(ns.path(), move || {
            let listener = TcpListener::bind((bind, 0)).expect("bind in namespace");
            port_tx
                .send(listener.local_addr().expect("local addr").port())
                .expect("send port");
            while let Ok((mut stream, peer)) = listener.accept() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                let _ = writeln!(stream, "hello from {bind}");
                if peer_tx.send(peer).is_err() {
                    break;
                }
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("listener started");
        Listener {
            port,
            peer: peer_rx,
        }
    }

    /// The client address of the next connection.
    pub fn peer(&self) -> IpAddr {
        self.peer
            .recv_timeout(Duration::from_secs(10))
            .expect("a connection arrived")
            .ip()
    }
}

/// Connects from a namespace; the server's greeting or the error.
pub fn connect(ns: &Ns, to: IpAddr, port: u16) -> Result<String, String> {
    in_ns(ns.path(), move || {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::new(to, port), Duration::from_secs(5))
                .map_err(|err| format!("connect to {to}:{port}: {err}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        writeln!(stream, "hi").map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
    })
    .join()
    .expect("connect thread")
}

/// What a connection attempt or datagram got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A [`Server`] answered: the address it serves on, and the client address it saw.
    Answered { server: IpAddr, client: IpAddr },
    /// Refused at once: a TCP RST, or ICMP port unreachable for UDP.
    Refused,
    /// Nothing came back within the timeout: the packets were dropped.
    TimedOut,
    /// Anything else, as text.
    Other(String),
}

impl Outcome {
    /// The answering server, or a panic naming what happened instead.
    pub fn server(&self) -> IpAddr {
        match self {
            Outcome::Answered { server, .. } => *server,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// The client address the server saw, or a panic naming what happened instead.
    pub fn client(&self) -> IpAddr {
        match self {
            Outcome::Answered { client, .. } => *client,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn of_error(err: &std::io::Error) -> Outcome {
        match err.kind() {
            std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Outcome::TimedOut,
            _ => Outcome::Other(err.to_string()),
        }
    }

    fn of_reply(reply: &str) -> Outcome {
        let mut words = reply.split_whitespace();
        match (
            words.next().and_then(|w| w.parse().ok()),
            words.next().and_then(|w| w.parse().ok()),
        ) {
            (Some(server), Some(client)) => Outcome::Answered { server, client },
            _ => Outcome::Other(format!("unexpected reply {reply:?}")),
        }
    }
}

/// A backend in a namespace: TCP and UDP on one port of one address, answering every
/// connection and datagram with "<its address> <the client address it saw>". It runs until the
/// namespace goes away.
#[derive(Debug)]
pub struct Server {
    pub ip: IpAddr,
    pub port: u16,
}

impl Server {
    pub fn start(ns: &Ns, ip: IpAddr, port: u16) -> Server {
        let (ready_tx, ready_rx) = mpsc::channel();
        let tcp_ready = ready_tx.clone();
        in_ns(ns.path(), move || {
            let listener = TcpListener::bind((ip, port)).expect("bind TCP in namespace");
            tcp_ready.send(()).expect("ready");
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                let _ = writeln!(stream, "{ip} {}", peer.ip());
            }
        });
        in_ns(ns.path(), move || {
            let socket = UdpSocket::bind((ip, port)).expect("bind UDP in namespace");
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 512];
            while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("{ip} {}\n", peer.ip()).as_bytes(), peer);
            }
        });
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("server started");
        }
        Server { ip, port }
    }
}

/// A TCP connection from `ns` to `to:port`: what the server said, or how it failed.
pub fn tcp(ns: &Ns, to: IpAddr, port: u16, timeout: Duration) -> Outcome {
    tcp_from(ns, None, to, port, timeout)
}

/// [`tcp`] from the address `from` of the namespace (`None`: the one routing picks).
pub fn tcp_from(
    ns: &Ns,
    from: Option<IpAddr>,
    to: IpAddr,
    port: u16,
    timeout: Duration,
) -> Outcome {
    in_ns(ns.path(), move || {
        let connected = match from {
            None => TcpStream::connect_timeout(&SocketAddr::new(to, port), timeout),
            Some(src) => {
                let domain = socket2::Domain::for_address(SocketAddr::new(to, port));
                socket2::Socket::new(domain, socket2::Type::STREAM, None).and_then(|s| {
                    s.bind(&SocketAddr::new(src, 0).into())?;
                    s.connect_timeout(&SocketAddr::new(to, port).into(), timeout)?;
                    Ok(TcpStream::from(s))
                })
            }
        };
        let stream = match connected {
            Ok(s) => s,
            Err(e) => return Outcome::of_error(&e),
        };
        if let Err(e) = stream.set_read_timeout(Some(timeout)) {
            return Outcome::Other(e.to_string());
        }
        let mut line = String::new();
        match BufReader::new(&stream).read_line(&mut line) {
            Ok(_) => Outcome::of_reply(&line),
            Err(e) => Outcome::of_error(&e),
        }
    })
    .join()
    .expect("tcp thread")
}

/// One UDP datagram from `ns` (from `from_port`, 0 for any) to `to:port`, and its answer.
pub fn udp(ns: &Ns, to: IpAddr, port: u16, from_port: u16, timeout: Duration) -> Outcome {
    udp_socket(ns, None, from_port, to, port, timeout)
}

/// [`udp`] from the address `from` of the namespace (`None`: the one routing picks).
pub fn udp_from(
    ns: &Ns,
    from: Option<IpAddr>,
    to: IpAddr,
    port: u16,
    timeout: Duration,
) -> Outcome {
    udp_socket(ns, from, 0, to, port, timeout)
}

fn udp_socket(
    ns: &Ns,
    from: Option<IpAddr>,
    from_port: u16,
    to: IpAddr,
    port: u16,
    timeout: Duration,
) -> Outcome {
    in_ns(ns.path(), move || {
        let any: IpAddr = if to.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = match UdpSocket::bind((from.unwrap_or(any), from_port)) {
            Ok(s) => s,
            Err(e) => return Outcome::Other(format!("bind: {e}")),
        };
        // Connected, so an ICMP port unreachable comes back as ECONNREFUSED.
        if let Err(e) = socket.connect((to, port)) {
            return Outcome::of_error(&e);
        }
        if let Err(e) = socket.set_read_timeout(Some(timeout)) {
            return Outcome::Other(e.to_string());
        }
        if let Err(e) = socket.send(b"hi\n") {
            return Outcome::of_error(&e);
        }
        let mut buf = [0u8; 512];
        match socket.recv(&mut buf) {
            Ok(n) => Outcome::of_reply(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => Outcome::of_error(&e),
        }
    })
    .join()
    .expect("udp thread")
}

/// The node's address on the link to the outside host.
pub const NODE_V4: &str = "192.0.2.1";
pub const NODE_V6: &str = "2001:db8::1";
/// The outside host's address.
pub const OUTSIDE_V4: &str = "192.0.2.2";
pub const OUTSIDE_V6: &str = "2001:db8::2";

/// Links `node` (`up0`: [`NODE_V4`], [`NODE_V6`]) and `outside` (`eth0`: [`OUTSIDE_V4`],
/// [`OUTSIDE_V6`]) with a veth pair on 192.0.2.0/24 and 2001:db8::/64, up, IPv6 without DAD.
/// No routes: each test says what reaches what.
pub fn uplink(node: &Ns, outside: &Ns) {
    sh(&[
        "ip",
        "link",
        "add",
        "up0",
        "netns",
        &node.name,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ]);
    for (host, dev, v4, v6) in [
        (node, "up0", NODE_V4, NODE_V6),
        (outside, "eth0", OUTSIDE_V4, OUTSIDE_V6),
    ] {
        host.sh(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev]);
        host.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ]);
        host.sh(&["ip", "link", "set", dev, "up"]);
    }
}
