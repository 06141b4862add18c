//! `reload-bench`: what HAProxy reloads cost the clients, per reload
//! strategy (SPEC §6), under closed-loop load.
//!
//! ```text
//! cargo run --release -p bench --bin reload-bench -- [--duration-secs 8]
//!     [--reload-every-ms 150] [--clients 50] [--out bench/results]
//! ```
//!
//! Runs as root: it first moves into its own network namespace (so it owns
//! 127.0.0.1's ports and its iptables rules never touch the host), then for
//! each scenario starts a `demo-backend` and HAProxy — under the supervisor,
//! alone in master-worker mode, or alone under the bench's own minimal
//! reload loop for the peer rows — and drives load with C client threads,
//! each opening a new TCP connection per request (`Connection: close`), for
//! D seconds, while a reload is triggered every R ms. Scenarios: `baseline`
//! (supervisor, no reloads), `plain`, `syn-drop`, `seamless`, `inherit` (SIGHUP to the
//! supervisor), `bare` (the baseline's rendered config, every R ms `haproxy
//! -f cfg -x <admin socket> -sf <old pid>` and nothing else: the floor for a
//! reload that starts a process) and `master-worker` (`haproxy -W`, SIGUSR2
//! to the master).
//!
//! Every scenario also exists as `<name>-ka`: the same, but each client
//! keeps one HTTP/1.1 keep-alive connection, opening a new one only after
//! the server answered `Connection: close` or after a failure; a request
//! that gets no complete response counts as failed (no retry). Their
//! ratios are to `baseline-ka`, run before the first of them; connections
//! opened are reported.
//!
//! For every scenario the CPU used in the window is measured from /proc:
//! the supervisor's own and the HAProxy processes' (exited ones included,
//! through the parent's reaped-children times), per reload beyond what
//! serving the requests costs at the baseline's rate, and the supervisor's
//! overhead against `bare` (points of throughput, CPU per reload).
//!
//! Two more scenarios change servers instead of signalling (SPEC §10):
//! every R ms the catalog file is rewritten (atomically) with one
//! server-only change, round and round — an instance added, a weight
//! changed, an instance's check failing, an instance moved to another
//! backend's port, the check passing again, the instance removed — between
//! three demo backends, so at least one instance always passes. `live`: the
//! supervisor applies them through the runtime API; `live-off`: the same
//! with `HAPROXY_NO_LIVE=true`, every change a reload. For every scenario
//! the HAProxy processes under the supervisor (or the master) are sampled
//! from /proc every 20 ms during the window: processes started is what
//! live changes are to save.
//!
//! Writes `results.md`, `results.json` and `reload-throughput.svg` into the
//! output directory and prints the table. See bench/README.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use nix::sys::signal::Signal;
use serde_json::json;
use testkit::load::{Load as LoadRun, LoadOptions};
use testkit::measure::{self, CpuSnapshot};
use testkit::{http, Backend, Event, HaproxySampler, Proc, Sampled};

const BUCKET_MS: u64 = 100;
const HOST: &str = "www.example.com";
/// How often the HAProxy processes are sampled during the window.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

#[derive(Parser, Debug, Clone)]
#[command(about = "Measures what HAProxy reloads cost clients, per reload strategy")]
struct Args {
    /// Concurrent clients (threads), each with one request in flight
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Seconds of measured load per scenario
    #[arg(long, default_value_t = 8.0)]
    duration_secs: f64,
    /// Milliseconds between reload triggers (and catalog changes in the
    /// `live` and `live-off` scenarios)
    #[arg(long, default_value_t = 150)]
    reload_every_ms: u64,
    /// Per-request timeout (connect included), in milliseconds
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Unmeasured load before each scenario, in milliseconds
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Pause between scenarios, in milliseconds
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Scenarios to run, comma-separated (baseline is always run first;
    /// baseline-ka before the first keep-alive scenario, `<name>-ka`)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,live,live-off,plain,syn-drop,seamless,inherit,bare,master-worker,baseline-ka,plain-ka,syn-drop-ka,seamless-ka,inherit-ka,bare-ka,master-worker-ka"
    )]
    scenarios: Vec<String>,
    #[command(flatten)]
    common: bench::Common,
    /// A template for the supervisor (HAPROXY_TEMPLATE) instead of the
    /// built-in one, for experiments; the master-worker row uses what it
    /// renders too
    #[arg(long)]
    template: Option<PathBuf>,
}

/// Outcome counts of one load run: per class, latencies, and per
/// [`BUCKET_MS`] bucket.
type Load = testkit::LoadReport;

/// How a scenario's HAProxy is reloaded.
enum Target {
    /// The supervisor: SIGHUP.
    Supervisor(Proc),
    /// `haproxy -W`: SIGUSR2 to the master.
    MasterWorker(Proc),
    /// HAProxy alone, reloaded by the bench's minimal loop.
    Bare(Bare),
}

/// The pid of the last process that sent the bench SIGUSR1 (see [`Bare`]).
static SIGUSR1_FROM: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_sigusr1(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler;
    // an atomic store is async-signal-safe.
    let pid = unsafe { (*info).si_pid() };
    SIGUSR1_FROM.store(pid, Ordering::SeqCst);
}

/// Records who sends the bench SIGUSR1 (instead of dying of it). Call
/// before any thread exists.
fn catch_sigusr1() -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let act = SigAction::new(
        SigHandler::SigAction(on_sigusr1),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores into an atomic.
    unsafe { sigaction(Signal::SIGUSR1, &act) }
        .map(|_| ())
        .map_err(|e| format!("sigaction(SIGUSR1): {e}"))
}

/// The `bare` peer row: HAProxy on the baseline's rendered config, started
/// and reloaded by the bench itself with nothing around it — what a shell
/// loop `haproxy -D -p pidfile -f cfg -x <admin socket> -sf $(cat pidfile)`
/// does. A reload is `haproxy -f cfg -x <admin socket> -sf <serving pid>
/// <bench pid>`: the bench's own pid is there so that HAProxy tells it,
/// with the SIGUSR1 it sends the old process, that it is up (listeners
/// taken, old process told to finish): the moment `haproxy -D` returns and
/// the pidfile names the new process. That is the only wait: no render, no
/// check, no polling for listeners. Reloads are serialized as the
/// supervisor's are (a trigger during one makes one follow-up); a reload
/// that overlapped the previous start would find no process to take the
/// sockets from (`-x` fails and the new process exits).
struct Bare {
    bin: PathBuf,
    cfg: PathBuf,
    socket: PathBuf,
    /// HAProxy's stderr, all processes (stdout, the access log: /dev/null).
    log: PathBuf,
    /// The serving process (the last one that came up).
    serving: i32,
    /// Per reload: spawn → up, ms.
    took_ms: Vec<f64>,
    /// When each reload's process came up.
    up_at: Vec<SystemTime>,
    /// Processes started by a reload.
    reloads: usize,
    /// Processes that exited with a failure status before coming up (a
    /// failed start).
    failed: usize,
    spawn_errors: usize,
    reaper: BareReaper,
}

