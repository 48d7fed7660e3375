//! Response rate limiting (RRL) for UDP, to blunt reflection attacks.
//!
//! Each client network (/24 for IPv4, /56 for IPv6) gets a token bucket of `rate` responses per
//! second. Past it, responses are dropped, except every `slip`-th, which is sent truncated (TC,
//! question only) so that a real client behind a spoofed flood retries over TCP, where RRL does
//! not apply. Off by default; when on, answers from the cluster's own zones are limited only
//! with `--rrl-cluster` (pods ask those names at high rates legitimately).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send a truncated reply instead.
    Slip,
    Drop,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    limited: u64,
}

/// The limiter, shared by every UDP worker.
#[derive(Debug)]
pub struct Rrl {
    rate: f64,
    slip: u64,
    /// Limit the cluster's own zones too.
    pub cluster_too: bool,
    buckets: DashMap<[u8; 8], Bucket>,
    /// When the table was last pruned (milliseconds since `epoch`), so it is pruned at most
    /// once a second however it is flooded.
    pruned_ms: AtomicU64,
    epoch: Instant,
    pub dropped: AtomicU64,
    pub slipped: AtomicU64,
}

/// Entries not touched for this long are forgotten when the table grows large.
const IDLE_SECS: f64 = 10.0;
const PRUNE_AT: usize = 100_000;

fn network(ip: IpAddr) -> [u8; 8] {
    let mut k = [0u8; 8];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            k[0] = 4;
            k[1..4].copy_from_slice(&v4.octets()[..3]);
        }
        IpAddr::V6(v6) => {
            k[0] = 6;
            k[1..8].copy_from_slice(&v6.octets()[..7]);
        }
    }
    k
}

impl Rrl {
    /// `rate` responses per second per client network; every `slip`-th limited response is
    /// sent truncated (0: none).
    pub fn new(rate: u32, slip: u32, cluster_too: bool) -> Self {
        Self {
            rate: f64::from(rate),
            slip: u64::from(slip),
            cluster_too,
            buckets: DashMap::new(),
            pruned_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            dropped: AtomicU64::new(0),
            slipped: AtomicU64::new(0),
        }
    }

    /// Charges one response to `client`'s network.
    pub fn check(&self, client: IpAddr, now: Instant) -> Verdict {
        if self.buckets.len() > PRUNE_AT {
            let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
            let last = self.pruned_ms.load(Ordering::Relaxed);
            if ms >= last + 1000
                && self
                    .pruned_ms
                    .compare_exchange(last, ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.buckets
                    .retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < IDLE_SECS);
            }
        }
        let mut b = self.buckets.entry(network(client)).or_insert(Bucket {
            tokens: self.rate,
            last: now,
            limited: 0,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Send;
        }
        b.limited += 1;
        if self.slip > 0 && b.limited.is_multiple_of(self.slip) {
            self.slipped.fetch_add(1, Ordering::Relaxed);
            Verdict::Slip
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Verdict::Drop
        }
    }
}

/// Cuts a reply down to its header and question, with TC set and no records.
pub fn truncate(reply: &mut Vec<u8>) {
    if reply.len() < 12 {
        return;
    }
    let qd = u16::from_be_bytes([reply[4], reply[5]]);
    let end = if qd == 1 {
        crate::wire::skip_name(reply, 12).map(|(e, _)| e + 4)
    } else {
        Some(12)
    };
    let end = end.filter(|e| *e <= reply.len()).unwrap_or(12);
    reply.truncate(end);
    reply[2] |= 0x02;
    reply[6..12].copy_from_slice(&[0; 6]);
    if end == 12 {
        reply[4..6].copy_from_slice(&[0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_per_network_with_slip() {
        let r = Rrl::new(5, 2, false);
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let same_net: IpAddr = "192.0.2.200".parse().expect("ip");
        let other: IpAddr = "198.51.100.1".parse().expect("ip");
        let v: Vec<Verdict> = (0..9)
            .map(|i| r.check(if i % 2 == 0 { a } else { same_net }, t))
            .collect();
        assert_eq!(&v[..5], &[Verdict::Send; 5], "the burst allowance");
        assert_eq!(
            &v[5..],
            &[Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Slip],
            "then every 2nd slips"
        );
        assert_eq!(
            r.check(other, t),
            Verdict::Send,
            "another network has its own bucket"
        );
        // A second later the bucket has refilled.
        assert_eq!(r.check(a, t + Duration::from_secs(1)), Verdict::Send);
        let v6a: IpAddr = "2001:db8:0:1::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:0:1:ffff::2".parse().expect("ip");
        assert_eq!(network(v6a), network(v6b), "one /56");
    }

    #[test]
    fn truncate_keeps_the_question() {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1];
        m.extend(b"\x01a\x00\x00\x01\x00\x01");
        m.extend([0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2, 3, 4]);
        truncate(&mut m);
        assert_eq!(m.len(), 12 + 7);
        assert_eq!(m[2] & 0x02, 0x02);
        assert_eq!(&m[6..12], &[0; 6]);
    }
}
