//! The network configuration on stdin: the reference `bridge` plugin's fields and the
//! `host-local` allocator's `ipam` section, in one plugin.
//!
//! Decoding is in two steps, as the rest of the project does it: serde reads the raw shape
//! (a type error names the field: code 6), then [`NetConf::from_json`] checks what the values
//! mean (a subnet with host bits, a gateway outside its subnet, overlapping ranges: code 7).
//! Fields of the reference bridge plugin that this plugin does not implement are refused with
//! code 2 when set, rather than silently ignored.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::protocol::{CniError, Code, Dns, Result, Route, Success, invalid_config};

/// The binary's name, which an `ipam.type` may name to mean the built-in allocator.
pub const PLUGIN_NAME: &str = "netd-cni";

/// Where allocations live unless `ipam.dataDir` says otherwise: the same place, and the same
/// layout, as the reference `host-local` plugin.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub ip_masq: bool,
    /// Destinations reached without masquerading besides the pod subnets: the cluster's pod
    /// network, so pods on other nodes see a pod's own address.
    pub non_masquerade_cidrs: Vec<IpNet>,
    pub hairpin_mode: bool,
    pub mtu: Option<u32>,
    pub ipam: Ipam,
    pub dns: Dns,
    pub prev_result: Option<Success>,
    /// GC: the attachments that are still valid.
    pub valid_attachments: Option<Vec<Attachment>>,
    pub log_file: Option<PathBuf>,
}

/// Where addresses come from.
#[derive(Debug, Clone)]
pub enum Ipam {
    /// No `ipam` section: a layer-2 attachment (interfaces up, no addresses), as `bridge` does.
    None,
    /// `ipam.type` absent or naming this plugin.
    Builtin(IpamConfig),
    /// `ipam.type` naming another plugin, found through `CNI_PATH`.
    Delegate(String),
}

/// The built-in allocator's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// One range set per entry; addresses are taken from every set (one per family gives a
    /// dual-stack pod).
    pub range_sets: Vec<Vec<Range>>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    /// How long an operation waits for the store's lock before answering "try again later"
    /// (code 11).
    pub lock_wait: Duration,
}

/// A pool of addresses in one subnet, bounds inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// An entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default, rename = "nonMasqueradeCIDRs")]
    non_masquerade_cidrs: Vec<IpNet>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(default)]
    log_file: Option<PathBuf>,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

/// The built-in `ipam` section. Its single-range shorthand repeats [`RawRange`]'s fields: serde's
/// `flatten` cannot be combined with `deny_unknown_fields`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawIpam {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    subnet: Option<IpNet>,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    lock_wait_seconds: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRange {
    subnet: IpNet,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

/// Fields of the reference bridge plugin that this plugin does not implement. Set to anything
/// but their default they are refused (code 2), naming the key and the value.
const UNSUPPORTED: [&str; 8] = [
    "forceAddress",
    "promiscMode",
    "vlan",
    "vlanTrunk",
    "macspoofchk",
    "enabledad",
    "disableContainerInterface",
    "portIsolation",
];

/// Decodes `value` as `T`, naming the field that failed (`ipam.ranges[0][0].subnet: ...`).
fn decode<T: for<'de> Deserialize<'de>>(value: &Value, prefix: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = match (prefix.is_empty(), path.as_str()) {
            (_, ".") => prefix.to_string(),
            (true, _) => path,
            (false, _) => format!("{prefix}.{path}"),
        };
        let field = if field.is_empty() {
            "configuration".to_string()
        } else {
            field
        };
        CniError::new(Code::Decode, format!("{field}: {}", err.inner()))
    })
}

/// Reads the bytes of stdin as a JSON object.
pub fn parse_json(stdin: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(stdin).map_err(|err| {
        CniError::new(
            Code::Decode,
            format!("stdin is not a JSON network configuration: {err}"),
        )
    })?;
    if !value.is_object() {
        return Err(CniError::new(
            Code::Decode,
            "stdin is JSON but not an object",
        ));
    }
    Ok(value)
}