/// Reaps the bare loop's processes on a thread of its own (a shell loop's
/// daemonized HAProxy is reaped by init, not by the loop): reaping a
/// process costs the kernel some work (its /proc entries are invalidated),
/// which must not hold the loop's cadence. The thread's CPU is reported with
/// the loop's.
struct BareReaper {
    tx: Option<std::sync::mpsc::Sender<std::process::Child>>,
    /// Pids of the processes not reaped yet.
    live: Arc<std::sync::Mutex<Vec<i32>>>,
    /// The reaper thread's CPU time so far, ns.
    cpu_ns: Arc<std::sync::atomic::AtomicU64>,
    /// Processes that exited with a failure status.
    failed: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BareReaper {
    fn start() -> BareReaper {
        use std::sync::atomic::{AtomicU64, AtomicUsize};
        let (tx, rx) = std::sync::mpsc::channel::<std::process::Child>();
        let live = Arc::new(std::sync::Mutex::new(Vec::new()));
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, c, f, s) = (
            Arc::clone(&live),
            Arc::clone(&cpu_ns),
            Arc::clone(&failed),
            Arc::clone(&stop),
        );
        let thread = thread::Builder::new()
            .name("bare-reaper".into())
            .spawn(move || {
                let mut children: Vec<std::process::Child> = Vec::new();
                loop {
                    children.extend(rx.try_iter());
                    children.retain_mut(|ch| match ch.try_wait() {
                        Ok(Some(status)) => {
                            if !status.success() {
                                f.fetch_add(1, Ordering::SeqCst);
                            }
                            false
                        }
                        Ok(None) => true,
                        Err(_) => false,
                    });
                    *l.lock().unwrap_or_else(|e| e.into_inner()) =
                        children.iter().map(|ch| ch.id() as i32).collect();
                    c.store((thread_cpu_s() * 1e9) as u64, Ordering::SeqCst);
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                for ch in &mut children {
                    let _ = ch.kill();
                    let _ = ch.wait();
                }
            })
            .ok();
        BareReaper {
            tx: Some(tx),
            live,
            cpu_ns,
            failed,
            stop,
            thread,
        }
    }

    /// Hands a process over (its pid is live from now on).
    fn adopt(&self, child: std::process::Child) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id() as i32);
        if let Some(tx) = &self.tx {
            let _ = tx.send(child);
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn cpu_s(&self) -> f64 {
        self.cpu_ns.load(Ordering::SeqCst) as f64 / 1e9
    }

    /// Stops reaping; processes still alive are killed.
    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BareReaper {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Bare {
    /// Starts the first process (no `-x`, no `-sf`) and waits until it
    /// serves.
    fn start(bin: &Path, dir: &Path, addr: &SocketAddr) -> Result<Bare, String> {
        let mut b = Bare {
            bin: bin.to_path_buf(),
            cfg: dir.join("haproxy.cfg"),
            socket: dir.join("admin.sock"),
            log: dir.join("haproxy.log"),
            serving: 0,
            took_ms: Vec::new(),
            up_at: Vec::new(),
            reloads: 0,
            failed: 0,
            spawn_errors: 0,
            reaper: BareReaper::start(),
        };
        std::fs::write(&b.log, b"").map_err(|e| e.to_string())?;
        let first = b.spawn(false)?;
        b.serving = first.id() as i32;
        b.reaper.adopt(first);
        if !http::wait_status(addr, HOST, 200, Duration::from_secs(15)) {
            return Err(format!(
                "bare: {HOST} does not answer 200; haproxy said:\n{}",
                testkit::tail(&std::fs::read_to_string(&b.log).unwrap_or_default(), 3000)
            ));
        }
        Ok(b)
    }

    fn spawn(&self, reload: bool) -> Result<std::process::Child, String> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-f").arg(&self.cfg);
        if reload {
            cmd.arg("-x")
                .arg(&self.socket)
                .arg("-sf")
                .arg(self.serving.to_string())
                .arg(std::process::id().to_string());
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        testkit::die_with_parent(&mut cmd);
        cmd.spawn().map_err(|e| format!("spawn haproxy: {e}"))
    }

    /// One reload: spawn, then wait until the new process says it is up
    /// (or exits, or 10 s pass).
    fn reload(&mut self) {
        SIGUSR1_FROM.store(0, Ordering::SeqCst);
        let start = Instant::now();
        let mut c = match self.spawn(true) {
            Ok(c) => c,
            Err(_) => {
                self.spawn_errors += 1;
                return;
            }
        };
        self.reloads += 1;
        let pid = c.id() as i32;
        loop {
            if SIGUSR1_FROM.load(Ordering::SeqCst) == pid {
                self.serving = pid;
                self.took_ms.push(start.elapsed().as_secs_f64() * 1e3);
                self.up_at.push(SystemTime::now());
                break;
            }
            if let Ok(Some(status)) = c.try_wait() {
                if !status.success() {
                    self.failed += 1;
                }
                return;
            }
            if start.elapsed() > Duration::from_secs(10) {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        self.reaper.adopt(c);
    }

    fn pids(&self) -> Vec<i32> {
        self.reaper.pids()
    }

    /// Soft-stops every process (SIGUSR1), waits up to `grace`, then kills.
    /// Returns the failed starts (exited with a failure status).
    fn stop(&mut self, grace: Duration) -> usize {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGUSR1);
        }
        let deadline = Instant::now() + grace;
        while !self.pids().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.reaper.finish();
        self.failed + self.reaper.failed.load(Ordering::SeqCst)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The server-only catalog changes of the `live` and `live-off` scenarios.
/// Service `www` starts with `www-1` on backend 0 and `www-2` on backend 1;
/// each [`Changes::advance`] makes the next change of [`CHANGE_KINDS`],
/// round and round. `www-1` always passes, so some server always serves.
struct Changes {
    backends: [SocketAddr; 3],
    step: usize,
    /// `www-1`'s weight: 1 and 3 in turn.
    weight1: u32,
    /// `www-2`'s check.
    passing2: bool,
    /// `www-3`, when present: on backend 2, or moved to backend 1's port.
    www3: Option<SocketAddr>,
}

/// One round of changes, in order.
const CHANGE_KINDS: [&str; 6] = [
    "add",        // www-3 added on backend 2
    "weight",     // www-1's weight 1 ↔ 3
    "check-fail", // www-2 not passing: leaves the rendered config
    "move",       // www-3 moved to backend 1's port
    "check-pass", // www-2 passing again
    "remove",     // www-3 removed
];

impl Changes {
    fn new(backends: [SocketAddr; 3]) -> Changes {
        Changes {
            backends,
            step: 0,
            weight1: 1,
            passing2: true,
            www3: None,
        }
    }

    /// The catalog file's content for the current state.
    fn catalog(&self) -> serde_json::Value {
        let inst = |id: &str, a: SocketAddr, weight: u32, passing: bool| {
            json!({"id": id, "address": a.ip().to_string(), "port": a.port(),
                   "weight": weight, "passing": passing,
                   "tags": ["HAPROXY.ENABLE=true"]})
        };
        let mut instances = vec![
            inst("www-1", self.backends[0], self.weight1, true),
            inst("www-2", self.backends[1], 1, self.passing2),
        ];
        if let Some(a) = self.www3 {
            instances.push(inst("www-3", a, 1, true));
        }
        json!({"services": [{"name": "www", "instances": instances}]})
    }

    /// Makes the next change; returns its kind.
    fn advance(&mut self) -> &'static str {
        let kind = CHANGE_KINDS[self.step % CHANGE_KINDS.len()];
        match kind {
            "add" => self.www3 = Some(self.backends[2]),
            "weight" => self.weight1 = if self.weight1 == 1 { 3 } else { 1 },
            "check-fail" => self.passing2 = false,
            "move" => self.www3 = Some(self.backends[1]),
            "check-pass" => self.passing2 = true,
            _ => self.www3 = None,
        }
        self.step += 1;
        kind
    }
}

/// What happens every `--reload-every-ms` during the window.
enum Action<'a> {
    Nothing,
    /// A signal to a process (SIGHUP to the supervisor, SIGUSR2 to the
    /// master).
    Signal(i32, Signal),
    /// The next server-only change, written atomically to the catalog file.
    Catalog(&'a Path, &'a mut Changes),
    /// The bare loop's reload.
    Bare(&'a mut Bare),
}

/// CPU used during a measured window (see [`CpuSnapshot`]).
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    /// Seconds between the two snapshots.
    window_s: f64,
    /// The root's own CPU seconds: the supervisor's, or the master's (for
    /// `haproxy -W`); none for the bare loop (the root is the bench).
    root_own_s: Option<f64>,
    /// CPU seconds of every process below the root (HAProxy processes,
    /// `haproxy -c`, iptables): exited ones whole, through the root's
    /// reaped-children times.
    below_s: f64,
    /// The machine's busy CPU seconds (all CPUs) in the window.
    machine_busy_s: Option<f64>,
    /// The bare loop's own CPU seconds (the bench thread that spawns the
    /// processes and waits for them): its counterpart of the supervisor's.
    loop_own_s: Option<f64>,
}

/// CPU seconds the calling thread has used.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// What a measured window gave.
struct Driven {
    load: Load,
    /// When the actions were taken (signal sent, catalog renamed into
    /// place), seconds since the start.
    sent: Vec<f64>,
    /// Per catalog change, its kind.
    kinds: Vec<&'static str>,
    wall0: SystemTime,
    /// The HAProxy processes under the sampled pid.
    sampled: Option<Sampled>,
    cpu: Option<CpuUse>,
}

/// The CPU snapshot of a scenario's process tree: under `root`, or the
/// bare loop's processes (the root is then the bench, which reaps them).
fn cpu_snapshot(action: &Action, root: Option<i32>) -> Option<CpuSnapshot> {
    match action {
        Action::Bare(b) => Some(CpuSnapshot::take(
            std::process::id() as i32,
            Some(&b.pids()),
        )),
        _ => root.map(|pid| CpuSnapshot::take(pid, None)),
    }
}

/// The bare loop's own CPU seconds so far: this thread's (it runs the
/// loop) and its reaper thread's.
fn loop_cpu_s(action: &Action) -> Option<f64> {
    match action {
        Action::Bare(b) => Some(thread_cpu_s() + b.reaper.cpu_s()),
        _ => None,
    }
}

/// Runs `clients` for `duration` (keep-alive clients with `keepalive`);
/// every `--reload-every-ms` takes `action` (from this thread). When
/// `sample` is set, samples the HAProxy processes under that pid every
/// [`SAMPLE_EVERY`] meanwhile, and measures the CPU used under it (for the
/// bare loop: by its processes) in the window.
fn drive(
    args: &Args,
    addr: SocketAddr,
    duration: Duration,
    mut action: Action,
    sample: Option<i32>,
    keepalive: bool,
) -> Result<Driven, String> {
    let nbuckets = (duration.as_millis() as u64).div_ceil(BUCKET_MS) as usize;
    let options = LoadOptions {
        keepalive,
        timeout: Duration::from_millis(args.timeout_ms),
        bucket: Duration::from_millis(BUCKET_MS),
        ..LoadOptions::new(args.clients)
    };
    let sampler = sample.map(|pid| HaproxySampler::start(pid, SAMPLE_EVERY));
    let cpu0 = cpu_snapshot(&action, sample);
    let machine0 = measure::machine_cpu();
    let loop0 = loop_cpu_s(&action);
    let wall0 = SystemTime::now();
    let clients = LoadRun::start_with(addr, HOST, &options);
    let t0 = clients.started();
    let mut sent = Vec::new();
    let mut kinds = Vec::new();
    let mut error = None;
    if !matches!(action, Action::Nothing) {
        let every = Duration::from_millis(args.reload_every_ms.max(1));
        let mut k = 1u32;
        loop {
            let at = t0 + every * k;
            if at >= t0 + duration {
                break;
            }
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            match &mut action {
                Action::Nothing => {}
                Action::Signal(pid, sig) => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), *sig);
                }
                Action::Catalog(path, changes) => {
                    let kind = changes.advance();
                    if let Err(e) =
                        testkit::try_write_atomic(path, changes.catalog().to_string().as_bytes())
                    {
                        error.get_or_insert(e);
                    }
                    kinds.push(kind);
                }
                Action::Bare(b) => b.reload(),
            }
            sent.push(t0.elapsed().as_secs_f64());
            // An action that outlasted its period (the bare loop's reload
            // waits for the new process): triggers that fell due meanwhile
            // make one follow-up, at once, as SIGHUPs to the supervisor
            // during a reload do.
            let due = (t0.elapsed().as_nanos() / every.as_nanos()) as u32;
            k = (k + 1).max(due);
        }
    }
    let end = t0 + duration;
    let now = Instant::now();
    if end > now {
        thread::sleep(end - now);
    }
    let cpu1 = cpu_snapshot(&action, sample);
    let machine1 = measure::machine_cpu();
    let loop1 = loop_cpu_s(&action);
    let mut load = clients.stop();
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(CpuUse {
            window_s: match (a.at, b.at) {
                (Some(x), Some(y)) => (y - x).as_secs_f64(),
                _ => duration.as_secs_f64(),
            },
            root_own_s: (!matches!(action, Action::Bare(_))).then(|| a.root_until(&b)),
            below_s: a.below_until(&b),
            machine_busy_s: machine0.zip(machine1).map(|(x, y)| y.0 - x.0),
            loop_own_s: loop0.zip(loop1).map(|(a, b)| b - a),
        }),
        _ => None,
    };
    let sampled = sampler.map(HaproxySampler::finish);
    // Requests that ended after the window count in no bucket.
    load.buckets.resize(nbuckets, 0);
    load.fail_buckets.resize(nbuckets, 0);
    load.lat_us.sort_unstable();
    if let Some(e) = error {
        return Err(format!("catalog change: {e}"));
    }
    Ok(Driven {
        load,
        sent,
        kinds,
        wall0,
        sampled,
        cpu,
    })
}

