//! The clients and what happens during a measured window: load, the
//! reload triggers or catalog changes, HAProxy sampling and CPU.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use testkit::load::{Load as LoadRun, LoadOptions};
use testkit::measure::{self, CpuSnapshot};
use testkit::{HaproxySampler, Sampled};

use crate::bare::Bare;
use crate::changes::Changes;
use crate::floor::Floor;
use crate::{Args, Load, BUCKET_MS, HOST, SAMPLE_EVERY};

/// What happens every `--reload-every-ms` during the window.
pub(crate) enum Action<'a> {
    Nothing,
    /// A signal to a process (SIGHUP to the supervisor, SIGUSR2 to the
    /// master).
    Signal(i32, Signal),
    /// The next catalog change (server-only or structural), written
    /// atomically to the catalog file.
    Catalog(&'a Path, &'a mut Changes),
    /// The bare loop's reload.
    Bare(&'a mut Bare),
    /// The next structural change, made by the bench's own runtime-API
    /// commands (`structural-floor`).
    Floor(&'a mut Floor, &'a mut Changes),
}

/// CPU used during a measured window (see [`CpuSnapshot`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    /// Seconds between the two snapshots.
    pub(crate) window_s: f64,
    /// The root's own CPU seconds: the supervisor's, or the master's (for
    /// `haproxy -W`); none for the bare loop (the root is the bench).
    pub(crate) root_own_s: Option<f64>,
    /// CPU seconds of every process below the root (HAProxy processes,
    /// `haproxy -c`, iptables): exited ones whole, through the root's
    /// reaped-children times.
    pub(crate) below_s: f64,
    /// The machine's busy CPU seconds (all CPUs) in the window.
    pub(crate) machine_busy_s: Option<f64>,
    /// What of [`CpuUse::machine_busy_s`] the bench's own process tree
    /// (clients, demo backends, supervisor, HAProxy, everything below) did
    /// not use: other jobs on the machine (and the kernel's work not
    /// charged to a process), CPU seconds.
    pub(crate) others_s: Option<f64>,
    /// The bare loop's own CPU seconds (the bench thread that spawns the
    /// processes and waits for them): its counterpart of the supervisor's.
    pub(crate) loop_own_s: Option<f64>,
}

impl CpuUse {
    /// Two windows' CPU as one (`--rounds`).
    pub(crate) fn plus(self, o: CpuUse) -> CpuUse {
        let sum = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
        CpuUse {
            window_s: self.window_s + o.window_s,
            root_own_s: sum(self.root_own_s, o.root_own_s),
            below_s: self.below_s + o.below_s,
            machine_busy_s: sum(self.machine_busy_s, o.machine_busy_s),
            others_s: sum(self.others_s, o.others_s),
            loop_own_s: sum(self.loop_own_s, o.loop_own_s),
        }
    }
}

/// CPU seconds used so far by this process and everything below it: the
/// own and reaped-children times of each live process of the tree (a
/// process that exits is in its parent's reaped times once reaped; every
/// parent of the tree outlives the window). Walks /proc: only taken at the
/// window's two ends.
pub(crate) fn tree_cpu_s() -> f64 {
    let me = std::process::id() as i32;
    std::iter::once(me)
        .chain(testkit::descendants_of(me).into_iter().map(|p| p.pid))
        .filter_map(measure::proc_cpu)
        .map(|c| c.own + c.reaped)
        .sum()
}

/// CPU seconds the calling thread has used.
pub(crate) fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// What a measured window gave.
pub(crate) struct Driven {
    pub(crate) load: Load,
    /// When the actions were taken (signal sent, catalog renamed into
    /// place), seconds since the start.
    pub(crate) sent: Vec<f64>,
    /// Per ok request: (its start, µs since the load started; its latency,
    /// µs).
    pub(crate) requests: Vec<(u32, u32)>,
    /// Per catalog change, its kind.
    pub(crate) kinds: Vec<&'static str>,
    pub(crate) wall0: SystemTime,
    /// The HAProxy processes under the sampled pid.
    pub(crate) sampled: Option<Sampled>,
    pub(crate) cpu: Option<CpuUse>,
}

/// The CPU snapshot of a scenario's process tree: under `root`, or the
/// bare loop's processes (the root is then the bench, which reaps them).
pub(crate) fn cpu_snapshot(action: &Action, root: Option<i32>) -> Option<CpuSnapshot> {
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
pub(crate) fn loop_cpu_s(action: &Action) -> Option<f64> {
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
pub(crate) fn drive(
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
    let tree0 = tree_cpu_s();
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
                Action::Floor(f, changes) => {
                    let kind = changes.advance();
                    if let Err(e) = f.apply(kind, changes) {
                        error.get_or_insert(format!("structural-floor: {e}"));
                    }
                    kinds.push(kind);
                }
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
    let tree1 = tree_cpu_s();
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
            others_s: machine0
                .zip(machine1)
                .map(|(x, y)| (y.0 - x.0) - (tree1 - tree0)),
            loop_own_s: loop0.zip(loop1).map(|(a, b)| b - a),
        }),
        _ => None,
    };
    let sampled = sampler.map(HaproxySampler::finish);
    // Requests that ended after the window count in no bucket.
    load.buckets.resize(nbuckets, 0);
    load.fail_buckets.resize(nbuckets, 0);
    let requests = load
        .start_us
        .iter()
        .copied()
        .zip(load.lat_us.iter().copied())
        .collect();
    load.lat_us.sort_unstable();
    if let Some(e) = error {
        return Err(format!("catalog change: {e}"));
    }
    Ok(Driven {
        load,
        sent,
        requests,
        kinds,
        wall0,
        sampled,
        cpu,
    })
}
