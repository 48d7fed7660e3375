//! The CNI protocol itself: commands and their environment, versions, the error object and its
//! codes, and the result object in the shape of each specification version this plugin speaks.
//!
//! Nothing here touches the system; `plugin` does the work and this module only says what goes
//! in and out (SPEC.md, sections 2 and 5).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Every specification version the plugin answers, oldest first, as VERSION reports them.
/// 0.1.0 and 0.2.0 had a different result type (`ip4`/`ip6`) and no chaining; configurations
/// at those versions get error 1.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, used when the input names none (VERSION with empty stdin, errors before
/// the configuration could be read).
pub const CURRENT_VERSION: &str = "1.1.0";

/// The specification's error codes, plus this plugin's own from 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the configuration's `cniVersion` is not one this plugin speaks, or the command is not
    /// defined at that version (CHECK before 0.4.0, STATUS and GC before 1.1.0).
    IncompatibleVersion,
    /// 2: a field this plugin knows but does not implement, set to a value that needs it.
    UnsupportedField,
    /// 4: a `CNI_*` variable is missing or malformed.
    InvalidEnvironment,
    /// 5: reading stdin failed.
    Io,
    /// 6: stdin is not a JSON object of the expected shape.
    Decode,
    /// 7: the configuration decodes but does not make sense.
    InvalidConfig,
    /// 11: a transient condition (the allocation store stayed locked); retry later.
    TryAgainLater,
    /// 50: STATUS: ADD cannot be served (the pool is exhausted, the store is unwritable).
    NotAvailable,
    /// 51: STATUS: not available, and existing pods may have limited connectivity.
    NotAvailableLimitedConnectivity,
    /// 100: a system call or netlink request failed.
    System,
    /// 101: CHECK found something ADD made missing or different.
    CheckFailed,
    /// 102: ADD: no free address is left in a range set.
    PoolExhausted,
    /// 103: ADD: the attachment already exists (a second ADD without DEL).
    AlreadyExists,
    /// 104: a delegated plugin could not be run or answered nonsense.
    Delegate,
    /// Any code a delegated plugin returned, passed through unchanged.
    Other(u32),
}

impl Code {
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::InvalidEnvironment => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::NotAvailableLimitedConnectivity => 51,
            Code::System => 100,
            Code::CheckFailed => 101,
            Code::PoolExhausted => 102,
            Code::AlreadyExists => 103,
            Code::Delegate => 104,
            Code::Other(n) => n,
        }
    }

    /// The short `msg` of the error object; `details` carries the specifics.
    fn summary(self) -> &'static str {
        match self {
            Code::IncompatibleVersion => "incompatible CNI version",
            Code::UnsupportedField => "unsupported field in network configuration",
            Code::InvalidEnvironment => "invalid environment variables",
            Code::Io => "I/O failure",
            Code::Decode => "failed to decode network configuration",
            Code::InvalidConfig => "invalid network configuration",
            Code::TryAgainLater => "try again later",
            Code::NotAvailable => "plugin not available",
            Code::NotAvailableLimitedConnectivity => {
                "plugin not available; existing pods may have limited connectivity"
            }
            Code::System => "system call failed",
            Code::CheckFailed => "check failed",
            Code::PoolExhausted => "no free address",
            Code::AlreadyExists => "attachment already exists",
            Code::Delegate => "delegated plugin failed",
            Code::Other(_) => "delegated plugin error",
        }
    }
}

/// An error as the specification's error object: a code, a short message and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: code.summary().to_string(),
            details: details.into(),
        }
    }

    /// The error object for `version` (the configuration's, when it could be read).
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code.number(),
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (code {}): {}",
            self.msg,
            self.code.number(),
            self.details
        )
    }
}

impl std::error::Error for CniError {}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// Shorthand for the common cases.
pub fn invalid_config(details: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, details)
}

pub fn system(what: impl fmt::Display, err: impl fmt::Display) -> CniError {
    CniError::new(Code::System, format!("{what}: {err}"))
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
            Command::Gc => "GC",
        }
    }

    /// The oldest specification version that defines the command.
    pub fn since(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.3.0",
        }
    }
}

/// The `CNI_*` environment of one invocation, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub path: Vec<String>,
}

