//! The DNS view: every answer the cluster zone can give, precomputed as wire bytes.
//!
//! Built off the query path from a [`ClusterSnapshot`] and swapped in whole; never changed
//! after. Each name that exists is a key (its lower-case wire form, zone included) mapping to
//! its RRsets. Answer records are stored with the owner written as a compression pointer to the
//! question (`C0 0C`), so a reply keeps the client's spelling of the name and a hit copies bytes
//! without building anything. Empty non-terminals (`svc.<zone>`, `<ns>.svc.<zone>`,
//! `_tcp.<svc>...`) are keys with no RRsets, so they answer NODATA rather than a false NXDOMAIN.
//!
//! Pod names (`<ip>.<ns>.pod.<zone>`) are the one family not stored: they are parsed from the
//! question and checked against a set of pod addresses (mode `verified`) or not at all (mode
//! `insecure`).
//!
//! ## Layout
//!
//! ```text
//!  DnsView ── shards: [Arc<Shard>; 1024] ──> Shard { data: one byte arena, slots: offsets }
//!                                              record = len | key | zone flags children |
//!                                                       rrsets (header + answer + glue)
//! ```
//!
//! A name's hash picks its shard; the shard's slots hold the offset of the name's record in the
//! shard's arena. A node is one contiguous record, so the whole view is about two allocations
//! per shard, and a lookup is one hash, two indexings and a key compare.
//!
//! ## Updates
//!
//! [`DnsView::update`] derives the next view from this one and the snapshot pair: it finds the
//! Services whose object or EndpointSlices changed, works out the names each one contributed
//! before and contributes now, and rewrites only the records that changed. Shards with no
//! changed record are shared with the previous view (`Arc`), so one changed Service costs a few
//! shards' worth of copying, not a rebuild. Names shared between Services (reverse names,
//! `<ns>.svc.<zone>`) are read back from their records, changed and rewritten; every name keeps
//! the count of its children, so an empty non-terminal disappears with its last child. A full
//! build is the same update from an empty view. `tests/tests/view_diff.rs` checks that updates
//! and full builds give the same records.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::Hasher as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use discovery::ClusterSnapshot;
use discovery::model::{ObjectKey, Service, ServiceType};
use hashbrown::HashTable;
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

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

/// Zone indexes in [`DnsView::zones`].
pub const CLUSTER_ZONE: usize = 0;
pub const V4_REVERSE_ZONE: usize = 1;
pub const V6_REVERSE_ZONE: usize = 2;

const REV4_APEX: &[u8] = b"\x07in-addr\x04arpa\x00";
const REV6_APEX: &[u8] = b"\x03ip6\x04arpa\x00";

// ---------- the record layout ----------
//
// record:  len u32 | key_len u8 | key | zone u8 | flags u8 | children u32 | nsets u8 | sets
// set:     qtype u16 | set_flags u8 | ancount u16 | arcount u16 | ans_len u32 | add_len u32 |
//          ext_len u8 | answer | additional | external
// Integers are little-endian (they never leave the process); the bytes of the sets are wire
// format. With FLAG_FALLBACK the last set is the fallback.

const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;

const FLAG_EXPLICIT: u8 = 1;
const FLAG_APEX: u8 = 2;
const FLAG_TXT: u8 = 4;
const FLAG_FALLBACK: u8 = 8;

const SET_NEGATIVE: u8 = 1;
const SET_NXDOMAIN: u8 = 2;
const SET_HEADER: usize = 16;

fn name_hash(name: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(name);
    h.finish()
}

fn shard_index(hash: u64) -> usize {
    // The slots inside a shard use the low and the high half of the same hash: pick the shard
    // from a remix so that every shard still sees them spread.
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_BITS)) as usize
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The name (lower-case wire form) and the rest of a record.
fn split_record(rec: &[u8]) -> (&[u8], &[u8]) {
    let klen = rec[4] as usize;
    (&rec[5..5 + klen], &rec[5 + klen..])
}

/// One shard of the name table: the records of its names, back to back, and where each starts.
///
/// The slots are open addressing with linear probing, at most half full: a slot is the high half
/// of the name's hash (never 0, which marks a free slot) and the record's offset, so a lookup
/// touches one slot's cache line and then the record, which holds the answer too.
#[derive(Debug, Default)]
struct Shard {
    data: Box<[u8]>,
    slots: Box<[(u32, u32)]>,
    len: usize,
}

fn slot_tag(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

impl Shard {
    fn build(data: Vec<u8>) -> Self {
        let data = data.into_boxed_slice();
        let mut offsets = Vec::new();
        let mut at = 0;
        while at < data.len() {
            offsets.push(at as u32);
            at += u32_at(&data, at) as usize;
        }
        let mut slots = vec![(0u32, 0u32); (offsets.len() * 2).next_power_of_two().max(4)];
        let mask = slots.len() - 1;
        for &o in &offsets {
            let hash = name_hash(split_record(&data[o as usize..]).0);
            let mut i = hash as usize & mask;
            while slots[i].0 != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = (slot_tag(hash), o);
        }
        Self {
            data,
            slots: slots.into_boxed_slice(),
            len: offsets.len(),
        }
    }

    #[inline]
    fn get(&self, hash: u64, lname: &[u8]) -> Option<&[u8]> {
        let mask = self.slots.len().checked_sub(1)?;
        let tag = slot_tag(hash);
        let mut i = hash as usize & mask;
        loop {
            let (t, o) = self.slots[i];
            if t == 0 {
                return None;
            }
            if t == tag {
                let rec = &self.data[o as usize..];
                let rec = &rec[..u32_at(rec, 0) as usize];
                if split_record(rec).0 == lname {
                    return Some(rec);
                }
            }
            i = (i + 1) & mask;
        }
    }

    fn records(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        std::iter::from_fn(move || {
            (at < self.data.len()).then(|| {
                let len = u32_at(&self.data, at) as usize;
                let rec = &self.data[at..at + len];
                at += len;
                rec
            })
        })
    }
}

/// One RRset (or a CNAME chain) ready to copy into a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rrset<'v> {
    pub qtype: u16,
    /// NOERROR, or NXDOMAIN at the end of a CNAME chain into a name that does not exist.
    pub rcode: Rcode,
    /// True when the reply needs the zone SOA in AUTHORITY (a chain that ends in a negative).
    pub negative: bool,
    pub answer: &'v [u8],
    pub ancount: u16,
    /// Glue: the addresses of SRV and NS targets.
    pub additional: &'v [u8],
    pub arcount: u16,
    /// Where a CNAME chain leaves the zone (lower-case wire): the rest is the forwarder's to
    /// resolve, when there is one.
    pub external: Option<&'v [u8]>,
}

