//! What an operator looks at (SPEC §14): the supervisor's status server on
//! `HAPROXY_STATUS_PORT` — `/metrics` (Prometheus text format, through the
//! prometheus-client crate), `/healthz`, `/readyz` and `/status` (JSON).
//!
//! The supervisor loop owns all state; it counts events here as they happen
//! and publishes a [`Snapshot`] of the rest after every step of its loop.
//! The server only reads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::discovery::Health;
use crate::events::Event;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    strategy: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LiveLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// The metrics, all prefixed `haproxy_supervisor_`.
struct Metrics {
    reloads: Family<ReloadLabels, Counter>,
    live_ops: Family<LiveLabels, Counter>,
    reload_duration: Histogram,
    check_failures: Counter,
    restarts: Counter,
    processes: Family<StateLabels, Gauge>,
    services: Gauge,
    servers: Gauge,
    left_out: Gauge,
    removal_held: Gauge,
    discovery_errors: Counter,
    discovery_last_success: Gauge<f64, AtomicU64>,
    syn_drop_rules: Gauge,
}

/// The last reload, as `/status` shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LastReload {
    pub trigger: String,
    pub strategy: String,
    pub result: String,
    pub duration_ms: u64,
    /// Unix time, seconds.
    pub at: f64,
    pub error: Option<String>,
}

/// A service not rendered, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeftOut {
    pub service: String,
    pub reason: String,
}

/// A catalog answer the mass-removal guard holds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RemovalHeld {
    pub removed: usize,
    pub serving: usize,
    pub services: usize,
}

/// What the loop publishes after each step.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Snapshot {
    /// Why the supervisor is not ready (`None`: ready).
    pub not_ready: Option<String>,
    pub serving_generation: Option<u64>,
    pub serving_pid: Option<i32>,
    pub draining: usize,
    pub strategy: String,
    pub live_changes: bool,
    pub services_rendered: usize,
    pub servers_rendered: usize,
    pub left_out: Vec<LeftOut>,
    pub reloads: u64,
    pub failed_reloads: u64,
    pub restarts: u64,
    pub live_applied: u64,
    pub live_ops: u64,
    pub live_failures: u64,
    pub removal_held: Option<RemovalHeld>,
}

#[derive(Debug, Default)]
struct Events {
    last_reload: Option<LastReload>,
}

