//! The server over real sockets: the case table over UDP and TCP, the real dig, truncation,
//! pipelining and the transport rules of the contract.

use std::net::SocketAddr;
use std::time::Duration;

use integration::{
    build_query, dig, fixture_cluster, have_tool, load_cases, run_table, start_server,
    tcp_exchange, tcp_exchange_many, udp_exchange,
};

async fn server() -> (clusterdns::Running, SocketAddr) {
    let r = start_server(&fixture_cluster(), |_| {}).await;
    let addr = r.server.local_addrs()[0];
    (r, addr)
}

/// Runs a blocking client off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("client thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_over_udp_and_tcp() {
    let (srv, addr) = server().await;
    blocking(move || {
        let cases = load_cases("contract.cases");
        run_table(&cases, |_, q| udp_exchange(addr, q));
        run_table(&cases, |_, q| tcp_exchange(addr, q));
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_sees_the_contract() {
    if !have_tool("dig") {
        return;
    }
    let (srv, addr) = server().await;
    blocking(move || {
        let short = |args: &[&str]| dig(addr, &[&["+short"], args].concat()).trim().to_string();
        assert_eq!(short(&["web.alpha.svc.cluster.local"]), "10.96.1.1");
        assert_eq!(
            short(&["dual.alpha.svc.cluster.local", "AAAA"]),
            "fd00::1:2"
        );
        assert_eq!(
            short(&["_http._tcp.web.alpha.svc.cluster.local", "SRV"]),
            "0 100 80 web.alpha.svc.cluster.local."
        );
        assert_eq!(short(&["-x", "10.96.1.1"]), "web.alpha.svc.cluster.local.");
        assert_eq!(short(&["-x", "fd00::2:1"]), "a.hl.alpha.svc.cluster.local.");
        assert_eq!(
            short(&["+tcp", "web-0.web.alpha.svc.cluster.local"]),
            "10.1.1.1"
        );
        assert_eq!(short(&["10-1-1-1.alpha.pod.cluster.local"]), "10.1.1.1");
        assert_eq!(short(&["dns-version.cluster.local", "TXT"]), "\"1.1.0\"");
        let mut hl: Vec<String> = short(&["hl.alpha.svc.cluster.local"])
            .lines()
            .map(str::to_string)
            .collect();
        hl.sort();
        assert_eq!(hl, ["10.1.2.1", "10.1.2.2"]);

        // Case is preserved in the answer dig prints.
        let out = dig(addr, &["+noall", "+answer", "WEB.Alpha.svc.cluster.local"]);
        assert!(
            out.starts_with("WEB.Alpha.svc.cluster.local. 5\tIN\tA\t10.96.1.1"),
            "{out}"
        );

        let out = dig(addr, &["nope.alpha.svc.cluster.local"]);
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        assert!(out.contains("flags: qr aa rd;"), "{out}");
        assert!(
            out.contains(
                "cluster.local.\t\t5\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local."
            ),
            "{out}"
        );

        let out = dig(addr, &["example.org"]);
        assert!(out.contains("status: REFUSED"), "{out}");

        // Too big for UDP: dig sees TC and retries over TCP by itself, getting all 100.
        let out = dig(addr, &["+noall", "+answer", "big.beta.svc.cluster.local"]);
        assert_eq!(out.lines().count(), 100, "{out}");
        let out = dig(addr, &["+ignore", "+noedns", "big.beta.svc.cluster.local"]);
        assert!(out.contains("flags: qr aa tc rd;"), "{out}");
        assert!(out.contains("ANSWER: 0,"), "{out}");
    })
    .await;
    srv.shutdown().await;
}

fn parse(reply: &[u8]) -> hickory_proto::op::Message {
    hickory_proto::op::Message::from_vec(reply).expect("reply parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_is_all_or_nothing_and_tcp_has_everything() {
    let (srv, addr) = server().await;
    blocking(move || {
        for edns in [None, Some(1232), Some(4096)] {
            let q = build_query(1, "big.beta.svc.cluster.local.", "A", edns, false, true);
            let m = parse(&udp_exchange(addr, &q).expect("udp"));
            assert!(m.metadata.truncation, "edns {edns:?}: TC");
            assert!(m.answers.is_empty(), "edns {edns:?}: no partial RRset");
            assert_eq!(m.queries.len(), 1, "question echoed");
            assert_eq!(m.edns.is_some(), edns.is_some());
            let m = parse(&tcp_exchange(addr, &q).expect("tcp"));
            assert!(!m.metadata.truncation);
            assert_eq!(m.answers.len(), 100);
        }
        // A small answer still fits in 512 octets without EDNS.
        let q = build_query(2, "hl.alpha.svc.cluster.local.", "A", None, false, true);
        let m = parse(&udp_exchange(addr, &q).expect("udp"));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 2);
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_pipelined_queries_on_one_connection() {
    let (srv, addr) = server().await;
    blocking(move || {
        let names = ["web", "dual", "hl", "pnra", "ext"];
        let queries: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                build_query(
                    i,
                    &format!("{}.alpha.svc.cluster.local.", names[i as usize % 5]),
                    "A",
                    Some(1232),
                    false,
                    true,
                )
            })
            .collect();
        let replies = tcp_exchange_many(addr, &queries).expect("tcp");
        for (q, r) in queries.iter().zip(&replies) {
            assert_eq!(q[..2], r[..2], "replies come back in order with their ids");
            let m = parse(r);
            assert_eq!(
                m.metadata.response_code,
                hickory_proto::op::ResponseCode::NoError
            );
            assert!(!m.answers.is_empty());
        }
    })
    .await;
    srv.shutdown().await;
}

/// Raw transport rules: EDNS version, classes, zone transfers, and packets that get no reply
/// or FORMERR. After each, a normal query is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_rules_and_bad_packets() {
    let (srv, addr) = server().await;
    blocking(move || {
        let good = build_query(
            9,
            "web.alpha.svc.cluster.local.",
            "A",
            Some(1232),
            false,
            true,
        );
        let still_fine = || {
            let m = parse(&udp_exchange(addr, &good).expect("normal query answered"));
            assert_eq!(m.answers.len(), 1);
        };
        let rcode = |r: &[u8]| r[3] & 0x0F;

        // EDNS version 1: BADVERS (extended rcode 16: header 0, OPT high bits 1), OPT version 0.
        let mut q = build_query(
            3,
            "web.alpha.svc.cluster.local.",
            "A",
            Some(1232),
            false,
            true,
        );
        let opt_ttl = q.len() - 6; // OPT: name(1) type(2) class(2) ttl(4) rdlen(2)
        q[opt_ttl + 1] = 1;
        let r = udp_exchange(addr, &q).expect("badvers");
        assert_eq!(rcode(&r), 0);
        let opt = &r[r.len() - 11..];
        assert_eq!(
            (opt[1], opt[2], opt[5], opt[6]),
            (0, 41, 1, 0),
            "OPT with ext rcode 1, version 0"
        );
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0, "no answer");
        still_fine();

        // CHAOS class: REFUSED.
        let mut q = build_query(4, "version.bind.", "TXT", None, false, true);
        let n = q.len();
        q[n - 2..].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(rcode(&udp_exchange(addr, &q).expect("ch")), 5);

        // AXFR: NOTIMP over UDP, REFUSED over TCP.
        let q = build_query(5, "cluster.local.", "AXFR", None, false, false);
        assert_eq!(rcode(&udp_exchange(addr, &q).expect("axfr udp")), 4);
        assert_eq!(rcode(&tcp_exchange(addr, &q).expect("axfr tcp")), 5);

        // Opcode NOTIFY: NOTIMP, header only.
        let mut q = good.clone();
        q[2] = (q[2] & !0x78) | (4 << 3);
        let r = udp_exchange(addr, &q).expect("notify");
        assert_eq!((rcode(&r), r.len()), (4, 12));

        // FORMERR: two questions, trailing garbage, a compression loop.
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(rcode(&udp_exchange(addr, &two).expect("qd2")), 1);
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(rcode(&udp_exchange(addr, &trailing).expect("trailing")), 1);
        still_fine();

        // Nothing back for a response (QR=1) or a runt; the server keeps answering.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut resp = good.clone();
        resp[2] |= 0x80;
        sock.send_to(&resp, addr).expect("send");
        sock.send_to(&[1, 2, 3], addr).expect("send");
        let mut buf = [0u8; 512];
        assert!(
            sock.recv_from(&mut buf).is_err(),
            "no reply to a response or a runt"
        );
        still_fine();
    })
    .await;
    srv.shutdown().await;
}

/// A burst from several clients at once, into one UDP worker: the worker takes queued datagrams
/// in batches and sends the replies in one call, and every client must still get exactly its
/// own replies (id, question and answer), none lost, none crossed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_from_many_clients_get_their_own_replies() {
    let srv = start_server(&fixture_cluster(), |c| c.server.udp_workers = 1).await;
    let addr = srv.server.local_addrs()[0];
    blocking(move || {
        let names = [
            ("web.alpha.svc.cluster.local.", Some("10.96.1.1")),
            ("web-0.web.alpha.svc.cluster.local.", Some("10.1.1.1")),
            ("nope.alpha.svc.cluster.local.", None),
            ("10-1-1-1.alpha.pod.cluster.local.", Some("10.1.1.1")),
        ];
        let clients: Vec<std::net::UdpSocket> = (0..4)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        for c in &clients {
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
        }
        // Everything is sent before anything is read: the worker finds a full queue.
        const PER_CLIENT: u16 = 100;
        for (ci, c) in clients.iter().enumerate() {
            for i in 0..PER_CLIENT {
                let id = (ci as u16) << 12 | i;
                let (name, _) = names[usize::from(i) % names.len()];
                let q = build_query(id, name, "A", Some(1232), false, true);
                c.send_to(&q, addr).expect("send");
            }
        }
        for (ci, c) in clients.iter().enumerate() {
            let mut seen = std::collections::BTreeSet::new();
            let mut buf = [0u8; 2048];
            for _ in 0..PER_CLIENT {
                let n = c.recv(&mut buf).expect("every query gets a reply");
                let m = parse(&buf[..n]);
                let id = m.metadata.id;
                assert_eq!(usize::from(id >> 12), ci, "a reply for another client");
                assert!(seen.insert(id), "reply {id} twice");
                let (name, want) = names[usize::from(id & 0xFFF) % names.len()];
                assert_eq!(m.queries[0].name().to_string(), name, "question of {id}");
                let got: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
                match want {
                    Some(ip) => assert_eq!(got, [ip], "answer to {id}"),
                    None => assert!(got.is_empty(), "answer to {id}"),
                }
            }
        }
    })
    .await;
    srv.shutdown().await;
}
