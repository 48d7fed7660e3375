//! Masquerading of pod traffic that leaves the pod network (`ipMasq`), in one nftables table the
//! plugin owns and nothing else touches:
//!
//! ```text
//! table inet netd-cni {
//!     set pods_v4   { type ipv4_addr; flags interval; auto-merge; elements = { 10.244.1.0/24 } }
//!     set direct_v4 { type ipv4_addr; flags interval; auto-merge; elements = { 10.244.0.0/16 } }
//!     (pods_v6, direct_v6 alike)
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr @pods_v4 ip daddr != @direct_v4 ip daddr != 224.0.0.0/4 masquerade
//!         ip6 saddr @pods_v6 ip6 daddr != @direct_v6 ip6 daddr != ff00::/8 masquerade
//!     }
//! }
//! ```
//!
//! `pods_*` hold the subnets of every network with `ipMasq`: their traffic is masqueraded unless
//! it goes to a destination in `direct_*`, which holds the same subnets plus the configuration's
//! `nonMasqueradeCIDRs` (the cluster's pod network, so that pods on other nodes see a pod's own
//! address). `auto-merge` lets a node subnet sit inside the cluster range in one set.
//!
//! The rules do not depend on any one network. An ADD first reads the table ([`current`]): once a
//! network's first pod has been added, everything is there and nothing is written (a commit
//! costs: re-declaring the base chain waits for the kernel to swap its hooks, and adding to an
//! auto-merged set re-merges it, about 10 ms each). Missing elements are added with
//! [`elements_script`]; missing sets or rules are rebuilt with [`ensure_script`]. Both are
//! idempotent and the same whoever runs them, so concurrent ADDs are safe (the kernel
//! serialises nftables transactions).
//!
//! A subnet stays in the sets when its last pod goes, as the bridge and its gateway address stay:
//! the rules are the network's, not a pod's.

use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::config::to_u128;
use crate::protocol::{CniError, Code, Result};

/// The table this plugin owns.
pub const TABLE: &str = "netd-cni";

fn family(net: &IpNet) -> &'static str {
    if net.addr().is_ipv4() { "v4" } else { "v6" }
}

/// The transaction that adds `subnets` (the pods') and `direct` (destinations reached without
/// masquerading) to the sets; it fails when the sets do not exist.
pub fn elements_script(subnets: &[IpNet], direct: &[IpNet]) -> String {
    let mut script = String::new();
    for net in outermost(subnets) {
        let f = family(&net);
        script.push_str(&format!("add element inet {TABLE} pods_{f} {{ {net} }}\n"));
    }
    let reached: Vec<IpNet> = subnets.iter().chain(direct).copied().collect();
    for net in outermost(&reached) {
        let f = family(&net);
        script.push_str(&format!(
            "add element inet {TABLE} direct_{f} {{ {net} }}\n"
        ));
    }
    script
}

/// `nets` without host bits, without duplicates and without those inside another: nft merges
/// overlapping elements with what a set holds, but refuses overlaps within one transaction.
fn outermost(nets: &[IpNet]) -> Vec<IpNet> {
    let nets: Vec<IpNet> = nets.iter().map(IpNet::trunc).collect();
    let mut kept: Vec<IpNet> = Vec::new();
    for (i, net) in nets.iter().enumerate() {
        let inside_another = nets
            .iter()
            .enumerate()
            .any(|(j, other)| other.contains(net) && (other != net || j < i));
        if !inside_another {
            kept.push(*net);
        }
    }
    kept
}

/// The transaction that creates the table, sets and rules and adds the elements.
pub fn ensure_script(subnets: &[IpNet], direct: &[IpNet]) -> String {
    let mut script = format!("add table inet {TABLE}\n");
    for (f, kind) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
        for set in ["pods", "direct"] {
            script.push_str(&format!(
                "add set inet {TABLE} {set}_{f} {{ type {kind}; flags interval; auto-merge; }}\n"
            ));
        }
    }
    script.push_str(&format!(
        "add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {TABLE} postrouting\n\
         add rule inet {TABLE} postrouting ip saddr @pods_v4 ip daddr != @direct_v4 ip daddr != 224.0.0.0/4 masquerade\n\
         add rule inet {TABLE} postrouting ip6 saddr @pods_v6 ip6 daddr != @direct_v6 ip6 daddr != ff00::/8 masquerade\n"
    ));
    script.push_str(&elements_script(subnets, direct));
    script
}

/// Makes sure `subnets` are masqueraded except towards `direct`. In the common case the table
/// already holds all of it and nothing is written: reading it is one `nft` run, where any commit
/// to an auto-merged interval set costs three (the kernel re-merges the set). Missing elements
/// are added; missing sets or rules rebuild the table.
pub fn ensure(subnets: &[IpNet], direct: &[IpNet]) -> Result<()> {
    match current()? {
        Some(table) if table.rules >= 2 => {
            if table.holds(subnets, direct) {
                return Ok(());
            }
            if apply(&elements_script(subnets, direct)).is_ok() {
                return Ok(());
            }
            apply(&ensure_script(subnets, direct))
        }
        _ => apply(&ensure_script(subnets, direct)),
    }
}