#[derive(Debug, Clone)]
struct Outcome {
    name: String,
    what: String,
    load: Load,
    duration: f64,
    /// Whether the scenario writes catalog changes (`live`, `live-off`)
    /// rather than signalling.
    changes: bool,
    reloads_sent: usize,
    /// When the reload signals were sent (or the catalog changes written),
    /// seconds since the load started.
    sent_at: Vec<f64>,
    /// Reloads done in the window: trigger `sighup` for the signalled
    /// scenarios, `Catalog` for the change scenarios.
    reloads_done: usize,
    failed_reloads: usize,
    /// When reloads completed (supervisor: `reload_done` events) or
    /// were signalled (master-worker), seconds since the load started.
    reload_marks: Vec<f64>,
    marks_are: &'static str,
    /// Strategies the supervisor logged for its reloads in the window
    /// (fallbacks show up here).
    strategies: BTreeMap<String, usize>,
    took_ms: Vec<f64>,
    /// Change scenarios: catalog changes written, by kind.
    change_kinds: BTreeMap<String, usize>,
    /// `live_applied` events in the window, and when.
    live_applied: usize,
    live_marks: Vec<f64>,
    live_took_ms: Vec<f64>,
    /// "live change failed; reloading instead" events in the window.
    live_failed: usize,
    /// HAProxy processes that appeared during the window, sampled from
    /// /proc (serving processes; `haproxy -c` apart).
    sampled: Option<Sampled>,
    /// Distinct pids of `reload_done` events in the window (for
    /// master-worker: "Loading success." lines after the first).
    started_logged: usize,
    /// Keep-alive clients (a `-ka` scenario): ratios are to `baseline-ka`.
    keepalive: bool,
    /// CPU used in the window by the supervisor (or master) and by the
    /// HAProxy processes.
    cpu: Option<CpuUse>,
    /// Whether the root of [`Outcome::cpu`] is HAProxy's master (its own
    /// CPU is HAProxy's) rather than the supervisor.
    root_is_haproxy: bool,
    /// The bare loop: `spawn` errors and `[ALERT]` lines HAProxy wrote.
    spawn_errors: usize,
    alerts: usize,
}

impl Outcome {
    fn rps(&self) -> f64 {
        let ok_in_window: u64 = self.load.buckets.iter().sum();
        ok_in_window as f64 / self.duration
    }
    fn lat_ms(&self, q: f64) -> f64 {
        measure::quantile(&self.load.lat_us, q) as f64 / 1000.0
    }
    fn max_ms(&self) -> f64 {
        self.load.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0
    }
    /// The worst 100 ms bucket (ok requests), as req/s.
    fn worst_bucket_rps(&self) -> f64 {
        self.load.buckets.iter().copied().min().unwrap_or(0) as f64 * 1000.0 / BUCKET_MS as f64
    }
    fn changes_written(&self) -> usize {
        self.change_kinds.values().sum()
    }
    /// HAProxy processes started in the window by sampling, if sampled.
    fn started_sampled(&self) -> Option<usize> {
        self.sampled.as_ref().map(Sampled::started)
    }
}

struct Bench {
    args: Args,
    haproxy_bin: PathBuf,
    work: PathBuf,
    /// Three demo backends; every supervisor scenario starts on the same
    /// catalog ([`Changes::new`]'s: `www-1` and `www-2` on the first two).
    backends: [SocketAddr; 3],
    addr: SocketAddr,
}