/// Shared between the loop (writes) and the status server (reads).
pub struct Status {
    /// The discovery source's answers and errors, written by its watcher.
    discovery: Arc<Health>,
    registry: Registry,
    m: Metrics,
    snapshot: Mutex<Snapshot>,
    events: Mutex<Events>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Status {
    /// The status of a supervisor whose discovery source reports into
    /// `discovery` (the same value its watcher is given).
    pub fn new(discovery: Arc<Health>) -> Arc<Status> {
        let m = Metrics {
            reloads: Family::default(),
            live_ops: Family::default(),
            reload_duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            check_failures: Counter::default(),
            restarts: Counter::default(),
            processes: Family::default(),
            services: Gauge::default(),
            servers: Gauge::default(),
            left_out: Gauge::default(),
            removal_held: Gauge::default(),
            discovery_errors: Counter::default(),
            discovery_last_success: Gauge::default(),
            syn_drop_rules: Gauge::default(),
        };
        let mut r = Registry::with_prefix("haproxy_supervisor");
        r.register(
            "reloads",
            "HAProxy generations started, by reload strategy and result (ok, failed)",
            m.reloads.clone(),
        );
        r.register(
            "live_operations",
            "Runtime API operations applied without a reload, by kind and result",
            m.live_ops.clone(),
        );
        r.register(
            "reload_duration_seconds",
            "Time from starting a new HAProxy generation until it listens",
            m.reload_duration.clone(),
        );
        r.register(
            "config_check_failures",
            "Rendered or external configs haproxy -c refused",
            m.check_failures.clone(),
        );
        r.register(
            "haproxy_restarts",
            "HAProxy restarted after the serving one died",
            m.restarts.clone(),
        );
        r.register(
            "haproxy_processes",
            "HAProxy processes by state (serving, draining)",
            m.processes.clone(),
        );
        r.register(
            "services_rendered",
            "Services in the config that serves",
            m.services.clone(),
        );
        r.register(
            "servers_rendered",
            "Servers in the config that serves",
            m.servers.clone(),
        );
        r.register(
            "services_left_out",
            "Services not rendered (an invalid tag, a conflict, or refused by HAProxy)",
            m.left_out.clone(),
        );
        r.register(
            "removal_held",
            "1 while the mass-removal guard holds a catalog answer (HAPROXY_REMOVAL_GUARD)",
            m.removal_held.clone(),
        );
        r.register(
            "discovery_errors",
            "Failed requests to the discovery source (Consul, catalog file)",
            m.discovery_errors.clone(),
        );
        r.register(
            "discovery_last_success_timestamp_seconds",
            "Unix time of the last successful answer of the discovery source",
            m.discovery_last_success.clone(),
        );
        r.register(
            "syn_drop_rules",
            "iptables SYN-drop rules of ours in place",
            m.syn_drop_rules.clone(),
        );
        Arc::new(Status {
            discovery,
            registry: r,
            m,
            snapshot: Mutex::new(Snapshot {
                not_ready: Some("starting".into()),
                ..Snapshot::default()
            }),
            events: Mutex::new(Events::default()),
        })
    }

    /// A generation started (or failed to).
    pub fn reload(&self, trigger: &str, strategy: &str, took: Duration, error: Option<String>) {
        let result = if error.is_none() { "ok" } else { "failed" };
        self.m
            .reloads
            .get_or_create(&ReloadLabels {
                strategy: strategy.into(),
                result: result.into(),
            })
            .inc();
        if error.is_none() {
            self.m.reload_duration.observe(took.as_secs_f64());
        }
        let mut e = self.events.lock().unwrap_or_else(|e| e.into_inner());
        e.last_reload = Some(LastReload {
            trigger: trigger.into(),
            strategy: strategy.into(),
            result: result.into(),
            duration_ms: took.as_millis() as u64,
            at: now_unix(),
            error,
        });
    }

    pub fn live_op(&self, kind: &str, ok: bool) {
        self.m
            .live_ops
            .get_or_create(&LiveLabels {
                kind: kind.into(),
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    pub fn check_failed(&self) {
        self.m.check_failures.inc();
    }

    pub fn restarted(&self) {
        self.m.restarts.inc();
    }

    pub fn syn_drop_rules(&self, n: usize) {
        self.m.syn_drop_rules.set(n as i64);
    }

    /// What the loop published last.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The loop's view after a step.
    pub fn publish(&self, s: Snapshot) {
        for (state, n) in [
            ("serving", s.serving_pid.is_some() as usize),
            ("draining", s.draining),
        ] {
            self.m
                .processes
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.m.services.set(s.services_rendered as i64);
        self.m.servers.set(s.servers_rendered as i64);
        self.m.left_out.set(s.left_out.len() as i64);
        self.m.removal_held.set(s.removal_held.is_some() as i64);
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// The metrics in Prometheus' text format (0.0.4), which every scraper
    /// and `promtool check metrics` read: the crate writes OpenMetrics,
    /// whose counter families are named without `_total` and which ends in
    /// `# EOF`.
    fn metrics_text(&self) -> String {
        // The discovery watcher counts into its Health.
        let h = &self.discovery;
        let counted = self.m.discovery_errors.get();
        if h.errors() > counted {
            self.m.discovery_errors.inc_by(h.errors() - counted);
        }
        self.m
            .discovery_last_success
            .set(h.last_ok().unwrap_or(0.0));
        let mut om = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut om, &self.registry);
        let counters: std::collections::BTreeSet<String> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .map(str::to_string)
            .collect();
        let mut out = String::with_capacity(om.len());
        for line in om.lines() {
            if line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
                let rest = line.strip_prefix(p)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{p}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    fn status_json(&self) -> String {
        let s = self
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let e = self.events.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "ready": s.not_ready.is_none(),
            "not_ready_because": s.not_ready,
            "serving": {
                "generation": s.serving_generation,
                "pid": s.serving_pid,
                "draining": s.draining,
            },
            "strategy": s.strategy,
            "last_reload": e.last_reload,
            "counters": {
                "reloads": s.reloads,
                "failed_reloads": s.failed_reloads,
                "restarts": s.restarts,
            },
            "live": {
                "enabled": s.live_changes,
                "changes_applied": s.live_applied,
                "operations": s.live_ops,
                "failures": s.live_failures,
            },
            "services_rendered": s.services_rendered,
            "servers_rendered": s.servers_rendered,
            "left_out": s.left_out,
            "removal_held": s.removal_held,
            "discovery": {
                "last_success_unix": self.discovery.last_ok(),
                "errors": self.discovery.errors(),
                "last_error": self.discovery.last_error(),
            },
        })
        .to_string()
    }

    /// One request to the status server.
    fn answer(&self, method: &hyper::Method, path: &str) -> Response<Full<Bytes>> {
        let reply = |code: StatusCode, ctype: &str, body: String| {
            Response::builder()
                .status(code)
                .header("content-type", ctype)
                .body(Full::new(Bytes::from(body)))
                .expect("a valid response")
        };
        if method != hyper::Method::GET && method != hyper::Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match path {
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics_text(),
            ),
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => {
                let not_ready = self
                    .snapshot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .not_ready
                    .clone();
                match not_ready {
                    None => reply(StatusCode::OK, "text/plain", "ready\n".into()),
                    Some(why) => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("not ready: {why}\n"),
                    ),
                }
            }
            "/status" => reply(StatusCode::OK, "application/json", self.status_json()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: /metrics, /healthz, /readyz, /status\n".into(),
            ),
        }
    }
}

/// The status server's port cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("HAPROXY_STATUS_PORT: cannot listen on {addr} for the status server: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the status server's port: an error names it.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/status` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, status: Arc<Status>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                crate::log!(warn, Event::StatusAcceptFailed, error = %e, "status server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let st = status.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(st.answer(req.method(), req.uri().path())) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(io, svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_and_counters_end_in_total() {
        let s = Status::new(Default::default());
        s.reload("sighup", "seamless", Duration::from_millis(80), None);
        s.live_op("add_server", true);
        let text = s.metrics_text();
        assert!(text
            .contains("haproxy_supervisor_reloads_total{strategy=\"seamless\",result=\"ok\"} 1"));
        assert!(text.contains(
            "haproxy_supervisor_live_operations_total{kind=\"add_server\",result=\"ok\"} 1"
        ));
        assert!(text.contains("haproxy_supervisor_reload_duration_seconds_bucket"));
    }

    #[test]
    fn readiness_and_unknown_paths() {
        let s = Status::new(Default::default());
        s.publish(Snapshot {
            not_ready: Some("no checked config serves yet".into()),
            ..Snapshot::default()
        });
        let get = |p: &str| s.answer(&hyper::Method::GET, p).status();
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/healthz"), StatusCode::OK);
        assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
        s.publish(Snapshot::default());
        assert_eq!(get("/readyz"), StatusCode::OK);
    }
}
