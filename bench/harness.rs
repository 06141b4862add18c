//! Shared pieces of the two benchmark binaries (`src/bin/reload-bench.rs`
//! and `src/bin/scale-bench.rs` include this file with `#[path]`): a private
//! network namespace, child processes that die with the bench, a small
//! blocking HTTP client that classifies failures, the supervisor's JSON log,
//! and percentiles.
//!
//! Everything is plain std plus `nix`/`libc`/`serde_json`, so the benches
//! need no async runtime.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------
// Network namespace
// ---------------------------------------------------------------------------

/// Moves the calling thread into a new network namespace and brings `lo` up.
/// Call it first thing in `main`, before any thread or child exists: every
/// thread and process created afterwards inherits the namespace, so the
/// bench owns 127.0.0.1's ports and its own iptables tables and never
/// touches the host's.
pub fn enter_netns() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare(CLONE_NEWNET) failed: {e} (the bench must run as root)"))?;
    loopback_up().map_err(|e| format!("cannot bring lo up: {e}"))?;
    // Per-namespace TCP settings for a client that opens ~20k connections a
    // second: a wide ephemeral range and TIME_WAIT reuse on loopback.
    // Failures are harmless (the defaults work, just with less headroom).
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65000");
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    Ok(())
}

/// `ip link set lo up` through SIOCGIFFLAGS/SIOCSIFFLAGS.
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

// ---------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------

/// Finds `name` on PATH (and in the sbin directories).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The sibling binary `name` of the running bench (target/release/NAME).
pub fn sibling_bin(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let p = me.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build everything with `cargo build --release` first",
            p.display()
        ))
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

/// Makes the child receive SIGKILL when the spawning thread exits, so
/// nothing survives a killed bench. Spawn from the main thread.
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

pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Starts `demo-backend --listen 127.0.0.1:0 --name NAME`; returns it and
/// the address it reported.
pub fn start_backend(bin: &Path, name: &str) -> Result<(Proc, SocketAddr), String> {
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn demo-backend: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the backend never blocks on a full pipe.
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let proc = Proc {
        child,
        log: None,
        started,
        started_wall,
    };
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "demo-backend did not report its address".to_string())?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("demo-backend said {line:?}"))?;
    Ok((proc, addr))
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// Connection refused (nothing listening).
    Refused,
    /// Reset or aborted, or closed before a complete response.
    Reset,
    /// Connect or response took longer than the timeout.
    Timeout,
    /// A complete response with a status outside 2xx.
    Status(u16),
    /// Anything else (malformed response, other I/O errors).
    Other,
}

fn classify(e: &std::io::Error) -> Fail {
    match e.kind() {
        ErrorKind::ConnectionRefused => Fail::Refused,
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => Fail::Reset,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Fail::Timeout,
        _ => Fail::Other,
    }
}

fn remaining(deadline: Instant) -> Result<Duration, Fail> {
    let now = Instant::now();
    if now >= deadline {
        Err(Fail::Timeout)
    } else {
        Ok(deadline - now)
    }
}

/// One `GET /` with `Host: host` and `Connection: close` on a new
/// connection; returns the status. The server closes the connection (so
/// TIME_WAIT stays on its side, not on the client's ephemeral ports); the
/// response is read to EOF and checked against its Content-Length.
/// `timeout` bounds the whole exchange, connect included. `buf` is a
/// reusable scratch buffer.
pub fn get(
    addr: &SocketAddr,
    host: &str,
    timeout: Duration,
    buf: &mut Vec<u8>,
) -> Result<u16, Fail> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(addr, timeout).map_err(|e| classify(&e))?;
    let _ = s.set_nodelay(true);
    let req =
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n");
    s.set_write_timeout(Some(remaining(deadline)?))
        .map_err(|_| Fail::Other)?;
    s.write_all(req.as_bytes()).map_err(|e| classify(&e))?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(remaining(deadline)?))
            .map_err(|_| Fail::Other)?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(classify(&e)),
        }
    }
    parse_response(buf)
}

/// One HTTP/1.1 keep-alive connection of a client, as browsers and most
/// HTTP client libraries keep: requests go one at a time on the same
/// connection; a new one is opened only when there is none (at first, after
/// the server answered `Connection: close`, or after a failure).
#[derive(Debug, Default)]
pub struct KeepAlive {
    stream: Option<TcpStream>,
    /// Connections opened (successful connects) so far.
    pub opened: u64,
}

