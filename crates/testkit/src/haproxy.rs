//! HAProxy as the tests and benches see it: `haproxy -c`, its processes
//! (under a parent, or anywhere in this network namespace), a sampler of
//! the processes a supervisor starts, and sections of a rendered config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::{
    child_pids, cmdline, comm, descendants_of, first_line_of, pids_of, proc_stat,
};
use crate::{require, wait_until};

/// Runs `haproxy -c -f cfg_path` and returns (valid?, HAProxy's combined
/// stdout and stderr). A `bind fd@<n>` gets a listening socket at `<n>`.
pub fn haproxy_check(cfg_path: impl AsRef<Path>) -> (bool, String) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let haproxy = require("haproxy");
    let text = std::fs::read_to_string(cfg_path.as_ref()).unwrap_or_default();
    // A config of held sockets binds `fd@<n>`: HAProxy inspects them even
    // with -c, so the check gets listening sockets at those numbers, as a
    // generation inherits them from the supervisor.
    let fds: Vec<i32> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("bind fd@"))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    let sockets: Vec<std::net::TcpListener> = fds
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a socket for fd@"))
        .collect();
    let pairs: Vec<(i32, i32)> = sockets
        .iter()
        .map(|l| l.as_raw_fd())
        .zip(fds.iter().copied())
        .collect();
    let mut cmd = Command::new(haproxy);
    cmd.arg("-c").arg("-f").arg(cfg_path.as_ref());
    // SAFETY: dup2 is async-signal-safe. Sources are first moved above
    // every target, so no dup2 overwrites a source not yet copied.
    unsafe {
        cmd.pre_exec(move || {
            // No allocation after the fork: a fixed array.
            let mut high = [-1i32; 64];
            for (h, (from, _)) in high.iter_mut().zip(&pairs) {
                *h = libc::fcntl(*from, libc::F_DUPFD, 1000);
            }
            for (h, (_, to)) in high.iter().zip(&pairs) {
                if libc::dup2(*h, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run haproxy -c");
    drop(sockets);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `haproxy -v`'s first line.
pub fn haproxy_version(bin: &Path) -> String {
    first_line_of(Command::new(bin).arg("-v"))
}

/// HAProxy processes (comm `haproxy`) among the descendants of `pid`.
pub fn haproxies_under(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = descendants_of(pid)
        .into_iter()
        .filter(|p| p.comm == "haproxy" && p.state != 'Z')
        .map(|p| p.pid)
        .collect();
    v.sort_unstable();
    v
}

fn netns_of(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// Processes named `name` that live in this thread's network namespace
/// (whoever their parent is: orphans of a killed supervisor included).
pub fn in_my_netns(name: &str) -> Vec<i32> {
    let mine = netns_of("thread-self").expect("read /proc/thread-self/ns/net");
    pids_of(name)
        .into_iter()
        .filter(|p| proc_stat(*p).is_some_and(|s| s.state != 'Z'))
        .filter(|p| netns_of(&p.to_string()).as_ref() == Some(&mine))
        .collect()
}

/// HAProxy processes of this network namespace ([`is_haproxy`]: the 3.4
/// wrapper's too, whose comm is its loader's).
pub fn haproxies_in_my_netns() -> Vec<i32> {
    let mut v = in_my_netns("haproxy");
    v.extend(
        in_my_netns("ld-linux-x86-64")
            .into_iter()
            .filter(|p| cmdline(*p).is_some_and(|a| is_haproxy("ld-linux-x86-64", &a))),
    );
    v.sort_unstable();
    v
}

/// SIGKILLs every HAProxy of this network namespace and waits until they
/// are gone (end-of-test cleanup of orphans).
pub fn kill_haproxies_in_my_netns() {
    for p in haproxies_in_my_netns() {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    wait_until(
        Duration::from_secs(5),
        "orphaned haproxy processes gone",
        || haproxies_in_my_netns().is_empty(),
    );
}

/// Kills the HAProxy processes of this namespace when dropped, so a failing
/// test does not leave orphans behind.
pub struct OrphanGuard;

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        for p in haproxies_in_my_netns() {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
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

/// Samples the HAProxy processes (see [`is_haproxy`]) that are children of a
/// parent every `every` on a thread of its own (direct children only: see
/// [`child_pids`]); a process whose arguments hold `-c` is a config check,
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
                    // Pacing: the sampling period, not a wait for a condition.
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

/// Whether a process of command name `comm` and arguments `args` is
/// HAProxy: comm `haproxy`, or HAProxy run through a dynamic loader — the
/// HAProxy 3.4 of [`crate::haproxy34`] is a wrapper that execs its rootfs's
/// `ld-linux-x86-64.so.2 ... .../sbin/haproxy <args>`, whose comm is the
/// loader's (`ld-linux-x86-64`), not `haproxy`.
pub fn is_haproxy(comm: &str, args: &[String]) -> bool {
    comm == "haproxy"
        || (comm.starts_with("ld-linux")
            && args
                .iter()
                .any(|a| Path::new(a).file_name().is_some_and(|n| n == "haproxy")))
}

/// One sample: `kinds` remembers per pid whether it is a serving process
/// (true) or a check (false), so each pid's cmdline is read once.
fn sample_once(parent: i32, kinds: &mut BTreeMap<i32, bool>, out: &mut Sampled) {
    out.samples += 1;
    for pid in child_pids(parent) {
        let serving = match kinds.get(&pid) {
            Some(k) => *k,
            None => {
                // Between fork and exec a child still bears the parent's
                // thread name: only an exec'd haproxy counts, and it is
                // looked at again at the next sample until then.
                let Some(name) = comm(pid) else { continue };
                // A zombie (a check that exited, not reaped yet) has no
                // command line: it is nothing.
                let Some(args) = cmdline(pid).filter(|a| !a.is_empty()) else {
                    continue;
                };
                if !is_haproxy(&name, &args) {
                    continue;
                }
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

/// The lines of the section that starts with the line `header` (for example
/// `backend www`, which also finds `backend www from <profile>`: a section
/// made from a named defaults) in a rendered config, header excluded, up to
/// the next blank line; None if there is no such section.
pub fn config_section(config: &str, header: &str) -> Option<Vec<String>> {
    let mut lines = config.lines();
    lines.find(|l| {
        *l == header
            || l.strip_prefix(header)
                .is_some_and(|rest| rest.starts_with(" from "))
    })?;
    Some(
        lines
            .take_while(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// The backend name of service `service` in a rendered config: `service`,
/// or `service:<hash>` (a service whose options are not the defaults).
pub fn backend_name(config: &str, service: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let n = l.strip_prefix("backend ")?.split_whitespace().next()?;
        (n == service || n.strip_prefix(service)?.starts_with(':')).then(|| n.to_string())
    })
}

/// Everything the backend of service `service` is made of: the lines of the
/// profile (`defaults <profile>`) it is made from, then its own lines.
pub fn backend_lines(config: &str, service: &str) -> Vec<String> {
    let Some(name) = backend_name(config, service) else {
        return Vec::new();
    };
    let prefix = format!("backend {name} from ");
    let profile = config
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|p| config_section(config, &format!("defaults {p}")))
        .unwrap_or_default();
    profile
        .into_iter()
        .chain(config_section(config, &format!("backend {name}")).unwrap_or_default())
        .collect()
}

/// The `server` lines of the backend of service `backend` in a rendered
/// config, trimmed: `backend <backend>`, or `backend <backend>:<hash>` (a
/// service whose options are not the defaults), made from a profile or not.
pub fn server_lines(config: &str, backend: &str) -> Vec<String> {
    backend_name(config, backend)
        .and_then(|n| config_section(config, &format!("backend {n}")))
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.trim_start().starts_with("server "))
        .map(|l| l.trim().to_string())
        .collect()
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

/// One command line on HAProxy's admin socket `sock` through socat (not the
/// product's own client); its answer.
pub fn admin(sock: &Path, line: &str) -> String {
    let out = Command::new(crate::require("socat"))
        .args(["-", &format!("UNIX-CONNECT:{}", sock.display())])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{line}\n").as_bytes())?;
            c.wait_with_output()
        })
        .expect("socat to the admin socket");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
