//! What every node daemon does with its one nftables table: keep it equal to what its planner
//! wants from the newest discovery snapshot.
//!
//! ```text
//!  snapshots ─watch─▶ (synced, something pending) ─▶ Planner::plan ─▶ diff(applied, wanted)
//!                                                                       │ or render (first sync,
//!                                                                       │ after a failure, hourly,
//!                                                                       │ when the table is gone)
//!                                                                       ▼
//!                                                                  nft -f - (one transaction)
//!                                                        ok ─▶ Planner::applied   fail ─▶ backoff
//! ```
//!
//! Nothing is programmed before discovery has listed everything once, so a restart never
//! empties a working table. A failed transaction changes nothing (nft applies all or
//! nothing); the next attempt rewrites the whole table after a backoff (1 s doubling to 30 s),
//! even without a new snapshot. Every `check_period` a cheap look at one chain catches a table
//! someone deleted or flushed, and the whole table is rewritten hourly.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery::ClusterSnapshot;
use netd_nft::{Applier, Nft, Table};
use tokio::sync::watch;

/// What a daemon plans from a snapshot, and what it does once the table is in the kernel.
pub trait Planner {
    /// The whole table wanted for `snap` (which has synced).
    fn plan(&mut self, snap: &ClusterSnapshot) -> Table;

    /// The table is in the kernel.
    fn applied(&mut self, snap: &ClusterSnapshot, table: &Table) -> impl Future<Output = ()> {
        let _ = (snap, table);
        async {}
    }

    /// A transaction failed (the table is as it was).
    fn failed(&mut self) {}
}

/// How the loop keeps the table.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `inet` table the daemon owns.
    pub table: &'static str,
    /// A chain the table always has, and text its listing always holds: the periodic check.
    pub check_chain: &'static str,
    pub check_text: &'static str,
    /// How often to check; `None` for never.
    pub check_period: Option<Duration>,
    /// Remove the table when asked to stop.
    pub cleanup_on_exit: bool,
}

/// Why the loop stopped without being asked to.
#[derive(Debug, thiserror::Error)]
#[error("discovery stopped; the rules are left as they were")]
pub struct DiscoveryStopped;

/// Even when nothing seems wrong, the whole table is rewritten this often, so a change someone
/// else made to a chain the check does not look at does not last (kube-proxy does the same).
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(3600);

/// Whether the table and its check chain are there: a cheap look (a tenth of a second at
/// 110k chains; `nft list tables` takes half a minute there).
fn table_is_there(opts: &Options) -> Result<(), String> {
    let out = std::process::Command::new("nft")
        .args(["list", "chain", "inet", opts.table, opts.check_chain])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    if !String::from_utf8_lossy(&out.stdout).contains(opts.check_text) {
        return Err(format!("chain {} has lost its rules", opts.check_chain));
    }
    Ok(())
}

/// The backoff after `failures` failures in a row: 1 s doubling to 30 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500 << failures.clamp(1, 7)).min(Duration::from_secs(30))
}