/// One `GET /` with `Host: host` on `conn`'s connection (opened first when
/// there is none). The response is read by its framing (Content-Length,
/// chunked, or up to the close); a response that says `Connection: close`
/// (or is HTTP/1.0 without keep-alive) ends the connection after it. A
/// request that gets no complete response fails and ends the connection:
/// there is no retry, so a connection closed while a request is on its way
/// shows up as a failure (`Reset`) — what a client that does not retry sees.
/// `timeout` bounds the whole exchange, connect included.
pub fn get_keepalive(
    conn: &mut KeepAlive,
    addr: &SocketAddr,
    host: &str,
    timeout: Duration,
    buf: &mut Vec<u8>,
) -> Result<u16, Fail> {
    let deadline = Instant::now() + timeout;
    let r = exchange_keepalive(conn, addr, host, deadline, timeout, buf);
    match r {
        Ok((status, closes)) => {
            if closes {
                conn.stream = None;
            }
            if (200..300).contains(&status) {
                Ok(status)
            } else {
                Err(Fail::Status(status))
            }
        }
        Err(f) => {
            conn.stream = None;
            Err(f)
        }
    }
}

/// The exchange of [`get_keepalive`]: (status, whether the connection ends
/// after this response).
fn exchange_keepalive(
    conn: &mut KeepAlive,
    addr: &SocketAddr,
    host: &str,
    deadline: Instant,
    timeout: Duration,
    buf: &mut Vec<u8>,
) -> Result<(u16, bool), Fail> {
    if conn.stream.is_none() {
        let s = TcpStream::connect_timeout(addr, timeout).map_err(|e| classify(&e))?;
        let _ = s.set_nodelay(true);
        conn.opened += 1;
        conn.stream = Some(s);
    }
    let s = conn.stream.as_mut().ok_or(Fail::Other)?;
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\n\r\n");
    s.set_write_timeout(Some(remaining(deadline)?))
        .map_err(|_| Fail::Other)?;
    s.write_all(req.as_bytes()).map_err(|e| classify(&e))?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    // Reads more into `buf`; false at the end of the stream.
    let mut read_more = |s: &mut TcpStream, buf: &mut Vec<u8>| -> Result<bool, Fail> {
        loop {
            s.set_read_timeout(Some(remaining(deadline)?))
                .map_err(|_| Fail::Other)?;
            match s.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(&e)),
            }
        }
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !read_more(s, buf)? {
            // Closed before a complete head: the request was lost.
            return Err(Fail::Reset);
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Fail::Other)?
        .to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Fail::Other);
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(Fail::Other)?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| Fail::Other)?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            for t in v.split(',').map(str::trim) {
                if t.eq_ignore_ascii_case("close") {
                    close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") && version == "HTTP/1.0" {
                    close = false;
                }
            }
        }
    }
    let body_start = head_end + 4;
    if chunked {
        // The last chunk and the (empty) trailer end the body.
        while !buf[body_start..].windows(5).any(|w| w == b"0\r\n\r\n") {
            if !read_more(s, buf)? {
                return Err(Fail::Reset);
            }
        }
    } else if let Some(len) = length {
        while buf.len() - body_start < len {
            if !read_more(s, buf)? {
                return Err(Fail::Reset);
            }
        }
    } else if status >= 200 && status != 204 && status != 304 {
        // Delimited by the close.
        while read_more(s, buf)? {}
        close = true;
    }
    Ok((status, close))
}

fn parse_response(buf: &[u8]) -> Result<u16, Fail> {
    if buf.is_empty() {
        return Err(Fail::Reset);
    }
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(Fail::Reset);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| Fail::Other)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(Fail::Other);
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(Fail::Other)?;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                let len: usize = v.trim().parse().map_err(|_| Fail::Other)?;
                if buf.len() - (head_end + 4) < len {
                    return Err(Fail::Reset);
                }
            }
        }
    }
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(Fail::Status(status))
    }
}

/// Status of one GET (any status), or the failure.
pub fn status_of(addr: &SocketAddr, host: &str, timeout: Duration) -> Result<u16, Fail> {
    let mut buf = Vec::new();
    match get(addr, host, timeout, &mut buf) {
        Ok(s) => Ok(s),
        Err(Fail::Status(s)) => Ok(s),
        Err(e) => Err(e),
    }
}

/// The body of a complete response left in `buf` by [`get`] (empty when
/// there is none).
pub fn body(buf: &[u8]) -> &[u8] {
    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &buf[i + 4..],
        None => &[],
    }
}

/// Polls `GET host` until it answers `want` or `timeout` passes.
pub fn wait_status(addr: &SocketAddr, host: &str, want: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if status_of(addr, host, Duration::from_secs(1)) == Ok(want) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A minimal request to Consul's HTTP API: `method path` with an optional
/// JSON body; returns (status, body).
pub fn consul_call(
    addr: &SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(5))
        .map_err(|e| format!("connect consul: {e}"))?;
    let _ = s.set_nodelay(true);
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad answer {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------
// The supervisor's JSON log
// ---------------------------------------------------------------------------

/// One JSON log line of the supervisor (`HAPROXY_LOG_FORMAT=json`).
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Seconds since the Unix epoch (UTC, microsecond precision).
    pub at: f64,
    pub message: String,
    pub fields: serde_json::Value,
}

/// The JSON lines of a log (HAProxy's own lines are skipped).
pub fn json_lines(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let at = parse_rfc3339(v.get("timestamp")?.as_str()?)?;
            let fields = v.get("fields")?.clone();
            let message = fields.get("message")?.as_str()?.to_string();
            Some(LogLine {
                at,
                message,
                fields,
            })
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

/// Seconds since the epoch of a `SystemTime`.
pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Statistics and /proc
// ---------------------------------------------------------------------------

/// The q-quantile (0..=1) of sorted values (nearest rank).
pub fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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

/// Direct children of `pid` named `comm`.
pub fn children_named(pid: i32, comm: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                return false;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let ppid = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<i32>().ok());
            &stat[open + 1..close] == comm && ppid == Some(pid)
        })
        .collect()
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

