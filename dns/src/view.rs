//! The DNS view: every answer the cluster zone can give, precomputed as wire bytes.
//!
//! Built off the query path from one [`ClusterSnapshot`] and swapped in whole; never changed
//! after. Each name that exists is a key (its lower-case wire form, zone included) mapping to
//! its RRsets. Answer records are stored with the owner written as a compression pointer to the
//! question (`C0 0C`), so a reply keeps the client's spelling of the name and a hit copies bytes
//! without building anything. Empty non-terminals (`svc.<zone>`, `<ns>.svc.<zone>`,
//! `_tcp.<svc>...`) are keys with no RRsets, so they answer NODATA rather than a false NXDOMAIN.
//!
//! Pod names (`<ip>.<ns>.pod.<zone>`) are the one family not stored: they are parsed from the
//! question and checked against a set of pod addresses (mode `verified`) or not at all (mode
//! `insecure`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use discovery::ClusterSnapshot;
use discovery::model::{Service, ServiceType};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::wire::{Rcode, is_subdomain, name_to_wire, rtype};

/// How pod names (`1-2-3-4.<ns>.pod.<zone>`) are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodMode {
    /// Never: every pod name is NXDOMAIN.
    Disabled,
    /// Any well-formed address in any namespace, as kube-dns did.
    Insecure,
    /// Only when a pod with that address exists in that namespace.
    #[default]
    Verified,
}

impl FromStr for PodMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disabled" => Ok(Self::Disabled),
            "insecure" => Ok(Self::Insecure),
            "verified" => Ok(Self::Verified),
            _ => Err(format!("{s:?} is not one of disabled, insecure, verified")),
        }
    }
}

impl fmt::Display for PodMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disabled => "disabled",
            Self::Insecure => "insecure",
            Self::Verified => "verified",
        })
    }
}

/// What the view is built with, besides the snapshot.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub zone: String,
    /// TTL of every cluster record, and the SOA minimum.
    pub ttl: u32,
    pub pods: PodMode,
    /// `namespace/name` of the Service whose cluster IPs `ns.dns.<zone>` answers with.
    pub dns_service: (String, String),
    /// What `ns.dns.<zone>` answers when that Service does not exist.
    pub fallback_ns_ips: Vec<IpAddr>,
    /// Serve only these namespaces; `None` serves all.
    pub namespaces: Option<BTreeSet<String>>,
    /// Name an endpoint without a hostname after its pod (`targetRef`) instead of its address.
    pub endpoint_pod_names: bool,
}

impl ViewConfig {
    fn serves(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|n| n.contains(namespace))
    }
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            zone: "cluster.local".into(),
            ttl: 5,
            pods: PodMode::Verified,
            dns_service: ("kube-system".into(), "kube-dns".into()),
            fallback_ns_ips: Vec::new(),
            namespaces: None,
            endpoint_pod_names: false,
        }
    }
}

/// TTL of `dns-version.<zone>` (from the specification).
const VERSION_TTL: u32 = 28800;
/// How many CNAME hops an ExternalName chain is followed inside the zone.
const MAX_CHASE: usize = 8;

/// One RRset (or a CNAME chain) ready to copy into a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rrset {
    pub qtype: u16,
    /// NOERROR, or NXDOMAIN at the end of a CNAME chain into a name that does not exist.
    pub rcode: Rcode,
    /// True when the reply needs the zone SOA in AUTHORITY (a chain that ends in a negative).
    pub negative: bool,
    pub answer: Box<[u8]>,
    pub ancount: u16,
    /// Glue: the addresses of SRV and NS targets.
    pub additional: Box<[u8]>,
    pub arcount: u16,
    /// Where a CNAME chain leaves the zone (lower-case wire): the rest is the forwarder's to
    /// resolve, when there is one.
    pub external: Option<Box<[u8]>>,
}

/// A name that exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The zone the name is in (index into [`DnsView::zones`]).
    pub zone: u8,
    /// Sorted by type.
    pub rrsets: Box<[Rrset]>,
    /// The answer for every type without its own RRset: the CNAME of an ExternalName service.
    pub fallback: Option<Box<Rrset>>,
}

