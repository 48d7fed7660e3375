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
    pub recurse: bool,
    /// The EDNS version to send, `None` for no OPT record (`+noedns`).
    pub edns: Option<u8>,
    pub bufsize: u16,
    pub dnssec: bool,
    pub cookie: bool,
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
            recurse: true,
            edns: Some(0),
            bufsize: 1232,
            dnssec: false,
            cookie: true,
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
    /// Whether the type was given (dig queries `.` NS when neither name nor type is).
    pub type_given: bool,
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

/// The `+options`, each with whether it takes `=value`. A prefix of any of these names works
/// when it matches one option only (or is one option's full name).
const PLUS: &[(&str, bool)] = &[
    ("additional", false),
    ("all", false),
    ("answer", false),
    ("authority", false),
    ("bufsize", true),
    ("class", false),
    ("cmd", false),
    ("comments", false),
    ("cookie", false),
    ("dnssec", false),
    ("domain", true),
    ("edns", true),
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
    ("time", true),
    ("timeout", true),
    ("tries", true),
    ("ttlid", false),
    ("vc", false),
    ("yaml", false),
];

fn lookup_plus(word: &str) -> Result<(&'static str, bool), UsageError> {
    let invalid = || UsageError(format!("Invalid option: +{word}"));
    let (negated, rest) = match word.strip_prefix("no") {
        Some(rest) if !PLUS.iter().any(|(name, _)| *name == word) => (true, rest),
        _ => (false, word),
    };
    let key = rest.split('=').next().unwrap_or_default();
    if key.is_empty() {
        return Err(invalid());
    }
    if let Some((name, _)) = PLUS.iter().find(|(name, _)| *name == key) {
        return Ok((name, negated));
    }
    let mut matches = PLUS.iter().filter(|(name, _)| name.starts_with(key));
    match (matches.next(), matches.next()) {
        (Some((name, _)), None) => Ok((name, negated)),
        _ => Err(invalid()),
    }
}

/// Applies one `+option` (without the `+`).
pub fn apply_plus(options: &mut Options, word: &str) -> Result<(), UsageError> {
    let (name, negated) = lookup_plus(word)?;
    let value = word.split_once('=').map(|(_, v)| v);
    let takes_value = PLUS.iter().any(|(n, v)| *n == name && *v);
    let number = |what: &str| -> Result<u64, UsageError> {
        let text = value.ok_or_else(|| UsageError(format!("{what}: missing value")))?;
        text.parse::<u64>()
            .map_err(|_| UsageError(format!("Invalid option: +{word}")))
    };
    let on = !negated;
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
        "bufsize" if on => {
            let size = number("bufsize")?;
            options.bufsize = u16::try_from(size)
                .map_err(|_| UsageError(format!("bufsize out of range: {size}")))?;
        }
        "bufsize" => options.bufsize = 1232,
        "class" => options.class = on,
        "cmd" => options.cmd = on,
        "comments" => options.comments = on,
        "cookie" => options.cookie = on,
        "dnssec" => options.dnssec = on,
        "edns" if on && value.is_some() => {
            let version = number("edns")?;
            options.edns = Some(
                u8::try_from(version)
                    .map_err(|_| UsageError(format!("edns out of range: {version}")))?,
            );
        }
        "edns" => options.edns = on.then_some(0),
        "domain" if on => {
            let domain = value.ok_or_else(|| UsageError("domain: missing value".into()))?;
            options.domain = Some(domain.to_string());
            options.search = true;
        }
        "domain" => return Err(UsageError(format!("Invalid option: +{word}"))),
        "identify" => options.identify = on,
        "json" => {
            options.json = on;
            if on {
                options.cmd = false;
            }
        }
        "ndots" if on => {
            let n = number("ndots")?;
            options.ndots = Some(u32::try_from(n).unwrap_or(u32::MAX));
        }
        "ndots" => options.ndots = None,
        "question" => options.question = on,
        "recurse" => options.recurse = on,
        // dig: +retry is the number of retries, +tries the number of attempts.
        "retry" if on => {
            options.tries = u32::try_from(number("retry")?)
                .unwrap_or(u32::MAX)
                .saturating_add(1)
        }
        "tries" if on => options.tries = u32::try_from(number("tries")?).unwrap_or(u32::MAX).max(1),
        "retry" | "tries" => return Err(UsageError(format!("Invalid option: +{word}"))),
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
        "tcp" | "vc" => options.tcp = on,
        "time" | "timeout" if on => options.timeout = number("timeout")?.max(1),
        "time" | "timeout" => return Err(UsageError(format!("Invalid option: +{word}"))),
        "ttlid" => options.ttlid = on,
        "yaml" => {
            options.yaml = on;
            // dig's YAML has no banner.
            if on {
                options.cmd = false;
            }
        }
        _ => return Err(UsageError(format!("Invalid option: +{word}"))),
    }
    if value.is_some() && !takes_value {
        return Err(UsageError(format!("Invalid option: +{word}")));
    }
    Ok(())
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

