//! What many load balancers cost the Consul leader (issue #14): the
//! leader's request rate with 1 and with 50 watchers, Consul's default
//! consistency against stale reads (`HAPROXY_CONSUL_MAX_STALE`), all
//! measured in one run against a real three-server cluster.
//!
//! ```text
//! sudo cargo run --release -p bench --example consul-watchers [-- SECONDS]
//! ```
//!
//! Root is needed: the example moves itself into a new network namespace,
//! where the servers take 127.0.0.2-4 with the default ports (nothing on
//! the host is touched). A watcher is the library's Consul watcher, the
//! code path `haproxy-supervisor run` uses; watcher `i` reads through
//! server `i % 3`'s HTTP API, as a fleet whose agents are spread over the
//! servers does. During each window (default 10 s) one instance's check
//! flips every 200 ms, so every watcher wakes five times a second.
//!
//! Figures per window, from each server's `/v1/agent/metrics` (Prometheus
//! counters, so a difference over the window is exact):
//! - `consul.rpc.query`: blocking queries a server ran. In default mode
//!   the leader runs them all (a follower forwards them); with `?stale`
//!   each server runs its own.
//! - `consul.rpc.request`: RPCs a server received from other servers and
//!   agents (forwarded reads among them).

use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haproxy_supervisor::discovery::consul::{self, Consistency, ConsulConfig};
use serde_json::json;

const SERVERS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const FLIP: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let seconds: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 10,
        Some(Ok(s)) if s > 0 => s,
        Some(_) => {
            eprintln!("usage: consul-watchers [SECONDS]");
            return ExitCode::from(2);
        }
    };
    // Before any thread exists: every thread and child inherits it.
    if let Err(e) = testkit::netns::try_enter() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(Duration::from_secs(seconds))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consul-watchers: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The three servers, killed on drop.
struct Cluster {
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_cluster() -> Result<Cluster, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for (i, ip) in SERVERS.iter().enumerate() {
        let data = dir.path().join(format!("server-{i}"));
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("consul");
        cmd.args(["agent", "-server", "-bootstrap-expect", "3"])
            .args([
                "-node",
                &format!("server-{}", i + 1),
                "-bind",
                ip,
                "-client",
                ip,
            ])
            .arg("-data-dir")
            .arg(&data)
            .args(["-log-level", "error", "-retry-interval", "200ms"])
            .args(SERVERS.iter().flat_map(|s| ["-retry-join", s]))
            .args(["-hcl", "performance { raft_multiplier = 1 }"])
            .args([
                "-hcl",
                "telemetry { prometheus_retention_time = \"120s\" disable_hostname = true }",
            ])
            .env("CHECKPOINT_DISABLE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        children.push(cmd.spawn().map_err(|e| format!("spawn consul: {e}"))?);
    }
    Ok(Cluster {
        children,
        _dir: dir,
    })
}

fn http(ip: &str) -> String {
    format!("http://{ip}:8500")
}

/// The leader's index in [`SERVERS`], once every server agrees on one.
async fn leader(c: &reqwest::Client) -> Option<usize> {
    let mut seen = Vec::new();
    for ip in SERVERS {
        let r = c
            .get(format!("{}/v1/status/leader", http(ip)))
            .send()
            .await
            .ok()?;
        seen.push(r.text().await.ok()?);
    }
    let l = seen[0].trim().trim_matches('"').to_string();
    if l.is_empty() || seen.iter().any(|s| s.trim().trim_matches('"') != l) {
        return None;
    }
    SERVERS.iter().position(|ip| l == format!("{ip}:8300"))
}

/// `consul.rpc.query` and `consul.rpc.request` of one server.
async fn counters(c: &reqwest::Client, ip: &str) -> Result<(f64, f64), String> {
    let text = c
        .get(format!("{}/v1/agent/metrics?format=prometheus", http(ip)))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let get = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .next()
            .unwrap_or(0.0)
    };
    Ok((get("consul_rpc_query"), get("consul_rpc_request")))
}

async fn register(c: &reqwest::Client, via: &str, status: &str) -> Result<(), String> {
    let body = json!({
        "Node": "backends", "Address": "127.0.0.1",
        "Service": {"ID": "web-1", "Service": "www", "Address": "127.0.0.1", "Port": 9001,
                    "Tags": ["HAPROXY.ENABLE=true"]},
        "Check": {"CheckID": "web-1", "Name": "web-1", "ServiceID": "web-1", "Status": status}
    });
    let r = c
        .put(format!("{}/v1/catalog/register", http(via)))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("catalog register answered {}", r.status()));
    }
    Ok(())
}