/// Keeps the table programmed until `shutdown` resolves (Ok) or discovery stops (Err).
pub async fn run<P: Planner>(
    opts: Options,
    mut snapshots: watch::Receiver<Arc<ClusterSnapshot>>,
    planner: &mut P,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DiscoveryStopped> {
    tokio::pin!(shutdown);
    let mut applied: Option<Arc<Table>> = None;
    let mut failures = 0u32;
    let mut outcome = Ok(());
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut checks = opts.check_period.map(|p| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut last_full = Instant::now();
    // Something to program: a new snapshot, a retry, or a table found damaged.
    let mut pending = true;
    loop {
        let snap = snapshots.borrow_and_update().clone();
        if !snap.synced {
            tracing::debug!(
                generation = snap.generation,
                "waiting for discovery to list everything"
            );
        } else if pending {
            let started = Instant::now();
            let table = Arc::new(planner.plan(&snap));
            let planned = started.elapsed();
            let full = applied.is_none();
            if full {
                last_full = Instant::now();
            }
            let script = match &applied {
                Some(old) => netd_nft::diff(old, &table),
                None => netd_nft::render(&table),
            };
            let result = match script {
                // A name the planner made is not valid nft: a bug, not a passing failure.
                Err(e) => Err(format!("the planned table is not valid: {e}")),
                Ok(script) => {
                    let lines = script.lines().count();
                    tokio::task::spawn_blocking(move || Nft::default().apply(&script))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .map(|()| lines)
                }
            };
            match result {
                Ok(lines) => {
                    failures = 0;
                    retry_at = None;
                    let counts = table.counts();
                    tracing::info!(
                        generation = snap.generation,
                        full,
                        lines,
                        chains = counts.chains,
                        rules = counts.rules,
                        elements = counts.elements,
                        plan_ms = planned.as_millis() as u64,
                        total_ms = started.elapsed().as_millis() as u64,
                        "synced"
                    );
                    planner.applied(&snap, &table).await;
                    applied = Some(table);
                }
                Err(e) => {
                    tracing::error!(error = %e, "nft transaction failed; the table is unchanged, retrying with a full rewrite");
                    planner.failed();
                    applied = None;
                    failures = failures.saturating_add(1);
                    retry_at = Some(tokio::time::Instant::now() + backoff(failures));
                }
            }
            pending = retry_at.is_some();
        }
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let check = async {
            match checks.as_mut() {
                Some(i) => i.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    outcome = Err(DiscoveryStopped);
                    break;
                }
                pending = true;
            }
            () = retry => pending = true,
            _ = check => {
                if applied.is_none() {
                    continue;
                }
                let o = opts.clone();
                if last_full.elapsed() >= FULL_SYNC_EVERY {
                    tracing::info!("hourly full rewrite");
                    applied = None;
                    pending = true;
                } else if let Err(why) = tokio::task::spawn_blocking(move || table_is_there(&o))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                {
                    tracing::warn!(%why, "the table is gone or damaged; rewriting it");
                    applied = None;
                    pending = true;
                }
            }
            () = &mut shutdown => break,
        }
    }
    let table = opts.table;
    if opts.cleanup_on_exit {
        let script = format!("add table inet {table}\ndelete table inet {table}\n");
        match tokio::task::spawn_blocking(move || Nft::default().apply(&script)).await {
            Ok(Ok(())) => tracing::info!(table, "removed the table"),
            Ok(Err(e)) => tracing::error!(error = %e, "could not remove the table"),
            Err(e) => tracing::error!(error = %e, "could not remove the table"),
        }
    } else {
        tracing::info!(table, "stopping; the rules stay in place");
    }
    outcome
}

/// Exit code for a usage error (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for an unusable input such as a missing manifests directory (EX_NOINPUT).
pub const EXIT_NOINPUT: u8 = 66;

/// Parses the command line; on `--help` or `--version` prints and exits 0, on an error prints
/// it and exits [`EXIT_USAGE`] (as the `Err` exit code).
pub fn parse_args<A: clap::Parser>() -> Result<A, std::process::ExitCode> {
    A::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            std::process::ExitCode::from(EXIT_USAGE)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}

/// Runs a daemon on a current-thread runtime until SIGTERM or SIGINT and maps the outcome to
/// an exit code: 0 when stopped by a signal, [`EXIT_NOINPUT`] when `noinput` says the error
/// is an unusable input, else 1. `name` prefixes the error line.
pub fn main<F, Fut>(
    name: &str,
    daemon: F,
    noinput: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> std::process::ExitCode
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()>>>) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    use std::process::ExitCode;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Box<dyn std::error::Error>> = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        };
        daemon(Box::pin(shutdown)).await
    });
    // A task still running (a conntrack cleanup) is not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::from(if noinput(e.as_ref()) { EXIT_NOINPUT } else { 1 })
        }
    }
}

/// Checks that `nft` runs, for a clear error at start.
pub fn nft_is_there() -> Result<(), String> {
    std::process::Command::new("nft")
        .arg("-v")
        .output()
        .map(drop)
        .map_err(|_| "the nft binary is not on PATH (apt-get install nftables)".to_string())
}

/// Logs to stderr as `text` or `json`, filtered by `RUST_LOG` (default info).
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Parses `60s`, `5m`, `0s`.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (say 60s, 5m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let waits: Vec<Duration> = (1..12).map(backoff).collect();
        assert_eq!(waits[0], Duration::from_secs(1));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().expect("some"), Duration::from_secs(30));
    }
}
