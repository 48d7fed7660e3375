//! What the server measures, rendered in the Prometheus text format.
//!
//! The families and labels follow CoreDNS's, with `clusterdns_` in place of `coredns_`, so
//! dashboards and alerts translate name for name:
//!
//! | family | labels |
//! |---|---|
//! | `clusterdns_dns_requests_total` | server, zone, view, proto, family, type |
//! | `clusterdns_dns_responses_total` | server, zone, view, rcode, plugin |
//! | `clusterdns_dns_request_duration_seconds` | server, zone, view, type |
//! | `clusterdns_dns_request_size_bytes` / `_response_size_bytes` | server, zone, view, proto |
//! | `clusterdns_kubernetes_dns_programming_duration_seconds` | (none; see below) |
//! | `clusterdns_build_info` | version, revision, rustversion |
//! | `clusterdns_panics_total` | |
//!
//! Recording is lock-free: each UDP worker owns a [`QueryStats`] (so its counters are never
//! contended), TCP shares one per listen address, and a scrape sums them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wire::{Rcode, rtype};

/// A histogram with fixed upper bounds, like a Prometheus histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last counts everything above the largest bound.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations in millionths of the unit.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bounds for latencies from a millisecond to a minute: CoreDNS's
/// `dns_programming_duration_seconds` buckets (the Kubernetes SLI ones).
pub const PROGRAMMING_BOUNDS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384, 32.768, 65.536,
];

/// CoreDNS's request duration buckets: 0.25 ms doubling 16 times.
pub const DURATION_BOUNDS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];

/// CoreDNS's message size buckets, in bytes.
pub const SIZE_BOUNDS: &[f64] = &[
    0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16e3, 32e3, 48e3, 64e3,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records `v` (seconds, or bytes).
    pub fn observe_value(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe(&self, d: Duration) {
        self.observe_value(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1): an over-estimate, as
    /// Prometheus' `histogram_quantile` would interpolate inside it. `None` when empty;
    /// infinity past the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(self.bounds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.sum_micros.load(Ordering::Relaxed),
            self.count(),
        )
    }
}

/// Zone labels: the view's zones, then "." for everything else.
pub const ZONE_LABELS: usize = 4;
/// Query types with a label of their own; everything else is `other`.
const TYPES: &[(u16, &str)] = &[
    (rtype::A, "A"),
    (rtype::AAAA, "AAAA"),
    (rtype::NS, "NS"),
    (rtype::CNAME, "CNAME"),
    (rtype::SOA, "SOA"),
    (rtype::PTR, "PTR"),
    (15, "MX"),
    (rtype::TXT, "TXT"),
    (rtype::SRV, "SRV"),
    (35, "NAPTR"),
    (43, "DS"),
    (48, "DNSKEY"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (rtype::AXFR, "AXFR"),
    (rtype::IXFR, "IXFR"),
    (rtype::ANY, "ANY"),
];
const NTYPES: usize = TYPES.len() + 1;
const RCODES: &[(Rcode, &str)] = &[
    (Rcode::NoError, "NOERROR"),
    (Rcode::FormErr, "FORMERR"),
    (Rcode::ServFail, "SERVFAIL"),
    (Rcode::NxDomain, "NXDOMAIN"),
    (Rcode::NotImp, "NOTIMP"),
    (Rcode::Refused, "REFUSED"),
    (Rcode::BadVers, "BADVERS"),
];

fn type_index(t: u16) -> usize {
    TYPES
        .iter()
        .position(|(n, _)| *n == t)
        .unwrap_or(TYPES.len())
}

fn type_label(i: usize) -> &'static str {
    TYPES.get(i).map_or("other", |t| t.1)
}

fn rcode_index(r: Rcode) -> usize {
    RCODES.iter().position(|(c, _)| *c == r).unwrap_or(0)
}

/// Counters of one set of sockets (one UDP worker, or the TCP connections of one address).
#[derive(Debug)]
pub struct QueryStats {
    /// [zone][family][type]
    requests: Box<[AtomicU64]>,
    /// [zone][rcode]
    responses: Box<[AtomicU64]>,
    /// [zone][type]
    duration: Box<[Histogram]>,
    /// [zone]
    request_size: Box<[Histogram]>,
    response_size: Box<[Histogram]>,
}

