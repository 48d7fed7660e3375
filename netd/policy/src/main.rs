//! `netd-policy`: read flags, enforce the policies for this node's pods until SIGTERM.

use std::process::ExitCode;

fn main() -> ExitCode {
    netd_policy::cli::main()
}
