//! HAProxy itself: `haproxy -c`, starting a generation, telling when it
//! listens, and the pieces of the reload strategies (SPEC §6), including the
//! iptables SYN-drop guard.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::events::Event;
use crate::process::{Exit, Reaper};

/// The comment that marks our iptables rules.
pub const RULE_COMMENT: &str = "haproxy-supervisor-syn-drop";

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("haproxy rejected {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot run {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("iptables: {0}")]
    Iptables(String),
    #[error("the new haproxy (pid {pid}) did not listen on ports {ports:?} within {waited:?}")]
    NotListening {
        pid: i32,
        ports: Vec<u16>,
        waited: Duration,
    },
    #[error("the new haproxy (pid {pid}) exited at start: {exit}{}", alerts(.output))]
    DiedAtStart {
        pid: i32,
        exit: Exit,
        /// Its last lines on stderr.
        output: String,
    },
}

/// HAProxy's ALERT lines in `output`, for an error message.
fn alerts(output: &str) -> String {
    let a: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("[ALERT]"))
        .map(str::trim)
        .collect();
    if a.is_empty() {
        String::new()
    } else {
        format!(": {}", a.join(" / "))
    }
}

/// Builds the `haproxy -c` command. `fds`: the held listening sockets
/// the config names (`bind fd@<n>`), which `-c` inspects too.
fn check_command(bin: &Path, cfg: &Path, fds: &[RawFd]) -> Command {
    let mut c = Command::new(bin);
    c.arg("-c").arg("-f").arg(cfg);
    c.stdin(Stdio::null());
    inherit(&mut c, fds);
    c
}

/// Makes the child inherit `fds` at their numbers.
fn inherit(c: &mut Command, fds: &[RawFd]) {
    use std::os::unix::process::CommandExt;
    if fds.is_empty() {
        return;
    }
    let fds = fds.to_vec();
    // SAFETY: inherit_in_child only calls fcntl, async-signal-safe.
    unsafe {
        c.pre_exec(move || crate::listeners::inherit_in_child(&fds));
    }
}

fn check_result(
    bin: &Path,
    cfg: &Path,
    out: std::io::Result<std::process::Output>,
) -> Result<(), HaproxyError> {
    let out = out.map_err(|source| HaproxyError::Spawn {
        bin: bin.to_path_buf(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        message.push('\n');
        message.push_str(stdout.trim());
    }
    if message.is_empty() {
        message = format!("haproxy -c failed with {}", out.status);
    }
    Err(HaproxyError::Invalid {
        path: cfg.to_path_buf(),
        message,
    })
}

/// `haproxy -c -f cfg`, for the one-shot subcommands (no reaper running).
pub fn check_sync(bin: &Path, cfg: &Path) -> Result<(), HaproxyError> {
    check_result(bin, cfg, check_command(bin, cfg, &[]).output())
}

/// `haproxy -c -f cfg` under the supervisor's reaper.
pub async fn check(
    reaper: &Reaper,
    bin: &Path,
    cfg: &Path,
    fds: &[RawFd],
) -> Result<(), HaproxyError> {
    let out = reaper.run_output(check_command(bin, cfg, fds)).await;
    check_result(bin, cfg, out)
}

/// `haproxy -c -f cfg` at the lowest CPU priority (nice 19), for checks
/// that nobody waits on (the file written after a live change): under load
/// they take what the serving HAProxy leaves.
pub async fn check_niced(
    reaper: &Reaper,
    bin: &Path,
    cfg: &Path,
    fds: &[RawFd],
) -> Result<(), HaproxyError> {
    use std::os::unix::process::CommandExt;
    let mut cmd = check_command(bin, cfg, fds);
    // SAFETY: setpriority is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            Ok(())
        });
    }
    let out = reaper.run_output(cmd).await;
    check_result(bin, cfg, out)
}

/// How to start a generation.
#[derive(Debug, Clone)]
pub struct StartSpec<'a> {
    pub bin: &'a Path,
    pub config: &'a Path,
    /// Take the listening sockets from this admin socket (`-x`).
    pub take_sockets_from: Option<&'a Path>,
    /// The held listening sockets the config names (`bind fd@<n>`):
    /// inherited at their numbers.
    pub inherit: &'a [RawFd],
    /// Start as this (uid, gid), without supplementary groups, instead of
    /// as ourselves.
    pub run_as: Option<(u32, u32)>,
    /// `HAPROXY_LOG_FORMAT=json`: its stdout and stderr lines are passed on
    /// as JSON ([`crate::logjson`]) instead of as they are.
    pub json_logs: bool,
}

