//! Catalog files (`--catalog-file`), written atomically, and the usual
//! setup of a test on one: a `www` service on demo backends behind the
//! frontend on 127.0.0.1:8080, with JSON logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::haproxy::OrphanGuard;
use crate::http::{http_get, HttpError};
use crate::supervisor::Supervisor;
use crate::{poll_until, Event};

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

/// The usual start of a test on a catalog file: its own network namespace
/// ([`netns::enter`](crate::netns::enter)), an [`OrphanGuard`] for the
/// HAProxy processes it leaves, `N` demo backends named `web-1`, `web-2`, …
/// and a [`Files`] set (nothing written yet). Bind the guard first, as
/// `let (_orphans, [a, b], files) = isolated();`, so it drops last.
pub fn isolated<const N: usize>() -> (OrphanGuard, [Backend; N], Files) {
    crate::netns::enter();
    let orphans = OrphanGuard;
    let backends = std::array::from_fn(|i| Backend::start(&format!("web-{}", i + 1)));
    (orphans, backends, Files::new())
}

/// [`isolated`], with the catalog file holding the service `www` on every
/// backend.
pub fn www_on<const N: usize>() -> (OrphanGuard, [Backend; N], Files) {
    let (orphans, backends, files) = isolated::<N>();
    let all: Vec<&Backend> = backends.iter().collect();
    write_catalog(&files.catalog(), &[service("www", &all, &[])]);
    (orphans, backends, files)
}

/// Writes a catalog file (atomically, so the supervisor never reads half).
pub fn write_catalog(path: &Path, services: &[Value]) {
    let text = serde_json::to_vec_pretty(&json!({ "services": services })).unwrap();
    write_atomic(path, &text);
}

/// [`try_write_atomic`], panicking on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    if let Err(e) = try_write_atomic(path, bytes) {
        panic!("{e}");
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a
/// rename, so a reader polling the file never sees half of it.
pub fn try_write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

/// Files of one supervisor run, kept outside the handle's own directory so
/// a second supervisor can be started on the same run dir and config.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Default for Files {
    fn default() -> Files {
        Files::new()
    }
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

/// How many `reload_done` events (generations started, any trigger).
pub fn done_count(sup: &Supervisor) -> usize {
    sup.events(Event::ReloadDone).len()
}

/// The supervisor's own reload counter, as last logged.
pub fn reloads(sup: &Supervisor) -> u64 {
    sup.events(Event::ReloadDone)
        .last()
        .and_then(|e| e["fields"]["reloads"].as_u64())
        .unwrap_or(0)
}

/// Pid of the serving HAProxy as last logged.
pub fn logged_serving_pid(sup: &Supervisor) -> Option<i32> {
    sup.events(Event::ReloadDone)
        .last()
        .and_then(|e| e["fields"]["pid"].as_i64())
        .map(|p| p as i32)
}

/// Waits until the supervisor has started `n` generations.
pub fn wait_done(sup: &Supervisor, n: usize, timeout: Duration) {
    if !poll_until(timeout, || done_count(sup) >= n) {
        panic!(
            "timed out after {timeout:?} waiting for {n} reload_done events (have {}); log:\n{}",
            done_count(sup),
            sup.log()
        );
    }
}

/// Spawns the supervisor with `args` and `env` (see [`env`]) and waits
/// until its first generation serves `www`.
pub fn spawn_serving(args: &[String], env: &[(&'static str, String)]) -> Supervisor {
    let sup = Supervisor::spawn(&strs(args), &env_refs(env));
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);
    sup
}

/// The body (trailing whitespace trimmed: a demo backend's name) of a 200
/// answer to `GET path` for `host` through the frontend; None for anything
/// else.
pub fn served_by(host: &str, path: &str) -> Option<String> {
    match http_get(FRONT, host, path, Duration::from_secs(2)) {
        Ok((200, b)) => Some(b.trim_end().to_string()),
        _ => None,
    }
}

/// Waits until `host``path` is served by the backend named `by`; panics
/// with the last answer and `sup`'s log after `timeout`.
pub fn wait_served(host: &str, path: &str, by: &str, sup: &Supervisor, timeout: Duration) {
    if !poll_until(timeout, || served_by(host, path).as_deref() == Some(by)) {
        panic!(
            "{host}{path} not served by {by} within {timeout:?} (last: {:?}); log:\n{}",
            http_get(FRONT, host, path, Duration::from_secs(2)),
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
