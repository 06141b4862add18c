//! What the integration tests (`tests/*.rs`) and the benchmarks
//! (`crates/bench`) drive haproxy-supervisor with: one implementation of
//! each, shared by both.
//!
//! # Layout
//!
//! * [`netns`]: a private network namespace per test (or per bench run).
//! * [`process`]: child processes that die with the test, `/proc` readers
//!   (process tree, zombies), and [`process::Proc`], a plain child with a log.
//! * [`http`]: a blocking HTTP/1.1 client whose failures come in classes
//!   (refused, reset, timeout, other), one-shot or keep-alive.
//! * [`load`]: closed-loop load generators (a new connection per request,
//!   or keep-alive) and their report.
//! * [`consul`]: a `consul agent -dev` on 127.0.0.1:8500.
//! * [`backend`]: the demo HTTP backend (`crates/demo-backend`).
//! * [`supervisor`]: the binary under test: a handle on a running process
//!   (plain or as PID 1 of a pid namespace), one-shot runs, and its JSON log
//!   read as events of the product's contract ([`Event`]).
//! * [`haproxy`]: `haproxy -c`, HAProxy processes under a parent or in this
//!   namespace, a sampler for the benchmarks, rendered config sections.
//! * [`iptables`]: the supervisor's SYN-drop rules in this namespace.
//! * [`catalog`]: catalog files, their atomic writes, and the common
//!   setup of a run on a catalog file (a `www` service on demo backends).
//! * [`measure`]: percentiles, CPU accounting and the machine's description
//!   for benchmark reports.
//!
//! Everything is plain std (threads, `TcpStream`, `/proc`): no async
//! runtime. Test-facing helpers panic with a clear message when something
//! the test depends on is broken: a missing prerequisite is a failure,
//! never a skip.
//!
//! # Network isolation
//!
//! Every test that binds ports or touches iptables first calls
//! [`netns::enter`]. The test thread then lives in a private network
//! namespace (with `lo` up), and so does every process it spawns, so tests can
//! use fixed ports (8500 for Consul, 8080 for HAProxy, ...) and iptables rules
//! while running in parallel. This needs root (`CAP_SYS_ADMIN`).
//!
//! # Child processes
//!
//! [`Consul`], [`Backend`] and [`Supervisor`] own their processes and kill
//! them on drop. They are also started with `PR_SET_PDEATHSIG = SIGKILL`, so
//! they die if the test binary is killed. Note that Linux delivers that signal
//! when the *thread* that spawned the process exits: create a handle on the
//! thread that uses it (normally the test's own thread), not in a short-lived
//! helper thread.
//!
//! When a test panics, dropping a [`Consul`] or a [`Supervisor`] prints the
//! tail of its log to stderr (and keeps Consul's log file), which libtest shows
//! with the failure.
//!
//! # Binaries
//!
//! [`supervisor_bin`] and [`backend_bin`] are the workspace's own binaries in
//! the target directory of the running test or bench (`target/<profile>/`),
//! as the last `cargo test --workspace` / `cargo build --workspace` built
//! them; one that is missing is built then with `cargo build` in that
//! profile. (`cargo test --test X` alone rebuilds the supervisor, a test
//! target of its package, but not the demo backend of another package.)

pub mod backend;
pub mod catalog;
pub mod consul;
pub mod echo;
pub mod haproxy;
pub mod http;
pub mod iptables;
pub mod load;
pub mod measure;
pub mod netns;
pub mod pki;
pub mod process;
pub mod supervisor;
pub mod syslog;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

pub use backend::Backend;
pub use catalog::*;
pub use consul::{ttl_instance, Consul};
pub use echo::HeadEcho;
pub use haproxy::*;
pub use haproxy_supervisor::events::Event;
pub use http::{http_get, http_raw, http_request, HttpError, KeepAlive, Response, Tunnel};
pub use iptables::*;
pub use load::{KeepAliveLoad, Load, LoadOptions, LoadReport};
pub use pki::{CaFile, TestCa};
pub use process::*;
pub use supervisor::*;
pub use syslog::SyslogSink;

