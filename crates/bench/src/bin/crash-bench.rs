//! crash-bench: what a crash of HAProxy costs, per reload strategy (issue 23).
//!
//! In a private network namespace, per strategy: two demo backends, the
//! supervisor as PID 1 (`unshare --pid`), C clients each opening a new
//! connection per request; every K ms every HAProxy process is SIGKILLed,
//! N times. Printed per strategy, measured in the same run: requests ok,
//! connections refused (what `inherit` is for: the supervisor holds the
//! listening sockets, so while no HAProxy runs the kernel queues
//! connections instead of refusing them), requests reset (in flight on the
//! killed process), and the time from each death to the next generation
//! serving (from the supervisor's log: `generation_died` → `reload_done`).
//!
//! `cargo run --release -p bench --bin crash-bench -- --kills 20`

use std::thread;
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::*;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// SIGKILLs of every HAProxy process, per strategy
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Milliseconds between kills
    #[arg(long, default_value_t = 1000)]
    every_ms: u64,
    /// Client threads, each a new connection per request
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Strategies to compare, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "inherit,seamless")]
    strategies: Vec<String>,
}

struct Row {
    strategy: String,
    report: LoadReport,
    gaps_ms: Vec<f64>,
}

fn main() {
    let args = Args::parse();
    bench::main("crash-bench", || real_main(args));
}

fn real_main(args: Args) -> Result<(), String> {
    let mut rows = Vec::new();
    for strategy in &args.strategies {
        rows.push(run(&args, strategy)?);
    }
    println!(
        "\n## crash-bench: every HAProxy process SIGKILLed {} times, {} ms apart, {} clients (new connection per request)\n",
        args.kills, args.every_ms, args.clients
    );
    println!("| strategy | requests | ok | refused | reset (in flight) | other failed | death → serving p50 ms | max ms | all (ms) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let mut g = r.gaps_ms.clone();
        g.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| {
            g.get(((g.len() as f64 - 1.0) * p).round() as usize)
                .copied()
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:?} |",
            r.strategy,
            r.report.total(),
            r.report.ok,
            r.report.refused,
            r.report.reset,
            r.report.timeout + r.report.other + r.report.non_2xx,
            q(0.5).unwrap_or(f64::NAN),
            q(1.0).unwrap_or(f64::NAN),
            r.gaps_ms
                .iter()
                .map(|x| x.round() as u64)
                .collect::<Vec<_>>()
        );
    }
    if let (Some(i), Some(s)) = (
        rows.iter().find(|r| r.strategy == "inherit"),
        rows.iter().find(|r| r.strategy == "seamless"),
    ) {
        println!(
            "\n- inherit: 0 refused → {} ({}); seamless in the same run: {} refused",
            i.report.refused,
            if i.report.refused == 0 {
                "met"
            } else {
                "NOT met"
            },
            s.report.refused
        );
        let max = i.gaps_ms.iter().copied().fold(0.0, f64::max);
        println!(
            "- inherit: next generation serving within 50 ms of each death → max {max:.0} ms ({})",
            if max <= 50.0 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

fn run(args: &Args, strategy: &str) -> Result<Row, String> {
    let (_orphans, _backends, files) = www_on::<2>();
    let envs = env(strategy);
    let sup = Supervisor::spawn_as_pid1(&strs(&files.render_args()), &env_refs(&envs));
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);
    let init = sup.pid();
    let load = Load::start(FRONT, WWW, args.clients);
    for round in 0..args.kills {
        for p in haproxies_under(init) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        wait_done(&sup, 2 + round, T);
        thread::sleep(Duration::from_millis(args.every_ms));
    }
    let report = load.stop();
    let gaps_ms = death_to_serving_ms(&sup);
    eprintln!("{strategy}: {report}");
    sup.stop();
    Ok(Row {
        strategy: strategy.to_string(),
        report,
        gaps_ms,
    })
}
