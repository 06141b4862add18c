//! The report: ratios to the baselines, CPU per reload, `results.md` and
//! `results.json`.

use std::thread;

use serde_json::json;
use testkit::measure;

use crate::changes::{CHANGE_KINDS, SEEDS, STRUCTURAL_KINDS};
use crate::scenarios::Outcome;
use crate::{Args, BUCKET_MS, SAMPLE_EVERY};

/// The baseline a row's ratios are to: `baseline-ka` for keep-alive rows.
pub(crate) fn baseline_of<'a>(outs: &'a [Outcome], o: &Outcome) -> Option<&'a Outcome> {
    let want = if o.keepalive {
        "baseline-ka"
    } else {
        "baseline"
    };
    outs.iter().find(|b| b.name == want)
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

impl Outcome {
    pub(crate) fn ok_in_window(&self) -> u64 {
        self.load.buckets.iter().sum()
    }
    /// The supervisor's own CPU seconds in the window (for the bare row:
    /// its loop's).
    pub(crate) fn supervisor_cpu_s(&self) -> Option<f64> {
        let c = self.cpu?;
        if self.root_is_haproxy {
            None
        } else {
            c.root_own_s.or(c.loop_own_s)
        }
    }
    /// CPU seconds of the HAProxy processes in the window (with `haproxy
    /// -c` and iptables under the supervisor; with the master under
    /// `haproxy -W`).
    pub(crate) fn haproxy_cpu_s(&self) -> Option<f64> {
        let c = self.cpu?;
        Some(
            c.below_s
                + if self.root_is_haproxy {
                    c.root_own_s.unwrap_or(0.0)
                } else {
                    0.0
                },
        )
    }
    /// Whether this row reloads by starting HAProxy processes (not a
    /// baseline, not `live`).
    pub(crate) fn reloads(&self) -> bool {
        !self.name.starts_with("baseline") && self.reloads_done > 0
    }
}

/// CPU per reload of one row against its baseline: what the supervisor
/// used beyond its idle rate, and what HAProxy used beyond serving the
/// row's requests at the baseline's CPU per request; seconds per reload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PerReload {
    pub(crate) supervisor_s: Option<f64>,
    pub(crate) haproxy_s: f64,
}

impl PerReload {
    pub(crate) fn total(self) -> f64 {
        self.haproxy_s + self.supervisor_s.unwrap_or(0.0)
    }
}

pub(crate) fn per_reload(o: &Outcome, base: Option<&Outcome>) -> Option<PerReload> {
    if !o.reloads() {
        return None;
    }
    per_event(o, base, o.reloads_done)
}

/// [`per_reload`] per catalog change written instead (a change row, live
/// or not): what each change cost beyond serving and idling.
pub(crate) fn per_change(o: &Outcome, base: Option<&Outcome>) -> Option<PerReload> {
    if !o.changes || o.changes_written() == 0 {
        return None;
    }
    per_event(o, base, o.changes_written())
}

fn per_event(o: &Outcome, base: Option<&Outcome>, events: usize) -> Option<PerReload> {
    let b = base?;
    let n = events as f64;
    let (bc, c) = (b.cpu?, o.cpu?);
    let base_hap_per_req = b.haproxy_cpu_s()? / (b.ok_in_window().max(1) as f64);
    let haproxy_s = (o.haproxy_cpu_s()? - base_hap_per_req * o.ok_in_window() as f64) / n;
    let supervisor_s = match (o.supervisor_cpu_s(), b.supervisor_cpu_s(), c.loop_own_s) {
        // The bare loop does nothing between reloads.
        (Some(s), _, Some(_)) => Some(s / n),
        (Some(s), Some(bs), None) => Some((s - bs / bc.window_s.max(1e-9) * c.window_s) / n),
        _ => None,
    };
    Some(PerReload {
        supervisor_s,
        haproxy_s,
    })
}

pub(crate) fn opt_fmt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

