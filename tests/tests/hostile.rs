//! Hostile and odd input (shared/docs/dns-behaviour.md, "Hostile and odd input"), row by row:
//! raw bytes over UDP and over TCP, the exact reply (or none) checked, and after each a normal
//! query answered (on the same TCP connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use integration::{fixture_cluster, start_server};

const ID: u16 = 0xBEEF;

fn header(flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut m = ID.to_be_bytes().to_vec();
    m.extend(flags.to_be_bytes());
    for c in counts {
        m.extend(c.to_be_bytes());
    }
    m
}

fn name(labels: &[&str]) -> Vec<u8> {
    let mut w = Vec::new();
    for l in labels {
        w.push(l.len() as u8);
        w.extend(l.as_bytes());
    }
    w.push(0);
    w
}

const WEB: &[&str] = &["web", "alpha", "svc", "cluster", "local"];

/// A query: RD set, one question, optional extra records (counts given).
fn query(qname: &[u8], qtype: u16, qclass: u16, counts: [u16; 3], extra: &[u8]) -> Vec<u8> {
    let mut m = header(0x0100, [1, counts[0], counts[1], counts[2]]);
    m.extend(qname);
    m.extend(qtype.to_be_bytes());
    m.extend(qclass.to_be_bytes());
    m.extend(extra);
    m
}

fn opt(version: u8, flags: u16, options: &[u8]) -> Vec<u8> {
    let mut o = vec![0, 0, 41, 0x04, 0xD0, 0, version];
    o.extend(flags.to_be_bytes());
    o.extend((options.len() as u16).to_be_bytes());
    o.extend(options);
    o
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Nothing,
    /// A header-only reply with this rcode (id, opcode and RD copied).
    HeaderOnly(u8),
    /// A reply with the question echoed, this rcode and this many answers.
    Reply {
        rcode: u8,
        answers: u16,
    },
}

fn check(case: &str, sent: &[u8], got: Option<Vec<u8>>, want: Want) {
    match (want, got) {
        (Want::Nothing, None) => {}
        (Want::Nothing, Some(r)) => panic!("{case}: wanted no reply, got {r:02x?}"),
        (_, None) => panic!("{case}: no reply"),
        (Want::HeaderOnly(rcode), Some(r)) => {
            assert_eq!(r.len(), 12, "{case}: header only: {r:02x?}");
            assert_eq!(r[..2], ID.to_be_bytes(), "{case}: id");
            assert_eq!(r[2] & 0x80, 0x80, "{case}: QR");
            assert_eq!(r[2] & 0x79, sent[2] & 0x79, "{case}: opcode and RD copied");
            assert_eq!(r[3] & 0x0F, rcode, "{case}: rcode");
        }
        (Want::Reply { rcode, answers }, Some(r)) => {
            let m =
                hickory_proto::op::Message::from_vec(&r).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(r[..2], ID.to_be_bytes(), "{case}: id");
            assert_eq!(r[3] & 0x0F, rcode, "{case}: rcode");
            assert_eq!(
                m.answers.len() as u16,
                answers,
                "{case}: answers {:?}",
                m.answers
            );
            assert_eq!(m.queries.len(), 1, "{case}: question echoed");
        }
    }
}

