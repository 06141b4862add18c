//! h2-bench: HTTP/2 requests/s through the supervisor's HAProxy to an h2c
//! backend (`HAPROXY.BACKEND.PROTO=h2c`), as a share of the same load
//! straight to the backend, in the same run (issue 22).
//!
//! In a private network namespace: `nghttpd --no-tls` (nghttp2-server)
//! serving a small file, the supervisor on a catalog file with one service
//! on it, and `h2load` (nghttp2-client) with C clients × M concurrent
//! streams for D seconds, alternately direct and through the frontend
//! (`:authority` set to the service's host), R rounds each; the median
//! round is printed.
//!
//! `cargo run --release -p bench --bin h2-bench -- --rounds 3 --duration-secs 5`

use std::path::Path;
use std::process::{Child, Command, Stdio};

use clap::Parser;
use testkit::*;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// h2load clients (connections)
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Concurrent streams per connection
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Seconds of each measurement (after 1 s of warm-up)
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Measurements of each kind, alternated
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() {
    let args = Args::parse();
    bench::main("h2-bench", || real_main(args));
}

/// `nghttpd` stopped on drop.
struct Nghttpd(Child);

impl Drop for Nghttpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const BACKEND: &str = "127.0.0.1:9443";
const HOST: &str = "h2.example.com";

/// One h2load run: requests/s and the failed count.
fn h2load(args: &Args, url: &str, authority: Option<&str>) -> Result<(f64, u64), String> {
    let mut cmd = Command::new(require("h2load"));
    cmd.args([
        "-c",
        &args.clients.to_string(),
        "-m",
        &args.streams.to_string(),
        "-t",
        "1",
        "-D",
        &args.duration_secs.to_string(),
        "--warm-up-time",
        "1",
    ]);
    if let Some(a) = authority {
        cmd.args(["-H", &format!(":authority: {a}")]);
    }
    let out = cmd.arg(url).output().map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 5.00s, 12345.67 req/s, 1.23MB/s"
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.strip_suffix(" req/s"))
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| format!("h2load output not understood:\n{text}"))?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let failed = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" failed")))
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let status_2xx = text
        .lines()
        .any(|l| l.starts_with("status codes:") && !l.contains(" 0 2xx"));
    if !status_2xx {
        return Err(format!("no 2xx answer:\n{text}"));
    }
    Ok((rps, failed))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn real_main(args: Args) -> Result<(), String> {
    let _orphans = OrphanGuard;
    let files = Files::new();
    let docroot = files.path("htdocs");
    std::fs::create_dir_all(&docroot).map_err(|e| e.to_string())?;
    std::fs::write(docroot.join("index.html"), "ok\n").map_err(|e| e.to_string())?;
    let mut cmd = Command::new(require("nghttpd"));
    cmd.args(["--no-tls", "-d", &s(&docroot), "9443"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    process::die_with_parent(&mut cmd);
    let _nghttpd = Nghttpd(cmd.spawn().map_err(|e| format!("nghttpd: {e}"))?);
    wait_until(T, "nghttpd listens", || {
        std::net::TcpStream::connect(BACKEND).is_ok()
    });

    write_catalog(
        &files.catalog(),
        &[serde_json::json!({"name": "h2", "instances": [{
            "id": "h2-1", "address": "127.0.0.1", "port": 9443,
            "tags": ["HAPROXY.ENABLE=true", "HAPROXY.BACKEND.PROTO=h2c", format!("HAPROXY.VHOST={HOST}")],
        }]})],
    );
    let envs = env("inherit");
    let sup = Supervisor::spawn(&strs(&files.render_args()), &env_refs(&envs));
    wait_done(&sup, 1, T);
    wait_until(T, "the proxy serves h2", || {
        h2load(
            &Args {
                duration_secs: 1,
                clients: 1,
                streams: 1,
                ..args.clone()
            },
            &format!("http://{FRONT}/index.html"),
            Some(HOST),
        )
        .is_ok()
    });
    let haproxy = std::fs::read_to_string(files.config()).unwrap_or_default();
    let line = haproxy
        .lines()
        .find(|l| l.contains("proto h2"))
        .unwrap_or("(no proto h2 line!)")
        .trim()
        .to_string();

    let (mut direct, mut proxied, mut failed) = (Vec::new(), Vec::new(), 0u64);
    for round in 0..args.rounds {
        let (d, fd) = h2load(&args, &format!("http://{BACKEND}/index.html"), None)?;
        let (p, fp) = h2load(&args, &format!("http://{FRONT}/index.html"), Some(HOST))?;
        eprintln!("round {round}: direct {d:.0} req/s, through the proxy {p:.0} req/s");
        direct.push(d);
        proxied.push(p);
        failed += fd + fp;
    }
    sup.stop();
    let (d, p) = (median(direct), median(proxied));
    let version = haproxy_version(Path::new("haproxy"));
    println!(
        "\n## h2-bench: h2load -c {} -m {} -D {} ({} rounds, median), HTTP/2 client → {} → h2c backend (nghttpd --no-tls)\n",
        args.clients, args.streams, args.duration_secs, args.rounds,
        version.trim()
    );
    println!("| path | requests/s | share of direct |");
    println!("|---|---|---|");
    println!("| direct (h2c) | {d:.0} | 100% |");
    println!(
        "| through the proxy (h2 → h2c) | {p:.0} | {:.0}% |",
        100.0 * p / d
    );
    println!("\nfailed requests: {failed}; the profile's line: `{line}`");
    Ok(())
}
