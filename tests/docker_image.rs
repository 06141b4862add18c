//! End-to-end tests of the container images built from `docker/Dockerfile`.
//!
//! Run as root on Debian 12: `cargo test --release --test docker_image -- --nocapture`
//! (or `scripts/docker-build.sh --test`). The first test to run calls
//! `scripts/docker-build.sh`, which installs and starts Docker if needed and
//! builds every variant from a clean clone of the repository's HEAD commit,
//! offline (see docker/README.md); a failure there fails every test here:
//! nothing is skipped. The tests take a machine-wide lock, so they run one
//! at a time, also against another `cargo test` of this crate.
//!
//! The same checks run against every variant — `trixie` (the default image):
//! Debian 13 with HAProxy 3.0; `bookworm`: Debian 12 with HAProxy 2.6;
//! `haproxy3.4`: Debian sid with HAProxy 3.4 from experimental. Each image is started
//! with `--network none`, so all traffic stays on the container's own
//! loopback, and driven with `docker exec`:
//!
//! 1. the image: its Debian and HAProxy versions, the unprivileged user
//!    `haproxy`, the supervisor binary stripped;
//! 2. the supervisor starts before Consul exists and must wait for it;
//! 3. a Consul dev agent and `demo-backend`s are copied in and started, and
//!    service `www` is registered with the seed's tags;
//! 4. routing by Host, round robin, an instance added and removed live (no new
//!    HAProxy process), no failed request while SIGHUP reloads happen, a
//!    SIGHUP reload changes the HAProxy pid, no zombie and no pile of HAProxy
//!    processes after 20 reloads, and `docker stop` exits 0 in time.
//!
//! A third test runs the compose example (docker/compose.yml) for real, with
//! local images substituted through its variables for the registry ones.
//!
//! Each prints what it measured: image size, start-up time, live-change
//! latency, durations.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use testkit::{is_event, run_within, which, Event};

/// One image built by scripts/docker-build.sh.
struct Variant {
    /// The name scripts/docker-build.sh knows it by.
    name: &'static str,
    image: &'static str,
    /// `VERSION_ID` in the image's /etc/os-release ("sid" where it has none).
    debian: &'static str,
    /// The HAProxy version's prefix (`haproxy -v`).
    haproxy: &'static str,
    /// Whether an instance of a sticky (`cookie`) service is added live:
    /// HAProxy 3.0 takes `cookie` on `add server`, 2.6 refuses it (a reload).
    live_cookie: bool,
    /// Whether an instance moved to another port must be moved live (`set
    /// server addr`). Only asserted where true: HAProxy 3.0 words its answer
    /// differently ("port changed from ..." without "no need to change the
    /// addr, "), which src/runtime.rs does not accept yet, so the supervisor
    /// falls back to a reload there; the test reports which happened.
    live_addr_change: bool,
}

const BOOKWORM: Variant = Variant {
    name: "bookworm",
    image: "haproxy-supervisor:test-bookworm",
    debian: "12",
    haproxy: "2.6.",
    live_cookie: false,
    live_addr_change: true,
};
/// The default image.
const TRIXIE: Variant = Variant {
    name: "trixie",
    image: "haproxy-supervisor:test",
    debian: "13",
    haproxy: "3.0.",
    live_cookie: true,
    live_addr_change: false,
};
const HAPROXY34: Variant = Variant {
    name: "haproxy3.4",
    image: "haproxy-supervisor:test-haproxy3.4",
    // sid's /etc/os-release has no VERSION_ID (the test reads it as "sid").
    debian: "sid",
    haproxy: "3.4.",
    live_cookie: true,
    live_addr_change: false,
};

const DOM: &str = "example.local";
const WWW_HOST: &str = "www.example.local";
const HTTP: &str = "http://127.0.0.1:8080/";
/// How long the supervisor runs alone before Consul is started in the container.
const NO_CONSUL_S: u64 = 3;
/// `docker stop -t` in seconds; above the image's HAPROXY_STOP_TIMEOUT (8s).
const STOP_TIMEOUT_S: u64 = 15;
/// The compose project of the compose test (fixed, so that a run killed
/// half-way is torn down by the next one).
const COMPOSE_PROJECT: &str = "hs-compose-test";

/// Runs a command to completion with a deadline; panics if it does not end in
/// time (after killing it) or cannot be started.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    match run_within(cmd, timeout) {
        (Some(status), stdout, stderr) => Output {
            status,
            stdout,
            stderr,
        },
        (None, ..) => panic!("{cmd:?} did not finish within {timeout:?}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `docker ARGS` with a 2-minute deadline; the output whatever the status.
fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args), Duration::from_secs(120))
}

/// `docker ARGS`, which must succeed; its stdout.
fn docker_ok(args: &[&str]) -> String {
    stdout_of_success(&format!("docker {args:?}"), docker(args))
}

/// The stdout of `out`, which must be a success of `what`.
fn stdout_of_success(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `curl -w '\n%{http_code}'` output: (code, body); code 0 when no HTTP
/// answer came.
fn code_and_body(out: &Output) -> (u16, String) {
    let s = text(&out.stdout);
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", s.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `sh -c SCRIPT` in a throw-away container of `image` (no network); its
/// stdout, which must succeed.
fn sh_in_image(image: &str, script: &str) -> String {
    docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        image,
        "-c",
        script,
    ])
}

/// Polls `f` until it returns `Some` or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------
// One test at a time on this machine; the images built once per process
// ---------------------------------------------------------------------------

