//! For benchmark reports: percentiles, CPU accounting from `/proc`, the
//! machine's description and the date.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::process::child_pids;

/// The q-quantile (0..=1) of sorted values (nearest rank).
pub fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Seconds since the epoch of a `SystemTime`.
pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// UTC date and time now, `YYYY-MM-DD HH:MM UTC`.
pub fn now_utc() -> String {
    let secs = epoch_secs(SystemTime::now()) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// A short description of the machine for the reports.
pub fn machine() -> String {
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cpus} CPUs ({model}), {mem_gb:.1} GiB RAM, Linux {kernel}")
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU times of one process from `/proc/<pid>/stat`, seconds: its own
/// (`utime + stime`, all its threads, exited ones included) and that of
/// the children it has reaped (`cutime + cstime`: each reaped child's own
/// and its reaped children's, accumulated by the kernel at `wait`).
/// Readable for a zombie too, until it is reaped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcCpu {
    pub own: f64,
    pub reaped: f64,
}

pub fn proc_cpu(pid: i32) -> Option<ProcCpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    // Fields after the command: state is field 3; utime 14, stime 15,
    // cutime 16, cstime 17.
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let n = |i: usize| f.get(i - 3).and_then(|x| x.parse::<f64>().ok());
    let hz = clock_ticks();
    Some(ProcCpu {
        own: (n(14)? + n(15)?) / hz,
        reaped: (n(16)? + n(17)?) / hz,
    })
}

/// A snapshot for the CPU a process tree uses in a window: the root's own
/// and reaped-children times, and own + reaped times of each live child. The CPU the tree below the root used between two snapshots is
/// `Δ root.reaped + Σ live(after) − Σ live(before)`: a process that exits in
/// the window arrives, whole, in its parent's reaped times, and what the
/// ones alive at the start had used before it is taken off. Exact up to
/// the clock tick of the live processes' times (10 ms each).
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    pub root: ProcCpu,
    pub live: BTreeMap<i32, ProcCpu>,
    pub at: Option<Instant>,
}

impl CpuSnapshot {
    /// The snapshot of `root` and `below` (the children of `root` when
    /// `None`: a child's own children arrive in its reaped times; see
    /// [`child_pids`] for why not deeper). Taken again when the root reaped
    /// a child meanwhile, so a process is never counted both live and
    /// reaped.
    pub fn take(root: i32, below: Option<&[i32]>) -> CpuSnapshot {
        let mut snap = CpuSnapshot::default();
        for _ in 0..5 {
            let before = proc_cpu(root).unwrap_or_default();
            let pids = match below {
                Some(p) => p.to_vec(),
                None => child_pids(root),
            };
            let live: BTreeMap<i32, ProcCpu> = pids
                .into_iter()
                .filter_map(|p| Some((p, proc_cpu(p)?)))
                .collect();
            let after = proc_cpu(root).unwrap_or_default();
            snap = CpuSnapshot {
                root: after,
                live,
                at: Some(Instant::now()),
            };
            if before.reaped == after.reaped {
                break;
            }
        }
        snap
    }

    /// Seconds of CPU used below the root between `self` and `later`.
    pub fn below_until(&self, later: &CpuSnapshot) -> f64 {
        let sum = |m: &BTreeMap<i32, ProcCpu>| m.values().map(|c| c.own + c.reaped).sum::<f64>();
        (later.root.reaped - self.root.reaped) + sum(&later.live) - sum(&self.live)
    }

    /// Seconds of CPU the root itself used between `self` and `later`.
    pub fn root_until(&self, later: &CpuSnapshot) -> f64 {
        later.root.own - self.root.own
    }
}

/// The machine's busy and total CPU time so far, seconds (all CPUs, from
/// `/proc/stat`; busy is everything but idle and iowait).
pub fn machine_cpu() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    let hz = clock_ticks();
    Some(((total - idle) / hz, total / hz))
}
