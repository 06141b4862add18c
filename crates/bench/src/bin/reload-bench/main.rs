//! `reload-bench`: what HAProxy reloads cost the clients, per reload
//! strategy (SPEC §6), under closed-loop load.
//!
//! ```text
//! cargo run --release -p bench --bin reload-bench -- [--duration-secs 8]
//!     [--reload-every-ms 150] [--clients 50] [--out bench/results]
//!     [--haproxy <path>] [--scenarios baseline,structural,structural-off]
//! ```
//!
//! Runs as root: it first moves into its own network namespace (so it owns
//! 127.0.0.1's ports and its iptables rules never touch the host), then for
//! each scenario starts a `demo-backend` and HAProxy — under the supervisor,
//! alone in master-worker mode, or alone under the bench's own minimal
//! reload loop for the peer rows — and drives load with C client threads,
//! each opening a new TCP connection per request (`Connection: close`), for
//! D seconds, while a reload is triggered every R ms. Scenarios: `baseline`
//! (supervisor, no reloads), `plain`, `syn-drop`, `seamless`, `inherit` (SIGHUP to the
//! supervisor), `bare` (the baseline's rendered config, every R ms `haproxy
//! -f cfg -x <admin socket> -sf <old pid>` and nothing else: the floor for a
//! reload that starts a process) and `master-worker` (`haproxy -W`, SIGUSR2
//! to the master).
//!
//! Every scenario also exists as `<name>-ka`: the same, but each client
//! keeps one HTTP/1.1 keep-alive connection, opening a new one only after
//! the server answered `Connection: close` or after a failure; a request
//! that gets no complete response counts as failed (no retry). Their
//! ratios are to `baseline-ka`, run before the first of them; connections
//! opened are reported.
//!
//! For every scenario the CPU used in the window is measured from /proc:
//! the supervisor's own and the HAProxy processes' (exited ones included,
//! through the parent's reaped-children times), per reload beyond what
//! serving the requests costs at the baseline's rate, and the supervisor's
//! overhead against `bare` (points of throughput, CPU per reload).
//!
//! Two more scenarios change servers instead of signalling (SPEC §10):
//! every R ms the catalog file is rewritten (atomically) with one
//! server-only change, round and round — an instance added, a weight
//! changed, an instance's check failing, an instance moved to another
//! backend's port, the check passing again, the instance removed — between
//! three demo backends, so at least one instance always passes. `live`: the
//! supervisor applies them through the runtime API; `live-off`: the same
//! with `HAPROXY_NO_LIVE=true`, every change a reload. For every scenario
//! the HAProxy processes under the supervisor (or the master) are sampled
//! from /proc every 20 ms during the window: processes started is what
//! live changes are to save.
//!
//! Two more change their catalog structurally (issue 20): every R ms, in
//! turn, a new service, that service removed, and for `www` (under load) a
//! balance change, a health-check change, a sticky (HTTP cookie) toggle and
//! a new vhost. `structural`: live where HAProxy can (HAProxy 3.4: a
//! backend added from a running profile, published, switched to by the
//! hosts map; a removed one parked then deleted); `structural-off`: the
//! same with `HAPROXY_NO_LIVE=true`. Every profile the rotation visits is
//! running from the start (seed services, see `changes.rs`), on every
//! scenario's catalog. `--haproxy <path>` runs the whole run on another
//! HAProxy (3.4: `/opt/haproxy-supervisor/haproxy-3.4/haproxy`).
//!
//! `structural-floor`: the same rotation made by the bench itself with
//! the fewest runtime-API commands per change, on one connection, the
//! supervisor idle beside it (floor.rs): what HAProxy itself costs for
//! these changes, the floor under `structural` as `bare` is under the
//! reload rows.
//!
//! `--rounds N` runs the whole list N times in turn: each row then pools
//! its rounds (windows end to end, latencies together) and a table gives
//! every round's ratios to that round's baseline, so the slow drift of a
//! noisy machine weighs on every row alike. Each row that triggers
//! something also says where its tail is: of its requests, the share
//! slower than the baseline's p99, by how long after the latest trigger
//! (and, live, after the latest change applied) they started.
//!
//! Writes `results.md`, `results.json` and `reload-throughput.svg` into the
//! output directory and prints the table. See bench/README.md.

mod bare;
mod changes;
mod floor;
mod load;
mod plot;
mod report;
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use testkit::measure;
use testkit::Backend;

use bare::catch_sigusr1;
use plot::plot;
use report::{markdown, opt_fmt, to_json};
use scenarios::{split_ka, Bench};

