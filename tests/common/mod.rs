//! Shared harness for the integration tests (`mod common;` in `tests/*.rs`).
//!
//! Everything here is plain std (threads, `TcpStream`, `/proc`), so tests need
//! no async runtime. Helpers panic with a clear message when something the
//! test depends on is broken: a missing prerequisite is a failure, never a
//! skip.
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
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Path of the binary under test.
pub const SUPERVISOR_BIN: &str = env!("CARGO_BIN_EXE_haproxy-supervisor");
/// Path of the demo HTTP backend.
pub const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_demo-backend");

// ---------------------------------------------------------------------------
// Prerequisites and polling
// ---------------------------------------------------------------------------

/// Resolves `cmd` on `PATH` (or checks it directly when it contains a `/`)
/// and returns its full path. Panics with a clear message when it is missing:
/// tests never skip because a prerequisite is absent.
pub fn require(cmd: &str) -> PathBuf {
    let found = if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        is_executable(&p).then_some(p)
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(cmd))
            .find(|p| is_executable(p))
    };
    match found {
        Some(p) => p,
        None => panic!(
            "required program `{cmd}` is not installed (or not on PATH); \
             run scripts/setup.sh as root to install the test prerequisites"
        ),
    }
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
        thread::sleep(Duration::from_millis(20).min(deadline - now));
    }
}

// ---------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------

pub mod netns {
    use std::cell::Cell;

    thread_local! {
        static ENTERED: Cell<bool> = const { Cell::new(false) };
    }

    /// Moves the calling thread into a new, private network namespace and
    /// brings its loopback interface up.
    ///
    /// libtest runs every test on its own thread, and a thread's namespace is
    /// inherited by every process it spawns (Consul, HAProxy, the supervisor,
    /// iptables), so after this call a test owns all of 127.0.0.1's ports and
    /// its own iptables tables. Threads the test spawns afterwards inherit the
    /// namespace too. Calling it twice on one thread is a no-op.
    ///
    /// Panics (with a hint) if the namespace cannot be created, e.g. when not
    /// running as root.
    pub fn enter() {
        if ENTERED.with(|e| e.get()) {
            return;
        }
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            panic!(
                "unshare(CLONE_NEWNET) failed: {e}; the integration tests need root \
                 (CAP_SYS_ADMIN) to run each test in its own network namespace"
            );
        }
        if let Err(e) = loopback_up() {
            panic!("cannot bring `lo` up in the new network namespace: {e}");
        }
        ENTERED.with(|e| e.set(true));
    }

    /// Whether [`enter`] has been called on this thread.
    pub fn entered() -> bool {
        ENTERED.with(|e| e.get())
    }

    /// `ip link set lo up`, done with SIOCGIFFLAGS/SIOCSIFFLAGS on a socket
    /// created in the current (new) namespace.
    fn loopback_up() -> std::io::Result<()> {
        // SAFETY: plain socket/ioctl calls on a zeroed, correctly sized ifreq.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
                *dst = *src as libc::c_char;
            }
            let mut result = Ok(());
            if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
                result = Err(std::io::Error::last_os_error());
            } else {
                ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr) < 0 {
                    result = Err(std::io::Error::last_os_error());
                }
            }
            libc::close(fd);
            result
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP client (std only)
// ---------------------------------------------------------------------------

/// Why an HTTP exchange failed, by kind, so tests can count and report
/// failures the way the reload benchmarks do. Each variant carries a detail
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The TCP connection was refused (nothing listening).
    Refused(String),
    /// The connection was reset or aborted, or the server closed it before a
    /// complete response arrived.
    Reset(String),
    /// Connecting or reading took longer than the timeout.
    Timeout(String),
    /// Anything else: bad address, malformed response, other I/O errors.
    Other(String),
}

