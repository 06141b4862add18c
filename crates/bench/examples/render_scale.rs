//! Scale of rendering (issue #2): for each N given, a catalog of N services
//! × 3 instances is written as a catalog file, and `haproxy-supervisor
//! render` and `check` are run on it as subprocesses, timed (wall clock) and
//! measured (peak RSS from the child's rusage, children included). The
//! rendered config then goes through `haproxy -c` itself. Prints a markdown
//! table; exits non-zero if any config is invalid.
//!
//! ```text
//! cargo run --release -p bench --example render_scale -- 1000 10000
//! ```
//!
//! The binary measured is the workspace's, in this example's profile
//! (`target/<profile>/haproxy-supervisor`, built first); `HAPROXY_SUPERVISOR_BIN` and `HAPROXY_BIN` override the programs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What one subprocess cost.
struct Measured {
    code: i32,
    wall: Duration,
    /// Peak resident set of the process and of the children it waited for.
    max_rss_kib: i64,
}

/// Runs `cmd` to completion with stdout to `stdout` and stderr to `stderr`,
/// and reaps it with wait4 to read its resource usage.
fn measure(mut cmd: Command, stdout: &Path, stderr: &Path) -> Measured {
    cmd.stdin(Stdio::null())
        .stdout(File::create(stdout).expect("create stdout file"))
        .stderr(File::create(stderr).expect("create stderr file"));
    let start = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it. The child is reaped here
    // and never waited for through `child` again.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let wall = start.elapsed();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Measured {
        code,
        wall,
        // ru_maxrss is in KiB on Linux.
        max_rss_kib: usage.ru_maxrss,
    }
}

/// N services × 3 instances with the seed's tags; every 10th has a path
/// prefix and every 50th is TCP with its own frontend port.
fn catalog(n: usize) -> Value {
    let balances = [
        "roundrobin",
        "leastconn",
        "static-rr",
        "first",
        "source",
        "random",
        "uri",
    ];
    let services: Vec<Value> = (0..n)
        .map(|i| {
            let name = format!("svc-{i:05}");
            let mut tags = vec![
                "HAPROXY.ENABLE=true".to_string(),
                format!("HAPROXY.BACKEND.BALANCE={}", balances[i % balances.len()]),
                "HAPROXY.BACKEND.MAXCONN=10000".to_string(),
            ];
            if i % 50 == 49 {
                tags.push("HAPROXY.PROTOCOL=tcp".into());
                tags.push(format!("HAPROXY.FRONTEND.PORT={}", 20000 + i / 50));
            } else {
                tags.push("HAPROXY.PROTOCOL=http".into());
                if i % 10 == 9 {
                    tags.push("HAPROXY.PATH=/api".into());
                }
            }
            let instances: Vec<Value> = (0..3)
                .map(|j| {
                    json!({
                        "id": format!("{name}-{j}"),
                        "address": format!("10.{}.{}.{}", (i / 256) % 256, i % 256, j + 1),
                        "port": 8080,
                        "tags": tags,
                        "weight": 1,
                        "passing": true
                    })
                })
                .collect();
            json!({"name": name, "instances": instances})
        })
        .collect();
    json!({ "services": services })
}

/// `HAPROXY_SUPERVISOR_BIN`, or the workspace's binary (built first).
fn supervisor_bin() -> PathBuf {
    match std::env::var_os("HAPROXY_SUPERVISOR_BIN") {
        Some(p) => PathBuf::from(p),
        None => testkit::supervisor_bin().to_path_buf(),
    }
}

fn mib(kib: i64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn main() -> ExitCode {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or_else(|_| panic!("not a count: {a}")))
        .collect();
    let ns = if ns.is_empty() { vec![1000, 10000] } else { ns };
    let bin = supervisor_bin();
    let haproxy =
        std::env::var_os("HAPROXY_BIN").map_or_else(|| PathBuf::from("haproxy"), PathBuf::from);
    let work = std::env::temp_dir().join(format!("render-scale-{}", std::process::id()));

    let mut rows = Vec::new();
    let mut ok = true;
    for &n in &ns {
        let dir = work.join(n.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let catalog_path = dir.join("catalog.json");
        std::fs::write(&catalog_path, serde_json::to_vec(&catalog(n)).unwrap()).unwrap();
        let cfg = dir.join("haproxy.cfg");
        let sub = |what: &str| {
            let mut c = Command::new(&bin);
            c.arg(what)
                .arg("--catalog-file")
                .arg(&catalog_path)
                .arg("--config-file")
                .arg(&cfg)
                .arg("--run-dir")
                .arg(dir.join("run"))
                .env("HAPROXY_DOM", "example.com")
                .env("NO_COLOR", "1");
            c
        };
        // `render` prints the config and writes its maps beside --config-file.
        let render = measure(sub("render"), &cfg, &dir.join("render.log"));
        let check = measure(sub("check"), &dir.join("check.out"), &dir.join("check.log"));
        let mut hc = Command::new(&haproxy);
        hc.arg("-c").arg("-f").arg(&cfg);
        let haproxy_c = measure(hc, &dir.join("haproxy-c.out"), &dir.join("haproxy-c.log"));
        let config = std::fs::read_to_string(&cfg).unwrap_or_default();
        let backends = config.lines().filter(|l| l.starts_with("backend ")).count();
        let servers = config
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .count();
        let valid = render.code == 0
            && check.code == 0
            && haproxy_c.code == 0
            && backends == n + 1
            && servers == 3 * n;
        if !valid {
            ok = false;
            eprintln!(
                "N={n}: render exit {}, check exit {}, haproxy -c exit {}, {backends} backends, {servers} servers; logs in {}",
                render.code,
                check.code,
                haproxy_c.code,
                dir.display()
            );
        }
        rows.push(format!(
            "| {n} | {} | {:.1} MiB, {} lines | {} | {} | {} | {} | {} | {} | {} |",
            3 * n,
            config.len() as f64 / (1024.0 * 1024.0),
            config.lines().count(),
            secs(render.wall),
            mib(render.max_rss_kib),
            secs(check.wall),
            mib(check.max_rss_kib),
            secs(haproxy_c.wall),
            mib(haproxy_c.max_rss_kib),
            if valid { "yes" } else { "NO" },
        ));
    }

    println!("binary: {}", bin.display());
    println!();
    println!("| services | servers | haproxy.cfg | `render` wall | `render` peak RSS | `check` wall | `check` peak RSS (incl. haproxy -c) | `haproxy -c` wall | `haproxy -c` peak RSS | valid |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|");
    for r in &rows {
        println!("{r}");
    }
    if ok {
        let _ = std::fs::remove_dir_all(&work);
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "some configs were invalid; files kept in {}",
            work.display()
        );
        ExitCode::FAILURE
    }
}