impl<'v> Rrset<'v> {
    /// The set at the start of `b`, and what follows it.
    fn parse(b: &'v [u8]) -> (Self, &'v [u8]) {
        let flags = b[2];
        let ans = u32_at(b, 7) as usize;
        let add = u32_at(b, 11) as usize;
        let ext = b[15] as usize;
        let body = &b[SET_HEADER..];
        let set = Self {
            qtype: u16_at(b, 0),
            rcode: if flags & SET_NXDOMAIN != 0 {
                Rcode::NxDomain
            } else {
                Rcode::NoError
            },
            negative: flags & SET_NEGATIVE != 0,
            answer: &body[..ans],
            ancount: u16_at(b, 3),
            additional: &body[ans..ans + add],
            arcount: u16_at(b, 5),
            external: (ext > 0).then(|| &body[ans + add..ans + add + ext]),
        };
        (set, &body[ans + add + ext..])
    }

    /// The rdata of each record, for sets whose owners are all the question pointer.
    fn rdatas(&self) -> impl Iterator<Item = &'v [u8]> {
        let mut rest = self.answer;
        std::iter::from_fn(move || {
            // owner pointer (2), type, class, TTL, rdlength (10), rdata
            (rest.len() >= 12).then(|| {
                let len = u16::from_be_bytes([rest[10], rest[11]]) as usize;
                let rdata = &rest[12..12 + len];
                rest = &rest[12 + len..];
                rdata
            })
        })
    }
}

/// A name that exists: a view into its record.
#[derive(Debug, Clone, Copy)]
pub struct Node<'v> {
    zone: u8,
    flags: u8,
    children: u32,
    nsets: u8,
    sets: &'v [u8],
}

impl<'v> Node<'v> {
    fn parse(body: &'v [u8]) -> Self {
        Self {
            zone: body[0],
            flags: body[1],
            children: u32_at(body, 2),
            nsets: body[6],
            sets: &body[7..],
        }
    }

    /// The zone the name is in (index into [`DnsView::zones`]).
    pub fn zone(&self) -> usize {
        self.zone as usize
    }

    fn all(&self) -> impl Iterator<Item = Rrset<'v>> {
        let mut rest = self.sets;
        (0..self.nsets).map(move |_| {
            let (set, next) = Rrset::parse(rest);
            rest = next;
            set
        })
    }

    fn own_count(&self) -> usize {
        self.nsets as usize - usize::from(self.flags & FLAG_FALLBACK != 0)
    }

    /// The RRsets of the name, by type.
    pub fn rrsets(&self) -> impl Iterator<Item = Rrset<'v>> {
        self.all().take(self.own_count())
    }

    #[inline]
    pub fn get(&self, qtype: u16) -> Option<Rrset<'v>> {
        // Skips by the header alone: only the set asked for is taken apart.
        let mut rest = self.sets;
        for _ in 0..self.own_count() {
            if u16_at(rest, 0) == qtype {
                return Some(Rrset::parse(rest).0);
            }
            let len = SET_HEADER
                + u32_at(rest, 7) as usize
                + u32_at(rest, 11) as usize
                + rest[15] as usize;
            rest = &rest[len..];
        }
        None
    }

    /// The answer for every type without its own RRset: the CNAME of an ExternalName service.
    pub fn fallback(&self) -> Option<Rrset<'v>> {
        (self.flags & FLAG_FALLBACK != 0)
            .then(|| self.all().last())
            .flatten()
    }

    /// True when the name has RRsets of its own (it is not an empty non-terminal).
    pub fn has_rrsets(&self) -> bool {
        self.own_count() > 0
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

/// The immutable answer table.
#[derive(Debug)]
pub struct DnsView {
    shards: Arc<[Arc<Shard>]>,
    len: usize,
    /// Cluster zone first, then `in-addr.arpa`, then `ip6.arpa`.
    pub zones: [Zone; 3],
    /// Lower-case wire form of `pod.<zone>`.
    pub pod_apex: Box<[u8]>,
    pub pods: PodMode,
    /// Pod addresses and the namespaces (lower-case labels) that have a pod with it.
    pub pod_ips: Arc<FxHashMap<IpAddr, Vec<Box<[u8]>>>>,
    pub ttl: u32,
    /// False until negative answers may be given: the source has listed everything, or the
    /// start-up wait is over. Until then they are SERVFAIL.
    pub synced: bool,
    /// True once the source has listed everything (what readiness reports).
    pub listed: bool,
    pub generation: u64,
    cfg: Arc<ViewConfig>,
    /// ExternalName services whose target is in the zone: their answers follow other names.
    chasers: Arc<BTreeSet<Box<[u8]>>>,
}

/// Errors in the view configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("cluster domain {0:?}: {1}")]
    Zone(String, crate::wire::NameError),
}

impl DnsView {
    /// Builds the view of `snap`.
    pub fn build(snap: &ClusterSnapshot, cfg: &ViewConfig) -> Result<Self, ViewError> {
        let zone = name_to_wire(&cfg.zone).map_err(|e| ViewError::Zone(cfg.zone.clone(), e))?;
        let mut pod_apex = b"\x03pod".to_vec();
        pod_apex.extend_from_slice(&zone);
        let empty = Arc::new(Shard::default());
        let soa = Zone {
            apex: Box::new([]),
            soa_tail: Box::new([]),
        };
        let base = Self {
            shards: (0..SHARDS).map(|_| Arc::clone(&empty)).collect(),
            len: 0,
            zones: [
                Zone {
                    apex: zone.into(),
                    ..soa.clone()
                },
                Zone {
                    apex: REV4_APEX.into(),
                    ..soa.clone()
                },
                Zone {
                    apex: REV6_APEX.into(),
                    ..soa
                },
            ],
            pod_apex: pod_apex.into(),
            pods: cfg.pods,
            pod_ips: Arc::default(),
            ttl: cfg.ttl,
            synced: false,
            listed: false,
            generation: 0,
            cfg: Arc::new(cfg.clone()),
            chasers: Arc::default(),
        };
        Ok(Patch::new(&base).run(None, snap))
    }

    /// An empty, unsynced view: cluster names answer SERVFAIL until the first snapshot.
    pub fn empty(cfg: &ViewConfig) -> Result<Self, ViewError> {
        Self::build(&ClusterSnapshot::default(), cfg)
    }

    /// The view of `new`, from this view of `old`: only what changed between the two is
    /// rebuilt. `old` must be the snapshot this view was built or updated from.
    pub fn update(&self, old: &ClusterSnapshot, new: &ClusterSnapshot) -> Self {
        Patch::new(self).run(Some(old), new)
    }

    /// The configuration the view was built with.
    pub fn config(&self) -> &ViewConfig {
        &self.cfg
    }

    /// The node of `lname` (lower-case wire form), when the name exists.
    #[inline]
    pub fn get(&self, lname: &[u8]) -> Option<Node<'_>> {
        let rec = self.get_record(lname)?;
        Some(Node::parse(split_record(rec).1))
    }

    /// The whole record of `lname`, when the name exists.
    #[inline]
    fn get_record(&self, lname: &[u8]) -> Option<&[u8]> {
        let hash = name_hash(lname);
        self.shards[shard_index(hash)].get(hash, lname)
    }

    fn is_apex(&self, name: &[u8]) -> bool {
        self.zones.iter().any(|z| *z.apex == *name)
    }

    /// How many names exist.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every name with its whole record, in name order: what two views are compared by.
    pub fn dump(&self) -> BTreeMap<Box<[u8]>, Box<[u8]>> {
        self.shards
            .iter()
            .flat_map(|s| s.records())
            .map(|rec| (split_record(rec).0.into(), split_record(rec).1.into()))
            .collect()
    }
}

