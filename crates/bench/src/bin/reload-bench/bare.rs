//! The `bare` peer row: HAProxy started and reloaded by the bench's own
//! minimal loop, and the SIGUSR1 that tells the loop a process is up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use testkit::http;

use crate::load::thread_cpu_s;
use crate::HOST;

/// The pid of the last process that sent the bench SIGUSR1 (see [`Bare`]).
pub(crate) static SIGUSR1_FROM: AtomicI32 = AtomicI32::new(0);

pub(crate) extern "C" fn on_sigusr1(
    _: libc::c_int,
    info: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler;
    // an atomic store is async-signal-safe.
    let pid = unsafe { (*info).si_pid() };
    SIGUSR1_FROM.store(pid, Ordering::SeqCst);
}

/// Records who sends the bench SIGUSR1 (instead of dying of it). Call
/// before any thread exists.
pub(crate) fn catch_sigusr1() -> Result<(), String> {
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
pub(crate) struct Bare {
    pub(crate) bin: PathBuf,
    pub(crate) cfg: PathBuf,
    pub(crate) socket: PathBuf,
    /// HAProxy's stderr, all processes (stdout, the access log: /dev/null).
    pub(crate) log: PathBuf,
    /// The serving process (the last one that came up).
    pub(crate) serving: i32,
    /// Per reload: spawn → up, ms.
    pub(crate) took_ms: Vec<f64>,
    /// When each reload's process came up.
    pub(crate) up_at: Vec<SystemTime>,
    /// Processes started by a reload.
    pub(crate) reloads: usize,
    /// Processes that exited with a failure status before coming up (a
    /// failed start).
    pub(crate) failed: usize,
    pub(crate) spawn_errors: usize,
    pub(crate) reaper: BareReaper,
}

/// Reaps the bare loop's processes on a thread of its own (a shell loop's
/// daemonized HAProxy is reaped by init, not by the loop): reaping a
/// process costs the kernel some work (its /proc entries are invalidated),
/// which must not hold the loop's cadence. The thread's CPU is reported with
/// the loop's.
pub(crate) struct BareReaper {
    pub(crate) tx: Option<std::sync::mpsc::Sender<std::process::Child>>,
    /// Pids of the processes not reaped yet.
    pub(crate) live: Arc<std::sync::Mutex<Vec<i32>>>,
    /// The reaper thread's CPU time so far, ns.
    pub(crate) cpu_ns: Arc<std::sync::atomic::AtomicU64>,
    /// Processes that exited with a failure status.
    pub(crate) failed: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<thread::JoinHandle<()>>,
}

impl BareReaper {
    pub(crate) fn start() -> BareReaper {
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
    pub(crate) fn adopt(&self, child: std::process::Child) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id() as i32);
        if let Some(tx) = &self.tx {
            let _ = tx.send(child);
        }
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn cpu_s(&self) -> f64 {
        self.cpu_ns.load(Ordering::SeqCst) as f64 / 1e9
    }

    /// Stops reaping; processes still alive are killed.
    pub(crate) fn finish(&mut self) {
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
    pub(crate) fn start(bin: &Path, dir: &Path, addr: &SocketAddr) -> Result<Bare, String> {
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

    pub(crate) fn spawn(&self, reload: bool) -> Result<std::process::Child, String> {
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
    pub(crate) fn reload(&mut self) {
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

    pub(crate) fn pids(&self) -> Vec<i32> {
        self.reaper.pids()
    }

    /// Soft-stops every process (SIGUSR1), waits up to `grace`, then kills.
    /// Returns the failed starts (exited with a failure status).
    pub(crate) fn stop(&mut self, grace: Duration) -> usize {
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

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
