//! Child processes that die with the test or bench, and what `/proc` says
//! about processes: the tree under a pid, zombies, names, arguments, memory.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Makes the child receive SIGKILL when the spawning thread exits (see the
/// crate docs), so nothing survives a killed test or bench.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Polls `child` until it exits or `timeout` passes.
pub fn child_wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        // The poll interval of this wait for the exit, which has a deadline.
        thread::sleep(Duration::from_millis(10).min(deadline - now));
    }
}

/// Runs `cmd` to completion (stdin null; stdout and stderr captured, read
/// as they come so a full pipe never blocks it) within `timeout`: its exit
/// status, None if it had not ended by then (it is killed), and what it
/// wrote. Panics if it cannot be started.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> (Option<ExitStatus>, Vec<u8>, Vec<u8>) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    fn drain(r: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = child_wait_timeout(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// The last `max` bytes of a file, as text (for diagnostics).
pub fn file_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let tail = tail(&text, max);
            let earlier = text.len() - tail.len();
            if earlier > 0 {
                format!("[... {earlier} earlier bytes ...]\n{tail}")
            } else {
                tail.to_string()
            }
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The last `max` bytes of `s` (at most; cut at a character boundary).
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The first line `cmd` writes to stdout (a version, say); empty when it
/// cannot run.
pub fn first_line_of(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Parsed fields of `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// Command name (`comm`, at most 15 bytes).
    pub comm: String,
    /// Process state: `R`, `S`, `D`, `Z`, `T`, ...
    pub state: char,
    pub ppid: i32,
}

/// Reads `/proc/<pid>/stat`; None if the process is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
    })
}

/// Every process visible in this process's `/proc`.
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// Pids whose command name (`/proc/<pid>/comm`, truncated to 15 bytes by the
/// kernel) is `name`, across the whole machine. Prefer [`descendants_of`]
/// when other tests may run the same program concurrently.
pub fn pids_of(name: &str) -> Vec<i32> {
    let short = &name.as_bytes()[..name.len().min(15)];
    let mut pids: Vec<i32> = all_processes()
        .into_iter()
        .filter(|p| p.comm.as_bytes() == short)
        .map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Direct children of `pid` (processes whose parent is `pid`).
pub fn children_of(pid: i32) -> Vec<ProcStat> {
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .collect()
}

/// All descendants of `pid` (children, grandchildren, ...), not `pid` itself.
pub fn descendants_of(pid: i32) -> Vec<ProcStat> {
    let all = all_processes();
    let mut out: Vec<ProcStat> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            if !out.iter().any(|o| o.pid == p.pid) {
                frontier.push(p.pid);
                out.push(p.clone());
            }
        }
    }
    out
}

/// Pids of zombie (state `Z`) descendants of `pid`: children that exited and
/// have not been reaped. A working PID 1 leaves none for long.
pub fn zombies_under(pid: i32) -> Vec<i32> {
    descendants_of(pid)
        .into_iter()
        .filter(|p| p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

/// Pids of the children of `pid` from `/proc/<pid>/task/*/children` (each
/// thread lists the children it forked): a handful of small reads, unlike
/// the walk over all of `/proc` of [`children_of`], so sampling every 20 ms
/// costs the load next to nothing.
///
/// Direct children only, on purpose: reading a process's
/// `/proc/<pid>/task/*/children` every 20 ms made reaping it cost 25–95 ms
/// of kernel CPU in `wait4` (`release_task` →
/// `proc_invalidate_siblings_dcache` → `d_walk`) instead of ~0.2 ms,
/// measured on the supervisor's reaper under reload-bench — CPU charged to
/// whoever reaps, taken from the load. Walk a tree with [`descendants_of`].
pub fn child_pids(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let mut p = t.path();
        p.push("children");
        if let Ok(text) = std::fs::read_to_string(&p) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|x| x.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// `/proc/<pid>/comm`, trimmed.
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// `/proc/<pid>/cmdline` split into arguments.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// A field of `/proc/<pid>/status` in kB (`VmHWM`, `VmRSS`).
pub fn proc_status_kb(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Raises the soft open-files limit to the hard one (the bench itself holds
/// one socket per client, HAProxy and the supervisor raise their own).
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Whether anything listens on TCP `port` in this namespace.
pub fn port_listening(port: u16) -> bool {
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3
                && f[3] == "0A"
                && f[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
            {
                return true;
            }
        }
    }
    false
}

/// Waits up to 15 s until nothing listens on TCP `port` (a stopped
/// HAProxy's listeners gone); warns if something still does.
pub fn wait_port_free(port: u16) {
    if !crate::poll_until(Duration::from_secs(15), || !port_listening(port)) {
        eprintln!("warning: port {port} still listening after 15 s");
    }
}

/// Removes the supervisor's and Consul's variables inherited from the
/// caller's environment (`HAPROXY_*`, `CONSUL_*`, `LOCAL_SYSLOG`), so runs
/// are reproducible: the bench sets what it means to.
pub fn clear_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("HAPROXY_") || k.starts_with("CONSUL_") || k == "LOCAL_SYSLOG" {
            cmd.env_remove(&*k);
        }
    }
}

/// A child process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: Option<PathBuf>,
    pub started: Instant,
    pub started_wall: SystemTime,
}

impl Proc {
    /// Spawns `cmd` with stdin null; stdout to `stdout` (None = /dev/null);
    /// stderr to `log` (None = inherited).
    pub fn spawn(
        mut cmd: Command,
        log: Option<&Path>,
        stdout_to_log: bool,
    ) -> Result<Proc, String> {
        cmd.stdin(Stdio::null());
        if let Some(log) = log {
            let f = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
            if stdout_to_log {
                cmd.stdout(f.try_clone().map_err(|e| e.to_string())?);
            } else {
                cmd.stdout(Stdio::null());
            }
            cmd.stderr(f);
        } else {
            cmd.stdout(Stdio::null());
        }
        die_with_parent(&mut cmd);
        let started_wall = SystemTime::now();
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
        Ok(Proc {
            child,
            log: log.map(Path::to_path_buf),
            started,
            started_wall,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether it has exited (reaps it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until `f(log)` holds, the process exits, or `timeout` passes.
    pub fn wait_log(&mut self, timeout: Duration, f: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if f(&text) {
                return Ok(());
            }
            if self.exited() {
                return Err(format!("process exited; log tail:\n{}", tail(&text, 3000)));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {timeout:?}; log tail:\n{}",
                    tail(&text, 3000)
                ));
            }
            // The poll interval of this wait for the log line (deadline above).
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited() {
            return;
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            // The poll interval of this wait for the exit (deadline: grace).
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