impl Default for QueryStats {
    fn default() -> Self {
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        let hists = |n: usize, b: &'static [f64]| (0..n).map(|_| Histogram::new(b)).collect();
        Self {
            requests: counters(ZONE_LABELS * 2 * NTYPES),
            responses: counters(ZONE_LABELS * RCODES.len()),
            duration: hists(ZONE_LABELS * NTYPES, DURATION_BOUNDS),
            request_size: hists(ZONE_LABELS, SIZE_BOUNDS),
            response_size: hists(ZONE_LABELS, SIZE_BOUNDS),
        }
    }
}

/// One answered query, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// Index into the view's zones; `None` for "." (outside them).
    pub zone: Option<usize>,
    pub ipv6_client: bool,
    pub qtype: u16,
    pub rcode: Rcode,
    pub request_len: usize,
    /// 0 when nothing was sent.
    pub response_len: usize,
    pub duration: Duration,
}

impl QueryStats {
    pub fn record(&self, o: &Observation) {
        let z = o.zone.unwrap_or(ZONE_LABELS - 1).min(ZONE_LABELS - 1);
        let t = type_index(o.qtype);
        self.requests[(z * 2 + usize::from(o.ipv6_client)) * NTYPES + t]
            .fetch_add(1, Ordering::Relaxed);
        self.responses[z * RCODES.len() + rcode_index(o.rcode)].fetch_add(1, Ordering::Relaxed);
        self.duration[z * NTYPES + t].observe(o.duration);
        self.request_size[z].observe_value(o.request_len as f64);
        if o.response_len > 0 {
            self.response_size[z].observe_value(o.response_len as f64);
        }
    }
}

/// A registered set of sockets.
#[derive(Debug)]
struct Source {
    /// `dns://ADDR:PORT`
    server: String,
    proto: &'static str,
    stats: Arc<QueryStats>,
}

/// Everything the server measures.
#[derive(Debug)]
pub struct Metrics {
    /// From a cluster change to the view that answers it being swapped in.
    pub programming_duration: Histogram,
    /// The forwarder (and its cache) of the running config, for the forward and cache families.
    forwarding: Mutex<Option<Arc<crate::reload::Reloader>>>,
    sources: Mutex<Vec<Source>>,
    /// Zone labels, in the view's zone order, then ".".
    zones: [String; ZONE_LABELS],
}

impl Metrics {
    /// `cluster_zone` without a trailing dot, as configured.
    pub fn new(cluster_zone: &str) -> Self {
        Self {
            programming_duration: Histogram::new(PROGRAMMING_BOUNDS),
            forwarding: Mutex::new(None),
            sources: Mutex::new(Vec::new()),
            zones: [
                format!("{cluster_zone}."),
                "in-addr.arpa.".into(),
                "ip6.arpa.".into(),
                ".".into(),
            ],
        }
    }