/// The zone a name is in (index into [`DnsView::zones`]).
fn zone_index(name: &[u8]) -> u8 {
    if is_subdomain(name, REV4_APEX) {
        V4_REVERSE_ZONE as u8
    } else if is_subdomain(name, REV6_APEX) {
        V6_REVERSE_ZONE as u8
    } else {
        CLUSTER_ZONE as u8
    }
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

/// The type and rdata of an address record (the rdata is the first 4 or all 16 bytes).
fn ip_rdata(ip: &IpAddr) -> (u16, [u8; 16], usize) {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            (rtype::A, b, 4)
        }
        IpAddr::V6(v6) => (rtype::AAAA, v6.octets(), 16),
    }
}

/// The label of an endpoint without a hostname: its address with `.`/`:` as `-`.
pub fn dashed(ip: &IpAddr) -> String {
    use std::io::Write as _;
    // Formatted on the stack (an IPv6 address is at most 45 characters), one allocation.
    let mut buf = [0u8; 48];
    let len = {
        let mut w = &mut buf[..];
        let _ = write!(w, "{ip}");
        48 - w.len()
    };
    buf[..len]
        .iter()
        .map(|&b| {
            if b == b'.' || b == b':' {
                '-'
            } else {
                b as char
            }
        })
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
            out.extend_from_slice(REV4_APEX);
        }
        IpAddr::V6(v6) => {
            for o in v6.octets().iter().rev() {
                for nibble in [o & 0xF, o >> 4] {
                    out.push(1);
                    out.push(b"0123456789abcdef"[nibble as usize]);
                }
            }
            out.extend_from_slice(REV6_APEX);
        }
    }
    out
}

/// The parent of a name (wire form), `None` for the root.
fn parent(name: &[u8]) -> Option<&[u8]> {
    let skip = 1 + *name.first()? as usize;
    (skip < name.len()).then(|| &name[skip..])
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Srv {
    port: u16,
    target: Vec<u8>,
}

/// The records of one name while a view is being built or changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Draft {
    ips: BTreeSet<IpAddr>,
    srv: BTreeSet<Srv>,
    /// Sorted, no duplicates: a list, as most reverse names have one target and a set's
    /// node would be ten times its size.
    ptr: Vec<Box<[u8]>>,
    cname: Option<Vec<u8>>,
    apex: bool,
    txt: bool,
    /// Exists whatever is below it (a namespace, a zone apex, the fixed names).
    explicit: bool,
    /// How many names exist directly below this one.
    children: u32,
}

impl Draft {
    fn has_records(&self) -> bool {
        !self.ips.is_empty()
            || !self.srv.is_empty()
            || !self.ptr.is_empty()
            || self.cname.is_some()
            || self.apex
            || self.txt
    }

    /// Reads the records of a node back (the inverse of [`Ctx::render`]).
    fn from_node(node: &Node<'_>) -> Self {
        let mut d = Self {
            apex: node.flags & FLAG_APEX != 0,
            txt: node.flags & FLAG_TXT != 0,
            explicit: node.flags & FLAG_EXPLICIT != 0,
            children: node.children,
            ..Self::default()
        };
        if let Some(f) = node.fallback() {
            // An ExternalName: its A and AAAA sets are the chased chain, not addresses.
            d.cname = f.rdatas().next().map(<[u8]>::to_vec);
            return d;
        }
        for set in node.rrsets() {
            for rd in set.rdatas() {
                match set.qtype {
                    rtype::A => {
                        if let Ok(o) = <[u8; 4]>::try_from(rd) {
                            d.ips.insert(IpAddr::from(o));
                        }
                    }
                    rtype::AAAA => {
                        if let Ok(o) = <[u8; 16]>::try_from(rd) {
                            d.ips.insert(IpAddr::from(o));
                        }
                    }
                    rtype::PTR => {
                        d.ptr.push(rd.into());
                    }
                    rtype::SRV if rd.len() > 6 => {
                        d.srv.insert(Srv {
                            port: u16::from_be_bytes([rd[4], rd[5]]),
                            target: rd[6..].to_vec(),
                        });
                    }
                    _ => {} // NS, SOA and TXT follow from the flags
                }
            }
        }
        d
    }
}

/// An RRset while it is being written.
#[derive(Debug, Default)]
struct SetDraft {
    qtype: u16,
    nxdomain: bool,
    negative: bool,
    answer: Vec<u8>,
    ancount: u16,
    additional: Vec<u8>,
    arcount: u16,
    external: Option<Vec<u8>>,
}

impl SetDraft {
    fn simple(qtype: u16, answer: Vec<u8>, ancount: u16) -> Self {
        Self {
            qtype,
            answer,
            ancount,
            ..Self::default()
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let ext = self.external.as_deref().unwrap_or_default();
        out.extend_from_slice(&self.qtype.to_le_bytes());
        out.push(
            if self.negative { SET_NEGATIVE } else { 0 }
                | if self.nxdomain { SET_NXDOMAIN } else { 0 },
        );
        out.extend_from_slice(&self.ancount.to_le_bytes());
        out.extend_from_slice(&self.arcount.to_le_bytes());
        out.extend_from_slice(&(self.answer.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.additional.len() as u32).to_le_bytes());
        out.push(ext.len() as u8);
        out.extend_from_slice(&self.answer);
        out.extend_from_slice(&self.additional);
        out.extend_from_slice(ext);
    }
}

/// Where a name in a CNAME chain leads.
enum Target {
    Missing,
    Cname(Vec<u8>),
    Addrs(Vec<IpAddr>),
}

/// What every record is rendered with.
struct Ctx<'c> {
    cfg: &'c ViewConfig,
    /// The cluster zone, lower-case wire form.
    zone: Vec<u8>,
    pod_apex: Vec<u8>,
    ns_dns: Vec<u8>,
    /// The zones' SOA after its owner.
    soa_tail: Vec<u8>,
}

