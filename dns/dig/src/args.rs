//! dig's command-line grammar.
//!
//! ```text
//! cdig [@server] [-p port] [-t type] [-c class] [-x addr] [-q name] [-f file] [-4|-6]
//!      [-b addr[#port]] [name] [type] [class] [+opt ...] [name [type] [+opt ...] ...]
//! ```
//!
//! As in dig, names, types and classes come in any order (a word that is a type is a type, one
//! that is a class is a class, anything else is a name and starts a new lookup), several lookups
//! go in one command, and `+options` given before the first name apply to every lookup while
//! those after a name apply to that lookup only. `+option` names may be shortened to any prefix
//! that is unique among the options. Unknown options are errors, with dig's message.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use hickory_proto::rr::{DNSClass, RecordType};

/// What to show and how to ask, per lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub server: Option<String>,
    pub port: u16,
    pub family: Option<Family>,
    pub bind: Option<SocketAddr>,
    pub tcp: bool,
    /// Whether `+[no]tcp` was given (an ANY query goes over TCP unless it was).
    pub tcp_set: bool,
    pub recurse: bool,
    /// The EDNS version to send, `None` for no OPT record (`+noedns`).
    pub edns: Option<u8>,
    pub bufsize: u16,
    /// Whether `+bufsize=N` was given (it brings EDNS back after `+noedns`, as in dig).
    pub bufsize_set: bool,
    pub dnssec: bool,
    pub cookie: bool,
    /// Whether `+[no]cookie` was given (`+cookie` brings EDNS back after `+noedns`).
    pub cookie_set: bool,
    /// `+cookie=HEX`: the cookie to send instead of a random client cookie.
    pub cookie_value: Option<Vec<u8>>,
    pub cmd: bool,
    pub comments: bool,
    pub question: bool,
    pub answer: bool,
    pub authority: bool,
    pub additional: bool,
    pub stats: bool,
    pub short: bool,
    pub identify: bool,
    pub ttlid: bool,
    pub class: bool,
    pub timeout: u64,
    pub tries: u32,
    pub search: bool,
    /// `+domain=NAME`: the search list is this one name (and searching is on).
    pub domain: Option<String>,
    pub ndots: Option<u32>,
    pub yaml: bool,
    pub json: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server: None,
            port: 53,
            family: None,
            bind: None,
            tcp: false,
            tcp_set: false,
            recurse: true,
            edns: Some(0),
            bufsize: 1232,
            bufsize_set: false,
            dnssec: false,
            cookie: true,
            cookie_set: false,
            cookie_value: None,
            cmd: true,
            comments: true,
            question: true,
            answer: true,
            authority: true,
            additional: true,
            stats: true,
            short: false,
            identify: false,
            ttlid: true,
            class: true,
            timeout: 5,
            tries: 3,
            search: false,
            domain: None,
            ndots: None,
            yaml: false,
            json: false,
        }
    }
}

/// `-4` or `-6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One query to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub name: String,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    /// Whether a type was given for this lookup (a second one replaces it, with a warning).
    pub type_given: bool,
    /// Whether a class was given for this lookup.
    pub class_given: bool,
    pub options: Options,
}

/// The whole command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub lookups: Vec<Lookup>,
    /// `-f FILE`: more lookups, one command line per line.
    pub batch: Option<PathBuf>,
    /// The options before the first name (the ones batch lines start from).
    pub global: Options,
    /// Whether to print the banner: `+cmd` held at the first name and still does, and no
    /// `+short` (dig's rule).
    pub banner: bool,
    /// Warnings dig prints on stderr (`;; Warning, extra type option`).
    pub warnings: Vec<String>,
    pub help: bool,
    pub version: bool,
    /// `--explain`: show how a pod resolves each name instead of one lookup.
    pub explain: bool,
    /// `--namespace NS`: the pod's namespace, to build its search list.
    pub namespace: Option<String>,
    /// `--cluster-domain DOMAIN` (default `cluster.local`).
    pub cluster_domain: String,
    /// `--color never|always|auto`.
    pub color: Color,
}

/// When to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Never,
    Always,
    /// When stdout is a terminal, `TERM` is not `dumb` and `NO_COLOR` is not set.
    Auto,
}