// ---------------------------------------------------------------------------
// Prerequisites and polling
// ---------------------------------------------------------------------------

/// Finds `cmd` on `PATH` and in the sbin directories (or checks it directly
/// when it contains a `/`): the full path of an executable file.
pub fn which(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(cmd))
        .find(|p| is_executable(p))
}

/// Like [`which`], but panics with a clear message when `cmd` is missing:
/// tests never skip because a prerequisite is absent.
pub fn require(cmd: &str) -> PathBuf {
    match which(cmd) {
        Some(p) => p,
        None => panic!(
            "required program `{cmd}` is not installed (or not on PATH); \
             run scripts/setup.sh as root to install the test prerequisites"
        ),
    }
}

/// Where scripts/setup.sh installs HAProxy 3.4 (a Debian sid+experimental
/// rootfs run through its own loader by a wrapper script).
pub const HAPROXY34_DEFAULT: &str = "/opt/haproxy-supervisor/haproxy-3.4/haproxy";

/// HAProxy 3.4 for the tests of what only 3.4 does (dynamic backends):
/// `HAPROXY34_BIN`, else [`HAPROXY34_DEFAULT`]. Panics when missing: those
/// tests never skip.
pub fn haproxy34() -> PathBuf {
    let p = std::env::var_os("HAPROXY34_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(HAPROXY34_DEFAULT));
    if !is_executable(&p) {
        panic!(
            "HAProxy 3.4 is not installed at {} (HAPROXY34_BIN); run scripts/setup.sh as root",
            p.display()
        );
    }
    p
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Polls `f` every ~20 ms until it returns true; panics naming `what` if that
/// does not happen within `timeout`.
pub fn wait_until(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    if !poll_until(timeout, f) {
        panic!("timed out after {timeout:?} waiting for: {what}");
    }
}

/// Polls `f` every ~20 ms until it returns true (then returns true) or
/// `timeout` passes (then returns false). `f` is always called at least once,
/// and once more at the deadline.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // The poll interval of the wait itself.
        thread::sleep(Duration::from_millis(20).min(deadline - now));
    }
}

// ---------------------------------------------------------------------------
// The workspace's binaries
// ---------------------------------------------------------------------------

/// The supervisor's binary (`haproxy-supervisor`), built if needed.
pub fn supervisor_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_bin("haproxy-supervisor", "haproxy-supervisor"))
}

/// The demo HTTP backend's binary (`demo-backend`), built if needed.
pub fn backend_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_bin("demo-backend", "demo-backend"))
}

/// The target directory's profile directory of the running executable:
/// `target/<profile>/`, whether it is a test (`deps/`), an example
/// (`examples/`) or a binary.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable's directory").to_path_buf();
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().expect("target/<profile>").to_path_buf(),
        _ => dir,
    }
}

/// `bin` of workspace package `package` in [`profile_dir`]; built with
/// `cargo build -p <package> --bin <bin>` in the same profile and target
/// directory only when it is missing. Panics when that build fails.
///
/// A binary that is there is used as it is: `cargo test --workspace
/// --all-targets` (the test command) builds every binary first, with the
/// features of the whole workspace; a `cargo build -p` from inside a test
/// would resolve other features, overwrite it, and make the next test
/// binary's cargo rebuild half the dependency tree (seen: minutes per test
/// binary).
fn cargo_bin(package: &str, bin: &str) -> PathBuf {
    let profile_dir = profile_dir();
    let path = profile_dir.join(bin);
    if path.is_file() {
        return path;
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target_dir = profile_dir.parent().expect("target directory");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`{cmd:?}` failed ({s}): cannot build {bin}"),
        // No cargo here (a copied binary): use what is there.
        Err(e) if path.is_file() => eprintln!(
            "testkit: cannot run {cargo:?} ({e}); using {}",
            path.display()
        ),
        Err(e) => panic!("cannot run {cargo:?} to build {bin}: {e}"),
    }
    assert!(
        path.is_file(),
        "{} missing after building it",
        path.display()
    );
    path
}
