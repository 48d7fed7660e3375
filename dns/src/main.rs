//! `clusterdns`: read flags, build, serve, wait for a signal.

use std::process::ExitCode;

fn main() -> ExitCode {
    clusterdns::cli::main()
}