impl Invocation {
    /// Reads the `CNI_*` variables from `get`, naming every missing or malformed one.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let non_empty = |name: &str| get(name).filter(|value| !value.is_empty());
        let command = match non_empty("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("VERSION") => Command::Version,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!(
                        "CNI_COMMAND={other:?} is not one of ADD, DEL, CHECK, STATUS, VERSION, GC"
                    ),
                ));
            }
            None => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    "CNI_COMMAND is not set (one of ADD, DEL, CHECK, STATUS, VERSION, GC)",
                ));
            }
        };
        let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(command, Command::Add | Command::Check);
        let mut problems = Vec::new();
        let container_id = non_empty("CNI_CONTAINERID").unwrap_or_default();
        let netns = non_empty("CNI_NETNS");
        let ifname = non_empty("CNI_IFNAME").unwrap_or_default();
        if attachment {
            if container_id.is_empty() {
                problems.push("CNI_CONTAINERID is not set".to_string());
            } else if let Err(why) = valid_container_id(&container_id) {
                problems.push(format!("CNI_CONTAINERID={container_id:?} {why}"));
            }
            if ifname.is_empty() {
                problems.push("CNI_IFNAME is not set".to_string());
            } else if let Err(why) = valid_ifname(&ifname) {
                problems.push(format!("CNI_IFNAME={ifname:?} {why}"));
            }
            if needs_netns && netns.is_none() {
                problems.push("CNI_NETNS is not set".to_string());
            }
        }
        let args = match non_empty("CNI_ARGS") {
            Some(raw) => match parse_args(&raw) {
                Ok(args) => args,
                Err(why) => {
                    problems.push(format!("CNI_ARGS={raw:?} {why}"));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        if !problems.is_empty() {
            return Err(CniError::new(Code::InvalidEnvironment, problems.join("; ")));
        }
        let path = non_empty("CNI_PATH")
            .map(|raw| {
                raw.split(':')
                    .filter(|dir| !dir.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// SPEC.md: "Must start with an alphanumeric character, optionally followed by any combination
/// of one or more alphanumeric characters, underscore, dot or hyphen."
fn valid_container_id(id: &str) -> std::result::Result<(), &'static str> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(
            "must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
        );
    }
    Ok(())
}

/// What the kernel accepts as an interface name.
fn valid_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.len() > 15 {
        return Err("is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("is not a valid interface name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("holds '/', ':' or whitespace");
    }
    Ok(())
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`.
fn parse_args(raw: &str) -> std::result::Result<Vec<(String, String)>, String> {
    raw.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(format!("has {pair:?}, which is not KEY=VALUE")),
        })
        .collect()
}

/// Compares two dotted versions numerically (`"0.10.0" > "0.4.0"`).
pub fn version_at_least(version: &str, floor: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|n| n.parse().unwrap_or(0)).collect() };
    parse(version) >= parse(floor)
}

/// The version check every command but VERSION makes first.
pub fn check_version(version: &str, command: Command) -> Result<()> {
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "cniVersion {version:?} is not supported; this plugin speaks {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if !version_at_least(version, command.since()) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "cniVersion {version} does not define {}; it needs {} or later",
                command.as_str(),
                command.since()
            ),
        ));
    }
    Ok(())
}

/// The VERSION answer.
pub fn version_result(input_version: &str) -> Value {
    json!({ "cniVersion": input_version, "supportedVersions": SUPPORTED_VERSIONS })
}

/// One entry of `interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Fields this plugin does not set (`socketPath`, `pciID`), kept so that a `prevResult`
    /// passes through whole.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `ips`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with the subnet's prefix length, `10.22.0.5/16`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Fields this plugin does not know, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// The 1.1.0 fields (`mtu`, `advmss`, `priority`, `table`, `scope`) of routes another
    /// plugin made, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `dns`, in configurations and results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The ADD result, version-neutral. [`Success::render`] writes it in a version's shape;
/// [`Success::parse`] reads any supported version's shape (a `prevResult`, a delegate's answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Success {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Success {
    /// The result object as `version` defines it: 0.3.x and 0.4.0 carry `version` in each IP,
    /// 1.0.0 dropped it, and only 1.1.0 knows an interface's `mtu`.
    pub fn render(&self, version: &str) -> Value {
        let with_version_field = !version_at_least(version, "1.0.0");
        let with_mtu = version_at_least(version, "1.1.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|interface| {
                let mut interface = interface.clone();
                if !with_mtu {
                    interface.mtu = None;
                }
                json!(interface)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut value = json!(ip);
                if with_version_field && let Value::Object(map) = &mut value {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    map.insert("version".into(), family.into());
                }
                value
            })
            .collect();
        let mut out = BTreeMap::new();
        out.insert("cniVersion", json!(version));
        if !interfaces.is_empty() {
            out.insert("interfaces", json!(interfaces));
        }
        out.insert("ips", json!(ips));
        if !self.routes.is_empty() {
            out.insert("routes", json!(self.routes));
        }
        if !self.dns.is_empty() {
            out.insert("dns", json!(self.dns));
        }
        json!(out)
    }

    /// Reads a result of any supported version, ignoring fields this plugin does not use.
    pub fn parse(value: &Value) -> std::result::Result<Self, String> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            interfaces: Vec<Interface>,
            #[serde(default)]
            ips: Vec<IpConfig>,
            #[serde(default)]
            routes: Vec<Route>,
            #[serde(default)]
            dns: Option<Dns>,
        }
        let mut raw = Raw::deserialize(value).map_err(|err| err.to_string())?;
        for ip in &mut raw.ips {
            // 0.3.x and 0.4.0 results say each address's family; `render` writes it anew.
            ip.extra.remove("version");
        }
        Ok(Success {
            interfaces: raw.interfaces,
            ips: raw.ips,
            routes: raw.routes,
            dns: raw.dns.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn add_without_its_variables_names_every_missing_one() {
        let err = Invocation::from_env(env(&[("CNI_COMMAND", "ADD")])).unwrap_err();
        assert_eq!(err.code, Code::InvalidEnvironment);
        assert_eq!(
            err.details,
            "CNI_CONTAINERID is not set; CNI_IFNAME is not set; CNI_NETNS is not set"
        );
    }

    #[test]
    fn del_does_not_need_a_netns_and_version_needs_nothing() {
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(Invocation::from_env(del).map(|i| i.netns), Ok(None));
        let version = Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")]));
        assert_eq!(version.map(|i| i.command), Ok(Command::Version));
    }

    #[test]
    fn malformed_values_are_named_with_what_is_wrong() {
        let err = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "an-interface-name-too-long"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "A=1;junk"),
        ]))
        .unwrap_err();
        assert!(
            err.details
                .contains("CNI_CONTAINERID=\"-bad\" must start with"),
            "{err}"
        );
        assert!(
            err.details
                .contains("CNI_IFNAME=\"an-interface-name-too-long\" is longer")
        );
        assert!(
            err.details.contains("CNI_ARGS=\"A=1;junk\" has \"junk\""),
            "{err}"
        );
        let unknown = Invocation::from_env(env(&[("CNI_COMMAND", "UP")])).unwrap_err();
        assert!(unknown.details.contains("CNI_COMMAND=\"UP\""), "{unknown}");
    }

    #[test]
    fn versions_gate_the_commands_they_define() {
        assert!(check_version("0.2.0", Command::Add).is_err());
        assert!(check_version("0.3.1", Command::Add).is_ok());
        assert_eq!(
            check_version("0.3.1", Command::Check).map_err(|e| e.code),
            Err(Code::IncompatibleVersion)
        );
        assert!(check_version("0.4.0", Command::Check).is_ok());
        assert!(check_version("1.0.0", Command::Gc).is_err());
        assert!(check_version("1.1.0", Command::Status).is_ok());
        assert!(version_at_least("0.10.0", "0.4.0"));
    }

    #[test]
    fn results_take_the_shape_of_their_version() {
        let success = Success {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:00:00:00:00:01".into(),
                mtu: Some(1400),
                sandbox: "/run/netns/p".into(),
                extra: Map::new(),
            }],
            ips: vec![IpConfig {
                address: "10.22.0.5/16".parse().unwrap(),
                gateway: Some("10.22.0.1".parse().unwrap()),
                interface: Some(0),
                extra: Map::new(),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
                extra: [("table".to_string(), json!(100))].into_iter().collect(),
            }],
            dns: Dns::default(),
        };
        let old = success.render("0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let new = success.render("1.1.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1400);
        assert!(new.get("dns").is_none());
        assert_eq!(
            Success::parse(&old).map(|s| s.ips),
            Success::parse(&new).map(|s| s.ips)
        );
        assert_eq!(Success::parse(&new).map(|s| s.ips), Ok(success.ips.clone()));
        // What another plugin set passes through.
        assert_eq!(new["routes"][0]["table"], 100);
        assert_eq!(
            Success::parse(&new).map(|s| s.routes),
            Ok(success.routes.clone())
        );
    }
}