const BUCKET_MS: u64 = 100;
const HOST: &str = "www.example.com";
/// How often the HAProxy processes are sampled during the window.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

#[derive(Parser, Debug, Clone)]
#[command(about = "Measures what HAProxy reloads cost clients, per reload strategy")]
struct Args {
    /// Concurrent clients (threads), each with one request in flight
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Seconds of measured load per scenario
    #[arg(long, default_value_t = 8.0)]
    duration_secs: f64,
    /// Milliseconds between reload triggers (and catalog changes in the
    /// `live`, `live-off`, `structural` and `structural-off` scenarios)
    #[arg(long, default_value_t = 150)]
    reload_every_ms: u64,
    /// Per-request timeout (connect included), in milliseconds
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Runs the whole scenario list this many times in turn; each row then
    /// pools its rounds (windows end to end, latencies together), and a
    /// table gives each round's ratios to that round's baseline. Slow
    /// drift of a noisy machine then weighs on every row alike
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Unmeasured load before each scenario, in milliseconds
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Pause between scenarios, in milliseconds
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Scenarios to run, comma-separated (baseline is always run first;
    /// baseline-ka before the first keep-alive scenario, `<name>-ka`)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,live,live-off,structural,structural-off,plain,syn-drop,seamless,inherit,bare,master-worker,baseline-ka,plain-ka,syn-drop-ka,seamless-ka,inherit-ka,bare-ka,master-worker-ka"
    )]
    scenarios: Vec<String>,
    #[command(flatten)]
    common: bench::Common,
    /// The HAProxy binary of every scenario (the supervisor's
    /// HAPROXY_BIN, `haproxy -W`, the bare loop); default: `haproxy` on
    /// the PATH. The structural changes go live from HAProxy 3.4 on
    /// (scripts/setup.sh installs one at
    /// /opt/haproxy-supervisor/haproxy-3.4/haproxy)
    #[arg(long)]
    haproxy: Option<PathBuf>,
    /// Only these kinds of the structural rotation, comma-separated
    /// (service-add, service-remove, balance, healthcheck, sticky, vhost;
    /// default: all), to see what each costs
    #[arg(long, value_delimiter = ',')]
    structural_kinds: Vec<String>,
    /// A template for the supervisor (HAPROXY_TEMPLATE) instead of the
    /// built-in one, for experiments; the master-worker row uses what it
    /// renders too
    #[arg(long)]
    template: Option<PathBuf>,
}

/// Outcome counts of one load run: per class, latencies, and per
/// [`BUCKET_MS`] bucket.
type Load = testkit::LoadReport;

fn main() {
    let mut args = Args::parse();
    if let Err(e) = catch_sigusr1() {
        eprintln!("reload-bench: {e}");
        std::process::exit(2);
    }
    bench::main("reload-bench", || real_main(&mut args));
}

