//! Helpers shared by `tests/reload.rs` and `tests/pid1.rs` (issue #3):
//! a catalog with a `www` service on two demo backends, the supervisor's JSON
//! log, our iptables rules, and the HAProxy processes of a test's network
//! namespace.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::*;

/// The comment that marks the supervisor's SYN-drop rules.
pub const RULE_COMMENT: &str = "haproxy-supervisor-syn-drop";
/// The shared HTTP frontend.
pub const FRONT: &str = "127.0.0.1:8080";
/// Host of the `www` service (HAPROXY_DOM=example.com).
pub const WWW: &str = "www.example.com";
pub const T: Duration = Duration::from_secs(10);

/// One catalog-file service: `name` with `HAPROXY.ENABLE=true` (plus
/// `extra_tags`) on every instance, one instance per backend.
pub fn service(name: &str, backends: &[&Backend], extra_tags: &[&str]) -> Value {
    let mut tags = vec!["HAPROXY.ENABLE=true".to_string()];
    tags.extend(extra_tags.iter().map(|t| t.to_string()));
    let instances: Vec<Value> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            json!({
                "id": format!("{name}-{}", i + 1),
                "address": "127.0.0.1",
                "port": b.port(),
                "tags": tags,
            })
        })
        .collect();
    json!({ "name": name, "instances": instances })
}

/// Writes a catalog file (atomically, so the supervisor never reads half).
pub fn write_catalog(path: &Path, services: &[Value]) {
    let text = serde_json::to_vec_pretty(&json!({ "services": services })).unwrap();
    write_atomic(path, &text);
}

pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Files of one supervisor run, kept outside the handle's own directory so
/// a second supervisor can be started on the same run dir and config.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Files {
        Files {
            dir: tempfile::Builder::new()
                .prefix("reload-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn catalog(&self) -> PathBuf {
        self.path("catalog.json")
    }
    pub fn config(&self) -> PathBuf {
        self.path("etc/haproxy.cfg")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }
    /// `run --catalog-file ... --config-file ... --run-dir ...` as strings.
    pub fn render_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--catalog-file".into(),
            s(&self.catalog()),
            "--config-file".into(),
            s(&self.config()),
            "--run-dir".into(),
            s(&self.run_dir()),
        ]
    }
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Environment of every run: JSON logs (parsed below), `HAPROXY_DOM`, and
/// the strategy.
pub fn env(strategy: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HAPROXY_LOG_FORMAT", "json".into()),
        ("HAPROXY_DOM", "example.com".into()),
        ("HAPROXY_RELOAD_STRATEGY", strategy.into()),
    ]
}

pub fn env_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The supervisor's JSON log events (HAProxy's own lines, which share the
/// output, are skipped).
pub fn events(sup: &Supervisor) -> Vec<Value> {
    sup.log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("fields").is_some())
        .collect()
}

/// Events whose message is `msg`.
pub fn events_with(sup: &Supervisor, msg: &str) -> Vec<Value> {
    events(sup)
        .into_iter()
        .filter(|e| e["fields"]["message"] == msg)
        .collect()
}

/// How many "haproxy reload done" lines (generations started, any trigger).
pub fn done_count(sup: &Supervisor) -> usize {
    events_with(sup, "haproxy reload done").len()
}

/// The supervisor's own reload counter, as last logged.
pub fn reloads(sup: &Supervisor) -> u64 {
    events_with(sup, "haproxy reload done")
        .last()
        .and_then(|e| e["fields"]["reloads"].as_u64())
        .unwrap_or(0)
}

/// Pid of the serving HAProxy as last logged.
pub fn logged_serving_pid(sup: &Supervisor) -> Option<i32> {
    events_with(sup, "haproxy reload done")
        .last()
        .and_then(|e| e["fields"]["pid"].as_i64())
        .map(|p| p as i32)
}

/// Waits until the supervisor has started `n` generations.
pub fn wait_done(sup: &Supervisor, n: usize, timeout: Duration) {
    if !poll_until(timeout, || done_count(sup) >= n) {
        panic!(
            "timed out after {timeout:?} waiting for {n} \"haproxy reload done\" (have {}); log:\n{}",
            done_count(sup),
            sup.log()
        );
    }
}

/// `GET /` for `host` through the frontend.
pub fn get(host: &str) -> Result<(u16, String), HttpError> {
    http_get(FRONT, host, "/", Duration::from_secs(2))
}

/// Waits until `host` answers 200 through HAProxy.
pub fn wait_serving(host: &str, timeout: Duration) {
    let mut last = None;
    if !poll_until(timeout, || {
        let r = get(host);
        let ok = matches!(r, Ok((200, _)));
        last = Some(r);
        ok
    }) {
        panic!("{host} not served with 200 within {timeout:?}; last answer {last:?}");
    }
}

/// Lines of `iptables -S INPUT` (this thread's network namespace) that are
/// rules of ours.
pub fn our_rules() -> Vec<String> {
    let out = Command::new(require("iptables"))
        .args(["-w", "-S", "INPUT"])
        .output()
        .expect("run iptables -S INPUT");
    assert!(
        out.status.success(),
        "iptables -S INPUT failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(RULE_COMMENT))
        .map(str::to_string)
        .collect()
}

/// Inserts a rule of ours by hand, as a killed run would leave it.
pub fn insert_stale_rule(port: u16) {
    let port = port.to_string();
    let st = Command::new(require("iptables"))
        .args([
            "-w",
            "-I",
            "INPUT",
            "1",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &port,
            "--syn",
            "-m",
            "comment",
            "--comment",
            RULE_COMMENT,
            "-j",
            "DROP",
        ])
        .status()
        .expect("run iptables -I");
    assert!(st.success(), "iptables -I failed");
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

/// SIGKILLs every HAProxy of this network namespace and waits until they
/// are gone (end-of-test cleanup of orphans).
pub fn kill_haproxies_in_my_netns() {
    for p in in_my_netns("haproxy") {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    wait_until(
        Duration::from_secs(5),
        "orphaned haproxy processes gone",
        || in_my_netns("haproxy").is_empty(),
    );
}

/// Kills the HAProxy processes of this namespace when dropped, so a failing
/// test does not leave orphans behind.
pub struct OrphanGuard;

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        for p in in_my_netns("haproxy") {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}
