//! `cdig --explain NAME [TYPE]`: how a pod resolves a name, one query per name its resolver
//! tries, so that the cost of short names (and of `ndots:5`) is visible.
//!
//! A pod's stub resolver (glibc's `res_search`) tries a name with fewer dots than `ndots`
//! through the search list first and as it is last; a name with enough dots the other way round;
//! a name ending in a dot only as it is. It goes on after NXDOMAIN, NODATA and SERVFAIL and stops
//! at the first answer (or at any other error). The search list comes from `--namespace`
//! (`NS.svc.DOMAIN svc.DOMAIN DOMAIN`, what the kubelet writes) or from `/etc/resolv.conf`;
//! `ndots` is 5, a pod's default, unless `+ndots` says otherwise.

use std::fmt::Write as _;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};

use crate::args::{Invocation, Lookup};
use crate::exchange::{self, ResolvConf};
use crate::print;

/// One name the resolver tried.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    /// The status, or `None` when no server answered.
    pub status: Option<ResponseCode>,
    pub answers: usize,
    pub elapsed: Duration,
}

/// Whether a pod's resolver stops at this step: it has an answer, or an error other than
/// NXDOMAIN, NODATA or SERVFAIL.
fn stops(step: &Step) -> bool {
    match step.status {
        Some(ResponseCode::NoError) => step.answers > 0,
        Some(ResponseCode::NXDomain | ResponseCode::ServFail) => false,
        Some(_) | None => true,
    }
}

/// The names a pod's resolver tries for `name`, in order.
pub fn candidates(name: &str, search: &[String], ndots: u32) -> Vec<String> {
    if name.ends_with('.') {
        return vec![name.to_string()];
    }
    let absolute = format!("{name}.");
    let searched = search
        .iter()
        .map(|domain| format!("{name}.{}.", domain.trim_end_matches('.')));
    let dots = u32::try_from(name.matches('.').count()).unwrap_or(u32::MAX);
    if dots >= ndots {
        std::iter::once(absolute).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(absolute)).collect()
    }
}

/// Runs the explanation for `lookup` and writes it to `out`; the exit code (9 when no server
/// answered at all).
pub fn explain(
    invocation: &Invocation,
    lookup: &Lookup,
    resolv: &ResolvConf,
    servers: &[std::net::SocketAddr],
    color: bool,
    out: &mut String,
) -> i32 {
    let (search, source) = match &invocation.namespace {
        Some(ns) => {
            let domain = &invocation.cluster_domain;
            (
                vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ],
                format!("--namespace {ns}"),
            )
        }
        None => (resolv.search.clone(), "/etc/resolv.conf".to_string()),
    };
    let ndots = lookup.options.ndots.unwrap_or(5);
    let names = candidates(&lookup.name, &search, ndots);
    let paint = |code: &str, text: String| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text
        }
    };
    let _ = writeln!(
        out,
        ";; How a pod resolves {} {} (search: {}; ndots:{ndots}; from {source})",
        lookup.name,
        lookup.qtype,
        if search.is_empty() {
            "none".to_string()
        } else {
            search.join(" ")
        },
    );
    let shown: Vec<String> = servers.iter().map(|s| print::server_text(*s)).collect();
    let _ = writeln!(out, ";; server: {}", shown.join(", "));
    let _ = writeln!(out, ";;");
    let width = names.iter().map(String::len).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        ";; {:>3}  {:<width$}  {:<8}  {:>7}  {:>9}",
        "try", "name", "status", "answers", "time"
    );
    let mut steps: Vec<Step> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut attempt = lookup.clone();
        attempt.name = name.clone();
        let step = ask(&attempt, servers);
        let status = step
            .status
            .map_or("no reply".to_string(), print::status_text);
        let mut line = format!(
            ";; {:>3}  {:<width$}  {:<8}  {:>7}  {:>6.1} ms",
            i + 1,
            name,
            status,
            step.answers,
            step.elapsed.as_secs_f64() * 1000.0
        );
        let done = stops(&step);
        if done && step.answers > 0 {
            line.push_str("  <= answer");
            line = paint("32", line);
        } else if step.status == Some(ResponseCode::NXDomain) {
            line = paint("2", line);
        } else if !done || step.status.is_none() {
            line = paint("31", line);
        }
        let _ = writeln!(out, "{line}");
        steps.push(step);
        if done {
            break;
        }
    }
    let total: Duration = steps.iter().map(|s| s.elapsed).sum();
    let _ = writeln!(out, ";;");
    let last = steps.last();
    match last {
        Some(step) if step.answers > 0 && step.status == Some(ResponseCode::NoError) => {
            let before = steps.len() - 1;
            let _ = write!(
                out,
                ";; Answered by try {} (of up to {}) in {:.1} ms.",
                steps.len(),
                names.len(),
                total.as_secs_f64() * 1000.0
            );
            if before > 0 {
                let wasted: Duration = steps[..before].iter().map(|s| s.elapsed).sum();
                let _ = write!(
                    out,
                    " {before} quer{} before it ({:.1} ms) asked for names that do not answer; \
                     asking for {} (with the final dot) skips {}.",
                    if before == 1 { "y" } else { "ies" },
                    wasted.as_secs_f64() * 1000.0,
                    step.name,
                    if before == 1 { "it" } else { "them" }
                );
            }
            let _ = writeln!(out);
            exit_ok()
        }
        Some(step) if step.status.is_none() => {
            let _ = writeln!(out, ";; No server answered for {}.", step.name);
            crate::exit::NO_REPLY
        }
        Some(step) => {
            let status = step
                .status
                .map_or("no reply".to_string(), print::status_text);
            let _ = writeln!(
                out,
                ";; No answer after {} tr{} in {:.1} ms; the last said {status}.",
                steps.len(),
                if steps.len() == 1 { "y" } else { "ies" },
                total.as_secs_f64() * 1000.0
            );
            exit_ok()
        }
        None => exit_ok(),
    }
}

fn exit_ok() -> i32 {
    crate::exit::OK
}

fn ask(lookup: &Lookup, servers: &[std::net::SocketAddr]) -> Step {
    let mut step = Step {
        name: lookup.name.clone(),
        status: None,
        answers: 0,
        elapsed: Duration::ZERO,
    };
    let Ok(query) = exchange::build(lookup) else {
        return step;
    };
    let mut notices = Vec::new();
    for server in servers {
        let shown = server.ip().to_string();
        if let Ok(reply) = exchange::ask(
            &query,
            *server,
            &shown,
            &lookup.name,
            &lookup.options,
            &mut notices,
        ) {
            step.elapsed = reply.elapsed;
            if let Ok(message) = Message::from_vec(&reply.bytes) {
                step.status = Some(message.metadata.response_code);
                step.answers = message.answers.len();
            }
            return step;
        }
    }
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_go_through_the_search_list_first() {
        let search: Vec<String> = [
            "shop.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            candidates("frontend", &search, 5),
            [
                "frontend.shop.svc.cluster.local.",
                "frontend.svc.cluster.local.",
                "frontend.cluster.local.",
                "frontend."
            ]
        );
        assert_eq!(candidates("a.b.c.d.e.f", &search, 5)[0], "a.b.c.d.e.f.");
        assert_eq!(candidates("example.com.", &search, 5), ["example.com."]);
    }
}
