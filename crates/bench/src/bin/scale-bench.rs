//! `scale-bench`: how fast catalog changes reach HAProxy, and how the
//! supervisor scales with the number of services.
//!
//! ```text
//! cargo run --release -p bench --bin scale-bench -- [--changes 60]
//!     [--sizes 100,1000,10000] [--out bench/results]
//!     [--haproxy34 /opt/haproxy-supervisor/haproxy-3.4/haproxy]
//! ```
//!
//! Runs as root in its own network namespace (see `reload-bench`). Three
//! parts:
//!
//! - **propagation**: a real `consul agent -dev` and the supervisor on it
//!   (default settings: `HAPROXY_RELOAD_WAIT`, `HAPROXY_LIVE_WAIT`, live
//!   changes on). Time from a Consul change to HAProxy routing accordingly,
//!   polled with real HTTP requests every ~5 ms, two demo backends telling
//!   which one answered. Server-only changes (applied live, SPEC §10): a new
//!   instance of a served service registered until the first request reaches
//!   it; deregistered until no more requests do; the TTL check of one of two
//!   instances turning critical until no more requests reach it, and passing
//!   again until one does; the TTL check of a service's only instance
//!   critical until its host answers 503, passing until 200. Structural (a
//!   reload before HAProxy 3.4): a new service registered until its host
//!   answers 200, then deregistered until it answers 503. Per phase the
//!   live changes applied, the catalog reloads and the HAProxy processes
//!   started (sampled from /proc every 20 ms) are counted.
//! - **dynamic backends** (`--haproxy34 <path>`, issue 20): the same new
//!   service → 200 and removed → 503, on a second Consul and supervisor
//!   running HAProxy 3.4, where both are live (a backend added from the
//!   running profile, published, routed by the hosts map; removed: taken
//!   out of the map, parked, deleted). Printed beside the reloads of the
//!   first HAProxy.
//! - **scale**: the supervisor on a catalog file of N services × 3
//!   instances: time from start to the checked config and to HAProxy
//!   serving, the supervisor's peak RSS (VmHWM), and every host answering.
//! - **first vs last**: with the largest catalog, requests per second for
//!   the last service's host against the first's, in the same run.
//!
//! Writes `scale.md` and `scale.json` into the output directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use testkit::http;
use testkit::load::{Load, LoadOptions};
use testkit::measure;
use testkit::{Backend, Consul, Event, HaproxySampler, Proc};

const DOM: &str = "example.com";

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Change propagation through Consul, and the supervisor at 100 to 10,000 services"
)]
struct Args {
    /// Changes of each kind in the propagation part
    #[arg(long, default_value_t = 60)]
    changes: usize,
    /// Poll interval while waiting for HAProxy to follow a change, ms
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Catalog sizes for the scale part, comma-separated: `N` services of
    /// `--instances` instances each, `NxK` for K instances each, and a
    /// `-nocheck` suffix for a template without health checks
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,1000,10000,10000x3-nocheck,10000x1"
    )]
    sizes: Vec<String>,
    /// Instances per service in the scale part
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Clients for the first-vs-last comparison
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Seconds per first-vs-last load run (each host is measured twice,
    /// alternating)
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Skip the Consul propagation part
    #[arg(long)]
    skip_propagation: bool,
    /// An HAProxy 3.4 (or later) binary: also time a new service → routed
    /// and a removed service → 503 on it, where both are live (dynamic
    /// backends); scripts/setup.sh installs one at
    /// /opt/haproxy-supervisor/haproxy-3.4/haproxy
    #[arg(long)]
    haproxy34: Option<PathBuf>,
    /// Skip the scale part
    #[arg(long)]
    skip_scale: bool,
    #[command(flatten)]
    common: bench::Common,
}

struct Env {
    args: Args,
    haproxy_bin: PathBuf,
    work: PathBuf,
    backend: SocketAddr,
    /// A second demo backend (`web-2`): new and critical instances live
    /// there, so an answer tells whether a request reached them.
    backend2: SocketAddr,
    addr: SocketAddr,
}

fn main() {
    let args = Args::parse();
    bench::main("scale-bench", || real_main(args));
}

fn real_main(args: Args) -> Result<(), String> {
    let haproxy_bin = testkit::which("haproxy").ok_or("haproxy is not installed")?;
    let work = args.common.scratch_dir("scale-bench")?;
    let web = [Backend::start("web-1"), Backend::start("web-2")];
    let [backend, backend2] = [&web[0], &web[1]].map(Backend::socket_addr);
    let env = Env {
        addr: SocketAddr::from(([127, 0, 0, 1], args.common.http_port)),
        args: args.clone(),
        haproxy_bin: haproxy_bin.clone(),
        work: work.clone(),
        backend,
        backend2,
    };
    let mut meta = json!({
        "machine": measure::machine(),
        "haproxy": testkit::haproxy_version(&haproxy_bin),
        "consul": consul_version(),
        "date": measure::now_utc(),
        "machine_load_at_start": bench::machine_load(),
    });
    let propagation = if args.skip_propagation {
        None
    } else {
        Some(propagation(&env)?)
    };
    let dynamic = match &args.haproxy34 {
        Some(bin) => Some(dynamic_backends(&env, bin)?),
        None => None,
    };
    let scale = if args.skip_scale {
        None
    } else {
        Some(scale(&env)?)
    };
    meta["machine_load_at_end"] = json!(bench::machine_load());
    let md = markdown(
        &args,
        &meta,
        propagation.as_ref(),
        dynamic.as_ref(),
        scale.as_ref(),
    );
    let j = json!({
        "bench": "scale-bench",
        "meta": meta,
        "config": {
            "changes": args.changes,
            "poll_ms": args.poll_ms,
            "sizes": args.sizes,
            "instances": args.instances,
            "first_vs_last": {
                "clients": args.clients,
                "secs_per_run": args.secs,
                "connection": "new TCP connection per request (Connection: close)",
            },
        },
        "propagation": propagation,
        "dynamic_backends": dynamic,
        "scale": scale,
    });
    args.common
        .write_report("scale", "scale-bench results", &md, &j)?;
    println!("{md}");
    println!(
        "written: {0}/scale.md, {0}/scale.json",
        args.common.out.display()
    );
    args.common.finish(&work);
    Ok(())
}

