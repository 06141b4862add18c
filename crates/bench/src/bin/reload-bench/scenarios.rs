//! The scenarios: setting up the supervisor, `haproxy -W` or the bare
//! loop, driving one window, and reading what each did from its log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::measure;
use testkit::{http, Event, Proc, Sampled};

use crate::bare::Bare;
use crate::changes::{Changes, Rotation};
use crate::floor::Floor;
use crate::load::{drive, Action, CpuUse};
use crate::{Args, Load, BUCKET_MS, HOST};

/// How a scenario's HAProxy is reloaded.
pub(crate) enum Target {
    /// The supervisor: SIGHUP.
    Supervisor(Proc),
    /// `haproxy -W`: SIGUSR2 to the master.
    MasterWorker(Proc),
    /// HAProxy alone, reloaded by the bench's minimal loop.
    Bare(Bare),
}

#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) name: String,
    pub(crate) what: String,
    pub(crate) load: Load,
    pub(crate) duration: f64,
    /// Whether the scenario writes catalog changes (`live`, `live-off`)
    /// rather than signalling.
    pub(crate) changes: bool,
    pub(crate) reloads_sent: usize,
    /// When the reload signals were sent (or the catalog changes written),
    /// seconds since the load started.
    pub(crate) sent_at: Vec<f64>,
    /// Reloads done in the window: trigger `sighup` for the signalled
    /// scenarios, `Catalog` for the change scenarios.
    pub(crate) reloads_done: usize,
    pub(crate) failed_reloads: usize,
    /// When reloads completed (supervisor: `reload_done` events) or
    /// were signalled (master-worker), seconds since the load started.
    pub(crate) reload_marks: Vec<f64>,
    pub(crate) marks_are: &'static str,
    /// Strategies the supervisor logged for its reloads in the window
    /// (fallbacks show up here).
    pub(crate) strategies: BTreeMap<String, usize>,
    pub(crate) took_ms: Vec<f64>,
    /// Change scenarios: catalog changes written, by kind.
    pub(crate) change_kinds: BTreeMap<String, usize>,
    /// `live_applied` events in the window, and when.
    pub(crate) live_applied: usize,
    pub(crate) live_marks: Vec<f64>,
    pub(crate) live_took_ms: Vec<f64>,
    /// Per ok request: its start (µs since the load started) and latency
    /// (µs).
    pub(crate) requests: Vec<(u32, u32)>,
    /// "live change failed; reloading instead" events in the window.
    pub(crate) live_failed: usize,
    /// Per live change applied, its operation kinds (`add_backend`,
    /// `publish`, `replace_map`, ...): how many changes had each.
    pub(crate) live_op_kinds: BTreeMap<String, usize>,
    /// Live failures by operation and error.
    pub(crate) live_failures: BTreeMap<String, usize>,
    /// Why changes were found structural (`structural_change` events'
    /// `reason`), with counts.
    pub(crate) structural_reasons: BTreeMap<String, usize>,
    /// Backends taken out live that the supervisor logged deleted
    /// (`parked_deleted` without a server: servers log it at debug level).
    pub(crate) backends_deleted: usize,
    /// HAProxy processes that appeared during the window, sampled from
    /// /proc (serving processes; `haproxy -c` apart).
    pub(crate) sampled: Option<Sampled>,
    /// Distinct pids of `reload_done` events in the window (for
    /// master-worker: "Loading success." lines after the first).
    pub(crate) started_logged: usize,
    /// Keep-alive clients (a `-ka` scenario): ratios are to `baseline-ka`.
    pub(crate) keepalive: bool,
    /// CPU used in the window by the supervisor (or master) and by the
    /// HAProxy processes.
    pub(crate) cpu: Option<CpuUse>,
    /// Whether the root of [`Outcome::cpu`] is HAProxy's master (its own
    /// CPU is HAProxy's) rather than the supervisor.
    pub(crate) root_is_haproxy: bool,
    /// The bare loop: `spawn` errors and `[ALERT]` lines HAProxy wrote.
    pub(crate) spawn_errors: usize,
    pub(crate) alerts: usize,
}

