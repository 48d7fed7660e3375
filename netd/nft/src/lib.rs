//! `netd-nft`: the nftables side of the node daemons, as a pure library.
//!
//! A daemon owns exactly one table. It builds the whole [`Table`] it wants from its snapshot
//! (chains with their rules as nft text, sets and maps with their elements), and this crate
//! turns that into `nft -f` scripts:
//!
//! ```text
//!  snapshot ─▶ planner (proxy, policy) ─▶ Table (wanted)
//!                                            │
//!              Table (applied last) ─────────┤ diff()      render()  (first sync, or repair)
//!                                            ▼
//!                                   one nft transaction ─▶ Applier (nft -f -, or a recorder)
//! ```
//!
//! [`diff`] writes only what changed: new chains and sets, rewritten chains (flushed and
//! refilled), element additions and removals, and stale chains and sets removed last. It
//! touches no other table, and what it writes is one atomic transaction, so packets see the old
//! ruleset or the new one, never a mix. Everything is ordered (B-tree maps), so the same table
//! renders to the same text byte for byte, which golden tests rely on.
//!
//! Rules are nft's own text (`ip daddr 10.96.0.1 tcp dport 80 goto svc-abc`): the model does
//! not parse expressions, in the manner of kubernetes-sigs/knftables. Names of chains, sets and
//! maps are checked (letters, digits, `_`, `-`, `.`, `/`), so a name can never change a
//! script's meaning.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// A base chain's hook: `type nat hook prerouting priority dstnat; policy accept;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter`, `nat` or `route`.
    pub kind: String,
    /// `prerouting`, `input`, `forward`, `output`, `postrouting`.
    pub hook: String,
    /// A number or a standard name (`dstnat`, `srcnat`, `filter`, `filter - 10`).
    pub priority: String,
    /// `accept` or `drop`.
    pub policy: String,
}

impl Hook {
    /// `Hook::new("nat", "prerouting", "dstnat", "accept")`.
    pub fn new(kind: &str, hook: &str, priority: &str, policy: &str) -> Hook {
        Hook {
            kind: kind.to_string(),
            hook: hook.to_string(),
            priority: priority.to_string(),
            policy: policy.to_string(),
        }
    }
}

/// A chain: a hook (for a base chain) and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    pub hook: Option<Hook>,
    pub rules: Vec<String>,
}

/// A set (`elements` are keys) or a map (`elements` are keys with values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// `ipv4_addr`, `ipv4_addr . inet_proto . inet_service`, ...
    pub key: String,
    /// For a map: `verdict`, `ipv4_addr`, ...; `None` for a set.
    pub value: Option<String>,
    /// `interval`, `timeout`, `dynamic`, ...
    pub flags: Vec<String>,
    /// `timeout 10800s` for sets whose elements expire (session affinity).
    pub timeout: Option<String>,
    /// Key (as nft text) to value (as nft text; empty for a set).
    pub elements: BTreeMap<String, String>,
}

impl Set {
    /// A set of `key`s.
    pub fn of(key: impl Into<String>) -> Set {
        Set {
            key: key.into(),
            value: None,
            flags: Vec::new(),
            timeout: None,
            elements: BTreeMap::new(),
        }
    }

    /// A map from `key` to `value`.
    pub fn map(key: impl Into<String>, value: impl Into<String>) -> Set {
        Set {
            value: Some(value.into()),
            ..Set::of(key)
        }
    }

    fn kind(&self) -> &'static str {
        if self.value.is_some() { "map" } else { "set" }
    }

    /// Whether two definitions differ in anything but their elements (then the set must be
    /// recreated, as nft cannot change a set's type).
    fn same_shape(&self, other: &Set) -> bool {
        let sorted = |flags: &[String]| {
            let mut flags = flags.to_vec();
            flags.sort();
            flags
        };
        self.key == other.key
            && self.value == other.value
            && sorted(&self.flags) == sorted(&other.flags)
            && self.timeout == other.timeout
    }

    fn is_interval(&self) -> bool {
        self.flags.iter().any(|f| f == "interval")
    }

    fn element(&self, key: &str) -> String {
        match (&self.value, self.elements.get(key)) {
            (Some(_), Some(value)) => format!("{key} : {value}"),
            _ => key.to_string(),
        }
    }
}

/// The one table a daemon owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
}