fn consul_version() -> String {
    testkit::first_line_of(
        Command::new(testkit::which("consul").unwrap_or_else(|| "consul".into())).arg("version"),
    )
}

// ---------------------------------------------------------------------------
// Part (a): propagation through Consul
// ---------------------------------------------------------------------------

/// Polls `host` every `poll` until it answers `want`; the time since `t0`.
fn until_status(
    env: &Env,
    host: &str,
    want: u16,
    t0: Instant,
    timeout: Duration,
) -> Option<Duration> {
    let poll = Duration::from_millis(env.args.poll_ms);
    loop {
        if http::status_of(&env.addr, host, Duration::from_secs(1)).ok() == Some(want) {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return None;
        }
        thread::sleep(poll);
    }
}

fn summary(ms: &[f64], timeouts: usize) -> serde_json::Value {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "timeouts": timeouts,
        "p50_ms": measure::quantile(&v, 0.5),
        "p90_ms": measure::quantile(&v, 0.9),
        "p99_ms": measure::quantile(&v, 0.99),
        "min_ms": v.first().copied().unwrap_or(0.0),
        "max_ms": v.last().copied().unwrap_or(0.0),
        "all_ms": ms,
    })
}

/// What answered a GET of `host`: `Ok(body)` of a 200 (the demo backend's
/// name), `Err(())` for anything else.
fn who(env: &Env, host: &str) -> Result<String, ()> {
    match http::get_at(&env.addr, host, Duration::from_secs(1)) {
        Ok(r) if r.is_success() => Ok(r.text()),
        _ => Err(()),
    }
}

/// How many answers in a row, none from the instance, count as "no more
/// requests reach it" (the two instances take turns otherwise).
const NONE_IN_A_ROW: usize = 4;

/// One timed series of changes.
#[derive(Default)]
struct Series {
    ms: Vec<f64>,
    timeouts: usize,
    /// Polling requests that did not get a 200 while waiting.
    failed_polls: usize,
}