impl Outcome {
    pub(crate) fn rps(&self) -> f64 {
        let ok_in_window: u64 = self.load.buckets.iter().sum();
        ok_in_window as f64 / self.duration
    }
    pub(crate) fn lat_ms(&self, q: f64) -> f64 {
        measure::quantile(&self.load.lat_us, q) as f64 / 1000.0
    }
    pub(crate) fn max_ms(&self) -> f64 {
        self.load.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0
    }
    /// The worst 100 ms bucket (ok requests), as req/s.
    pub(crate) fn worst_bucket_rps(&self) -> f64 {
        self.load.buckets.iter().copied().min().unwrap_or(0) as f64 * 1000.0 / BUCKET_MS as f64
    }
    pub(crate) fn changes_written(&self) -> usize {
        self.change_kinds.values().sum()
    }
    /// HAProxy processes started in the window by sampling, if sampled.
    pub(crate) fn started_sampled(&self) -> Option<usize> {
        self.sampled.as_ref().map(Sampled::started)
    }
}

pub(crate) struct Bench {
    pub(crate) args: Args,
    pub(crate) haproxy_bin: PathBuf,
    pub(crate) work: PathBuf,
    /// Three demo backends; every supervisor scenario starts on the same
    /// catalog ([`Changes::initial`]: `www-1` and `www-2` on the first two,
    /// the seed services on the third).
    pub(crate) backends: [SocketAddr; 3],
    pub(crate) addr: SocketAddr,
}

