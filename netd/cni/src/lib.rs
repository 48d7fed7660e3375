//! `netd-cni`: the pod network, as a CNI 1.1 plugin (containernetworking/cni SPEC.md).
//!
//! One plugin does what the reference `bridge` and `host-local` plugins do together: a bridge
//! on the node, a veth pair per pod, addresses from a small on-disk allocator (or a delegated
//! IPAM plugin), routes, and masquerading of traffic that leaves the pod network.
//!
//! ```text
//!  runtime ── env CNI_* + stdin config ──▶ protocol (Invocation) ─┐
//!                                           config (NetConf)  ────┤
//!                                                                 ▼
//!                                                   plugin::run ── ADD/DEL/CHECK/STATUS/GC
//!                                        ┌──────────────┬─────────┴───┬───────────────┐
//!                                    netlink        netns          ipam            masq
//!                                 (links, addrs,  (setns into    (flock'd store, (nft table
//!                                  routes)         the pod)       host-local      inet netd-cni)
//!                                                                 layout)
//!  stdout ◀── result or error object (only these; logs go to stderr or logFile)
//! ```
//!
//! The binary is synchronous and single-threaded: entering a pod's namespace moves the one
//! thread there and back.

pub mod config;
pub mod ipam;
pub mod masq;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod protocol;

use std::io::{self, Write};
use std::process::{Command, Output, Stdio};

/// Runs `command` with `input` on its stdin and collects its stdout (and stderr, when the
/// caller asked for it to be piped).
fn run_with_input(command: &mut Command, input: &[u8]) -> io::Result<Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits without reading all of its input answers through its status.
        let _ = stdin.write_all(input);
    }
    child.wait_with_output()
}
