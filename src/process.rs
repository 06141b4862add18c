//! Child processes with one owner for reaping (as tini, zinit and pid1-rs do).
//!
//! The [`Reaper`] is the only code that calls `waitpid(-1)`. It drains every
//! exited child on each SIGCHLD (signals merge, so it loops until nothing is
//! left) and hands each status to whoever registered that pid; anything else
//! (orphans reparented to us as PID 1 or subreaper) is reaped and logged.
//!
//! Two ways to run a child:
//! - [`Reaper::spawn`]: a long-lived child (HAProxy). The table lock is held
//!   while spawning, so a child that dies at once cannot be reaped before it
//!   is registered.
//! - [`Reaper::run_output`]: a short command whose own `std::process` wait
//!   must not be raced (`haproxy -c`, `iptables` through the iptables
//!   crate). While such a command runs, the reaper holds off (a read/write
//!   lock); exited children simply wait as zombies for a few milliseconds.

use std::collections::HashMap;
use std::io;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, RwLock};

use crate::events::Event;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::{oneshot, Notify};

/// How a child ended, in the shape shells and tini report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// Shell convention: the code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(
                f,
                "signal {}",
                nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("?")
            ),
        }
    }
}

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
}

/// The single reaper of this process's children.
#[derive(Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
    /// Read-held while a command waits for its own child; write-held to drain.
    gate: Arc<RwLock<()>>,
    wake: Arc<Notify>,
}

impl Default for Reaper {
    fn default() -> Self {
        Self::new()
    }
}

/// The output pipes of a spawned child, for those the command piped.
#[derive(Debug)]
pub struct ChildPipes {
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper {
            table: Arc::default(),
            gate: Arc::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Spawns a long-lived child; the receiver gets its exit.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Pid, oneshot::Receiver<Exit>)> {
        self.spawn_child(cmd).map(|(pid, rx, _)| (pid, rx))
    }

    /// Like [`Reaper::spawn`], and hands back the child's stdout and stderr
    /// when the command pipes them.
    pub fn spawn_child(
        &self,
        cmd: &mut Command,
    ) -> io::Result<(Pid, oneshot::Receiver<Exit>, ChildPipes)> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.spawn()?;
        let pipes = ChildPipes {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        };
        let pid = child.id() as i32;
        // The std Child is dropped without waiting: the reaper owns the wait.
        drop(child);
        let (tx, rx) = oneshot::channel();
        table.waiters.insert(pid, tx);
        Ok((Pid::from_raw(pid), rx, pipes))
    }

    /// Runs a short command to completion on a blocking thread, with the
    /// reaper held off so `std::process` can wait for its own child.
    pub async fn run_output(&self, mut cmd: Command) -> io::Result<Output> {
        let gate = self.gate.clone();
        let wake = self.wake.clone();
        tokio::task::spawn_blocking(move || {
            let out = {
                let _held = gate.read().unwrap_or_else(|e| e.into_inner());
                cmd.output()
            };
            // Children that exited meanwhile are waiting to be reaped.
            wake.notify_one();
            out
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Runs `f` (which may spawn and wait for its own children, as the
    /// iptables crate does) with the reaper held off.
    pub async fn hold_off<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let gate = self.gate.clone();
        let wake = self.wake.clone();
        tokio::task::spawn_blocking(move || {
            let out = {
                let _held = gate.read().unwrap_or_else(|e| e.into_inner());
                f()
            };
            wake.notify_one();
            out
        })
        .await
        .map_err(io::Error::other)
    }

    /// Reaps every exited child; returns how many were reaped. Skips the
    /// round (returns 0) while a [`Reaper::run_output`] command is waiting.
    pub fn drain(&self) -> usize {
        let Ok(_gate) = self.gate.try_write() else {
            return 0;
        };
        let mut n = 0;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.deliver(pid, Exit::Code(code));
                    n += 1;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.deliver(pid, Exit::Signal(sig as i32));
                    n += 1;
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    crate::log!(error, Event::ReapFailed, error = %e, "waitpid failed");
                    break;
                }
            }
        }
        n
    }

    fn deliver(&self, pid: Pid, exit: Exit) {
        let waiter = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiters
            .remove(&pid.as_raw());
        match waiter {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                crate::log!(debug, Event::OrphanReaped, pid = pid.as_raw(), %exit, "reaped an orphan")
            }
        }
    }

    /// The reaping task: drains on every SIGCHLD and after every held-off
    /// command. Runs until the runtime stops.
    pub async fn run(self) -> io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = signal(SignalKind::child())?;
        // Children that exited before the handler was installed.
        self.drain();
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = self.wake.notified() => {}
            }
            self.drain();
        }
    }
}

/// Registers this process as a child subreaper (when it is not PID 1), so
/// orphaned descendants, such as an old HAProxy whose parent changed, are
/// still reaped here.
pub fn become_subreaper() -> io::Result<()> {
    if std::process::id() == 1 {
        return Ok(());
    }
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises RLIMIT_NOFILE as far as the kernel allows (`fs.nr_open`, capped at
/// 2^20), as container runtimes do for their init: HAProxy needs about two
/// descriptors per connection of `maxconn` and refuses to start otherwise.
/// Without CAP_SYS_RESOURCE only the soft limit can rise (to the hard one).
/// Returns the limit in force afterwards.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let want = nr_open.min(1 << 20).max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() && soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}