struct Row {
    watchers: usize,
    mode: &'static str,
    leader_query: f64,
    leader_request: f64,
    followers_query: f64,
    updates_per_watcher: f64,
}

async fn run(window: Duration) -> Result<(), String> {
    let _cluster = start_cluster()?;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let lead = loop {
        if let Some(l) = leader(&c).await {
            break l;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("no leader after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lead_ip = SERVERS[lead];
    eprintln!("leader: {lead_ip} (after {:?})", t0.elapsed());
    register(&c, lead_ip, "passing").await?;

    let mut rows = Vec::new();
    for watchers in [1usize, 50] {
        for (mode, consistency) in [
            ("default", Consistency::Default),
            (
                "stale (max 2s)",
                Consistency::Stale {
                    max_stale: Duration::from_secs(2),
                },
            ),
        ] {
            rows.push(measure(&c, lead, watchers, mode, consistency, window).await?);
        }
    }

    let out = consul_version();
    println!("\nConsul {out}, 3 servers, leader {lead_ip}; window {window:?}; one check flips every {FLIP:?}\n");
    println!("| watchers | reads | leader: blocking queries/s | leader: RPC requests/s | followers: blocking queries/s | catalog updates/s per watcher |");
    println!("|---:|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            r.watchers,
            r.mode,
            r.leader_query,
            r.leader_request,
            r.followers_query,
            r.updates_per_watcher
        );
    }
    Ok(())
}

async fn measure(
    c: &reqwest::Client,
    lead: usize,
    watchers: usize,
    mode: &'static str,
    consistency: Consistency,
    window: Duration,
) -> Result<Row, String> {
    let updates = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..watchers {
        let mut cfg = ConsulConfig::new(http(SERVERS[i % SERVERS.len()]));
        cfg.consistency = consistency;
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        tasks.push(tokio::spawn(consul::watch(cfg, tx, Default::default())));
        let updates = updates.clone();
        // Counts the catalogs each watcher publishes.
        receivers.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                updates.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Every watcher has its first catalog and blocks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flipper = {
        let c = c.clone();
        let lead_ip = SERVERS[lead];
        tokio::spawn(async move {
            let mut passing = true;
            loop {
                tokio::time::sleep(FLIP).await;
                passing = !passing;
                let s = if passing { "passing" } else { "warning" };
                if let Err(e) = register(&c, lead_ip, s).await {
                    eprintln!("flip: {e}");
                }
            }
        })
    };
    let before: Vec<(f64, f64)> = snapshot(c).await?;
    let u0 = updates.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let after = snapshot(c).await?;
    let secs = t0.elapsed().as_secs_f64();
    let u1 = updates.load(Ordering::Relaxed);
    flipper.abort();
    for t in &tasks {
        t.abort();
    }
    for t in &receivers {
        t.abort();
    }
    let rate = |i: usize, f: fn(&(f64, f64)) -> f64| (f(&after[i]) - f(&before[i])) / secs;
    let followers_query = (0..SERVERS.len())
        .filter(|i| *i != lead)
        .map(|i| rate(i, |c| c.0))
        .sum();
    let row = Row {
        watchers,
        mode,
        leader_query: rate(lead, |c| c.0),
        leader_request: rate(lead, |c| c.1),
        followers_query,
        updates_per_watcher: (u1 - u0) as f64 / secs / watchers as f64,
    };
    eprintln!(
        "{watchers:>2} watchers, {mode}: leader {:.1} blocking queries/s, {:.1} RPC requests/s; followers {:.1} blocking queries/s",
        row.leader_query, row.leader_request, row.followers_query
    );
    // Let the aborted watchers' connections close before the next window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(row)
}

async fn snapshot(c: &reqwest::Client) -> Result<Vec<(f64, f64)>, String> {
    let mut v = Vec::new();
    for ip in SERVERS {
        v.push(counters(c, ip).await?);
    }
    Ok(v)
}

fn consul_version() -> String {
    Command::new("consul")
        .arg("version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("Consul ").to_string())
        })
        .unwrap_or_else(|| "?".into())
}