/// Applies `script` with `nft -f -`, as one atomic transaction.
pub fn apply(script: &str) -> Result<()> {
    use netd_nft::{Applier, ApplyError, Nft};
    Nft::default().apply(script).map_err(|err| match err {
        ApplyError::Spawn(err) => CniError::new(
            Code::System,
            format!("running nft for ipMasq (is nftables installed?): {err}"),
        ),
        ApplyError::Refused { status, stderr } => CniError::new(
            Code::System,
            format!("nft refused the masquerade rules ({status}): {stderr}"),
        ),
    })
}

/// An element of an interval set: first and last address, and the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub v4: bool,
    pub first: u128,
    pub last: u128,
}

impl Span {
    fn of(net: &IpNet) -> Span {
        Span {
            v4: net.addr().is_ipv4(),
            first: to_u128(net.network()),
            last: to_u128(net.broadcast()),
        }
    }

    fn covers(&self, net: &IpNet) -> bool {
        let other = Span::of(net);
        self.v4 == other.v4 && self.first <= other.first && other.last <= self.last
    }
}

/// What the table holds now, for CHECK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// The elements of `pods_v4` and `pods_v6`.
    pub pods: Vec<Span>,
    /// The elements of `direct_v4` and `direct_v6`.
    pub direct: Vec<Span>,
    /// How many masquerade rules the postrouting chain has (two when intact).
    pub rules: usize,
}

impl Current {
    pub fn masquerades(&self, net: &IpNet) -> bool {
        self.pods.iter().any(|span| span.covers(net))
    }

    pub fn reaches_directly(&self, net: &IpNet) -> bool {
        self.direct.iter().any(|span| span.covers(net))
    }

    /// Whether `subnets` are masqueraded and reached directly, and `direct` reached directly.
    pub fn holds(&self, subnets: &[IpNet], direct: &[IpNet]) -> bool {
        subnets
            .iter()
            .all(|net| self.masquerades(net) && self.reaches_directly(net))
            && direct.iter().all(|net| self.reaches_directly(net))
    }
}

/// The table's state now; `None` when the table is missing.
pub fn current() -> Result<Option<Current>> {
    let output = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| {
            CniError::new(
                Code::System,
                format!("running nft (is nftables installed?): {err}"),
            )
        })?;
    if !output.status.success() {
        return Ok(None);
    }
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|err| CniError::new(Code::System, format!("reading nft's JSON: {err}")))?;
    let mut current = Current::default();
    for item in listing["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        if rule["chain"] == "postrouting"
            && rule["expr"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x.get("masquerade").is_some()))
        {
            current.rules += 1;
        }
        let set = &item["set"];
        let into = match set["name"].as_str() {
            Some("pods_v4" | "pods_v6") => &mut current.pods,
            Some("direct_v4" | "direct_v6") => &mut current.direct,
            _ => continue,
        };
        into.extend(
            set["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(span),
        );
    }
    Ok(Some(current))
}

/// One element as `nft -j` prints it: an address, `{"prefix": …}` or `{"range": [a, b]}`.
fn span(element: &serde_json::Value) -> Option<Span> {
    let address = |value: &serde_json::Value| value.as_str()?.parse::<IpAddr>().ok();
    if let Some(ip) = address(element) {
        return Some(Span::of(&IpNet::from(ip)));
    }
    let prefix = &element["prefix"];
    if let (Some(ip), Some(len)) = (address(&prefix["addr"]), prefix["len"].as_u64()) {
        return IpNet::new(ip, u8::try_from(len).ok()?)
            .ok()
            .map(|net| Span::of(&net));
    }
    let range = element["range"].as_array()?;
    let (first, last) = (address(range.first()?)?, address(range.get(1)?)?);
    Some(Span {
        v4: first.is_ipv4(),
        first: to_u128(first),
        last: to_u128(last),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_scripts_are_idempotent_and_name_only_their_table() {
        let pods = [
            "10.22.0.5/24".parse().unwrap(),
            "fd00::7/64".parse().unwrap(),
        ];
        let cluster = ["10.22.0.0/16".parse().unwrap()];
        let script = ensure_script(&pods, &cluster);
        assert!(script.contains("add element inet netd-cni pods_v4 { 10.22.0.0/24 }"));
        assert!(script.contains("add element inet netd-cni direct_v4 { 10.22.0.0/16 }"));
        assert!(script.contains("add element inet netd-cni pods_v6 { fd00::/64 }"));
        for line in script.lines() {
            assert!(
                line.contains(" inet netd-cni"),
                "{line} touches another table"
            );
            assert!(
                !line.starts_with("flush ruleset") && !line.starts_with("delete"),
                "{line}"
            );
        }
        assert!(
            !script.contains("direct_v4 { 10.22.0.0/24 }"),
            "inside 10.22.0.0/16:\n{script}"
        );
        assert!(ensure_script(&pods, &cluster).ends_with(&elements_script(&pods, &cluster)));
    }

    #[test]
    fn elements_are_read_in_every_shape_nft_prints() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let prefix = span(&json!({"prefix": {"addr": "10.22.0.0", "len": 16}})).unwrap();
        assert!(prefix.covers(&net("10.22.4.0/24")) && !prefix.covers(&net("10.23.0.0/24")));
        let range = span(&json!({"range": ["10.0.0.0", "10.0.1.255"]})).unwrap();
        assert!(range.covers(&net("10.0.1.0/24")) && !range.covers(&net("10.0.0.0/16")));
        let single = span(&json!("fd00::1")).unwrap();
        assert!(single.covers(&net("fd00::1/128")) && !single.covers(&net("10.0.0.1/32")));
    }
}
