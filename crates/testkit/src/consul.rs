//! A `consul agent -dev` for a test or a bench, on 127.0.0.1:8500 of its
//! network namespace.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::http::{http_request, HttpError};
use crate::process::{child_wait_timeout, die_with_parent, file_tail};
use crate::require;

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

/// An agent registration (`PUT /v1/agent/service/register`) of instance
/// `id` of service `name` with a TTL check `<id>-ttl` that starts passing
/// (its TTL long enough never to expire during a test).
pub fn ttl_instance(
    id: &str,
    name: &str,
    address: &str,
    port: u16,
    tags: &[&str],
) -> serde_json::Value {
    serde_json::json!({
        "ID": id,
        "Name": name,
        "Address": address,
        "Port": port,
        "Tags": tags,
        "Check": {"CheckID": format!("{id}-ttl"), "TTL": "300s", "Status": "passing"}
    })
}

impl Consul {
    /// Starts the agent and waits (up to 30 s) until it has elected itself
    /// leader and answers `/v1/agent/self`. Panics with the log on failure.
    pub fn start() -> Consul {
        Consul::start_with_args(&[])
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
            // The poll interval of this wait for a leader (deadline above).
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