impl Node {
    pub fn get(&self, qtype: u16) -> Option<&Rrset> {
        self.rrsets.iter().find(|r| r.qtype == qtype)
    }
}

/// A zone the view is authoritative for.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lower-case wire form of the apex.
    pub apex: Box<[u8]>,
    /// The SOA record after its owner name: type, class, TTL, rdlength, rdata.
    pub soa_tail: Box<[u8]>,
}

/// Zone indexes in [`DnsView::zones`].
pub const CLUSTER_ZONE: usize = 0;
pub const V4_REVERSE_ZONE: usize = 1;
pub const V6_REVERSE_ZONE: usize = 2;

/// The immutable answer table.
#[derive(Debug)]
pub struct DnsView {
    pub names: FxHashMap<Box<[u8]>, Node>,
    /// Cluster zone first, then `in-addr.arpa`, then `ip6.arpa`.
    pub zones: [Zone; 3],
    /// Lower-case wire form of `pod.<zone>`.
    pub pod_apex: Box<[u8]>,
    pub pods: PodMode,
    /// Pod addresses and the namespaces (lower-case labels) that have a pod with it.
    pub pod_ips: FxHashMap<IpAddr, Vec<Box<[u8]>>>,
    pub ttl: u32,
    /// False until negative answers may be given: the source has listed everything, or the
    /// start-up wait is over. Until then they are SERVFAIL.
    pub synced: bool,
    /// True once the source has listed everything (what readiness reports).
    pub listed: bool,
    pub generation: u64,
}

/// Errors in the view configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("cluster domain {0:?}: {1}")]
    Zone(String, crate::wire::NameError),
}

// ---------- building ----------

fn push_rr(buf: &mut Vec<u8>, owner: Option<&[u8]>, rtype: u16, ttl: u32, rdata: &[u8]) {
    match owner {
        None => buf.extend_from_slice(&[0xC0, 0x0C]),
        Some(name) => buf.extend_from_slice(name),
    }
    buf.extend_from_slice(&rtype.to_be_bytes());
    buf.extend_from_slice(&1u16.to_be_bytes());
    buf.extend_from_slice(&ttl.to_be_bytes());
    buf.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    buf.extend_from_slice(rdata);
}

fn ip_rdata(ip: &IpAddr) -> (u16, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (rtype::A, v4.octets().to_vec()),
        IpAddr::V6(v6) => (rtype::AAAA, v6.octets().to_vec()),
    }
}

/// The label of an endpoint without a hostname: its address with `.`/`:` as `-`.
pub fn dashed(ip: &IpAddr) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(40);
    let _ = write!(s, "{ip}");
    // Same length: '.' and ':' become '-' in place.
    s.chars()
        .map(|c| if c == '.' || c == ':' { '-' } else { c })
        .collect()
}

/// Reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`) in wire form.
pub fn reverse_wire(ip: &IpAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(74);
    match ip {
        IpAddr::V4(v4) => {
            for &o in v4.octets().iter().rev() {
                // Decimal digits without a temporary string: this runs for every address.
                let digits: &[u8] = &[o / 100 + b'0', o / 10 % 10 + b'0', o % 10 + b'0'];
                let skip = if o >= 100 {
                    0
                } else if o >= 10 {
                    1
                } else {
                    2
                };
                out.push((3 - skip) as u8);
                out.extend_from_slice(&digits[skip..]);
            }
            out.extend_from_slice(b"\x07in-addr\x04arpa\x00");
        }
        IpAddr::V6(v6) => {
            for o in v6.octets().iter().rev() {
                for nibble in [o & 0xF, o >> 4] {
                    out.push(1);
                    out.push(b"0123456789abcdef"[nibble as usize]);
                }
            }
            out.extend_from_slice(b"\x03ip6\x04arpa\x00");
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Srv {
    port: u16,
    target: Vec<u8>,
}

/// Records of one name while the view is being built.
#[derive(Debug, Default)]
struct Draft {
    ips: BTreeSet<IpAddr>,
    srv: BTreeSet<Srv>,
    ptr: BTreeSet<Vec<u8>>,
    cname: Option<Vec<u8>>,
    apex: bool,
    txt: Option<&'static str>,
}

struct Builder<'c> {
    cfg: &'c ViewConfig,
    zone: Vec<u8>,
    pod_apex: Vec<u8>,
    names: FxHashMap<Vec<u8>, Draft>,
}

impl Builder<'_> {
    /// The draft of a name (lower-case wire form), created empty if new: the name exists.
    fn name(&mut self, wire: Vec<u8>) -> &mut Draft {
        self.names.entry(wire).or_default()
    }

    /// `labels` + the zone, in lower-case wire form; `None` when a label is empty or too long,
    /// or the name too long. Written directly: this runs for every name of the cluster.
    fn cluster_name(&self, labels: &[&str]) -> Option<Vec<u8>> {
        let len = labels.iter().map(|l| l.len() + 1).sum::<usize>() + self.zone.len();
        if len > crate::wire::MAX_NAME_LEN {
            return None;
        }
        let mut w = Vec::with_capacity(len);
        for l in labels {
            if l.is_empty() || l.len() > 63 {
                return None;
            }
            w.push(l.len() as u8);
            w.extend(l.bytes().map(|b| b.to_ascii_lowercase()));
        }
        w.extend_from_slice(&self.zone);
        Some(w)
    }

    fn add_service(&mut self, snap: &ClusterSnapshot, svc: &Service) {
        let Some(svc_name) = self.cluster_name(&[&svc.name, &svc.namespace, "svc"]) else {
            return;
        };
        if svc.type_ == ServiceType::ExternalName {
            let Some(target) = &svc.external_name else {
                return;
            };
            if target.parse::<IpAddr>().is_ok() {
                // The specification: an IP address is not a name; the service has no records.
                return;
            }
            match name_to_wire(target) {
                Ok(t) => self.name(svc_name).cname = Some(t),
                Err(e) => {
                    tracing::warn!(service = %svc.key(), error = %e, "ExternalName is not a valid DNS name; not served")
                }
            }
            return;
        }

        // Ready endpoints of every slice, by hostname label, with their slice's ports.
        struct Ep {
            /// `<host>.<svc>.<ns>.svc.<zone>`, when it makes a valid name.
            name: Option<Vec<u8>>,
            ip: IpAddr,
            ports: std::rc::Rc<[(String, discovery::model::Protocol, u16)]>,
        }
        let mut eps = Vec::new();
        for slice in snap.slices_of(svc) {
            let ports: std::rc::Rc<[_]> = slice
                .ports
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.protocol, p.port?)))
                .collect();
            for ep in &slice.endpoints {
                // The EndpointSlice controller folds publishNotReadyAddresses into `ready`;
                // checking it here too makes hand-written manifests behave the same.
                if !(ep.is_ready() || svc.publish_not_ready_addresses) {
                    continue;
                }
                // --endpoint-pod-names: a pod's name is a label when it is a DNS label.
                let pod_name = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| self.cfg.endpoint_pod_names && r.kind == "Pod")
                    .map(|r| r.name.as_str())
                    .filter(|n| discovery::model::is_dns_label(n));
                for ip in &ep.addresses {
                    let host = match (&ep.hostname, pod_name) {
                        (Some(h), _) => h.clone(),
                        (None, Some(p)) => p.to_string(),
                        (None, None) => dashed(ip),
                    };
                    let name = self.cluster_name(&[&host, &svc.name, &svc.namespace, "svc"]);
                    eps.push(Ep {
                        name,
                        ip: *ip,
                        ports: std::rc::Rc::clone(&ports),
                    });
                }
            }
        }

        if svc.headless {
            if eps.is_empty() {
                return; // NXDOMAIN, as the specification says
            }
            let d = self.name(svc_name.clone());
            d.ips.extend(eps.iter().map(|ep| ep.ip));
        } else {
            let d = self.name(svc_name.clone());
            d.ips.extend(svc.cluster_ips.iter().copied());
            for ip in &svc.cluster_ips {
                let rev = reverse_wire(ip);
                self.name(rev).ptr.insert(svc_name.clone());
            }
        }

        // Endpoint names and their PTRs (for ClusterIP services too).
        for ep in &eps {
            let Some(host_name) = &ep.name else { continue };
            self.name(host_name.clone()).ips.insert(ep.ip);
            self.name(reverse_wire(&ep.ip))
                .ptr
                .insert(host_name.clone());
        }

        // SRV: one per named port; headless targets are the endpoints, at their ports.
        let mut by_port: BTreeMap<(String, &'static str), BTreeSet<Srv>> = BTreeMap::new();
        if svc.headless {
            for ep in &eps {
                let Some(target) = &ep.name else { continue };
                for (name, proto, port) in ep.ports.iter() {
                    if !name.is_empty() {
                        by_port
                            .entry((name.clone(), proto.srv_label()))
                            .or_default()
                            .insert(Srv {
                                port: *port,
                                target: target.clone(),
                            });
                    }
                }
            }
        } else {
            for p in &svc.ports {
                if !p.name.is_empty() {
                    by_port
                        .entry((p.name.clone(), p.protocol.srv_label()))
                        .or_default()
                        .insert(Srv {
                            port: p.port,
                            target: svc_name.clone(),
                        });
                }
            }
        }
        for ((port, proto), recs) in by_port {
            let (p, pr) = (format!("_{port}"), format!("_{proto}"));
            if let Some(n) = self.cluster_name(&[&p, &pr, &svc.name, &svc.namespace, "svc"]) {
                self.name(n).srv.extend(recs.iter().cloned());
            }
            self.name(svc_name.clone()).srv.extend(recs);
        }
    }

    fn build(mut self, snap: &ClusterSnapshot) -> DnsView {
        let cfg = self.cfg;
        let zone = self.zone.clone();
        let apex = self.name(zone.clone());
        apex.apex = true;
        let ns_dns = self.cluster_name(&["ns", "dns"]).unwrap_or_default();
        let dns_ips: Vec<IpAddr> = match snap.service(&cfg.dns_service.0, &cfg.dns_service.1) {
            Some(s) if !s.cluster_ips.is_empty() => s.cluster_ips.clone(),
            _ => cfg.fallback_ns_ips.clone(),
        };
        self.name(ns_dns.clone()).ips.extend(dns_ips);
        if let Some(v) = self.cluster_name(&["dns-version"]) {
            self.name(v).txt = Some("1.1.0");
        }
        for extra in [["svc"], ["pod"]] {
            if let Some(n) = self.cluster_name(&extra) {
                self.name(n);
            }
        }
        for ns in snap.objects.namespaces.iter().filter(|n| cfg.serves(n)) {
            if let Some(n) = self.cluster_name(&[ns, "svc"]) {
                self.name(n);
            }
            if cfg.pods != PodMode::Disabled
                && let Some(n) = self.cluster_name(&[ns, "pod"])
            {
                self.name(n);
            }
        }
        if cfg.pods == PodMode::Verified {
            // A pod name implies its namespace name, even without a Namespace object.
            for pod in snap
                .objects
                .pods
                .values()
                .filter(|p| !p.ips.is_empty() && cfg.serves(&p.namespace))
            {
                if let Some(n) = self.cluster_name(&[&pod.namespace, "pod"]) {
                    self.name(n);
                }
            }
        }
        for svc in snap
            .objects
            .services
            .values()
            .filter(|s| cfg.serves(&s.namespace))
        {
            self.add_service(snap, svc);
        }
        let rev4 = b"\x07in-addr\x04arpa\x00".to_vec();
        let rev6 = b"\x03ip6\x04arpa\x00".to_vec();
        self.name(rev4.clone()).apex = true;
        self.name(rev6.clone()).apex = true;

        // Empty non-terminals: every ancestor of a name, up to its zone's apex, exists.
        // The walk up stops at the first ancestor that exists already: its own ancestors are
        // covered when it is walked (or were, when it was added here).
        let mut ents: FxHashSet<Vec<u8>> = FxHashSet::default();
        for name in self.names.keys() {
            let apex_len = [&zone, &rev4, &rev6]
                .iter()
                .find(|a| is_subdomain(name, a))
                .map(|a| a.len())
                .unwrap_or(name.len());
            let mut pos = 0;
            while name.len() - pos > apex_len {
                pos += 1 + name[pos] as usize;
                let parent = &name[pos..];
                if parent.len() <= apex_len
                    || self.names.contains_key(parent)
                    || !ents.insert(parent.to_vec())
                {
                    break;
                }
            }
        }
        for e in ents {
            self.name(e);
        }

        // The SOA after its owner; the owner is written per reply (a pointer into the question).
        let soa = {
            let mut rdata = Vec::new();
            rdata.extend_from_slice(&ns_dns);
            rdata.extend_from_slice(&self.cluster_name(&["hostmaster"]).unwrap_or_default());
            rdata.extend_from_slice(&snap.serial.to_be_bytes());
            for v in [7200u32, 1800, 86400, cfg.ttl] {
                rdata.extend_from_slice(&v.to_be_bytes());
            }
            // RFC 2308: negative answers are cached for min(SOA TTL, MINIMUM); both are the TTL.
            let mut tail = Vec::new();
            tail.extend_from_slice(&rtype::SOA.to_be_bytes());
            tail.extend_from_slice(&1u16.to_be_bytes());
            tail.extend_from_slice(&cfg.ttl.to_be_bytes());
            tail.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            tail.extend_from_slice(&rdata);
            tail
        };
        let zones = [
            Zone {
                apex: zone.clone().into(),
                soa_tail: soa.clone().into(),
            },
            Zone {
                apex: rev4.into(),
                soa_tail: soa.clone().into(),
            },
            Zone {
                apex: rev6.into(),
                soa_tail: soa.clone().into(),
            },
        ];

        // Serialize every draft.
        let mut names = FxHashMap::default();
        names.reserve(self.names.len());
        for (name, d) in &self.names {
            let mut node = self.node(name, d, &ns_dns, &soa);
            node.zone = [&zones[V4_REVERSE_ZONE].apex, &zones[V6_REVERSE_ZONE].apex]
                .iter()
                .position(|apex| is_subdomain(name, apex))
                .map_or(CLUSTER_ZONE, |i| i + 1) as u8;
            names.insert(name.clone().into_boxed_slice(), node);
        }

        let mut pod_ips: FxHashMap<IpAddr, Vec<Box<[u8]>>> = FxHashMap::default();
        if cfg.pods == PodMode::Verified {
            let mut seen = FxHashSet::default();
            for pod in snap
                .objects
                .pods
                .values()
                .filter(|p| cfg.serves(&p.namespace))
            {
                for ip in &pod.ips {
                    if seen.insert((*ip, pod.namespace.as_str())) {
                        let label = pod
                            .namespace
                            .to_ascii_lowercase()
                            .into_bytes()
                            .into_boxed_slice();
                        pod_ips.entry(*ip).or_default().push(label);
                    }
                }
            }
        }

        DnsView {
            names,
            zones,
            pod_apex: self.pod_apex.clone().into(),
            pods: cfg.pods,
            pod_ips,
            ttl: cfg.ttl,
            synced: snap.synced,
            listed: snap.synced,
            generation: snap.generation,
        }
    }

    /// Address records of `name` (owner written out) for glue and chased CNAMEs.
    fn addr_records(&self, name: &[u8], want: Option<u16>, buf: &mut Vec<u8>) -> u16 {
        let mut n = 0;
        if let Some(d) = self.names.get(name) {
            for ip in &d.ips {
                let (t, rd) = ip_rdata(ip);
                if want.is_none_or(|w| w == t) {
                    push_rr(buf, Some(name), t, self.cfg.ttl, &rd);
                    n += 1;
                }
            }
        }
        n
    }

    fn node(&self, name: &[u8], d: &Draft, ns_dns: &[u8], soa_tail: &[u8]) -> Node {
        let ttl = self.cfg.ttl;
        let mut rrsets = Vec::new();
        let mut simple =
            |qtype: u16, answer: Vec<u8>, ancount: u16, additional: Vec<u8>, arcount: u16| {
                if ancount > 0 {
                    rrsets.push(Rrset {
                        qtype,
                        rcode: Rcode::NoError,
                        negative: false,
                        answer: answer.into(),
                        ancount,
                        additional: additional.into(),
                        arcount,
                        external: None,
                    });
                }
            };

        for t in [rtype::A, rtype::AAAA] {
            let mut buf = Vec::new();
            let mut n = 0;
            for ip in &d.ips {
                let (it, rd) = ip_rdata(ip);
                if it == t {
                    push_rr(&mut buf, None, t, ttl, &rd);
                    n += 1;
                }
            }
            simple(t, buf, n, Vec::new(), 0);
        }
        if d.apex {
            let mut ans = Vec::new();
            push_rr(&mut ans, None, rtype::NS, ttl, ns_dns);
            let mut add = Vec::new();
            let glue = if name == self.zone.as_slice() {
                self.addr_records(ns_dns, None, &mut add)
            } else {
                0
            };
            simple(rtype::NS, ans, 1, add, glue);
            // The SOA: owner is the question, the rest as in AUTHORITY.
            let mut soa = vec![0xC0, 0x0C];
            soa.extend_from_slice(soa_tail);
            simple(rtype::SOA, soa, 1, Vec::new(), 0);
        }
        if let Some(txt) = d.txt {
            let mut rd = vec![txt.len() as u8];
            rd.extend_from_slice(txt.as_bytes());
            let mut buf = Vec::new();
            push_rr(&mut buf, None, rtype::TXT, VERSION_TTL, &rd);
            simple(rtype::TXT, buf, 1, Vec::new(), 0);
        }
        if !d.ptr.is_empty() {
            let mut buf = Vec::new();
            for target in &d.ptr {
                push_rr(&mut buf, None, rtype::PTR, ttl, target);
            }
            simple(rtype::PTR, buf, d.ptr.len() as u16, Vec::new(), 0);
        }
        if !d.srv.is_empty() {
            let weight = (100 / d.srv.len()).max(1) as u16;
            let mut buf = Vec::new();
            let mut add = Vec::new();
            let mut glue = 0;
            let mut targets = BTreeSet::new();
            for s in &d.srv {
                let mut rd = Vec::with_capacity(6 + s.target.len());
                rd.extend_from_slice(&0u16.to_be_bytes());
                rd.extend_from_slice(&weight.to_be_bytes());
                rd.extend_from_slice(&s.port.to_be_bytes());
                rd.extend_from_slice(&s.target);
                push_rr(&mut buf, None, rtype::SRV, ttl, &rd);
                if targets.insert(s.target.as_slice()) {
                    glue += self.addr_records(&s.target, None, &mut add);
                }
            }
            simple(rtype::SRV, buf, d.srv.len() as u16, add, glue);
        }
        rrsets.sort_by_key(|r| r.qtype);

        let mut node = Node {
            zone: CLUSTER_ZONE as u8,
            rrsets: Vec::new().into(),
            fallback: None,
        };
        if let Some(target) = &d.cname {
            // ExternalName: a CNAME for every type; A and AAAA chase the target in the zone.
            let mut plain = Vec::new();
            push_rr(&mut plain, None, rtype::CNAME, ttl, target);
            node.fallback = Some(Box::new(Rrset {
                qtype: rtype::CNAME,
                rcode: Rcode::NoError,
                negative: false,
                answer: plain.into(),
                ancount: 1,
                additional: Box::new([]),
                arcount: 0,
                external: None,
            }));
            for t in [rtype::A, rtype::AAAA] {
                rrsets.push(self.chase(target, t));
            }
        }
        node.rrsets = rrsets.into();
        node
    }

    /// The CNAME chain from an ExternalName service, for `qtype`, as far as the zone knows it.
    fn chase(&self, first: &[u8], qtype: u16) -> Rrset {
        let ttl = self.cfg.ttl;
        let mut buf = Vec::new();
        push_rr(&mut buf, None, rtype::CNAME, ttl, first);
        let mut count = 1u16;
        let mut target = first.to_vec();
        let mut rcode = Rcode::NoError;
        let mut negative = false;
        let mut external = None;
        for _ in 0..MAX_CHASE {
            if !is_subdomain(&target, &self.zone) {
                // Outside the zone: the forwarder (or the client's resolver) goes on.
                external = Some(target.clone().into_boxed_slice());
                break;
            }
            if is_subdomain(&target, &self.pod_apex) {
                break; // a pod name: the client asks again
            }
            match self.names.get(&target) {
                None => {
                    rcode = Rcode::NxDomain;
                    negative = true;
                    break;
                }
                Some(d) => {
                    if let Some(next) = &d.cname {
                        push_rr(&mut buf, Some(&target), rtype::CNAME, ttl, next);
                        count += 1;
                        target = next.clone();
                        continue;
                    }
                    let n = self.addr_records(&target, Some(qtype), &mut buf);
                    count += n;
                    negative = n == 0;
                    break;
                }
            }
        }
        Rrset {
            qtype,
            rcode,
            negative,
            answer: buf.into(),
            ancount: count,
            additional: Box::new([]),
            arcount: 0,
            external,
        }
    }
}