/// `haproxy -v`'s first line.
pub fn haproxy_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
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

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a
/// rename, so a reader polling the file never sees half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// HAProxy processes under a parent
// ---------------------------------------------------------------------------

/// Children of `pid` from `/proc/<pid>/task/*/children` (each thread lists
/// the children it forked): a handful of small reads, unlike a walk over
/// all of `/proc`, so sampling every 20 ms costs the load next to nothing.
pub fn children(pid: i32) -> Vec<i32> {
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

/// Every descendant of `pid` (children, their children, ...).
///
/// Not for repeated sampling of processes that will exit: reading a
/// process's `/proc/<pid>/task/*/children` every 20 ms made reaping it cost
/// 25–95 ms of kernel CPU in `wait4` (`release_task` →
/// `proc_invalidate_siblings_dcache` → `d_walk`) instead of ~0.2 ms,
/// measured on the supervisor's reaper under reload-bench — CPU charged to
/// whoever reaps, taken from the load. The samplers read direct children
/// only ([`children`]), which is every process they need.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
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

/// What a [`HaproxySampler`] saw.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// Serving HAProxy processes (not `haproxy -c`) present at the start.
    pub initial: BTreeSet<i32>,
    /// Every serving HAProxy process seen, the initial ones included.
    pub seen: BTreeSet<i32>,
    /// Distinct `haproxy -c` (config check) processes seen.
    pub checks: usize,
    /// Samples taken.
    pub samples: usize,
}

impl Sampled {
    /// Serving HAProxy processes that appeared after the first sample.
    pub fn started(&self) -> usize {
        self.seen.difference(&self.initial).count()
    }
}

/// Samples the HAProxy processes (comm `haproxy`) that are children of a
/// parent every `every` on a thread of its own (direct children only: see
/// [`descendants`]); a process whose arguments hold `-c` is a config check,
/// counted apart. A process that lives shorter than `every`
/// can be missed: serving processes live until the next reload at least.
pub struct HaproxySampler {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Sampled>>,
}

impl HaproxySampler {
    /// Takes the first sample before returning, so [`Sampled::initial`] is
    /// what ran when the caller started measuring.
    pub fn start(parent: i32, every: Duration) -> HaproxySampler {
        let mut kinds: BTreeMap<i32, bool> = BTreeMap::new();
        let mut sampled = Sampled::default();
        sample_once(parent, &mut kinds, &mut sampled);
        sampled.initial = sampled.seen.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("haproxy-sampler".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(every);
                    sample_once(parent, &mut kinds, &mut sampled);
                }
                sampled
            })
            .ok();
        HaproxySampler { stop, thread }
    }

    /// Stops sampling (after one last sample) and returns what was seen.
    pub fn finish(mut self) -> Sampled {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for HaproxySampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One sample: `kinds` remembers per pid whether it is a serving process
/// (true) or a check (false), so each pid's cmdline is read once.
fn sample_once(parent: i32, kinds: &mut BTreeMap<i32, bool>, out: &mut Sampled) {
    out.samples += 1;
    for pid in children(parent) {
        let serving = match kinds.get(&pid) {
            Some(k) => *k,
            None => {
                // Between fork and exec a child still bears the parent's
                // thread name: only an exec'd haproxy counts, and it is
                // looked at again at the next sample until then.
                if comm(pid).as_deref() != Some("haproxy") {
                    continue;
                }
                let Some(args) = cmdline(pid) else {
                    continue;
                };
                let serving = !args.iter().skip(1).any(|a| a == "-c");
                kinds.insert(pid, serving);
                if !serving {
                    out.checks += 1;
                }
                serving
            }
        };
        if serving {
            out.seen.insert(pid);
        }
    }
}

// ---------------------------------------------------------------------------
// CPU accounting
// ---------------------------------------------------------------------------

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
    /// [`descendants`] for why not deeper). Taken again when the root reaped
    /// a child meanwhile, so a process is never counted both live and
    /// reaped.
    pub fn take(root: i32, below: Option<&[i32]>) -> CpuSnapshot {
        let mut snap = CpuSnapshot::default();
        for _ in 0..5 {
            let before = proc_cpu(root).unwrap_or_default();
            let pids = match below {
                Some(p) => p.to_vec(),
                None => children(root),
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
