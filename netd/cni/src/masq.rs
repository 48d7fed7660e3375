//! Masquerading of pod traffic that leaves the pod networks (`ipMasq`), in one nftables table
//! the plugin owns and nothing else touches:
//!
//! ```text
//! table inet netd-cni {
//!     set masq_v4 { type ipv4_addr; flags interval; elements = { 10.22.0.0/16 } }
//!     set masq_v6 { type ipv6_addr; flags interval; elements = { fd00:22::/64 } }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr @masq_v4 ip daddr != @masq_v4 ip daddr != 224.0.0.0/4 masquerade
//!         ip6 saddr @masq_v6 ip6 daddr != @masq_v6 ip6 daddr != ff00::/8 masquerade
//!     }
//! }
//! ```
//!
//! The sets hold the subnets of every network with `ipMasq`; the rules do not depend on any one
//! network. An ADD first only adds its subnets to the sets ([`elements_script`]): once the
//! table exists that is all there is to do, and it costs a third of rewriting the base chain
//! (each commit that touches a base chain waits for the kernel to swap its hooks, about 10 ms).
//! When the sets are missing, the full [`ensure_script`] creates the table, sets and rules and
//! adds the subnets. Both are idempotent and the same whoever runs them, so concurrent ADDs are
//! safe (the kernel serialises nftables transactions). Traffic between pods, on this node or another in the same subnets,
//! keeps its source address; only traffic to the world outside takes the node's.
//!
//! A subnet stays in the set when its last pod goes, as the bridge and its gateway address stay:
//! the rules are the network's, not a pod's.

use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::protocol::{CniError, Code, Result};

/// The table this plugin owns.
pub const TABLE: &str = "netd-cni";

/// The transaction that adds `subnets` to the sets; it fails when the sets do not exist.
pub fn elements_script(subnets: &[IpNet]) -> String {
    let mut script = String::new();
    for subnet in subnets {
        let set = if subnet.addr().is_ipv4() {
            "masq_v4"
        } else {
            "masq_v6"
        };
        script.push_str(&format!(
            "add element inet {TABLE} {set} {{ {} }}\n",
            subnet.trunc()
        ));
    }
    script
}

/// Makes sure `subnets` are masqueraded: the subnets alone when the table is in place, the
/// whole table otherwise.
pub fn ensure(subnets: &[IpNet]) -> Result<()> {
    if apply(&elements_script(subnets)).is_ok() {
        return Ok(());
    }
    apply(&ensure_script(subnets))
}

/// The transaction that creates the table, sets and rules and adds `subnets`.
pub fn ensure_script(subnets: &[IpNet]) -> String {
    let mut script = format!(
        "add table inet {TABLE}\n\
         add set inet {TABLE} masq_v4 {{ type ipv4_addr; flags interval; }}\n\
         add set inet {TABLE} masq_v6 {{ type ipv6_addr; flags interval; }}\n\
         add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {TABLE} postrouting\n\
         add rule inet {TABLE} postrouting ip saddr @masq_v4 ip daddr != @masq_v4 ip daddr != 224.0.0.0/4 masquerade\n\
         add rule inet {TABLE} postrouting ip6 saddr @masq_v6 ip6 daddr != @masq_v6 ip6 daddr != ff00::/8 masquerade\n"
    );
    script.push_str(&elements_script(subnets));
    script
}

/// Applies `script` with `nft -f -`, as one atomic transaction.
pub fn apply(script: &str) -> Result<()> {
    let mut nft = Command::new("nft");
    nft.args(["-f", "-"]).stderr(Stdio::piped());
    let output = crate::run_with_input(&mut nft, script.as_bytes()).map_err(|err| {
        CniError::new(
            Code::System,
            format!("running nft for ipMasq (is nftables installed?): {err}"),
        )
    })?;
    if !output.status.success() {
        return Err(CniError::new(
            Code::System,
            format!(
                "nft refused the masquerade rules ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// What the table holds now, for CHECK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// The subnets in the sets.
    pub subnets: Vec<IpNet>,
    /// How many masquerade rules the postrouting chain has (two when intact).
    pub rules: usize,
}

/// The table's state now; `None` when the table is missing.
pub fn current() -> Result<Option<Current>> {
    let output = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| CniError::new(Code::System, format!("running nft: {err}")))?;
    if !output.status.success() {
        return Ok(None);
    }
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|err| CniError::new(Code::System, format!("reading nft's JSON: {err}")))?;
    let mut subnets = Vec::new();
    let mut rules = 0;
    let items = listing["nftables"].as_array().cloned().unwrap_or_default();
    for item in items {
        let rule = &item["rule"];
        if rule["chain"] == "postrouting"
            && rule["expr"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x.get("masquerade").is_some()))
        {
            rules += 1;
        }
        let Some(elements) = item["set"]["elem"].as_array() else {
            continue;
        };
        for element in elements {
            let prefix = &element["prefix"];
            let text = format!(
                "{}/{}",
                prefix["addr"].as_str().unwrap_or(""),
                prefix["len"]
            );
            if let Ok(net) = text.parse::<IpNet>() {
                subnets.push(net);
            } else if let Some(single) = element
                .as_str()
                .and_then(|s| s.parse::<std::net::IpAddr>().ok())
            {
                subnets.push(IpNet::from(single));
            }
        }
    }
    Ok(Some(Current { subnets, rules }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_idempotent_and_names_only_its_table() {
        let script = ensure_script(&[
            "10.22.0.5/16".parse().unwrap(),
            "fd00::7/64".parse().unwrap(),
        ]);
        assert!(script.contains("add element inet netd-cni masq_v4 { 10.22.0.0/16 }"));
        assert!(script.contains("add element inet netd-cni masq_v6 { fd00::/64 }"));
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
    }
}
