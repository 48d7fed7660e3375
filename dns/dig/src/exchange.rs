//! Asking: the query as dig builds it, sent over UDP (with dig's timeout and tries) or TCP, and a
//! truncated UDP answer asked again over TCP.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::args::{Family, Lookup, Options};

/// The query's wire form, with its id.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: u16,
    pub bytes: Vec<u8>,
    /// The client cookie sent, to judge the one that comes back.
    pub cookie: Option<[u8; 8]>,
}

/// Builds the query dig sends: RD unless `+norecurse`, AD set (dig's default `+adflag`), and an
/// OPT record with the buffer size, DO for `+dnssec`, and a client cookie unless `+nocookie`.
pub fn build(lookup: &Lookup) -> Result<Query, String> {
    let options = &lookup.options;
    let id = fastrand::u16(..);
    let mut cookie = None;
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&id.to_be_bytes());
    let mut flags: u16 = 0x0020; // AD
    if options.recurse {
        flags |= 0x0100;
    }
    bytes.extend_from_slice(&flags.to_be_bytes());
    // +dnssec, +bufsize=N and +cookie bring EDNS back after +noedns, as in dig.
    let edns = options.edns.or((options.dnssec
        || options.bufsize_set
        || (options.cookie_set && options.cookie))
        .then_some(0));
    let additional: u16 = u16::from(edns.is_some());
    for count in [1u16, 0, 0, additional] {
        bytes.extend_from_slice(&count.to_be_bytes());
    }
    encode_name(&lookup.name, &mut bytes)?;
    bytes.extend_from_slice(&u16::from(lookup.qtype).to_be_bytes());
    bytes.extend_from_slice(&u16::from(lookup.qclass).to_be_bytes());
    if let Some(version) = edns {
        bytes.push(0); // root
        bytes.extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
        bytes.extend_from_slice(&options.bufsize.to_be_bytes());
        bytes.push(0); // extended rcode
        bytes.push(version);
        let do_bit: u16 = if options.dnssec { 0x8000 } else { 0 };
        bytes.extend_from_slice(&do_bit.to_be_bytes());
        let mut rdata = Vec::new();
        if options.cookie {
            let client = fastrand::u64(..).to_be_bytes();
            let value = options
                .cookie_value
                .clone()
                .unwrap_or_else(|| client.to_vec());
            let length = u16::try_from(value.len()).map_err(|_| "cookie too long".to_string())?;
            rdata.extend_from_slice(&10u16.to_be_bytes());
            rdata.extend_from_slice(&length.to_be_bytes());
            rdata.extend_from_slice(&value);
            cookie = value.get(..8).and_then(|c| <[u8; 8]>::try_from(c).ok());
        }
        let length = u16::try_from(rdata.len()).map_err(|_| "OPT too long".to_string())?;
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&rdata);
    }
    Ok(Query { id, bytes, cookie })
}

/// A name in wire form; `\.` and `\DDD` escapes as in master files.
fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let mut label: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let mut chars = name.bytes().peekable();
    let mut flush = |label: &mut Vec<u8>, out: &mut Vec<u8>| -> Result<(), String> {
        if label.is_empty() {
            return Ok(());
        }
        if label.len() > 63 {
            return Err(format!("'{name}' is not a legal name (label too long)"));
        }
        total += label.len() + 1;
        out.push(label.len() as u8);
        out.append(label);
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            b'.' => {
                if label.is_empty() && chars.peek().is_some() {
                    return Err(format!("'{name}' is not a legal name (empty label)"));
                }
                flush(&mut label, out)?;
            }
            b'\\' => {
                let digits: Vec<u8> = (0..3)
                    .map_while(|_| chars.next_if(u8::is_ascii_digit))
                    .collect();
                if digits.is_empty() {
                    label.push(
                        chars
                            .next()
                            .ok_or_else(|| format!("'{name}' ends in a backslash"))?,
                    );
                } else {
                    let text = String::from_utf8_lossy(&digits).to_string();
                    label.push(
                        text.parse::<u8>()
                            .map_err(|_| format!("'{name}': bad escape \\{text}"))?,
                    );
                }
            }
            other => label.push(other),
        }
    }
    flush(&mut label, out)?;
    out.push(0);
    if total + 1 > 255 {
        return Err(format!("'{name}' is not a legal name (name too long)"));
    }
    Ok(())
}

/// The type of the question of a query.
fn query_type(bytes: &[u8]) -> Option<RecordType> {
    let mut at = 12;
    while *bytes.get(at)? != 0 {
        at += usize::from(bytes[at]) + 1;
    }
    let raw = u16::from_be_bytes([*bytes.get(at + 1)?, *bytes.get(at + 2)?]);
    Some(RecordType::from(raw))
}

/// How an answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A reply and how it came.
#[derive(Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// The client cookie the query carried.
    pub sent_cookie: Option<[u8; 8]>,
    pub server: SocketAddr,
    pub transport: Transport,
    pub elapsed: Duration,
}

/// Why no reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Every UDP try timed out or was refused: dig prints its banner and "no servers could be
    /// reached" after the errors.
    Unreachable,
    /// Every TCP try failed: dig prints, per try, the failed connection and "no servers could
    /// be reached", and no banner.
    TcpFailed,
}

/// Events dig prints while asking (";; communications error ...", the TCP retry).
pub type Notice = String;

