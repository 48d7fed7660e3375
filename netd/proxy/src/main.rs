//! `netd-proxy`: read flags, program the node's service network until SIGTERM.

use std::process::ExitCode;

fn main() -> ExitCode {
    netd_proxy::cli::main()
}