/// The last lines a generation wrote to stderr (HAProxy's alerts), kept to
/// tell why it failed to start.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl StderrTail {
    const KEEP: usize = 64;

    /// The kept lines, oldest first.
    pub fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == Self::KEEP {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

/// Starts HAProxy in the foreground as our child. Its stderr is passed on
/// to ours line by line and its last lines kept. Its stdout (the access
/// logs) is ours, or with JSON logs a pipe whose lines are passed on as
/// JSON.
///
/// Old generations are not named with `-sf`: HAProxy would pause their
/// listeners (SIGTTOU) while the new one binds, so a new generation that
/// fails to start would refuse connections for every service meanwhile.
/// The caller soft-stops them (SIGUSR1) once the new one listens.
pub fn start(
    reaper: &Reaper,
    spec: &StartSpec,
) -> Result<(Pid, oneshot::Receiver<Exit>, StderrTail), HaproxyError> {
    let mut c = Command::new(spec.bin);
    c.arg("-f").arg(spec.config);
    if let Some(sock) = spec.take_sockets_from {
        c.arg("-x").arg(sock);
    }
    c.stdin(Stdio::null()).stderr(Stdio::piped());
    inherit(&mut c, spec.inherit);
    if let Some((uid, gid)) = spec.run_as {
        use std::os::unix::process::CommandExt;
        // std drops the supplementary groups (setgroups) when root sets a uid.
        c.uid(uid).gid(gid);
    }
    if spec.json_logs {
        c.stdout(Stdio::piped());
    }
    let spawn_error = |source| HaproxyError::Spawn {
        bin: spec.bin.to_path_buf(),
        source,
    };
    let (pid, exited, pipes) = reaper.spawn_child(&mut c).map_err(spawn_error)?;
    let tail = StderrTail::default();
    let json = spec.json_logs;
    if let Some(stdout) = pipes.stdout {
        // HAProxy's log writes do not wait: a full pipe drops lines. Room
        // for bursts while this thread is descheduled.
        grow_pipe(&stdout);
        std::thread::Builder::new()
            .name(format!("haproxy-{pid}-stdout"))
            .spawn(move || {
                forward_lines(
                    stdout,
                    |line| {
                        crate::logjson::to_json(
                            line,
                            crate::logjson::Stream::Stdout,
                            std::time::SystemTime::now(),
                        )
                    },
                    |chunk| write_chunk(&mut std::io::stdout().lock(), chunk),
                )
            })
            .map_err(spawn_error)?;
    }
    if let Some(stderr) = pipes.stderr {
        let t = tail.clone();
        std::thread::Builder::new()
            .name(format!("haproxy-{pid}-stderr"))
            .spawn(move || {
                forward_lines(
                    stderr,
                    |line| {
                        t.push(line.to_string());
                        if json {
                            crate::logjson::to_json(
                                line,
                                crate::logjson::Stream::Stderr,
                                std::time::SystemTime::now(),
                            )
                        } else {
                            line.to_string()
                        }
                    },
                    |chunk| write_chunk(&mut std::io::stderr().lock(), chunk),
                )
            })
            .map_err(spawn_error)?;
    }
    Ok((pid, exited, tail))
}

/// How long a forwarding thread naps once it has passed on all there was:
/// lines that arrive meanwhile wait in the pipe and go on together (one
/// read, one write) rather than one wakeup each. At 15,000 access-log
/// lines a second the thread took a fifth of a CPU, mostly waking up.
const FORWARD_NAP: std::time::Duration = std::time::Duration::from_millis(2);

/// The most a forwarded chunk holds: a pipe write of at most `PIPE_BUF`
/// bytes is atomic, so our own log lines on the same pipe never land
/// inside a chunk.
const CHUNK_MAX: usize = 4096;

/// Reads `r` line by line (without the newline; invalid UTF-8 replaced)
/// until end of file; what `each` makes of a line goes on through `out`,
/// whole lines at a time, in chunks of at most [`CHUNK_MAX`] bytes (a
/// longer line alone), once `r` has nothing more buffered.
fn forward_lines(
    r: impl std::io::Read,
    mut each: impl FnMut(&str) -> String,
    mut out: impl FnMut(&[u8]),
) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::with_capacity(64 * 1024, r);
    let mut buf = Vec::new();
    let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK_MAX);
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = each(&String::from_utf8_lossy(&buf));
        if !chunk.is_empty() && chunk.len() + line.len() + 1 > CHUNK_MAX {
            out(&chunk);
            chunk.clear();
        }
        chunk.extend_from_slice(line.as_bytes());
        chunk.push(b'\n');
        if r.buffer().is_empty() {
            if !chunk.is_empty() {
                out(&chunk);
                chunk.clear();
            }
            std::thread::sleep(FORWARD_NAP);
        }
    }
    if !chunk.is_empty() {
        out(&chunk);
    }
}