impl Bench {
    /// Starts the supervisor on `catalog_file` (written here with the
    /// initial catalog); `live: false` sets `HAPROXY_NO_LIVE=true`.
    pub(crate) fn start_supervisor(
        &self,
        name: &str,
        strategy: &str,
        catalog_file: &Path,
        live: bool,
    ) -> Result<Proc, String> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let catalog = Changes::initial(self.backends);
        testkit::try_write_atomic(catalog_file, catalog.to_string().as_bytes())?;
        let mut cmd = testkit::bench_command(
            &dir,
            "example.com",
            self.args.common.http_port,
            &self.haproxy_bin,
        );
        if let Some(t) = &self.args.template {
            cmd.env("HAPROXY_TEMPLATE", t);
        }
        if !live {
            cmd.env("HAPROXY_NO_LIVE", "true");
        }
        cmd.arg("--catalog-file")
            .arg(catalog_file)
            .env("HAPROXY_RELOAD_STRATEGY", strategy);
        // HAProxy's access log goes to the supervisor's stdout: /dev/null.
        let mut p = Proc::spawn(cmd, Some(&dir.join("supervisor.log")), false)?;
        p.wait_log(Duration::from_secs(30), |t| {
            testkit::log_has_event(t, Event::ReloadDone)
        })
        .map_err(|e| format!("{name}: supervisor did not start haproxy: {e}"))?;
        if !http::wait_status(&self.addr, HOST, 200, Duration::from_secs(15)) {
            return Err(format!("{name}: {HOST} does not answer 200"));
        }
        Ok(p)
    }

    /// The baseline's rendered config (what the supervisor runs).
    pub(crate) fn baseline_config(&self) -> Result<String, String> {
        let base = self.work.join("baseline/etc/haproxy.cfg");
        std::fs::read_to_string(&base).map_err(|e| {
            format!(
                "read the baseline's rendered config {}: {e}",
                base.display()
            )
        })
    }

    pub(crate) fn start_master_worker(&self, name: &str) -> Result<Proc, String> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let text = self.baseline_config()?;
        let cfg = master_worker_config(&text, &dir.join("admin.sock"));
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.haproxy_bin);
        cmd.arg("-W").arg("-f").arg(&cfg_path).current_dir(&dir);
        let mut p = Proc::spawn(cmd, Some(&dir.join("haproxy.log")), false)?;
        p.wait_log(Duration::from_secs(30), |t| t.contains("Loading success."))
            .map_err(|e| format!("master-worker: haproxy -W did not start: {e}"))?;
        if !http::wait_status(&self.addr, HOST, 200, Duration::from_secs(15)) {
            return Err(format!("master-worker: {HOST} does not answer 200"));
        }
        Ok(p)
    }

    /// The bare loop's first process, on the baseline's rendered config
    /// with an admin socket of its own (maxconn and everything else as
    /// rendered).
    pub(crate) fn start_bare(&self, name: &str) -> Result<Bare, String> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let text = self.baseline_config()?;
        std::fs::write(
            dir.join("haproxy.cfg"),
            with_admin_socket(&text, &dir.join("admin.sock"), None),
        )
        .map_err(|e| e.to_string())?;
        Bare::start(&self.haproxy_bin, &dir, &self.addr)
    }

    pub(crate) fn run(&self, name: &str) -> Result<Outcome, String> {
        let catalog_file = self.work.join(name).join("catalog.json");
        let (kind, keepalive) = split_ka(name);
        let clients = if keepalive {
            "keep-alive clients"
        } else {
            "new connection per request"
        };
        let (mut target, what) = match kind {
            "baseline" => (
                Target::Supervisor(self.start_supervisor(name, "seamless", &catalog_file, true)?),
                format!("supervisor, no reloads; {clients}"),
            ),
            "plain" | "syn-drop" | "seamless" | "inherit" => (
                Target::Supervisor(self.start_supervisor(name, kind, &catalog_file, true)?),
                format!("supervisor, HAPROXY_RELOAD_STRATEGY={kind}, SIGHUP; {clients}"),
            ),
            "bare" => (
                Target::Bare(self.start_bare(name)?),
                format!("haproxy alone, the bench's loop: haproxy -f cfg -x <admin socket> -sf <pids>; {clients}"),
            ),
            "live" => (
                Target::Supervisor(self.start_supervisor(name, "seamless", &catalog_file, true)?),
                "supervisor (seamless), a server-only catalog change, applied live".to_string(),
            ),
            "live-off" => (
                Target::Supervisor(self.start_supervisor(
                    name,
                    "seamless",
                    &catalog_file,
                    false,
                )?),
                "supervisor (seamless), the same changes with HAPROXY_NO_LIVE=true: each reloads"
                    .to_string(),
            ),
            "structural" => (
                Target::Supervisor(self.start_supervisor(name, "seamless", &catalog_file, true)?),
                "supervisor (seamless), a structural catalog change (service added, removed, \
                 balance, health check, sticky, vhost), live where HAProxy can"
                    .to_string(),
            ),
            "structural-off" => (
                Target::Supervisor(self.start_supervisor(
                    name,
                    "seamless",
                    &catalog_file,
                    false,
                )?),
                "supervisor (seamless), the same structural changes with HAPROXY_NO_LIVE=true: \
                 each reloads"
                    .to_string(),
            ),
            "structural-floor" => (
                Target::Supervisor(self.start_supervisor(name, "seamless", &catalog_file, true)?),
                "supervisor idle (seamless); the structural changes made by the bench's own \
                 runtime-API commands, the fewest per change, on one connection"
                    .to_string(),
            ),
            "master-worker" => (
                Target::MasterWorker(self.start_master_worker(name)?),
                format!("haproxy -W alone, SIGUSR2 to the master; {clients}"),
            ),
            other => return Err(format!("unknown scenario {other:?}")),
        };
        let changes_scenario = matches!(
            kind,
            "live" | "live-off" | "structural" | "structural-off" | "structural-floor"
        );
        let pid = match &target {
            Target::Supervisor(p) | Target::MasterWorker(p) => p.pid(),
            // The bare loop's processes are the bench's children.
            Target::Bare(_) => std::process::id() as i32,
        };
        if self.args.warmup_ms > 0 {
            drive(
                &self.args,
                self.addr,
                Duration::from_millis(self.args.warmup_ms),
                Action::Nothing,
                None,
                keepalive,
            )?;
        }
        let duration = Duration::from_secs_f64(self.args.duration_secs);
        let rotation = if kind.starts_with("structural") {
            Rotation::Structural
        } else {
            Rotation::Server
        };
        let mut changes = Changes::new(self.backends, rotation, &self.args.structural_kinds);
        let mut floor = match kind {
            "structural-floor" => Some(Floor::start(&self.work.join(name), self.backends)?),
            _ => None,
        };
        let action = match (&mut target, kind) {
            (_, "baseline") => Action::Nothing,
            (_, "structural-floor") => {
                Action::Floor(floor.as_mut().expect("started above"), &mut changes)
            }
            (_, "live" | "live-off" | "structural" | "structural-off") => {
                Action::Catalog(&catalog_file, &mut changes)
            }
            (Target::Supervisor(_), _) => Action::Signal(pid, Signal::SIGHUP),
            (Target::MasterWorker(_), _) => Action::Signal(pid, Signal::SIGUSR2),
            (Target::Bare(b), _) => Action::Bare(b),
        };
        let driven = drive(
            &self.args,
            self.addr,
            duration,
            action,
            Some(pid),
            keepalive,
        )?;
        if let Some(f) = &mut floor {
            if !f.refused.is_empty() {
                return Err(format!("structural-floor: HAProxy refused {:?}", f.refused));
            }
            let served = f.www_served()?;
            if served == 0 {
                return Err(
                    "structural-floor: www's backend of now served nothing: the traffic did not follow"
                        .to_string(),
                );
            }
            eprintln!(
                "reload-bench: {name}: {} runtime-API commands sent, none refused; www's backend of now served {served} requests",
                f.sent
            );
        }
        // Let the last reload or change finish and log.
        thread::sleep(Duration::from_millis(500));
        let log = match &target {
            Target::Supervisor(p) | Target::MasterWorker(p) => p.log_text(),
            Target::Bare(b) => b.log_text(),
        };
        let sent = driven.sent;
        let mut out = Outcome {
            name: name.to_string(),
            what,
            load: driven.load,
            duration: duration.as_secs_f64(),
            changes: changes_scenario,
            reloads_sent: if changes_scenario { 0 } else { sent.len() },
            sent_at: sent.clone(),
            reloads_done: 0,
            failed_reloads: 0,
            reload_marks: Vec::new(),
            marks_are: "reload done",
            strategies: BTreeMap::new(),
            took_ms: Vec::new(),
            change_kinds: BTreeMap::new(),
            live_applied: 0,
            live_marks: Vec::new(),
            live_took_ms: Vec::new(),
            requests: driven.requests,
            live_failed: 0,
            live_op_kinds: BTreeMap::new(),
            live_failures: BTreeMap::new(),
            structural_reasons: BTreeMap::new(),
            backends_deleted: 0,
            sampled: driven.sampled,
            started_logged: 0,
            keepalive,
            cpu: driven.cpu,
            root_is_haproxy: matches!(target, Target::MasterWorker(_)),
            spawn_errors: 0,
            alerts: 0,
        };
        for k in &driven.kinds {
            *out.change_kinds.entry(k.to_string()).or_default() += 1;
        }
        match &mut target {
            Target::Supervisor(p) => {
                let start = measure::epoch_secs(driven.wall0);
                let counted = if changes_scenario {
                    "catalog"
                } else {
                    "sighup"
                };
                let mut pids = std::collections::BTreeSet::new();
                for l in testkit::json_lines(&log) {
                    if l.at < start {
                        continue;
                    }
                    let trigger = l.fields.get("trigger").and_then(|v| v.as_str());
                    let took = l.fields.get("took_ms").and_then(|v| v.as_f64());
                    if l.event == Some(Event::ReloadDone) {
                        if let Some(pid) = l.fields.get("pid").and_then(|v| v.as_i64()) {
                            pids.insert(pid);
                        }
                    }
                    let field = |k: &str| {
                        l.fields
                            .get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or("")
                            .to_string()
                    };
                    if l.event == Some(Event::LiveApplied) {
                        out.live_applied += 1;
                        out.live_marks.push(l.at - start);
                        out.live_took_ms.extend(took);
                        for k in field("kinds").split(',').filter(|k| !k.is_empty()) {
                            *out.live_op_kinds.entry(k.to_string()).or_default() += 1;
                        }
                        continue;
                    }
                    if l.event == Some(Event::LiveFailed) {
                        out.live_failed += 1;
                        let what = format!("{}: {}", field("op"), field("error"));
                        *out.live_failures.entry(what).or_default() += 1;
                        continue;
                    }
                    if l.event == Some(Event::StructuralChange) {
                        *out.structural_reasons.entry(field("reason")).or_default() += 1;
                        continue;
                    }
                    if l.event == Some(Event::ParkedDeleted) {
                        if l.fields.get("server").is_none() {
                            out.backends_deleted += 1;
                        }
                        continue;
                    }
                    if trigger != Some(counted) {
                        continue;
                    }
                    if l.event == Some(Event::ReloadDone) {
                        out.reloads_done += 1;
                        out.reload_marks.push(l.at - start);
                        if let Some(s) = l.fields.get("strategy").and_then(|v| v.as_str()) {
                            *out.strategies.entry(s.to_string()).or_default() += 1;
                        }
                        out.took_ms.extend(took);
                    } else if l.event == Some(Event::ReloadFailed) {
                        out.failed_reloads += 1;
                    }
                }
                out.started_logged = pids.len();
                out.failed_reloads += testkit::json_lines(&log)
                    .iter()
                    .filter(|l| l.event == Some(Event::ConfigInvalid))
                    .count();
                if kind == "live" || kind == "structural" {
                    out.marks_are = "live change applied";
                } else if kind == "live-off" || kind == "structural-off" {
                    out.marks_are = "catalog reload done";
                }
                p.stop(Duration::from_secs(15));
            }
            Target::MasterWorker(p) => {
                // "Loading success." once at start, then once per reload.
                out.reloads_done = log.matches("Loading success.").count().saturating_sub(1);
                out.started_logged = out.reloads_done;
                out.failed_reloads = log.matches("Loading failure").count();
                out.reload_marks = sent;
                out.marks_are = "SIGUSR2 sent";
                p.stop(Duration::from_secs(15));
            }
            Target::Bare(b) => {
                out.started_logged = b.reloads;
                out.reloads_done = b.took_ms.len();
                out.took_ms = b.took_ms.clone();
                out.spawn_errors = b.spawn_errors;
                out.alerts = log.matches("[ALERT]").count();
                let start = measure::epoch_secs(driven.wall0);
                out.reload_marks = b
                    .up_at
                    .iter()
                    .map(|t| measure::epoch_secs(*t) - start)
                    .collect();
                out.marks_are = "new process up";
                out.failed_reloads = b.stop(Duration::from_secs(15));
            }
        }
        testkit::wait_port_free(self.args.common.http_port);
        Ok(out)
    }
}