/// A usage error: dig prints the message, then its usage, and exits 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `+options` cdig implements, each with whether it takes `=value` (and needs one).
const PLUS: &[(&str, bool)] = &[
    ("additional", false),
    ("all", false),
    ("answer", false),
    ("authority", false),
    ("bufsize", false),
    ("class", false),
    ("cmd", false),
    ("comments", false),
    ("cookie", false),
    ("dnssec", false),
    ("domain", true),
    ("edns", false),
    ("identify", false),
    ("json", false),
    ("ndots", true),
    ("question", false),
    ("recurse", false),
    ("retry", true),
    ("search", false),
    ("short", false),
    ("stats", false),
    ("tcp", false),
    ("timeout", true),
    ("tries", true),
    ("ttlid", false),
    ("yaml", false),
];

/// Every `+option` name dig 9.18 knows, with the one it is another name for. A shortened
/// option must match one of these (after aliases) to be accepted, so `+tc` is as ambiguous
/// here (`tcflag`, `tcp`) as in dig, whether or not cdig implements the others.
const DIG_NAMES: &[(&str, &str)] = &[
    ("aaflag", "aaflag"),
    ("aaonly", "aaflag"),
    ("additional", "additional"),
    ("adflag", "adflag"),
    ("all", "all"),
    ("answer", "answer"),
    ("authority", "authority"),
    ("badcookie", "badcookie"),
    ("besteffort", "besteffort"),
    ("bufsize", "bufsize"),
    ("cdflag", "cdflag"),
    ("class", "class"),
    ("cmd", "cmd"),
    ("comments", "comments"),
    ("cookie", "cookie"),
    ("crypto", "crypto"),
    ("defname", "search"),
    ("dnssec", "dnssec"),
    ("domain", "domain"),
    ("dscp", "dscp"),
    ("edns", "edns"),
    ("ednsflags", "ednsflags"),
    ("ednsnegotiation", "ednsnegotiation"),
    ("ednsopt", "ednsopt"),
    ("expandaaaa", "expandaaaa"),
    ("expire", "expire"),
    ("fail", "fail"),
    ("header-only", "header-only"),
    ("identify", "identify"),
    ("idnin", "idnin"),
    ("idnout", "idnout"),
    ("ignore", "ignore"),
    ("json", "json"),
    ("keepalive", "keepalive"),
    ("keepopen", "keepopen"),
    ("mapped", "mapped"),
    ("multiline", "multiline"),
    ("ndots", "ndots"),
    ("nsid", "nsid"),
    ("nssearch", "nssearch"),
    ("onesoa", "onesoa"),
    ("opcode", "opcode"),
    ("padding", "padding"),
    ("qr", "qr"),
    ("question", "question"),
    ("raflag", "raflag"),
    ("rdflag", "recurse"),
    ("recurse", "recurse"),
    ("retry", "retry"),
    ("rrcomments", "rrcomments"),
    ("search", "search"),
    ("short", "short"),
    ("showsearch", "showsearch"),
    ("split", "split"),
    ("stats", "stats"),
    ("subnet", "subnet"),
    ("tcflag", "tcflag"),
    ("tcp", "tcp"),
    ("time", "timeout"),
    ("timeout", "timeout"),
    ("trace", "trace"),
    ("tries", "tries"),
    ("ttlid", "ttlid"),
    ("ttlunits", "ttlunits"),
    ("unexpected", "unexpected"),
    ("unknownformat", "unknownformat"),
    ("vc", "tcp"),
    ("yaml", "yaml"),
    ("zflag", "zflag"),
];

/// What went wrong on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// dig prints the message and its usage on stderr, and exits 1.
    Usage(UsageError),
    /// A number that does not parse or is out of range: dig prints
    /// `invalid WHAT 'VALUE': WHY` on stdout and `Couldn't parse WHAT` on stderr, and exits 10.
    BadValue {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

impl From<UsageError> for ArgError {
    fn from(usage: UsageError) -> Self {
        ArgError::Usage(usage)
    }
}

fn invalid(word: &str) -> ArgError {
    ArgError::Usage(UsageError(format!("Invalid option: +{word}")))
}

/// The option `word` names (without `no` and `=value`), and whether it was negated.
fn lookup_plus(word: &str) -> Result<(&'static str, bool), ArgError> {
    let key_of = |w: &str| w.split('=').next().unwrap_or_default().to_ascii_lowercase();
    let resolve = |key: &str| -> Option<&'static str> {
        if key.is_empty() {
            return None;
        }
        let mut found: Option<&'static str> = None;
        for (name, canonical) in DIG_NAMES {
            if *name == key {
                return Some(canonical);
            }
            if name.starts_with(key) {
                match found {
                    Some(other) if other != *canonical => return None,
                    _ => found = Some(canonical),
                }
            }
        }
        // Exact matches win over prefixes; a prefix must be unique after aliases.
        let exact_prefix = DIG_NAMES.iter().filter(|(n, _)| n.starts_with(key)).count();
        if exact_prefix > 0 { found } else { None }
    };
    let whole = key_of(word);
    let (negated, key) = match (resolve(&whole), whole.strip_prefix("no")) {
        (Some(name), _) => (false, name),
        (None, Some(rest)) => (true, resolve(rest).ok_or_else(|| invalid(word))?),
        (None, None) => return Err(invalid(word)),
    };
    // Known to dig but not implemented here: refused as unknown.
    let implemented = PLUS
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(name, _)| *name);
    implemented
        .map(|name| (name, negated))
        .ok_or_else(|| invalid(word))
}

