//! `cdig`: dig for cluster DNS. It speaks dig's command line, prints what dig 9.18 prints for
//! the same reply, and adds what dig cannot know about Kubernetes.
//!
//! ```text
//! argv ─▶ args::parse ─▶ Lookup… ─▶ exchange::build ─▶ exchange::ask (UDP, TCP, TC retry)
//!                                                          │
//!                             stdout ◀── print::reply ◀────┘ (hickory parses the reply)
//! ```

pub mod args;
pub mod exchange;
pub mod explain;
pub mod print;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::Message;

use args::{ArgError, Invocation, Lookup, USAGE};
use exchange::{Failure, ResolvConf};

/// dig's exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 1;
    pub const BATCH_FILE: i32 = 8;
    pub const NO_REPLY: i32 = 9;
    pub const INTERNAL: i32 = 10;
}

/// Runs cdig with `args` (without the program name); `terminal` says whether `out` is one (for
/// `--color auto`). Returns the exit code; an error writing to `out` (a closed pipe) ends the
/// run quietly.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write, terminal: bool) -> i32 {
    let invocation = match args::parse(args) {
        Ok(invocation) => invocation,
        Err(error) => return report(&error, out, err),
    };
    for warning in &invocation.warnings {
        let _ = writeln!(err, "{warning}");
    }
    if invocation.version {
        let _ = writeln!(err, "cdig {}", env!("CARGO_PKG_VERSION"));
        return exit::OK;
    }
    if invocation.help {
        let _ = writeln!(out, "{}", args::HELP);
        return exit::OK;
    }
    let lookups = match with_batch(&invocation, args, out, err) {
        Ok(lookups) => lookups,
        Err(code) => return code,
    };
    let resolv = ResolvConf::load();
    let color = match invocation.color {
        args::Color::Always => true,
        args::Color::Never => false,
        args::Color::Auto => {
            terminal
                && std::env::var_os("NO_COLOR").is_none()
                && std::env::var("TERM").is_ok_and(|t| t != "dumb")
        }
    };
    if invocation.explain {
        let mut code = exit::OK;
        for (lookup, _) in &lookups {
            let servers = match servers_for(&lookup.options, &resolv, err) {
                Ok((servers, _)) => servers,
                Err(failure) => return failure,
            };
            let mut text = String::new();
            let result = explain::explain(&invocation, lookup, &resolv, &servers, color, &mut text);
            if out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return code;
            }
            if result != exit::OK {
                code = result;
            }
        }
        return code;
    }
    let mut code = exit::OK;
    let mut first_banner = true;
    for (lookup, banner) in &lookups {
        let mut text = String::new();
        let banner = banner.as_deref().map(|args| {
            let full = std::mem::replace(&mut first_banner, false);
            (args, full)
        });
        let result = one(lookup, &resolv, banner, &mut text, err);
        if color {
            text = print::colorize(&text);
        }
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return code;
        }
        if let Err(failure) = result {
            code = failure;
        }
    }
    code
}

/// The lookups of the command line, then those of the batch file, each with the banner its
/// output starts with: dig prints one per command line and one per batch line, showing its
/// words.
fn with_batch(
    invocation: &Invocation,
    args: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Vec<(Lookup, Option<String>)>, i32> {
    let mut lookups = with_banner(&invocation.lookups, args.join(" "), invocation.banner);
    let Some(path) = &invocation.batch else {
        return Ok(lookups);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            let reason = std::io::Error::from(e.kind());
            let _ = writeln!(
                err,
                "{}: {reason}\ncdig: couldn't open specified batch file",
                path.display()
            );
            return Err(exit::BATCH_FILE);
        }
    };
    // Every line is a command line, as in dig: empty lines and lines starting with '#' or ';'
    // are skipped only before the first real line; after it, an empty line asks for the
    // root's name servers. +short, +yaml, +json and +cmd on a line hold for the lines after it.
    let mut global = invocation.global.clone();
    let mut started = false;
    for line in text.lines() {
        let skippable = line.is_empty() || line.starts_with(['#', ';', '\r']);
        if !started && skippable {
            continue;
        }
        started = true;
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        match args::parse_from(&words, global.clone()) {
            Ok(batch) => {
                for warning in &batch.warnings {
                    let _ = writeln!(err, "{warning}");
                }
                global.short = batch.global.short;
                global.yaml = batch.global.yaml;
                global.json = batch.global.json;
                global.cmd = batch.global.cmd;
                lookups.extend(with_banner(&batch.lookups, words.join(" "), batch.banner));
            }
            Err(error) => return Err(report(&error, out, err)),
        }
    }
    Ok(lookups)
}

/// Prints a command-line error as dig does and returns its exit code.
fn report(error: &ArgError, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match error {
        ArgError::Usage(usage) => {
            let _ = writeln!(err, "{usage}\n{USAGE}");
            exit::USAGE
        }
        ArgError::BadValue { what, value, why } => {
            let _ = writeln!(out, "invalid {what} '{value}': {why}");
            let _ = writeln!(err, "cdig: Couldn't parse {what}");
            exit::INTERNAL
        }
    }
}

