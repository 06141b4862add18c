//! The binary under test: a handle on a running supervisor (plain, or as
//! PID 1 of its own pid namespace), one-shot runs (`render`, `check`), and
//! its JSON log read as events.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::process::{
    child_wait_timeout, children_of, clear_env, descendants_of, die_with_parent, file_tail,
    run_within,
};
use crate::{poll_until, require, Event};

/// A running `haproxy-supervisor` (or another program, see
/// [`Supervisor::spawn_program`]). stdout and stderr are appended to
/// `supervisor.log` in the handle's own temporary directory ([`dir`] is a
/// handy place for config, template and catalog files). Drop sends SIGKILL
/// and waits; if the test is panicking it first prints the log.
///
/// [`dir`]: Supervisor::dir
pub struct Supervisor {
    /// The spawned process: the program itself, or `unshare` in PID-1 mode.
    child: Child,
    /// In PID-1 mode, the program's pid (as seen from the test), once found.
    inner: std::cell::Cell<Option<i32>>,
    pid1: bool,
    program: PathBuf,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Supervisor {
    /// Spawns the binary under test with `args` and extra environment
    /// variables `envs` (the test's environment is inherited).
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Supervisor {
        Supervisor::spawn_program(crate::supervisor_bin(), args, envs)
    }

    /// Spawns the binary under test as PID 1 of a new pid namespace (with
    /// its own /proc), under `unshare --pid --fork --mount-proc
    /// --kill-child`, the way it runs as a container's ENTRYPOINT.
    ///
    /// `unshare` forwards no signals, so [`signal`] and [`pid`] address the
    /// inner process directly. As PID 1 it only receives the signals it has
    /// installed handlers for (SIGKILL excepted): wait for a log line that
    /// shows it is running before signalling it. The exit status from
    /// [`wait_timeout`] is `unshare`'s, which mirrors the inner exit code and
    /// re-raises a terminating signal, except that a SIGKILLed inner process
    /// shows as exit code 1 (util-linux 2.38).
    ///
    /// [`signal`]: Supervisor::signal
    /// [`pid`]: Supervisor::pid
    /// [`wait_timeout`]: Supervisor::wait_timeout
    pub fn spawn_as_pid1(args: &[&str], envs: &[(&str, &str)]) -> Supervisor {
        Supervisor::spawn_program_as_pid1(crate::supervisor_bin(), args, envs)
    }

    /// Like [`Supervisor::spawn`] for any program (used to test the harness).
    pub fn spawn_program(
        program: impl AsRef<Path>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Supervisor {
        Supervisor::launch(program.as_ref(), args, envs, false)
    }

    /// Like [`Supervisor::spawn_as_pid1`] for any program.
    pub fn spawn_program_as_pid1(
        program: impl AsRef<Path>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Supervisor {
        Supervisor::launch(program.as_ref(), args, envs, true)
    }

    fn launch(program: &Path, args: &[&str], envs: &[(&str, &str)], pid1: bool) -> Supervisor {
        let program = if program.components().count() == 1 {
            require(&program.to_string_lossy())
        } else {
            program.to_path_buf()
        };
        let dir = tempfile::Builder::new()
            .prefix("supervisor-test-")
            .tempdir()
            .expect("create supervisor tempdir");
        let log = dir.path().join("supervisor.log");
        let out = File::create(&log).expect("create supervisor log");
        let err = out.try_clone().expect("clone log fd");
        let mut cmd = if pid1 {
            let mut c = Command::new(require("unshare"));
            c.args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child=SIGKILL",
                "--",
            ])
            .arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(args)
            .envs(envs.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Supervisor {
            child,
            inner: std::cell::Cell::new(None),
            pid1,
            program,
            dir,
            log,
        }
    }

    /// The process's own temporary directory (also its working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far (stdout and stderr).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until the log contains `needle`; panics with the log on timeout.
    /// For output that is not one of the supervisor's events (another
    /// program's, HAProxy's, a message the user must read): the supervisor's
    /// own lines are waited for by event, [`Supervisor::wait_for_event`].
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for(&format!("{needle:?}"), timeout, |log| log.contains(needle));
    }

    /// The lines of event `event` so far, parsed (JSON logs:
    /// `HAPROXY_LOG_FORMAT=json`); the event's fields are under `"fields"`.
    pub fn events(&self, event: Event) -> Vec<Value> {
        json_log(&self.log())
            .into_iter()
            .filter(|v| v["fields"]["event"] == event.as_str())
            .collect()
    }

    /// Whether the log has a line of event `event` (in either log format).
    pub fn has_event(&self, event: Event) -> bool {
        log_has_event(&self.log(), event)
    }

    /// Waits until the log has a line of event `event` (in either log
    /// format); panics with the log on timeout.
    pub fn wait_for_event(&self, event: Event, timeout: Duration) {
        self.wait_for(&format!("event {event}"), timeout, |log| {
            log_has_event(log, event)
        });
    }

    fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) {
        if !poll_until(timeout, || f(&self.log())) {
            panic!(
                "timed out after {timeout:?} waiting for {what} in the log of {}:\n{}",
                self.program.display(),
                self.log()
            );
        }
    }

    /// Pid of the program as seen from the test. In PID-1 mode this is the
    /// inner process (PID 1 inside its namespace); it waits up to 10 s for
    /// `unshare` to have forked and exec'd it, and panics otherwise.
    pub fn pid(&self) -> i32 {
        if !self.pid1 {
            return self.child.id() as i32;
        }
        if let Some(p) = self.inner.get() {
            return p;
        }
        let mut found = None;
        let ok = poll_until(Duration::from_secs(10), || {
            found = self.find_inner();
            found.is_some()
        });
        match found {
            Some(p) if ok => {
                self.inner.set(Some(p));
                p
            }
            _ => panic!(
                "no child of unshare (pid {}) running {} after 10s; log:\n{}",
                self.child.id(),
                self.program.display(),
                self.log()
            ),
        }
    }

    /// The inner process of a PID-1 run: the child of `unshare` that has
    /// exec'd the program.
    fn find_inner(&self) -> Option<i32> {
        let unshare = self.child.id() as i32;
        let want = std::fs::canonicalize(&self.program).unwrap_or_else(|_| self.program.clone());
        children_of(unshare).into_iter().map(|p| p.pid).find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|exe| exe.to_string_lossy().starts_with(&*want.to_string_lossy()))
                .unwrap_or(false)
        })
    }

    /// Pid of the `unshare` wrapper in PID-1 mode, None otherwise.
    pub fn wrapper_pid(&self) -> Option<i32> {
        self.pid1.then(|| self.child.id() as i32)
    }

    /// Sends `sig` to the program (the inner process in PID-1 mode).
    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        kill(Pid::from_raw(self.pid()), sig)
    }

    /// Waits up to `timeout` for the process to exit (in PID-1 mode: for
    /// `unshare`, which exits with the inner status). Returns the status, or
    /// None if it is still running. Can be called again after it returned.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        child_wait_timeout(&mut self.child, timeout)
    }

    /// Stops it gracefully (SIGTERM; its HAProxy with it, so the next one
    /// can bind the same ports); panics with the log unless it exits within
    /// 20 s.
    pub fn stop(mut self) {
        self.signal(Signal::SIGTERM).expect("SIGTERM");
        assert!(
            self.wait_timeout(Duration::from_secs(20)).is_some(),
            "supervisor did not stop; log:\n{}",
            self.log()
        );
    }

    /// `haproxy-supervisor run` with the catalog from `source` (e.g.
    /// `["--consul", addr]` or `["--catalog-file", path]`), its config in
    /// `<its dir>/etc/haproxy.cfg` ([`Supervisor::config_path`]) and its
    /// run directory in `<its dir>/run`, and `envs`.
    pub fn spawn_run(source: &[&str], envs: &[(&str, &str)]) -> Supervisor {
        let mut args = vec!["run"];
        args.extend_from_slice(source);
        args.extend(["--config-file", "etc/haproxy.cfg", "--run-dir", "run"]);
        Supervisor::spawn(&args, envs)
    }

    /// [`Supervisor::spawn_run`] on `consul`.
    pub fn spawn_on_consul(consul: &crate::Consul, envs: &[(&str, &str)]) -> Supervisor {
        Supervisor::spawn_run(&["--consul", &consul.addr()], envs)
    }

    /// `<its dir>/etc/haproxy.cfg`, the config of
    /// [`Supervisor::spawn_run`].
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("etc/haproxy.cfg")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Supervisor {
    /// Kills the whole process tree: the program is frozen (SIGSTOP) so it
    /// cannot spawn more, then it and every descendant (HAProxy processes)
    /// get SIGKILL, so nothing is left running as an orphan.
    fn drop(&mut self) {
        if self.is_running() {
            let top = if self.pid1 {
                self.inner.get().or_else(|| self.find_inner())
            } else {
                Some(self.child.id() as i32)
            };
            if let Some(top) = top {
                let _ = kill(Pid::from_raw(top), Signal::SIGSTOP);
                for p in descendants_of(top) {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(top), Signal::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- log of {} ({}) ---\n{}\n--- end of log ---",
                self.program.display(),
                self.log.display(),
                file_tail(&self.log, 32 * 1024)
            );
        }
    }
}

/// `haproxy-supervisor run` as a bench starts it, in `dir` (its working
/// directory; the config is `dir/etc/haproxy.cfg`, the run directory
/// `dir/run`): JSON logs, host names under `dom`, HAProxy's HTTP frontend on
/// `http_port`, HAProxy `haproxy_bin`, and none of the caller's `HAPROXY_*`
/// and `CONSUL_*` variables ([`clear_env`]). Add the source of the catalog.
pub fn bench_command(dir: &Path, dom: &str, http_port: u16, haproxy_bin: &Path) -> Command {
    let mut cmd = Command::new(crate::supervisor_bin());
    clear_env(&mut cmd);
    cmd.arg("run")
        .arg("--config-file")
        .arg(dir.join("etc/haproxy.cfg"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .env("HAPROXY_DOM", dom)
        .env("HAPROXY_LOG_FORMAT", "json")
        .env("HAPROXY_HTTP_PORT", http_port.to_string())
        .env("HAPROXY_BIN", haproxy_bin)
        .current_dir(dir);
    cmd
}

/// What a one-shot run of the binary under test (`render`, `check`) left.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Exit code; None if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary under test to completion with `args` and extra `envs`
/// (in the calling thread's network namespace). Panics with its output if it
/// has not exited after `timeout`.
pub fn run_once(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> RunOutput {
    let mut cmd = Command::new(crate::supervisor_bin());
    cmd.args(args)
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1");
    let (status, stdout, stderr) = run_within(&mut cmd, timeout);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    match status {
        Some(s) => RunOutput {
            code: s.code(),
            stdout,
            stderr,
        },
        None => panic!(
            "`haproxy-supervisor {}` still running after {timeout:?}; stderr:\n{stderr}",
            args.join(" ")
        ),
    }
}

// ---------------------------------------------------------------------------
// The JSON log (`HAPROXY_LOG_FORMAT=json`)
// ---------------------------------------------------------------------------

/// The supervisor's JSON log lines in `text` (HAProxy's own lines, which
/// share the output, are skipped), whole: `timestamp`, `level`, `fields`
/// (with `message` and the event's own fields), ...
pub fn json_log(text: &str) -> Vec<Value> {
    text.lines()
        // HAProxy's lines (JSON too, and most of a log under load) have no
        // "fields": not parsed at all.
        .filter(|l| l.starts_with('{') && l.contains("\"fields\":"))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("fields").is_some())
        .collect()
}

/// The fields (`event`, `message` and the event's own) of every line of
/// event `event` in the JSON log `text` (see [`json_log`]): for a one-shot
/// run's stderr ([`RunOutput`]) or a log read once.
pub fn events_in(text: &str, event: Event) -> Vec<Value> {
    json_log(text)
        .into_iter()
        .map(|v| v["fields"].clone())
        .filter(|f| f["event"] == event.as_str())
        .collect()
}

/// The `error` field of the first `fatal` event in the JSON log `text`
/// (a start-up step failed), if there is one.
pub fn fatal_error(text: &str) -> Option<String> {
    events_in(text, Event::Fatal)
        .first()
        .and_then(|f| f["error"].as_str().map(str::to_string))
}

/// Whether `line` is a log line of event `event`: its `event` field, in
/// the JSON format (`"event":"reload_done"`) or the text one
/// (`event=reload_done`).
pub fn is_event(line: &str, event: Event) -> bool {
    if line.starts_with('{') {
        // Most lines under load are HAProxy's: a cheap test first.
        return line.contains(event.as_str())
            && serde_json::from_str::<Value>(line)
                .is_ok_and(|v| v["fields"]["event"] == event.as_str());
    }
    line.split_whitespace()
        .any(|w| w.strip_prefix("event=") == Some(event.as_str()))
}

/// Whether a log `text` has a line of event `event` (see [`is_event`]).
pub fn log_has_event(text: &str, event: Event) -> bool {
    text.lines().any(|l| is_event(l, event))
}

/// One JSON log line of the supervisor, timed, for a bench that counts
/// events in windows of wall-clock time.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Seconds since the Unix epoch (UTC, microsecond precision).
    pub at: f64,
    /// Its event; None for a name this version of the product does not
    /// know.
    pub event: Option<Event>,
    pub fields: Value,
}

/// The timed JSON lines of a log (see [`json_log`]).
pub fn json_lines(text: &str) -> Vec<LogLine> {
    json_log(text)
        .into_iter()
        .filter_map(|v| {
            let at = parse_rfc3339(v.get("timestamp")?.as_str()?)?;
            let fields = v.get("fields")?.clone();
            let event = fields["event"].as_str().and_then(Event::parse);
            Some(LogLine { at, event, fields })
        })
        .collect()
}

/// `2026-11-22T03:36:26.566773Z` → seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + h * 3600 + min * 60) as f64 + sec)
}

/// The gaps, from the supervisor's log, between each `generation_died` and
/// the `reload_done` of the restart after it (ms).
pub fn death_to_serving_ms(sup: &Supervisor) -> Vec<f64> {
    let lines = json_lines(&sup.log());
    let mut gaps = Vec::new();
    let mut died: Option<f64> = None;
    for l in &lines {
        match l.event {
            Some(Event::GenerationDied) => died = died.or(Some(l.at)),
            Some(Event::ReloadDone) if l.fields["trigger"] == "restart" => {
                if let Some(d) = died.take() {
                    gaps.push((l.at - d) * 1000.0);
                }
            }
            _ => {}
        }
    }
    gaps
}