/// Sends `query` (for `name`) to `server` (`shown` as the user named it) and returns the
/// reply; `notices` gets what dig would print on the way (truncation, errors).
pub fn ask(
    query: &Query,
    server: SocketAddr,
    shown: &str,
    name: &str,
    options: &Options,
    notices: &mut Vec<Notice>,
) -> Result<Reply, Failure> {
    let timeout = Duration::from_secs(options.timeout);
    // dig asks for ANY over TCP unless told +notcp.
    let any = query.bytes.len() > 12 && query_type(&query.bytes) == Some(RecordType::ANY);
    let over_tcp = options.tcp || (any && !options.tcp_set);
    if !over_tcp {
        let mut answered = None;
        for _ in 0..options.tries {
            match udp(query, server, options, timeout) {
                Ok(reply) => {
                    answered = Some(reply);
                    break;
                }
                Err(err) => notices.push(describe(server, &err)),
            }
        }
        let reply = answered.ok_or(Failure::Unreachable)?;
        // TC set: ask again over TCP, as dig does.
        if reply.bytes.get(2).is_none_or(|flags| flags & 0x02 == 0) {
            return Ok(reply);
        }
        notices.push(";; Truncated, retrying in TCP mode.".to_string());
    }
    for _ in 0..options.tries {
        match tcp(query, server, timeout) {
            Ok(reply) => return Ok(reply),
            Err(err) => {
                notices.push(format!(
                    ";; Connection to {}({shown}) for {name} failed: {}.",
                    server_text(server),
                    reason(&err)
                ));
                notices.push(";; no servers could be reached".to_string());
            }
        }
    }
    Err(Failure::TcpFailed)
}

fn server_text(server: SocketAddr) -> String {
    format!("{}#{}", server.ip(), server.port())
}

/// An error as dig words it.
fn reason(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        _ => err.to_string(),
    }
}

fn describe(server: SocketAddr, err: &io::Error) -> String {
    format!(
        ";; communications error to {}: {}",
        server_text(server),
        reason(err)
    )
}

fn local(options: &Options, server: SocketAddr) -> SocketAddr {
    options.bind.unwrap_or_else(|| {
        let any: IpAddr = if server.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        SocketAddr::new(any, 0)
    })
}

fn udp(
    query: &Query,
    server: SocketAddr,
    options: &Options,
    timeout: Duration,
) -> io::Result<Reply> {
    let socket = UdpSocket::bind(local(options, server))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(timeout))?;
    let started = Instant::now();
    socket.send(&query.bytes)?;
    let mut buffer = vec![0u8; 65535];
    loop {
        let size = socket.recv(&mut buffer)?;
        // Only the answer to this query: same id, and a response.
        if size >= 12 && buffer[..2] == query.id.to_be_bytes() && buffer[2] & 0x80 != 0 {
            buffer.truncate(size);
            return Ok(Reply {
                bytes: buffer,
                sent_cookie: query.cookie,
                server,
                transport: Transport::Udp,
                elapsed: started.elapsed(),
            });
        }
    }
}

fn tcp(query: &Query, server: SocketAddr, timeout: Duration) -> io::Result<Reply> {
    let started = Instant::now();
    // std cannot bind a TCP socket before connecting: a -b address applies to UDP only.
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let length =
        u16::try_from(query.bytes.len()).map_err(|_| io::Error::other("query too long"))?;
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(&query.bytes);
    stream.write_all(&framed)?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix)?;
    let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut bytes)?;
    Ok(Reply {
        bytes,
        sent_cookie: query.cookie,
        server,
        transport: Transport::Tcp,
        elapsed: started.elapsed(),
    })
}

/// The addresses of `server` (an address or a host name), filtered by `-4`/`-6`.
pub fn resolve_server(
    server: &str,
    port: u16,
    family: Option<Family>,
) -> Result<Vec<SocketAddr>, String> {
    let addresses: Vec<SocketAddr> = match server.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(server, port))
            .map_err(|err| format!("couldn't get address for '{server}': {err}"))?
            .collect(),
    };
    let filtered: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|a| match family {
            Some(Family::V4) => a.is_ipv4(),
            Some(Family::V6) => a.is_ipv6(),
            None => true,
        })
        .collect();
    if filtered.is_empty() {
        return Err(format!("couldn't get address for '{server}': not found"));
    }
    Ok(filtered)
}

/// The nameservers and search list of `/etc/resolv.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub ndots: u32,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf {
            ndots: 1,
            ..Default::default()
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.split('%').next()?.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search") => conf.search = words.map(String::from).collect(),
                Some("domain") => conf.search = words.take(1).map(String::from).collect(),
                Some("options") => {
                    for option in words {
                        if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse().ok())
                        {
                            conf.ndots = n;
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }

    pub fn load() -> ResolvConf {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| ResolvConf::parse(&t))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_with_escapes_and_limits() {
        let mut out = Vec::new();
        encode_name("a\\.b.c.", &mut out).unwrap();
        assert_eq!(out, b"\x03a.b\x01c\x00");
        let mut out = Vec::new();
        encode_name(".", &mut out).unwrap();
        assert_eq!(out, b"\x00");
        let mut out = Vec::new();
        encode_name("\\065b", &mut out).unwrap();
        assert_eq!(out, b"\x02Ab\x00");
        assert!(encode_name(&"a".repeat(64), &mut Vec::new()).is_err());
        assert!(encode_name("a..b", &mut Vec::new()).is_err());
    }

    #[test]
    fn resolv_conf_gives_servers_search_and_ndots() {
        let conf = ResolvConf::parse(
            "nameserver 10.96.0.10\nnameserver fe80::1%eth0\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2\n",
        );
        assert_eq!(conf.nameservers.len(), 2);
        assert_eq!(conf.search.len(), 3);
        assert_eq!(conf.ndots, 5);
    }
}