/// An exclusive `flock` on a file in the temporary directory, held until
/// dropped. Taken by every test here: they share the images, the compose
/// project and the machine's two cores, also with another `cargo test`.
struct MachineLock(#[allow(dead_code)] File);

fn machine_lock() -> MachineLock {
    let path = std::env::temp_dir().join("haproxy-supervisor-docker-test.lock");
    let file = File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    MachineLock(file)
}

/// Runs scripts/docker-build.sh once per test process; every test asserts on
/// its outcome, so a failed build fails them all (nothing is skipped).
fn build_images() {
    static BUILD: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILD.get_or_init(|| {
        let t = Instant::now();
        let build = run(
            Command::new("bash")
                .arg(repo().join("scripts/docker-build.sh"))
                .current_dir(repo())
                .env("IMAGE", TRIXIE.image)
                .env("IMAGE_BOOKWORM", BOOKWORM.image)
                .env("IMAGE_HAPROXY34", HAPROXY34.image)
                .env("VARIANTS", "trixie bookworm haproxy3.4"),
            Duration::from_secs(60 * 60),
        );
        eprint!("{}", text(&build.stderr));
        print!("{}", text(&build.stdout));
        println!("scripts/docker-build.sh: {:.1}s", t.elapsed().as_secs_f64());
        if build.status.success() {
            Ok(())
        } else {
            Err(format!("scripts/docker-build.sh failed ({})", build.status))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------
// A container
// ---------------------------------------------------------------------------

/// A running test container, removed (`docker rm -f`) when dropped; on a
/// failed test its logs and processes are printed first.
struct Container {
    name: String,
}

impl Container {
    /// `docker exec` of a command (no shell); its output.
    fn exec(&self, argv: &[&str]) -> Output {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(argv);
        docker(&args)
    }

    /// `docker exec ... sh -c SCRIPT`; its stdout, which must succeed.
    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        stdout_of_success(&format!("in {}: sh -c {script:?}", self.name), out)
    }

    /// Starts a long-running command in the background (`docker exec -d`),
    /// its output going to LOG inside the container.
    fn spawn(&self, cmd: &str, log: &str) {
        docker_ok(&[
            "exec",
            "-d",
            &self.name,
            "sh",
            "-c",
            &format!("exec {cmd} >{log} 2>&1"),
        ]);
    }

    /// One HTTP GET to HAProxy's shared frontend with the given Host header:
    /// (status code, body). Code 0 means no HTTP answer at all.
    fn get(&self, host: &str) -> (u16, String) {
        let out = self.exec(&[
            "curl",
            "-s",
            "-m",
            "5",
            "-H",
            &format!("Host: {host}"),
            "-w",
            "\n%{http_code}",
            HTTP,
        ]);
        code_and_body(&out)
    }

    /// `n` GETs for `host` in one `docker exec`: the bodies, trimmed (or
    /// `HTTP <code>` for a non-200).
    fn bodies(&self, host: &str, n: usize) -> Vec<String> {
        // One line per request: the body with its line breaks removed, `|`,
        // the status code.
        let script = format!(
            "for i in $(seq {n}); do \
             printf '%s\\n' \"$(curl -s -m 5 -H 'Host: {host}' -w '|%{{http_code}}' {HTTP} | tr -d '\\n')\"; \
             done"
        );
        self.sh(&script)
            .lines()
            .map(|l| match l.rsplit_once('|') {
                Some((body, "200")) => body.to_string(),
                Some((_, code)) => format!("HTTP {code}"),
                None => format!("HTTP {l}"),
            })
            .collect()
    }

    fn running(&self) -> bool {
        docker(&["inspect", "-f", "{{.State.Running}}", &self.name])
            .stdout
            .starts_with(b"true")
    }

    /// The container's stdout and stderr together.
    fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    /// (pid, state, user, command, arguments) of every process in the container.
    fn processes(&self) -> Vec<Process> {
        self.sh("ps -eo pid=,stat=,user:32=,comm=,args=")
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let pid = it.next()?.parse().ok()?;
                let stat = it.next()?.to_string();
                let user = it.next()?.to_string();
                let comm = it.next().unwrap_or("").to_string();
                let args = it.collect::<Vec<_>>().join(" ");
                Some(Process {
                    pid,
                    stat,
                    user,
                    comm,
                    args,
                })
            })
            .collect()
    }

    /// The live (non-zombie) HAProxy processes that serve, sorted by pid: not
    /// the short `haproxy -c` config checks the supervisor runs.
    fn serving_haproxies(&self) -> Vec<Process> {
        let mut ps: Vec<Process> = self
            .processes()
            .into_iter()
            .filter(|p| p.comm == "haproxy" && !p.stat.starts_with('Z') && !p.is_check())
            .collect();
        ps.sort_by_key(|p| p.pid);
        ps
    }

    fn haproxy_pids(&self) -> Vec<u32> {
        self.serving_haproxies().iter().map(|p| p.pid).collect()
    }

    fn hup(&self) {
        docker_ok(&["kill", "-s", "HUP", &self.name]);
    }

    /// The HTTP status code (or `000`) of `curl -s [ARGS] URL` in the
    /// container.
    fn curl_code(&self, args: &[&str], url: &str) -> String {
        let mut argv = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
        argv.extend_from_slice(args);
        argv.push(url);
        text(&self.exec(&argv).stdout)
    }

    /// Registers (`port` Some) or deregisters instance `id` of `www` in the
    /// Consul agent inside the container.
    fn consul_www(&self, id: &str, port: Option<u16>) {
        self.consul_register("www", id, port, &[]);
    }

    /// Registers (`port` Some) or deregisters instance `id` of `service`,
    /// with the seed's tags plus `extra_tags`.
    fn consul_register(&self, service: &str, id: &str, port: Option<u16>, extra_tags: &[&str]) {
        let code = match port {
            Some(port) => self.curl_code(
                &[
                    "-X",
                    "PUT",
                    "--data",
                    &registration(service, id, port, extra_tags),
                ],
                "http://127.0.0.1:8500/v1/agent/service/register",
            ),
            None => self.curl_code(
                &["-X", "PUT"],
                &format!("http://127.0.0.1:8500/v1/agent/service/deregister/{id}"),
            ),
        };
        assert_eq!(code, "200", "consul (de)registration of {id}");
    }
}

#[derive(Debug, Clone)]
struct Process {
    pid: u32,
    stat: String,
    user: String,
    comm: String,
    args: String,
}

impl Process {
    fn is_check(&self) -> bool {
        self.args.split_whitespace().any(|a| a == "-c")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(80).collect();
            eprintln!("--- last lines of `docker logs {}`:", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            let ps = docker(&[
                "exec",
                &self.name,
                "ps",
                "-eo",
                "stat,pid,ppid,user,comm,args",
            ]);
            eprintln!("--- processes:\n{}", text(&ps.stdout));
            let cfg = docker(&["exec", &self.name, "cat", "/etc/haproxy/haproxy.cfg"]);
            eprintln!("--- /etc/haproxy/haproxy.cfg:\n{}", text(&cfg.stdout));
        }
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

fn registration(service: &str, id: &str, port: u16, extra_tags: &[&str]) -> String {
    let mut tags = vec![
        "HAPROXY.ENABLE=true",
        "HAPROXY.PROTOCOL=http",
        "HAPROXY.BACKEND.BALANCE=roundrobin",
        "HAPROXY.BACKEND.MAXCONN=10000",
    ];
    tags.extend_from_slice(extra_tags);
    json!({
        "ID": id,
        "Name": service,
        "Address": "127.0.0.1",
        "Port": port,
        "Tags": tags,
    })
    .to_string()
}

fn count_reload_lines(logs: &str) -> usize {
    logs.lines()
        .filter(|l| is_event(l, Event::ReloadDone))
        .count()
}

fn copy_in(c: &Container, from: &Path, to: &str) {
    let src = from.to_string_lossy();
    docker_ok(&["cp", &src, &format!("{}:{to}", c.name)]);
}

fn consul_binary() -> PathBuf {
    which("consul").expect("no `consul` on PATH (scripts/setup.sh installs it)")
}

fn demo_backend() -> PathBuf {
    let p = testkit::backend_bin().to_path_buf();
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

// ---------------------------------------------------------------------------
// The image itself: versions, user, stripped binary
// ---------------------------------------------------------------------------

/// The names of an ELF64 little-endian file's sections.
fn elf_sections(bytes: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    assert!(
        bytes.len() > 64 && &bytes[..4] == b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .map(|i| {
            let start = strtab + u32_at(header(i));
            let end = start + bytes[start..].iter().position(|&b| b == 0).unwrap_or(0);
            String::from_utf8_lossy(&bytes[start..end]).into_owned()
        })
        .collect()
}

/// Checks the image without running the supervisor: Debian and HAProxy
/// versions, the user `haproxy`, the binary stripped. Returns HAProxy's
/// version.
fn check_image_contents(v: &Variant) -> String {
    let size: u64 = docker_ok(&["image", "inspect", "-f", "{{.Size}}", v.image])
        .trim()
        .parse()
        .expect("image size");
    let facts = sh_in_image(v.image, ". /etc/os-release; echo \"${VERSION_ID:-sid}\"; haproxy -v | head -n 1; id -u haproxy; id -g haproxy; \
         ulimit -Hn",
    );
    let lines: Vec<&str> = facts.lines().collect();
    assert!(lines.len() >= 5, "unexpected output: {facts:?}");
    let haproxy_version = lines[1].split_whitespace().nth(2).unwrap_or("").to_string();
    println!(
        "[{}] image {}: {:.1} MB, Debian {}, HAProxy {haproxy_version}, user haproxy uid {} gid {}, \
         open-files limit {}",
        v.name,
        v.image,
        size as f64 / 1e6,
        lines[0],
        lines[2],
        lines[3],
        lines[4]
    );
    assert_eq!(lines[0], v.debian, "Debian version of {}", v.image);
    assert!(
        haproxy_version.starts_with(v.haproxy),
        "{}: HAProxy {haproxy_version}, expected {}x",
        v.image,
        v.haproxy
    );
    assert!(
        lines[2].parse::<u32>().is_ok_and(|uid| uid != 0),
        "{}: no unprivileged user haproxy: {facts:?}",
        v.image
    );

    // The binary, copied out of the image: stripped (no symbol table, no
    // debug info).
    let id = docker_ok(&["create", v.image]).trim().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("haproxy-supervisor");
    let cp = docker(&[
        "cp",
        &format!("{id}:/usr/local/bin/haproxy-supervisor"),
        &bin.to_string_lossy(),
    ]);
    let _ = docker(&["rm", &id]);
    assert!(cp.status.success(), "docker cp: {}", text(&cp.stderr));
    let bytes = std::fs::read(&bin).expect("read the binary");
    let sections = elf_sections(&bytes);
    let file = Command::new("file")
        .arg("-b")
        .arg(&bin)
        .output()
        .map(|o| text(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("(file: {e})"));
    println!(
        "[{}] /usr/local/bin/haproxy-supervisor: {:.1} MB; file: {file}",
        v.name,
        bytes.len() as f64 / 1e6
    );
    let unstripped: Vec<&String> = sections
        .iter()
        .filter(|s| *s == ".symtab" || s.starts_with(".debug"))
        .collect();
    assert!(
        unstripped.is_empty(),
        "{}: the binary is not stripped: sections {unstripped:?}",
        v.image
    );
    haproxy_version
}

// ---------------------------------------------------------------------------
// The supervisor in the image: routing, live changes, reloads, stop
// ---------------------------------------------------------------------------

fn check_variant(v: &Variant) {
    let t_all = Instant::now();
    let haproxy_version = check_image_contents(v);
    let consul = consul_binary();
    let demo_backend = demo_backend();
    let tag = format!("[{}]", v.name);

    // HAProxy's default global maxconn (50000) needs about 100k descriptors;
    // containers inherit dockerd's open-files limit, which some machines cap
    // lower (one seen at 20000, with no CAP_SYS_RESOURCE to raise it). The
    // supervisor must fit HAProxy to the limit by itself: the test sets no
    // HAPROXY_MAXCONN_GLOBAL (the limit was printed above).

    // --- start: the supervisor first, Consul does not exist yet -------------
    let name = unique(&format!("hs-docker-test-{}", v.name));
    let start = Instant::now();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--cap-add",
        "NET_ADMIN",
        "-e",
        &format!("HAPROXY_DOM={DOM}"),
        v.image,
    ]);
    let c = Container { name };
    let t_running = start.elapsed();

    // It must wait for Consul, not exit.
    thread::sleep(Duration::from_secs(NO_CONSUL_S));
    assert!(
        c.running(),
        "the supervisor exited while Consul was not there yet:\n{}",
        c.logs()
    );
    let early = c.curl_code(&[], "http://127.0.0.1:4444/_haproxy_health_check");
    println!(
        "{tag} before Consul exists: container running, health check on :4444 answers {early:?}"
    );
    // The image's HEALTHCHECK asks the supervisor's /readyz: not ready yet.
    let readyz = |c: &Container| c.curl_code(&[], "http://127.0.0.1:4445/readyz");
    assert_eq!(readyz(&c), "503", "/readyz before Consul exists");

    // --- Consul and backends inside the container ---------------------------
    copy_in(&c, &consul, "/usr/local/bin/consul");
    copy_in(&c, &demo_backend, "/usr/local/bin/demo-backend");
    let t_consul_start = start.elapsed();
    c.spawn(
        "consul agent -dev -client 127.0.0.1 -bind 127.0.0.1",
        "/tmp/consul.log",
    );
    for (port, name) in [(9001, "web-1"), (9002, "web-2"), (9003, "web-3")] {
        c.spawn(
            &format!("demo-backend --listen 127.0.0.1:{port} --name {name}"),
            &format!("/tmp/{name}.log"),
        );
    }
    let leader = wait_for(Duration::from_secs(60), || {
        let out = c.exec(&["curl", "-sf", "http://127.0.0.1:8500/v1/status/leader"]);
        let s = text(&out.stdout);
        (out.status.success() && s.contains(':')).then_some(s)
    });
    assert!(
        leader.is_some(),
        "consul dev agent has no leader after 60s:\n{}",
        c.sh("cat /tmp/consul.log")
    );
    let t_leader = start.elapsed();
    for (id, port) in [("www-1", 9001), ("www-2", 9002)] {
        c.consul_www(id, Some(port));
    }
    let t_registered = start.elapsed();
    let passing = wait_for(Duration::from_secs(30), || {
        let out = c.exec(&[
            "curl",
            "-sf",
            "http://127.0.0.1:8500/v1/health/service/www?passing",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v.as_array()?.len() == 2).then_some(())
    });
    assert!(passing.is_some(), "consul does not list 2 passing www");
    for (port, name) in [(9001, "web-1"), (9002, "web-2"), (9003, "web-3")] {
        let ok = wait_for(Duration::from_secs(10), || {
            let out = c.exec(&["curl", "-sf", &format!("http://127.0.0.1:{port}/")]);
            (text(&out.stdout) == format!("{name}\n")).then_some(())
        });
        assert!(
            ok.is_some(),
            "demo-backend {name} does not answer on {port}"
        );
    }

    // --- first routed request ---------------------------------------------
    let first = wait_for(Duration::from_secs(60), || {
        let (code, body) = c.get(WWW_HOST);
        (code == 200).then_some(body)
    });
    let t_routed = start.elapsed();
    assert!(
        first.is_some(),
        "no 200 for Host {WWW_HOST} within 60s of registration; last answer {:?}",
        c.get(WWW_HOST)
    );
    assert_eq!(readyz(&c), "200", "/readyz once serving");
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "{tag} start-up: first routed request {:.2}s after container start (Consul started \
         {:.2}s in, after a deliberate {}s without it; Consul leader at {:.2}s; \
         www registered at {:.2}s); {:.2}s from Consul's start, {:.2}s from registration",
        secs(t_routed),
        secs(t_consul_start),
        NO_CONSUL_S,
        secs(t_leader),
        secs(t_registered),
        secs(t_routed - t_consul_start),
        secs(t_routed - t_registered),
    );
    println!(
        "{tag} start-up: container running {:.2}s after `docker run`",
        secs(t_running)
    );

    // --- who HAProxy runs as ------------------------------------------------
    let cfg = c.sh("cat /etc/haproxy/haproxy.cfg");
    let serving = c.serving_haproxies();
    assert!(!serving.is_empty(), "no haproxy process is running");
    let users: Vec<&str> = serving.iter().map(|p| p.user.as_str()).collect();
    if cfg.lines().any(|l| l.trim() == "user haproxy") {
        assert!(
            users.iter().all(|u| *u == "haproxy"),
            "the config says `user haproxy` but HAProxy runs as {users:?}"
        );
        println!("{tag} HAProxy serves as user haproxy (the config says `user haproxy`)");
        // The supervisor holds every listening socket (the default,
        // inherit), so HAProxy is started as the user: never root, not
        // even while it reads its config. Its admin socket, which it
        // creates itself, shows it (HAProxy started as root binds it
        // before it drops to `user`).
        assert!(
            cfg.lines().any(|l| l.trim().starts_with("bind fd@"))
                && !cfg.lines().any(|l| l.trim().starts_with("bind *:")),
            "HAProxy binds a port itself:\n{cfg}"
        );
        let owner = c.sh("stat -c %U /run/haproxy-supervisor/admin.sock");
        assert_eq!(
            owner.trim(),
            "haproxy",
            "the admin socket was created by {owner:?}: HAProxy started as root"
        );
        println!("{tag} HAProxy started as user haproxy (inherited sockets; its admin socket is haproxy's)");
    } else {
        println!("{tag} HAProxy runs as {users:?} (the config names no user)");
    }

    // --- routing by Host ----------------------------------------------------
    let (code, body) = c.get(WWW_HOST);
    assert_eq!(code, 200, "Host {WWW_HOST}");
    assert!(
        body == "web-1\n" || body == "web-2\n",
        "Host {WWW_HOST}: body {body:?} is not a backend's name"
    );
    let (code, body) = c.get(&format!("{WWW_HOST}:8080"));
    assert_eq!(
        code, 200,
        "Host {WWW_HOST}:8080 (a :port suffix is ignored)"
    );
    assert!(body.starts_with("web-"), "Host with port: body {body:?}");
    let (code, body) = c.get("nope.example.local");
    assert!(
        code == 503 || code == 404,
        "an unknown host must get 503 (or 404), got {code} {body:?}"
    );
    assert!(!body.contains("web-"), "an unknown host reached a backend");
    println!(
        "{tag} routing: {WWW_HOST} -> 200 {:?}, unknown host -> {code}",
        first.unwrap_or_default()
    );

    // --- round robin ----------------------------------------------------------
    // Both instances were registered before the first routed request, but the
    // config that carried only the first one may have been live then: retry
    // the 10-request batch for a while.
    let mut batches = 0;
    let seen = wait_for(Duration::from_secs(20), || {
        batches += 1;
        let names = c.bodies(WWW_HOST, 10);
        let both = names.iter().any(|n| n == "web-1") && names.iter().any(|n| n == "web-2");
        both.then_some(names)
    });
    let seen = seen.unwrap_or_else(|| panic!("round robin: not both backends in 10 requests"));
    println!("{tag} round robin: both backends within 10 requests (batch {batches}): {seen:?}");

    // --- an instance added and removed live: no HAProxy process started ------
    // Let a change of the start-up settle first (the first config may have
    // held one instance; the second then came live or by a reload).
    thread::sleep(Duration::from_secs(2));
    let before = c.haproxy_pids();
    let t = Instant::now();
    c.consul_www("www-3", Some(9003));
    let added = wait_for(Duration::from_secs(30), || {
        c.bodies(WWW_HOST, 6)
            .iter()
            .any(|b| b == "web-3")
            .then_some(())
    });
    let t_added = t.elapsed();
    assert!(
        added.is_some(),
        "an instance registered in Consul (www-3) is not routed within 30s"
    );
    let after_add = c.haproxy_pids();
    let t = Instant::now();
    c.consul_www("www-3", None);
    let removed = wait_for(Duration::from_secs(30), || {
        let names = c.bodies(WWW_HOST, 6);
        (!names.iter().any(|b| b == "web-3") && names.iter().all(|b| b.starts_with("web-")))
            .then_some(())
    });
    let t_removed = t.elapsed();
    assert!(
        removed.is_some(),
        "a deregistered instance (www-3) is still routed 30s later"
    );
    let after_remove = c.haproxy_pids();
    println!(
        "{tag} live: www-3 added, routed after {:.0} ms (haproxy {before:?} -> {after_add:?}); \
         removed, unrouted after {:.0} ms (haproxy -> {after_remove:?})",
        secs(t_added) * 1000.0,
        secs(t_removed) * 1000.0
    );
    assert_eq!(
        before, after_add,
        "HAProxy {haproxy_version}: adding an instance started a new HAProxy (a reload, not a live change)"
    );
    assert_eq!(
        before, after_remove,
        "HAProxy {haproxy_version}: removing an instance started a new HAProxy (a reload, not a live change)"
    );

    // --- an instance moved to another port: `set server addr` --------------
    let before = c.haproxy_pids();
    let t = Instant::now();
    c.consul_www("www-2", Some(9003));
    let moved = wait_for(Duration::from_secs(30), || {
        let names = c.bodies(WWW_HOST, 6);
        (names.iter().any(|b| b == "web-3") && !names.iter().any(|b| b == "web-2")).then_some(())
    });
    let t_moved = t.elapsed();
    assert!(
        moved.is_some(),
        "www-2 moved to port 9003 is not routed there within 30s"
    );
    let after = c.haproxy_pids();
    let moved_live = before == after;
    println!(
        "{tag} address change: www-2 moved to :9003, routed there after {:.0} ms, {} \
         (haproxy {before:?} -> {after:?})",
        secs(t_moved) * 1000.0,
        if moved_live { "live" } else { "by a reload" }
    );
    if v.live_addr_change {
        assert!(
            moved_live,
            "HAProxy {haproxy_version}: moving an instance to another port started a new HAProxy"
        );
    }
    c.consul_www("www-2", Some(9002));
    let back = wait_for(Duration::from_secs(30), || {
        let names = c.bodies(WWW_HOST, 6);
        (names.iter().any(|b| b == "web-2") && !names.iter().any(|b| b == "web-3")).then_some(())
    });
    assert!(
        back.is_some(),
        "www-2 moved back to 9002 is not routed there"
    );

    // --- a sticky service gets an instance: `cookie` on `add server` --------
    let shop = format!("shop.{DOM}");
    c.consul_register(
        "shop",
        "shop-1",
        Some(9001),
        &["HAPROXY.BACKEND.STICKY=true"],
    );
    let served = wait_for(Duration::from_secs(30), || {
        (c.get(&shop).0 == 200).then_some(())
    });
    assert!(
        served.is_some(),
        "the sticky service {shop} is not routed within 30s"
    );
    // Its arrival was a reload; let that one settle before the next change.
    thread::sleep(Duration::from_secs(2));
    let before = c.haproxy_pids();
    let t = Instant::now();
    c.consul_register(
        "shop",
        "shop-2",
        Some(9002),
        &["HAPROXY.BACKEND.STICKY=true"],
    );
    let both = wait_for(Duration::from_secs(30), || {
        let names = c.bodies(&shop, 6);
        (names.iter().any(|b| b == "web-1") && names.iter().any(|b| b == "web-2")).then_some(())
    });
    let t_sticky = t.elapsed();
    assert!(
        both.is_some(),
        "the sticky service's second instance is not routed within 30s"
    );
    let after = c.haproxy_pids();
    let sticky_live = before == after;
    // A client with the cookie HAProxy set stays on its server.
    let sticky = c.sh(&format!(
        "rm -f /tmp/jar; curl -s -c /tmp/jar -H 'Host: {shop}' {HTTP} >/dev/null; \
         for i in $(seq 6); do curl -s -b /tmp/jar -H 'Host: {shop}' {HTTP}; done; \
         grep -o 'SRVID.*' /tmp/jar"
    ));
    let mut lines: Vec<&str> = sticky.lines().collect();
    let cookie = lines.pop().unwrap_or("").to_string();
    println!(
        "{tag} sticky service: second instance routed after {:.0} ms, {} (haproxy {before:?} -> \
         {after:?}); with cookie {cookie:?}: {lines:?}",
        secs(t_sticky) * 1000.0,
        if sticky_live { "live" } else { "by a reload" }
    );
    assert_eq!(
        sticky_live,
        v.live_cookie,
        "HAProxy {haproxy_version}: a sticky service's new instance was expected {}",
        if v.live_cookie { "live" } else { "by a reload" }
    );
    assert!(
        cookie.starts_with("SRVID") && lines.len() == 6 && lines.iter().all(|l| *l == lines[0]),
        "requests with the cookie {cookie:?} did not stick to one server: {lines:?}"
    );

    // --- a SIGHUP reloads: HAProxy's pid changes, a log line says so --------
    let before = c.haproxy_pids();
    assert!(!before.is_empty(), "no haproxy process is running");
    let reload_lines = count_reload_lines(&c.logs());
    let t = Instant::now();
    c.hup();
    let new_pid = wait_for(Duration::from_secs(15), || {
        c.haproxy_pids().into_iter().find(|p| !before.contains(p))
    });
    let new_pid = new_pid.unwrap_or_else(|| {
        panic!(
            "SIGHUP: no new haproxy process within 15s (before {before:?}, now {:?})",
            c.haproxy_pids()
        )
    });
    let hup_latency = t.elapsed();
    let logged = wait_for(Duration::from_secs(5), || {
        (count_reload_lines(&c.logs()) > reload_lines).then_some(())
    });
    assert!(
        logged.is_some(),
        "SIGHUP reloaded HAProxy (pid {before:?} -> {new_pid}) but the log has no new reload_done event"
    );
    println!(
        "{tag} SIGHUP: haproxy {before:?} -> new pid {new_pid} after {:.0} ms, reload logged",
        hup_latency.as_secs_f64() * 1000.0
    );
    assert_eq!(c.get(WWW_HOST).0, 200, "routing after a SIGHUP reload");

    // --- no failed request while reloads happen -----------------------------
    let requests = 300;
    let script = format!(
        "for i in $(seq {requests}); do curl -s -o /dev/null -m 5 -H 'Host: {WWW_HOST}' \
         -w '%{{http_code}}\\n' {HTTP}; done"
    );
    let pids_before_loop = c.haproxy_pids();
    let loop_name = c.name.clone();
    let t = Instant::now();
    let looper = thread::spawn(move || {
        run(
            Command::new("docker").args(["exec", &loop_name, "sh", "-c", &script]),
            Duration::from_secs(300),
        )
    });
    let mut hups = 0;
    thread::sleep(Duration::from_millis(200));
    while !looper.is_finished() && hups < 8 {
        c.hup();
        hups += 1;
        thread::sleep(Duration::from_millis(300));
    }
    let out = looper.join().expect("request loop thread");
    let loop_time = t.elapsed();
    let codes = text(&out.stdout);
    let total = codes.lines().count();
    let failed: Vec<&str> = codes.lines().filter(|l| l.trim() != "200").collect();
    let pids_after_loop = c.haproxy_pids();
    println!(
        "{tag} request loop: {total} requests in {:.1}s with {hups} SIGHUPs during it, {} failed; \
         haproxy {pids_before_loop:?} -> {pids_after_loop:?}",
        loop_time.as_secs_f64(),
        failed.len()
    );
    assert_eq!(total, requests, "the request loop did not complete");
    assert!(
        hups >= 3,
        "only {hups} SIGHUPs landed during the request loop"
    );
    assert!(
        pids_after_loop
            .iter()
            .any(|p| !pids_before_loop.contains(p)),
        "no reload happened during the request loop"
    );
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed during reloads: {:?}",
        failed.len(),
        failed
    );

    // --- every HAProxy SIGKILLed under a request loop: nothing refused ------
    // The supervisor holds the listening sockets (inherit): while no
    // HAProxy runs, the kernel queues connections for the next generation.
    // curl's exit code per request: 0 answered, 7 refused, 52/56 reset (in
    // flight on the killed process), 28 timed out.
    let kills = 20;
    let codes = c.sh(&format!(
        "rm -f /tmp/crash.stop /tmp/crash.codes; \
         ( while [ ! -e /tmp/crash.stop ]; do curl -s -o /dev/null -m 5 -H 'Host: {WWW_HOST}' {HTTP}; \
           echo $?; done > /tmp/crash.codes ) & \
         sleep 0.5; for k in $(seq {kills}); do pkill -KILL -x haproxy; sleep 1; done; \
         touch /tmp/crash.stop; wait; sort /tmp/crash.codes | uniq -c"
    ));
    let count = |code: &str| -> usize {
        codes
            .lines()
            .filter_map(|l| {
                l.trim()
                    .split_once(char::is_whitespace)
                    .map(|(n, c)| (n.trim(), c.trim()))
            })
            .filter(|(_, c)| *c == code)
            .map(|(n, _)| n.parse::<usize>().unwrap_or(0))
            .sum()
    };
    let (ok, refused) = (count("0"), count("7"));
    let reset = count("52") + count("56");
    println!(
        "{tag} {kills} SIGKILLs of every haproxy 1 s apart under a request loop: {ok} answered, \
         {refused} refused, {reset} reset (in flight), curl exit codes: {:?}",
        codes.split_whitespace().collect::<Vec<_>>()
    );
    assert_eq!(
        refused, 0,
        "connections refused while HAProxy restarted: {codes}"
    );
    assert!(ok > 50, "too few answers during the kills: {codes}");
    let back = wait_for(Duration::from_secs(30), || {
        (c.get(WWW_HOST).0 == 200).then_some(())
    });
    assert!(back.is_some(), "not serving after the kills");

    // --- 20 reloads: no zombie, no pile of HAProxy processes -----------------
    let t = Instant::now();
    let mut known: Vec<u32> = c.haproxy_pids();
    for i in 1..=20 {
        c.hup();
        let fresh = wait_for(Duration::from_secs(15), || {
            c.haproxy_pids().into_iter().find(|p| !known.contains(p))
        });
        let fresh = fresh.unwrap_or_else(|| panic!("SIGHUP #{i}: no new haproxy process in 15s"));
        known.push(fresh);
    }
    println!(
        "{tag} 20 SIGHUP reloads, each waited for its new haproxy pid: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // Old processes drain and are reaped; give them a moment.
    let settled = wait_for(Duration::from_secs(15), || {
        let ps = c.processes();
        let zombies = ps.iter().filter(|p| p.stat.starts_with('Z')).count();
        let haproxies = ps
            .iter()
            .filter(|p| p.comm == "haproxy" && !p.is_check())
            .count();
        (zombies == 0 && haproxies <= 2).then_some(())
    });
    let ps = c.processes();
    let zombies: Vec<_> = ps.iter().filter(|p| p.stat.starts_with('Z')).collect();
    let haproxies = ps
        .iter()
        .filter(|p| p.comm == "haproxy" && !p.is_check())
        .count();
    println!(
        "{tag} after 20 reloads: {} processes, {haproxies} haproxy, {} zombies{}",
        ps.len(),
        zombies.len(),
        if settled.is_some() {
            ""
        } else {
            " (not settled after 15s)"
        }
    );
    assert!(zombies.is_empty(), "zombie processes: {zombies:?}\n{ps:?}");
    assert!(haproxies <= 3, "{haproxies} haproxy processes left: {ps:?}");
    assert_eq!(c.get(WWW_HOST).0, 200, "routing after 20 reloads");

    // --- docker stop: graceful, exit code 0, within the timeout -------------
    let t = Instant::now();
    docker_ok(&["stop", "-t", &STOP_TIMEOUT_S.to_string(), &c.name]);
    let stop_time = t.elapsed();
    let exit = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &c.name]);
    println!(
        "{tag} docker stop: {:.2}s, exit code {}",
        stop_time.as_secs_f64(),
        exit.trim()
    );
    assert_eq!(exit.trim(), "0", "exit code after docker stop");
    assert!(
        stop_time < Duration::from_secs(STOP_TIMEOUT_S),
        "docker stop took {stop_time:?}: the supervisor did not stop before docker's SIGKILL"
    );
    println!(
        "{tag} all checks passed in {:.1}s (HAProxy {haproxy_version})",
        t_all.elapsed().as_secs_f64()
    );
}

#[test]
fn bookworm_image_haproxy_2_6_routes_reloads_reaps_and_stops() {
    let _lock = machine_lock();
    build_images();
    check_variant(&BOOKWORM);
}

#[test]
fn trixie_image_haproxy_3_0_routes_reloads_reaps_and_stops() {
    let _lock = machine_lock();
    build_images();
    check_variant(&TRIXIE);
}

#[test]
fn haproxy34_image_routes_reloads_reaps_and_stops() {
    let _lock = machine_lock();
    build_images();
    check_variant(&HAPROXY34);
}

// ---------------------------------------------------------------------------
// The compose example, for real
// ---------------------------------------------------------------------------

/// `docker-compose` (v1, Debian's package) or `docker compose` (v2), with
/// the project name and docker/compose.yml.
struct Compose {
    program: Vec<String>,
    env: Vec<(String, String)>,
}

impl Compose {
    fn find() -> Compose {
        let program = if which("docker-compose").is_some() {
            vec!["docker-compose".to_string()]
        } else if docker(&["compose", "version"]).status.success() {
            vec!["docker".to_string(), "compose".to_string()]
        } else {
            panic!(
                "neither docker-compose nor `docker compose` is installed \
                 (scripts/docker-build.sh installs Debian's docker-compose)"
            );
        };
        Compose {
            program,
            env: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .arg("-p")
            .arg(COMPOSE_PROJECT)
            .arg("-f")
            .arg(repo().join("docker/compose.yml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run(&mut self.command(args), timeout)
    }

    fn ok(&self, args: &[&str], timeout: Duration) -> String {
        stdout_of_success(&format!("compose {args:?}"), self.run(args, timeout))
    }

    /// The id of a service's container.
    fn container(&self, service: &str) -> String {
        self.ok(&["ps", "-q", service], Duration::from_secs(60))
            .trim()
            .to_string()
    }
}

/// Tears the compose project down when dropped; on a failed test prints its
/// logs first.
struct ComposeUp<'a>(&'a Compose);

impl Drop for ComposeUp<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            let logs = self.0.run(
                &["logs", "--no-color", "--tail", "60"],
                Duration::from_secs(60),
            );
            eprintln!(
                "--- compose logs:\n{}{}",
                text(&logs.stdout),
                text(&logs.stderr)
            );
        }
        let _ = self.0.run(
            &["down", "-v", "--remove-orphans", "-t", "5"],
            Duration::from_secs(120),
        );
    }
}

/// A TCP port free on the host right now, below the kernel's ephemeral
/// range: a port the kernel picked for `bind(:0)` is ephemeral, and any
/// outgoing connection on the host may take it before docker publishes it
/// (seen once as "address already in use").
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread over runs by pid; distinct within one run.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 4000) as u16;
    (0..4000)
        .map(|_| base + NEXT.fetch_add(1, Ordering::Relaxed) % 8000)
        .find(|p| {
            TcpListener::bind(("127.0.0.1", *p)).is_ok()
                && TcpListener::bind(("0.0.0.0", *p)).is_ok()
        })
        .expect("a free port below the ephemeral range")
}