pub(crate) fn markdown(args: &Args, outs: &[Outcome], meta: &serde_json::Value) -> String {
    let base_figs = |o: &Outcome| {
        baseline_of(outs, o)
            .map(|b| (b.rps(), b.lat_ms(0.5), b.lat_ms(0.99)))
            .unwrap_or((0.0, 0.0, 0.0))
    };
    let mut s = String::new();
    s.push_str(&format!(
        "{} clients, each opening a new TCP connection per request (`Connection: close`), or in \
         the `-ka` rows keeping one HTTP/1.1 keep-alive connection (a new one only after \
         `Connection: close` or a failure; no retry), {} per scenario, a reload (`live`, \
         `live-off`: a server-only catalog change; `structural`, `structural-off`: a \
         structural one) every {} ms; request timeout {} ms; ratios \
         are to `baseline` (`-ka` rows: to `baseline-ka`); HAProxy processes sampled under the \
         supervisor (master) every {} ms; {}; {}; run {}.\n\n",
        args.clients,
        if args.rounds > 1 {
            format!(
                "{} s × {} rounds (the list run in turn, each row pooling its rounds)",
                args.duration_secs, args.rounds
            )
        } else {
            format!("{} s", args.duration_secs)
        },
        args.reload_every_ms,
        args.timeout_ms,
        SAMPLE_EVERY.as_millis(),
        meta["machine"].as_str().unwrap_or(""),
        meta["haproxy"].as_str().unwrap_or(""),
        meta["date"].as_str().unwrap_or(""),
    ));
    s.push_str("| scenario | reloads done (sent) | changes written | live changes applied | HAProxy processes started (sampled / logged) | connections opened | ok | failed | refused | reset | timeout | non-2xx | req/s | × baseline | worst 100 ms req/s | p50 ms | p99 ms | p99.9 ms | max ms | p50 × base | p99 × base |\n");
    s.push_str(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outs {
        let (brps, bp50, bp99) = base_figs(o);
        let reloads = if o.name.starts_with("baseline") || o.changes {
            o.reloads_done.to_string()
        } else {
            format!("{} ({})", o.reloads_done, o.reloads_sent)
        };
        let (written, live) = if o.changes {
            (o.changes_written().to_string(), o.live_applied.to_string())
        } else {
            ("–".to_string(), "–".to_string())
        };
        let started = format!(
            "{} / {}",
            o.started_sampled()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
            o.started_logged
        );
        let connections = if o.keepalive {
            o.load.connections.to_string()
        } else {
            "1 per request".to_string()
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} |\n",
            o.name,
            reloads,
            written,
            live,
            started,
            connections,
            o.load.ok,
            o.load.failed(),
            o.load.refused,
            o.load.reset,
            o.load.timeout,
            o.load.non_2xx + o.load.other,
            o.rps(),
            ratio(o.rps(), brps),
            o.worst_bucket_rps(),
            o.lat_ms(0.5),
            o.lat_ms(0.99),
            o.lat_ms(0.999),
            o.max_ms(),
            ratio(o.lat_ms(0.5), bp50),
            ratio(o.lat_ms(0.99), bp99),
        ));
    }
    s.push('\n');
    for o in outs {
        let mut notes = Vec::new();
        if !o.strategies.is_empty() {
            notes.push(format!(
                "strategies logged: {}",
                o.strategies
                    .iter()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !o.took_ms.is_empty() {
            let mean = o.took_ms.iter().sum::<f64>() / o.took_ms.len() as f64;
            let max = o.took_ms.iter().copied().fold(0.0, f64::max);
            notes.push(format!("reload took {mean:.0} ms mean, {max:.0} ms max"));
        }
        if o.failed_reloads > 0 {
            notes.push(format!("{} failed reloads", o.failed_reloads));
        }
        if o.spawn_errors > 0 {
            notes.push(format!("{} haproxy spawn errors", o.spawn_errors));
        }
        if o.alerts > 0 {
            notes.push(format!("{} [ALERT] lines from haproxy", o.alerts));
        }
        if o.changes {
            notes.push(format!(
                "changes written: {}",
                o.change_kinds
                    .iter()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !o.live_took_ms.is_empty() {
            let mut t = o.live_took_ms.clone();
            t.sort_by(f64::total_cmp);
            notes.push(format!(
                "live change took {:.1} ms mean, p99 {:.0} ms, {:.0} ms max",
                t.iter().sum::<f64>() / t.len() as f64,
                measure::quantile(&t, 0.99),
                t.last().copied().unwrap_or(0.0)
            ));
        }
        let sent = if o.changes {
            "change written"
        } else {
            "reload signal"
        };
        notes.extend(tail_by_phase(o, baseline_of(outs, o), &o.sent_at, sent));
        notes.extend(tail_by_phase(
            o,
            baseline_of(outs, o),
            &o.live_marks,
            "change applied live",
        ));
        if !o.live_op_kinds.is_empty() {
            notes.push(format!(
                "live changes with each operation: {}",
                counts(&o.live_op_kinds)
            ));
        }
        if o.backends_deleted > 0 {
            notes.push(format!(
                "{} backends taken out live logged deleted",
                o.backends_deleted
            ));
        }
        if o.live_failed > 0 {
            notes.push(format!(
                "{} live changes failed (reloaded instead): {}",
                o.live_failed,
                counts(&o.live_failures)
            ));
        }
        if !o.structural_reasons.is_empty() {
            notes.push(format!(
                "found structural (a reload after the reload wait): {}",
                counts(&o.structural_reasons)
            ));
        }
        if let Some(pc) = per_change(o, baseline_of(outs, o)) {
            notes.push(format!(
                "CPU per change beyond the baseline's: supervisor {}, HAProxy {} (`haproxy -c` included)",
                opt_fmt(pc.supervisor_s, |v| format!("{:.1} ms", v * 1e3)),
                format_args!("{:.1} ms", pc.haproxy_s * 1e3)
            ));
        }
        if let Some(sm) = &o.sampled {
            notes.push(format!(
                "{} HAProxy serving processes seen ({} at the start), {} `haproxy -c` checks seen, {} samples",
                sm.seen.len(),
                sm.initial.len(),
                sm.checks,
                sm.samples
            ));
        }
        if o.load.other > 0 {
            notes.push(format!("{} other errors", o.load.other));
        }
        if !o.load.statuses.is_empty() {
            notes.push(format!("statuses {:?}", o.load.statuses));
        }
        if !notes.is_empty() {
            s.push_str(&format!("- {}: {}\n", o.name, notes.join("; ")));
        }
    }

    s.push_str(&cpu_markdown(outs));

    s.push_str("\nGoals (figures, not assertions):\n\n");
    let find = |n: &str| outs.iter().find(|o| o.name == n);
    // Each changes scenario, then the same changes as reloads (`-off`).
    for (name, label, what) in [
        ("live", "live", "server-only"),
        (
            "structural",
            "structural (issue 20, HAProxy 3.4)",
            "structural",
        ),
    ] {
        if let Some(o) = find(name) {
            let (brps, _, bp99) = base_figs(o);
            let r = ratio(o.rps(), brps);
            let p = ratio(o.lat_ms(0.99), bp99);
            let started = o.started_sampled().unwrap_or(usize::MAX);
            s.push_str(&format!(
                "- {label}: {} {what} changes written, {} applied live, {} reloads; 0 failed → {} ({}); throughput ≥98% of baseline → {:.1}% ({}); p99 ≤ 1.2× baseline → {:.2}× ({}); 0 HAProxy processes started → {} sampled, {} logged ({})\n",
                o.changes_written(),
                o.live_applied,
                o.reloads_done,
                o.load.failed(),
                met(o.load.failed() == 0),
                r * 100.0,
                met(r >= 0.98),
                p,
                met(p <= 1.2),
                o.started_sampled().map(|n| n.to_string()).unwrap_or_else(|| "not".into()),
                o.started_logged,
                met(started == 0 && o.started_logged == 0 && o.live_applied > 0),
            ));
        }
        if let Some(o) = find(&format!("{name}-off")) {
            let (brps, _, bp99) = base_figs(o);
            s.push_str(&format!(
                "- {name}-off (the same changes, each a reload): {} failed, {} reloads for {} changes, {} HAProxy processes started (sampled), {:.1}% of baseline throughput, p99 {:.2}× baseline\n",
                o.load.failed(),
                o.reloads_done,
                o.changes_written(),
                o.started_sampled().map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
                ratio(o.rps(), brps) * 100.0,
                ratio(o.lat_ms(0.99), bp99),
            ));
        }
    }
    if let (Some(o), Some(f)) = (find("structural"), find("structural-floor")) {
        let (brps, _, bp99) = base_figs(o);
        s.push_str(&format!(
            "- structural against structural-floor (the same changes by the bench's fewest runtime-API commands, no supervisor work): × baseline {:.3} against {:.3} ({:+.1} points), p99 × baseline {:.2} against {:.2}\n",
            ratio(o.rps(), brps),
            ratio(f.rps(), brps),
            (ratio(o.rps(), brps) - ratio(f.rps(), brps)) * 100.0,
            ratio(o.lat_ms(0.99), bp99),
            ratio(f.lat_ms(0.99), bp99),
        ));
    }
    if let Some(o) = find("seamless") {
        let (brps, _, bp99) = base_figs(o);
        let r = ratio(o.rps(), brps);
        let p = ratio(o.lat_ms(0.99), bp99);
        s.push_str(&format!(
            "- seamless: 0 failed over ≥50 reloads → {} failed over {} reloads ({}); throughput ≥95% of baseline → {:.1}% ({}); p99 ≤ 2× baseline → {:.2}× ({})\n",
            o.load.failed(),
            o.reloads_done,
            met(o.load.failed() == 0 && o.reloads_done >= 50),
            r * 100.0,
            met(r >= 0.95),
            p,
            met(p <= 2.0),
        ));
    }
    if let Some(o) = find("inherit") {
        let (brps, _, bp99) = base_figs(o);
        s.push_str(&format!(
            "- inherit (held sockets, issue 23): 0 failed → {} failed ({} refused) over {} reloads ({}); {:.1}% of baseline, p99 {:.2}×\n",
            o.load.failed(),
            o.load.refused,
            o.reloads_done,
            met(o.load.failed() == 0 && o.reloads_done > 0),
            ratio(o.rps(), brps) * 100.0,
            ratio(o.lat_ms(0.99), bp99),
        ));
    }
    if let Some(o) = find("syn-drop") {
        s.push_str(&format!(
            "- syn-drop: 0 failed → {} failed over {} reloads ({})\n",
            o.load.failed(),
            o.reloads_done,
            met(o.load.failed() == 0)
        ));
    }
    for (seamless, bare) in [
        ("seamless", "bare"),
        ("seamless-ka", "bare-ka"),
        ("inherit", "bare"),
        ("inherit-ka", "bare-ka"),
    ] {
        if let (Some(o), Some(b)) = (find(seamless), find(bare)) {
            let pts = points_behind(outs, o, b);
            s.push_str(&format!(
                "- {seamless} within 3 points of {bare} (issue 15) → {pts:.1} points behind ({})\n",
                met(pts <= 3.0)
            ));
        }
    }
    for name in ["plain-ka", "syn-drop-ka", "seamless-ka", "inherit-ka"] {
        if let Some(o) = find(name) {
            s.push_str(&format!(
                "- {name}: 0 failed for keep-alive clients (issue 9) → {} failed over {} reloads, {} connections opened ({})\n",
                o.load.failed(),
                o.reloads_done,
                o.load.connections,
                met(o.load.failed() == 0 && o.reloads_done > 0)
            ));
        }
    }
    if let Some(o) = find("master-worker-ka") {
        s.push_str(&format!(
            "- master-worker-ka (peer, the same rendered config): {} failed over {} reloads, {} connections opened\n",
            o.load.failed(),
            o.reloads_done,
            o.load.connections
        ));
    }
    s
}

/// Throughput points (× its baseline, ×100) `o` is behind `peer`.
pub(crate) fn points_behind(outs: &[Outcome], o: &Outcome, peer: &Outcome) -> f64 {
    let r = |x: &Outcome| {
        ratio(
            x.rps(),
            baseline_of(outs, x).map(Outcome::rps).unwrap_or(0.0),
        )
    };
    (r(peer) - r(o)) * 100.0
}

/// The CPU table and the supervisor's overhead against the bare loop.
pub(crate) fn cpu_markdown(outs: &[Outcome]) -> String {
    let mut s = String::new();
    if outs.iter().all(|o| o.cpu.is_none()) {
        return s;
    }
    s.push_str(
        "\nCPU in the measured window, from /proc: the supervisor's own (`utime+stime` of its \
         process, every thread), and the HAProxy processes' (every child of the supervisor — \
         HAProxy generations, `haproxy -c`, iptables — or of the master, the master included, \
         or the bare loop's processes): those alive at the end as they stand, minus \
         what those alive at the start had used before it, plus those that exited in between, \
         whole (the parent's `cutime+cstime`: the kernel adds a child's CPU there when it is \
         reaped). Other jobs: the machine's busy time (/proc/stat) less the bench's whole process \
         tree's (clients, backends, supervisor, HAProxy), at the window's two ends; near 0 on a \
         quiet machine. The bare row's \"supervisor\" is its loop: the CPU time of the bench thread \
         that spawns the processes and waits for them (`CLOCK_THREAD_CPUTIME_ID`). Per reload: \
         HAProxy's beyond serving the row's requests at its baseline's CPU per request, the \
         supervisor's beyond its idle rate in the baseline.\n\n",
    );
    s.push_str(&format!("| scenario | reloads done | machine busy, CPUs of {} | of which other jobs, CPUs | supervisor (bare: its loop) CPU s | HAProxy CPU s | HAProxy µs per ok request | supervisor (loop) ms per reload | HAProxy ms per reload beyond serving | total ms per reload |\n", thread::available_parallelism().map(|n| n.get()).unwrap_or(0)));
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for o in outs {
        let Some(c) = o.cpu else { continue };
        let pr = per_reload(o, baseline_of(outs, o));
        let total = pr.map(PerReload::total);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.name,
            o.reloads_done,
            opt_fmt(c.machine_busy_s, |b| format!(
                "{:.2}",
                b / c.window_s.max(1e-9)
            )),
            opt_fmt(c.others_s, |b| format!("{:.2}", b / c.window_s.max(1e-9))),
            opt_fmt(o.supervisor_cpu_s(), |v| format!("{v:.2}")),
            opt_fmt(o.haproxy_cpu_s(), |v| format!("{v:.2}")),
            opt_fmt(o.haproxy_cpu_s(), |v| format!(
                "{:.0}",
                v * 1e6 / o.ok_in_window().max(1) as f64
            )),
            opt_fmt(pr.and_then(|p| p.supervisor_s), |v| format!(
                "{:.1}",
                v * 1e3
            )),
            opt_fmt(pr.map(|p| p.haproxy_s), |v| format!("{:.1}", v * 1e3)),
            opt_fmt(total, |v| format!("{:.1}", v * 1e3)),
        ));
    }
    let find = |n: &str| outs.iter().find(|o| o.name == n);
    for (seamless, bare) in [("seamless", "bare"), ("seamless-ka", "bare-ka")] {
        let (Some(o), Some(b)) = (find(seamless), find(bare)) else {
            continue;
        };
        let (po, pb) = (
            per_reload(o, baseline_of(outs, o)),
            per_reload(b, baseline_of(outs, b)),
        );
        let ms = |v: Option<f64>| opt_fmt(v, |x| format!("{:.1} ms", x * 1e3));
        s.push_str(&format!(
            "\nThe supervisor's overhead, `{seamless}` against `{bare}` (the same rendered config, \
             the same rate, this run): {:.1} points of throughput (× baseline {:.2} against {:.2}); \
             CPU per reload: the supervisor's own {} against the bare loop's {}, HAProxy's beyond \
             serving {} against {} (difference {}), in all {} against {} (difference {}).\n",
            points_behind(outs, o, b),
            ratio(
                o.rps(),
                baseline_of(outs, o).map(Outcome::rps).unwrap_or(0.0)
            ),
            ratio(
                b.rps(),
                baseline_of(outs, b).map(Outcome::rps).unwrap_or(0.0)
            ),
            ms(po.and_then(|p| p.supervisor_s)),
            ms(pb.and_then(|p| p.supervisor_s)),
            ms(po.map(|p| p.haproxy_s)),
            ms(pb.map(|p| p.haproxy_s)),
            ms(po.zip(pb).map(|(x, y)| x.haproxy_s - y.haproxy_s)),
            ms(po.map(PerReload::total)),
            ms(pb.map(PerReload::total)),
            ms(po.zip(pb).map(|(x, y)| x.total() - y.total())),
        ));
    }
    s
}

/// `k×n, ...` of a count map.
fn counts(m: &std::collections::BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn met(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "missed"
    }
}

pub(crate) fn to_json(args: &Args, outs: &[Outcome], meta: serde_json::Value) -> serde_json::Value {
    let scenarios: Vec<_> = outs
        .iter()
        .map(|o| {
            let base = baseline_of(outs, o);
            let (brps, bp50, bp99, bp999) = base
                .map(|b| (b.rps(), b.lat_ms(0.5), b.lat_ms(0.99), b.lat_ms(0.999)))
                .unwrap_or((0.0, 0.0, 0.0, 0.0));
            let pr = per_reload(o, base);
            json!({
                "name": o.name,
                "what": o.what,
                "keepalive": o.keepalive,
                "baseline": base.map(|b| b.name.clone()),
                "connections_opened": o.keepalive.then_some(o.load.connections),
                "cpu": o.cpu.map(|c| json!({
                    "window_s": c.window_s,
                    "machine_busy_s": c.machine_busy_s,
                    "other_jobs_s": c.others_s,
                    "supervisor_s": o.supervisor_cpu_s(),
                    "supervisor_is_bare_loop_thread": c.loop_own_s.is_some(),
                    "haproxy_s": o.haproxy_cpu_s(),
                    "haproxy_us_per_ok_request": o.haproxy_cpu_s()
                        .map(|v| v * 1e6 / o.ok_in_window().max(1) as f64),
                    "per_reload_supervisor_beyond_idle_s": pr.and_then(|p| p.supervisor_s),
                    "per_reload_haproxy_beyond_serving_s": pr.map(|p| p.haproxy_s),
                })),
                "bare_spawn_errors": o.spawn_errors,
                "haproxy_alert_lines": o.alerts,
                "reloads_sent": o.reloads_sent,
                "reloads_done": o.reloads_done,
                "failed_reloads": o.failed_reloads,
                "reload_strategies_logged": o.strategies,
                "reload_took_ms": o.took_ms,
                "catalog_changes": o.changes.then(|| json!({
                    "written": o.changes_written(),
                    "by_kind": o.change_kinds,
                    "live_applied": o.live_applied,
                    "live_failed": o.live_failed,
                    "live_took_ms": o.live_took_ms,
                    "live_marks_s": o.live_marks,
                    "live_changes_with_op_kind": o.live_op_kinds,
                    "live_failures": o.live_failures,
                    "structural_reasons": o.structural_reasons,
                    "backends_logged_deleted": o.backends_deleted,
                    "cpu_per_change_beyond_baseline": per_change(o, base).map(|p| json!({
                        "supervisor_s": p.supervisor_s,
                        "haproxy_s": p.haproxy_s,
                    })),
                })),
                "haproxy_processes": {
                    "started_sampled": o.started_sampled(),
                    "started_logged": o.started_logged,
                    "serving_seen_sampled": o.sampled.as_ref().map(|x| x.seen.len()),
                    "at_start_sampled": o.sampled.as_ref().map(|x| x.initial.len()),
                    "config_checks_sampled": o.sampled.as_ref().map(|x| x.checks),
                    "samples": o.sampled.as_ref().map(|x| x.samples),
                    "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
                },
                "requests_ok": o.load.ok,
                "failed": {
                    "total": o.load.failed(),
                    "refused": o.load.refused,
                    "reset": o.load.reset,
                    "timeout": o.load.timeout,
                    "non_2xx": o.load.non_2xx,
                    "other": o.load.other,
                    "statuses": o.load.statuses,
                },
                "throughput_rps": o.rps(),
                "throughput_ratio": ratio(o.rps(), brps),
                "worst_bucket_rps": o.worst_bucket_rps(),
                "latency_ms": {
                    "p50": o.lat_ms(0.5),
                    "p99": o.lat_ms(0.99),
                    "p99_9": o.lat_ms(0.999),
                    "max": o.max_ms(),
                },
                "latency_ratio": {
                    "p50": ratio(o.lat_ms(0.5), bp50),
                    "p99": ratio(o.lat_ms(0.99), bp99),
                    "p99_9": ratio(o.lat_ms(0.999), bp999),
                },
                "bucket_ms": BUCKET_MS,
                "ok_per_bucket": o.load.buckets,
                "failed_per_bucket": o.load.fail_buckets,
                "reload_marks_s": o.reload_marks,
                "reload_signals_sent_s": (!o.changes).then_some(&o.sent_at),
                "catalog_changes_written_s": o.changes.then_some(&o.sent_at),
                "reload_marks_are": o.marks_are,
            })
        })
        .collect();
    let find = |n: &str| outs.iter().find(|o| o.name == n);
    let overhead: Vec<_> = [("seamless", "bare"), ("seamless-ka", "bare-ka")]
        .into_iter()
        .filter_map(|(a, b)| {
            let (o, p) = (find(a)?, find(b)?);
            let (po, pb) = (
                per_reload(o, baseline_of(outs, o)),
                per_reload(p, baseline_of(outs, p)),
            );
            Some(json!({
                "row": a,
                "peer": b,
                "throughput_points_behind": points_behind(outs, o, p),
                "per_reload_supervisor_s": po.and_then(|x| x.supervisor_s),
                "per_reload_haproxy_beyond_serving_s": po.map(|x| x.haproxy_s),
                "peer_per_reload_loop_s": pb.and_then(|x| x.supervisor_s),
                "peer_per_reload_haproxy_beyond_serving_s": pb.map(|x| x.haproxy_s),
            }))
        })
        .collect();
    json!({
        "bench": "reload-bench",
        "meta": meta,
        "config": {
            "clients": args.clients,
            "duration_s": args.duration_secs,
            "reload_every_ms": args.reload_every_ms,
            "catalog_change_cycle": CHANGE_KINDS,
            "structural_change_cycle": if args.structural_kinds.is_empty() {
                STRUCTURAL_KINDS.iter().map(|k| k.to_string()).collect()
            } else {
                args.structural_kinds.clone()
            },
            "seed_services": SEEDS.iter().map(|(name, leastconn, healthcheck, sticky)| json!({
                "name": name, "leastconn": leastconn, "healthcheck": healthcheck, "sticky": sticky,
            })).collect::<Vec<_>>(),
            "timeout_ms": args.timeout_ms,
            "warmup_ms": args.warmup_ms,
            "connection": "new TCP connection per request (Connection: close), closed-loop; -ka rows: one HTTP/1.1 keep-alive connection per client, a new one only after Connection: close or a failure, no retry",
            "cpu": "from /proc/<pid>/stat: the supervisor's (master's) utime+stime; below it: Δ cutime+cstime + Σ live processes' utime+stime+cutime+cstime at the end − the same at the start; per reload: HAProxy beyond the row's ok requests × its baseline's HAProxy CPU per ok request, supervisor beyond its baseline's rate",
            "latency": "from before connect() to the end of the response, successful requests only",
            "throughput": "successful requests completed within the window / window",
        },
        "scenarios": scenarios,
        "overhead_vs_bare": overhead,
    })
}

/// Where a row's tail is: of its requests, the share slower than its
/// baseline's p99, by how long after the latest mark (`marks`, seconds
/// since the load started) they started. Evenly 1 % when what the marks
/// stand for costs the tail nothing.
fn tail_by_phase(o: &Outcome, base: Option<&Outcome>, marks: &[f64], what: &str) -> Option<String> {
    let base = base.filter(|b| b.name != o.name)?;
    if marks.is_empty() {
        return None;
    }
    let p99_us = measure::quantile(&base.load.lat_us, 0.99);
    let marks_us: Vec<u64> = marks.iter().map(|s| (s * 1e6) as u64).collect();
    const EDGES_MS: [u32; 9] = [0, 5, 10, 15, 20, 30, 40, 80, u32::MAX];
    const N: usize = EDGES_MS.len() - 1;
    let mut slow = [0u64; N];
    let mut all = [0u64; N];
    for &(start, lat) in &o.requests {
        let i = marks_us.partition_point(|&t| t <= u64::from(start));
        let Some(last) = i.checked_sub(1).map(|i| marks_us[i]) else {
            continue;
        };
        let ms = ((u64::from(start) - last) / 1000) as u32;
        let b = EDGES_MS.windows(2).position(|w| ms < w[1]).unwrap_or(N - 1);
        all[b] += 1;
        slow[b] += u64::from(lat > p99_us);
    }
    let bins: Vec<String> = (0..N)
        .map(|i| {
            let label = if EDGES_MS[i + 1] == u32::MAX {
                format!("≥{} ms", EDGES_MS[i])
            } else {
                format!("{}–{} ms", EDGES_MS[i], EDGES_MS[i + 1])
            };
            format!(
                "{label} {:.1} % of {}",
                100.0 * slow[i] as f64 / all[i].max(1) as f64,
                all[i]
            )
        })
        .collect();
    Some(format!(
        "requests slower than the baseline's p99 ({:.2} ms), by when they started after the latest {what}: {}",
        p99_us as f64 / 1000.0,
        bins.join(", ")
    ))
}

/// Each round's ratios to its own round's baseline (`--rounds`): (row,
/// per round: × baseline throughput, p99 × baseline).
fn per_round(rounds: &[Vec<Outcome>]) -> Vec<(String, Vec<(f64, f64)>)> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter(|o| !o.name.starts_with("baseline"))
        .map(|o| {
            let figs = rounds
                .iter()
                .filter_map(|r| {
                    let x = r.iter().find(|x| x.name == o.name)?;
                    let b = baseline_of(r, x)?;
                    Some((
                        ratio(x.rps(), b.rps()),
                        ratio(x.lat_ms(0.99), b.lat_ms(0.99)),
                    ))
                })
                .collect();
            (o.name.clone(), figs)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The per-round table; empty for one round.
pub(crate) fn rounds_markdown(rounds: &[Vec<Outcome>]) -> String {
    if rounds.len() < 2 {
        return String::new();
    }
    let mut s = format!(
        "\nPer round ({} rounds, the scenario list run in turn; each ratio to that round's baseline; the rows above pool the rounds):\n\n| scenario | × baseline per round | median | p99 × baseline per round | median |\n|---|---|---|---|---|\n",
        rounds.len()
    );
    for (name, figs) in per_round(rounds) {
        let list = |f: &dyn Fn(&(f64, f64)) -> f64| {
            figs.iter()
                .map(|x| format!("{:.2}", f(x)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "| {name} | {} | {:.2} | {} | {:.2} |\n",
            list(&|x| x.0),
            median(figs.iter().map(|x| x.0).collect()),
            list(&|x| x.1),
            median(figs.iter().map(|x| x.1).collect()),
        ));
    }
    s
}

pub(crate) fn rounds_json(rounds: &[Vec<Outcome>]) -> serde_json::Value {
    json!(per_round(rounds)
        .into_iter()
        .map(|(name, figs)| json!({
            "scenario": name,
            "x_baseline": figs.iter().map(|x| x.0).collect::<Vec<_>>(),
            "p99_x_baseline": figs.iter().map(|x| x.1).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())
}