impl DnsView {
    /// Builds the view of `snap`.
    pub fn build(snap: &ClusterSnapshot, cfg: &ViewConfig) -> Result<Self, ViewError> {
        let zone = name_to_wire(&cfg.zone).map_err(|e| ViewError::Zone(cfg.zone.clone(), e))?;
        let mut pod_apex = b"\x03pod".to_vec();
        pod_apex.extend_from_slice(&zone);
        let b = Builder {
            cfg,
            zone,
            pod_apex,
            names: FxHashMap::default(),
        };
        Ok(b.build(snap))
    }

    /// An empty, unsynced view: cluster names answer SERVFAIL until the first snapshot.
    pub fn empty(cfg: &ViewConfig) -> Result<Self, ViewError> {
        Self::build(&ClusterSnapshot::default(), cfg)
    }
}

/// Parses the first label of a pod name: `1-2-3-4` or `fd00--1` style.
pub fn parse_pod_label(label: &[u8]) -> Option<IpAddr> {
    if label.len() > 45 {
        return None;
    }
    let mut buf = [0u8; 45];
    let dashes = label.iter().filter(|&&b| b == b'-').count();
    let v4 = dashes == 3 && !label.windows(2).any(|w| w == b"--");
    for (d, s) in buf.iter_mut().zip(label) {
        *d = match s {
            b'-' if v4 => b'.',
            b'-' => b':',
            other => *other,
        };
    }
    let s = std::str::from_utf8(&buf[..label.len()]).ok()?;
    if v4 {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_and_dashed_labels() {
        let w = |s: &str| reverse_wire(&s.parse().expect("ip"));
        assert_eq!(
            w("10.0.96.1"),
            b"\x011\x0296\x010\x0210\x07in-addr\x04arpa\x00"
        );
        assert_eq!(
            w("255.100.9.0"),
            b"\x010\x019\x03100\x03255\x07in-addr\x04arpa\x00"
        );
        assert_eq!(
            crate::wire::wire_to_string(&w("fd00::1:2")),
            "2.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."
        );
        assert_eq!(dashed(&"10.1.2.3".parse().expect("ip")), "10-1-2-3");
        assert_eq!(dashed(&"fd00::1".parse().expect("ip")), "fd00--1");
    }
}