    /// The config reloader whose forwarder and cache the forward, cache and reload families
    /// report.
    pub fn set_forwarding(&self, r: Option<Arc<crate::reload::Reloader>>) {
        *self.forwarding.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    fn render_forwarding(&self, out: &mut String, servers: &[&str]) {
        let Some(r) = self
            .forwarding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return;
        };
        header(
            out,
            "clusterdns_reload_failed_total",
            "counter",
            "Counter of the number of failed reload attempts.",
        );
        let _ = writeln!(
            out,
            "clusterdns_reload_failed_total {}",
            r.reload_failures.load(Ordering::Relaxed)
        );
        header(
            out,
            "clusterdns_reload_total",
            "counter",
            "Counter of successful config reloads.",
        );
        let _ = writeln!(
            out,
            "clusterdns_reload_total {}",
            r.reloads.load(Ordering::Relaxed)
        );
        let Some(f) = r.forwarder.load_full() else {
            return;
        };
        let c = &f.cache;
        let (pos, neg) = c.counts();
        header(
            out,
            "clusterdns_cache_entries",
            "gauge",
            "The number of elements in the cache.",
        );
        header(
            out,
            "clusterdns_cache_hits_total",
            "counter",
            "The count of cache hits.",
        );
        header(
            out,
            "clusterdns_cache_misses_total",
            "counter",
            "The count of cache misses.",
        );
        header(
            out,
            "clusterdns_cache_served_stale_total",
            "counter",
            "The number of requests served from stale cache entries.",
        );
        // One cache serves every listen address: it is reported under each, as CoreDNS does
        // for a cache shared by a server block's addresses.
        let series: [(&str, Option<&str>, u64); 6] = [
            ("clusterdns_cache_entries", Some("success"), pos),
            ("clusterdns_cache_entries", Some("denial"), neg),
            (
                "clusterdns_cache_hits_total",
                Some("success"),
                c.hits_success.load(Ordering::Relaxed),
            ),
            (
                "clusterdns_cache_hits_total",
                Some("denial"),
                c.hits_denial.load(Ordering::Relaxed),
            ),
            (
                "clusterdns_cache_misses_total",
                None,
                c.misses.load(Ordering::Relaxed),
            ),
            (
                "clusterdns_cache_served_stale_total",
                None,
                c.served_stale.load(Ordering::Relaxed),
            ),
        ];
        for server in servers {
            for (name, kind, value) in series {
                let kind = kind.map(|k| format!("type=\"{k}\",")).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{name}{{server=\"{server}\",{kind}zones=\".\",view=\"\"}} {value}"
                );
            }
        }
        header(
            out,
            "clusterdns_forward_requests_total",
            "counter",
            "Counter of requests made per upstream.",
        );
        header(
            out,
            "clusterdns_forward_responses_total",
            "counter",
            "Counter of responses received per upstream.",
        );
        header(
            out,
            "clusterdns_forward_healthcheck_failures_total",
            "counter",
            "Counter of the number of failed healthchecks.",
        );
        header(
            out,
            "clusterdns_forward_max_concurrent_rejects_total",
            "counter",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
        );
        let _ = writeln!(
            out,
            "clusterdns_forward_max_concurrent_rejects_total {}",
            f.rejects.load(Ordering::Relaxed)
        );
        const NAMES: [&str; 17] = [
            "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
            "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14",
            "RCODE15", "OTHER",
        ];
        let mut durations = Vec::new();
        for g in f.groups() {
            for u in &g.upstreams {
                let to = &u.label;
                let _ = writeln!(
                    out,
                    "clusterdns_forward_requests_total{{to=\"{to}\"}} {}",
                    u.requests.load(Ordering::Relaxed)
                );
                for (i, n) in u.responses.iter().enumerate() {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "clusterdns_forward_responses_total{{to=\"{to}\",rcode=\"{}\"}} {n}",
                            NAMES[i]
                        );
                    }
                }
                let _ = writeln!(
                    out,
                    "clusterdns_forward_healthcheck_failures_total{{to=\"{to}\"}} {}",
                    u.healthcheck_failures.load(Ordering::Relaxed)
                );
                durations.push((to.clone(), Arc::clone(u)));
            }
        }
        header(
            out,
            "clusterdns_forward_request_duration_seconds",
            "histogram",
            "Histogram of the time each request took.",
        );
        for (to, u) in durations {
            histogram(
                out,
                "clusterdns_forward_request_duration_seconds",
                &format!("to=\"{to}\""),
                &[&u.duration],
                1e6,
            );
        }
    }

    /// Stats for one more set of sockets serving `server` over `proto`.
    pub fn register(&self, server: &str, proto: &'static str) -> Arc<QueryStats> {
        let stats = Arc::new(QueryStats::default());
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Source {
                server: format!("dns://{server}"),
                proto,
                stats: Arc::clone(&stats),
            });
        stats
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        // Sum the stats of each (server, proto).
        let mut groups: Vec<(&str, &'static str, Vec<&QueryStats>)> = Vec::new();
        for s in sources.iter() {
            match groups
                .iter_mut()
                .find(|g| g.0 == s.server && g.1 == s.proto)
            {
                Some(g) => g.2.push(&s.stats),
                None => groups.push((&s.server, s.proto, vec![&s.stats])),
            }
        }
        let sum = |stats: &[&QueryStats], f: &dyn Fn(&QueryStats) -> u64| {
            stats.iter().map(|s| f(s)).sum::<u64>()
        };
        let mut out = String::new();

        header(
            &mut out,
            "clusterdns_dns_requests_total",
            "counter",
            "Counter of DNS requests made per zone, protocol and family.",
        );
        for (server, proto, st) in &groups {
            for (z, zone) in self.zones.iter().enumerate() {
                for fam in 0..2 {
                    for t in 0..NTYPES {
                        let n = sum(st, &|s| {
                            s.requests[(z * 2 + fam) * NTYPES + t].load(Ordering::Relaxed)
                        });
                        if n > 0 {
                            let _ = writeln!(
                                out,
                                "clusterdns_dns_requests_total{{server=\"{server}\",zone=\"{zone}\",view=\"\",proto=\"{proto}\",family=\"{}\",type=\"{}\"}} {n}",
                                fam + 1,
                                type_label(t)
                            );
                        }
                    }
                }
            }
        }

        // Responses are summed over protocols, as CoreDNS labels them.
        header(
            &mut out,
            "clusterdns_dns_responses_total",
            "counter",
            "Counter of response status codes.",
        );
        let mut servers: Vec<&str> = groups.iter().map(|g| g.0).collect();
        servers.dedup();
        for server in &servers {
            let st: Vec<&QueryStats> = groups
                .iter()
                .filter(|g| g.0 == *server)
                .flat_map(|g| g.2.iter().copied())
                .collect();
            for (z, zone) in self.zones.iter().enumerate() {
                for (r, (_, rname)) in RCODES.iter().enumerate() {
                    let n = sum(&st, &|s| {
                        s.responses[z * RCODES.len() + r].load(Ordering::Relaxed)
                    });
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "clusterdns_dns_responses_total{{server=\"{server}\",zone=\"{zone}\",view=\"\",rcode=\"{rname}\",plugin=\"\"}} {n}"
                        );
                    }
                }
            }
        }

        header(
            &mut out,
            "clusterdns_dns_request_duration_seconds",
            "histogram",
            "Histogram of the time (in seconds) each request took per zone.",
        );
        for server in &servers {
            let st: Vec<&QueryStats> = groups
                .iter()
                .filter(|g| g.0 == *server)
                .flat_map(|g| g.2.iter().copied())
                .collect();
            for (z, zone) in self.zones.iter().enumerate() {
                for t in 0..NTYPES {
                    let hs: Vec<&Histogram> =
                        st.iter().map(|s| &s.duration[z * NTYPES + t]).collect();
                    let labels = format!(
                        "server=\"{server}\",zone=\"{zone}\",view=\"\",type=\"{}\"",
                        type_label(t)
                    );
                    histogram(
                        &mut out,
                        "clusterdns_dns_request_duration_seconds",
                        &labels,
                        &hs,
                        1e6,
                    );
                }
            }
        }

        for (name, help, pick) in [
            (
                "clusterdns_dns_request_size_bytes",
                "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
                true,
            ),
            (
                "clusterdns_dns_response_size_bytes",
                "Size of the returned response in bytes.",
                false,
            ),
        ] {
            header(&mut out, name, "histogram", help);
            for (server, proto, st) in &groups {
                for (z, zone) in self.zones.iter().enumerate() {
                    let hs: Vec<&Histogram> = st
                        .iter()
                        .map(|s| {
                            if pick {
                                &s.request_size[z]
                            } else {
                                &s.response_size[z]
                            }
                        })
                        .collect();
                    let labels =
                        format!("server=\"{server}\",zone=\"{zone}\",view=\"\",proto=\"{proto}\"");
                    histogram(&mut out, name, &labels, &hs, 1e6);
                }
            }
        }

        header(
            &mut out,
            "clusterdns_kubernetes_dns_programming_duration_seconds",
            "histogram",
            "Histogram of the time (in seconds) it took to program a dns instance.",
        );
        histogram(
            &mut out,
            "clusterdns_kubernetes_dns_programming_duration_seconds",
            "",
            &[&self.programming_duration],
            1e6,
        );

        self.render_forwarding(&mut out, &servers);

        header(
            &mut out,
            "clusterdns_build_info",
            "gauge",
            "A metric with a constant '1' value labeled by version, revision, and rustversion from which clusterdns was built.",
        );
        let _ = writeln!(
            out,
            "clusterdns_build_info{{version=\"{}\",revision=\"{}\",rustversion=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            option_env!("CLUSTERDNS_REVISION").unwrap_or("unknown"),
            option_env!("CLUSTERDNS_RUSTC").unwrap_or("unknown"),
        );

        header(
            &mut out,
            "clusterdns_panics_total",
            "counter",
            "A metrics that counts the number of panics.",
        );
        let _ = writeln!(
            out,
            "clusterdns_panics_total {}",
            PANICS.load(Ordering::Relaxed)
        );
        out
    }
}