impl HttpError {
    /// `"refused"`, `"reset"`, `"timeout"` or `"other"`.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Refused(_) => "refused",
            HttpError::Reset(_) => "reset",
            HttpError::Timeout(_) => "timeout",
            HttpError::Other(_) => "other",
        }
    }

    fn from_io(e: &std::io::Error, during: &str) -> HttpError {
        let msg = format!("{during}: {e}");
        match e.kind() {
            ErrorKind::ConnectionRefused => HttpError::Refused(msg),
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => HttpError::Reset(msg),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => HttpError::Timeout(msg),
            _ => HttpError::Other(msg),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Refused(m)
            | HttpError::Reset(m)
            | HttpError::Timeout(m)
            | HttpError::Other(m) => write!(f, "{}: {m}", self.kind()),
        }
    }
}

impl std::error::Error for HttpError {}

/// `GET path` with the given `Host` header on a new connection to `addr`
/// (`"127.0.0.1:8080"`; a leading `http://` is ignored), with
/// `Connection: close`. `timeout` bounds the whole exchange. Returns the
/// status and the body (chunked bodies are decoded).
pub fn http_get(
    addr: &str,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    http_request(addr, "GET", host, path, None, timeout)
}

/// Sends `request` verbatim (a whole HTTP/1.x request head, and body if
/// any) on a new connection to `addr` and reads one response: for requests
/// the other helpers cannot write (no `Host`, a hostile `Host`, extra
/// headers). Returns the status and the body.
pub fn http_raw(addr: &str, request: &[u8], timeout: Duration) -> Result<(u16, String), HttpError> {
    let deadline = Instant::now() + timeout;
    let sa = resolve(addr)?;
    let mut stream = TcpStream::connect_timeout(&sa, timeout)
        .map_err(|e| HttpError::from_io(&e, &format!("connect {sa}")))?;
    let _ = stream.set_write_timeout(Some(remaining(deadline)?));
    stream
        .write_all(request)
        .map_err(|e| HttpError::from_io(&e, "send request"))?;
    let (status, body) = read_response(&mut stream, deadline)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One HTTP/1.1 request on a new connection with `Connection: close`.
/// `body`, when given, is sent with a `Content-Length` (and
/// `Content-Type: application/json`). `timeout` bounds the whole exchange.
pub fn http_request(
    addr: &str,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let (status, body) = http_request_bytes(addr, method, host, path, body, timeout)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn resolve(addr: &str) -> Result<SocketAddr, HttpError> {
    let hostport = addr.strip_prefix("http://").unwrap_or(addr);
    let hostport = hostport.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| HttpError::Other(format!("bad address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| HttpError::Other(format!("address {addr:?} resolves to nothing")))
}

fn http_request_bytes(
    addr: &str,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), HttpError> {
    let deadline = Instant::now() + timeout;
    let sa = resolve(addr)?;
    let mut stream = TcpStream::connect_timeout(&sa, timeout)
        .map_err(|e| HttpError::from_io(&e, &format!("connect {sa}")))?;
    let _ = stream.set_nodelay(true);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    if let Some(b) = body {
        req.extend_from_slice(b);
    }
    let remaining = remaining(deadline)?;
    let _ = stream.set_write_timeout(Some(remaining));
    stream
        .write_all(&req)
        .map_err(|e| HttpError::from_io(&e, "send request"))?;
    read_response(&mut stream, deadline)
}

fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(HttpError::Timeout("deadline passed".into()));
    }
    Ok(deadline - now)
}

/// Reads more bytes into `buf`, honouring `deadline`; Ok(0) on EOF.
fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, HttpError> {
    let mut chunk = [0u8; 8192];
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| HttpError::Other(format!("set_read_timeout: {e}")))?;
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(HttpError::from_io(&e, "read response")),
        }
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn read_response(stream: &mut TcpStream, deadline: Instant) -> Result<(u16, Vec<u8>), HttpError> {
    read_response_full(stream, deadline).map(|(status, body, _)| (status, body))
}

/// Reads one response; the flag says the server closes the connection after
/// it (`Connection: close`).
fn read_response_full(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<(u16, Vec<u8>, bool), HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n", 0) {
            break p + 4;
        }
        if read_more(stream, &mut buf, deadline)? == 0 {
            return Err(HttpError::Reset(if buf.is_empty() {
                "connection closed without a response".into()
            } else {
                format!("connection closed mid-head after {} bytes", buf.len())
            }));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = match (version.starts_with("HTTP/1."), parts.next().map(str::parse)) {
        (true, Some(Ok(s))) => s,
        _ => return Err(HttpError::Other(format!("bad status line {status_line:?}"))),
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut closes = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                closes = value.to_ascii_lowercase().contains("close");
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    value
                        .parse()
                        .map_err(|_| HttpError::Other(format!("bad Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
    }
    let mut body = buf.split_off(head_end);
    let no_body = status / 100 == 1 || status == 204 || status == 304;
    if no_body {
        body.clear();
    } else if chunked {
        body = read_chunked(stream, body, deadline)?;
    } else if let Some(len) = content_length {
        while body.len() < len {
            if read_more(stream, &mut body, deadline)? == 0 {
                return Err(HttpError::Reset(format!(
                    "connection closed after {} of {len} body bytes",
                    body.len()
                )));
            }
        }
        body.truncate(len);
    } else {
        while read_more(stream, &mut body, deadline)? != 0 {}
        closes = true;
    }
    Ok((status, body, closes))
}

fn read_chunked(
    stream: &mut TcpStream,
    mut raw: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        // Chunk size line.
        let line_end = loop {
            if let Some(p) = find(&raw, b"\r\n", pos) {
                break p;
            }
            if read_more(stream, &mut raw, deadline)? == 0 {
                return Err(HttpError::Reset(
                    "connection closed inside a chunked body".into(),
                ));
            }
        };
        let size_text = String::from_utf8_lossy(&raw[pos..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Other(format!("bad chunk size {size_text:?}")))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers are ignored; the connection closes after them.
            return Ok(out);
        }
        while raw.len() < pos + size + 2 {
            if read_more(stream, &mut raw, deadline)? == 0 {
                return Err(HttpError::Reset("connection closed inside a chunk".into()));
            }
        }
        out.extend_from_slice(&raw[pos..pos + size]);
        pos += size + 2;
    }
}

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

/// Makes the child receive SIGKILL when the spawning thread exits (see the
/// module docs).
fn die_with_parent(cmd: &mut Command) {
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
fn child_wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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
        thread::sleep(Duration::from_millis(10).min(deadline - now));
    }
}

/// The last `max` bytes of a file, as text (for diagnostics).
fn file_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            let mut text = String::from_utf8_lossy(&bytes[start..]).into_owned();
            if start > 0 {
                text.insert_str(0, &format!("[... {start} earlier bytes ...]\n"));
            }
            text
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs `haproxy -c -f cfg_path` and returns (valid?, HAProxy's combined
/// stdout and stderr).
pub fn haproxy_check(cfg_path: impl AsRef<Path>) -> (bool, String) {
    let haproxy = require("haproxy");
    let out = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(cfg_path.as_ref())
        .output()
        .expect("run haproxy -c");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
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

// ---------------------------------------------------------------------------
// Consul
// ---------------------------------------------------------------------------

const CONSUL_HTTP: &str = "127.0.0.1:8500";
const CONSUL_TIMEOUT: Duration = Duration::from_secs(5);

/// A `consul agent -dev` on 127.0.0.1:8500 (call [`netns::enter`] first).
/// Its output goes to `consul.log` in a temporary directory; the directory is
/// removed on drop unless the test is panicking, in which case the log tail
/// and its path are printed and the file is kept.
pub struct Consul {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    log: PathBuf,
    /// Arguments added to `consul agent -dev ...` (see [`Consul::start_with_args`]).
    extra_args: Vec<String>,
}

impl Consul {
    /// Starts the agent and waits (up to 30 s) until it has elected itself
    /// leader and answers `/v1/agent/self`. Panics with the log on failure.
    pub fn start() -> Consul {
        require("consul");
        let dir = tempfile::Builder::new()
            .prefix("consul-test-")
            .tempdir()
            .expect("create consul tempdir");
        let log = dir.path().join("consul.log");
        let mut consul = Consul {
            child: None,
            dir: Some(dir),
            log,
            extra_args: Vec::new(),
        };
        consul.spawn();
        consul
    }

    /// Like [`Consul::start`] with more agent arguments, e.g.
    /// `["-hcl", "acl { enabled = true default_policy = \"deny\" }"]`.
    /// Readiness then also accepts a 403 from `/v1/agent/self` (ACLs).
    pub fn start_with_args(extra_args: &[&str]) -> Consul {
        require("consul");
        let dir = tempfile::Builder::new()
            .prefix("consul-test-")
            .tempdir()
            .expect("create consul tempdir");
        let log = dir.path().join("consul.log");
        let mut consul = Consul {
            child: None,
            dir: Some(dir),
            log,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        consul.spawn();
        consul
    }

    fn spawn(&mut self) {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open consul log");
        let err = out.try_clone().expect("clone consul log fd");
        let mut cmd = Command::new(require("consul"));
        cmd.args([
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-http-port",
            "8500",
            "-log-level",
            "warn",
        ])
        .args(&self.extra_args)
        .env("CHECKPOINT_DISABLE", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn consul");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "consul exited during start-up with {status}; log {}:\n{}",
                    self.log.display(),
                    file_tail(&self.log, 8192)
                );
            }
            let leader = self.get("/v1/status/leader");
            let ready = matches!(&leader, Ok((200, body)) if !body.trim().trim_matches('"').is_empty())
                && match self.get("/v1/agent/self") {
                    Ok((200, _)) => true,
                    // With ACLs (default deny) the agent answers, but not to us.
                    Ok((403, _)) => !self.extra_args.is_empty(),
                    _ => false,
                };
            if ready {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "consul not ready after 30s (last /v1/status/leader: {leader:?}); log {}:\n{}",
                    self.log.display(),
                    file_tail(&self.log, 8192)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `"http://127.0.0.1:8500"`, for `--consul` / `CONSUL_HTTP_ADDR`.
    pub fn addr(&self) -> String {
        format!("http://{CONSUL_HTTP}")
    }

    /// Path of the agent's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Pid of the running agent, if any.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// `GET path` against the agent; Err if it cannot be reached.
    pub fn get(&self, path: &str) -> Result<(u16, String), HttpError> {
        http_request(CONSUL_HTTP, "GET", CONSUL_HTTP, path, None, CONSUL_TIMEOUT)
    }

    /// `PUT path` with an optional body against the agent.
    pub fn put(&self, path: &str, body: Option<&[u8]>) -> Result<(u16, String), HttpError> {
        http_request(CONSUL_HTTP, "PUT", CONSUL_HTTP, path, body, CONSUL_TIMEOUT)
    }

    /// `GET path`, asserting 200, parsed as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let body = self.expect_ok("GET", path, self.get(path));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: response is not JSON ({e}): {body}"))
    }

    /// Instances of `service` whose checks all pass
    /// (`/v1/health/service/<service>?passing`), as JSON entries.
    pub fn passing(&self, service: &str) -> Vec<serde_json::Value> {
        match self.get_json(&format!("/v1/health/service/{service}?passing")) {
            serde_json::Value::Array(a) => a,
            other => panic!("unexpected health answer for {service}: {other}"),
        }
    }

    fn expect_ok(&self, method: &str, path: &str, r: Result<(u16, String), HttpError>) -> String {
        match r {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("consul {method} {path}: HTTP {status}: {body}"),
            Err(e) => panic!("consul {method} {path}: {e}"),
        }
    }

    /// Registers a service with the agent
    /// (`PUT /v1/agent/service/register`); panics unless Consul answers 200.
    /// Example: `json!({"ID": "web-1", "Name": "web", "Address": "127.0.0.1",
    /// "Port": 9001, "Tags": ["HAPROXY.ENABLE=true"],
    /// "Check": {"CheckID": "web-1-ttl", "TTL": "30s"}})`.
    pub fn register(&self, json: &serde_json::Value) {
        let body = serde_json::to_vec(json).expect("serialize service");
        let path = "/v1/agent/service/register";
        self.expect_ok("PUT", path, self.put(path, Some(&body)));
    }

    /// Deregisters the service instance `id`; panics unless Consul answers 200.
    pub fn deregister(&self, id: &str) {
        let path = format!("/v1/agent/service/deregister/{id}");
        self.expect_ok("PUT", &path, self.put(&path, None));
    }

    /// Marks the TTL check `check_id` passing.
    pub fn ttl_pass(&self, check_id: &str) {
        let path = format!("/v1/agent/check/pass/{check_id}");
        self.expect_ok("PUT", &path, self.put(&path, None));
    }

    /// Marks the TTL check `check_id` critical.
    pub fn ttl_fail(&self, check_id: &str) {
        let path = format!("/v1/agent/check/fail/{check_id}");
        self.expect_ok("PUT", &path, self.put(&path, None));
    }

    /// Stops the agent: SIGTERM, then waits (SIGKILL after 10 s). A `-dev`
    /// agent keeps its state in memory, so everything registered is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if child_wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts the agent again with the same arguments (log appended) and
    /// waits until it is ready. Stops it first if it is running.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
            eprintln!(
                "--- consul log (kept at {}) ---\n{}\n--- end of consul log ---",
                self.log.display(),
                file_tail(&self.log, 8192)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

/// A running `demo-backend` that answers every request with `<name>\n`
/// (and `/health` with `ok\n`).
pub struct Backend {
    child: Child,
    addr: SocketAddr,
    name: String,
}

impl Backend {
    /// Starts a backend named `name` on 127.0.0.1 with a free port.
    pub fn start(name: &str) -> Backend {
        Backend::start_at(name, "127.0.0.1:0")
    }

    /// Starts a backend named `name` listening on `listen` (e.g. a fixed
    /// port inside a test's network namespace).
    pub fn start_at(name: &str, listen: &str) -> Backend {
        let mut cmd = Command::new(BACKEND_BIN);
        cmd.args(["--listen", listen, "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BACKEND_BIN}: {e}"));
        let stdout = child.stdout.take().expect("backend stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("demo-backend {name} on {listen} did not report its address in 10s");
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match addr {
            Some(addr) => Backend {
                child,
                addr,
                name: name.to_string(),
            },
            None => {
                let status = child_wait_timeout(&mut child, Duration::from_secs(1));
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "demo-backend {name} on {listen} failed to start (first line {line:?}, \
                     status {status:?}; its stderr is above)"
                );
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Its name (the response body without the newline).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Kills it now (SIGKILL) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------

/// Outcome counts of a [`Load`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// 2xx responses.
    pub ok: u64,
    /// Complete responses with another status.
    pub non_2xx: u64,
    /// Connections refused.
    pub refused: u64,
    /// Connections reset, or closed before a complete response.
    pub reset: u64,
    /// Requests that took longer than 2 s.
    pub timeout: u64,
    /// Any other failure.
    pub other: u64,
    /// Count of 2xx responses per body (trailing whitespace trimmed, so a
    /// demo-backend named `web-1` counts under `"web-1"`).
    pub bodies: BTreeMap<String, u64>,
    /// Count of non-2xx responses per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// The first few error messages, for diagnostics.
    pub errors: Vec<String>,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Requests that did not get a 2xx response.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.refused + self.reset + self.timeout + self.other
    }

    /// All requests made.
    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }

    /// Successful requests per second.
    pub fn ok_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.other += other.other;
        for (k, v) in other.bodies {
            *self.bodies.entry(k).or_default() += v;
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for e in other.errors {
            if self.errors.len() < MAX_ERRORS {
                self.errors.push(e);
            }
        }
    }
}

const MAX_ERRORS: usize = 10;

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests in {:.2?} ({:.0} ok/s): ok={} non_2xx={} refused={} reset={} timeout={} other={}",
            self.total(),
            self.elapsed,
            self.ok_per_sec(),
            self.ok,
            self.non_2xx,
            self.refused,
            self.reset,
            self.timeout,
            self.other
        )?;
        write!(f, " bodies={:?}", self.bodies)?;
        if !self.statuses.is_empty() {
            write!(f, " statuses={:?}", self.statuses)?;
        }
        if !self.errors.is_empty() {
            write!(f, " first errors={:?}", self.errors)?;
        }
        Ok(())
    }
}

/// Closed-loop HTTP load: `clients` threads, each repeatedly opening a new
/// connection, sending `GET /` with the given `Host` and `Connection: close`
/// (2 s timeout) and counting the outcome. After a failed request a client
/// pauses 5 ms so that a closed port does not turn into a busy loop that
/// starves the processes under test.
///
/// The client threads inherit the network namespace of the thread that
/// calls [`Load::start`].
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
    started: Instant,
}

impl Load {
    /// Starts the clients against `addr` (`"127.0.0.1:8080"`).
    pub fn start(addr: &str, host: &str, clients: usize) -> Load {
        Load::spawn(addr, host, clients, "load", load_client)
    }

    /// `clients` threads named `<name>-<i>`, each running `client`.
    fn spawn(
        addr: &str,
        host: &str,
        clients: usize,
        name: &str,
        client: fn(&str, &str, &AtomicBool) -> LoadReport,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..clients)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let addr = addr.to_string();
                let host = host.to_string();
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || client(&addr, &host, &stop))
                    .expect("spawn load client")
            })
            .collect();
        Load {
            stop,
            threads,
            started,
        }
    }

    /// Stops the clients, waits for their in-flight requests and returns the
    /// combined counts.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        for t in self.threads {
            report.merge(t.join().expect("load client panicked"));
        }
        report.elapsed = self.started.elapsed();
        report
    }
}