/// The reverse name of an address, as `-x` makes it.
pub fn reverse_name(address: &str) -> Result<String, UsageError> {
    let ip: IpAddr = address
        .parse()
        .map_err(|_| UsageError(format!("Invalid IP address {address}")))?;
    Ok(match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(v6) => {
            let mut name = String::new();
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa.");
            name
        }
    })
}

struct Builder {
    global: Options,
    lookups: Vec<Lookup>,
    batch: Option<PathBuf>,
    help: bool,
    version: bool,
    explain: bool,
    namespace: Option<String>,
    cluster_domain: String,
    color: Color,
}

impl Builder {
    /// The lookup options apply to: the current lookup, or the global ones before any name.
    fn options(&mut self) -> &mut Options {
        match self.lookups.last_mut() {
            Some(lookup) => &mut lookup.options,
            None => &mut self.global,
        }
    }

    /// The lookup a name, type or class goes to; a new one when the last already has a name.
    fn start(&mut self, name: Option<String>) {
        let options = self.global.clone();
        self.lookups.push(Lookup {
            name: name.unwrap_or_default(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            type_given: false,
            options,
        });
    }

    fn current_for_type(&mut self) -> &mut Lookup {
        if self.lookups.last().is_none_or(|l| l.type_given) {
            self.start(None);
        }
        let index = self.lookups.len() - 1;
        &mut self.lookups[index]
    }

    fn name(&mut self, name: String) {
        match self.lookups.last_mut() {
            Some(lookup) if lookup.name.is_empty() => lookup.name = name,
            _ => self.start(Some(name)),
        }
    }
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Invocation, UsageError> {
    parse_from(args, Options::default())
}

/// Parses arguments starting from `global` options (a batch file's line starts from the
/// command line's).
pub fn parse_from(args: &[String], global: Options) -> Result<Invocation, UsageError> {
    let mut b = Builder {
        global,
        lookups: Vec::new(),
        batch: None,
        help: false,
        version: false,
        explain: false,
        namespace: None,
        cluster_domain: "cluster.local".to_string(),
        color: Color::Auto,
    };
    let mut words = args.iter().peekable();
    while let Some(word) = words.next() {
        let mut value = |flag: &str| -> Result<String, UsageError> {
            // `-p53` and `-p 53` both work.
            let attached = &word[flag.len()..];
            if !attached.is_empty() {
                return Ok(attached.to_string());
            }
            words.next().cloned().ok_or_else(|| {
                UsageError(format!("option requires an argument -- '{}'", &flag[1..]))
            })
        };
        if let Some(long) = word.strip_prefix("--") {
            // cdig's own options, which dig does not have: `--name value` or `--name=value`.
            let (name, attached) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (long, None),
            };
            let mut value = || -> Result<String, UsageError> {
                match &attached {
                    Some(value) => Ok(value.clone()),
                    None => words.next().cloned().ok_or_else(|| {
                        UsageError(format!("option requires an argument -- '{name}'"))
                    }),
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
                            return Err(UsageError(format!(
                                "--color: {other:?} is not one of never, always, auto"
                            )));
                        }
                    }
                }
                "help" => b.help = true,
                "version" => b.version = true,
                _ => return Err(UsageError(format!("Invalid option: {word}"))),
            }
        } else if let Some(server) = word.strip_prefix('@') {
            b.options().server = Some(server.to_string());
        } else if let Some(plus) = word.strip_prefix('+') {
            apply_plus(b.options(), plus)?;
            // dig keeps +short, +yaml and +cmd (also as part of +all) for the whole run, wherever
            // they appear.
            let (name, negated) = lookup_plus(plus)?;
            if matches!(name, "short" | "yaml" | "json" | "cmd" | "all") {
                let cmd = b.options().cmd;
                for options in std::iter::once(&mut b.global)
                    .chain(b.lookups.iter_mut().map(|l| &mut l.options))
                {
                    if name == "all" {
                        options.cmd = !negated;
                    } else if name == "cmd" {
                        options.cmd = cmd;
                    } else {
                        apply_plus(options, plus)?;
                    }
                }
            }
        } else if word.starts_with('-') && word.len() > 1 {
            match &word[..2] {
                "-p" => {
                    let port = value("-p")?;
                    b.options().port = port
                        .parse()
                        .map_err(|_| UsageError(format!("invalid port number {port}")))?;
                }
                "-t" => {
                    let text = value("-t")?;
                    let qtype = parse_type(&text)
                        .ok_or_else(|| UsageError(format!("invalid type: {text}")))?;
                    let lookup = b.current_for_type();
                    lookup.qtype = qtype;
                    lookup.type_given = true;
                }
                "-c" => {
                    let text = value("-c")?;
                    let class = parse_class(&text)
                        .ok_or_else(|| UsageError(format!("invalid class: {text}")))?;
                    if b.lookups.is_empty() {
                        b.start(None);
                    }
                    if let Some(lookup) = b.lookups.last_mut() {
                        lookup.qclass = class;
                    }
                }
                "-x" => {
                    let address = value("-x")?;
                    let name = reverse_name(&address)?;
                    b.name(name);
                    if let Some(lookup) = b.lookups.last_mut()
                        && !lookup.type_given
                    {
                        lookup.qtype = RecordType::PTR;
                        lookup.type_given = true;
                    }
                }
                "-q" => {
                    let name = value("-q")?;
                    b.name(name);
                }
                "-f" => b.batch = Some(PathBuf::from(value("-f")?)),
                "-b" => {
                    let text = value("-b")?;
                    let (address, port) = match text.split_once('#') {
                        Some((a, p)) => (
                            a,
                            p.parse()
                                .map_err(|_| UsageError(format!("invalid port number {p}")))?,
                        ),
                        None => (text.as_str(), 0),
                    };
                    let ip: IpAddr = address
                        .parse()
                        .map_err(|_| UsageError(format!("invalid address {address}")))?;
                    b.options().bind = Some(SocketAddr::new(ip, port));
                }
                "-4" if word.len() == 2 => b.options().family = Some(Family::V4),
                "-6" if word.len() == 2 => b.options().family = Some(Family::V6),
                "-h" if word.len() == 2 => b.help = true,
                "-v" if word.len() == 2 => b.version = true,
                _ => return Err(UsageError(format!("Invalid option: {word}"))),
            }
        } else if let Some(qtype) =
            parse_type(word).filter(|_| b.lookups.last().is_none_or(|l| !l.type_given))
        {
            let lookup = b.current_for_type();
            lookup.qtype = qtype;
            lookup.type_given = true;
        } else if let Some(class) = parse_class(word) {
            if b.lookups.is_empty() {
                b.start(None);
            }
            if let Some(lookup) = b.lookups.last_mut() {
                lookup.qclass = class;
            }
        } else {
            b.name(word.clone());
        }
    }
    // Without a name dig asks for the root's name servers.
    if b.lookups.is_empty() && b.batch.is_none() {
        b.start(None);
    }
    // A lookup without a name asks for the root's name servers, whatever type was given, as
    // dig does.
    for lookup in &mut b.lookups {
        if lookup.name.is_empty() {
            lookup.name = ".".to_string();
            lookup.qtype = RecordType::NS;
        }
    }
    Ok(Invocation {
        lookups: b.lookups,
        batch: b.batch,
        global: b.global,
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

    fn parse_str(line: &str) -> Result<Invocation, UsageError> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args)
    }

    fn one(line: &str) -> Lookup {
        let mut invocation = parse_str(line).unwrap();
        assert_eq!(invocation.lookups.len(), 1, "{line}");
        invocation.lookups.remove(0)
    }

    #[test]
    fn names_types_and_classes_come_in_any_order() {
        for line in [
            "example.com MX",
            "MX example.com",
            "-t mx example.com",
            "example.com -t MX IN",
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
        assert!(parse_str("-c NOPE x").is_err());
        assert_eq!(one("example.com TYPE65").qtype, RecordType::from(65));
        // A second type word after the type is a name, as in dig.
        let lookups = parse_str("a a").unwrap().lookups;
        assert_eq!(
            (lookups[0].name.as_str(), lookups[0].qtype),
            ("a", RecordType::A)
        );
        // A type without a name asks for the root's name servers.
        assert_eq!(one("MX").qtype, RecordType::NS);
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
        assert_eq!(one("x +edns=1").options.edns, Some(1));
    }

    #[test]
    fn unknown_and_ambiguous_options_are_errors_with_digs_message() {
        assert_eq!(
            parse_str("x +foo"),
            Err(UsageError("Invalid option: +foo".into()))
        );
        assert_eq!(
            parse_str("x +a"),
            Err(UsageError("Invalid option: +a".into())),
            "ambiguous"
        );
        assert_eq!(
            parse_str("x -z"),
            Err(UsageError("Invalid option: -z".into()))
        );
        assert!(parse_str("x +short=1").is_err());
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
            reverse_name("fd00:10:96::a").unwrap(),
            "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."
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
            // +time is dig's other name for +timeout.
            if *name == "time" {
                continue;
            }
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