fn udp(addr: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Absence of a reply is what some rows want: a bounded wait, not a speed.
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    s.send_to(msg, addr).expect("send");
    let mut buf = [0u8; 4096];
    s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

fn tcp_send(s: &mut TcpStream, msg: &[u8]) {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend(msg);
    s.write_all(&out).expect("write");
}

fn tcp_read(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

fn cases() -> Vec<(&'static str, Vec<u8>, Want, bool)> {
    let web = name(WEB);
    let good = |t| query(&web, t, 1, [0, 0, 0], &[]);
    let mut long = Vec::new();
    for _ in 0..5 {
        long.push(63);
        long.extend([b'a'; 63]);
    }
    long.push(0);
    let mut qr = good(1);
    qr[2] |= 0x80;
    let with_op = |op: u16| {
        let mut q = good(1);
        q[2] = (q[2] & !0x78) | ((op as u8) << 3);
        q
    };
    let qd = |n: u16| {
        let mut q = good(1);
        q[4..6].copy_from_slice(&n.to_be_bytes());
        q
    };
    let mut two_q = qd(2);
    two_q.extend(&web);
    two_q.extend([0, 1, 0, 1]);
    let loop_rr = {
        // The additional record's owner is a pointer to itself.
        let at = (12 + web.len() + 4) as u8;
        vec![0xC0, at, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    };
    let forward_rr = {
        // A well-formed TXT record whose owner points forward, into its own RDATA (a valid
        // name there). Since queries may carry only an OPT besides the question, this is FORMERR
        // for being there at all; the pointer rules themselves are unit-tested in wire.rs and
        // guard the parsing of upstream replies.
        let rdata_at = (12 + web.len() + 4 + 12) as u8;
        vec![0xC0, rdata_at, 0, 16, 0, 1, 0, 0, 0, 0, 0, 3, 1, b'a', 0]
    };
    let mut opt_twice = opt(0, 0, &[]);
    opt_twice.extend(opt(0, 0, &[]));
    let mut not_root = vec![1, b'x', 0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0];
    not_root.truncate(13);
    let unknown_option = opt(0, 0x8000 | 0x4000 | 0x0001, &[0xFD, 0xE9, 0, 3, 1, 2, 3]);
    let mut trailing = good(1);
    trailing.push(0xAA);

    // (case, bytes, want, also over TCP)
    vec![
        (
            "shorter than a header",
            vec![0xBE, 0xEF, 1, 0, 0],
            Want::Nothing,
            true,
        ),
        ("a response (QR=1)", qr, Want::Nothing, true),
        ("QDCOUNT 0", qd(0)[..12].to_vec(), Want::HeaderOnly(1), true),
        ("QDCOUNT 2", two_q, Want::HeaderOnly(1), true),
        (
            "truncated question name",
            good(1)[..17].to_vec(),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "question without its class",
            good(1)[..good(1).len() - 2].to_vec(),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "label type 0x40",
            query(b"\x41abc\x00", 1, 1, [0, 0, 0], &[]),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "label type 0x80",
            query(b"\x81abc\x00", 1, 1, [0, 0, 0], &[]),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "name over 255 octets",
            query(&long, 1, 1, [0, 0, 0], &[]),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "pointer in the question",
            query(b"\xC0\x0C", 1, 1, [0, 0, 0], &[]),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "compression loop",
            query(&web, 1, 1, [0, 0, 1], &loop_rr),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "forward pointer",
            query(&web, 1, 1, [0, 0, 1], &forward_rr),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "two OPT records",
            query(&web, 1, 1, [0, 0, 2], &opt_twice),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "OPT not at the root",
            query(&web, 1, 1, [0, 0, 1], &not_root),
            Want::HeaderOnly(1),
            true,
        ),
        (
            "OPT in the answer section",
            query(&web, 1, 1, [1, 0, 0], &opt(0, 0, &[])),
            Want::HeaderOnly(1),
            true,
        ),
        ("trailing garbage", trailing, Want::HeaderOnly(1), true),
        (
            "EDNS version 1",
            query(&web, 1, 1, [0, 0, 1], &opt(1, 0, &[])),
            Want::Reply {
                rcode: 0,
                answers: 0,
            },
            true,
        ),
        (
            "unknown EDNS option and flags",
            query(&web, 1, 1, [0, 0, 1], &unknown_option),
            Want::Reply {
                rcode: 0,
                answers: 1,
            },
            true,
        ),
        ("opcode NOTIFY", with_op(4), Want::HeaderOnly(4), true),
        ("opcode UPDATE", with_op(5), Want::HeaderOnly(4), true),
        (
            "opcode 3 (unassigned)",
            with_op(3),
            Want::HeaderOnly(4),
            true,
        ),
        (
            "class CHAOS",
            query(&web, 16, 3, [0, 0, 0], &[]),
            Want::Reply {
                rcode: 5,
                answers: 0,
            },
            true,
        ),
        (
            "class NONE",
            query(&web, 1, 254, [0, 0, 0], &[]),
            Want::Reply {
                rcode: 5,
                answers: 0,
            },
            true,
        ),
        (
            "class ANY",
            query(&web, 1, 255, [0, 0, 0], &[]),
            Want::Reply {
                rcode: 0,
                answers: 1,
            },
            true,
        ),
        (
            "AXFR over UDP",
            good(252),
            Want::Reply {
                rcode: 4,
                answers: 0,
            },
            false,
        ),
        (
            "IXFR over UDP",
            good(251),
            Want::Reply {
                rcode: 4,
                answers: 0,
            },
            false,
        ),
        (
            "ANY",
            good(255),
            Want::Reply {
                rcode: 0,
                answers: 1,
            },
            true,
        ),
        (
            "unknown type",
            good(65000),
            Want::Reply {
                rcode: 0,
                answers: 0,
            },
            true,
        ),
        (
            "a name in no zone",
            query(&name(&["example", "org"]), 1, 1, [0, 0, 0], &[]),
            Want::Reply {
                rcode: 5,
                answers: 0,
            },
            true,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_over_udp_and_tcp_then_a_normal_query() {
    let srv = start_server(&fixture_cluster(), |_| {}).await;
    let addr = srv.server.local_addrs()[0];
    tokio::task::spawn_blocking(move || {
        let normal = query(&name(WEB), 1, 1, [0, 0, 0], &[]);
        for (case, bytes, want, over_tcp) in cases() {
            check(case, &bytes, udp(addr, &bytes), want);
            check(
                &format!("{case}, then a normal query"),
                &normal,
                udp(addr, &normal),
                Want::Reply {
                    rcode: 0,
                    answers: 1,
                },
            );
            if over_tcp {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                tcp_send(&mut s, &bytes);
                if want != Want::Nothing {
                    check(&format!("{case} (tcp)"), &bytes, tcp_read(&mut s), want);
                }
                // The same connection still answers: a dropped message left nothing behind.
                tcp_send(&mut s, &normal);
                check(
                    &format!("{case} (tcp), then a normal query"),
                    &normal,
                    tcp_read(&mut s),
                    Want::Reply {
                        rcode: 0,
                        answers: 1,
                    },
                );
            }
        }
        // Zone transfers over TCP: REFUSED.
        for t in [252u16, 251] {
            let q = query(&name(&["cluster", "local"]), t, 1, [0, 0, 0], &[]);
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            tcp_send(&mut s, &q);
            check(
                "zone transfer over TCP",
                &q,
                tcp_read(&mut s),
                Want::Reply {
                    rcode: 5,
                    answers: 0,
                },
            );
        }
    })
    .await
    .expect("client");
    srv.shutdown().await;
}

/// The details of two rows: BADVERS is the extended rcode 16 in an OPT of version 0, and an
/// unknown option or flag is neither echoed nor kept, while DO is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_details() {
    let srv = start_server(&fixture_cluster(), |_| {}).await;
    let addr = srv.server.local_addrs()[0];
    tokio::task::spawn_blocking(move || {
        let web = name(WEB);
        let r = udp(addr, &query(&web, 1, 1, [0, 0, 1], &opt(1, 0x8000, &[]))).expect("reply");
        let o = &r[r.len() - 11..];
        assert_eq!((o[0], o[1], o[2]), (0, 0, 41), "an OPT last");
        assert_eq!(
            (o[5], o[6]),
            (1, 0),
            "extended rcode 1 (16 = BADVERS with header 0), version 0"
        );
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);

        let unknown = opt(0, 0x8000 | 0x4000 | 0x0001, &[0xFD, 0xE9, 0, 3, 1, 2, 3]);
        let r = udp(addr, &query(&web, 1, 1, [0, 0, 1], &unknown)).expect("reply");
        let o = &r[r.len() - 11..];
        assert_eq!(
            u16::from_be_bytes([o[7], o[8]]),
            0x8000,
            "only DO comes back"
        );
        assert_eq!(u16::from_be_bytes([o[9], o[10]]), 0, "no options echoed");
    })
    .await
    .expect("client");
    srv.shutdown().await;
}