impl Ctx<'_> {
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

    /// Address records of `name` with its owner written out, for glue and chased CNAMEs.
    fn addr_records(
        &self,
        name: &[u8],
        ips: &[IpAddr],
        want: Option<u16>,
        buf: &mut Vec<u8>,
    ) -> u16 {
        let mut n = 0;
        for ip in ips {
            let (t, rd, len) = ip_rdata(ip);
            if want.is_none_or(|w| w == t) {
                push_rr(buf, Some(name), t, self.cfg.ttl, &rd[..len]);
                n += 1;
            }
        }
        n
    }

    /// The record of `name`. `addrs` gives the addresses of SRV and NS targets; `chased` are
    /// the A and AAAA answers of an ExternalName whose target is in the zone.
    fn render(
        &self,
        out: &mut Vec<u8>,
        name: &[u8],
        d: &Draft,
        children: u32,
        addrs: &dyn Fn(&[u8]) -> Vec<IpAddr>,
        chased: Vec<SetDraft>,
    ) {
        let ttl = self.cfg.ttl;
        let mut sets = Vec::new();
        for t in [rtype::A, rtype::AAAA] {
            let mut buf = Vec::new();
            let mut n = 0;
            for ip in &d.ips {
                let (it, rd, len) = ip_rdata(ip);
                if it == t {
                    push_rr(&mut buf, None, t, ttl, &rd[..len]);
                    n += 1;
                }
            }
            if n > 0 {
                sets.push(SetDraft::simple(t, buf, n));
            }
        }
        if d.apex {
            let mut ans = Vec::new();
            push_rr(&mut ans, None, rtype::NS, ttl, &self.ns_dns);
            let mut ns = SetDraft::simple(rtype::NS, ans, 1);
            if name == self.zone.as_slice() {
                ns.arcount =
                    self.addr_records(&self.ns_dns, &addrs(&self.ns_dns), None, &mut ns.additional);
            }
            sets.push(ns);
            // The SOA: owner is the question, the rest as in AUTHORITY.
            let mut soa = vec![0xC0, 0x0C];
            soa.extend_from_slice(&self.soa_tail);
            sets.push(SetDraft::simple(rtype::SOA, soa, 1));
        }
        if d.txt {
            let version = "1.1.0";
            let mut rd = vec![version.len() as u8];
            rd.extend_from_slice(version.as_bytes());
            let mut buf = Vec::new();
            push_rr(&mut buf, None, rtype::TXT, VERSION_TTL, &rd);
            sets.push(SetDraft::simple(rtype::TXT, buf, 1));
        }
        if !d.ptr.is_empty() {
            let mut buf = Vec::new();
            for target in &d.ptr {
                push_rr(&mut buf, None, rtype::PTR, ttl, target);
            }
            sets.push(SetDraft::simple(rtype::PTR, buf, d.ptr.len() as u16));
        }
        if !d.srv.is_empty() {
            let weight = (100 / d.srv.len()).max(1) as u16;
            let mut set = SetDraft::simple(rtype::SRV, Vec::new(), d.srv.len() as u16);
            let mut targets = BTreeSet::new();
            for s in &d.srv {
                let mut rd = Vec::with_capacity(6 + s.target.len());
                rd.extend_from_slice(&0u16.to_be_bytes());
                rd.extend_from_slice(&weight.to_be_bytes());
                rd.extend_from_slice(&s.port.to_be_bytes());
                rd.extend_from_slice(&s.target);
                push_rr(&mut set.answer, None, rtype::SRV, ttl, &rd);
                if targets.insert(s.target.as_slice()) {
                    set.arcount +=
                        self.addr_records(&s.target, &addrs(&s.target), None, &mut set.additional);
                }
            }
            sets.push(set);
        }
        sets.sort_by_key(|s| s.qtype);
        sets.extend(chased);
        let fallback = d.cname.as_ref().map(|target| {
            // ExternalName: a CNAME for every type without its own set.
            let mut plain = Vec::new();
            push_rr(&mut plain, None, rtype::CNAME, ttl, target);
            SetDraft::simple(rtype::CNAME, plain, 1)
        });

        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.push(zone_index(name));
        out.push(
            if d.explicit { FLAG_EXPLICIT } else { 0 }
                | if d.apex { FLAG_APEX } else { 0 }
                | if d.txt { FLAG_TXT } else { 0 }
                | if fallback.is_some() { FLAG_FALLBACK } else { 0 },
        );
        out.extend_from_slice(&children.to_le_bytes());
        out.push((sets.len() + usize::from(fallback.is_some())) as u8);
        for s in sets.iter().chain(&fallback) {
            s.write(out);
        }
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// The names one Service contributes, worked out from one snapshot.
#[derive(Debug, Default)]
struct Fragment {
    /// `<svc>.<ns>.svc.<zone>`, when the service has any name.
    top: Option<Vec<u8>>,
    /// Its names (all at or below `top`): no other service has them.
    own: FxHashMap<Vec<u8>, Draft>,
    /// `(address, target)`: reverse names are shared with other services.
    ptrs: BTreeSet<(IpAddr, Vec<u8>)>,
    /// The service is an ExternalName whose target is in the zone.
    chases: bool,
}

impl Fragment {
    fn of(ctx: &Ctx<'_>, snap: &ClusterSnapshot, svc: &Service) -> Self {
        let mut f = Self::default();
        f.add_service(ctx, snap, svc);
        let Some(top) = f.top.clone() else {
            return f;
        };
        // Empty non-terminals inside the service (`_tcp.<svc>...`).
        let mut ents: Vec<Vec<u8>> = Vec::new();
        for name in f.own.keys() {
            let mut at = name.as_slice();
            while let Some(p) = parent(at).filter(|p| p.len() > top.len()) {
                if f.own.contains_key(p) || ents.iter().any(|e| e == p) {
                    break;
                }
                ents.push(p.to_vec());
                at = p;
            }
        }
        for e in ents {
            f.own.insert(e, Draft::default());
        }
        f
    }

    fn name(&mut self, wire: Vec<u8>) -> &mut Draft {
        self.own.entry(wire).or_default()
    }

    fn add_service(&mut self, ctx: &Ctx<'_>, snap: &ClusterSnapshot, svc: &Service) {
        let Some(svc_name) = ctx.cluster_name(&[&svc.name, &svc.namespace, "svc"]) else {
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
                Ok(t) => {
                    self.chases = is_subdomain(&t.to_ascii_lowercase(), &ctx.zone);
                    self.name(svc_name.clone()).cname = Some(t);
                    self.top = Some(svc_name);
                }
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
                    .filter(|r| ctx.cfg.endpoint_pod_names && r.kind == "Pod")
                    .map(|r| r.name.as_str())
                    .filter(|n| discovery::model::is_dns_label(n));
                for ip in &ep.addresses {
                    let host = match (&ep.hostname, pod_name) {
                        (Some(h), _) => h.clone(),
                        (None, Some(p)) => p.to_string(),
                        (None, None) => dashed(ip),
                    };
                    let name = ctx.cluster_name(&[&host, &svc.name, &svc.namespace, "svc"]);
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
                self.ptrs.insert((*ip, svc_name.clone()));
            }
        }
        self.top = Some(svc_name.clone());

        // Endpoint names and their PTRs (for ClusterIP services too).
        for ep in &eps {
            let Some(host_name) = &ep.name else { continue };
            self.name(host_name.clone()).ips.insert(ep.ip);
            self.ptrs.insert((ep.ip, host_name.clone()));
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
            if let Some(n) = ctx.cluster_name(&[&p, &pr, &svc.name, &svc.namespace, "svc"]) {
                self.name(n).srv.extend(recs.iter().cloned());
            }
            self.name(svc_name.clone()).srv.extend(recs);
        }
    }
}

/// Where a record written by a [`Patch`] is in its [`Arena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    chunk: u32,
    at: u32,
    len: u32,
}

/// The records a patch writes, back to back in chunks. A full build copies them into its shards
/// chunk by chunk and frees each chunk once copied, so the records and the shards made from
/// them are never both whole in memory.
#[derive(Debug, Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
    /// Bytes written so far: the next chunk's size follows it, so a small update stays small.
    total: usize,
}