impl Bench {
    /// Starts the supervisor on `catalog_file` (written here with the
    /// initial catalog); `live: false` sets `HAPROXY_NO_LIVE=true`.
    fn start_supervisor(
        &self,
        name: &str,
        strategy: &str,
        catalog_file: &Path,
        live: bool,
    ) -> Result<Proc, String> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let catalog = Changes::new(self.backends).catalog();
        testkit::try_write_atomic(catalog_file, catalog.to_string().as_bytes())?;
        let mut cmd = testkit::bench_command(
            &dir,
            "example.com",
            self.args.common.http_port,
            &self.haproxy_bin,
        );
        if let Some(t) = &self.args.template {
            cmd.env("HAPROXY_TEMPLATE", t);
        }
        if !live {
            cmd.env("HAPROXY_NO_LIVE", "true");
        }
        cmd.arg("--catalog-file")
            .arg(catalog_file)
            .env("HAPROXY_RELOAD_STRATEGY", strategy);
        // HAProxy's access log goes to the supervisor's stdout: /dev/null.
        let mut p = Proc::spawn(cmd, Some(&dir.join("supervisor.log")), false)?;
        p.wait_log(Duration::from_secs(30), |t| {
            testkit::log_has_event(t, Event::ReloadDone)
        })
        .map_err(|e| format!("{name}: supervisor did not start haproxy: {e}"))?;
        if !http::wait_status(&self.addr, HOST, 200, Duration::from_secs(15)) {
            return Err(format!("{name}: {HOST} does not answer 200"));
        }
        Ok(p)
    }

    /// The baseline's rendered config (what the supervisor runs).
    fn baseline_config(&self) -> Result<String, String> {
        let base = self.work.join("baseline/etc/haproxy.cfg");
        std::fs::read_to_string(&base).map_err(|e| {
            format!(
                "read the baseline's rendered config {}: {e}",
                base.display()
            )
        })
    }

    fn start_master_worker(&self, name: &str) -> Result<Proc, String> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let text = self.baseline_config()?;
        let cfg = master_worker_config(&text, &dir.join("admin.sock"));
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.haproxy_bin);
        cmd.arg("-W").arg("-f").arg(&cfg_path).current_dir(&dir);
        let mut p = Proc::spawn(cmd, Some(&dir.join("haproxy.log")), false)?;
        p.wait_log(Duration::from_secs(30), |t| t.contains("Loading success."))
            .map_err(|e| format!("master-worker: haproxy -W did not start: {e}"))?;
        if !http::wait_status(&self.addr, HOST, 200, Duration::from_secs(15)) {
            return Err(format!("master-worker: {HOST} does not answer 200"));
        }
        Ok(p)
    }

    /// The bare loop's first process, on the baseline's rendered config
    /// with an admin socket of its own (maxconn and everything else as
    /// rendered).
    fn start_bare(&self, name: &str) -> Result<Bare, String> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let text = self.baseline_config()?;
        std::fs::write(
            dir.join("haproxy.cfg"),
            with_admin_socket(&text, &dir.join("admin.sock"), None),
        )
        .map_err(|e| e.to_string())?;
        Bare::start(&self.haproxy_bin, &dir, &self.addr)
    }

    fn run(&self, name: &str) -> Result<Outcome, String> {
        let catalog_file = self.work.join(name).join("catalog.json");
        let (kind, keepalive) = split_ka(name);
        let clients = if keepalive {
            "keep-alive clients"
        } else {
            "new connection per request"
        };
        let (mut target, what) = match kind {
            "baseline" => (
                Target::Supervisor(self.start_supervisor(name, "seamless", &catalog_file, true)?),
                format!("supervisor, no reloads; {clients}"),
            ),
            "plain" | "syn-drop" | "seamless" | "inherit" => (
                Target::Supervisor(self.start_supervisor(name, kind, &catalog_file, true)?),
                format!("supervisor, HAPROXY_RELOAD_STRATEGY={kind}, SIGHUP; {clients}"),
            ),
            "bare" => (
                Target::Bare(self.start_bare(name)?),
                format!("haproxy alone, the bench's loop: haproxy -f cfg -x <admin socket> -sf <pids>; {clients}"),
            ),
            "live" => (
                Target::Supervisor(self.start_supervisor(name, "seamless", &catalog_file, true)?),
                "supervisor (seamless), a server-only catalog change, applied live".to_string(),
            ),
            "live-off" => (
                Target::Supervisor(self.start_supervisor(
                    name,
                    "seamless",
                    &catalog_file,
                    false,
                )?),
                "supervisor (seamless), the same changes with HAPROXY_NO_LIVE=true: each reloads"
                    .to_string(),
            ),
            "master-worker" => (
                Target::MasterWorker(self.start_master_worker(name)?),
                format!("haproxy -W alone, SIGUSR2 to the master; {clients}"),
            ),
            other => return Err(format!("unknown scenario {other:?}")),
        };
        let changes_scenario = matches!(kind, "live" | "live-off");
        let pid = match &target {
            Target::Supervisor(p) | Target::MasterWorker(p) => p.pid(),
            // The bare loop's processes are the bench's children.
            Target::Bare(_) => std::process::id() as i32,
        };
        if self.args.warmup_ms > 0 {
            drive(
                &self.args,
                self.addr,
                Duration::from_millis(self.args.warmup_ms),
                Action::Nothing,
                None,
                keepalive,
            )?;
        }
        let duration = Duration::from_secs_f64(self.args.duration_secs);
        let mut changes = Changes::new(self.backends);
        let action = match (&mut target, kind) {
            (_, "baseline") => Action::Nothing,
            (_, "live" | "live-off") => Action::Catalog(&catalog_file, &mut changes),
            (Target::Supervisor(_), _) => Action::Signal(pid, Signal::SIGHUP),
            (Target::MasterWorker(_), _) => Action::Signal(pid, Signal::SIGUSR2),
            (Target::Bare(b), _) => Action::Bare(b),
        };
        let driven = drive(
            &self.args,
            self.addr,
            duration,
            action,
            Some(pid),
            keepalive,
        )?;
        // Let the last reload or change finish and log.
        thread::sleep(Duration::from_millis(500));
        let log = match &target {
            Target::Supervisor(p) | Target::MasterWorker(p) => p.log_text(),
            Target::Bare(b) => b.log_text(),
        };
        let sent = driven.sent;
        let mut out = Outcome {
            name: name.to_string(),
            what,
            load: driven.load,
            duration: duration.as_secs_f64(),
            changes: changes_scenario,
            reloads_sent: if changes_scenario { 0 } else { sent.len() },
            sent_at: sent.clone(),
            reloads_done: 0,
            failed_reloads: 0,
            reload_marks: Vec::new(),
            marks_are: "reload done",
            strategies: BTreeMap::new(),
            took_ms: Vec::new(),
            change_kinds: BTreeMap::new(),
            live_applied: 0,
            live_marks: Vec::new(),
            live_took_ms: Vec::new(),
            live_failed: 0,
            sampled: driven.sampled,
            started_logged: 0,
            keepalive,
            cpu: driven.cpu,
            root_is_haproxy: matches!(target, Target::MasterWorker(_)),
            spawn_errors: 0,
            alerts: 0,
        };
        for k in &driven.kinds {
            *out.change_kinds.entry(k.to_string()).or_default() += 1;
        }
        match &mut target {
            Target::Supervisor(p) => {
                let start = measure::epoch_secs(driven.wall0);
                let counted = if changes_scenario {
                    "catalog"
                } else {
                    "sighup"
                };
                let mut pids = std::collections::BTreeSet::new();
                for l in testkit::json_lines(&log) {
                    if l.at < start {
                        continue;
                    }
                    let trigger = l.fields.get("trigger").and_then(|v| v.as_str());
                    let took = l.fields.get("took_ms").and_then(|v| v.as_f64());
                    if l.event == Some(Event::ReloadDone) {
                        if let Some(pid) = l.fields.get("pid").and_then(|v| v.as_i64()) {
                            pids.insert(pid);
                        }
                    }
                    if l.event == Some(Event::LiveApplied) {
                        out.live_applied += 1;
                        out.live_marks.push(l.at - start);
                        out.live_took_ms.extend(took);
                        continue;
                    }
                    if l.event == Some(Event::LiveFailed) {
                        out.live_failed += 1;
                        continue;
                    }
                    if trigger != Some(counted) {
                        continue;
                    }
                    if l.event == Some(Event::ReloadDone) {
                        out.reloads_done += 1;
                        out.reload_marks.push(l.at - start);
                        if let Some(s) = l.fields.get("strategy").and_then(|v| v.as_str()) {
                            *out.strategies.entry(s.to_string()).or_default() += 1;
                        }
                        out.took_ms.extend(took);
                    } else if l.event == Some(Event::ReloadFailed) {
                        out.failed_reloads += 1;
                    }
                }
                out.started_logged = pids.len();
                out.failed_reloads += testkit::json_lines(&log)
                    .iter()
                    .filter(|l| l.event == Some(Event::ConfigInvalid))
                    .count();
                if kind == "live" {
                    out.marks_are = "live change applied";
                } else if kind == "live-off" {
                    out.marks_are = "catalog reload done";
                }
                p.stop(Duration::from_secs(15));
            }
            Target::MasterWorker(p) => {
                // "Loading success." once at start, then once per reload.
                out.reloads_done = log.matches("Loading success.").count().saturating_sub(1);
                out.started_logged = out.reloads_done;
                out.failed_reloads = log.matches("Loading failure").count();
                out.reload_marks = sent;
                out.marks_are = "SIGUSR2 sent";
                p.stop(Duration::from_secs(15));
            }
            Target::Bare(b) => {
                out.started_logged = b.reloads;
                out.reloads_done = b.took_ms.len();
                out.took_ms = b.took_ms.clone();
                out.spawn_errors = b.spawn_errors;
                out.alerts = log.matches("[ALERT]").count();
                let start = measure::epoch_secs(driven.wall0);
                out.reload_marks = b
                    .up_at
                    .iter()
                    .map(|t| measure::epoch_secs(*t) - start)
                    .collect();
                out.marks_are = "new process up";
                out.failed_reloads = b.stop(Duration::from_secs(15));
            }
        }
        testkit::wait_port_free(self.args.common.http_port);
        Ok(out)
    }
}