/// Builds the local stand-ins for the compose example's registry images
/// (hashicorp/consul and hashicorp/http-echo) on top of the default image:
/// the test's consul binary with `consul` as entrypoint, and `demo-backend`
/// behind a shim that takes http-echo's `-listen=:PORT -text=TEXT`.
fn fixture_images() -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path();
    std::fs::copy(consul_binary(), ctx.join("consul")).expect("copy consul");
    std::fs::copy(demo_backend(), ctx.join("demo-backend")).expect("copy demo-backend");
    std::fs::write(
        ctx.join("http-echo"),
        "#!/bin/sh\n\
         # hashicorp/http-echo's command line, served by demo-backend.\n\
         listen=:5678 text=hello-world\n\
         for arg in \"$@\"; do\n\
         \x20 case $arg in\n\
         \x20   -listen=*) listen=${arg#-listen=} ;;\n\
         \x20   -text=*) text=${arg#-text=} ;;\n\
         \x20 esac\n\
         done\n\
         case $listen in :*) listen=0.0.0.0$listen ;; esac\n\
         exec /usr/local/bin/demo-backend --listen \"$listen\" --name \"$text\"\n",
    )
    .expect("write the shim");
    let images = [
        (
            "haproxy-supervisor-fixture:consul",
            "COPY consul /usr/local/bin/consul\nENTRYPOINT [\"/usr/local/bin/consul\"]\n",
        ),
        (
            "haproxy-supervisor-fixture:http-echo",
            "COPY demo-backend http-echo /usr/local/bin/\n\
             RUN chmod 0755 /usr/local/bin/http-echo\n\
             ENTRYPOINT [\"/usr/local/bin/http-echo\"]\n",
        ),
    ];
    for (tag, body) in images {
        let dockerfile = format!(
            "FROM {}\n\
             LABEL org.opencontainers.image.title=haproxy-supervisor-fixture\n\
             HEALTHCHECK NONE\n\
             {body}CMD []\n",
            TRIXIE.image
        );
        std::fs::write(ctx.join("Dockerfile"), dockerfile).expect("write Dockerfile");
        let out = run(
            Command::new("docker")
                .env("DOCKER_BUILDKIT", "0")
                .args(["build", "-q", "-t", tag])
                .arg(ctx),
            Duration::from_secs(300),
        );
        assert!(
            out.status.success(),
            "docker build {tag}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let _ = docker(&[
        "image",
        "prune",
        "-f",
        "--filter",
        "label=org.opencontainers.image.title=haproxy-supervisor-fixture",
    ]);
    (images[0].0.to_string(), images[1].0.to_string())
}