impl Arena {
    const MIN_CHUNK: usize = 64 << 10;
    /// Small chunks free memory in small steps: the peak RSS of loading the 10k-service cluster
    /// was 61 MB with 4 MiB chunks, 58 with 1 MiB and 57 with these (56 once built).
    const MAX_CHUNK: usize = 256 << 10;

    fn push(&mut self, rec: &[u8]) -> Pos {
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= rec.len());
        if !fits {
            let size = self.total.clamp(Self::MIN_CHUNK, Self::MAX_CHUNK);
            self.chunks.push(Vec::with_capacity(size.max(rec.len())));
        }
        let chunk = self.chunks.len() - 1;
        let c = &mut self.chunks[chunk];
        let at = c.len();
        c.extend_from_slice(rec);
        self.total += rec.len();
        Pos {
            chunk: chunk as u32,
            at: at as u32,
            len: rec.len() as u32,
        }
    }

    fn get(&self, p: Pos) -> &[u8] {
        &self.chunks[p.chunk as usize][p.at as usize..(p.at + p.len) as usize]
    }
}

/// A changed name's state while a view is being changed.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Rewritten whole: its record (which holds its name) is in the arena.
    Record(Pos),
    /// Changed through its draft (a shared name), rendered at the end: the draft's index, and
    /// where its name is in [`Dirty::names`].
    Draft(u32, u32, u8),
    /// Removed; its name is in [`Dirty::names`].
    Removed(u32, u8),
}

/// The names a patch changed, found by name without a copy of each: a slot's name is read from
/// its record or from one shared buffer. (A map keyed by boxed names cost a full build 15 MiB
/// at its peak for 140k names; this costs 4.)
#[derive(Debug, Default)]
struct Dirty {
    table: HashTable<Slot>,
    arena: Arena,
    names: Vec<u8>,
    drafts: Vec<Draft>,
}

impl Dirty {
    fn name<'a>(arena: &'a Arena, names: &'a [u8], slot: &Slot) -> &'a [u8] {
        match *slot {
            Slot::Record(p) => split_record(arena.get(p)).0,
            Slot::Draft(_, at, len) | Slot::Removed(at, len) => {
                &names[at as usize..at as usize + len as usize]
            }
        }
    }

    fn get(&self, name: &[u8]) -> Option<Slot> {
        self.table
            .find(name_hash(name), |s| {
                Self::name(&self.arena, &self.names, s) == name
            })
            .copied()
    }

    fn set(&mut self, name: &[u8], slot: Slot) {
        let Self {
            table,
            arena,
            names,
            ..
        } = self;
        let entry = table.entry(
            name_hash(name),
            |s| Self::name(arena, names, s) == name,
            |s| name_hash(Self::name(arena, names, s)),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = slot,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(slot);
            }
        }
    }

    fn put_name(&mut self, name: &[u8]) -> (u32, u8) {
        let at = self.names.len() as u32;
        self.names.extend_from_slice(name);
        (at, name.len() as u8)
    }

    /// Writes `rec` (which starts with `name`) as the name's record.
    fn set_record(&mut self, name: &[u8], rec: &[u8]) -> Pos {
        let p = self.arena.push(rec);
        self.set(name, Slot::Record(p));
        p
    }

    fn set_removed(&mut self, name: &[u8]) {
        let (at, len) = self.put_name(name);
        self.set(name, Slot::Removed(at, len));
    }

    fn set_draft(&mut self, name: &[u8], d: Draft) -> u32 {
        let (at, len) = self.put_name(name);
        let i = self.drafts.len() as u32;
        self.drafts.push(d);
        self.set(name, Slot::Draft(i, at, len));
        i
    }

    fn reserve(&mut self, n: usize) {
        let Self {
            table,
            arena,
            names,
            ..
        } = self;
        table.reserve(n, |s| name_hash(Self::name(arena, names, s)));
    }
}

/// The changes from a base view to the next one.
struct Patch<'b> {
    base: &'b DnsView,
    ctx: Ctx<'b>,
    dirty: Dirty,
    /// Where a record is rendered before it is written to the arena.
    buf: Vec<u8>,
    /// A full build (from an empty view, no previous snapshot): see [`Patch::flush_ptrs`].
    full: bool,
    /// A full build's reverse names: address, and where the target's record is in the arena.
    ptr_pairs: Vec<(IpAddr, Pos)>,
    chasers: Option<BTreeSet<Box<[u8]>>>,
}

/// Calls `f` with the old and new value of every key whose value differs between `a` and `b`.
fn diff_maps<'m, K: Ord, V: PartialEq>(
    a: &'m BTreeMap<K, Arc<V>>,
    b: &'m BTreeMap<K, Arc<V>>,
    mut f: impl FnMut(Option<&'m V>, Option<&'m V>),
) {
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (ia.peek(), ib.peek()) {
            (None, None) => return,
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    f(Some(va), None);
                    ia.next();
                }
                std::cmp::Ordering::Greater => {
                    f(None, Some(vb));
                    ib.next();
                }
                std::cmp::Ordering::Equal => {
                    if !(Arc::ptr_eq(va, vb) || va == vb) {
                        f(Some(va), Some(vb));
                    }
                    ia.next();
                    ib.next();
                }
            },
            (Some((_, va)), None) => {
                f(Some(va), None);
                ia.next();
            }
            (None, Some((_, vb))) => {
                f(None, Some(vb));
                ib.next();
            }
        }
    }
}

impl<'b> Patch<'b> {
    fn new(base: &'b DnsView) -> Self {
        let cfg: &ViewConfig = &base.cfg;
        let zone = base.zones[CLUSTER_ZONE].apex.to_vec();
        let mut ctx = Ctx {
            cfg,
            pod_apex: base.pod_apex.to_vec(),
            zone,
            ns_dns: Vec::new(),
            soa_tail: Vec::new(),
        };
        ctx.ns_dns = ctx.cluster_name(&["ns", "dns"]).unwrap_or_default();
        Self {
            base,
            ctx,
            dirty: Dirty::default(),
            buf: Vec::new(),
            full: false,
            ptr_pairs: Vec::new(),
            chasers: None,
        }
    }

