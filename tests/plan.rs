//! Issue 24: `haproxy-supervisor plan` against a real running supervisor
//! and HAProxy in a private network namespace. It says what a catalog
//! would change, live or by a reload (exit 0 / 2 / 3, 1 for an error), and
//! changes nothing: the serving HAProxy keeps its pid and its `show servers
//! state`, the supervisor logs no change, the config on disk is the same.
//! Run as root: `cargo test --release --test plan`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testkit::*;

/// `show servers state` on the admin socket, without the column that
/// counts seconds (`srv_time_since_last_change`, the 10th).
fn servers_state(sock: &Path) -> String {
    let mut s = UnixStream::connect(sock).expect("connect to the admin socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"show servers state\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read show servers state");
    out.lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split_whitespace().collect();
            if !l.starts_with('#') && f.len() > 9 {
                f.remove(9);
            }
            f.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The HAProxy processes under the supervisor that serve (not `haproxy -c`).
fn serving_haproxies(sup: &Supervisor) -> Vec<i32> {
    let mut v: Vec<i32> = haproxies_under(sup.pid())
        .into_iter()
        .filter(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            !cmdline.is_empty() && !cmdline.split(|b| *b == 0).any(|a| a == b"-c")
        })
        .collect();
    v.sort();
    v
}

/// Names and contents of the files under `dir` (the admin socket and the
/// pid file included), to compare before and after.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.push((s(&p), std::fs::read(&p).unwrap_or_default()));
            } else {
                out.push((s(&p), Vec::new()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn plan_says_what_would_change_and_changes_nothing() {
    let (_orphans, [a, b, c, d], files) = isolated::<4>();
    let www2 = [service("www", &[&a, &b], &[])];
    write_catalog(&files.catalog(), &www2);
    let env = env("seamless");
    let sup = spawn_serving(&files.render_args(), &env);

    let sock = files.run_dir().join("admin.sock");
    let plan = |catalog: &Path, extra: &[&str]| {
        let mut args = vec![
            "plan".to_string(),
            "--catalog-file".into(),
            s(catalog),
            "--config-file".into(),
            s(&files.config()),
            "--run-dir".into(),
            s(&files.run_dir()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = run_once(&strs(&args), &env_refs(&env), Duration::from_secs(20));
        eprintln!(
            "$ haproxy-supervisor {} → exit {:?}\n{}",
            args.join(" "),
            out.code,
            out.stdout
        );
        out
    };
    // What serves before: pids, server state, files, the supervisor's events.
    let pids = serving_haproxies(&sup);
    assert_eq!(pids.len(), 1, "one serving haproxy: {pids:?}");
    let state = servers_state(&sock);
    assert!(
        state.contains(" www ") && state.contains("www-2"),
        "show servers state lists www: {state}"
    );
    let etc = (tree(&files.path("etc")), tree(&files.run_dir()));
    let changes = |sup: &Supervisor| {
        (
            sup.events(Event::ReloadDone).len(),
            sup.events(Event::LiveApplied).len(),
            sup.events(Event::StructuralChange).len(),
            sup.events(Event::ConfigWritten).len(),
        )
    };
    let events = changes(&sup);

    // (a) The catalog that serves: nothing to do.
    let same = files.path("same.json");
    write_catalog(&same, &www2);
    let out = plan(&same, &[]);
    assert_eq!(out.code, Some(0), "unchanged catalog: {out:?}");
    assert!(out.stdout.contains("nothing to change"), "{}", out.stdout);
    assert!(
        !out.stdout.lines().any(|l| l.starts_with(['+', '-', '~'])),
        "no change listed: {}",
        out.stdout
    );

    // (b) A new instance of www: live.
    let more = files.path("more.json");
    write_catalog(&more, &[service("www", &[&a, &b, &c], &[])]);
    let out = plan(&more, &[]);
    assert_eq!(out.code, Some(2), "new instance: {out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("+ server www/www-3 "))
        .unwrap_or_else(|| panic!("a line for www-3: {}", out.stdout));
    assert!(line.contains(&c.addr()), "{line}");
    assert!(line.ends_with("  live"), "{line}");
    let json = plan(&more, &["--format", "json"]);
    assert_eq!(json.code, Some(2), "{json:?}");
    let j: Value = serde_json::from_str(&json.stdout).expect("--format json is JSON");
    assert_eq!(j["verdict"], "live");
    assert_eq!(j["changes"][0]["name"], "www/www-3");
    assert_eq!(j["changes"][0]["live"], true);

    // (c) A new service: a reload, and why.
    let api = files.path("api.json");
    write_catalog(
        &api,
        &[
            service("www", &[&a, &b], &[]),
            service("api", &[&d], &["HAPROXY.PATH=/api"]),
        ],
    );
    let out = plan(&api, &[]);
    assert_eq!(out.code, Some(3), "new service: {out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("+ service api "))
        .unwrap_or_else(|| panic!("a line for the service api: {}", out.stdout));
    assert!(line.contains("reload: new backend api "), "{line}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("plan: a reload: ")),
        "{}",
        out.stdout
    );

    // (d) A malformed catalog: a clear error, exit 1.
    let bad = files.path("bad.json");
    write_atomic(&bad, br#"{"services": [{"name": "www", "instances": ["#);
    let out = plan(&bad, &[]);
    assert_eq!(out.code, Some(1), "malformed catalog: {out:?}");
    assert!(
        fatal_error(&out.stderr).is_some_and(|e| e.contains(&s(&bad))),
        "no fatal event naming the file: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "no plan printed: {}", out.stdout);

    // Nothing changed meanwhile.
    assert_eq!(serving_haproxies(&sup), pids, "same haproxy pid");
    assert_eq!(servers_state(&sock), state, "same show servers state");
    assert_eq!(
        (tree(&files.path("etc")), tree(&files.run_dir())),
        etc,
        "config, maps and run dir untouched"
    );
    assert_eq!(changes(&sup), events, "the supervisor did nothing");
    assert_eq!(logged_serving_pid(&sup), pids.first().copied());

    // The plan matches what the supervisor then does: the new instance
    // goes live on the same pid.
    write_catalog(&files.catalog(), &[service("www", &[&a, &b, &c], &[])]);
    wait_until(T, "live_applied", || {
        sup.events(Event::LiveApplied).len() > events.1
    });
    assert_eq!(serving_haproxies(&sup), pids, "applied live: same pid");
    sup.stop();
}
