//! TCP limits (idle timeout, slowloris, the connection cap) and response rate limiting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::{build_query, fixture_cluster, start_server};

fn framed(q: &[u8]) -> Vec<u8> {
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend(q);
    out
}

/// Waits (at most `limit`) for the peer to close the connection.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed() {
    let srv = start_server(&fixture_cluster(), |c| {
        c.server.tcp_idle_timeout = Duration::from_secs(1)
    })
    .await;
    let addr = srv.server.local_addrs()[0];
    tokio::task::spawn_blocking(move || {
        // Before connecting: the server's idle clock starts after this, so closing happens no
        // sooner than a timeout after it.
        let start = Instant::now();
        // Silent from the start.
        let mut idle = TcpStream::connect(addr).expect("connect");
        // A length prefix, then silence.
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.write_all(&[0, 40]).expect("write");
        // Half a message, then silence.
        let mut half = TcpStream::connect(addr).expect("connect");
        half.write_all(
            &framed(&build_query(
                1,
                "web.alpha.svc.cluster.local.",
                "A",
                None,
                false,
                true,
            ))[..10],
        )
        .expect("write");
        for (what, s) in [
            ("idle", &mut idle),
            ("slowloris", &mut slow),
            ("half a query", &mut half),
        ] {
            assert!(
                closed_within(s, Duration::from_secs(10)),
                "{what} connection not closed"
            );
        }
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "closed before the idle timeout"
        );
        // The server still answers over TCP.
        let r = integration::tcp_exchange(
            addr,
            &build_query(2, "web.alpha.svc.cluster.local.", "A", None, false, true),
        )
        .expect("tcp");
        assert_eq!(r[3] & 0x0F, 0);
    })
    .await
    .expect("client");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_new_connections_until_one_closes() {
    let srv = start_server(&fixture_cluster(), |c| {
        c.server.tcp_max_connections = 2;
        c.server.tcp_idle_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = srv.server.local_addrs()[0];
    tokio::task::spawn_blocking(move || {
        let q = build_query(3, "web.alpha.svc.cluster.local.", "A", None, false, true);
        let ask = |s: &mut TcpStream| -> Option<u8> {
            s.write_all(&framed(&q)).ok()?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).ok()?;
            let mut b = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut b).ok()?;
            Some(b[3] & 0x0F)
        };
        let mut first = TcpStream::connect(addr).expect("connect");
        let mut second = TcpStream::connect(addr).expect("connect");
        for s in [&mut first, &mut second] {
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            assert_eq!(ask(s), Some(0), "within the cap: served");
        }
        // A third: the kernel accepts it, the server does not serve it while two are open.
        let mut third = TcpStream::connect(addr).expect("connect");
        third
            .set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        assert_eq!(ask(&mut third), None, "served beyond the cap");
        drop(first);
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut len = [0u8; 2];
        third
            .read_exact(&mut len)
            .expect("answered once a slot freed");
    })
    .await
    .expect("client");
    srv.shutdown().await;
}

/// Sends `n` queries at once from `from`, then counts the replies: (full, truncated).
fn burst(from: &str, to: SocketAddr, name: &str, n: u16) -> (u32, u32) {
    let s = UdpSocket::bind(from).expect("bind");
    for i in 0..n {
        s.send_to(&build_query(i, name, "A", None, false, true), to)
            .expect("send");
    }
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let (mut full, mut tc) = (0, 0);
    let mut buf = [0u8; 1024];
    while let Ok((_, _)) = s.recv_from(&mut buf) {
        if buf[2] & 0x02 != 0 {
            tc += 1
        } else {
            full += 1
        }
    }
    (full, tc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rate_limiting_drops_and_slips_per_network() {
    let rrl = Arc::new(clusterdns::rrl::Rrl::new(10, 2, true));
    let srv = start_server(&fixture_cluster(), |c| c.server.rrl = Some(rrl)).await;
    let addr = srv.server.local_addrs()[0];
    tokio::task::spawn_blocking(move || {
        let (full, tc) = burst("127.0.0.1:0", addr, "web.alpha.svc.cluster.local.", 100);
        // 10/s with a burst of 10: far fewer than 100 full answers; about half the rest slip.
        assert!(full < 60, "{full} full answers");
        assert!(tc > 10, "{tc} truncated");
        assert!(full + tc < 100, "some were dropped ({full} + {tc})");
        // Another /24 (still loopback) has its own budget.
        let (full, _) = burst("127.1.0.1:0", addr, "web.alpha.svc.cluster.local.", 5);
        assert_eq!(full, 5);
        // TCP is never limited.
        let r = integration::tcp_exchange(
            addr,
            &build_query(9, "web.alpha.svc.cluster.local.", "A", None, false, true),
        )
        .expect("tcp");
        assert_eq!(r[2] & 0x02, 0);
    })
    .await
    .expect("client");
    srv.shutdown().await;

    // Without --rrl-cluster the cluster's answers are not limited, other names are.
    let rrl = Arc::new(clusterdns::rrl::Rrl::new(10, 2, false));
    let srv = start_server(&fixture_cluster(), |c| c.server.rrl = Some(rrl)).await;
    let addr = srv.server.local_addrs()[0];
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            burst("127.0.0.1:0", addr, "web.alpha.svc.cluster.local.", 100),
            (100, 0)
        );
        let (full, _) = burst("127.0.0.1:0", addr, "example.org.", 100);
        assert!(full < 60, "refused names are limited: {full}");
    })
    .await
    .expect("client");
    srv.shutdown().await;
}