/// GET http://127.0.0.1:{port}{path} from the host with a Host header:
/// (code, body); code 0 when no HTTP answer came.
fn host_get(port: u16, path: &str, host: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", "-w", "\n%{http_code}"]);
    if let Some(h) = host {
        cmd.arg("-H").arg(format!("Host: {h}"));
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    code_and_body(&run(&mut cmd, Duration::from_secs(10)))
}

#[test]
fn compose_example_runs() {
    let _lock = machine_lock();
    build_images();
    let t_all = Instant::now();
    let mut compose = Compose::find();
    let version = compose.run(&["version", "--short"], Duration::from_secs(60));
    let (consul_image, echo_image) = fixture_images();
    let (http, stats, consul) = (free_port(), free_port(), free_port());
    // Docker cannot raise a container's open-files limit above dockerd's own
    // hard limit (the compose file asks for 1048576): ask for what it has.
    let nofile = sh_in_image(TRIXIE.image, "ulimit -Hn").trim().to_string();
    let nofile = if nofile == "unlimited" {
        "1048576".to_string()
    } else {
        nofile
    };
    for (k, v) in [
        ("HAPROXY_IMAGE", TRIXIE.image.to_string()),
        ("CONSUL_IMAGE", consul_image),
        ("HTTP_ECHO_IMAGE", echo_image),
        ("CURL_IMAGE", TRIXIE.image.to_string()),
        ("PUBLISH_HTTP", http.to_string()),
        ("PUBLISH_STATS", stats.to_string()),
        ("PUBLISH_CONSUL", consul.to_string()),
        ("ULIMIT_NOFILE", nofile),
    ] {
        compose.env.push((k.to_string(), v));
    }
    println!(
        "[compose] {} {}; images {:?}",
        compose.program.join(" "),
        text(&version.stdout).trim(),
        compose.env
    );
    // A project left by a killed run would hold the subnet.
    let _ = compose.run(
        &["down", "-v", "--remove-orphans", "-t", "5"],
        Duration::from_secs(120),
    );
    let up = ComposeUp(&compose);
    let t = Instant::now();
    compose.ok(&["up", "-d", "--no-build"], Duration::from_secs(300));
    let t_up = t.elapsed();

    // The README's usage, from the host: both instances behind
    // www.example.local, the health check, Consul's API.
    let mut answers = Vec::new();
    let routed = wait_for(Duration::from_secs(120), || {
        let (code, body) = host_get(http, "/", Some(WWW_HOST));
        answers.push((code, body.trim().to_string()));
        (code == 200).then_some(())
    });
    let t_routed = t.elapsed();
    assert!(
        routed.is_some(),
        "compose: no 200 for Host {WWW_HOST} on 127.0.0.1:{http} within 120s of `up`; \
         last answers {:?}",
        answers.iter().rev().take(3).collect::<Vec<_>>()
    );
    let both = wait_for(Duration::from_secs(30), || {
        let names: Vec<String> = (0..10)
            .map(|_| host_get(http, "/", Some(WWW_HOST)).1.trim().to_string())
            .collect();
        (names.iter().any(|n| n == "web-1") && names.iter().any(|n| n == "web-2")).then_some(names)
    });
    let both = both.unwrap_or_else(|| panic!("compose: web-1 and web-2 not both routed"));
    let (code, _) = host_get(http, "/", Some("nope.example.local"));
    assert_eq!(code, 503, "compose: an unknown host");
    let (code, _) = host_get(stats, "/_haproxy_health_check", None);
    assert_eq!(code, 200, "compose: the health check on the stats port");
    let (code, leader) = host_get(consul, "/v1/status/leader", None);
    assert_eq!(code, 200, "compose: Consul's API");
    println!(
        "[compose] up in {:.1}s; Host {WWW_HOST} routed {:.1}s after `up` began: {both:?}; \
         health check 200; Consul leader {}",
        secs(t_up),
        secs(t_routed),
        leader.trim()
    );

    // The registrator finished; a SIGHUP reloads; stop is graceful.
    let haproxy = compose.container("haproxy");
    assert!(!haproxy.is_empty(), "compose: no haproxy container");
    docker_ok(&["kill", "-s", "HUP", &haproxy]);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(host_get(http, "/", Some(WWW_HOST)).0, 200, "after SIGHUP");
    let t = Instant::now();
    compose.ok(&["stop", "haproxy"], Duration::from_secs(60));
    let stop = t.elapsed();
    let exit = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &haproxy]);
    println!(
        "[compose] stop haproxy: {:.2}s, exit code {}",
        secs(stop),
        exit.trim()
    );
    assert_eq!(exit.trim(), "0", "compose: haproxy's exit code after stop");
    drop(up);
    println!("[compose] passed in {:.1}s", t_all.elapsed().as_secs_f64());
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
