//! Findings of an outside probe of the Consul discovery, each reproduced
//! against the real binary and real HAProxy:
//!
//! 1. a huge answer (50 MB of valid JSON) on each endpoint is refused at
//!    `HAPROXY_CONSUL_MAX_ANSWER`, the last catalog keeps serving, memory
//!    stays bounded;
//! 2. a non-numeric `X-Consul-Index` is an error with backoff, logged once;
//! 3. a hung agent (connection open, nothing sent) is abandoned after the
//!    wait it was asked for plus a margin, and routing resumes when it
//!    answers again;
//! 4. an instance listed twice is one server, with one warning;
//! 5. an ACL policy changed to deny service reads (Consul 1.8: empty lists
//!    under the same index, no 403) is held by the mass-removal guard.
//!
//! 1–4 talk to a fake Consul (a small HTTP server on loopback in the
//! test's network namespace), 5 to a real `consul agent -dev` with ACLs.
//! Run as root: `cargo test --release --test consul_probes`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use testkit::*;

const API: &str = "api.example.com";
const STATUS: &str = "127.0.0.1:4445";
const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A fake Consul agent
// ---------------------------------------------------------------------------

/// What the fake answers on a path.
#[derive(Clone)]
enum Reply {
    /// This JSON, with `Content-Length`.
    Json(String),
    /// Valid JSON of the path's shape, about this many bytes, chunked
    /// (as Consul sends a large answer).
    Huge(usize),
}

/// Which reads get no answer at all (the connection stays open).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hang {
    None,
    /// Every request, `/v1/status/leader` included.
    All,
    /// Blocking queries (`index=` above 0).
    Blocking,
}

struct FakeState {
    index: u64,
    routes: HashMap<String, Reply>,
    /// Sent as `X-Consul-Index` instead of the index.
    index_header: Option<String>,
    hang: Hang,
    /// Every request received: when, and its path with its query.
    requests: Vec<(Instant, String)>,
    /// Each huge answer: its path, the bytes written before the reader
    /// went away, and whether all of it was written.
    huge: Vec<(String, usize, bool)>,
}

/// An HTTP/1.1 server that answers like a Consul agent: blocking queries
/// (`?index=N&wait=`) are held until [`Fake::bump`] moves the index or the
/// wait ends, as Consul does.
#[derive(Clone)]
struct Fake {
    url: String,
    st: Arc<(Mutex<FakeState>, Condvar)>,
}