/// Panics anywhere in the process (counted by the hook [`count_panics`] installs).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Installs a panic hook that counts panics, then runs the previous hook.
pub fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes the summed histograms `hs` (skipped when empty). `scale` turns the stored sum back
/// into the unit.
fn histogram(out: &mut String, name: &str, labels: &str, hs: &[&Histogram], scale: f64) {
    let Some(first) = hs.first() else { return };
    let mut buckets = vec![0u64; first.bounds.len() + 1];
    let (mut sum, mut count) = (0u64, 0u64);
    for h in hs {
        let (b, s, c) = h.snapshot();
        for (acc, v) in buckets.iter_mut().zip(b) {
            *acc += v;
        }
        sum += s;
        count += c;
    }
    if count == 0 {
        return;
    }
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, b) in first.bounds.iter().enumerate() {
        cumulative += buckets[i];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", sum as f64 / scale);
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        let h = Histogram::new(PROGRAMMING_BOUNDS);
        assert_eq!(h.quantile_bound(0.5), None);
        for ms in [1, 3, 3, 100, 70_000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile_bound(0.2), Some(0.001));
        assert_eq!(h.quantile_bound(0.6), Some(0.004));
        assert_eq!(h.quantile_bound(0.8), Some(0.128));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(h.sum(), Duration::from_millis(70_107));
    }

    #[test]
    fn render_sums_workers_and_labels_like_coredns() {
        let m = Metrics::new("cluster.local");
        let (a, b) = (
            m.register("127.0.0.1:53", "udp"),
            m.register("127.0.0.1:53", "udp"),
        );
        let o = Observation {
            zone: Some(0),
            ipv6_client: false,
            qtype: rtype::A,
            rcode: Rcode::NoError,
            request_len: 40,
            response_len: 80,
            duration: Duration::from_micros(10),
        };
        a.record(&o);
        b.record(&o);
        b.record(&Observation {
            zone: None,
            qtype: 99,
            rcode: Rcode::Refused,
            ..o
        });
        let text = m.render();
        assert!(text.contains("clusterdns_dns_requests_total{server=\"dns://127.0.0.1:53\",zone=\"cluster.local.\",view=\"\",proto=\"udp\",family=\"1\",type=\"A\"} 2\n"), "{text}");
        assert!(text.contains("clusterdns_dns_requests_total{server=\"dns://127.0.0.1:53\",zone=\".\",view=\"\",proto=\"udp\",family=\"1\",type=\"other\"} 1\n"), "{text}");
        assert!(text.contains("clusterdns_dns_responses_total{server=\"dns://127.0.0.1:53\",zone=\".\",view=\"\",rcode=\"REFUSED\",plugin=\"\"} 1\n"), "{text}");
        assert!(text.contains("clusterdns_dns_request_duration_seconds_bucket{server=\"dns://127.0.0.1:53\",zone=\"cluster.local.\",view=\"\",type=\"A\",le=\"0.00025\"} 2\n"), "{text}");
        assert!(text.contains("clusterdns_dns_response_size_bytes_count{server=\"dns://127.0.0.1:53\",zone=\"cluster.local.\",view=\"\",proto=\"udp\"} 2\n"), "{text}");
        assert!(text.contains("clusterdns_panics_total 0\n"));
    }
}