/// The configuration's `cniVersion`, when it has one, for error objects.
pub fn version_of(value: &Value) -> Option<&str> {
    value
        .get("cniVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
}

impl NetConf {
    pub fn from_json(value: &Value) -> Result<Self> {
        let raw: RawConf = decode(value, "")?;
        if raw.cni_version.is_empty() {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "cniVersion is missing from the configuration",
            ));
        }
        valid_network_name(&raw.name)?;
        for key in UNSUPPORTED {
            if let Some(set) = value.get(key).filter(|v| !is_default(v)) {
                return Err(CniError::new(
                    Code::UnsupportedField,
                    format!("{key}: {set} is not supported by {PLUGIN_NAME}"),
                ));
            }
        }
        if let Some(backend) = raw.ip_masq_backend.filter(|b| b != "nftables") {
            return Err(CniError::new(
                Code::UnsupportedField,
                format!("ipMasqBackend: {backend:?} is not supported; masquerading uses nftables"),
            ));
        }
        if raw.bridge.is_empty() || raw.bridge.len() > 15 || raw.bridge.contains(['/', ' ']) {
            return Err(invalid_config(format!(
                "bridge: {:?} is not a valid interface name (1 to 15 bytes, no '/' or space)",
                raw.bridge
            )));
        }
        let mtu = match raw.mtu {
            0 => None,
            mtu @ 68..=65535 => Some(mtu),
            other => return Err(invalid_config(format!("mtu: {other} is outside 68..65535"))),
        };
        let ipam = match &raw.ipam {
            None => Ipam::None,
            Some(Value::Object(map)) if map.is_empty() => Ipam::None,
            Some(section) => parse_ipam(section)?,
        };
        let prev_result = match &raw.prev_result {
            None | Some(Value::Null) => None,
            Some(prev) => Some(
                Success::parse(prev)
                    .map_err(|err| CniError::new(Code::Decode, format!("prevResult: {err}")))?,
            ),
        };
        Ok(NetConf {
            cni_version: raw.cni_version,
            name: raw.name,
            bridge: raw.bridge,
            // isDefaultGateway implies isGateway, as in the reference plugin.
            is_gateway: raw.is_gateway || raw.is_default_gateway,
            is_default_gateway: raw.is_default_gateway,
            ip_masq: raw.ip_masq,
            non_masquerade_cidrs: raw.non_masquerade_cidrs.iter().map(IpNet::trunc).collect(),
            hairpin_mode: raw.hairpin_mode,
            mtu,
            ipam,
            dns: raw.dns.unwrap_or_default(),
            prev_result,
            valid_attachments: raw.valid_attachments,
            log_file: raw.log_file,
        })
    }
}

fn is_default(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// SPEC.md: the name "must start with an alphanumeric character, optionally followed by any
/// combination of one or more alphanumeric characters, underscore, dot or hyphen". It names the
/// allocation directory, so this also keeps it inside `dataDir`.
fn valid_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Ok(());
    }
    Err(invalid_config(format!(
        "name: {name:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
    )))
}

fn parse_ipam(section: &Value) -> Result<Ipam> {
    if let Some(kind) = section.get("type").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != PLUGIN_NAME
    {
        if kind.contains('/') {
            return Err(invalid_config(format!(
                "ipam.type: {kind:?} must be a file name"
            )));
        }
        return Ok(Ipam::Delegate(kind.to_string()));
    }
    let raw: RawIpam = decode(section, "ipam")?;
    debug_assert!(
        raw.kind
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == PLUGIN_NAME)
    );
    let mut raw_sets = raw.ranges;
    if let Some(subnet) = raw.subnet {
        let single = RawRange {
            subnet,
            range_start: raw.range_start,
            range_end: raw.range_end,
            gateway: raw.gateway,
        };
        raw_sets.insert(0, vec![single]);
    } else if raw.range_start.is_some() || raw.range_end.is_some() || raw.gateway.is_some() {
        return Err(invalid_config(
            "ipam: rangeStart, rangeEnd and gateway at the top of ipam need ipam.subnet",
        ));
    }
    if raw_sets.is_empty() {
        return Err(invalid_config(
            "ipam: no addresses to hand out; set ipam.ranges",
        ));
    }
    let mut range_sets = Vec::with_capacity(raw_sets.len());
    for (i, set) in raw_sets.into_iter().enumerate() {
        if set.is_empty() {
            return Err(invalid_config(format!(
                "ipam.ranges[{i}] is an empty range set"
            )));
        }
        let mut ranges: Vec<Range> = Vec::with_capacity(set.len());
        for (j, raw) in set.into_iter().enumerate() {
            let range = validate_range(raw)
                .map_err(|why| invalid_config(format!("ipam.ranges[{i}][{j}]: {why}")))?;
            if let Some(first) = ranges.first()
                && first.subnet.addr().is_ipv4() != range.subnet.addr().is_ipv4()
            {
                return Err(invalid_config(format!(
                    "ipam.ranges[{i}][{j}]: {} is not of the family of {}; one range set holds one family",
                    range.subnet, first.subnet
                )));
            }
            ranges.push(range);
        }
        range_sets.push(ranges);
    }
    for (i, a) in range_sets.iter().enumerate() {
        for (j, b) in range_sets.iter().enumerate().skip(i) {
            for (x, ra) in a.iter().enumerate() {
                for (y, rb) in b.iter().enumerate() {
                    if (i, x) < (j, y) && overlaps(ra, rb) {
                        return Err(invalid_config(format!(
                            "ipam.ranges[{i}][{x}] ({}-{}) overlaps ipam.ranges[{j}][{y}] ({}-{})",
                            ra.start, ra.end, rb.start, rb.end
                        )));
                    }
                }
            }
        }
    }
    let mut routes = raw.routes;
    for (i, route) in routes.iter_mut().enumerate() {
        if let Some((key, value)) = route.extra.iter().next() {
            return Err(CniError::new(
                Code::UnsupportedField,
                format!("ipam.routes[{i}].{key}: {value} is not supported by {PLUGIN_NAME}"),
            ));
        }
        // The kernel keeps a route's destination without host bits; so do the result and CHECK.
        route.dst = route.dst.trunc();
    }
    Ok(Ipam::Builtin(IpamConfig {
        range_sets,
        routes,
        data_dir: raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        lock_wait: lock_wait(raw.lock_wait_seconds)?,
    }))
}