/// The baseline's rendered config for `haproxy -W`: global maxconn 5000
/// (fits the open-files limit) and its own admin socket.
pub(crate) fn master_worker_config(text: &str, socket: &Path) -> String {
    with_admin_socket(text, socket, Some(5000))
}

/// `text` with the global `stats socket` moved to `socket` (its options
/// kept: `expose-fd listeners`), and the global maxconn replaced when
/// `maxconn` is given.
pub(crate) fn with_admin_socket(text: &str, socket: &Path, maxconn: Option<u32>) -> String {
    let mut out = String::new();
    let mut in_global = false;
    for line in text.lines() {
        let t = line.trim_start();
        if !line.starts_with(' ') && !line.starts_with('\t') && !t.is_empty() && !t.starts_with('#')
        {
            in_global = t.starts_with("global");
        }
        if let (true, true, Some(m)) = (in_global, t.starts_with("maxconn "), maxconn) {
            out.push_str(&format!("    maxconn {m}\n"));
        } else if in_global && t.starts_with("stats socket ") {
            let rest: Vec<&str> = t.split_whitespace().skip(3).collect();
            out.push_str(&format!(
                "    stats socket {} {}\n",
                socket.display(),
                rest.join(" ")
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A scenario's kind and whether its clients keep connections alive
/// (`<kind>-ka`).
pub(crate) fn split_ka(name: &str) -> (&str, bool) {
    match name.strip_suffix("-ka") {
        Some(k) => (k, true),
        None => (name, false),
    }
}

fn add_counts(into: &mut BTreeMap<String, usize>, from: &BTreeMap<String, usize>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

impl Outcome {
    /// The rounds of one scenario (`--rounds`) as one row: their windows
    /// end to end (times shifted by the windows before), counts summed,
    /// latencies pooled.
    pub(crate) fn pool(rounds: Vec<Outcome>) -> Outcome {
        let mut it = rounds.into_iter();
        let mut p = it.next().expect("at least one round");
        for o in it {
            let shift = p.duration;
            let shift_us = (shift * 1e6) as u32;
            let at = |v: &[f64]| v.iter().map(|t| t + shift).collect::<Vec<_>>();
            // Buckets run on: this round's window follows the last.
            let (buckets, fails) = (o.load.buckets.clone(), o.load.fail_buckets.clone());
            let (b0, f0) = (p.load.buckets.clone(), p.load.fail_buckets.clone());
            let elapsed = p.load.elapsed + o.load.elapsed;
            p.load.merge(o.load);
            p.load.elapsed = elapsed;
            p.load.buckets = [b0, buckets].concat();
            p.load.fail_buckets = [f0, fails].concat();
            p.load.lat_us.sort_unstable();
            p.duration += o.duration;
            p.reloads_sent += o.reloads_sent;
            p.sent_at.extend(at(&o.sent_at));
            p.reloads_done += o.reloads_done;
            p.failed_reloads += o.failed_reloads;
            p.reload_marks.extend(at(&o.reload_marks));
            add_counts(&mut p.strategies, &o.strategies);
            p.took_ms.extend(o.took_ms);
            add_counts(&mut p.change_kinds, &o.change_kinds);
            p.live_applied += o.live_applied;
            p.live_marks.extend(at(&o.live_marks));
            p.live_took_ms.extend(o.live_took_ms);
            p.requests
                .extend(o.requests.iter().map(|&(s, l)| (s + shift_us, l)));
            p.live_failed += o.live_failed;
            add_counts(&mut p.live_op_kinds, &o.live_op_kinds);
            add_counts(&mut p.live_failures, &o.live_failures);
            add_counts(&mut p.structural_reasons, &o.structural_reasons);
            p.backends_deleted += o.backends_deleted;
            p.sampled = match (p.sampled.take(), o.sampled) {
                (Some(mut a), Some(b)) => {
                    a.initial.extend(b.initial);
                    a.seen.extend(b.seen);
                    a.checks += b.checks;
                    a.samples += b.samples;
                    Some(a)
                }
                (a, b) => a.or(b),
            };
            p.started_logged += o.started_logged;
            p.cpu = match (p.cpu, o.cpu) {
                (Some(a), Some(b)) => Some(a.plus(b)),
                (a, b) => a.or(b),
            };
            p.spawn_errors += o.spawn_errors;
            p.alerts += o.alerts;
        }
        p
    }
}