impl Series {
    /// One change's time to `Some(elapsed)`, or a timeout.
    fn record(&mut self, took: Option<Duration>) {
        match took {
            Some(d) => self.ms.push(d.as_secs_f64() * 1000.0),
            None => self.timeouts += 1,
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut v = summary(&self.ms, self.timeouts);
        v["failed_polls"] = json!(self.failed_polls);
        v
    }
}

/// Polls `host` every `--poll-ms` until `want` holds for `in_a_row` 200
/// answers in a row (their bodies); records the time from `t0` to the
/// first of those answers. A non-200 answer breaks the run and is counted.
fn until_answers(
    env: &Env,
    host: &str,
    want: impl Fn(&str) -> bool,
    in_a_row: usize,
    t0: Instant,
    timeout: Duration,
    into: &mut Series,
) {
    let poll = Duration::from_millis(env.args.poll_ms);
    let (mut run, mut first) = (0, Duration::ZERO);
    loop {
        match who(env, host) {
            Ok(body) if want(&body) => {
                if run == 0 {
                    first = t0.elapsed();
                }
                run += 1;
                if run >= in_a_row {
                    into.ms.push(first.as_secs_f64() * 1000.0);
                    return;
                }
            }
            Ok(_) => run = 0,
            Err(()) => {
                run = 0;
                into.failed_polls += 1;
            }
        }
        if t0.elapsed() > timeout {
            into.timeouts += 1;
            return;
        }
        thread::sleep(poll);
    }
}

/// A phase of the propagation part: its wall-clock window and the HAProxy
/// processes sampled meanwhile.
struct Phase {
    name: &'static str,
    changes: usize,
    from: f64,
    to: f64,
    started_sampled: usize,
    checks_sampled: usize,
}

fn phase<T>(
    sup_pid: i32,
    name: &'static str,
    f: impl FnOnce() -> Result<(T, usize), String>,
) -> Result<(T, Phase), String> {
    let sampler = HaproxySampler::start(sup_pid, Duration::from_millis(20));
    let from = measure::epoch_secs(std::time::SystemTime::now());
    let r = f();
    let to = measure::epoch_secs(std::time::SystemTime::now());
    let sampled = sampler.finish();
    let (v, changes) = r?;
    eprintln!("scale-bench: propagation: {name}: {changes} changes timed");
    Ok((
        v,
        Phase {
            name,
            changes,
            from,
            to,
            started_sampled: sampled.started(),
            checks_sampled: sampled.checks,
        },
    ))
}

fn propagation(env: &Env) -> Result<serde_json::Value, String> {
    let dir = env.work.join("propagation");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut consul = Consul::start();
    eprintln!("scale-bench: propagation: consul ready");
    let port = env.backend.port();
    let port2 = env.backend2.port();
    consul.register(
        &json!({"ID": "www-1", "Name": "www", "Address": "127.0.0.1", "Port": port,
                    "Tags": ["HAPROXY.ENABLE=true"]}),
    );
    // The services of the live phases exist from the start, so their
    // changes are server-only: `inst` on web-1, `crit` on web-1 and (with a
    // TTL check) web-2, `ttl-svc` on web-1 alone with a TTL check.
    consul.register(
        &json!({"ID": "inst-1", "Name": "inst", "Address": "127.0.0.1", "Port": port,
                    "Tags": ["HAPROXY.ENABLE=true"]}),
    );
    consul.register(
        &json!({"ID": "crit-1", "Name": "crit", "Address": "127.0.0.1", "Port": port,
                    "Tags": ["HAPROXY.ENABLE=true"]}),
    );
    let crit_check = "crit-2-ttl";
    consul.register(
        &json!({"ID": "crit-2", "Name": "crit", "Address": "127.0.0.1", "Port": port2,
                    "Tags": ["HAPROXY.ENABLE=true"],
                    "Check": {"CheckID": crit_check, "TTL": "1h", "Status": "passing"}}),
    );
    let ttl_check = "ttl-svc-1-ttl";
    consul.register(
        &json!({"ID": "ttl-svc-1", "Name": "ttl-svc", "Address": "127.0.0.1", "Port": port,
                    "Tags": ["HAPROXY.ENABLE=true"],
                    "Check": {"CheckID": ttl_check, "TTL": "1h", "Status": "passing"}}),
    );
    let mut cmd = testkit::bench_command(&dir, DOM, env.args.common.http_port, &env.haproxy_bin);
    cmd.env("CONSUL_HTTP_ADDR", consul.addr());
    let mut sup = Proc::spawn(cmd, Some(&dir.join("supervisor.log")), false)?;
    sup.wait_log(Duration::from_secs(30), |t| {
        testkit::log_has_event(t, Event::ReloadDone)
    })?;
    for svc in ["www", "inst", "crit", "ttl-svc"] {
        if !http::wait_status(
            &env.addr,
            &format!("{svc}.{DOM}"),
            200,
            Duration::from_secs(15),
        ) {
            return Err(format!("propagation: {svc} does not answer 200"));
        }
    }
    let timeout = Duration::from_secs(10);
    // Between changes: long enough for a structural change's reload wait
    // (100 ms min) and reload to settle; server-only changes need less.
    let gap = Duration::from_millis(300);
    let live_gap = Duration::from_millis(150);
    let n = env.args.changes;
    let pid = sup.pid();
    let mut phases = Vec::new();
    let from_web2 = |b: &str| b == "web-2";
    let not_web2 = |b: &str| b != "web-2";

    // Live: a new instance of `inst` on web-2, then deregistered.
    let host = format!("inst.{DOM}");
    let ((inst_add, inst_del), ph) = phase(pid, "instance added / removed", || {
        let (mut add, mut del) = (Series::default(), Series::default());
        for i in 0..n {
            let id = format!("inst-new-{i:03}");
            let t0 = Instant::now();
            consul.register(
                &json!({"ID": id, "Name": "inst", "Address": "127.0.0.1", "Port": port2,
                            "Tags": ["HAPROXY.ENABLE=true"]}),
            );
            until_answers(env, &host, from_web2, 1, t0, timeout, &mut add);
            thread::sleep(live_gap);
            let t0 = Instant::now();
            consul.deregister(&id);
            until_answers(env, &host, not_web2, NONE_IN_A_ROW, t0, timeout, &mut del);
            thread::sleep(live_gap);
        }
        Ok(((add, del), 2 * n))
    })?;
    phases.push(ph);

    // Live: the TTL check of `crit-2` (web-2) critical, then passing.
    let host = format!("crit.{DOM}");
    let ((crit, crit_pass), ph) = phase(pid, "check critical / passing (2 instances)", || {
        let (mut crit, mut pass) = (Series::default(), Series::default());
        for _ in 0..n {
            let t0 = Instant::now();
            consul.ttl_fail(crit_check);
            until_answers(env, &host, not_web2, NONE_IN_A_ROW, t0, timeout, &mut crit);
            thread::sleep(live_gap);
            let t0 = Instant::now();
            consul.ttl_pass(crit_check);
            until_answers(env, &host, from_web2, 1, t0, timeout, &mut pass);
            thread::sleep(live_gap);
        }
        Ok(((crit, pass), 2 * n))
    })?;
    phases.push(ph);

    // The only instance's TTL check critical (503), then passing (200).
    let host = format!("ttl-svc.{DOM}");
    let ((only_crit, only_pass), ph) =
        phase(pid, "check critical / passing (only instance)", || {
            let (mut crit, mut pass) = (Series::default(), Series::default());
            for _ in 0..n {
                let t0 = Instant::now();
                consul.ttl_fail(ttl_check);
                crit.record(until_status(env, &host, 503, t0, timeout));
                thread::sleep(gap);
                let t0 = Instant::now();
                consul.ttl_pass(ttl_check);
                pass.record(until_status(env, &host, 200, t0, timeout));
                thread::sleep(gap);
            }
            Ok(((crit, pass), 2 * n))
        })?;
    phases.push(ph);

    // Structural (before HAProxy 3.4): new services, each removed again.
    let ((reg, dereg), ph) = phase(pid, "new service / service removed (structural)", || {
        Ok((services_come_and_go(env, &consul, n, gap, timeout), 2 * n))
    })?;
    phases.push(ph);

    // Let the last change log, then count events per phase.
    thread::sleep(Duration::from_millis(300));
    let lines = testkit::json_lines(&sup.log_text());
    let phases_json = phase_counts(&lines, &phases);
    let reloads = lines.iter().filter(|l| catalog_reload(l)).count();
    sup.stop(Duration::from_secs(15));
    consul.stop();
    testkit::wait_port_free(env.args.common.http_port);
    Ok(json!({
        "settings": "defaults (HAPROXY_RELOAD_WAIT 100ms:1s, HAPROXY_LIVE_WAIT 10ms, live changes on)",
        "catalog_reloads": reloads,
        "phases": phases_json,
        "instance_added_to_routed": inst_add.json(),
        "instance_removed_to_unrouted": inst_del.json(),
        "critical_to_unrouted": crit.json(),
        "passing_to_routed": crit_pass.json(),
        "critical_to_503": only_crit.json(),
        "passing_to_200": only_pass.json(),
        "register_to_200": reg.json(),
        "deregister_to_503": dereg.json(),
    }))
}

/// A reload done for a catalog change.
fn catalog_reload(l: &testkit::LogLine) -> bool {
    l.event == Some(Event::ReloadDone)
        && l.fields.get("trigger").and_then(|v| v.as_str()) == Some("catalog")
}

/// Per phase, what the supervisor logged in its window and what was
/// sampled.
fn phase_counts(lines: &[testkit::LogLine], phases: &[Phase]) -> Vec<serde_json::Value> {
    let count = |ph: &Phase, f: &dyn Fn(&testkit::LogLine) -> bool| {
        lines
            .iter()
            .filter(|l| l.at >= ph.from && l.at <= ph.to && f(l))
            .count()
    };
    phases
        .iter()
        .map(|ph| {
            json!({
                "phase": ph.name,
                "changes": ph.changes,
                "live_changes_applied": count(ph, &|l| l.event == Some(Event::LiveApplied)),
                "live_changes_failed": count(ph, &|l| l.event == Some(Event::LiveFailed)),
                "catalog_reloads": count(ph, &catalog_reload),
                "haproxy_started_sampled": ph.started_sampled,
                "haproxy_checks_sampled": ph.checks_sampled,
                "secs": ph.to - ph.from,
            })
        })
        .collect()
}

/// `n` times: a new service `reg-<i>` (one instance on web-1, the default
/// profile) registered, timed until its host answers 200; after `gap`,
/// deregistered, timed until its host answers 503 (no route); `gap`.
fn services_come_and_go(
    env: &Env,
    consul: &Consul,
    n: usize,
    gap: Duration,
    timeout: Duration,
) -> (Series, Series) {
    let port = env.backend.port();
    let (mut reg, mut dereg) = (Series::default(), Series::default());
    for i in 0..n {
        let name = format!("reg-{i:03}");
        let id = format!("{name}-1");
        let host = format!("{name}.{DOM}");
        let t0 = Instant::now();
        consul.register(&json!({"ID": id, "Name": name, "Address": "127.0.0.1",
                                "Port": port, "Tags": ["HAPROXY.ENABLE=true"]}));
        reg.record(until_status(env, &host, 200, t0, timeout));
        thread::sleep(gap);
        let t0 = Instant::now();
        consul.deregister(&id);
        dereg.record(until_status(env, &host, 503, t0, timeout));
        thread::sleep(gap);
    }
    (reg, dereg)
}

/// Part (a) again on HAProxy 3.4 (`bin`): new services and their removal,
/// live there. Its own Consul and supervisor; `www` runs the default
/// profile from the start, so a new service's backend is made from a
/// running profile.
fn dynamic_backends(env: &Env, bin: &Path) -> Result<serde_json::Value, String> {
    let version = testkit::haproxy_version(bin);
    if !haproxy_supervisor::live::Caps::from_version(&version).dynamic_backends {
        return Err(format!(
            "--haproxy34 {}: {version}: no dynamic backends (HAProxy 3.4 or later needed)",
            bin.display()
        ));
    }
    let dir = env.work.join("dynamic-backends");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut consul = Consul::start();
    eprintln!("scale-bench: dynamic backends ({version}): consul ready");
    consul.register(
        &json!({"ID": "www-1", "Name": "www", "Address": "127.0.0.1",
                            "Port": env.backend.port(), "Tags": ["HAPROXY.ENABLE=true"]}),
    );
    let mut cmd = testkit::bench_command(&dir, DOM, env.args.common.http_port, bin);
    cmd.env("CONSUL_HTTP_ADDR", consul.addr());
    let mut sup = Proc::spawn(cmd, Some(&dir.join("supervisor.log")), false)?;
    sup.wait_log(Duration::from_secs(30), |t| {
        testkit::log_has_event(t, Event::ReloadDone)
    })?;
    if !http::wait_status(
        &env.addr,
        &format!("www.{DOM}"),
        200,
        Duration::from_secs(15),
    ) {
        return Err("dynamic backends: www does not answer 200".into());
    }
    let timeout = Duration::from_secs(10);
    // The same pacing as the reloads' phase, so the two compare.
    let gap = Duration::from_millis(300);
    let n = env.args.changes;
    let ((reg, dereg), ph) = phase(
        sup.pid(),
        "new service / service removed (HAProxy 3.4: live)",
        || Ok((services_come_and_go(env, &consul, n, gap, timeout), 2 * n)),
    )?;
    thread::sleep(Duration::from_millis(300));
    let log = sup.log_text();
    let lines = testkit::json_lines(&log);
    let phases_json = phase_counts(&lines, &[ph]);
    let count = |e: Event| lines.iter().filter(|l| l.event == Some(e)).count();
    let live_kinds: std::collections::BTreeMap<String, usize> = lines
        .iter()
        .filter(|l| l.event == Some(Event::LiveApplied))
        .flat_map(|l| {
            l.fields
                .get("kinds")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .fold(Default::default(), |mut m, k| {
            *m.entry(k).or_default() += 1;
            m
        });
    let structural: Vec<String> = lines
        .iter()
        .filter(|l| l.event == Some(Event::StructuralChange))
        .filter_map(|l| l.fields.get("reason").and_then(|v| v.as_str()))
        .map(str::to_string)
        .collect();
    // The removed services' backends are deleted once drained: none left.
    let sock = dir.join("run/admin.sock");
    let left = || {
        testkit::admin(&sock, "show backend")
            .lines()
            .filter(|l| l.trim_start().starts_with("reg-"))
            .count()
    };
    let t = Instant::now();
    let mut reg_backends_left = left();
    while reg_backends_left > 0 && t.elapsed() < timeout {
        thread::sleep(Duration::from_millis(50));
        reg_backends_left = left();
    }
    sup.stop(Duration::from_secs(15));
    consul.stop();
    testkit::wait_port_free(env.args.common.http_port);
    Ok(json!({
        "haproxy": version,
        "haproxy_bin": bin.display().to_string(),
        "settings": "defaults (HAPROXY_RELOAD_WAIT 100ms:1s, HAPROXY_LIVE_WAIT 10ms, live changes on)",
        "phases": phases_json,
        "register_to_200": reg.json(),
        "deregister_to_503": dereg.json(),
        "catalog_reloads": lines.iter().filter(|l| catalog_reload(l)).count(),
        "live_changes_applied": count(Event::LiveApplied),
        "live_changes_with_op_kind": live_kinds,
        "structural_reasons": structural,
        // Backends log their deletion at info level, servers at debug.
        "backends_logged_deleted": lines
            .iter()
            .filter(|l| l.event == Some(Event::ParkedDeleted) && l.fields.get("server").is_none())
            .count(),
        "removed_services_backends_left": reg_backends_left,
    }))
}

// ---------------------------------------------------------------------------
// Parts (b) and (c): scale
// ---------------------------------------------------------------------------

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn write_catalog(
    path: &Path,
    n: usize,
    instances: usize,
    backend: SocketAddr,
) -> Result<(), String> {
    let services: Vec<_> = (0..n)
        .map(|i| {
            let name = service_name(i);
            let inst: Vec<_> = (1..=instances)
                .map(|k| {
                    json!({"id": format!("{name}-{k}"), "address": backend.ip().to_string(),
                           "port": backend.port(), "tags": ["HAPROXY.ENABLE=true"]})
                })
                .collect();
            json!({"name": name, "instances": inst})
        })
        .collect();
    std::fs::write(path, json!({ "services": services }).to_string()).map_err(|e| e.to_string())
}

/// GETs every host with a few threads; returns (ok, failed, first failures).
fn sweep(env: &Env, n: usize) -> (usize, usize, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let next = Arc::clone(&next);
            let addr = env.addr;
            thread::spawn(move || {
                let (mut ok, mut bad, mut errs) = (0, 0, Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let host = format!("{}.{DOM}", service_name(i));
                    match http::get_at(&addr, &host, Duration::from_secs(5)) {
                        Ok(r) if r.is_success() => ok += 1,
                        r => {
                            bad += 1;
                            if errs.len() < 3 {
                                let e = r.map_or_else(
                                    |e| e.to_string(),
                                    |r| format!("HTTP {}", r.status),
                                );
                                errs.push(format!("{host}: {e}"));
                            }
                        }
                    }
                }
                (ok, bad, errs)
            })
        })
        .collect();
    let mut total = (0, 0, Vec::new());
    for t in threads {
        let (ok, bad, errs) = t.join().unwrap_or_default();
        total.0 += ok;
        total.1 += bad;
        total.2.extend(errs);
    }
    total.2.truncate(5);
    total
}

#[derive(Default)]
struct Run {
    ok: u64,
    failed: u64,
    lat_us: Vec<u32>,
    secs: f64,
}

/// `clients` threads, a new connection per request, for `secs`.
fn load(env: &Env, host: &str) -> Run {
    let options = LoadOptions {
        timeout: Duration::from_secs(5),
        ..LoadOptions::new(env.args.clients)
    };
    let clients = Load::start_with(env.addr, host, &options);
    thread::sleep(Duration::from_secs_f64(env.args.secs));
    let r = clients.stop();
    Run {
        ok: r.ok,
        failed: r.failed(),
        lat_us: r.lat_us,
        secs: r.elapsed.as_secs_f64(),
    }
}

fn first_vs_last(env: &Env, n: usize) -> serde_json::Value {
    let first = format!("{}.{DOM}", service_name(0));
    let last = format!("{}.{DOM}", service_name(n - 1));
    // Warm up both, then alternate so drift hits both alike.
    let _ = http::status_of(&env.addr, &first, Duration::from_secs(2));
    let _ = http::status_of(&env.addr, &last, Duration::from_secs(2));
    let (mut f, mut l) = (Run::default(), Run::default());
    let mut rounds = Vec::new();
    for _ in 0..2 {
        for (host, acc, which) in [(&first, &mut f, "first"), (&last, &mut l, "last")] {
            let r = load(env, host);
            rounds.push(json!({"host": which, "ok": r.ok, "failed": r.failed,
                               "rps": r.ok as f64 / r.secs}));
            acc.ok += r.ok;
            acc.failed += r.failed;
            acc.secs += r.secs;
            acc.lat_us.extend(r.lat_us);
        }
    }
    let stats = |r: &mut Run, host: &str| {
        r.lat_us.sort_unstable();
        json!({
            "host": host,
            "ok": r.ok,
            "failed": r.failed,
            "rps": r.ok as f64 / r.secs,
            "p50_ms": measure::quantile(&r.lat_us, 0.5) as f64 / 1000.0,
            "p99_ms": measure::quantile(&r.lat_us, 0.99) as f64 / 1000.0,
        })
    };
    let frps = f.ok as f64 / f.secs;
    let lrps = l.ok as f64 / l.secs;
    json!({
        "services": n,
        "clients": env.args.clients,
        "connection": "new TCP connection per request (Connection: close)",
        "first": stats(&mut f, &first),
        "last": stats(&mut l, &last),
        "last_over_first": if frps > 0.0 { lrps / frps } else { 0.0 },
        "rounds": rounds,
    })
}

/// `N`, `NxK` or `NxK-nocheck` → (services, instances, without health
/// checks).
fn parse_size(s: &str, default_instances: usize) -> Result<(usize, usize, bool), String> {
    let bad = || format!("bad size {s:?}: expected N, NxK or NxK-nocheck");
    let (s, nocheck) = match s.strip_suffix("-nocheck") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    match s.split_once('x') {
        Some((n, k)) => Ok((
            n.parse().map_err(|_| bad())?,
            k.parse().map_err(|_| bad())?,
            nocheck,
        )),
        None => Ok((s.parse().map_err(|_| bad())?, default_instances, nocheck)),
    }
}

/// The built-in template without `check` on server lines: HAProxy reserves
/// one descriptor per checked server, which a low open-files limit cannot
/// hold at 30,000 servers.
fn nocheck_template(dir: &Path) -> Result<PathBuf, String> {
    let t = haproxy_supervisor::render::DEFAULT_TEMPLATE;
    let needle = "}} check weight";
    if !t.contains(needle) {
        return Err(format!(
            "the built-in template has no {needle:?}; cannot make a no-check variant"
        ));
    }
    let p = dir.join("nocheck.cfg.tera");
    std::fs::write(&p, t.replace(needle, "}} weight")).map_err(|e| e.to_string())?;
    Ok(p)
}

fn scale(env: &Env) -> Result<serde_json::Value, String> {
    let mut rows = Vec::new();
    let mut fvl = serde_json::Value::Null;
    let sizes = env
        .args
        .sizes
        .iter()
        .map(|s| parse_size(s, env.args.instances))
        .collect::<Result<Vec<_>, _>>()?;
    // First vs last runs on the first size with the most services that
    // starts.
    let largest = sizes.iter().map(|s| s.0).max().unwrap_or(0);
    for &(n, instances, nocheck) in &sizes {
        let label = format!(
            "{n} × {instances}{}",
            if nocheck { " (no health checks)" } else { "" }
        );
        eprintln!("scale-bench: scale: {label}");
        let dir = env.work.join(format!(
            "scale-{n}x{instances}{}",
            if nocheck { "-nocheck" } else { "" }
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let catalog = dir.join("catalog.json");
        write_catalog(&catalog, n, instances, env.backend)?;
        let catalog_bytes = std::fs::metadata(&catalog).map(|m| m.len()).unwrap_or(0);
        let cfg = dir.join("etc/haproxy.cfg");
        let mut cmd =
            testkit::bench_command(&dir, DOM, env.args.common.http_port, &env.haproxy_bin);
        cmd.arg("--catalog-file").arg(&catalog);
        if nocheck {
            cmd.env("HAPROXY_TEMPLATE", nocheck_template(&dir)?);
        }
        let mut sup = Proc::spawn(cmd, Some(&dir.join("supervisor.log")), false)?;
        let wall0 = measure::epoch_secs(sup.started_wall);
        let started = sup.wait_log(Duration::from_secs(600), |t| {
            [Event::ReloadDone, Event::ReloadFailed]
                .iter()
                .any(|e| testkit::log_has_event(t, *e))
        });
        let log = sup.log_text();
        let lines = testkit::json_lines(&log);
        let at = |event: Event| {
            lines
                .iter()
                .find(|l| l.event == Some(event))
                .map(|l| (l.at - wall0) * 1000.0)
        };
        let read_ms = at(Event::CatalogFileRead);
        let written_ms = at(Event::ConfigWritten);
        let serving_ms = at(Event::ReloadDone);
        let mut row = json!({
            "services": n,
            "instances_per_service": instances,
            "health_checks": !nocheck,
            "start_to_catalog_read_ms": read_ms,
            "start_to_config_written_ms": written_ms,
            "catalog_read_to_config_written_ms": match (read_ms, written_ms) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        });
        if started.is_err() || serving_ms.is_none() {
            let alert = log
                .lines()
                .find(|l| l.contains("[ALERT]"))
                .map(str::to_string)
                .or_else(|| started.err())
                .unwrap_or_default();
            row["supervisor_vmhwm_kb"] = json!(testkit::proc_status_kb(sup.pid(), "VmHWM"));
            row["error"] = json!(format!("haproxy did not start: {alert}"));
            eprintln!("scale-bench: scale: {label}: haproxy did not start: {alert}");
            sup.stop(Duration::from_secs(20));
            testkit::wait_port_free(env.args.common.http_port);
            rows.push(row);
            continue;
        }
        let hwm_at_start = testkit::proc_status_kb(sup.pid(), "VmHWM");
        // HAProxy's own check of the same file, alone.
        let t = Instant::now();
        let check = Command::new(&env.haproxy_bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        let check_ms = t.elapsed().as_secs_f64() * 1000.0;
        let cfg_bytes = std::fs::metadata(&cfg).map(|m| m.len()).unwrap_or(0);
        // Every host answers?
        let t = Instant::now();
        let (ok, failed, errs) = sweep(env, n);
        let sweep_s = t.elapsed().as_secs_f64();
        eprintln!(
            "scale-bench: scale: {label}: config in {:.0} ms, serving at {:.0} ms, {ok}/{n} hosts answered 200",
            written_ms.unwrap_or(-1.0),
            serving_ms.unwrap_or(-1.0)
        );
        if n == largest && fvl.is_null() {
            fvl = first_vs_last(env, n);
            fvl["instances_per_service"] = json!(instances);
            fvl["health_checks"] = json!(!nocheck);
        }
        let hwm = testkit::proc_status_kb(sup.pid(), "VmHWM");
        let rss = testkit::proc_status_kb(sup.pid(), "VmRSS");
        let hap_hwm: Option<u64> = testkit::children_of(sup.pid())
            .iter()
            .filter(|p| p.comm == "haproxy")
            .filter_map(|p| testkit::proc_status_kb(p.pid, "VmHWM"))
            .max();
        sup.stop(Duration::from_secs(20));
        testkit::wait_port_free(env.args.common.http_port);
        for (k, v) in [
            ("catalog_file_bytes", json!(catalog_bytes)),
            ("config_bytes", json!(cfg_bytes)),
            ("start_to_serving_ms", json!(serving_ms)),
            ("haproxy_check_alone_ms", json!(check_ms)),
            ("haproxy_check_ok", json!(check)),
            ("supervisor_vmhwm_kb", json!(hwm)),
            ("supervisor_vmhwm_kb_at_first_reload", json!(hwm_at_start)),
            ("supervisor_vmrss_kb", json!(rss)),
            ("haproxy_vmhwm_kb", json!(hap_hwm)),
            ("hosts_answering_200", json!(ok)),
            ("hosts_failing", json!(failed)),
            ("first_failures", json!(errs)),
            ("sweep_s", json!(sweep_s)),
        ] {
            row[k] = v;
        }
        rows.push(row);
    }
    Ok(json!({ "rows": rows, "first_vs_last": fvl }))
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The propagation rows: JSON key, the kind of change (SPEC §10:
/// server-only changes go live, structural ones reload), label.
const ROWS: [(&str, &str, &str); 8] = [
    (
        "instance_added_to_routed",
        "server-only",
        "new instance registered → first request reaches it",
    ),
    (
        "instance_removed_to_unrouted",
        "server-only",
        "instance deregistered → no more requests reach it",
    ),
    (
        "critical_to_unrouted",
        "server-only",
        "TTL check of 1 of 2 instances critical → no more requests reach it",
    ),
    (
        "passing_to_routed",
        "server-only",
        "that check passing again → a request reaches it",
    ),
    (
        "critical_to_503",
        "server-only",
        "TTL check of the only instance critical → host answers 503",
    ),
    (
        "passing_to_200",
        "server-only",
        "that check passing again → host answers 200",
    ),
    (
        "register_to_200",
        "structural",
        "new service registered → its host answers 200",
    ),
    (
        "deregister_to_503",
        "structural",
        "service deregistered → its host answers 503",
    ),
];

/// One timing row: `| label | how | n | timeouts | failed polls | p50 |
/// p90 | p99 | min | max |`.
fn timing_row(label: &str, how: &str, r: &serde_json::Value) -> String {
    format!(
        "| {label} | {how} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
        r["n"],
        r["timeouts"],
        r["failed_polls"].as_u64().unwrap_or(0),
        f(&r["p50_ms"]),
        f(&r["p90_ms"]),
        f(&r["p99_ms"]),
        f(&r["min_ms"]),
        f(&r["max_ms"]),
    )
}

const TIMING_HEADER: &str = "| change | kind | n | timeouts (10 s) | failed polls | p50 ms | p90 ms | p99 ms | min ms | max ms |\n|---|---|---|---|---|---|---|---|---|---|\n";

const PHASE_HEADER: &str = "| phase | Consul changes | live changes applied | live changes failed | catalog reloads | HAProxy processes started (sampled every 20 ms) | `haproxy -c` seen |\n|---|---|---|---|---|---|---|\n";

fn phase_rows(phases: &serde_json::Value) -> String {
    let mut s = String::new();
    for ph in phases.as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            ph["phase"].as_str().unwrap_or(""),
            ph["changes"],
            ph["live_changes_applied"],
            ph["live_changes_failed"],
            ph["catalog_reloads"],
            ph["haproxy_started_sampled"],
            ph["haproxy_checks_sampled"],
        ));
    }
    s
}

/// `HAProxy 3.4.7-1` from `haproxy -v`'s line.
fn short_version(v: &serde_json::Value) -> String {
    let words: Vec<&str> = v.as_str().unwrap_or("").split_whitespace().collect();
    match words.as_slice() {
        [name, "version", ver, ..] => format!("{name} {ver}"),
        _ => words.join(" "),
    }
}

fn markdown(
    args: &Args,
    meta: &serde_json::Value,
    prop: Option<&serde_json::Value>,
    dynamic: Option<&serde_json::Value>,
    scale: Option<&serde_json::Value>,
) -> String {
    let mut s = format!(
        "{}; {}; {}; run {}.\n\nMachine at the start: {}; at the end: {} (another job on it moves every figure).\n\n",
        meta["machine"].as_str().unwrap_or(""),
        meta["haproxy"].as_str().unwrap_or(""),
        meta["consul"].as_str().unwrap_or(""),
        meta["date"].as_str().unwrap_or(""),
        meta["machine_load_at_start"].as_str().unwrap_or("?"),
        meta["machine_load_at_end"].as_str().unwrap_or("?"),
    );
    let mut goals = Vec::new();
    if let Some(p) = prop {
        s.push_str(&format!(
            "## Change → routing (Consul `agent -dev`, default settings: HAPROXY_RELOAD_WAIT 100ms:1s, HAPROXY_LIVE_WAIT 10ms, live changes on; polled every {} ms with real requests)\n\n",
            args.poll_ms
        ));
        s.push_str(TIMING_HEADER);
        for (key, how, label) in ROWS {
            let r = &p[key];
            if r.is_null() {
                continue;
            }
            s.push_str(&timing_row(label, how, r));
        }
        s.push_str(&format!(
            "\n\"No more requests\" = the first of {NONE_IN_A_ROW} answers in a row from the other instance; \
             \"failed polls\" = polling requests without a 200 while waiting (there should be none).\n\n"
        ));
        s.push_str(PHASE_HEADER);
        s.push_str(&phase_rows(&p["phases"]));
        s.push('\n');
        for (key, what, limit) in [
            ("instance_added_to_routed", "new instance → routed", 50.0),
            (
                "critical_to_unrouted",
                "check critical → no more requests",
                50.0,
            ),
            (
                "register_to_200",
                "structural change (new service) → routed",
                400.0,
            ),
        ] {
            let p99 = f(&p[key]["p99_ms"]);
            let n = p[key]["n"].as_u64().unwrap_or(0);
            let to = p[key]["timeouts"].as_u64().unwrap_or(0);
            goals.push(format!(
                "- {what} p99 < {limit:.0} ms ({n} changes, {to} timeouts): {p99:.0} ms ({})",
                if p99 < limit && n > 0 && to == 0 {
                    "met"
                } else {
                    "missed"
                }
            ));
        }
    }
    if let Some(d) = dynamic {
        s.push_str(&format!(
            "## New and removed services: reload ({}) against live ({}: dynamic backends)\n\n\
             The same changes, paced alike (300 ms between them), on a Consul and supervisor of \
             each HAProxy; 3.4 makes a new service's backend from the running default profile \
             (`add backend`, `add server`, `publish backend`, hosts map swap) and takes a removed \
             one out of the map, parks it and deletes it.\n\n",
            short_version(&meta["haproxy"]),
            short_version(&d["haproxy"]),
        ));
        s.push_str(TIMING_HEADER);
        let v26 = short_version(&meta["haproxy"]);
        let v34 = short_version(&d["haproxy"]);
        for (key, label) in [
            (
                "register_to_200",
                "new service registered → its host answers 200",
            ),
            (
                "deregister_to_503",
                "service deregistered → its host answers 503",
            ),
        ] {
            if let Some(p) = prop.filter(|p| !p[key].is_null()) {
                s.push_str(&timing_row(label, &format!("reload ({v26})"), &p[key]));
            }
            s.push_str(&timing_row(label, &format!("live ({v34})"), &d[key]));
        }
        s.push('\n');
        s.push_str(PHASE_HEADER);
        s.push_str(&phase_rows(&d["phases"]));
        s.push_str(&format!(
            "\nLive changes with each operation: {}; removed services' backends the supervisor \
             logged deleted (`parked_deleted`): {}; left in HAProxy afterwards (`show backend`): \
             {}; changes found structural: {}.\n\n",
            d["live_changes_with_op_kind"]
                .as_object()
                .map(|m| m
                    .iter()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            d["backends_logged_deleted"],
            d["removed_services_backends_left"],
            d["structural_reasons"].as_array().map_or(0, Vec::len),
        ));
        for (key, what) in [
            ("register_to_200", "new service → routed"),
            ("deregister_to_503", "service removed → 503"),
        ] {
            let p99 = f(&d[key]["p99_ms"]);
            let n = d[key]["n"].as_u64().unwrap_or(0);
            let to = d[key]["timeouts"].as_u64().unwrap_or(0);
            let started = d["phases"][0]["haproxy_started_sampled"].as_u64();
            goals.push(format!(
                "- {v34}, {what} p99 < 50 ms, live ({n} changes, {to} timeouts, {} HAProxy processes started): {p99:.0} ms ({})",
                started.map_or("–".to_string(), |n| n.to_string()),
                if p99 < 50.0 && n > 0 && to == 0 && started == Some(0) {
                    "met"
                } else {
                    "missed"
                }
            ));
        }
    }
    if let Some(sc) = scale {
        s.push_str(
            "## Catalog size (catalog file; every instance points at one live backend; health-checked unless marked)\n\n",
        );
        s.push_str("| services × instances | servers | config KB | start → catalog read ms | catalog read → checked config written ms | start → HAProxy serving ms | `haproxy -c` alone ms | supervisor peak RSS (VmHWM) MB | HAProxy worker VmHWM MB | hosts answering 200 |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for r in sc["rows"].as_array().into_iter().flatten() {
            let n = r["services"].as_u64().unwrap_or(0);
            let k = r["instances_per_service"].as_u64().unwrap_or(0);
            let nc = if r["health_checks"] == json!(false) {
                " (no checks)"
            } else {
                ""
            };
            let mb = |v: &serde_json::Value| f(v) / 1024.0;
            if let Some(e) = r["error"].as_str() {
                s.push_str(&format!(
                    "| {n} × {k}{nc} | {} | – | {:.0} | {:.0} | {e} | – | {:.1} | – | – |\n",
                    n * k,
                    f(&r["start_to_catalog_read_ms"]),
                    f(&r["catalog_read_to_config_written_ms"]),
                    mb(&r["supervisor_vmhwm_kb"]),
                ));
                continue;
            }
            s.push_str(&format!(
                "| {} × {k}{nc} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {}/{} |\n",
                n,
                n * k,
                f(&r["config_bytes"]) / 1024.0,
                f(&r["start_to_catalog_read_ms"]),
                f(&r["catalog_read_to_config_written_ms"]),
                f(&r["start_to_serving_ms"]),
                f(&r["haproxy_check_alone_ms"]),
                mb(&r["supervisor_vmhwm_kb"]),
                mb(&r["haproxy_vmhwm_kb"]),
                r["hosts_answering_200"],
                n
            ));
            if n == 1000 && k == args.instances as u64 && nc.is_empty() {
                let t = f(&r["catalog_read_to_config_written_ms"]);
                let rss = mb(&r["supervisor_vmhwm_kb"]);
                goals.push(format!(
                    "- 1,000 services rendered+checked < 1 s: {t:.0} ms ({}); supervisor < 50 MB RSS: {rss:.1} MB ({})",
                    if t < 1000.0 { "met" } else { "missed" },
                    if rss < 50.0 { "met" } else { "missed" }
                ));
            }
        }
        let fl = &sc["first_vs_last"];
        if !fl.is_null() {
            s.push_str(&format!(
                "\n## First vs last service ({} services × {}{}; {} clients, {}, {} s per run, alternating first/last twice)\n\n",
                fl["services"], fl["instances_per_service"],
                if fl["health_checks"] == json!(false) { ", no health checks" } else { "" },
                fl["clients"], fl["connection"].as_str().unwrap_or(""), args.secs
            ));
            s.push_str(
                "| host | ok | failed | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n",
            );
            for k in ["first", "last"] {
                let r = &fl[k];
                s.push_str(&format!(
                    "| {} | {} | {} | {:.0} | {:.2} | {:.2} |\n",
                    r["host"].as_str().unwrap_or(""),
                    r["ok"],
                    r["failed"],
                    f(&r["rps"]),
                    f(&r["p50_ms"]),
                    f(&r["p99_ms"]),
                ));
            }
            let ratio = f(&fl["last_over_first"]);
            s.push_str(&format!("\nlast / first = {ratio:.3}\n"));
            let all_ok = sc["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| {
                    r["services"] == fl["services"]
                        && r["instances_per_service"] == fl["instances_per_service"]
                        && r["health_checks"] == fl["health_checks"]
                })
                .map(|r| r["hosts_failing"].as_u64() == Some(0))
                .unwrap_or(false);
            goals.push(format!(
                "- {} services work ({}) and the last is served ≥90% as fast as the first: {:.1}% ({})",
                fl["services"],
                if all_ok { "every host answered 200" } else { "some hosts failed" },
                ratio * 100.0,
                if ratio >= 0.9 && all_ok { "met" } else { "missed" }
            ));
        }
    }
    if !goals.is_empty() {
        s.push_str("\nGoals (figures, not assertions):\n\n");
        s.push_str(&goals.join("\n"));
        s.push('\n');
    }
    s
}