/// A name that cannot be used in a script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} name {name:?} must be 1 to 240 letters, digits, '_', '-', '.' or '/', starting with a letter"
)]
pub struct BadName {
    pub what: &'static str,
    pub name: String,
}

fn check_name(what: &'static str, name: &str) -> Result<(), BadName> {
    // nft's identifiers: a letter, then letters, digits, '_', '-', '.' or '/' (kube-proxy's
    // chain names carry `ns/svc/proto/port`); nft allows 256 bytes, 240 leaves room.
    let ok = (1..=240).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(BadName {
            what,
            name: name.to_string(),
        })
    }
}

impl Table {
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table {
            family,
            name: name.into(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    /// Checks every name in the table.
    pub fn validate(&self) -> Result<(), BadName> {
        check_name("table", &self.name)?;
        for name in self.chains.keys() {
            check_name("chain", name)?;
        }
        for name in self.sets.keys() {
            check_name("set", name)?;
        }
        Ok(())
    }

    fn prefix(&self) -> String {
        format!("{} {}", self.family.as_str(), self.name)
    }

    /// How many rules and elements the table holds, for metrics and benchmarks.
    pub fn counts(&self) -> Counts {
        Counts {
            chains: self.chains.len(),
            rules: self.chains.values().map(|c| c.rules.len()).sum(),
            sets: self.sets.len(),
            elements: self.sets.values().map(|s| s.elements.len()).sum(),
        }
    }
}

/// Sizes of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub chains: usize,
    pub rules: usize,
    pub sets: usize,
    pub elements: usize,
}

fn chain_line(out: &mut String, prefix: &str, name: &str, chain: &Chain) {
    match &chain.hook {
        Some(h) => {
            let _ = writeln!(
                out,
                "add chain {prefix} {name} {{ type {} hook {} priority {}; policy {}; }}",
                h.kind, h.hook, h.priority, h.policy
            );
        }
        None => {
            let _ = writeln!(out, "add chain {prefix} {name}");
        }
    }
}

fn set_line(out: &mut String, prefix: &str, name: &str, set: &Set) {
    let kind = set.kind();
    let mut spec = match &set.value {
        Some(value) => format!("type {} : {value};", set.key),
        None => format!("type {};", set.key),
    };
    if !set.flags.is_empty() {
        let _ = write!(spec, " flags {};", set.flags.join(","));
    }
    if let Some(timeout) = &set.timeout {
        let _ = write!(spec, " timeout {timeout};");
    }
    let _ = writeln!(out, "add {kind} {prefix} {name} {{ {spec} }}");
}

fn rules_lines(out: &mut String, prefix: &str, name: &str, chain: &Chain) {
    let _ = writeln!(out, "flush chain {prefix} {name}");
    for rule in &chain.rules {
        let _ = writeln!(out, "add rule {prefix} {name} {rule}");
    }
}

/// Elements go in batches: one `add element` per this many, to keep lines short.
const ELEMENTS_PER_LINE: usize = 256;

fn element_lines(out: &mut String, verb: &str, prefix: &str, name: &str, elements: &[String]) {
    for batch in elements.chunks(ELEMENTS_PER_LINE) {
        let _ = writeln!(
            out,
            "{verb} element {prefix} {name} {{ {} }}",
            batch.join(", ")
        );
    }
}

/// The transaction that makes the table exactly `table`, whatever is there now: the table is
/// created if missing, then deleted and created again in the same transaction (dropping what
/// the daemon no longer wants, and what anyone else added), then filled. Use it for the first
/// sync and to repair; [`diff`] for every change after that.
pub fn render(table: &Table) -> Result<String, BadName> {
    table.validate()?;
    let prefix = table.prefix();
    let mut out = String::new();
    let _ = writeln!(out, "add table {prefix}");
    let _ = writeln!(out, "delete table {prefix}");
    let _ = writeln!(out, "add table {prefix}");
    // Chains first (jumps in rules and verdict maps need them), then sets, rules, elements.
    for (name, chain) in &table.chains {
        chain_line(&mut out, &prefix, name, chain);
    }
    for (name, set) in &table.sets {
        set_line(&mut out, &prefix, name, set);
    }
    for (name, chain) in &table.chains {
        for rule in &chain.rules {
            let _ = writeln!(out, "add rule {prefix} {name} {rule}");
        }
    }
    for (name, set) in &table.sets {
        let elements: Vec<String> = set.elements.keys().map(|k| set.element(k)).collect();
        element_lines(&mut out, "add", &prefix, name, &elements);
    }
    Ok(out)
}

/// The transaction that turns table `old` (applied last) into `new`, writing only what
/// changed; empty when nothing did. Both must be the same table.
pub fn diff(old: &Table, new: &Table) -> Result<String, BadName> {
    new.validate()?;
    assert_eq!(
        (old.family, &old.name),
        (new.family, &new.name),
        "diff of two different tables"
    );
    let prefix = new.prefix();
    let mut out = String::new();
    // New chains, and base chains whose hook changed, are (re)declared first.
    let mut recreated_chains = BTreeSet::new();
    for (name, chain) in &new.chains {
        match old.chains.get(name) {
            None => chain_line(&mut out, &prefix, name, chain),
            Some(before) if before.hook != chain.hook => {
                recreated_chains.insert(name.clone());
            }
            Some(_) => {}
        }
    }
    // Sets whose shape changed are deleted and created again; their elements are all new.
    let mut recreated_sets = BTreeSet::new();
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => set_line(&mut out, &prefix, name, set),
            Some(before) if !before.same_shape(set) => {
                recreated_sets.insert(name.clone());
            }
            Some(_) => {}
        }
    }
    // A set or chain can only be deleted once no rule refers to it: the chains that do are
    // flushed first (and refilled below from `new`).
    let referrers: BTreeSet<String> = old
        .chains
        .iter()
        .filter(|(name, chain)| {
            !recreated_chains.contains(*name)
                && chain.rules.iter().any(|rule| {
                    recreated_sets
                        .iter()
                        .any(|set| refers(rule, &format!("@{set}")))
                        || recreated_chains.iter().any(|target| {
                            refers(rule, &format!("jump {target}"))
                                || refers(rule, &format!("goto {target}"))
                        })
                })
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in &referrers {
        let _ = writeln!(out, "flush chain {prefix} {name}");
    }
    for name in &recreated_chains {
        let _ = writeln!(out, "flush chain {prefix} {name}");
        let _ = writeln!(out, "delete chain {prefix} {name}");
        chain_line(&mut out, &prefix, name, &new.chains[name]);
    }
    for name in &recreated_sets {
        let _ = writeln!(out, "delete {} {prefix} {name}", old.sets[name].kind());
        set_line(&mut out, &prefix, name, &new.sets[name]);
    }
    // Element additions before rules: a rule may match a set only once its members are there.
    for (name, set) in &new.sets {
        let before = old
            .sets
            .get(name)
            .filter(|_| !recreated_sets.contains(name));
        // In an interval set, a new range may cover old elements, and nft refuses overlaps
        // even within one transaction: those sets lose their old elements first.
        if let Some(before) = before.filter(|_| set.is_interval()) {
            element_lines(&mut out, "delete", &prefix, name, &removed(before, set));
        }
        let added: Vec<String> = set
            .elements
            .iter()
            .filter(|(key, value)| before.is_none_or(|b| b.elements.get(*key) != Some(*value)))
            .map(|(key, _)| set.element(key))
            .collect();
        // A map element whose value changed is removed, then added again.
        if let Some(before) = before {
            let changed: Vec<String> = set
                .elements
                .iter()
                .filter(|(key, value)| before.elements.get(*key).is_some_and(|v| v != *value))
                .map(|(key, _)| key.clone())
                .collect();
            element_lines(&mut out, "delete", &prefix, name, &changed);
        }
        element_lines(&mut out, "add", &prefix, name, &added);
    }
    // Chains whose rules changed are rewritten whole.
    for (name, chain) in &new.chains {
        let before = old
            .chains
            .get(name)
            .filter(|_| !recreated_chains.contains(name) && !referrers.contains(name));
        if before.is_none_or(|b| b.rules != chain.rules) {
            if before.is_none() && chain.rules.is_empty() {
                continue;
            }
            rules_lines(&mut out, &prefix, name, chain);
        }
    }
    // Removals last, once nothing refers to what goes.
    for (name, set) in &new.sets {
        let Some(before) = old
            .sets
            .get(name)
            .filter(|_| !recreated_sets.contains(name) && !set.is_interval())
        else {
            continue;
        };
        element_lines(&mut out, "delete", &prefix, name, &removed(before, set));
    }
    // Stale chains may jump to each other (a service chain's numgen vmap to its endpoint
    // chains): all are flushed before any is deleted, so none is still referenced.
    let stale: Vec<(&String, &Chain)> = old
        .chains
        .iter()
        .filter(|(name, _)| !new.chains.contains_key(*name))
        .collect();
    for (name, chain) in &stale {
        if !chain.rules.is_empty() && !referrers.contains(*name) {
            let _ = writeln!(out, "flush chain {prefix} {name}");
        }
    }
    // Stale maps go before stale chains: a map's elements may still name those chains.
    for (name, set) in &old.sets {
        if !new.sets.contains_key(name) {
            let _ = writeln!(out, "delete {} {prefix} {name}", set.kind());
        }
    }
    for (name, _) in &stale {
        let _ = writeln!(out, "delete chain {prefix} {name}");
    }
    Ok(out)
}

/// The keys of `before` that `after` no longer has.
fn removed(before: &Set, after: &Set) -> Vec<String> {
    before
        .elements
        .keys()
        .filter(|key| !after.elements.contains_key(*key))
        .cloned()
        .collect()
}

/// Whether `rule` mentions `token` as a whole word (`@affinity-x`, not `@affinity-xy`).
fn refers(rule: &str, token: &str) -> bool {
    rule.match_indices(token).any(|(at, _)| {
        let after = rule[at + token.len()..].chars().next();
        after.is_none_or(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
    })
}

/// Applies a transaction.
pub trait Applier {
    fn apply(&mut self, script: &str) -> Result<(), ApplyError>;
}

/// Why a transaction was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running nft: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nft refused the transaction ({status}): {stderr}")]
    Refused { status: String, stderr: String },
}

/// The real applier: `nft -f -`, one atomic transaction per call, in this process's network
/// namespace or (for tests and benchmarks) in a named one (`ip netns exec NAME nft -f -`).
#[derive(Debug, Default, Clone)]
pub struct Nft {
    netns: Option<String>,
}

impl Nft {
    /// Applies in the named network namespace (`/run/netns/NAME`).
    pub fn in_netns(name: impl Into<String>) -> Nft {
        Nft {
            netns: Some(name.into()),
        }
    }
}

impl Applier for Nft {
    fn apply(&mut self, script: &str) -> Result<(), ApplyError> {
        if script.is_empty() {
            return Ok(());
        }
        let mut command = match &self.netns {
            Some(name) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name, "nft"]);
                command
            }
            None => Command::new("nft"),
        };
        let mut child = command
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            // nft answers through its status if it stops reading early.
            let _ = stdin.write_all(script.as_bytes());
        }
        let output = child.wait_with_output()?;
        if output.status.success() {
            return Ok(());
        }
        Err(ApplyError::Refused {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// A fake for unit tests: keeps every transaction it is given.
#[derive(Debug, Default)]
pub struct Recorder {
    pub scripts: Vec<String>,
}

impl Applier for Recorder {
    fn apply(&mut self, script: &str) -> Result<(), ApplyError> {
        self.scripts.push(script.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(Family::Inet, "netd-proxy");
        t.chains.insert(
            "prerouting".into(),
            Chain {
                hook: Some(Hook::new("nat", "prerouting", "dstnat", "accept")),
                rules: vec!["ip daddr . meta l4proto . th dport vmap @services".into()],
            },
        );
        t.chains.insert(
            "svc-a".into(),
            Chain {
                hook: None,
                rules: vec!["dnat ip to 10.0.0.1:80".into()],
            },
        );
        let mut services = Set::map("ipv4_addr . inet_proto . inet_service", "verdict");
        services
            .elements
            .insert("10.96.0.1 . tcp . 80".into(), "goto svc-a".into());
        t.sets.insert("services".into(), services);
        t
    }

    #[test]
    fn a_full_render_declares_chains_then_sets_then_rules_then_elements() {
        let script = render(&sample()).unwrap();
        assert_eq!(
            script,
            "add table inet netd-proxy\n\
             delete table inet netd-proxy\n\
             add table inet netd-proxy\n\
             add chain inet netd-proxy prerouting { type nat hook prerouting priority dstnat; policy accept; }\n\
             add chain inet netd-proxy svc-a\n\
             add map inet netd-proxy services { type ipv4_addr . inet_proto . inet_service : verdict; }\n\
             add rule inet netd-proxy prerouting ip daddr . meta l4proto . th dport vmap @services\n\
             add rule inet netd-proxy svc-a dnat ip to 10.0.0.1:80\n\
             add element inet netd-proxy services { 10.96.0.1 . tcp . 80 : goto svc-a }\n"
        );
        assert_eq!(render(&sample()).unwrap(), script, "deterministic");
    }

    #[test]
    fn a_diff_writes_only_what_changed_and_removes_last() {
        let old = sample();
        assert_eq!(
            diff(&old, &old).unwrap(),
            "",
            "nothing changed, nothing written"
        );
        let mut new = old.clone();
        new.chains.remove("svc-a");
        new.chains.insert(
            "svc-b".into(),
            Chain {
                hook: None,
                rules: vec!["dnat ip to 10.0.0.2:80".into()],
            },
        );
        let services = new.sets.get_mut("services").unwrap();
        services.elements.clear();
        services
            .elements
            .insert("10.96.0.2 . tcp . 80".into(), "goto svc-b".into());
        assert_eq!(
            diff(&old, &new).unwrap(),
            "add chain inet netd-proxy svc-b\n\
             add element inet netd-proxy services { 10.96.0.2 . tcp . 80 : goto svc-b }\n\
             flush chain inet netd-proxy svc-b\n\
             add rule inet netd-proxy svc-b dnat ip to 10.0.0.2:80\n\
             delete element inet netd-proxy services { 10.96.0.1 . tcp . 80 }\n\
             flush chain inet netd-proxy svc-a\n\
             delete chain inet netd-proxy svc-a\n"
        );
    }

    #[test]
    fn a_changed_map_value_is_replaced_and_a_changed_set_type_recreated() {
        let old = sample();
        let mut new = old.clone();
        new.sets
            .get_mut("services")
            .unwrap()
            .elements
            .insert("10.96.0.1 . tcp . 80".into(), "drop".into());
        let script = diff(&old, &new).unwrap();
        assert_eq!(
            script,
            "delete element inet netd-proxy services { 10.96.0.1 . tcp . 80 }\n\
             add element inet netd-proxy services { 10.96.0.1 . tcp . 80 : drop }\n"
        );
        let mut retyped = old.clone();
        retyped.sets.get_mut("services").unwrap().flags = vec!["interval".into()];
        let script = diff(&old, &retyped).unwrap();
        // The chain whose rule uses the map is flushed before the map goes, and refilled after.
        assert_eq!(
            script,
            "flush chain inet netd-proxy prerouting\n\
             delete map inet netd-proxy services\n\
             add map inet netd-proxy services { type ipv4_addr . inet_proto . inet_service : verdict; flags interval; }\n\
             add element inet netd-proxy services { 10.96.0.1 . tcp . 80 : goto svc-a }\n\
             flush chain inet netd-proxy prerouting\n\
             add rule inet netd-proxy prerouting ip daddr . meta l4proto . th dport vmap @services\n"
        );
        assert!(!refers("update @affinity-xy { ip saddr }", "@affinity-x"));
        assert!(refers("update @affinity-x { ip saddr }", "@affinity-x"));
    }

    #[test]
    fn stale_chains_are_all_flushed_before_any_is_deleted() {
        let mut old = Table::new(Family::Inet, "t");
        old.chains.insert(
            "a-endpoint".into(),
            Chain {
                hook: None,
                rules: vec!["accept".into()],
            },
        );
        old.chains.insert(
            "b-service".into(),
            Chain {
                hook: None,
                rules: vec!["numgen random mod 1 vmap { 0 : goto a-endpoint }".into()],
            },
        );
        let new = Table::new(Family::Inet, "t");
        assert_eq!(
            diff(&old, &new).unwrap(),
            "flush chain inet t a-endpoint\n\
             flush chain inet t b-service\n\
             delete chain inet t a-endpoint\n\
             delete chain inet t b-service\n"
        );
    }

    #[test]
    fn names_that_could_change_a_script_are_refused() {
        let mut bad = sample();
        bad.chains
            .insert("x; flush ruleset".into(), Chain::default());
        assert!(render(&bad).is_err());
        assert!(diff(&sample(), &bad).is_err());
    }

    #[test]
    fn the_recorder_keeps_transactions_and_counts_add_up() {
        let mut recorder = Recorder::default();
        recorder.apply(&render(&sample()).unwrap()).unwrap();
        assert_eq!(recorder.scripts.len(), 1);
        assert_eq!(
            sample().counts(),
            Counts {
                chains: 2,
                rules: 2,
                sets: 1,
                elements: 1
            }
        );
    }
}
