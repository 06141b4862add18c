//! What the benchmarks (`reload-bench`, `scale-bench`) share beyond the
//! test kit: their common options and their start.

use std::path::PathBuf;

/// Options both benchmarks take.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Port of HAProxy's HTTP frontend (inside the bench's namespace)
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Output directory
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Keep the scratch directory (configs, logs) instead of removing it
    #[arg(long)]
    pub keep: bool,
}

/// Runs a bench: first into a network namespace of its own (before any
/// thread or child exists, so everything it starts shares it and the
/// host's ports and iptables rules are never touched), with TCP settings
/// for a heavy client and the open-files limit raised, then `run`. Exits 2
/// when the namespace cannot be had, 1 when `run` fails.
pub fn main(name: &str, run: impl FnOnce() -> Result<(), String>) {
    if let Err(e) = testkit::netns::try_enter() {
        eprintln!("{name}: {e}");
        std::process::exit(2);
    }
    testkit::netns::tune_for_load();
    testkit::raise_nofile();
    // Built (or found up to date) before anything starts.
    testkit::supervisor_bin();
    if let Err(e) = run() {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}