/// Closed-loop HTTP load with keep-alive, as browsers and most HTTP client
/// libraries do: `clients` threads, each keeping one connection and sending
/// `GET /` with the given `Host` on it, one request at a time, opening a new
/// connection only after the server said `Connection: close` (or after a
/// failure). A request that gets no complete response counts as failed: no
/// retry, so a connection the server closes while a request is on its way
/// shows up.
pub struct KeepAliveLoad(Load);

impl KeepAliveLoad {
    pub fn start(addr: &str, host: &str, clients: usize) -> KeepAliveLoad {
        KeepAliveLoad(Load::spawn(
            addr,
            host,
            clients,
            "keepalive",
            keepalive_client,
        ))
    }

    /// Stops the clients and returns the combined counts.
    pub fn stop(self) -> LoadReport {
        self.0.stop()
    }
}

fn keepalive_client(addr: &str, host: &str, stop: &AtomicBool) -> LoadReport {
    let mut r = LoadReport::default();
    let timeout = Duration::from_secs(2);
    let mut conn: Option<TcpStream> = None;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    while !stop.load(Ordering::Relaxed) {
        let deadline = Instant::now() + timeout;
        let result = (|| {
            if conn.is_none() {
                let sa = resolve(addr)?;
                let s = TcpStream::connect_timeout(&sa, timeout)
                    .map_err(|e| HttpError::from_io(&e, &format!("connect {sa}")))?;
                let _ = s.set_nodelay(true);
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected");
            let _ = s.set_write_timeout(Some(timeout));
            s.write_all(request.as_bytes())
                .map_err(|e| HttpError::from_io(&e, "send request"))?;
            read_response_full(s, deadline)
        })();
        // A new connection after `Connection: close` or a failure.
        if !matches!(result, Ok((_, _, false))) {
            conn = None;
        }
        if !r.tally(result.map(|(status, body, _)| (status, body))) {
            thread::sleep(Duration::from_millis(5));
        }
    }
    r
}

fn load_client(addr: &str, host: &str, stop: &AtomicBool) -> LoadReport {
    let mut r = LoadReport::default();
    let timeout = Duration::from_secs(2);
    while !stop.load(Ordering::Relaxed) {
        let result = http_request_bytes(addr, "GET", host, "/", None, timeout);
        if !r.tally(result) {
            thread::sleep(Duration::from_millis(5));
        }
    }
    r
}

impl LoadReport {
    /// Counts one request's outcome; false when it failed (its error kept
    /// among the first few).
    fn tally(&mut self, result: Result<(u16, Vec<u8>), HttpError>) -> bool {
        let error = match result {
            Ok((status, body)) if (200..300).contains(&status) => {
                let text = std::str::from_utf8(&body).unwrap_or("<binary>").trim_end();
                match self.bodies.get_mut(text) {
                    Some(n) => *n += 1,
                    None => {
                        self.bodies.insert(text.to_string(), 1);
                    }
                }
                self.ok += 1;
                return true;
            }
            Ok((status, _)) => {
                self.non_2xx += 1;
                *self.statuses.entry(status).or_default() += 1;
                format!("HTTP {status}")
            }
            Err(e) => {
                match e {
                    HttpError::Refused(_) => self.refused += 1,
                    HttpError::Reset(_) => self.reset += 1,
                    HttpError::Timeout(_) => self.timeout += 1,
                    HttpError::Other(_) => self.other += 1,
                }
                e.to_string()
            }
        };
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(error);
        }
        false
    }
}