impl Fake {
    fn start() -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the fake consul");
        let url = format!("http://{}", l.local_addr().unwrap());
        let fake = Fake {
            url,
            st: Arc::new((
                Mutex::new(FakeState {
                    index: 10,
                    routes: HashMap::new(),
                    index_header: None,
                    hang: Hang::None,
                    requests: Vec::new(),
                    huge: Vec::new(),
                }),
                Condvar::new(),
            )),
        };
        let f = fake.clone();
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                let f = f.clone();
                thread::spawn(move || f.connection(c));
            }
        });
        fake
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        let r = f(&mut self.st.0.lock().unwrap());
        self.st.1.notify_all();
        r
    }

    fn set(&self, path: &str, r: Reply) {
        self.with(|s| s.routes.insert(path.to_string(), r));
    }

    /// Moves the index: held blocking queries answer.
    fn bump(&self) {
        self.with(|s| s.index += 1);
    }

    fn requests(&self) -> Vec<(Instant, String)> {
        self.with(|s| s.requests.clone())
    }

    /// Serves the services `svcs` (name, instance entries), exposed, each
    /// instance with one passing check.
    fn serve(&self, svcs: &[(&str, Vec<Value>)]) {
        let mut catalog = json!({"consul": []});
        let mut checks = vec![json!({"Node": "n1", "CheckID": "serfHealth", "Status": "passing"})];
        for (name, entries) in svcs {
            catalog[*name] = json!(["HAPROXY.ENABLE=true"]);
            for e in entries {
                checks.push(
                    json!({"Node": "n1", "CheckID": format!("{}-ttl", e["Service"]["ID"]),
                    "Status": "passing", "ServiceID": e["Service"]["ID"], "ServiceName": name,
                    "ModifyIndex": 10}),
                );
            }
            self.set(
                &format!("/v1/health/service/{name}"),
                Reply::Json(Value::from(entries.clone()).to_string()),
            );
        }
        self.set("/v1/catalog/services", Reply::Json(catalog.to_string()));
        self.set(
            "/v1/health/state/any",
            Reply::Json(Value::from(checks).to_string()),
        );
    }

    fn connection(&self, mut c: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            buf.drain(..head_end);
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            if !self.answer(&mut c, &target) {
                return;
            }
        }
    }

    /// Answers one request; false when the connection is done.
    fn answer(&self, c: &mut TcpStream, target: &str) -> bool {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        let asked: u64 = param("index").and_then(|v| v.parse().ok()).unwrap_or(0);
        let wait = param("wait")
            .and_then(|v| v.strip_suffix("ms")?.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(300));
        let (lock, cv) = &*self.st;
        let mut st = lock.lock().unwrap();
        st.requests.push((Instant::now(), target.to_string()));
        let deadline = Instant::now() + wait;
        let hang = loop {
            let hang = st.hang == Hang::All || (st.hang == Hang::Blocking && asked > 0);
            if hang || asked == 0 || st.index != asked || st.index_header.is_some() {
                break hang;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        };
        if hang {
            drop(st);
            // Nothing is ever sent; the reader gives up and closes.
            let mut b = [0u8; 1024];
            while matches!(c.read(&mut b), Ok(n) if n > 0) {}
            return false;
        }
        let index = st
            .index_header
            .clone()
            .unwrap_or_else(|| st.index.to_string());
        let reply = if path == "/v1/status/leader" {
            Some(Reply::Json("\"127.0.0.1:8300\"".into()))
        } else {
            st.routes.get(path).cloned()
        };
        drop(st);
        let head = |extra: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: {index}\r\nX-Consul-KnownLeader: true\r\nX-Consul-LastContact: 0\r\n{extra}\r\n"
            )
        };
        match reply {
            None => c
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .is_ok(),
            Some(Reply::Json(body)) => {
                let msg = head(&format!("Content-Length: {}\r\n", body.len())) + &body;
                c.write_all(msg.as_bytes()).is_ok()
            }
            Some(Reply::Huge(total)) => {
                let (sent, whole) =
                    send_huge(c, path, total, &head("Transfer-Encoding: chunked\r\n"));
                self.with(|s| s.huge.push((path.to_string(), sent, whole)));
                whole
            }
        }
    }
}

/// Writes a chunked answer of about `total` bytes of valid JSON of the
/// shape of `path`; returns the body bytes written and whether all were.
fn send_huge(c: &mut TcpStream, path: &str, total: usize, head: &str) -> (usize, bool) {
    let (open, close) = if path == "/v1/catalog/services" {
        ("{", "}")
    } else {
        ("[", "]")
    };
    let item = |i: usize| {
        match path {
        "/v1/catalog/services" => format!("\"pad-{i:07}\":[\"HAPROXY.ENABLE=false\",\"v1\"]"),
        "/v1/health/state/any" => format!(
            "{{\"Node\":\"node-{i:07}\",\"CheckID\":\"service:pad-{i:07}\",\"Name\":\"Service 'pad' check\",\"Status\":\"passing\",\"Notes\":\"\",\"Output\":\"HTTP GET http://10.0.0.1:8080/health: 200 OK\",\"ServiceID\":\"pad-{i:07}\",\"ServiceName\":\"pad-{i:07}\",\"ServiceTags\":[],\"Type\":\"http\",\"CreateIndex\":10,\"ModifyIndex\":10}}"
        ),
        _ => format!(
            "{{\"Node\":{{\"Node\":\"node-{i:07}\",\"Address\":\"10.0.0.1\"}},\"Service\":{{\"ID\":\"www-{i:07}\",\"Service\":\"www\",\"Address\":\"10.0.0.1\",\"Port\":80,\"CreateIndex\":10}},\"Checks\":[]}}"
        ),
    }
    };
    if c.write_all(head.as_bytes()).is_err() {
        return (0, false);
    }
    let mut sent = 0;
    let mut i = 0;
    while sent < total {
        let mut piece = if i == 0 {
            open.to_string()
        } else {
            String::new()
        };
        while piece.len() < 64 * 1024 {
            if i > 0 {
                piece.push(',');
            }
            piece.push_str(&item(i));
            i += 1;
        }
        if sent + piece.len() >= total {
            piece.push_str(close);
        }
        let frame = format!("{:x}\r\n{piece}\r\n", piece.len());
        if c.write_all(frame.as_bytes()).is_err() {
            return (sent, false);
        }
        sent += piece.len();
    }
    (sent, c.write_all(b"0\r\n\r\n").is_ok())
}

