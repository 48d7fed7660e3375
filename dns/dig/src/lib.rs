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
pub mod print;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::Message;

use args::{Invocation, Lookup, USAGE};
use exchange::{Failure, ResolvConf};

/// dig's exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 1;
    pub const BATCH_FILE: i32 = 8;
    pub const NO_REPLY: i32 = 9;
    pub const INTERNAL: i32 = 10;
}

/// Runs cdig with `args` (without the program name). Returns the exit code; an error writing
/// to `out` (a closed pipe) ends the run quietly.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let invocation = match args::parse(args) {
        Ok(invocation) => invocation,
        Err(usage) => {
            let _ = writeln!(err, "{usage}\n{USAGE}");
            return exit::USAGE;
        }
    };
    if invocation.version {
        let _ = writeln!(err, "cdig {}", env!("CARGO_PKG_VERSION"));
        return exit::OK;
    }
    if invocation.help {
        let _ = writeln!(out, "{USAGE}");
        return exit::OK;
    }
    let lookups = match with_batch(&invocation, args, err) {
        Ok(lookups) => lookups,
        Err(code) => return code,
    };
    let resolv = ResolvConf::load();
    let mut code = exit::OK;
    let mut first_banner = true;
    for (lookup, banner) in &lookups {
        let mut text = String::new();
        let banner = banner.as_deref().map(|args| {
            let full = std::mem::replace(&mut first_banner, false);
            (args, full)
        });
        let result = one(lookup, &resolv, banner, &mut text, err);
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
    err: &mut dyn Write,
) -> Result<Vec<(Lookup, Option<String>)>, i32> {
    let mut lookups = with_banner(&invocation.lookups, args.join(" "));
    let Some(path) = &invocation.batch else {
        return Ok(lookups);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            let _ = writeln!(
                err,
                "{}: {e}\ncdig: couldn't open specified batch file",
                path.display()
            );
            return Err(exit::BATCH_FILE);
        }
    };
    for line in text.lines() {
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        // As in dig, every line is a command line: there are no comments, and an empty line
        // asks for the root's name servers.
        match args::parse_from(&words, invocation.global.clone()) {
            Ok(batch) => lookups.extend(with_banner(&batch.lookups, words.join(" "))),
            Err(usage) => {
                let _ = writeln!(err, "{usage}\n{USAGE}");
                return Err(exit::USAGE);
            }
        }
    }
    Ok(lookups)
}

fn with_banner(lookups: &[Lookup], banner: String) -> Vec<(Lookup, Option<String>)> {
    lookups
        .iter()
        .enumerate()
        .map(|(i, lookup)| (lookup.clone(), (i == 0).then(|| banner.clone())))
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
    let (servers, shown) = match &options.server {
        Some(server) => {
            let found =
                exchange::resolve_server(server, options.port, options.family).map_err(|e| {
                    let _ = writeln!(err, "cdig: {e}");
                    exit::USAGE
                })?;
            (found, server.clone())
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
            (servers, first)
        }
    };
    let query = exchange::build(lookup).map_err(|e| {
        let _ = writeln!(err, "cdig: {e}");
        exit::USAGE
    })?;
    let mut notices = Vec::new();
    let mut outcome = None;
    for server in &servers {
        match exchange::ask(&query, *server, options, &mut notices) {
            Ok(reply) => {
                outcome = Some(reply);
                break;
            }
            Err(Failure::Unreachable(_)) => continue,
        }
    }
    // dig prints what happened on the way first, then the banner, then the answer.
    for notice in &notices {
        out.push_str(notice);
        out.push('\n');
    }
    if let Some((args, full)) = banner.filter(|_| options.cmd) {
        let found = options.server.as_ref().map(|_| servers.len());
        print::banner(out, args, full, found);
    }
    let Some(reply) = outcome else {
        out.push_str(";; no servers could be reached\n");
        return Err(exit::NO_REPLY);
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