fn real_main(args: &mut Args) -> Result<(), String> {
    let haproxy_bin = match &args.haproxy {
        Some(p) => p.clone(),
        None => testkit::which("haproxy").ok_or("haproxy is not installed")?,
    };
    if testkit::which("iptables").is_none() {
        return Err("iptables is not installed (needed by syn-drop)".into());
    }
    args.scenarios
        .retain(|s| s != "baseline" && s != "baseline-ka");
    args.scenarios.insert(0, "baseline".into());
    // Keep-alive rows are compared with a keep-alive baseline, run just
    // before the first of them.
    if let Some(i) = args.scenarios.iter().position(|s| split_ka(s).1) {
        args.scenarios.insert(i, "baseline-ka".into());
    }
    for s in &args.scenarios {
        if !matches!(
            split_ka(s).0,
            "baseline"
                | "live"
                | "live-off"
                | "structural"
                | "structural-off"
                | "structural-floor"
                | "plain"
                | "syn-drop"
                | "seamless"
                | "inherit"
                | "bare"
                | "master-worker"
        ) {
            return Err(format!("unknown scenario {s:?}"));
        }
    }

    if let Some(k) = args
        .structural_kinds
        .iter()
        .find(|k| !changes::STRUCTURAL_KINDS.contains(&k.as_str()))
    {
        return Err(format!(
            "unknown structural change kind {k:?} (one of {})",
            changes::STRUCTURAL_KINDS.join(", ")
        ));
    }
    let work = args.common.scratch_dir("reload-bench")?;
    let web = ["web-1", "web-2", "web-3"].map(Backend::start);
    let [b1, b2, b3] = [&web[0], &web[1], &web[2]].map(Backend::socket_addr);
    let bench = Bench {
        args: args.clone(),
        haproxy_bin: haproxy_bin.clone(),
        work: work.clone(),
        backends: [b1, b2, b3],
        addr: SocketAddr::from(([127, 0, 0, 1], args.common.http_port)),
    };
    let version = testkit::haproxy_version(&haproxy_bin);
    if args.scenarios.iter().any(|s| s.starts_with("structural"))
        && !haproxy_supervisor::live::Caps::from_version(&version).dynamic_backends
    {
        eprintln!(
            "reload-bench: {version}: no dynamic backends before HAProxy 3.4, every structural change reloads (--haproxy picks another HAProxy)"
        );
    }
    let mut meta = json!({
        "machine": measure::machine(),
        "haproxy": version,
        "haproxy_bin": haproxy_bin.display().to_string(),
        "date": measure::now_utc(),
        "open_files_limit_hard": nofile_hard(),
    });
    let mut rounds: Vec<Vec<scenarios::Outcome>> = Vec::new();
    let mut load_before = serde_json::Map::new();
    for round in 1..=args.rounds.max(1) {
        let mut outs = Vec::new();
        for name in &args.scenarios {
            let load = bench::machine_load();
            eprintln!("reload-bench: {name}: machine before: {load}");
            load_before.insert(format!("{name} (round {round})"), json!(load));
            eprintln!(
                "reload-bench: {name}: {} clients for {} s{}",
                args.clients,
                args.duration_secs,
                match split_ka(name).0 {
                    "baseline" => String::new(),
                    "live" | "live-off" => format!(
                        ", a server-only catalog change every {} ms",
                        args.reload_every_ms
                    ),
                    "structural" | "structural-off" => format!(
                        ", a structural catalog change every {} ms",
                        args.reload_every_ms
                    ),
                    _ => format!(", a reload every {} ms", args.reload_every_ms),
                }
            );
            let o = bench.run(name)?;
            eprintln!(
            "reload-bench: {name}: {} ok, {} failed, {:.0} req/s, p99 {:.2} ms, {} reloads done of {} sent, {} changes written, {} applied live, HAProxy processes started: {} sampled, {} logged{}{}",
            o.load.ok,
            o.load.failed(),
            o.rps(),
            o.lat_ms(0.99),
            o.reloads_done,
            o.reloads_sent,
            o.changes_written(),
            o.live_applied,
            o.started_sampled()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
            o.started_logged,
            if o.keepalive {
                format!(", {} connections opened", o.load.connections)
            } else {
                String::new()
            },
            match o.cpu {
                Some(c) => format!(
                    ", CPU s: supervisor {}, haproxy {}, other jobs {}",
                    opt_fmt(o.supervisor_cpu_s(), |v| format!("{v:.2}")),
                    opt_fmt(o.haproxy_cpu_s(), |v| format!("{v:.2}")),
                    opt_fmt(c.others_s, |v| format!("{v:.2}"))
                ),
                None => String::new(),
            },
        );
            outs.push(o);
            thread::sleep(Duration::from_millis(args.settle_ms));
        }
        if args.rounds > 1 {
            eprintln!("reload-bench: round {round} of {} done", args.rounds);
        }
        rounds.push(outs);
    }
    let per_round = report::rounds_markdown(&rounds);
    meta["rounds"] = json!(report::rounds_json(&rounds));
    let outs: Vec<scenarios::Outcome> = args
        .scenarios
        .iter()
        .map(|name| {
            scenarios::Outcome::pool(
                rounds
                    .iter_mut()
                    .map(|r| {
                        let i = r
                            .iter()
                            .position(|o| &o.name == name)
                            .expect("every round runs every scenario");
                        r.remove(i)
                    })
                    .collect(),
            )
        })
        .collect();

    meta["machine_load_before"] = json!(load_before);
    meta["machine_load_at_end"] = json!(bench::machine_load());
    let mut md = markdown(args, &outs, &meta);
    md.push_str(&per_round);
    let j = to_json(args, &outs, meta);
    args.common
        .write_report("results", "reload-bench results", &md, &j)?;
    plot(&args.common.out.join("reload-throughput.svg"), args, &outs)?;
    println!("{md}");
    println!(
        "written: {0}/results.md, {0}/results.json, {0}/reload-throughput.svg",
        args.common.out.display()
    );
    args.common.finish(&work);
    Ok(())
}

fn nofile_hard() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_max
}