/// The baseline's rendered config for `haproxy -W`: global maxconn 5000
/// (fits the open-files limit) and its own admin socket.
fn master_worker_config(text: &str, socket: &Path) -> String {
    with_admin_socket(text, socket, Some(5000))
}

/// `text` with the global `stats socket` moved to `socket` (its options
/// kept: `expose-fd listeners`), and the global maxconn replaced when
/// `maxconn` is given.
fn with_admin_socket(text: &str, socket: &Path, maxconn: Option<u32>) -> String {
    let mut out = String::new();
    let mut in_global = false;
    for line in text.lines() {
        let t = line.trim_start();
        if !line.starts_with(' ') && !line.starts_with('\t') && !t.is_empty() && !t.starts_with('#')
        {
            in_global = t.starts_with("global");
        }
        if let (true, true, Some(m)) = (in_global, t.starts_with("maxconn "), maxconn) {
            out.push_str(&format!("    maxconn {m}\n"));
        } else if in_global && t.starts_with("stats socket ") {
            let rest: Vec<&str> = t.split_whitespace().skip(3).collect();
            out.push_str(&format!(
                "    stats socket {} {}\n",
                socket.display(),
                rest.join(" ")
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A scenario's kind and whether its clients keep connections alive
/// (`<kind>-ka`).
fn split_ka(name: &str) -> (&str, bool) {
    match name.strip_suffix("-ka") {
        Some(k) => (k, true),
        None => (name, false),
    }
}

/// The baseline a row's ratios are to: `baseline-ka` for keep-alive rows.
fn baseline_of<'a>(outs: &'a [Outcome], o: &Outcome) -> Option<&'a Outcome> {
    let want = if o.keepalive {
        "baseline-ka"
    } else {
        "baseline"
    };
    outs.iter().find(|b| b.name == want)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

impl Outcome {
    fn ok_in_window(&self) -> u64 {
        self.load.buckets.iter().sum()
    }
    /// The supervisor's own CPU seconds in the window (for the bare row:
    /// its loop's).
    fn supervisor_cpu_s(&self) -> Option<f64> {
        let c = self.cpu?;
        if self.root_is_haproxy {
            None
        } else {
            c.root_own_s.or(c.loop_own_s)
        }
    }
    /// CPU seconds of the HAProxy processes in the window (with `haproxy
    /// -c` and iptables under the supervisor; with the master under
    /// `haproxy -W`).
    fn haproxy_cpu_s(&self) -> Option<f64> {
        let c = self.cpu?;
        Some(
            c.below_s
                + if self.root_is_haproxy {
                    c.root_own_s.unwrap_or(0.0)
                } else {
                    0.0
                },
        )
    }
    /// Whether this row reloads by starting HAProxy processes (not a
    /// baseline, not `live`).
    fn reloads(&self) -> bool {
        !self.name.starts_with("baseline") && self.reloads_done > 0
    }
}

/// CPU per reload of one row against its baseline: what the supervisor
/// used beyond its idle rate, and what HAProxy used beyond serving the
/// row's requests at the baseline's CPU per request; seconds per reload.
#[derive(Debug, Clone, Copy)]
struct PerReload {
    supervisor_s: Option<f64>,
    haproxy_s: f64,
}

impl PerReload {
    fn total(self) -> f64 {
        self.haproxy_s + self.supervisor_s.unwrap_or(0.0)
    }
}

fn per_reload(o: &Outcome, base: Option<&Outcome>) -> Option<PerReload> {
    if !o.reloads() {
        return None;
    }
    let b = base?;
    let n = o.reloads_done as f64;
    let (bc, c) = (b.cpu?, o.cpu?);
    let base_hap_per_req = b.haproxy_cpu_s()? / (b.ok_in_window().max(1) as f64);
    let haproxy_s = (o.haproxy_cpu_s()? - base_hap_per_req * o.ok_in_window() as f64) / n;
    let supervisor_s = match (o.supervisor_cpu_s(), b.supervisor_cpu_s(), c.loop_own_s) {
        // The bare loop does nothing between reloads.
        (Some(s), _, Some(_)) => Some(s / n),
        (Some(s), Some(bs), None) => Some((s - bs / bc.window_s.max(1e-9) * c.window_s) / n),
        _ => None,
    };
    Some(PerReload {
        supervisor_s,
        haproxy_s,
    })
}

fn opt_fmt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

fn markdown(args: &Args, outs: &[Outcome], meta: &serde_json::Value) -> String {
    let base_figs = |o: &Outcome| {
        baseline_of(outs, o)
            .map(|b| (b.rps(), b.lat_ms(0.5), b.lat_ms(0.99)))
            .unwrap_or((0.0, 0.0, 0.0))
    };
    let mut s = String::new();
    s.push_str(&format!(
        "{} clients, each opening a new TCP connection per request (`Connection: close`), or in \
         the `-ka` rows keeping one HTTP/1.1 keep-alive connection (a new one only after \
         `Connection: close` or a failure; no retry), {} s per scenario, a reload (`live`, \
         `live-off`: a server-only catalog change) every {} ms; request timeout {} ms; ratios \
         are to `baseline` (`-ka` rows: to `baseline-ka`); HAProxy processes sampled under the \
         supervisor (master) every {} ms; {}; {}; run {}.\n\n",
        args.clients,
        args.duration_secs,
        args.reload_every_ms,
        args.timeout_ms,
        SAMPLE_EVERY.as_millis(),
        meta["machine"].as_str().unwrap_or(""),
        meta["haproxy"].as_str().unwrap_or(""),
        meta["date"].as_str().unwrap_or(""),
    ));
    s.push_str("| scenario | reloads done (sent) | changes written | live changes applied | HAProxy processes started (sampled / logged) | connections opened | ok | failed | refused | reset | timeout | non-2xx | req/s | × baseline | worst 100 ms req/s | p50 ms | p99 ms | p99.9 ms | max ms | p50 × base | p99 × base |\n");
    s.push_str(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outs {
        let (brps, bp50, bp99) = base_figs(o);
        let reloads = if o.name.starts_with("baseline") || o.changes {
            o.reloads_done.to_string()
        } else {
            format!("{} ({})", o.reloads_done, o.reloads_sent)
        };
        let (written, live) = if o.changes {
            (o.changes_written().to_string(), o.live_applied.to_string())
        } else {
            ("–".to_string(), "–".to_string())
        };
        let started = format!(
            "{} / {}",
            o.started_sampled()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
            o.started_logged
        );
        let connections = if o.keepalive {
            o.load.connections.to_string()
        } else {
            "1 per request".to_string()
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} |\n",
            o.name,
            reloads,
            written,
            live,
            started,
            connections,
            o.load.ok,
            o.load.failed(),
            o.load.refused,
            o.load.reset,
            o.load.timeout,
            o.load.non_2xx + o.load.other,
            o.rps(),
            ratio(o.rps(), brps),
            o.worst_bucket_rps(),
            o.lat_ms(0.5),
            o.lat_ms(0.99),
            o.lat_ms(0.999),
            o.max_ms(),
            ratio(o.lat_ms(0.5), bp50),
            ratio(o.lat_ms(0.99), bp99),
        ));
    }
    s.push('\n');
    for o in outs {
        let mut notes = Vec::new();
        if !o.strategies.is_empty() {
            notes.push(format!(
                "strategies logged: {}",
                o.strategies
                    .iter()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !o.took_ms.is_empty() {
            let mean = o.took_ms.iter().sum::<f64>() / o.took_ms.len() as f64;
            let max = o.took_ms.iter().copied().fold(0.0, f64::max);
            notes.push(format!("reload took {mean:.0} ms mean, {max:.0} ms max"));
        }
        if o.failed_reloads > 0 {
            notes.push(format!("{} failed reloads", o.failed_reloads));
        }
        if o.spawn_errors > 0 {
            notes.push(format!("{} haproxy spawn errors", o.spawn_errors));
        }
        if o.alerts > 0 {
            notes.push(format!("{} [ALERT] lines from haproxy", o.alerts));
        }
        if o.changes {
            notes.push(format!(
                "changes written: {}",
                o.change_kinds
                    .iter()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !o.live_took_ms.is_empty() {
            let mut t = o.live_took_ms.clone();
            t.sort_by(f64::total_cmp);
            notes.push(format!(
                "live change took {:.1} ms mean, p99 {:.0} ms, {:.0} ms max",
                t.iter().sum::<f64>() / t.len() as f64,
                measure::quantile(&t, 0.99),
                t.last().copied().unwrap_or(0.0)
            ));
        }
        if o.live_failed > 0 {
            notes.push(format!(
                "{} live changes failed (reloaded instead)",
                o.live_failed
            ));
        }
        if let Some(sm) = &o.sampled {
            notes.push(format!(
                "{} HAProxy serving processes seen ({} at the start), {} `haproxy -c` checks seen, {} samples",
                sm.seen.len(),
                sm.initial.len(),
                sm.checks,
                sm.samples
            ));
        }
        if o.load.other > 0 {
            notes.push(format!("{} other errors", o.load.other));
        }
        if !o.load.statuses.is_empty() {
            notes.push(format!("statuses {:?}", o.load.statuses));
        }
        if !notes.is_empty() {
            s.push_str(&format!("- {}: {}\n", o.name, notes.join("; ")));
        }
    }

    s.push_str(&cpu_markdown(outs));

    s.push_str("\nGoals (figures, not assertions):\n\n");
    let find = |n: &str| outs.iter().find(|o| o.name == n);
    if let Some(o) = find("live") {
        let (brps, _, bp99) = base_figs(o);
        let r = ratio(o.rps(), brps);
        let p = ratio(o.lat_ms(0.99), bp99);
        let started = o.started_sampled().unwrap_or(usize::MAX);
        s.push_str(&format!(
            "- live: {} server-only changes written, {} applied live, {} reloads; 0 failed → {} ({}); throughput ≥98% of baseline → {:.1}% ({}); p99 ≤ 1.2× baseline → {:.2}× ({}); 0 HAProxy processes started → {} sampled, {} logged ({})\n",
            o.changes_written(),
            o.live_applied,
            o.reloads_done,
            o.load.failed(),
            met(o.load.failed() == 0),
            r * 100.0,
            met(r >= 0.98),
            p,
            met(p <= 1.2),
            o.started_sampled().map(|n| n.to_string()).unwrap_or_else(|| "not".into()),
            o.started_logged,
            met(started == 0 && o.started_logged == 0 && o.live_applied > 0),
        ));
    }
    if let Some(o) = find("live-off") {
        let (brps, _, bp99) = base_figs(o);
        s.push_str(&format!(
            "- live-off (the same changes, each a reload): {} failed, {} reloads for {} changes, {} HAProxy processes started (sampled), {:.1}% of baseline throughput, p99 {:.2}× baseline\n",
            o.load.failed(),
            o.reloads_done,
            o.changes_written(),
            o.started_sampled().map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            ratio(o.rps(), brps) * 100.0,
            ratio(o.lat_ms(0.99), bp99),
        ));
    }
    if let Some(o) = find("seamless") {
        let (brps, _, bp99) = base_figs(o);
        let r = ratio(o.rps(), brps);
        let p = ratio(o.lat_ms(0.99), bp99);
        s.push_str(&format!(
            "- seamless: 0 failed over ≥50 reloads → {} failed over {} reloads ({}); throughput ≥95% of baseline → {:.1}% ({}); p99 ≤ 2× baseline → {:.2}× ({})\n",
            o.load.failed(),
            o.reloads_done,
            met(o.load.failed() == 0 && o.reloads_done >= 50),
            r * 100.0,
            met(r >= 0.95),
            p,
            met(p <= 2.0),
        ));
    }
    if let Some(o) = find("inherit") {
        let (brps, _, bp99) = base_figs(o);
        s.push_str(&format!(
            "- inherit (held sockets, issue 23): 0 failed → {} failed ({} refused) over {} reloads ({}); {:.1}% of baseline, p99 {:.2}×\n",
            o.load.failed(),
            o.load.refused,
            o.reloads_done,
            met(o.load.failed() == 0 && o.reloads_done > 0),
            ratio(o.rps(), brps) * 100.0,
            ratio(o.lat_ms(0.99), bp99),
        ));
    }
    if let Some(o) = find("syn-drop") {
        s.push_str(&format!(
            "- syn-drop: 0 failed → {} failed over {} reloads ({})\n",
            o.load.failed(),
            o.reloads_done,
            met(o.load.failed() == 0)
        ));
    }
    for (seamless, bare) in [
        ("seamless", "bare"),
        ("seamless-ka", "bare-ka"),
        ("inherit", "bare"),
        ("inherit-ka", "bare-ka"),
    ] {
        if let (Some(o), Some(b)) = (find(seamless), find(bare)) {
            let pts = points_behind(outs, o, b);
            s.push_str(&format!(
                "- {seamless} within 3 points of {bare} (issue 15) → {pts:.1} points behind ({})\n",
                met(pts <= 3.0)
            ));
        }
    }
    for name in ["plain-ka", "syn-drop-ka", "seamless-ka", "inherit-ka"] {
        if let Some(o) = find(name) {
            s.push_str(&format!(
                "- {name}: 0 failed for keep-alive clients (issue 9) → {} failed over {} reloads, {} connections opened ({})\n",
                o.load.failed(),
                o.reloads_done,
                o.load.connections,
                met(o.load.failed() == 0 && o.reloads_done > 0)
            ));
        }
    }
    if let Some(o) = find("master-worker-ka") {
        s.push_str(&format!(
            "- master-worker-ka (peer, the same rendered config): {} failed over {} reloads, {} connections opened\n",
            o.load.failed(),
            o.reloads_done,
            o.load.connections
        ));
    }
    s
}

/// Throughput points (× its baseline, ×100) `o` is behind `peer`.
fn points_behind(outs: &[Outcome], o: &Outcome, peer: &Outcome) -> f64 {
    let r = |x: &Outcome| {
        ratio(
            x.rps(),
            baseline_of(outs, x).map(Outcome::rps).unwrap_or(0.0),
        )
    };
    (r(peer) - r(o)) * 100.0
}

/// The CPU table and the supervisor's overhead against the bare loop.
fn cpu_markdown(outs: &[Outcome]) -> String {
    let mut s = String::new();
    if outs.iter().all(|o| o.cpu.is_none()) {
        return s;
    }
    s.push_str(
        "\nCPU in the measured window, from /proc: the supervisor's own (`utime+stime` of its \
         process, every thread), and the HAProxy processes' (every child of the supervisor — \
         HAProxy generations, `haproxy -c`, iptables — or of the master, the master included, \
         or the bare loop's processes): those alive at the end as they stand, minus \
         what those alive at the start had used before it, plus those that exited in between, \
         whole (the parent's `cutime+cstime`: the kernel adds a child's CPU there when it is \
         reaped). The bare row's \"supervisor\" is its loop: the CPU time of the bench thread \
         that spawns the processes and waits for them (`CLOCK_THREAD_CPUTIME_ID`). Per reload: \
         HAProxy's beyond serving the row's requests at its baseline's CPU per request, the \
         supervisor's beyond its idle rate in the baseline.\n\n",
    );
    s.push_str(&format!("| scenario | reloads done | machine busy, CPUs of {} | supervisor (bare: its loop) CPU s | HAProxy CPU s | HAProxy µs per ok request | supervisor (loop) ms per reload | HAProxy ms per reload beyond serving | total ms per reload |\n", thread::available_parallelism().map(|n| n.get()).unwrap_or(0)));
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for o in outs {
        let Some(c) = o.cpu else { continue };
        let pr = per_reload(o, baseline_of(outs, o));
        let total = pr.map(PerReload::total);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.name,
            o.reloads_done,
            opt_fmt(c.machine_busy_s, |b| format!(
                "{:.2}",
                b / c.window_s.max(1e-9)
            )),
            opt_fmt(o.supervisor_cpu_s(), |v| format!("{v:.2}")),
            opt_fmt(o.haproxy_cpu_s(), |v| format!("{v:.2}")),
            opt_fmt(o.haproxy_cpu_s(), |v| format!(
                "{:.0}",
                v * 1e6 / o.ok_in_window().max(1) as f64
            )),
            opt_fmt(pr.and_then(|p| p.supervisor_s), |v| format!(
                "{:.1}",
                v * 1e3
            )),
            opt_fmt(pr.map(|p| p.haproxy_s), |v| format!("{:.1}", v * 1e3)),
            opt_fmt(total, |v| format!("{:.1}", v * 1e3)),
        ));
    }
    let find = |n: &str| outs.iter().find(|o| o.name == n);
    for (seamless, bare) in [("seamless", "bare"), ("seamless-ka", "bare-ka")] {
        let (Some(o), Some(b)) = (find(seamless), find(bare)) else {
            continue;
        };
        let (po, pb) = (
            per_reload(o, baseline_of(outs, o)),
            per_reload(b, baseline_of(outs, b)),
        );
        let ms = |v: Option<f64>| opt_fmt(v, |x| format!("{:.1} ms", x * 1e3));
        s.push_str(&format!(
            "\nThe supervisor's overhead, `{seamless}` against `{bare}` (the same rendered config, \
             the same rate, this run): {:.1} points of throughput (× baseline {:.2} against {:.2}); \
             CPU per reload: the supervisor's own {} against the bare loop's {}, HAProxy's beyond \
             serving {} against {} (difference {}), in all {} against {} (difference {}).\n",
            points_behind(outs, o, b),
            ratio(
                o.rps(),
                baseline_of(outs, o).map(Outcome::rps).unwrap_or(0.0)
            ),
            ratio(
                b.rps(),
                baseline_of(outs, b).map(Outcome::rps).unwrap_or(0.0)
            ),
            ms(po.and_then(|p| p.supervisor_s)),
            ms(pb.and_then(|p| p.supervisor_s)),
            ms(po.map(|p| p.haproxy_s)),
            ms(pb.map(|p| p.haproxy_s)),
            ms(po.zip(pb).map(|(x, y)| x.haproxy_s - y.haproxy_s)),
            ms(po.map(PerReload::total)),
            ms(pb.map(PerReload::total)),
            ms(po.zip(pb).map(|(x, y)| x.total() - y.total())),
        ));
    }
    s
}

fn met(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "missed"
    }
}

fn to_json(args: &Args, outs: &[Outcome], meta: serde_json::Value) -> serde_json::Value {
    let scenarios: Vec<_> = outs
        .iter()
        .map(|o| {
            let base = baseline_of(outs, o);
            let (brps, bp50, bp99, bp999) = base
                .map(|b| (b.rps(), b.lat_ms(0.5), b.lat_ms(0.99), b.lat_ms(0.999)))
                .unwrap_or((0.0, 0.0, 0.0, 0.0));
            let pr = per_reload(o, base);
            json!({
                "name": o.name,
                "what": o.what,
                "keepalive": o.keepalive,
                "baseline": base.map(|b| b.name.clone()),
                "connections_opened": o.keepalive.then_some(o.load.connections),
                "cpu": o.cpu.map(|c| json!({
                    "window_s": c.window_s,
                    "machine_busy_s": c.machine_busy_s,
                    "supervisor_s": o.supervisor_cpu_s(),
                    "supervisor_is_bare_loop_thread": c.loop_own_s.is_some(),
                    "haproxy_s": o.haproxy_cpu_s(),
                    "haproxy_us_per_ok_request": o.haproxy_cpu_s()
                        .map(|v| v * 1e6 / o.ok_in_window().max(1) as f64),
                    "per_reload_supervisor_beyond_idle_s": pr.and_then(|p| p.supervisor_s),
                    "per_reload_haproxy_beyond_serving_s": pr.map(|p| p.haproxy_s),
                })),
                "bare_spawn_errors": o.spawn_errors,
                "haproxy_alert_lines": o.alerts,
                "reloads_sent": o.reloads_sent,
                "reloads_done": o.reloads_done,
                "failed_reloads": o.failed_reloads,
                "reload_strategies_logged": o.strategies,
                "reload_took_ms": o.took_ms,
                "catalog_changes": o.changes.then(|| json!({
                    "written": o.changes_written(),
                    "by_kind": o.change_kinds,
                    "live_applied": o.live_applied,
                    "live_failed": o.live_failed,
                    "live_took_ms": o.live_took_ms,
                    "live_marks_s": o.live_marks,
                })),
                "haproxy_processes": {
                    "started_sampled": o.started_sampled(),
                    "started_logged": o.started_logged,
                    "serving_seen_sampled": o.sampled.as_ref().map(|x| x.seen.len()),
                    "at_start_sampled": o.sampled.as_ref().map(|x| x.initial.len()),
                    "config_checks_sampled": o.sampled.as_ref().map(|x| x.checks),
                    "samples": o.sampled.as_ref().map(|x| x.samples),
                    "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
                },
                "requests_ok": o.load.ok,
                "failed": {
                    "total": o.load.failed(),
                    "refused": o.load.refused,
                    "reset": o.load.reset,
                    "timeout": o.load.timeout,
                    "non_2xx": o.load.non_2xx,
                    "other": o.load.other,
                    "statuses": o.load.statuses,
                },
                "throughput_rps": o.rps(),
                "throughput_ratio": ratio(o.rps(), brps),
                "worst_bucket_rps": o.worst_bucket_rps(),
                "latency_ms": {
                    "p50": o.lat_ms(0.5),
                    "p99": o.lat_ms(0.99),
                    "p99_9": o.lat_ms(0.999),
                    "max": o.max_ms(),
                },
                "latency_ratio": {
                    "p50": ratio(o.lat_ms(0.5), bp50),
                    "p99": ratio(o.lat_ms(0.99), bp99),
                    "p99_9": ratio(o.lat_ms(0.999), bp999),
                },
                "bucket_ms": BUCKET_MS,
                "ok_per_bucket": o.load.buckets,
                "failed_per_bucket": o.load.fail_buckets,
                "reload_marks_s": o.reload_marks,
                "reload_signals_sent_s": (!o.changes).then_some(&o.sent_at),
                "catalog_changes_written_s": o.changes.then_some(&o.sent_at),
                "reload_marks_are": o.marks_are,
            })
        })
        .collect();
    let find = |n: &str| outs.iter().find(|o| o.name == n);
    let overhead: Vec<_> = [("seamless", "bare"), ("seamless-ka", "bare-ka")]
        .into_iter()
        .filter_map(|(a, b)| {
            let (o, p) = (find(a)?, find(b)?);
            let (po, pb) = (
                per_reload(o, baseline_of(outs, o)),
                per_reload(p, baseline_of(outs, p)),
            );
            Some(json!({
                "row": a,
                "peer": b,
                "throughput_points_behind": points_behind(outs, o, p),
                "per_reload_supervisor_s": po.and_then(|x| x.supervisor_s),
                "per_reload_haproxy_beyond_serving_s": po.map(|x| x.haproxy_s),
                "peer_per_reload_loop_s": pb.and_then(|x| x.supervisor_s),
                "peer_per_reload_haproxy_beyond_serving_s": pb.map(|x| x.haproxy_s),
            }))
        })
        .collect();
    json!({
        "bench": "reload-bench",
        "meta": meta,
        "config": {
            "clients": args.clients,
            "duration_s": args.duration_secs,
            "reload_every_ms": args.reload_every_ms,
            "catalog_change_cycle": CHANGE_KINDS,
            "timeout_ms": args.timeout_ms,
            "warmup_ms": args.warmup_ms,
            "connection": "new TCP connection per request (Connection: close), closed-loop; -ka rows: one HTTP/1.1 keep-alive connection per client, a new one only after Connection: close or a failure, no retry",
            "cpu": "from /proc/<pid>/stat: the supervisor's (master's) utime+stime; below it: Δ cutime+cstime + Σ live processes' utime+stime+cutime+cstime at the end − the same at the start; per reload: HAProxy beyond the row's ok requests × its baseline's HAProxy CPU per ok request, supervisor beyond its baseline's rate",
            "latency": "from before connect() to the end of the response, successful requests only",
            "throughput": "successful requests completed within the window / window",
        },
        "scenarios": scenarios,
        "overhead_vs_bare": overhead,
    })
}

const COLORS: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(0x44, 0x44, 0x44),
    plotters::style::RGBColor(0x17, 0xbe, 0xcf),
    plotters::style::RGBColor(0x8c, 0x56, 0x4b),
    plotters::style::RGBColor(0xd6, 0x27, 0x28),
    plotters::style::RGBColor(0xff, 0x7f, 0x0e),
    plotters::style::RGBColor(0x2c, 0xa0, 0x2c),
    plotters::style::RGBColor(0x1f, 0x77, 0xb4),
    plotters::style::RGBColor(0x94, 0x67, 0xbd),
];

fn series(o: &Outcome) -> Vec<(f64, f64)> {
    o.load
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                (i as f64 + 0.5) * BUCKET_MS as f64 / 1000.0,
                *n as f64 * 1000.0 / BUCKET_MS as f64,
            )
        })
        .collect()
}

/// Throughput per 100 ms bucket: all scenarios in one chart on top, then
/// one panel per reload scenario with its reload instants marked (the
/// `live` panel: its live-change instants, and any reload in black), and
/// the baseline in grey for reference.
fn plot(path: &Path, args: &Args, outs: &[Outcome]) -> Result<(), String> {
    use plotters::prelude::*;
    let panels: Vec<&Outcome> = outs
        .iter()
        .filter(|o| !o.name.starts_with("baseline"))
        .collect();
    let top_h = 420u32;
    let panel_h = 220u32;
    let height = top_h + panel_h * panels.len() as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(top_h);
    let ymax = outs
        .iter()
        .flat_map(|o| series(o).into_iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let xmax = args.duration_secs;
    let color = |o: &Outcome| {
        let i = outs.iter().position(|x| x.name == o.name).unwrap_or(0);
        COLORS[i % COLORS.len()]
    };
    {
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!(
                    "Successful requests/s per {BUCKET_MS} ms bucket ({} clients, new connection per request; -ka: keep-alive; a reload (live rows: a catalog change) every {} ms)",
                    args.clients, args.reload_every_ms
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("req/s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for o in outs {
            let c = color(o);
            chart
                .draw_series(LineSeries::new(series(o), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("{} ({:.0} req/s)", o.name, o.rps()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    let areas = bottom.split_evenly((panels.len().max(1), 1));
    for (o, area) in panels.iter().zip(areas.iter()) {
        let c = color(o);
        let started = o
            .started_sampled()
            .map(|n| format!(", {n} HAProxy processes started"))
            .unwrap_or_default();
        let caption = if o.changes {
            format!(
                "{}: {} failed, {} catalog changes, {} applied live, {} reloads{started} (vertical lines: {})",
                o.name,
                o.load.failed(),
                o.changes_written(),
                o.live_applied,
                o.reloads_done,
                if split_ka(&o.name).0 == "live" && o.reloads_done > 0 {
                    format!("{}; black: reload done", o.marks_are)
                } else {
                    o.marks_are.to_string()
                }
            )
        } else {
            let conns = if o.keepalive {
                format!(", {} connections opened", o.load.connections)
            } else {
                String::new()
            };
            format!(
                "{}: {} failed, {} reloads{started}{conns} (vertical lines: {})",
                o.name,
                o.load.failed(),
                o.reloads_done,
                o.marks_are
            )
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(25)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .y_desc("req/s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        let (marks, reloads_apart): (&[f64], &[f64]) = if split_ka(&o.name).0 == "live" {
            (&o.live_marks, &o.reload_marks)
        } else {
            (&o.reload_marks, &[])
        };
        chart
            .draw_series(
                marks
                    .iter()
                    .filter(|t| **t >= 0.0 && **t <= xmax)
                    .map(|t| PathElement::new(vec![(*t, 0.0), (*t, ymax)], c.mix(0.3))),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                reloads_apart
                    .iter()
                    .filter(|t| **t >= 0.0 && **t <= xmax)
                    .map(|t| PathElement::new(vec![(*t, 0.0), (*t, ymax)], BLACK.mix(0.6))),
            )
            .map_err(|e| e.to_string())?;
        if let Some(b) = baseline_of(outs, o) {
            chart
                .draw_series(LineSeries::new(series(b), RGBColor(0xaa, 0xaa, 0xaa)))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(LineSeries::new(series(o), c.stroke_width(2)))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    let mut args = Args::parse();
    if let Err(e) = catch_sigusr1() {
        eprintln!("reload-bench: {e}");
        std::process::exit(2);
    }
    bench::main("reload-bench", || real_main(&mut args));
}

fn real_main(args: &mut Args) -> Result<(), String> {
    let haproxy_bin = testkit::which("haproxy").ok_or("haproxy is not installed")?;
    if testkit::which("iptables").is_none() {
        return Err("iptables is not installed (needed by syn-drop)".into());
    }
    args.scenarios
        .retain(|s| s != "baseline" && s != "baseline-ka");
    args.scenarios.insert(0, "baseline".into());
    // Keep-alive rows are compared with a keep-alive baseline, run just
    // before the first of them.
    if let Some(i) = args.scenarios.iter().position(|s| split_ka(s).1) {
        args.scenarios.insert(i, "baseline-ka".into());
    }
    for s in &args.scenarios {
        if !matches!(
            split_ka(s).0,
            "baseline"
                | "live"
                | "live-off"
                | "plain"
                | "syn-drop"
                | "seamless"
                | "inherit"
                | "bare"
                | "master-worker"
        ) {
            return Err(format!("unknown scenario {s:?}"));
        }
    }

    let work = args.common.scratch_dir("reload-bench")?;
    let web = ["web-1", "web-2", "web-3"].map(Backend::start);
    let [b1, b2, b3] = [&web[0], &web[1], &web[2]].map(Backend::socket_addr);
    let bench = Bench {
        args: args.clone(),
        haproxy_bin: haproxy_bin.clone(),
        work: work.clone(),
        backends: [b1, b2, b3],
        addr: SocketAddr::from(([127, 0, 0, 1], args.common.http_port)),
    };
    let meta = json!({
        "machine": measure::machine(),
        "haproxy": testkit::haproxy_version(&haproxy_bin),
        "date": measure::now_utc(),
        "open_files_limit_hard": nofile_hard(),
    });
    let mut outs = Vec::new();
    for name in &args.scenarios {
        eprintln!(
            "reload-bench: {name}: {} clients for {} s{}",
            args.clients,
            args.duration_secs,
            match split_ka(name).0 {
                "baseline" => String::new(),
                "live" | "live-off" => format!(
                    ", a server-only catalog change every {} ms",
                    args.reload_every_ms
                ),
                _ => format!(", a reload every {} ms", args.reload_every_ms),
            }
        );
        let o = bench.run(name)?;
        eprintln!(
            "reload-bench: {name}: {} ok, {} failed, {:.0} req/s, p99 {:.2} ms, {} reloads done of {} sent, {} changes written, {} applied live, HAProxy processes started: {} sampled, {} logged{}{}",
            o.load.ok,
            o.load.failed(),
            o.rps(),
            o.lat_ms(0.99),
            o.reloads_done,
            o.reloads_sent,
            o.changes_written(),
            o.live_applied,
            o.started_sampled()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
            o.started_logged,
            if o.keepalive {
                format!(", {} connections opened", o.load.connections)
            } else {
                String::new()
            },
            match o.cpu {
                Some(_) => format!(
                    ", CPU s: supervisor {}, haproxy {}",
                    opt_fmt(o.supervisor_cpu_s(), |v| format!("{v:.2}")),
                    opt_fmt(o.haproxy_cpu_s(), |v| format!("{v:.2}"))
                ),
                None => String::new(),
            },
        );
        outs.push(o);
        thread::sleep(Duration::from_millis(args.settle_ms));
    }

    let md = markdown(args, &outs, &meta);
    let j = to_json(args, &outs, meta);
    args.common
        .write_report("results", "reload-bench results", &md, &j)?;
    plot(&args.common.out.join("reload-throughput.svg"), args, &outs)?;
    println!("{md}");
    println!(
        "written: {0}/results.md, {0}/results.json, {0}/reload-throughput.svg",
        args.common.out.display()
    );
    args.common.finish(&work);
    Ok(())
}

fn nofile_hard() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_max
}
