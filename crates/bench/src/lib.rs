//! What the benchmarks (`reload-bench`, `scale-bench`) share beyond the
//! test kit: their common options and their start.

use std::path::{Path, PathBuf};

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

impl Common {
    /// A new scratch directory for configs and logs: `<tmp>/<name>-<pid>`.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf, String> {
        let work = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
        Ok(work)
    }

    /// Writes the report: `<name>.md` (titled) and `<name>.json` in the
    /// output directory, created first.
    pub fn write_report(
        &self,
        name: &str,
        title: &str,
        md: &str,
        json: &serde_json::Value,
    ) -> Result<(), String> {
        let out = &self.out;
        std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
        let write = |file: String, text: String| {
            let path = out.join(file);
            std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
        };
        write(format!("{name}.md"), format!("# {title}\n\n{md}"))?;
        write(
            format!("{name}.json"),
            serde_json::to_string_pretty(json).unwrap_or_default(),
        )
    }

    /// Removes the scratch directory, or says where it is with `--keep`.
    pub fn finish(&self, work: &Path) {
        if self.keep {
            eprintln!("scratch directory kept: {}", work.display());
        } else {
            let _ = std::fs::remove_dir_all(work);
        }
    }
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

/// How busy the machine is, for the report: `/proc/loadavg`'s three load
/// averages and, where the kernel has it, the share of the last 60 s in
/// which some task waited for a CPU (`/proc/pressure/cpu`, `some avg60`).
/// Another job on the machine shows here, and moves every figure.
pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into());
    let pressure = std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("some "))?
                .split_whitespace()
                .find_map(|f| f.strip_prefix("avg60="))
                .map(str::to_string)
        });
    match pressure {
        Some(p) => format!("load average {load}, CPU pressure (some, avg60) {p}%"),
        None => format!("load average {load}"),
    }
}