/// Writes whole lines in one write (see [`CHUNK_MAX`]).
fn write_chunk(out: &mut impl Write, chunk: &[u8]) {
    let _ = out.write_all(chunk);
    let _ = out.flush();
}

/// Asks for a 1 MiB pipe buffer (Linux; best effort).
fn grow_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a pipe descriptor we own; F_SETPIPE_SZ only changes
    // its capacity and fails harmlessly (EPERM above the limit).
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// The proxies (frontend, backend, listen sections) HAProxy's error
/// `message` blames for `config`: those it names, and those holding a line
/// it points at (`[file:line]`). A line of a named `defaults` section (a
/// profile) blames the backends made from it (`backend <name> from
/// <profile>`).
pub fn blamed_proxies(message: &str, config: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = config.lines().collect();
    let made_from = |profile: &str| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                ["backend", name, "from", p, ..] if p == profile => Some(name.to_string()),
                _ => None,
            })
            .collect()
    };
    let section_at = |n: usize| -> Vec<String> {
        lines[..n.min(lines.len())]
            .iter()
            .rev()
            .find_map(|l| {
                let mut t = l.split_whitespace();
                match (l.starts_with(char::is_whitespace), t.next(), t.next()) {
                    (false, Some("frontend" | "backend" | "listen"), Some(name)) => {
                        Some(vec![name.to_string()])
                    }
                    (false, Some("defaults"), Some(name)) if name != "from" => {
                        Some(made_from(name))
                    }
                    (false, Some(_), _) => Some(Vec::new()), // global, defaults, ...
                    _ => None,
                }
            })
            .unwrap_or_default()
    };
    // Only HAProxy's alerts blame (its warnings name proxies too).
    let alerts: Vec<&str> = message.lines().filter(|l| l.contains("[ALERT]")).collect();
    let message = if alerts.is_empty() {
        message.to_string()
    } else {
        alerts.join("\n")
    };
    let message = message.as_str();
    let mut out = BTreeSet::new();
    let mut rest = message;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        // `[file:line]`, not `[0.0.0.0:19000]` (an address and port).
        let file_line = rest[..close].rsplit_once(':').filter(|(f, _)| {
            f.bytes().any(|b| b.is_ascii_alphabetic())
                && f.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_err()
        });
        if let Some((_, n)) = file_line {
            if let Ok(n) = n.parse::<usize>() {
                out.extend(section_at(n));
            }
        }
    }
    for kw in ["frontend ", "backend ", "proxy ", "Proxy "] {
        let mut rest = message;
        while let Some(i) = rest.find(kw) {
            rest = &rest[i + kw.len()..];
            let name: String = rest
                .trim_start_matches('\'')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
                .collect::<String>()
                .trim_end_matches(':')
                .to_string();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Inodes of TCP sockets listening on `ports` in this network namespace.
///
/// Asks the kernel for listening sockets only (sock_diag netlink, as `ss -l`
/// does), so the cost does not grow with the number of connections. Reading
/// `/proc/net/tcp` lists every socket, TIME_WAIT included: on a busy proxy
/// that took ~400 ms per read and made every reload that long. The file is
/// the fallback when netlink is unavailable.
fn listening_inodes(ports: &BTreeSet<u16>) -> Vec<(u16, u64)> {
    match sock_diag::listening() {
        Ok(all) => all.into_iter().filter(|(p, _)| ports.contains(p)).collect(),
        Err(_) => listening_inodes_proc(ports),
    }
}

/// Listening TCP sockets through `NETLINK_SOCK_DIAG` (`SOCK_DIAG_BY_FAMILY`
/// dumps filtered to the LISTEN state in the kernel).
mod sock_diag {
    use std::io;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u32 = 10;
    const NLMSG_HDR: usize = 16;
    /// `struct inet_diag_req_v2`.
    const REQ_LEN: usize = 56;
    /// `struct inet_diag_msg`: sport at 4 (big endian), inode at 68.
    const MSG_LEN: usize = 72;

    /// (port, inode) of every listening TCP socket, IPv4 and IPv6.
    pub fn listening() -> io::Result<Vec<(u16, u64)>> {
        // SAFETY: plain socket call; the fd is closed by `Fd`.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = Fd(fd);
        let mut out = Vec::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            dump(fd.0, family as u8, &mut out)?;
        }
        Ok(out)
    }

    struct Fd(i32);
    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: closing a descriptor we own.
            unsafe { libc::close(self.0) };
        }
    }

    fn dump(fd: i32, family: u8, out: &mut Vec<(u16, u64)>) -> io::Result<()> {
        let mut req = [0u8; NLMSG_HDR + REQ_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        req[NLMSG_HDR] = family;
        req[NLMSG_HDR + 1] = libc::IPPROTO_TCP as u8;
        req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        // SAFETY: sending a fully initialised buffer (the kernel address is
        // the default destination of an unbound netlink socket).
        let n = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: receiving into a buffer we own, bounded by its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let data = &buf[..n as usize];
            let mut off = 0;
            while off + NLMSG_HDR <= data.len() {
                let word = |at: usize| {
                    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
                };
                let len = word(off) as usize;
                let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
                if len < NLMSG_HDR || off + len > data.len() {
                    return Err(io::Error::other("malformed sock_diag answer"));
                }
                match kind as i32 {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR => {
                        let errno = word(off + NLMSG_HDR) as i32;
                        // No such family here (say, IPv6 disabled): nothing listens on it.
                        if errno == 0 || -errno == libc::ENOENT {
                            return Ok(());
                        }
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    _ if kind == SOCK_DIAG_BY_FAMILY && len >= NLMSG_HDR + MSG_LEN => {
                        let m = off + NLMSG_HDR;
                        let port = u16::from_be_bytes([data[m + 4], data[m + 5]]);
                        out.push((port, word(m + 68) as u64));
                    }
                    _ => {}
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// [`listening_inodes`] from `/proc/net/tcp{,6}`.
fn listening_inodes_proc(ports: &BTreeSet<u16>) -> Vec<(u16, u64)> {
    let mut found = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some(port) = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            if ports.contains(&port) {
                if let Ok(inode) = f[9].parse::<u64>() {
                    found.push((port, inode));
                }
            }
        }
    }
    found
}

/// The ports among `ports` that process `pid` holds a listening socket for.
pub fn ports_listening(pid: Pid, ports: &BTreeSet<u16>) -> BTreeSet<u16> {
    let inodes = listening_inodes(ports);
    let mut held = BTreeSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", pid.as_raw())) else {
        return held;
    };
    for fd in fds.flatten() {
        let Ok(link) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        for (port, i) in &inodes {
            if *i == inode {
                held.insert(*port);
            }
        }
    }
    held
}

/// Whether `pid`'s descriptors can be read here. Not when HAProxy serves
/// as another user and we lack CAP_SYS_PTRACE (root in a container with
/// Docker's default capabilities).
fn fds_readable(pid: Pid) -> bool {
    // Listing the directory may be allowed where reading the links is not.
    match std::fs::read_dir(format!("/proc/{}/fd", pid.as_raw())) {
        Err(e) => e.kind() != std::io::ErrorKind::PermissionDenied,
        Ok(mut fds) => match fds.next() {
            Some(Ok(fd)) => !matches!(
                std::fs::read_link(fd.path()),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied
            ),
            _ => true,
        },
    }
}

/// The pid of the HAProxy answering on `admin_socket` (`show info`).
async fn admin_pid(admin_socket: &Path) -> Option<i32> {
    let api = crate::runtime::RuntimeApi::new(admin_socket, Duration::from_millis(500));
    let info = api.command("show info").await.ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .and_then(|p| p.trim().parse().ok())
}

/// Waits until `pid` listens on every port of `ports`, or it exits, or
/// `timeout` passes. When its descriptors cannot be read (it serves as
/// another user and we may not look), it is ready once every port has a
/// listener and `pid` itself answers on `admin_socket`: HAProxy binds every
/// listener, its admin socket included, before it serves. With `by_admin`
/// (it inherited its listening sockets, so they are "its" from the exec
/// on) the answer on `admin_socket` is always required.
pub async fn wait_listening(
    pid: Pid,
    ports: &BTreeSet<u16>,
    admin_socket: Option<&Path>,
    by_admin: bool,
    exited: &mut oneshot::Receiver<Exit>,
    timeout: Duration,
) -> Result<(), HaproxyError> {
    let start = Instant::now();
    loop {
        let readable = fds_readable(pid);
        let ports_ok = if readable {
            ports_listening(pid, ports) == *ports
        } else {
            let bound: BTreeSet<u16> = listening_inodes(ports)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            bound == *ports
        };
        if ports_ok {
            let answers = if by_admin || !readable {
                match admin_socket {
                    Some(sock) => admin_pid(sock).await == Some(pid.as_raw()),
                    // No way to ask: give it the time a start takes.
                    None => start.elapsed() > Duration::from_millis(500),
                }
            } else {
                true
            };
            if answers {
                return Ok(());
            }
        }
        if let Ok(exit) = exited.try_recv() {
            return Err(HaproxyError::DiedAtStart {
                pid: pid.as_raw(),
                exit,
                output: String::new(),
            });
        }
        if start.elapsed() > timeout {
            return Err(HaproxyError::NotListening {
                pid: pid.as_raw(),
                ports: ports.iter().copied().collect(),
                waited: timeout,
            });
        }
        // Asking the admin socket costs a connect; the descriptor scan more.
        let poll = if by_admin { 1 } else { 5 };
        tokio::time::sleep(Duration::from_millis(poll)).await;
    }
}

/// Our SYN-drop rule for one port, in iptables-crate syntax (no `-A INPUT`).
pub fn syn_drop_rule(port: u16) -> String {
    format!("-p tcp -m tcp --dport {port} --syn -m comment --comment {RULE_COMMENT} -j DROP")
}

fn ipt() -> Result<iptables::IPTables, HaproxyError> {
    iptables::new(false).map_err(|e| HaproxyError::Iptables(e.to_string()))
}

/// `iptables -S INPUT`, failing when iptables fails (the crate's `list`
/// ignores the exit status, so a missing NET_ADMIN would look like an
/// empty chain).
fn list_input(t: &iptables::IPTables) -> Result<Vec<String>, HaproxyError> {
    let out = t
        .execute("filter", "-S INPUT")
        .map_err(|e| HaproxyError::Iptables(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("-P INPUT") {
        return Err(HaproxyError::Iptables(format!(
            "cannot read the INPUT chain (is NET_ADMIN granted?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(stdout.lines().map(str::to_string).collect())
}

/// Whether we can manage iptables rules here (NET_ADMIN and an iptables
/// binary). Blocking: run it under [`Reaper::hold_off`] once the reaper runs.
pub fn iptables_usable() -> Result<(), HaproxyError> {
    list_input(&ipt()?).map(|_| ())
}

/// Removes every rule of ours from INPUT (left by a killed earlier run).
/// Blocking. Returns how many were removed.
pub fn remove_stale_rules() -> Result<usize, HaproxyError> {
    let t = ipt()?;
    let rules = list_input(&t)?;
    let mut n = 0;
    for r in rules.iter().filter(|r| r.contains(RULE_COMMENT)) {
        if let Some(spec) = r.strip_prefix("-A INPUT ") {
            t.delete("filter", "INPUT", spec)
                .map_err(|e| HaproxyError::Iptables(format!("cannot delete {r:?}: {e}")))?;
            n += 1;
        }
    }
    Ok(n)
}

/// SYN-drop rules inserted for a reload; removed when dropped, on every
/// path (success, error, timeout, panic). Blocking on drop (a few ms).
#[derive(Debug)]
pub struct SynDropGuard {
    rules: Vec<String>,
}

impl SynDropGuard {
    /// Inserts a DROP rule for SYNs to each port. On error, the rules
    /// already inserted are removed again.
    pub fn insert(ports: &BTreeSet<u16>) -> Result<SynDropGuard, HaproxyError> {
        let t = ipt()?;
        let mut guard = SynDropGuard { rules: Vec::new() };
        for p in ports {
            let rule = syn_drop_rule(*p);
            t.insert("filter", "INPUT", &rule, 1)
                .map_err(|e| HaproxyError::Iptables(format!("cannot insert {rule:?}: {e}")))?;
            guard.rules.push(rule);
        }
        Ok(guard)
    }

    /// Removes the rules now.
    pub fn remove(mut self) -> Result<(), HaproxyError> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<(), HaproxyError> {
        let mut first_err = None;
        if !self.rules.is_empty() {
            match ipt() {
                Ok(t) => {
                    for r in self.rules.drain(..) {
                        if let Err(e) = t.delete("filter", "INPUT", &r) {
                            first_err.get_or_insert(HaproxyError::Iptables(format!(
                                "cannot delete {r:?}: {e}"
                            )));
                        }
                    }
                }
                Err(e) => first_err = Some(e),
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl Drop for SynDropGuard {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            crate::log!(error, Event::SynDropCleanupFailed, error = %e, "could not remove SYN-drop rules");
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every line goes on whole and once, in order, in chunks of whole
    /// lines no longer than a pipe's atomic write (a longer line alone).
    #[test]
    fn forwarded_lines_go_on_whole_in_atomic_chunks() {
        let mut input = String::new();
        let mut want = Vec::new();
        for i in 0..2000 {
            let line = if i % 500 == 7 {
                format!("{i} {}", "x".repeat(5000))
            } else {
                format!("{i} {}", "y".repeat(i % 300))
            };
            input.push_str(&line);
            input.push('\n');
            want.push(format!("<{line}>"));
        }
        input.push_str("last, without a newline");
        want.push("<last, without a newline>".into());
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        super::forward_lines(
            input.as_bytes(),
            |l| format!("<{l}>"),
            |c| chunks.push(c.to_vec()),
        );
        let mut got = Vec::new();
        for c in &chunks {
            assert_eq!(c.last(), Some(&b'\n'));
            let lines: Vec<&str> = std::str::from_utf8(c).unwrap().lines().collect();
            assert!(
                c.len() <= super::CHUNK_MAX || lines.len() == 1,
                "{} bytes",
                c.len()
            );
            got.extend(lines.into_iter().map(str::to_string));
        }
        assert_eq!(got, want);
        assert!(chunks.len() < want.len() / 4, "{} chunks", chunks.len());
    }

    #[test]
    fn blamed_proxies_from_haproxy_messages() {
        let cfg = "global\n    maxconn 10\n\nfrontend app_http_in\n    bind *:8080\n\nbackend www\n    server a 10.0.0.1:80\n\nfrontend bad_port_19000\n    bind *:19000\n\nbackend bad\n    server b 10.0.0.2:80 bogus\n";
        let bind = "[ALERT]    (10006) : Binding [/etc/haproxy/haproxy.cfg:11] for frontend bad_port_19000: cannot bind socket (Address already in use) for [0.0.0.0:19000]\n[ALERT]    (10006) : [haproxy.main()] Some protocols failed to start their listeners! Exiting.";
        assert_eq!(
            super::blamed_proxies(bind, cfg)
                .into_iter()
                .collect::<Vec<_>>(),
            ["bad_port_19000"]
        );
        let check = "[ALERT]    (28545) : config : [b.cfg:14] : 'server bad/b' : unknown keyword 'bogus'.\n[ALERT]    (28545) : config : Error(s) found in configuration file : b.cfg";
        assert_eq!(
            super::blamed_proxies(check, cfg)
                .into_iter()
                .collect::<Vec<_>>(),
            ["bad"]
        );
        assert!(
            super::blamed_proxies("[ALERT] (1) : global: bad maxconn [b.cfg:2]", cfg).is_empty()
        );
    }

    use super::*;

    #[test]
    fn sock_diag_finds_what_proc_net_tcp_lists() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ports = BTreeSet::from([l.local_addr().unwrap().port()]);
        let mut diag: Vec<_> = sock_diag::listening()
            .expect("sock_diag netlink dump")
            .into_iter()
            .filter(|(p, _)| ports.contains(p))
            .collect();
        let mut proc = listening_inodes_proc(&ports);
        diag.sort_unstable();
        proc.sort_unstable();
        assert_eq!(diag.len(), 1);
        assert_eq!(diag, proc);
        // A connected (non-listening) socket is not reported.
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(listening_inodes(&ports).len(), 1);
    }
}
