//! The `netd-cni` binary: read the `CNI_*` environment and the configuration on stdin, run the
//! command, print the result or the error object on stdout, exit 0 or 1.

use std::io::{Read, Write};
use std::process::ExitCode;

use netd_cni::plugin;
use netd_cni::protocol::{CniError, Code, Invocation};

fn main() -> ExitCode {
    let invocation = Invocation::from_env(|name| std::env::var(name).ok());
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => plugin::run(invocation, &stdin),
        Err(err) => plugin::Outcome {
            version: netd_cni::protocol::CURRENT_VERSION.to_string(),
            result: Err(CniError::new(Code::Io, format!("reading stdin: {err}"))),
        },
    };
    let (printed, code) = match outcome.result {
        Ok(Some(result)) => (Some(result), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(err) => (Some(err.to_json(&outcome.version)), ExitCode::FAILURE),
    };
    if let Some(json) = printed {
        let mut stdout = std::io::stdout().lock();
        // The runtime reads the whole of stdout; nothing to do if it has gone.
        let _ = writeln!(stdout, "{json}").and_then(|()| stdout.flush());
    }
    code
}