/// The default wait for the store's lock: long enough for any number of ADDs queued behind
/// each other, short enough that a stuck holder surfaces as an error the runtime retries.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(20);

fn lock_wait(seconds: Option<f64>) -> Result<Duration> {
    match seconds {
        None => Ok(DEFAULT_LOCK_WAIT),
        Some(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(invalid_config(format!(
            "ipam.lockWaitSeconds: {s} is outside 0..3600"
        ))),
    }
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.subnet.addr().is_ipv4() == b.subnet.addr().is_ipv4()
        && to_u128(a.start) <= to_u128(b.end)
        && to_u128(b.start) <= to_u128(a.end)
}

/// An address as a number, for arithmetic on ranges.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `n` in the family of `like`.
pub fn from_u128(n: u128, like: IpAddr) -> IpAddr {
    match like {
        // Only called with numbers taken from IPv4 ranges.
        IpAddr::V4(_) => IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

fn validate_range(raw: RawRange) -> std::result::Result<Range, String> {
    let subnet = raw.subnet;
    if subnet.addr() != subnet.network() {
        return Err(format!(
            "subnet {subnet} has host bits set; the network is {}/{}",
            subnet.network(),
            subnet.prefix_len()
        ));
    }
    if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
        return Err(format!("subnet {subnet} is too small to allocate from"));
    }
    let network = to_u128(subnet.network());
    let last = to_u128(subnet.broadcast());
    let in_subnet = |what: &str, ip: IpAddr| {
        if subnet.contains(&ip) {
            Ok(ip)
        } else {
            Err(format!("{what} {ip} is not in subnet {subnet}"))
        }
    };
    let start = match raw.range_start {
        Some(ip) => in_subnet("rangeStart", ip)?,
        None => from_u128(network + 1, subnet.addr()),
    };
    let end = match raw.range_end {
        Some(ip) => in_subnet("rangeEnd", ip)?,
        // The broadcast address of an IPv4 subnet is never handed out.
        None if subnet.addr().is_ipv4() => from_u128(last - 1, subnet.addr()),
        None => from_u128(last, subnet.addr()),
    };
    if to_u128(start) > to_u128(end) {
        return Err(format!("rangeStart {start} is after rangeEnd {end}"));
    }
    let gateway = match raw.gateway {
        Some(ip) => in_subnet("gateway", ip)?,
        None => from_u128(network + 1, subnet.addr()),
    };
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conf(value: Value) -> Result<NetConf> {
        NetConf::from_json(&value)
    }

    fn builtin(value: Value) -> IpamConfig {
        match conf(value).map(|c| c.ipam) {
            Ok(Ipam::Builtin(ipam)) => ipam,
            other => panic!("not a built-in ipam: {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_reference_plugins() {
        let ipam = builtin(json!({
            "cniVersion": "1.1.0", "name": "pods", "type": "netd-cni",
            "ipam": {"ranges": [[{"subnet": "10.22.0.0/16"}], [{"subnet": "fd00:22::/64"}]]}
        }));
        let v4 = &ipam.range_sets[0][0];
        assert_eq!(v4.start.to_string(), "10.22.0.1");
        assert_eq!(v4.end.to_string(), "10.22.255.254");
        assert_eq!(v4.gateway.to_string(), "10.22.0.1");
        let v6 = &ipam.range_sets[1][0];
        assert_eq!(v6.end.to_string(), "fd00:22::ffff:ffff:ffff:ffff");
        assert_eq!(ipam.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let c = conf(json!({"cniVersion": "1.1.0", "name": "pods", "isDefaultGateway": true}));
        let c = c.unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(c.is_gateway, "isDefaultGateway implies isGateway");
        assert!(matches!(c.ipam, Ipam::None));
    }

    #[test]
    fn routes_are_kept_without_host_bits_and_their_1_1_fields_refused() {
        let ipam = builtin(json!({"cniVersion": "1.1.0", "name": "pods", "ipam": {
            "subnet": "10.22.0.0/24", "routes": [{"dst": "10.1.2.3/16"}]
        }}));
        assert_eq!(ipam.routes[0].dst.to_string(), "10.1.0.0/16");
        let err = conf(json!({"cniVersion": "1.1.0", "name": "pods", "ipam": {
            "subnet": "10.22.0.0/24", "routes": [{"dst": "10.1.0.0/16", "table": 100}]
        }}))
        .unwrap_err();
        assert_eq!(err.code, Code::UnsupportedField);
        assert_eq!(
            err.details,
            "ipam.routes[0].table: 100 is not supported by netd-cni"
        );
        let c = conf(json!({"cniVersion": "1.1.0", "name": "pods",
            "nonMasqueradeCIDRs": ["10.244.7.0/16"]}));
        assert_eq!(
            c.unwrap().non_masquerade_cidrs[0].to_string(),
            "10.244.0.0/16"
        );
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let err = conf(json!({
            "cniVersion": "1.1.0", "name": "pods",
            "ipam": {"ranges": [[{"subnet": "10.22.0.0/16", "gateway": 7}]]}
        }))
        .unwrap_err();
        assert_eq!(err.code, Code::Decode);
        assert!(
            err.details
                .starts_with("ipam.ranges[0][0].gateway: invalid type"),
            "{err}"
        );
        let err = conf(json!({"cniVersion": "1.1.0", "name": "pods", "mtu": "big"})).unwrap_err();
        assert!(err.details.starts_with("mtu: invalid type"), "{err}");
    }

    #[test]
    fn nonsense_values_are_invalid_config_with_the_reason() {
        let cases = [
            (
                json!({"subnet": "10.22.0.1/16"}),
                "has host bits set; the network is 10.22.0.0/16",
            ),
            (json!({"subnet": "10.22.0.0/31"}), "too small"),
            (
                json!({"subnet": "10.22.0.0/24", "gateway": "10.9.0.1"}),
                "gateway 10.9.0.1 is not",
            ),
            (
                json!({"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.9", "rangeEnd": "10.22.0.2"}),
                "rangeStart 10.22.0.9 is after rangeEnd 10.22.0.2",
            ),
        ];
        for (range, why) in cases {
            let err = conf(json!({
                "cniVersion": "1.1.0", "name": "pods", "ipam": {"ranges": [[range]]}
            }))
            .unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{err}");
            assert!(err.details.contains(why), "{err} should say {why}");
        }
        let overlap = conf(
            json!({"cniVersion": "1.1.0", "name": "pods", "ipam": {"ranges": [
                [{"subnet": "10.22.0.0/16"}], [{"subnet": "10.22.4.0/24"}]
            ]}}),
        )
        .unwrap_err();
        assert!(
            overlap
                .details
                .contains("ipam.ranges[0][0] (10.22.0.1-10.22.255.254) overlaps")
        );
        let name = conf(json!({"cniVersion": "1.1.0", "name": "../etc"})).unwrap_err();
        assert_eq!(name.code, Code::InvalidConfig);
        let unknown = conf(json!({"cniVersion": "1.1.0", "name": "p", "ipam": {"subnets": []}}));
        assert!(
            unknown
                .unwrap_err()
                .details
                .contains("unknown field `subnets`")
        );
    }

    #[test]
    fn reference_fields_not_implemented_are_refused_by_name_when_set() {
        let err = conf(json!({"cniVersion": "1.1.0", "name": "pods", "vlan": 100})).unwrap_err();
        assert_eq!(err.code, Code::UnsupportedField);
        assert_eq!(err.details, "vlan: 100 is not supported by netd-cni");
        assert!(conf(json!({"cniVersion": "1.1.0", "name": "pods", "vlan": 0})).is_ok());
        assert!(conf(json!({"cniVersion": "1.1.0", "name": "pods", "promiscMode": false})).is_ok());
    }

    #[test]
    fn another_ipam_type_is_delegated_and_ours_is_built_in() {
        let delegated = conf(json!({"cniVersion": "1.0.0", "name": "pods",
            "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}));
        assert!(matches!(delegated.map(|c| c.ipam), Ok(Ipam::Delegate(t)) if t == "host-local"));
        let ours = builtin(json!({"cniVersion": "1.0.0", "name": "pods",
            "ipam": {"type": "netd-cni", "subnet": "10.22.0.0/24", "rangeStart": "10.22.0.10"}}));
        assert_eq!(ours.range_sets[0][0].start.to_string(), "10.22.0.10");
    }
}