// ---------------------------------------------------------------------------
// Supervisor (the binary under test)
// ---------------------------------------------------------------------------

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
        Supervisor::spawn_program(SUPERVISOR_BIN, args, envs)
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
        Supervisor::spawn_program_as_pid1(SUPERVISOR_BIN, args, envs)
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
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        if !poll_until(timeout, || self.log().contains(needle)) {
            panic!(
                "timed out after {timeout:?} waiting for {needle:?} in the log of {}:\n{}",
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

// ---------------------------------------------------------------------------
// One-shot runs and the rendered files
// ---------------------------------------------------------------------------

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
    let mut cmd = Command::new(SUPERVISOR_BIN);
    cmd.args(args)
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {SUPERVISOR_BIN}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = child_wait_timeout(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
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

/// The lines of the section that starts with the line `header` (for example
/// `backend www`) in a rendered config, header excluded, up to the next
/// blank line; None if there is no such section.
pub fn config_section(config: &str, header: &str) -> Option<Vec<String>> {
    let mut lines = config.lines();
    lines.find(|l| *l == header)?;
    Some(
        lines
            .take_while(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// Path of the map file of `kind` (`"hosts"` or `"paths"`) a rendered config
/// refers to (`...map(<dir>/hosts-<hash>.map)` or `map_beg(...)`).
pub fn config_map_path(config: &str, kind: &str) -> Option<PathBuf> {
    config.lines().find_map(|l| {
        let start = l.find("map(")? + 4;
        let rest = &l[start..];
        let path = &rest[..rest.find(')')?];
        let name = Path::new(path).file_name()?.to_str()?;
        (name.starts_with(&format!("{kind}-")) && name.ends_with(".map"))
            .then(|| PathBuf::from(path))
    })
}

/// The content of the map file of `kind` the config at `cfg_path` refers
/// to: None if the config cannot be read or names no such map, `Some("")`
/// if the map file it names is missing.
pub fn current_map(cfg_path: &Path, kind: &str) -> Option<String> {
    let config = std::fs::read_to_string(cfg_path).ok()?;
    let map = config_map_path(&config, kind)?;
    Some(std::fs::read_to_string(map).unwrap_or_default())
}
