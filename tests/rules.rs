//! Per-service rules from tags (issue 21), through the supervisor and a
//! real HAProxy (2.6) with real clients (curl, from several source
//! addresses inside the test's network namespace, and wrk): what each rule
//! does as the backend and the client see it, and that changing a rule's
//! values on a running service is live (no process started, nothing
//! failed). The backend is an echo server in the test: its body is the
//! request head it received. Run as root: `cargo test --release --test rules`.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::*;

/// The echo backend ([`HeadEcho`]): its body is the request head it got,
/// padded so that compression has something to do.
fn echo_server() -> u16 {
    HeadEcho {
        prefix: String::new(),
        pad: 1000,
    }
    .start()
}

/// A catalog-file service on one instance at `127.0.0.1:<port>`.
fn svc(name: &str, port: u16, tags: &[&str]) -> Value {
    let mut all = vec!["HAPROXY.ENABLE=true".to_string()];
    all.extend(tags.iter().map(|t| t.to_string()));
    json!({
        "name": name,
        "instances": [{ "id": format!("{name}-1"), "address": "127.0.0.1", "port": port, "tags": all }],
    })
}

/// One curl request to the frontend: status, response head (lowercased)
/// and body. `args` come before the URL.
fn curl(host: &str, path: &str, args: &[&str]) -> (u16, String, String) {
    let out = Command::new(require("curl"))
        .args([
            "-s",
            "-i",
            "--max-time",
            "10",
            "-H",
            &format!("Host: {host}"),
        ])
        .args(args)
        .arg(format!("http://{FRONT}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn status(host: &str, path: &str, args: &[&str]) -> u16 {
    curl(host, path, args).0
}

/// sha256(salt + password), lowercase hex, as the `HAPROXY.AUTH` tag
/// wants it (computed by `sha256sum`, not by the product's code).
fn hash(salt: &str, password: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{salt}{password}").as_bytes())
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
fn each_rule_does_what_its_tag_says() {
    let (_orphans, [a], files) = isolated::<1>();
    let echo = echo_server();
    let auth = format!(
        "HAPROXY.AUTH=alice:saltsalt1:{}",
        hash("saltsalt1", "s3cret")
    );
    let catalog = vec![
        service("www", &[&a], &[]),
        svc(
            "api",
            echo,
            &[
                "HAPROXY.VHOST=api.example.com",
                "HAPROXY.PATH=/api/v2",
                "HAPROXY.PATH.STRIP=true",
                "HAPROXY.PATH.PREFIX=/internal",
                "HAPROXY.BACKEND.HOST=backend.local:8000",
                "HAPROXY.BACKEND.TIMEOUT=1s",
                "HAPROXY.REQUEST.HEADER.X-Team=blue",
                "HAPROXY.RESPONSE.HEADER.Access-Control-Allow-Origin=https://app.example.com",
                "HAPROXY.COMPRESS=true",
            ],
        ),
        svc(
            "priv",
            echo,
            &[
                "HAPROXY.ALLOW=127.0.0.2,127.0.0.4/31",
                "HAPROXY.DENY=127.0.0.5",
                &auth,
            ],
        ),
        svc(
            "old",
            echo,
            &["HAPROXY.REDIRECT=301,https://new.example.com/base"],
        ),
    ];
    write_catalog(&files.catalog(), &catalog);
    let sup = spawn_serving(&files.render_args(), &env("inherit"));
    let left_out: Vec<Value> = sup
        .events(Event::Warning)
        .into_iter()
        .filter(|w| w["fields"]["service"].is_string())
        .collect();
    assert!(left_out.is_empty(), "{left_out:?}");

    // Rewrites, as the backend sees them: prefix stripped then added, the
    // Host replaced, a header added; and the response header the client sees.
    let (code, head, body) = curl("api.example.com", "/api/v2/users/7?x=1", &[]);
    assert_eq!(code, 200, "{head}{body}");
    let body = body.to_ascii_lowercase();
    assert!(
        body.starts_with("get /internal/users/7?x=1 http/1.1\r\n"),
        "{body}"
    );
    assert!(body.contains("\r\nhost: backend.local:8000\r\n"), "{body}");
    assert!(body.contains("\r\nx-team: blue\r\n"), "{body}");
    assert!(
        head.contains("\r\naccess-control-allow-origin: https://app.example.com"),
        "{head}"
    );
    let (_, _, body) = curl("api.example.com", "/api/v2", &[]);
    assert!(body.starts_with("GET /internal/ HTTP/1.1"), "{body}");
    // Another service gets none of it.
    let (_, head, _) = curl("www.example.com", "/", &[]);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    // A client cannot pretend: its own X-Team is replaced.
    let (_, _, body) = curl("api.example.com", "/api/v2/x", &["-H", "X-Team: red"]);
    assert!(
        body.contains("x-team: blue") && !body.contains("red"),
        "{body}"
    );

    // Compression, when the client accepts it.
    let (_, head, body) = curl("api.example.com", "/api/v2/c", &["--compressed"]);
    assert!(head.contains("\r\ncontent-encoding: gzip"), "{head}");
    assert!(body.contains("echo echo"), "decompressed: {body}");

    // Per-service timeout: 1 s instead of the default 30 s.
    let t0 = Instant::now();
    let code = status("api.example.com", "/api/v2/sleep/4000", &[]);
    let took = t0.elapsed();
    assert_eq!(code, 504, "a 4 s answer past a 1 s timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "answered in {took:?}"
    );
    println!("HAPROXY.BACKEND.TIMEOUT=1s: 504 after {took:?}");

    // Allow and deny by source address, with the right credentials.
    let ok = ["-u", "alice:s3cret"];
    for (src, want) in [
        ("127.0.0.2", 200),
        ("127.0.0.3", 403),
        ("127.0.0.4", 200),
        ("127.0.0.5", 403),
        ("127.0.0.1", 403),
    ] {
        let mut args = vec!["--interface", src];
        args.extend(ok);
        assert_eq!(status("priv.example.com", "/", &args), want, "from {src}");
    }
    // Credentials: none, wrong user, wrong password, right.
    let from = ["--interface", "127.0.0.2"];
    let (code, head, _) = curl("priv.example.com", "/", &from);
    assert_eq!(code, 401);
    assert!(
        head.contains("www-authenticate: basic realm=\"restricted\""),
        "{head}"
    );
    for creds in ["bob:s3cret", "alice:wrong", "alice:", "alice:s3cret2"] {
        let args = ["--interface", "127.0.0.2", "-u", creds];
        assert_eq!(status("priv.example.com", "/", &args), 401, "{creds}");
    }
    let (code, _, body) = curl(
        "priv.example.com",
        "/",
        &["--interface", "127.0.0.2", "-u", "alice:s3cret"],
    );
    assert_eq!(code, 200);
    assert!(
        body.to_ascii_lowercase().contains("authorization: basic"),
        "{body}"
    );

    // Redirect: the target plus the request's path and query.
    let (code, head, _) = curl("old.example.com", "/a/b?c=1", &[]);
    assert_eq!(code, 301);
    assert!(
        head.contains("\r\nlocation: https://new.example.com/base/a/b?c=1"),
        "{head}"
    );
}

/// wrk's 2xx count and duration: (2xx, seconds).
fn wrk(host: &str, secs: u32) -> (u64, f64) {
    let out = Command::new(require("wrk"))
        .args([
            "-t",
            "2",
            "-c",
            "8",
            "-d",
            &format!("{secs}s"),
            "-H",
            &format!("Host: {host}"),
        ])
        .arg(format!("http://{FRONT}/"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let total: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split(" requests in ")
                .next()
                .filter(|_| l.contains(" requests in "))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{text}"));
    let secs: f64 = text
        .lines()
        .find_map(|l| l.split(" requests in ").nth(1))
        .and_then(|r| r.split('s').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no duration in wrk's output:\n{text}"));
    let non_2xx: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0);
    (total - non_2xx, secs)
}

#[test]
fn a_rate_limit_admits_its_rate_under_wrk_and_changes_live() {
    let (_orphans, [a, b], files) = isolated::<2>();
    let limited = |rate: u32| {
        vec![
            service("www", &[&a], &[]),
            service("lim", &[&b], &[&format!("HAPROXY.RATE_LIMIT={rate}")]),
        ]
    };
    write_catalog(&files.catalog(), &limited(200));
    let sup = spawn_serving(&files.render_args(), &env("inherit"));
    let pid = logged_serving_pid(&sup).expect("a serving pid");
    let mut rates = Vec::new();
    for (n, limit) in [200u32, 50].into_iter().enumerate() {
        if n > 0 {
            let before = sup.events(Event::LiveApplied).len();
            write_catalog(&files.catalog(), &limited(limit));
            wait_until(T, "the new limit applied live", || {
                sup.events(Event::LiveApplied).len() > before
            });
        }
        // The rate is over a sliding second: a first, unmeasured run fills
        // the window, so the measured one sees the steady state.
        wrk("lim.example.com", 2);
        let (ok, secs) = wrk("lim.example.com", 5);
        let rate = ok as f64 / secs;
        println!("HAPROXY.RATE_LIMIT={limit}: wrk (8 connections, one address, after 2 s of warm-up) got {ok} 2xx in {secs} s = {rate:.1}/s");
        rates.push((limit, rate));
    }
    for (limit, rate) in &rates {
        let l = *limit as f64;
        assert!(
            (rate - l).abs() <= l * 0.1,
            "admitted {rate:.1}/s for a limit of {limit}/s"
        );
    }
    // Another address has its own budget; over it: 429.
    assert_eq!(
        status("lim.example.com", "/", &["--interface", "127.0.0.9"]),
        200
    );
    assert_eq!(logged_serving_pid(&sup), Some(pid), "a process started");
    assert_eq!(done_count(&sup), 1, "the limit change reloaded");
}

#[test]
fn rule_values_change_live_under_load() {
    let (_orphans, [a], files) = isolated::<1>();
    let echo = echo_server();
    let catalog = |i: usize| {
        let tags: Vec<String> = vec![
            format!("HAPROXY.PATH.PREFIX=/v{i}"),
            format!("HAPROXY.BACKEND.HOST=b{i}.internal"),
            format!("HAPROXY.REQUEST.HEADER.X-Round={i}"),
            format!("HAPROXY.RESPONSE.HEADER.X-Served-Round={i}"),
            format!("HAPROXY.BACKEND.TIMEOUT={}s", 10 + i),
            format!("HAPROXY.RATE_LIMIT={}", 100_000 + i),
            // The load comes from 127.0.0.1, allowed in every round; the
            // rest of the list moves.
            format!("HAPROXY.ALLOW=127.0.0.1,127.0.1.{i},10.{i}.0.0/16"),
            format!("HAPROXY.DENY=127.0.2.{i}"),
        ];
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let salt = format!("saltsalt{i}");
        let auth = format!(
            "HAPROXY.AUTH=alice:{salt}:{}",
            hash(&salt, &format!("pw{i}"))
        );
        let path = if i.is_multiple_of(2) { "/a" } else { "/a/b" };
        let code = if i.is_multiple_of(2) { 307 } else { 308 };
        vec![
            service("www", &[&a], &[]),
            svc("ruled", echo, &tags),
            svc(
                "moved",
                echo,
                &[&format!("HAPROXY.REDIRECT={code},https://r{i}.example.com")],
            ),
            svc("locked", echo, &[&auth]),
            svc(
                "stripped",
                echo,
                &[&format!("HAPROXY.PATH={path}"), "HAPROXY.PATH.STRIP=true"],
            ),
        ]
    };
    write_catalog(&files.catalog(), &catalog(0));
    let sup = spawn_serving(&files.render_args(), &env("inherit"));
    let pid = logged_serving_pid(&sup).expect("a serving pid");
    let load = Load::start(FRONT, "ruled.example.com", 8);
    for i in 1..=10 {
        let before = sup.events(Event::LiveApplied).len();
        write_catalog(&files.catalog(), &catalog(i));
        wait_until(T, "the rule change applied live", || {
            sup.events(Event::LiveApplied).len() > before
        });
        let (code, head, body) = curl("ruled.example.com", "/p", &[]);
        assert_eq!(code, 200, "{head}");
        let body = body.to_ascii_lowercase();
        assert!(
            body.starts_with(&format!("get /v{i}/p ")),
            "round {i}: {body}"
        );
        assert!(
            body.contains(&format!("host: b{i}.internal\r\n")),
            "round {i}: {body}"
        );
        assert!(
            body.contains(&format!("x-round: {i}\r\n")),
            "round {i}: {body}"
        );
        assert!(
            head.contains(&format!("x-served-round: {i}")),
            "round {i}: {head}"
        );
        // The allow and deny lists moved.
        let from = |a: String| status("ruled.example.com", "/", &["--interface", &a]);
        assert_eq!(from(format!("127.0.1.{i}")), 200, "round {i}");
        assert_eq!(from(format!("127.0.1.{}", i - 1)), 403, "round {i}");
        assert_eq!(from(format!("127.0.2.{i}")), 403, "round {i}");
        // The redirect, the credentials and the stripped path moved.
        let (code, head, _) = curl("moved.example.com", "/q", &[]);
        assert_eq!(
            code,
            if i.is_multiple_of(2) { 307 } else { 308 },
            "round {i}"
        );
        assert!(
            head.contains(&format!("location: https://r{i}.example.com/q")),
            "round {i}: {head}"
        );
        let (pw, old_pw) = (format!("alice:pw{i}"), format!("alice:pw{}", i - 1));
        assert_eq!(
            status("locked.example.com", "/", &["-u", &pw]),
            200,
            "round {i}"
        );
        assert_eq!(
            status("locked.example.com", "/", &["-u", &old_pw]),
            401,
            "round {i}"
        );
        let path = if i.is_multiple_of(2) {
            "/a/z"
        } else {
            "/a/b/z"
        };
        let (_, _, body) = curl("stripped.example.com", path, &[]);
        assert!(body.starts_with("GET /z HTTP/1.1"), "round {i}: {body}");
    }
    let report = load.stop();
    // (The bodies differ with every round: only the counts are shown.)
    println!(
        "10 rounds of rule values (prefix, host, headers, timeout, rate, allow, deny, redirect, auth, strip) changed under load: {} requests, {} ok, {} failed, {} non-2xx",
        report.total(),
        report.ok,
        report.failed(),
        report.non_2xx
    );
    assert_eq!(
        report.failed(),
        0,
        "{} failed: {:?}",
        report.failed(),
        report.errors
    );
    assert!(report.ok > 0);
    assert_eq!(logged_serving_pid(&sup), Some(pid), "a process started");
    assert_eq!(done_count(&sup), 1, "a rule value change reloaded");
}

/// Shares of `a` and `b` (percent of 2xx bodies) in a 1 s sample of load,
/// new connection per request and keep-alive mixed.
fn sample_share(host: &str, a: &str, b: &str) -> (f64, f64, u64) {
    let close = Load::start(FRONT, host, 4);
    let mut opts = LoadOptions::new(4);
    opts.keepalive = true;
    let ka = Load::start_with(FRONT.parse().unwrap(), host, &opts);
    std::thread::sleep(Duration::from_secs(1)); // the sample's length, not a wait
    let mut r = close.stop();
    r.merge(ka.stop());
    let n = r.ok.max(1) as f64;
    let share = |k: &str| 100.0 * *r.bodies.get(k).unwrap_or(&0) as f64 / n;
    (share(a), share(b), r.failed())
}

#[test]
fn blue_green_by_weight_under_load_loses_nothing() {
    let (_orphans, [w, v1, v2], files) = isolated::<3>();
    let app = |name: &str, be: &Backend, weight: u32| {
        service(
            name,
            &[be],
            &[
                "HAPROXY.VHOST=app.example.com",
                &format!("HAPROXY.ROUTE.WEIGHT={weight}"),
            ],
        )
    };
    write_catalog(
        &files.catalog(),
        &[service("www", &[&w], &[]), app("blue", &v1, 100)],
    );
    let sup = spawn_serving(&files.render_args(), &env("inherit"));
    // Under load all along: a new connection per request, and keep-alive.
    let close = Load::start(FRONT, "app.example.com", 4);
    let mut opts = LoadOptions::new(4);
    opts.keepalive = true;
    let ka = Load::start_with(FRONT.parse().unwrap(), "app.example.com", &opts);

    // green registered with weight 0 (a new backend: a reload on 2.6),
    // then 50 and 100 (live), then blue deregistered.
    let live = |sup: &Supervisor| sup.events(Event::LiveApplied).len();
    write_catalog(
        &files.catalog(),
        &[
            service("www", &[&w], &[]),
            app("blue", &v1, 100),
            app("green", &v2, 0),
        ],
    );
    wait_done(&sup, 2, T);
    let mut steps = vec![(0u32, sample_share("app.example.com", "web-2", "web-3"))];
    for (blue, green) in [(50u32, 50u32), (0, 100)] {
        let before = live(&sup);
        write_catalog(
            &files.catalog(),
            &[
                service("www", &[&w], &[]),
                app("blue", &v1, blue),
                app("green", &v2, green),
            ],
        );
        wait_until(T, "the new weights applied live", || live(&sup) > before);
        steps.push((green, sample_share("app.example.com", "web-2", "web-3")));
    }
    let reloads_before = done_count(&sup);
    write_catalog(
        &files.catalog(),
        &[service("www", &[&w], &[]), app("green", &v2, 100)],
    );
    wait_done(&sup, reloads_before + 1, T);
    steps.push((100, sample_share("app.example.com", "web-2", "web-3")));
    let mut report = close.stop();
    report.merge(ka.stop());

    for (want, (blue, green, failed)) in &steps {
        println!("green weight {want}%: green {green:.1}%, blue {blue:.1}%, {failed} failed in the sample");
    }
    println!("blue-green under load (4 clients closing, 4 keep-alive): {report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert_eq!(report.non_2xx, 0, "{report}");
    for (want, (_, green, failed)) in &steps {
        assert_eq!(*failed, 0);
        assert!(
            (green - *want as f64).abs() <= 5.0,
            "green got {green:.1}% for a weight share of {want}%"
        );
    }
    assert_eq!(
        done_count(&sup),
        3,
        "reloads: start, green's backend, blue's removal (weights are live)"
    );
}

#[test]
fn a_sticky_split_keeps_each_client_on_one_side() {
    let (_orphans, [w, v1, v2], files) = isolated::<3>();
    let app = |name: &str, be: &Backend| {
        service(
            name,
            &[be],
            &[
                "HAPROXY.VHOST=app.example.com",
                "HAPROXY.ROUTE.WEIGHT=50",
                "HAPROXY.ROUTE.STICKY=true",
            ],
        )
    };
    write_catalog(
        &files.catalog(),
        &[
            service("www", &[&w], &[]),
            app("blue", &v1),
            app("green", &v2),
        ],
    );
    let _sup = spawn_serving(&files.render_args(), &env("inherit"));
    let mut sides = std::collections::BTreeMap::new();
    for n in 2..42 {
        let src = format!("127.0.0.{n}");
        let seen: std::collections::BTreeSet<String> = (0..5)
            .map(|_| {
                curl("app.example.com", "/", &["--interface", &src])
                    .2
                    .trim()
                    .to_string()
            })
            .collect();
        assert_eq!(seen.len(), 1, "client {src} went to both sides: {seen:?}");
        *sides.entry(seen.into_iter().next().unwrap()).or_insert(0) += 1;
    }
    println!("40 client addresses over a 50/50 sticky split: {sides:?}");
    assert_eq!(sides.len(), 2, "{sides:?}");
}