/// The names `+search` (or `+domain`) tries for a lookup, in order: a name with fewer dots
/// than ndots goes through the search list first and is tried as it is last; one with enough
/// dots the other way round; an absolute name (ending in a dot) only as it is.
pub fn search_names(lookup: &Lookup, resolv: &ResolvConf) -> Vec<String> {
    let name = &lookup.name;
    let options = &lookup.options;
    // +domain applies even after +nosearch, as in dig.
    if (!options.search && options.domain.is_none()) || name.ends_with('.') {
        return vec![name.clone()];
    }
    let search: Vec<String> = match &options.domain {
        Some(domain) => vec![domain.clone()],
        None => resolv.search.clone(),
    };
    if search.is_empty() {
        return vec![name.clone()];
    }
    let ndots = options.ndots.unwrap_or(resolv.ndots);
    let dots = u32::try_from(name.matches('.').count()).unwrap_or(u32::MAX);
    let searched = search
        .iter()
        .map(|domain| format!("{name}.{}", domain.trim_end_matches('.')));
    if dots >= ndots {
        std::iter::once(name.clone()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(name.clone())).collect()
    }
}

/// The addresses to ask, and the server as the statistics show it: `@server` (resolved,
/// filtered by `-4`/`-6`), or the nameservers of `/etc/resolv.conf` (127.0.0.1 without any).
fn servers_for(
    options: &args::Options,
    resolv: &ResolvConf,
    err: &mut dyn Write,
) -> Result<(Vec<std::net::SocketAddr>, String), i32> {
    match &options.server {
        Some(server) => {
            let found =
                exchange::resolve_server(server, options.port, options.family).map_err(|e| {
                    let _ = writeln!(err, "cdig: {e}");
                    exit::USAGE
                })?;
            Ok((found, server.clone()))
        }
        None => {
            let ips: Vec<IpAddr> = if resolv.nameservers.is_empty() {
                vec![Ipv4Addr::LOCALHOST.into()]
            } else {
                resolv.nameservers.clone()
            };
            let first = ips[0].to_string();
            let servers = ips
                .into_iter()
                .map(|ip| std::net::SocketAddr::new(ip, options.port))
                .collect();
            Ok((servers, first))
        }
    }
}

fn with_banner(lookups: &[Lookup], banner: String, show: bool) -> Vec<(Lookup, Option<String>)> {
    lookups
        .iter()
        .enumerate()
        .map(|(i, lookup)| (lookup.clone(), (i == 0 && show).then(|| banner.clone())))
        .collect()
}

fn one(
    lookup: &Lookup,
    resolv: &ResolvConf,
    banner: Option<(&str, bool)>,
    out: &mut String,
    err: &mut dyn Write,
) -> Result<(), i32> {
    let options = &lookup.options;
    let (servers, shown) = servers_for(options, resolv, err)?;
    // +search: the names to try, in order; the first answer that is not NXDOMAIN is shown.
    let candidates = search_names(lookup, resolv);
    let mut notices = Vec::new();
    let mut outcome = Err(Failure::Unreachable);
    for (i, name) in candidates.iter().enumerate() {
        let mut attempt = lookup.clone();
        attempt.name = name.clone();
        loop {
            let query = exchange::build(&attempt).map_err(|e| {
                let _ = writeln!(err, "cdig: {e}");
                exit::INTERNAL
            })?;
            outcome = Err(Failure::Unreachable);
            for server in &servers {
                outcome = exchange::ask(
                    &query,
                    *server,
                    &shown,
                    name,
                    &attempt.options,
                    &mut notices,
                );
                if outcome.is_ok() {
                    break;
                }
            }
            // A server that does not speak our EDNS version says BADVERS: ask again with
            // version 0, as dig does.
            let badvers = outcome.as_ref().is_ok_and(|reply| {
                Message::from_vec(&reply.bytes)
                    .is_ok_and(|m| u16::from(m.metadata.response_code) == 16)
            });
            if badvers && attempt.options.edns.is_some_and(|v| v > 0) {
                if !options.short {
                    notices.push(";; BADVERS, retrying with EDNS version 0.".to_string());
                }
                attempt.options.edns = Some(0);
                continue;
            }
            break;
        }
        let nxdomain = outcome
            .as_ref()
            .is_ok_and(|reply| reply.bytes.get(3).is_some_and(|b| b & 0x0f == 3));
        if !nxdomain || i + 1 == candidates.len() {
            break;
        }
    }
    // dig prints what happened on the way first, then the banner, then the answer.
    for notice in &notices {
        out.push_str(notice);
        out.push('\n');
    }
    let tcp_failed = matches!(outcome, Err(Failure::TcpFailed));
    if let Some((args, full)) = banner.filter(|_| !tcp_failed) {
        let found = options.server.as_ref().map(|_| servers.len());
        print::banner(out, args, full, found);
    }
    let reply = match outcome {
        Ok(reply) => reply,
        Err(Failure::Unreachable) => {
            out.push_str(";; no servers could be reached\n");
            return Err(exit::NO_REPLY);
        }
        // dig said it all with each failed try.
        Err(Failure::TcpFailed) => return Err(exit::NO_REPLY),
    };
    let message = Message::from_vec(&reply.bytes).map_err(|e| {
        let _ = writeln!(err, ";; Got bad packet: {e}");
        exit::INTERNAL
    })?;
    let shown = if options.server.is_some() {
        shown
    } else {
        reply.server.ip().to_string()
    };
    print::reply(out, lookup, &reply, &message, &shown);
    Ok(())
}