/// A health entry of instance `id` of `service` on `backend`, node `node`.
fn entry(node: &str, service: &str, id: &str, backend: &Backend) -> Value {
    json!({"Node": {"Node": node, "Address": "127.0.0.1"},
        "Service": {"ID": id, "Service": service, "Address": "127.0.0.1",
            "Port": backend.port(), "Tags": ["HAPROXY.ENABLE=true"], "CreateIndex": 10},
        "Checks": [{"Status": "passing"}]})
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `run` on Consul at `url` with JSON logs and `extra` variables.
fn spawn(url: &str, extra: &[(&'static str, &str)]) -> Supervisor {
    let mut env = env("seamless");
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Supervisor::spawn_run(&["--consul", url], &env_refs(&env))
}

fn served(host: &str) -> Option<String> {
    served_by(host, "/")
}

/// The `error` fields of the `consul_error` events containing `needle`.
fn errors_with(sup: &Supervisor, needle: &str) -> Vec<String> {
    sup.events(Event::ConsulError)
        .iter()
        .filter_map(|e| e["fields"]["error"].as_str().map(str::to_string))
        .filter(|e| e.contains(needle))
        .collect()
}

/// A `/proc/<pid>/status` value in kB (`VmHWM:`, `VmRSS:`).
fn proc_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn status_json() -> Value {
    let (code, body) =
        http_get(STATUS, "localhost", "/status", Duration::from_secs(2)).expect("/status");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/status is JSON")
}

// ---------------------------------------------------------------------------
// 1. Huge answers
// ---------------------------------------------------------------------------

#[test]
fn a_huge_answer_is_refused_at_the_bound_and_the_last_catalog_keeps_serving() {
    netns::enter();
    let _orphans = OrphanGuard;
    let web = Backend::start("web-1");
    let fake = Fake::start();
    fake.serve(&[("www", vec![entry("n1", "www", "www-1", &web)])]);
    let sup = spawn(&fake.url, &[]);
    wait_served(WWW, "/", "web-1", &sup, T);
    let base_kb = proc_kb(sup.pid(), "VmHWM:");

    const HUGE: usize = 50 << 20;
    const BOUND: u64 = 32 << 20;
    let paths = [
        "/v1/health/state/any",
        "/v1/catalog/services",
        "/v1/health/service/www",
    ];
    for (i, path) in paths.iter().enumerate() {
        let good = fake.with(|s| s.routes[*path].clone());
        fake.set(path, Reply::Huge(HUGE));
        // A new index: for the per-service read, the catalog query's new
        // index without an attributable change refetches every service.
        fake.bump();
        wait_until(T, &format!("the huge {path} answer is refused"), || {
            !errors_with(&sup, path).is_empty()
        });
        let e = &errors_with(&sup, path)[0];
        assert!(
            e.contains("HAPROXY_CONSUL_MAX_ANSWER") && e.contains("32MiB"),
            "{e}"
        );
        for _ in 0..10 {
            assert_eq!(served(WWW).as_deref(), Some("web-1"), "{path}: www lost");
        }
        // Retried with backoff, logged once.
        wait_until(T, &format!("{path} asked again"), || {
            fake.with(|s| s.huge.iter().filter(|h| h.0 == *path).count()) >= 2
        });
        assert_eq!(errors_with(&sup, path).len(), 1, "{path}: logged again");
        fake.set(path, good);
        fake.bump();
        wait_until(T, &format!("consul recovered after {path}"), || {
            sup.events(Event::ConsulRecovered).len() == i + 1
        });
    }
    let peak_kb = proc_kb(sup.pid(), "VmHWM:");
    let rss_kb = proc_kb(sup.pid(), "VmRSS:");
    let huge = fake.with(|s| s.huge.clone());
    for (path, sent, whole) in &huge {
        // The reader stopped at the bound: the rest was never taken.
        assert!(
            !whole && *sent < HUGE,
            "{path}: {sent} bytes of {HUGE} read"
        );
    }
    eprintln!(
        "huge answers: {} refused; VmHWM {} MiB before, {} MiB after (VmRSS now {} MiB); bound 32 MiB",
        huge.len(),
        base_kb / 1024,
        peak_kb / 1024,
        rss_kb / 1024
    );
    // At most the bound above what the supervisor needed before, plus the
    // HTTP stack's buffers: 50 MB answers made it 106-306 MB.
    assert!(
        peak_kb < base_kb + BOUND / 1024 + 24 * 1024,
        "VmHWM {peak_kb} kB (before: {base_kb} kB)"
    );
    assert!(peak_kb < 80 * 1024, "VmHWM {peak_kb} kB");
    assert_eq!(served(WWW).as_deref(), Some("web-1"));
}

// ---------------------------------------------------------------------------
// 2. A non-numeric X-Consul-Index
// ---------------------------------------------------------------------------

#[test]
fn a_non_numeric_index_is_an_error_with_backoff_logged_once() {
    netns::enter();
    let _orphans = OrphanGuard;
    let web = Backend::start("web-1");
    let fake = Fake::start();
    fake.serve(&[("www", vec![entry("n1", "www", "www-1", &web)])]);
    fake.with(|s| s.index_header = Some("abc".into()));
    let sup = spawn(&fake.url, &[]);
    wait_until(T, "an error naming X-Consul-Index", || {
        !errors_with(&sup, "X-Consul-Index").is_empty()
    });
    // A rate needs a window: the first 5 s of requests.
    let window = Duration::from_secs(5);
    let first = fake.requests()[0].0;
    wait_until(T, "5 s of requests", || first.elapsed() > window);
    let blocking =
        |p: &str| p.starts_with("/v1/catalog/services") || p.starts_with("/v1/health/state/any");
    let n = fake
        .requests()
        .iter()
        .filter(|(t, p)| *t < first + window && blocking(p))
        .count();
    let errors = errors_with(&sup, "X-Consul-Index");
    eprintln!(
        "X-Consul-Index abc: {n} reads of the two blocking endpoints in {window:?} (the probe saw ~270); {} error lines: {errors:?}",
        errors.len()
    );
    assert!(n <= 40, "{n} reads in {window:?}");
    // One line per endpoint, however often it is retried.
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("/v1/catalog/services")));
    assert!(errors.iter().any(|e| e.contains("/v1/health/state/any")));
    assert!(errors[0].contains("\"abc\""), "{}", errors[0]);
    assert!(served(WWW).is_none());

    // A numeric index again: served.
    fake.with(|s| s.index_header = None);
    fake.bump();
    wait_served(WWW, "/", "web-1", &sup, LONG);
    assert_eq!(errors_with(&sup, "X-Consul-Index").len(), 2);
}

// ---------------------------------------------------------------------------
// 3. A hung agent
// ---------------------------------------------------------------------------

#[test]
fn a_hung_agent_is_abandoned_after_the_wait_and_a_margin() {
    netns::enter();
    let _orphans = OrphanGuard;
    let web = Backend::start("web-1");
    let api = Backend::start("web-2");
    let fake = Fake::start();
    fake.serve(&[("www", vec![entry("n1", "www", "www-1", &web)])]);
    const WAIT: Duration = Duration::from_secs(2);
    // What a read may take: the wait, Consul's jitter (wait/16), 5 s.
    let blocking_limit = WAIT + WAIT / 16 + Duration::from_secs(5);
    let slack = Duration::from_secs(2);

    // Accepts, never answers, from the first read on: abandoned after the
    // margin (the first reads do not block).
    fake.with(|s| s.hang = Hang::All);
    let t0 = Instant::now();
    let sup = spawn(&fake.url, &[("HAPROXY_CONSUL_WAIT", "2s")]);
    wait_until(
        Duration::from_secs(5) + slack * 2,
        "the first read abandoned",
        || !errors_with(&sup, "abandoned").is_empty(),
    );
    let first = t0.elapsed();
    eprintln!(
        "hung agent at start: abandoned after {first:?}: {:?}",
        errors_with(&sup, "abandoned")
    );
    assert!(first >= Duration::from_secs(5), "abandoned after {first:?}");
    // It answers again: routed.
    fake.with(|s| s.hang = Hang::None);
    wait_served(WWW, "/", "web-1", &sup, T);

    // A blocking query that never ends: abandoned within its wait plus the
    // margin; the last catalog keeps serving meanwhile.
    let before = errors_with(&sup, "abandoned").len();
    let t1 = Instant::now();
    fake.with(|s| s.hang = Hang::Blocking);
    wait_until(
        blocking_limit + slack,
        "the stuck blocking query abandoned",
        || {
            assert_eq!(
                served(WWW).as_deref(),
                Some("web-1"),
                "www lost while the agent hangs"
            );
            errors_with(&sup, "abandoned").len() > before
        },
    );
    let took = t1.elapsed();
    let e = errors_with(&sup, "abandoned")[before].clone();
    eprintln!("stuck blocking query abandoned {took:?} after the agent hung (limit {blocking_limit:?}): {e}");
    assert!(e.contains("index="), "{e}");

    // Answers again, with a new service: routed.
    fake.serve(&[
        ("www", vec![entry("n1", "www", "www-1", &web)]),
        ("api", vec![entry("n1", "api", "api-1", &api)]),
    ]);
    fake.with(|s| s.hang = Hang::None);
    fake.bump();
    let t2 = Instant::now();
    wait_served(API, "/", "web-2", &sup, blocking_limit + T);
    eprintln!("answering again: api routed after {:?}", t2.elapsed());
    assert_eq!(served(WWW).as_deref(), Some("web-1"));
}

// ---------------------------------------------------------------------------
// 4. An instance listed twice
// ---------------------------------------------------------------------------

#[test]
fn an_instance_listed_twice_is_one_server_with_one_warning() {
    netns::enter();
    let _orphans = OrphanGuard;
    let [a, b, c] = ["web-1", "web-2", "web-3"].map(Backend::start);
    let fake = Fake::start();
    let dup = entry("n1", "www", "www-1", &a);
    fake.serve(&[(
        "www",
        vec![dup.clone(), dup.clone(), entry("n1", "www", "www-2", &b)],
    )]);
    let sup = spawn(&fake.url, &[]);
    wait_served(WWW, "/", "web-1", &sup, T);
    let config = std::fs::read_to_string(sup.config_path()).unwrap();
    let servers = server_lines(&config, "www");
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert!(
        servers.iter().all(|s| s.ends_with(" weight 1")),
        "{servers:?}"
    );
    let warned = || -> Vec<Value> {
        sup.events(Event::Warning)
            .into_iter()
            // Warnings about a service (not the settings' fd fit).
            .filter(|e| e["fields"]["service"].is_string())
            .collect()
    };
    let w = warned();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["fields"]["service"], "www", "{}", w[0]);
    assert!(
        w[0]["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("duplicate"),
        "{}",
        w[0]
    );
    assert_eq!(w[0]["fields"]["duplicates"], 1, "{}", w[0]);

    // Refetched, still listed twice (and one more instance): not said again.
    fake.serve(&[(
        "www",
        vec![
            dup.clone(),
            entry("n1", "www", "www-2", &b),
            dup,
            entry("n1", "www", "www-3", &c),
        ],
    )]);
    fake.bump();
    wait_until(T, "www-3 rendered", || {
        server_lines(&std::fs::read_to_string(sup.config_path()).unwrap(), "www").len() == 3
    });
    assert_eq!(warned().len(), 1);
    println!(
        "an instance listed twice: one server, one warning: {}",
        w[0]
    );
}

// ---------------------------------------------------------------------------
// 5. An ACL policy changed to deny service reads
// ---------------------------------------------------------------------------

const MASTER: &str = "7e570000-0000-4000-8000-0000000000a1";
const READ: &str =
    "service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }\n";
const DENY: &str =
    "service_prefix \"\" { policy = \"deny\" }\nnode_prefix \"\" { policy = \"read\" }\n";

/// `PUT path` with the management token; the answer as JSON.
fn acl_put(path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: consul\r\nX-Consul-Token: {MASTER}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    match http_raw("127.0.0.1:8500", req.as_bytes(), Duration::from_secs(5)) {
        Ok((200, b)) => serde_json::from_str(&b).unwrap_or(Value::Null),
        other => panic!("PUT {path}: {other:?}"),
    }
}

/// A Consul with ACLs (default deny), www on two backends and api on one
/// (registered with the management token), and a supervisor reading with
/// a token whose policy grants service reads (blocking wait 2 s, the
/// guard's grace as given). Returns the policy's id.
fn acl_setup(grace: &str) -> (OrphanGuard, Consul, [Backend; 3], String, Supervisor) {
    netns::enter();
    let orphans = OrphanGuard;
    let hcl = format!(
        r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{MASTER}" agent = "{MASTER}" }} }}"#
    );
    let consul = Consul::start_with_args(&["-hcl", &hcl]);
    let backends = ["web-1", "web-2", "web-3"].map(Backend::start);
    let policy = acl_put("/v1/acl/policy", &json!({"Name": "lb", "Rules": READ}));
    let policy_id = policy["ID"].as_str().expect("policy ID").to_string();
    let token = acl_put(
        "/v1/acl/token",
        &json!({"Description": "lb", "Policies": [{"ID": policy_id}]}),
    );
    let token = token["SecretID"].as_str().expect("SecretID").to_string();
    for (id, name, b) in [
        ("www-1", "www", &backends[0]),
        ("www-2", "www", &backends[1]),
        ("api-1", "api", &backends[2]),
    ] {
        acl_put(
            "/v1/agent/service/register",
            &ttl_instance(id, name, "127.0.0.1", b.port(), &["HAPROXY.ENABLE=true"]),
        );
    }
    let sup = spawn(
        &consul.addr(),
        &[
            ("CONSUL_HTTP_TOKEN", &token),
            ("HAPROXY_CONSUL_WAIT", "2s"),
            ("HAPROXY_REMOVAL_GUARD_GRACE", grace),
        ],
    );
    wait_served(API, "/", "web-3", &sup, LONG);
    wait_until(T, "www on both instances", || {
        let seen: Vec<_> = (0..10).filter_map(|_| served(WWW)).collect();
        seen.iter().any(|s| s == "web-1") && seen.iter().any(|s| s == "web-2")
    });
    (orphans, consul, backends, policy_id, sup)
}

fn set_rules(policy_id: &str, rules: &str) {
    acl_put(
        &format!("/v1/acl/policy/{policy_id}"),
        &json!({"ID": policy_id, "Name": "lb", "Rules": rules}),
    );
}

/// The policy now denies service reads: held, reported, routing unchanged.
fn deny_and_expect_hold(sup: &Supervisor, policy_id: &str, nth: usize) -> Instant {
    let denied = sup.events(Event::ConsulDenied).len();
    set_rules(policy_id, DENY);
    let t0 = Instant::now();
    wait_until(T, "the removal is held", || {
        sup.events(Event::RemovalHeld).len() == nth
    });
    let held_at = Instant::now();
    eprintln!(
        "policy denies service reads: removal held {:?} after the change",
        t0.elapsed()
    );
    let held = &sup.events(Event::RemovalHeld)[nth - 1]["fields"];
    assert_eq!(held["removed"], 3, "{held}");
    assert_eq!(held["services"], 2, "{held}");
    // The empty catalog is named as most likely an ACL matter.
    wait_until(T, "the empty catalog reported as an ACL matter", || {
        sup.events(Event::ConsulDenied).len() > denied
    });
    for _ in 0..10 {
        assert!(served(WWW).is_some(), "www lost while the removal is held");
        assert_eq!(served(API).as_deref(), Some("web-3"));
    }
    let (code, body) = http_get(STATUS, "localhost", "/readyz", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("mass-removal guard"), "{body}");
    assert_eq!(status_json()["removal_held"]["removed"], 3);
    held_at
}

#[test]
fn an_acl_policy_that_stops_granting_reads_is_held_then_applied_after_the_grace() {
    let (_orphans, _consul, _backends, policy_id, sup) = acl_setup("4s");
    let held_at = deny_and_expect_hold(&sup, &policy_id, 1);
    // Every request is served until the guard applies the removal.
    let mut requests = 0;
    wait_until(LONG, "applied after the grace", || {
        let ok = served(API).is_some();
        let applied = sup.has_event(Event::RemovalApplied);
        assert!(ok || applied, "api lost before the removal was applied");
        requests += 1;
        applied
    });
    let held_for = held_at.elapsed();
    assert!(
        held_for >= Duration::from_secs(3),
        "applied after {held_for:?}"
    );
    assert_eq!(
        sup.events(Event::RemovalApplied)[0]["fields"]["by"],
        "grace"
    );
    // Both go with one reload; until the old process has stopped accepting
    // (it shares the listening socket for a moment), a request may still
    // reach it.
    wait_until(T, "api and www are gone", || {
        served(API).is_none() && served(WWW).is_none()
    });
    eprintln!("held {held_for:?} with a 4s grace ({requests} requests served), then applied");
}

#[test]
fn an_acl_policy_restored_lifts_the_hold_and_sighup_applies_it() {
    let (_orphans, _consul, _backends, policy_id, sup) = acl_setup("10m");
    deny_and_expect_hold(&sup, &policy_id, 1);

    // The policy is restored: the full answer lifts the hold.
    set_rules(&policy_id, READ);
    wait_until(T, "the hold lifts", || sup.has_event(Event::RemovalApplied));
    assert_eq!(
        sup.events(Event::RemovalApplied)[0]["fields"]["by"],
        "recovered"
    );
    wait_until(T, "/status no longer reports a hold", || {
        status_json()["removal_held"].is_null()
    });
    assert_eq!(served(API).as_deref(), Some("web-3"));

    // Denied again, and an operator confirms with SIGHUP: applied at once.
    deny_and_expect_hold(&sup, &policy_id, 2);
    sup.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_until(T, "SIGHUP applies it", || {
        sup.events(Event::RemovalApplied).len() == 2
    });
    assert_eq!(
        sup.events(Event::RemovalApplied)[1]["fields"]["by"],
        "sighup"
    );
    wait_until(T, "www and api are gone", || {
        served(WWW).is_none() && served(API).is_none()
    });
}
