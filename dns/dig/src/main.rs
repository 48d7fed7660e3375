//! The `cdig` binary: dig's command line and output, for debugging cluster DNS.

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let terminal = std::io::stdout().is_terminal();
    let code = cdig::run(
        &args,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
        terminal,
    );
    ExitCode::from(u8::try_from(code).unwrap_or(10))
}