/// A number for `+what=value`, with dig's messages for values that do not parse or fit.
fn number(what: &'static str, value: &str, max: u64) -> Result<u64, ArgError> {
    match value.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(ArgError::BadValue {
            what,
            value: value.to_string(),
            why: "out of range",
        }),
        Err(_) if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() => {
            Err(ArgError::BadValue {
                what,
                value: value.to_string(),
                why: "out of range",
            })
        }
        Err(_) => Err(ArgError::BadValue {
            what,
            value: value.to_string(),
            why: "not a valid number",
        }),
    }
}

/// Applies one `+option` (without the `+`).
pub fn apply_plus(options: &mut Options, word: &str) -> Result<(), ArgError> {
    let (name, negated) = lookup_plus(word)?;
    let value = word.split_once('=').map(|(_, v)| v);
    let needs_value = PLUS.iter().any(|(n, v)| *n == name && *v);
    let on = !negated;
    // Options that need a value refuse to go without (as dig: "Invalid option: +ndots").
    if needs_value && on && value.is_none_or(str::is_empty) {
        let key = word.split('=').next().unwrap_or_default();
        return Err(ArgError::Usage(UsageError(format!(
            "Invalid option: +{key}"
        ))));
    }
    let given = value.filter(|v| !v.is_empty());
    match name {
        "additional" => options.additional = on,
        "all" => {
            options.cmd = on;
            options.comments = on;
            options.question = on;
            options.answer = on;
            options.authority = on;
            options.additional = on;
            options.stats = on;
        }
        "answer" => options.answer = on,
        "authority" => options.authority = on,
        "bufsize" => {
            options.bufsize = match given.filter(|_| on) {
                Some(v) => u16::try_from(number("buffer size", v, 65535)?).unwrap_or(u16::MAX),
                None => 1232,
            };
            options.bufsize_set = on;
        }
        "class" => options.class = on,
        "cmd" => options.cmd = on,
        "comments" => options.comments = on,
        "cookie" => {
            options.cookie = on;
            options.cookie_set = true;
            options.cookie_value = match given.filter(|_| on) {
                Some(hex) => Some(parse_hex(hex).ok_or_else(|| invalid(word))?),
                None => None,
            };
        }
        "dnssec" => options.dnssec = on,
        "domain" => {
            options.domain = Some(given.unwrap_or_default().trim_end_matches('.').to_string());
            options.search = true;
        }
        "edns" if on => {
            let version = match given {
                Some(v) => u8::try_from(number("edns", v, 255)?).unwrap_or(0),
                None => 0,
            };
            options.edns = Some(version);
        }
        "edns" => options.edns = None,
        "identify" => options.identify = on,
        "json" => {
            options.json = on;
            if on {
                options.cmd = false;
                options.stats = false;
            }
        }
        "ndots" if on => {
            let n = number("ndots", given.unwrap_or_default(), 128)?;
            options.ndots = Some(u32::try_from(n).unwrap_or(128));
        }
        "ndots" => options.ndots = None,
        "question" => options.question = on,
        "recurse" => options.recurse = on,
        // dig: +retry is the number of retries, +tries the number of attempts.
        "retry" if on => {
            let n = number(
                "retries",
                given.unwrap_or_default(),
                u64::from(u32::MAX - 1),
            )?;
            options.tries = u32::try_from(n).unwrap_or(u32::MAX - 1) + 1;
        }
        "tries" if on => {
            let n = number("tries", given.unwrap_or_default(), u64::from(u32::MAX))?;
            options.tries = u32::try_from(n).unwrap_or(u32::MAX).max(1);
        }
        "search" => options.search = on,
        "short" => {
            options.short = on;
            if on {
                options.cmd = false;
                options.comments = false;
                options.question = false;
                options.authority = false;
                options.additional = false;
                options.stats = false;
                options.answer = true;
            }
        }
        "stats" => options.stats = on,
        "tcp" => {
            options.tcp = on;
            options.tcp_set = true;
        }
        "timeout" if on => {
            let n = number("timeout", given.unwrap_or_default(), 3600)?;
            options.timeout = n.max(1);
        }
        "ttlid" => options.ttlid = on,
        "yaml" => {
            options.yaml = on;
            // dig's YAML has no banner and no statistics lines.
            if on {
                options.cmd = false;
                options.stats = false;
            }
        }
        // +noretry, +notries, +notimeout and the like mean nothing in dig either.
        _ => {}
    }
    Ok(())
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !(16..=80).contains(&text.len()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A word as a type: `A`, `srv`, `TYPE65`.
pub fn parse_type(word: &str) -> Option<RecordType> {
    let upper = word.to_ascii_uppercase();
    if let Some(number) = upper.strip_prefix("TYPE") {
        return number.parse::<u16>().ok().map(RecordType::from);
    }
    match RecordType::from_str(&upper) {
        Ok(RecordType::Unknown(_)) | Err(_) => None,
        Ok(t) => Some(t),
    }
}

/// A word as a class: `IN`, `CH`, `HS`, `CLASS3`.
pub fn parse_class(word: &str) -> Option<DNSClass> {
    let upper = word.to_ascii_uppercase();
    if let Some(number) = upper.strip_prefix("CLASS") {
        return number.parse::<u16>().ok().map(DNSClass::from);
    }
    match upper.as_str() {
        "IN" => Some(DNSClass::IN),
        "CH" => Some(DNSClass::CH),
        "HS" => Some(DNSClass::HS),
        "NONE" => Some(DNSClass::NONE),
        "ANY" => Some(DNSClass::ANY),
        _ => None,
    }
}

/// The reverse name `-x` makes: an IPv6 address's nibbles under `ip6.arpa.`, anything else
/// (an IPv4 address, or part of one) reversed label by label under `in-addr.arpa.`, as dig does.
pub fn reverse_name(address: &str) -> String {
    if let Ok(IpAddr::V6(v6)) = address.parse::<IpAddr>() {
        let mut name = String::new();
        for byte in v6.octets().iter().rev() {
            name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
        }
        name.push_str("ip6.arpa.");
        return name;
    }
    let labels: Vec<&str> = address.trim_end_matches('.').split('.').rev().collect();
    format!("{}.in-addr.arpa.", labels.join("."))
}

struct Builder {
    /// The lookup every name starts from: what was given before the first name.
    default: Lookup,
    lookups: Vec<Lookup>,
    /// Bare words are types and classes until `-t` or `-c` is used, then only names (dig).
    open_type_class: bool,
    warnings: Vec<String>,
    /// Whether `+cmd` held when the first name came (dig prints the banner only if it did).
    cmd_at_first_name: Option<bool>,
    batch: Option<PathBuf>,
    help: bool,
    version: bool,
    explain: bool,
    namespace: Option<String>,
    cluster_domain: String,
    color: Color,
}

impl Builder {
    /// The lookup options, types and classes apply to: the last name's, or the default one.
    fn current(&mut self) -> &mut Lookup {
        match self.lookups.last_mut() {
            Some(lookup) => lookup,
            None => &mut self.default,
        }
    }

    fn add_name(&mut self, name: String) {
        self.cmd_at_first_name
            .get_or_insert(self.default.options.cmd);
        let mut lookup = self.default.clone();
        lookup.name = name;
        self.lookups.push(lookup);
    }

    fn set_type(&mut self, qtype: RecordType) {
        let lookup = self.current();
        let again = std::mem::replace(&mut lookup.type_given, true);
        lookup.qtype = qtype;
        if again {
            self.warnings
                .push(";; Warning, extra type option".to_string());
        }
    }

    fn set_class(&mut self, qclass: DNSClass) {
        let lookup = self.current();
        let again = std::mem::replace(&mut lookup.class_given, true);
        lookup.qclass = qclass;
        if again {
            self.warnings
                .push(";; Warning, extra class option".to_string());
        }
    }
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Invocation, ArgError> {
    parse_from(args, Options::default())
}

/// Parses arguments starting from `global` options (a batch file's line starts from the
/// command line's).
pub fn parse_from(args: &[String], global: Options) -> Result<Invocation, ArgError> {
    let mut b = Builder {
        default: Lookup {
            name: String::new(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            type_given: false,
            class_given: false,
            options: global,
        },
        lookups: Vec::new(),
        open_type_class: true,
        warnings: Vec::new(),
        cmd_at_first_name: None,
        batch: None,
        help: false,
        version: false,
        explain: false,
        namespace: None,
        cluster_domain: "cluster.local".to_string(),
        color: Color::Auto,
    };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let usage = |message: String| ArgError::Usage(UsageError(message));
        if let Some(long) = word.strip_prefix("--") {
            // cdig's own options, which dig does not have: `--name value` or `--name=value`.
            let (name, attached) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (long, None),
            };
            let mut value = || -> Result<String, ArgError> {
                match &attached {
                    Some(value) => Ok(value.clone()),
                    None => words
                        .next()
                        .cloned()
                        .ok_or_else(|| usage(format!("option requires an argument -- '{name}'"))),
                }
            };
            match name {
                "explain" if attached.is_none() => b.explain = true,
                "namespace" => b.namespace = Some(value()?),
                "cluster-domain" => {
                    b.cluster_domain = value()?.trim_end_matches('.').to_string();
                }
                "color" | "colour" => {
                    b.color = match value()?.as_str() {
                        "never" => Color::Never,
                        "always" => Color::Always,
                        "auto" => Color::Auto,
                        other => {
                            return Err(usage(format!(
                                "--color: {other:?} is not one of never, always, auto"
                            )));
                        }
                    }
                }
                "help" => b.help = true,
                "version" => b.version = true,
                _ => return Err(usage(format!("Invalid option: {word}"))),
            }
        } else if let Some(server) = word.strip_prefix('@') {
            b.current().options.server = Some(server.to_string());
        } else if let Some(plus) = word.strip_prefix('+') {
            apply_plus(&mut b.current().options, plus)?;
            // dig keeps +short, +yaml, +json and +cmd (also as part of +all) for the whole
            // run, wherever they appear.
            let (name, negated) = lookup_plus(plus)?;
            if matches!(name, "short" | "yaml" | "json" | "cmd" | "all") {
                let cmd = b.current().options.cmd;
                let everyone = std::iter::once(&mut b.default.options)
                    .chain(b.lookups.iter_mut().map(|l| &mut l.options));
                for options in everyone {
                    match name {
                        "all" => options.cmd = !negated,
                        "cmd" => options.cmd = cmd,
                        _ => apply_plus(options, plus)?,
                    }
                }
            }
        } else if word.starts_with('-') {
            let flag = word.get(..2).unwrap_or(word);
            let mut value = |flag: &str| -> Result<String, ArgError> {
                // `-p53` and `-p 53` both work.
                let attached = &word[flag.len()..];
                if !attached.is_empty() {
                    return Ok(attached.to_string());
                }
                words.next().cloned().ok_or_else(|| {
                    usage(format!("option requires an argument -- '{}'", &flag[1..]))
                })
            };
            match flag {
                "-p" => {
                    let port = value("-p")?;
                    b.current().options.port = port
                        .parse()
                        .map_err(|_| usage(format!("invalid port number {port}")))?;
                }
                "-t" => {
                    let text = value("-t")?;
                    match parse_type(&text) {
                        Some(qtype) => b.set_type(qtype),
                        None => b
                            .warnings
                            .push(format!(";; Warning, ignoring invalid type {text}")),
                    }
                    b.open_type_class = false;
                }
                "-c" => {
                    let text = value("-c")?;
                    match parse_class(&text) {
                        Some(qclass) => b.set_class(qclass),
                        None => b
                            .warnings
                            .push(format!(";; Warning, ignoring invalid class {text}")),
                    }
                    b.open_type_class = false;
                }
                "-x" => {
                    let address = value("-x")?;
                    b.add_name(reverse_name(&address));
                    let lookup = b.current();
                    lookup.qtype = RecordType::PTR;
                    lookup.type_given = true;
                }
                "-q" => {
                    let name = value("-q")?;
                    b.add_name(name);
                }
                "-f" => b.batch = Some(PathBuf::from(value("-f")?)),
                "-b" => {
                    let text = value("-b")?;
                    let (address, port) = match text.split_once('#') {
                        Some((a, p)) => (
                            a,
                            p.parse()
                                .map_err(|_| usage(format!("invalid port number {p}")))?,
                        ),
                        None => (text.as_str(), 0),
                    };
                    let ip: IpAddr = address
                        .parse()
                        .map_err(|_| usage(format!("invalid address {address}")))?;
                    b.current().options.bind = Some(SocketAddr::new(ip, port));
                }
                "-4" if word.len() == 2 => b.current().options.family = Some(Family::V4),
                "-6" if word.len() == 2 => b.current().options.family = Some(Family::V6),
                "-h" if word.len() == 2 => b.help = true,
                "-v" if word.len() == 2 => b.version = true,
                _ => return Err(usage(format!("Invalid option: {word}"))),
            }
        } else if let Some(qtype) = parse_type(word).filter(|_| b.open_type_class) {
            b.set_type(qtype);
        } else if let Some(qclass) = parse_class(word).filter(|_| b.open_type_class) {
            b.set_class(qclass);
        } else {
            b.add_name(word.clone());
        }
    }
    // Without a name dig asks for the root's name servers, whatever type was given.
    if b.lookups.is_empty() && b.batch.is_none() {
        let mut root = b.default.clone();
        root.name = ".".to_string();
        root.qtype = RecordType::NS;
        b.lookups.push(root);
    }
    let global = b.default.options;
    let banner = b.cmd_at_first_name.unwrap_or(global.cmd) && global.cmd && !global.short;
    Ok(Invocation {
        lookups: b.lookups,
        batch: b.batch,
        global,
        banner,
        warnings: b.warnings,
        help: b.help,
        version: b.version,
        explain: b.explain,
        namespace: b.namespace,
        cluster_domain: b.cluster_domain,
        color: b.color,
    })
}

/// `cdig -h`: the usage and every option.
pub const HELP: &str = "Usage:  cdig [@global-server] [domain] [q-type] [q-class] {q-opt}
            {global-d-opt} host [@local-server] {local-d-opt}
            [ host [@local-server] {local-d-opt} [...]]
Where:  domain   is in the Domain Name System
        q-class  is one of (in,hs,ch,...) [default: in]
        q-type   is one of (a,any,mx,ns,soa,srv,txt,ptr,...) [default: a]
        q-opt    is one of:
                 -4                  (use IPv4 query transport only)
                 -6                  (use IPv6 query transport only)
                 -b address[#port]   (bind to source address/port, UDP)
                 -c class            (specify query class)
                 -f filename         (batch mode: one command line per line)
                 -p port             (specify port number)
                 -q name             (specify query name)
                 -t type             (specify query type)
                 -x dot-notation     (shortcut for reverse lookups)
        d-opt    is of the form +keyword[=value], where keyword is:
                 +[no]additional     (Control display of additional section)
                 +[no]all            (Set or clear all display flags)
                 +[no]answer         (Control display of answer section)
                 +[no]authority      (Control display of authority section)
                 +bufsize=###        (Set EDNS0 Max UDP packet size) [1232]
                 +[no]class          (Control display of class in records)
                 +[no]cmd            (Control display of command line - global option)
                 +[no]comments       (Control display of packet header and section names)
                 +[no]cookie         (Add a COOKIE option to the request)
                 +[no]dnssec         (Request DNSSEC records)
                 +domain=###         (Set the search list to one domain, and search)
                 +[no]edns[=###]     (Set EDNS version) [0]
                 +[no]identify       (ID responders in short answers)
                 +[no]json           (Present the results as RFC 8427 JSON)
                 +ndots=###          (Set search NDOTS value)
                 +[no]question       (Control display of question section)
                 +[no]recurse        (Recursive mode)
                 +retry=###          (Set number of UDP retries) [2]
                 +[no]search         (Set whether to use the searchlist)
                 +[no]short          (Display nothing except short form of answers - global option)
                 +[no]stats          (Control display of statistics)
                 +[no]tcp            (TCP mode (+[no]vc))
                 +timeout=###        (Set query timeout) [5]
                 +tries=###          (Set number of UDP attempts) [3]
                 +[no]ttlid          (Control display of ttls in records)
                 +[no]vc             (TCP mode (+[no]tcp))
                 +[no]yaml           (Present the results as YAML)
        cdig's own options:
                 --explain           (show every name a pod's resolver tries for each name)
                 --namespace NS      (with --explain: the pod's namespace, for its search list)
                 --cluster-domain D  (with --explain: the cluster domain) [cluster.local]
                 --color WHEN        (never, always or auto: colour on a terminal) [auto]
        global d-opts and servers (before host name) affect all queries.
        local d-opts and servers (after host name) affect only that lookup.
        -h                           (print help and exit)
        -v                           (print version and exit)";

/// dig's usage text, printed after a usage error.
pub const USAGE: &str = "Usage:  cdig [@global-server] [domain] [q-type] [q-class] {q-opt}
            {global-d-opt} host [@local-server] {local-d-opt}
            [ host [@local-server] {local-d-opt} [...]]

Use \"cdig -h\" (or \"cdig -h | more\") for complete list of options";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Invocation, ArgError> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args)
    }

    fn one(line: &str) -> Lookup {
        let mut invocation = parse_str(line).unwrap();
        assert_eq!(invocation.lookups.len(), 1, "{line}");
        invocation.lookups.remove(0)
    }

    fn usage(message: &str) -> Result<Invocation, ArgError> {
        Err(ArgError::Usage(UsageError(message.to_string())))
    }

    #[test]
    fn names_types_and_classes_come_in_any_order() {
        for line in [
            "example.com MX",
            "MX example.com",
            "-t mx example.com",
            "example.com -t MX",
        ] {
            let lookup = one(line);
            assert_eq!(
                (lookup.name.as_str(), lookup.qtype),
                ("example.com", RecordType::MX),
                "{line}"
            );
        }
        let chaos = one("version.bind TXT CH");
        assert_eq!(chaos.qclass, DNSClass::CH);
        assert_eq!(one("-c CH -t TXT version.bind").qclass, DNSClass::CH);
        assert_eq!(one("example.com TYPE65").qtype, RecordType::from(65));
        // A type without a name asks for the root's name servers.
        assert_eq!(one("MX").qtype, RecordType::NS);
    }

    #[test]
    fn types_and_classes_follow_digs_rules() {
        // Before the first name they are the default of every name.
        let both = parse_str("AAAA a.example b.example").unwrap().lookups;
        assert!(both.iter().all(|l| l.qtype == RecordType::AAAA));
        // After a name, that name's only.
        let first = parse_str("a.example AAAA b.example").unwrap().lookups;
        assert_eq!(
            (first[0].qtype, first[1].qtype),
            (RecordType::AAAA, RecordType::A)
        );
        // A second type replaces the first, with dig's warning.
        let again = parse_str("a.example AAAA A").unwrap();
        assert_eq!(again.lookups[0].qtype, RecordType::A);
        assert_eq!(again.warnings, [";; Warning, extra type option"]);
        // After -t or -c, bare words are names.
        let closed = parse_str("-c CH a.example TXT").unwrap().lookups;
        assert_eq!(closed.len(), 2);
        assert_eq!(
            (closed[1].name.as_str(), closed[1].qtype, closed[1].qclass),
            ("TXT", RecordType::A, DNSClass::CH)
        );
        // An invalid -t or -c is a warning, not an error.
        let ignored = parse_str("-t FOO x").unwrap();
        assert_eq!(ignored.warnings, [";; Warning, ignoring invalid type FOO"]);
        assert_eq!(ignored.lookups[0].qtype, RecordType::A);
    }

    #[test]
    fn no_name_asks_for_the_root_name_servers() {
        let lookup = one("@127.0.0.1");
        assert_eq!((lookup.name.as_str(), lookup.qtype), (".", RecordType::NS));
        assert_eq!(lookup.options.server.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn options_before_the_first_name_are_global_and_after_one_are_its_own() {
        let invocation =
            parse_str("+tcp a.example +nostats b.example AAAA +norecurse +short").unwrap();
        let [a, b] = &invocation.lookups[..] else {
            panic!("two lookups")
        };
        assert!(a.options.tcp && b.options.tcp);
        assert!(!a.options.stats && a.options.recurse);
        assert!(!b.options.recurse);
        assert_eq!(b.qtype, RecordType::AAAA);
        // +short, +yaml and +cmd are for the whole run, wherever they are.
        assert!(a.options.short && b.options.short && invocation.global.short);
        assert!(!a.options.cmd);
        let late = parse_str("a.example b.example +nocmd").unwrap();
        assert!(!late.lookups[0].options.cmd);
    }

    #[test]
    fn the_banner_needs_cmd_at_the_first_name_and_at_the_end() {
        assert!(parse_str("a.example").unwrap().banner);
        assert!(!parse_str("+nocmd a.example +cmd").unwrap().banner);
        assert!(!parse_str("+noall a.example +all").unwrap().banner);
        assert!(!parse_str("a.example +short +cmd").unwrap().banner);
        assert!(!parse_str("a.example +nocmd").unwrap().banner);
    }

    #[test]
    fn every_plus_option_parses_with_prefixes_and_no() {
        let lookup = one(
            "x +tcp +norecurse +noedns +bufsize=4096 +dnssec +nocmd +nocomments +noquestion \
             +noanswer +noauthority +noadditional +nostats +nottlid +noclass +timeout=2 +tries=4 \
             +search +ndots=3 +nocookie +identify +yaml +json",
        );
        let o = &lookup.options;
        assert!(o.tcp && !o.recurse && o.edns.is_none() && o.bufsize == 4096 && o.dnssec);
        assert!(!o.cmd && !o.comments && !o.question && !o.answer && !o.authority && !o.additional);
        assert!(!o.stats && !o.ttlid && !o.class && o.timeout == 2 && o.tries == 4);
        assert!(o.search && o.ndots == Some(3) && !o.cookie && o.identify && o.yaml && o.json);
        assert_eq!(one("x +retry=1").options.tries, 2);
        assert!(one("x +vc").options.tcp);
        assert!(!one("x +noall +answer").options.stats);
        assert!(one("x +noall +answer").options.answer);
        assert!(!one("x +noadd").options.additional, "prefixes work");
        assert_eq!(
            one("x +ti=3").options.timeout,
            3,
            "time and timeout are one option"
        );
        assert_eq!(one("x +edns=1").options.edns, Some(1));
        assert_eq!(one("x +edns=").options.edns, Some(0));
        assert_eq!(one("x +bufsize").options.bufsize, 1232);
        assert!(
            one("x +short=1").options.short,
            "a value on a switch is ignored, as in dig"
        );
        assert_eq!(
            one("x +cookie=0102030405060708").options.cookie_value,
            Some(vec![1, 2, 3, 4, 5, 6, 7, 8])
        );
        let domain = one("x +domain=svc.cluster.local.").options;
        assert_eq!(
            (domain.domain.as_deref(), domain.search),
            (Some("svc.cluster.local"), true)
        );
    }

    #[test]
    fn unknown_ambiguous_and_bad_options_fail_as_in_dig() {
        assert_eq!(parse_str("x +foo"), usage("Invalid option: +foo"));
        assert_eq!(parse_str("x +a"), usage("Invalid option: +a"), "ambiguous");
        assert_eq!(
            parse_str("x +tc"),
            usage("Invalid option: +tc"),
            "tcp or tcflag"
        );
        assert_eq!(
            parse_str("x +qr"),
            usage("Invalid option: +qr"),
            "dig's, not implemented"
        );
        assert_eq!(parse_str("x -z"), usage("Invalid option: -z"));
        assert_eq!(parse_str("x +ndots"), usage("Invalid option: +ndots"));
        assert_eq!(parse_str("x +domain="), usage("Invalid option: +domain"));
        assert_eq!(
            parse_str("x +bufsize=70000"),
            Err(ArgError::BadValue {
                what: "buffer size",
                value: "70000".into(),
                why: "out of range"
            })
        );
        assert_eq!(
            parse_str("x +tries=abc"),
            Err(ArgError::BadValue {
                what: "tries",
                value: "abc".into(),
                why: "not a valid number"
            })
        );
        assert!(parse_str("x -p").is_err());
        assert!(parse_str("x -p notaport").is_err());
    }

    #[test]
    fn dash_options_take_attached_or_separate_values() {
        assert_eq!(one("-p1053 x").options.port, 1053);
        assert_eq!(one("-p 1053 x").options.port, 1053);
        let reverse = one("-x 10.244.3.20");
        assert_eq!(
            (reverse.name.as_str(), reverse.qtype),
            ("20.3.244.10.in-addr.arpa.", RecordType::PTR)
        );
        assert_eq!(
            reverse_name("fd00:10:96::a"),
            "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."
        );
        assert_eq!(
            reverse_name("1.2.3"),
            "3.2.1.in-addr.arpa.",
            "as dig: whatever is given"
        );
        let bound = one("-b 127.0.0.1#5353 -4 x").options;
        assert_eq!(bound.bind, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(bound.family, Some(Family::V4));
        assert_eq!(
            parse_str("-f batch.txt").unwrap().batch,
            Some(PathBuf::from("batch.txt"))
        );
        assert_eq!(
            one("-q mx").name,
            "mx",
            "-q names a name even if it looks like a type"
        );
    }

    #[test]
    fn help_documents_every_option() {
        for (name, _) in PLUS {
            assert!(
                HELP.contains(&format!("+{name}")) || HELP.contains(&format!("+[no]{name}")),
                "+{name} is not in -h"
            );
        }
        for long in ["--explain", "--namespace", "--cluster-domain", "--color"] {
            assert!(HELP.contains(long), "{long} is not in -h");
        }
    }

    #[test]
    fn cdigs_own_long_options_parse_with_or_without_equals() {
        let invocation =
            parse_str("--explain web --namespace shop --cluster-domain=corp.local. --color always")
                .unwrap();
        assert!(invocation.explain);
        assert_eq!(invocation.namespace.as_deref(), Some("shop"));
        assert_eq!(invocation.cluster_domain, "corp.local");
        assert_eq!(invocation.color, Color::Always);
        assert_eq!(invocation.lookups[0].name, "web");
        assert!(parse_str("x --color sometimes").is_err());
        assert!(parse_str("x --frobnicate").is_err());
        assert!(parse_str("x --namespace").is_err());
    }
}
