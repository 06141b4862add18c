//! Issue #11 (SPEC §14): the status server — `/metrics` scraped by a real
//! Prometheus server, `/readyz`, `/status`, `/healthz` — and HAProxy's own
//! Prometheus exporter on the stats port. Each test in its own network
//! namespace. Run as root: `cargo test --release --test status`.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use testkit::*;

const STATUS: &str = "127.0.0.1:4445";
const STATS: &str = "127.0.0.1:4444";
const PROM: &str = "127.0.0.1:9090";

fn status_get(path: &str) -> (u16, String) {
    http_get(STATUS, "localhost", path, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("GET {path} on the status server: {e}"))
}

/// `promtool check metrics` on `text`: (ok, its output).
fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut c = Command::new(require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A real Prometheus server scraping the supervisor's and HAProxy's
/// `/metrics` every second.
struct Prometheus {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start() -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-test-")
            .tempdir()
            .unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n\
                 \x20 - job_name: supervisor\n    static_configs:\n      - targets: ['{STATUS}']\n\
                 \x20 - job_name: haproxy\n    static_configs:\n      - targets: ['{STATS}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(require("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={PROM}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, _dir: dir };
        wait_until(Duration::from_secs(30), "prometheus ready", || {
            matches!(
                http_get(PROM, "localhost", "/-/ready", Duration::from_secs(1)),
                Ok((200, _))
            )
        });
        p
    }

    /// The values of an instant query.
    fn query(&self, q: &str) -> Vec<f64> {
        let path = format!(
            "/api/v1/query?query={}",
            q.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        );
        let Ok((200, body)) = http_get(PROM, "localhost", &path, Duration::from_secs(2)) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus scrapes both endpoints; a SIGHUP reload shows in the reload
/// counter as Prometheus reports it; HAProxy's frontend metrics are there;
/// promtool accepts both outputs.
#[test]
fn prometheus_scrapes_the_supervisor_and_haproxy() {
    netns::enter();
    let a = Backend::start("web-1");
    let files = Files::new();
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    let sup = spawn_serving(&files.render_args(), &env("seamless"));

    let (code, ours) = status_get("/metrics");
    assert_eq!(code, 200);
    let (ok, out) = promtool_check(&ours);
    assert!(ok, "promtool on the supervisor's metrics: {out}\n{ours}");
    let (code, theirs) = http_get(STATS, "localhost", "/metrics", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 200);
    assert!(theirs.contains("haproxy_frontend_http_requests_total"));
    // HAProxy 2.6's exporter is parsed; promtool's only complaint is its
    // own naming of a counter (`haproxy_process_failed_resolutions`,
    // without `_total`), which is HAProxy's, not ours to change.
    let (ok, out) = promtool_check(&theirs);
    let lint_only = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(|l| l.ends_with("counter metrics should have \"_total\" suffix"));
    assert!(ok || lint_only, "promtool on HAProxy's metrics: {out}");
    eprintln!(
        "promtool on HAProxy's exporter: {}",
        if ok { "ok" } else { out.trim() }
    );

    let prom = Prometheus::start();
    let reloads = r#"sum(haproxy_supervisor_reloads_total{result="ok"})"#;
    wait_until(
        Duration::from_secs(20),
        "prometheus has the reload counter",
        || !prom.query(reloads).is_empty(),
    );
    let before = prom.query(reloads)[0];
    sup.signal(Signal::SIGHUP).unwrap();
    wait_done(&sup, 2, T);
    wait_until(
        Duration::from_secs(20),
        "the SIGHUP reload in prometheus",
        || {
            prom.query(reloads)
                .first()
                .is_some_and(|v| *v >= before + 1.0)
        },
    );
    for _ in 0..20 {
        let _ = get(WWW);
    }
    wait_until(
        Duration::from_secs(20),
        "haproxy's frontend metrics in prometheus",
        || {
            prom.query(r#"haproxy_frontend_http_requests_total{proxy="app_http_in"}"#)
                .first()
                .is_some_and(|v| *v > 0.0)
        },
    );
    assert_eq!(prom.query(r#"up{job="supervisor"}"#), [1.0]);
    assert_eq!(prom.query(r#"up{job="haproxy"}"#), [1.0]);
}

/// `/readyz` is 503 until Consul first answers, 200 after; `/status` shows
/// a service left out by a bad tag and why; unknown paths are 404; the
/// status port taken is a start-up error naming it.
#[test]
fn readiness_follows_consul_and_status_shows_what_was_left_out() {
    netns::enter();
    let a = Backend::start("web-1");
    let sup = Supervisor::spawn_run(
        &["--consul", "http://127.0.0.1:8500"],
        &[
            ("HAPROXY_LOG_FORMAT", "json"),
            ("HAPROXY_DOM", "example.com"),
        ],
    );
    wait_until(T, "status server up", || {
        http_get(STATUS, "localhost", "/healthz", Duration::from_secs(1)).is_ok()
    });
    // 503 while starting, then 503 because Consul has not answered.
    wait_until(T, "not ready: waiting for discovery", || {
        let (code, body) = status_get("/readyz");
        assert_eq!(code, 503, "{body}");
        body.contains("discovery has not answered")
    });
    // Not a wait: it stays not ready while Consul is away (500 ms of it).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_get("/readyz").0, 503);
    assert_eq!(status_get("/healthz").0, 200);
    assert_eq!(status_get("/nope").0, 404);

    let consul = Consul::start();
    let reg = |id: &str, name: &str, tags: &[&str]| {
        json!({"ID": id, "Name": name, "Address": "127.0.0.1", "Port": a.port(), "Tags": tags,
               "Check": {"CheckID": format!("{id}-ttl"), "TTL": "300s", "Status": "passing"}})
    };
    consul.register(&reg("web-1", "www", &["HAPROXY.ENABLE=true"]));
    consul.register(&reg(
        "odd-1",
        "odd",
        &["HAPROXY.ENABLE=true", "HAPROXY.BACKEND.BALANCE=bogus"],
    ));
    wait_until(Duration::from_secs(20), "ready", || {
        status_get("/readyz").0 == 200
    });
    wait_serving(WWW, T);
    let (code, body) = status_get("/status");
    assert_eq!(code, 200);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["ready"], true, "{st}");
    assert!(st["serving"]["pid"].as_i64().is_some(), "{st}");
    assert_eq!(st["services_rendered"], 1, "{st}");
    let left = st["left_out"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{st}");
    assert_eq!(left[0]["service"], "odd");
    assert!(
        left[0]["reason"]
            .as_str()
            .unwrap()
            .contains("HAPROXY.BACKEND.BALANCE"),
        "{st}"
    );
    assert!(
        st["discovery"]["last_success_unix"].as_f64().is_some(),
        "{st}"
    );
    let metrics = status_get("/metrics").1;
    assert!(
        metrics.contains("haproxy_supervisor_services_left_out 1"),
        "{metrics}"
    );

    // A second supervisor on the same status port: a clear start-up error.
    let mut other = Supervisor::spawn_run(
        &["--consul", "http://127.0.0.1:8500"],
        &[
            ("HAPROXY_HTTP_PORT", "8081"),
            ("HAPROXY_STATS_PORT", "4446"),
            ("HAPROXY_LOG_FORMAT", "json"),
        ],
    );
    let st = other
        .wait_timeout(Duration::from_secs(10))
        .expect("the second supervisor exits");
    assert!(!st.success());
    assert!(
        fatal_error(&other.log())
            .is_some_and(|e| e.contains("HAPROXY_STATUS_PORT") && e.contains("4445")),
        "no fatal event naming the status port: {}",
        other.log()
    );
    drop(sup);
}