    fn run(mut self, old: Option<&ClusterSnapshot>, new: &ClusterSnapshot) -> DnsView {
        let cfg = self.ctx.cfg;
        self.soa(new.serial);

        // Services whose object or slices changed.
        let mut services: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut namespaces: BTreeSet<&str> = BTreeSet::new();
        let mut pods_changed = false;
        match old {
            None => {
                // About a name and a reverse name per endpoint, and a few per service.
                let endpoints: usize = new
                    .objects
                    .endpoint_slices
                    .values()
                    .map(|s| s.endpoints.len())
                    .sum();
                let names = new.objects.services.len() * 4 + endpoints * 2;
                self.dirty.reserve(names);
                services.extend(new.objects.services.keys().cloned());
                namespaces.extend(new.objects.namespaces.iter().map(String::as_str));
                namespaces.extend(new.objects.pods.keys().map(|k| k.namespace.as_str()));
                pods_changed = true;
            }
            Some(old) => {
                diff_maps(&old.objects.services, &new.objects.services, |a, b| {
                    services.extend(a.or(b).map(Service::key));
                });
                diff_maps(
                    &old.objects.endpoint_slices,
                    &new.objects.endpoint_slices,
                    |a, b| {
                        for s in a.into_iter().chain(b) {
                            if let Some(svc) = &s.service {
                                services.insert(ObjectKey::new(&s.namespace, svc));
                            }
                        }
                    },
                );
                namespaces.extend(
                    old.objects
                        .namespaces
                        .symmetric_difference(&new.objects.namespaces)
                        .map(String::as_str),
                );
                diff_maps(&old.objects.pods, &new.objects.pods, |a, b| {
                    pods_changed = true;
                    namespaces.extend(a.into_iter().chain(b).map(|p| p.namespace.as_str()));
                });
            }
        }

        self.full = old.is_none() && self.base.is_empty();
        for key in &services {
            let fragment = |snap: &ClusterSnapshot| {
                snap.objects
                    .services
                    .get(key)
                    .filter(|s| cfg.serves(&s.namespace))
                    .map(|s| Fragment::of(&self.ctx, snap, s))
            };
            let before = old.and_then(fragment);
            let after = fragment(new);
            self.apply(before, after);
        }
        self.flush_ptrs();
        for ns in namespaces {
            self.namespace(ns, new);
        }
        self.globals(new);
        self.chase_all();

        let pod_ips = if pods_changed {
            Arc::new(pod_ips(new, cfg))
        } else {
            Arc::clone(&self.base.pod_ips)
        };
        let base = self.base;
        let (shards, len, chasers, zones) = self.finish();
        DnsView {
            shards,
            len,
            zones,
            pod_apex: base.pod_apex.clone(),
            pods: cfg.pods,
            pod_ips,
            ttl: cfg.ttl,
            synced: new.synced,
            listed: new.synced,
            generation: new.generation,
            cfg: Arc::clone(&base.cfg),
            chasers,
        }
    }

    /// The SOA of every zone, with the snapshot's serial.
    fn soa(&mut self, serial: u32) {
        let mut rdata = Vec::new();
        rdata.extend_from_slice(&self.ctx.ns_dns);
        rdata.extend_from_slice(&self.ctx.cluster_name(&["hostmaster"]).unwrap_or_default());
        rdata.extend_from_slice(&serial.to_be_bytes());
        for v in [7200u32, 1800, 86400, self.ctx.cfg.ttl] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        // RFC 2308: negative answers are cached for min(SOA TTL, MINIMUM); both are the TTL.
        let tail = &mut self.ctx.soa_tail;
        tail.clear();
        tail.extend_from_slice(&rtype::SOA.to_be_bytes());
        tail.extend_from_slice(&1u16.to_be_bytes());
        tail.extend_from_slice(&self.ctx.cfg.ttl.to_be_bytes());
        tail.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        tail.extend_from_slice(&rdata);
    }

    // ----- reading the state being built -----

    fn record(&self, p: Pos) -> Node<'_> {
        Node::parse(split_record(self.dirty.arena.get(p)).1)
    }

    fn base_node(&self, name: &[u8]) -> Option<Node<'b>> {
        self.base.get(name)
    }

    fn exists(&self, name: &[u8]) -> bool {
        match self.dirty.get(name) {
            Some(Slot::Removed(..)) => false,
            Some(_) => true,
            None => self.base_node(name).is_some(),
        }
    }

    /// Where `name` leads, for CNAME chains and glue.
    fn target(&self, name: &[u8]) -> Target {
        let from_node = |n: Node<'_>| match n.fallback() {
            Some(f) => Target::Cname(f.rdatas().next().unwrap_or_default().to_vec()),
            None => Target::Addrs(Draft::from_node(&n).ips.into_iter().collect()),
        };
        match self.dirty.get(name) {
            Some(Slot::Removed(..)) => Target::Missing,
            Some(Slot::Draft(i, ..)) => {
                let d = &self.dirty.drafts[i as usize];
                match &d.cname {
                    Some(c) => Target::Cname(c.clone()),
                    None => Target::Addrs(d.ips.iter().copied().collect()),
                }
            }
            Some(Slot::Record(p)) => from_node(self.record(p)),
            None => self.base_node(name).map_or(Target::Missing, from_node),
        }
    }

    fn addrs(&self, name: &[u8]) -> Vec<IpAddr> {
        match self.target(name) {
            Target::Addrs(ips) => ips,
            _ => Vec::new(),
        }
    }

    // ----- shared names, changed through drafts -----

    /// The draft of a name that exists, or a new empty one (the caller links it).
    fn draft(&mut self, name: &[u8]) -> &mut Draft {
        let i = match self.dirty.get(name) {
            Some(Slot::Draft(i, ..)) => i,
            slot => {
                let d = match slot {
                    Some(Slot::Record(p)) => Draft::from_node(&self.record(p)),
                    Some(_) => Draft::default(),
                    None => self
                        .base_node(name)
                        .map(|n| Draft::from_node(&n))
                        .unwrap_or_default(),
                };
                self.dirty.set_draft(name, d)
            }
        };
        &mut self.dirty.drafts[i as usize]
    }

    /// The draft of `name`, created (with its missing ancestors) when the name is new.
    fn ensure(&mut self, name: &[u8]) -> &mut Draft {
        if !self.exists(name) {
            if self.base.is_apex(name) {
                self.draft(name).explicit = true;
            } else if let Some(p) = parent(name) {
                self.ensure(p).children += 1;
            }
        }
        self.draft(name)
    }

    /// Removes `name` when nothing keeps it: no records, no children, not explicit.
    fn prune(&mut self, name: &[u8]) {
        if !self.exists(name) {
            return;
        }
        let d = self.draft(name);
        if d.explicit || d.children > 0 || d.has_records() {
            return;
        }
        self.dirty.set_removed(name);
        self.child_gone(name);
    }

    fn child_gone(&mut self, name: &[u8]) {
        if self.base.is_apex(name) {
            return;
        }
        if let Some(p) = parent(name) {
            let d = self.draft(p);
            d.children = d.children.saturating_sub(1);
            self.prune(p);
        }
    }

    fn set_explicit(&mut self, name: Option<Vec<u8>>, explicit: bool) {
        let Some(name) = name else { return };
        if explicit {
            self.ensure(&name).explicit = true;
        } else if self.exists(&name) {
            self.draft(&name).explicit = false;
            self.prune(&name);
        }
    }

    // ----- the changes -----

    /// Replaces what one service contributed (`before`) with what it contributes now.
    fn apply(&mut self, before: Option<Fragment>, after: Option<Fragment>) {
        let before = before.unwrap_or_default();
        let after = after.unwrap_or_default();
        // Own names: rendered whole, with their children counted and their glue their own.
        let own: Vec<(Vec<u8>, Draft)> = after.own.into_iter().collect();
        let index: FxHashMap<&[u8], usize> = own
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_slice(), i))
            .collect();
        let mut children = vec![0u32; own.len()];
        for (name, _) in own.iter().filter(|(n, _)| Some(n) != after.top.as_ref()) {
            if let Some(&i) = parent(name).and_then(|p| index.get(p)) {
                children[i] += 1;
            }
        }
        let addrs = |n: &[u8]| -> Vec<IpAddr> {
            index
                .get(n)
                .map(|&i| own[i].1.ips.iter().copied().collect())
                .unwrap_or_default()
        };
        let mut records = Vec::with_capacity(own.len());
        for ((name, d), &c) in own.iter().zip(&children) {
            // An ExternalName's A and AAAA: the chain. One that stays in the zone is followed
            // again at the end, when every name it may pass through is final.
            let chased = match &d.cname {
                Some(t) => vec![self.chase(t, rtype::A), self.chase(t, rtype::AAAA)],
                None => Vec::new(),
            };
            self.buf.clear();
            self.ctx.render(&mut self.buf, name, d, c, &addrs, chased);
            records.push(self.dirty.arena.push(&self.buf));
        }
        if self.full {
            // A full build: reverse names are written once all services are in (`flush_ptrs`),
            // from their address and where each target's record is.
            for (ip, target) in &after.ptrs {
                if let Some(&i) = index.get(target.as_slice()) {
                    self.ptr_pairs.push((*ip, records[i]));
                }
            }
        }
        for name in before
            .own
            .keys()
            .filter(|n| !index.contains_key(n.as_slice()))
        {
            if self.exists(name) {
                self.dirty.set_removed(name);
                if Some(name) == before.top.as_ref() {
                    self.child_gone(name);
                }
            }
        }
        drop(index);
        for ((name, _), rec) in own.into_iter().zip(records) {
            if Some(&name) == after.top.as_ref()
                && !self.exists(&name)
                && let Some(p) = parent(&name)
            {
                self.ensure(p).children += 1;
            }
            self.dirty.set(&name, Slot::Record(rec));
        }
        // Reverse names: shared, so changed pair by pair.
        for (ip, target) in after.ptrs.difference(&before.ptrs) {
            if !self.full {
                self.add_ptr(&reverse_wire(ip), target);
            }
        }
        for (ip, target) in before.ptrs.difference(&after.ptrs) {
            let rev = reverse_wire(ip);
            if self.exists(&rev) {
                let ptr = &mut self.draft(&rev).ptr;
                if let Ok(at) = ptr.binary_search_by(|t| (**t).cmp(target.as_slice())) {
                    ptr.remove(at);
                }
                self.prune(&rev);
            }
        }
        if before.chases || after.chases {
            let chasers = self
                .chasers
                .get_or_insert_with(|| (*self.base.chasers).clone());
            if let Some(t) = before.top.filter(|_| before.chases) {
                chasers.remove(t.as_slice());
            }
            if let Some(t) = after.top.filter(|_| after.chases) {
                chasers.insert(t.into());
            }
        }
    }

    fn add_ptr(&mut self, rev: &[u8], target: &[u8]) {
        let ptr = &mut self.ensure(rev).ptr;
        if let Err(at) = ptr.binary_search_by(|t| (**t).cmp(target)) {
            ptr.insert(at, target.into());
        }
    }

    /// A full build's reverse names, each written once from all its targets: no draft per name
    /// (60k of them for 10k services), just the address and where each target's record is.
    fn flush_ptrs(&mut self) {
        let mut pairs = std::mem::take(&mut self.ptr_pairs);
        pairs.sort_unstable_by_key(|p| p.0);
        for group in pairs.chunk_by(|a, b| a.0 == b.0) {
            let mut targets: Vec<Box<[u8]>> = group
                .iter()
                .map(|&(_, p)| split_record(self.dirty.arena.get(p)).0.into())
                .collect();
            targets.sort_unstable();
            targets.dedup();
            let rev = reverse_wire(&group[0].0);
            if self.exists(&rev) {
                for t in &targets {
                    self.add_ptr(&rev, t);
                }
                continue;
            }
            let d = Draft {
                ptr: targets,
                ..Draft::default()
            };
            self.buf.clear();
            self.ctx
                .render(&mut self.buf, &rev, &d, 0, &|_| Vec::new(), Vec::new());
            if let Some(p) = parent(&rev) {
                self.ensure(p).children += 1;
            }
            self.dirty.set_record(&rev, &self.buf);
        }
    }

    /// `<ns>.svc.<zone>` and `<ns>.pod.<zone>` exist for a namespace even when empty.
    fn namespace(&mut self, ns: &str, snap: &ClusterSnapshot) {
        let cfg = self.ctx.cfg;
        let served = cfg.serves(ns);
        let listed = served && snap.objects.namespaces.contains(ns);
        let svc = self.ctx.cluster_name(&[ns, "svc"]);
        self.set_explicit(svc, listed);
        // A pod name implies its namespace name, even without a Namespace object.
        let has_pods = || {
            snap.objects
                .pods
                .range(ObjectKey::new(ns, "")..)
                .take_while(|(k, _)| k.namespace == ns)
                .any(|(_, p)| !p.ips.is_empty())
        };
        let pod = cfg.pods != PodMode::Disabled
            && served
            && (listed || (cfg.pods == PodMode::Verified && has_pods()));
        let name = self.ctx.cluster_name(&[ns, "pod"]);
        self.set_explicit(name, pod);
    }

    /// The fixed names: the apexes (their SOA carries the serial), `ns.dns`, `dns-version`.
    fn globals(&mut self, snap: &ClusterSnapshot) {
        let cfg = self.ctx.cfg;
        let dns_ips: Vec<IpAddr> = match snap.service(&cfg.dns_service.0, &cfg.dns_service.1) {
            Some(s) if !s.cluster_ips.is_empty() => s.cluster_ips.clone(),
            _ => cfg.fallback_ns_ips.clone(),
        };
        for apex in [
            self.ctx.zone.clone(),
            REV4_APEX.to_vec(),
            REV6_APEX.to_vec(),
        ] {
            let d = self.ensure(&apex);
            d.apex = true;
            d.explicit = true;
        }
        let ns_dns = self.ctx.ns_dns.clone();
        let d = self.ensure(&ns_dns);
        d.explicit = true;
        d.ips = dns_ips.into_iter().collect();
        if let Some(v) = self.ctx.cluster_name(&["dns-version"]) {
            let d = self.ensure(&v);
            d.explicit = true;
            d.txt = true;
        }
        for fixed in ["svc", "pod"] {
            self.set_explicit(self.ctx.cluster_name(&[fixed]), true);
        }
    }

    /// The CNAME chain from an ExternalName service, for `qtype`, as far as the zone knows it.
    fn chase(&self, first: &[u8], qtype: u16) -> SetDraft {
        let ttl = self.ctx.cfg.ttl;
        let mut set = SetDraft {
            qtype,
            ancount: 1,
            ..SetDraft::default()
        };
        push_rr(&mut set.answer, None, rtype::CNAME, ttl, first);
        let mut target = first.to_ascii_lowercase();
        for _ in 0..MAX_CHASE {
            if !is_subdomain(&target, &self.ctx.zone) {
                // Outside the zone: the forwarder (or the client's resolver) goes on.
                set.external = Some(target);
                break;
            }
            if is_subdomain(&target, &self.ctx.pod_apex) {
                break; // a pod name: the client asks again
            }
            match self.target(&target) {
                Target::Missing => {
                    set.nxdomain = true;
                    set.negative = true;
                    break;
                }
                Target::Cname(next) => {
                    push_rr(&mut set.answer, Some(&target), rtype::CNAME, ttl, &next);
                    set.ancount += 1;
                    target = next.to_ascii_lowercase();
                }
                Target::Addrs(ips) => {
                    let n = self
                        .ctx
                        .addr_records(&target, &ips, Some(qtype), &mut set.answer);
                    set.ancount += n;
                    set.negative = n == 0;
                    break;
                }
            }
        }
        set
    }

    /// Re-follows every in-zone ExternalName chain: any name on it may have changed.
    fn chase_all(&mut self) {
        let chasers = self.chasers.as_ref().unwrap_or(&self.base.chasers).clone();
        for name in &chasers {
            let d = match self.dirty.get(name) {
                Some(Slot::Record(p)) => Draft::from_node(&self.record(p)),
                Some(Slot::Draft(i, ..)) => self.dirty.drafts[i as usize].clone(),
                Some(Slot::Removed(..)) => continue,
                None => match self.base_node(name) {
                    Some(n) => Draft::from_node(&n),
                    None => continue,
                },
            };
            let Some(target) = d.cname.clone() else {
                continue;
            };
            let chased = vec![
                self.chase(&target, rtype::A),
                self.chase(&target, rtype::AAAA),
            ];
            self.buf.clear();
            self.ctx
                .render(&mut self.buf, name, &d, d.children, &|_| Vec::new(), chased);
            let rec = self.buf.as_slice();
            let unchanged = match self.dirty.get(name) {
                Some(Slot::Record(p)) => self.dirty.arena.get(p) == rec,
                _ => self.base.get_record(name).is_some_and(|r| r == rec),
            };
            if !unchanged {
                self.dirty.set_record(name, &self.buf);
            }
        }
    }

    /// Renders the drafts and writes the changed shards; the others are shared.
    #[allow(clippy::type_complexity)]
    fn finish(
        mut self,
    ) -> (
        Arc<[Arc<Shard>]>,
        usize,
        Arc<BTreeSet<Box<[u8]>>>,
        [Zone; 3],
    ) {
        let drafts: Vec<(Box<[u8]>, u32)> = self
            .dirty
            .table
            .iter()
            .filter_map(|s| match *s {
                Slot::Draft(i, ..) => Some((
                    Dirty::name(&self.dirty.arena, &self.dirty.names, s).into(),
                    i,
                )),
                _ => None,
            })
            .collect();
        // Rendered apart, then written: glue is read from records already in the arena.
        let mut buf = Vec::new();
        for (name, i) in drafts {
            let d = &self.dirty.drafts[i as usize];
            buf.clear();
            self.ctx.render(
                &mut buf,
                &name,
                d,
                d.children,
                &|n| self.addrs(n),
                Vec::new(),
            );
            self.dirty.set_record(&name, &buf);
        }

        // The changes by shard: sorted lists, not a growing list per shard. A written record
        // carries its name, so only removed names are kept apart (and the table goes first).
        let Dirty {
            table,
            mut arena,
            names,
            drafts,
        } = std::mem::take(&mut self.dirty);
        drop(drafts);
        let mut puts: Vec<(u32, Pos)> = Vec::with_capacity(table.len());
        let mut removes: Vec<(u32, Box<[u8]>)> = Vec::new();
        for slot in table {
            let name = Dirty::name(&arena, &names, &slot);
            let shard = shard_index(name_hash(name)) as u32;
            match slot {
                Slot::Record(p) => puts.push((shard, p)),
                Slot::Removed(..) => removes.push((shard, name.into())),
                Slot::Draft(..) => unreachable!("rendered above"),
            }
        }
        drop(names);
        puts.sort_unstable_by_key(|c| c.0);
        removes.sort_unstable_by_key(|c| c.0);

        // Each changed shard's new data: the records it keeps, with room for its new ones.
        let mut datas: Vec<Option<Vec<u8>>> = vec![None; SHARDS];
        let (mut p, mut r) = (0, 0);
        while p < puts.len() || r < removes.len() {
            let i = puts
                .get(p)
                .map(|c| c.0)
                .into_iter()
                .chain(removes.get(r).map(|c| c.0))
                .min()
                .unwrap_or_default();
            let p_end = p + puts[p..].iter().take_while(|c| c.0 == i).count();
            let r_end = r + removes[r..].iter().take_while(|c| c.0 == i).count();
            let (new, gone) = (&puts[p..p_end], &removes[r..r_end]);
            (p, r) = (p_end, r_end);
            let old = &self.base.shards[i as usize];
            let changed: FxHashSet<&[u8]> = if old.data.is_empty() {
                FxHashSet::default()
            } else {
                new.iter()
                    .map(|c| split_record(arena.get(c.1)).0)
                    .chain(gone.iter().map(|(_, n)| &**n))
                    .collect()
            };
            let kept = || {
                old.records()
                    .filter(|rec| !changed.contains(split_record(rec).0))
            };
            let size = kept().map(<[u8]>::len).sum::<usize>()
                + new.iter().map(|c| c.1.len as usize).sum::<usize>();
            let mut data = Vec::with_capacity(size);
            for rec in kept() {
                data.extend_from_slice(rec);
            }
            datas[i as usize] = Some(data);
        }
        drop(removes);
        // The new records, in arena order: each chunk is freed once copied.
        puts.sort_unstable_by_key(|c| (c.1.chunk, c.1.at));
        for (shard, pos) in puts {
            if pos.chunk > 0 {
                arena.chunks[pos.chunk as usize - 1] = Vec::new();
            }
            if let Some(data) = &mut datas[shard as usize] {
                data.extend_from_slice(arena.get(pos));
            }
        }
        drop(arena);
        let mut shards: Vec<Arc<Shard>> = self.base.shards.to_vec();
        for (i, data) in datas.into_iter().enumerate() {
            if let Some(data) = data {
                shards[i] = Arc::new(Shard::build(data));
            }
        }

        let tail: Box<[u8]> = self.ctx.soa_tail.clone().into();
        let zones = self.base.zones.clone().map(|z| Zone {
            apex: z.apex,
            soa_tail: tail.clone(),
        });
        let len = shards.iter().map(|s| s.len).sum();
        let chasers = match self.chasers {
            Some(c) => Arc::new(c),
            None => Arc::clone(&self.base.chasers),
        };
        (shards.into(), len, chasers, zones)
    }
}

/// Pod addresses and the namespaces that have a pod with each (mode `verified`).
fn pod_ips(snap: &ClusterSnapshot, cfg: &ViewConfig) -> FxHashMap<IpAddr, Vec<Box<[u8]>>> {
    let mut pod_ips: FxHashMap<IpAddr, Vec<Box<[u8]>>> = FxHashMap::default();
    if cfg.pods != PodMode::Verified {
        return pod_ips;
    }
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
    pod_ips
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
