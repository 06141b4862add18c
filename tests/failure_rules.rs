//! Issue #9 (SPEC §11): failures that hurt no other service and heal by
//! themselves — a registration HAProxy refuses is left out while the rest
//! applies, a failed write is retried until it succeeds, a failed start
//! rolls the file on disk back to what serves, and SIGHUP re-reads the
//! template and the catalog file. Real HAProxy, real signals, real mounts;
//! every test in its own network namespace.
//! Run as root: `cargo test --release --test failure_rules`.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use testkit::*;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The environment of these tests: JSON logs, and HAProxy's access log
/// kept out of the supervisor's (a UDP port nobody reads).
fn envs() -> Vec<(&'static str, String)> {
    let mut e = env("seamless");
    e.push(("LOCAL_SYSLOG", "127.0.0.1:5514".into()));
    e
}

/// A service whose `HAPROXY.FRONTEND.PORT` another process holds makes
/// every new HAProxy fail to bind. The serving one is never paused (0
/// failed requests for the others), the service is left out with a
/// warning, and the rest of the same change applies. Once its registration
/// changes (and the port is free), it is tried again and serves.
#[test]
fn a_refused_registration_is_left_out_and_the_rest_applies() {
    netns::enter();
    let a = Backend::start("web-1");
    let b = Backend::start("api-1");
    let c = Backend::start("bad-1");
    let holder = TcpListener::bind("0.0.0.0:19000").expect("hold port 19000");
    let files = Files::new();
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    let sup = spawn_serving(&files.render_args(), &envs());

    let load = Load::start(FRONT, WWW, 10);
    load.wait_running(T);
    // www, api, and `bad` on TCP port 19000 (held) with `bad_tags` more.
    let with_bad = |bad_tags: &[&str]| {
        let mut tags = vec!["HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=19000"];
        tags.extend_from_slice(bad_tags);
        write_catalog(
            &files.catalog(),
            &[
                service("www", &[&a], &[]),
                service("api", &[&b], &["HAPROXY.VHOST=api.example.com"]),
                service("bad", &[&c], &tags),
            ],
        );
    };
    with_bad(&[]);
    wait_until(
        T,
        "api serves",
        || matches!(http_get(FRONT, "api.example.com", "/", Duration::from_secs(2)), Ok((200, b)) if b.trim_end() == "api-1"),
    );
    // Not a wait: the load goes on 500 ms after api serves, the window in
    // which a hurt serving haproxy would show in the report.
    thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    eprintln!("www during the refused start: {report}");
    assert_eq!(report.failed(), 0, "the serving haproxy was hurt: {report}");
    let left_out = sup.events(Event::ServiceLeftOut);
    assert_eq!(left_out.len(), 1, "one warning");
    assert_eq!(left_out[0]["fields"]["service"], "bad");
    assert!(
        left_out[0]["fields"]["haproxy"]
            .as_str()
            .unwrap_or("")
            .contains("19000"),
        "{left_out:?}"
    );
    let cfg = read(&files.config());
    assert!(cfg.contains("backend api"), "{cfg}");
    assert!(
        !cfg.contains("bad"),
        "the refused service is on disk:\n{cfg}"
    );

    // The port is freed and the registration changes: tried again, serves.
    drop(holder);
    with_bad(&["HAPROXY.BACKEND.BALANCE=leastconn"]);
    wait_until(
        T,
        "bad serves on 19000 once changed",
        || matches!(http_get("127.0.0.1:19000", "x", "/", Duration::from_secs(2)), Ok((200, b)) if b.trim_end() == "bad-1"),
    );
    assert!(wait_for(&sup, Event::ServiceRetried));
}

fn wait_for(sup: &Supervisor, event: Event) -> bool {
    poll_until(T, || sup.has_event(event))
}

/// `nsenter` into the supervisor's mount namespace.
fn in_mounts_of(pid: i32, args: &[&str]) {
    let st = Command::new(require("nsenter"))
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .status()
        .expect("run nsenter");
    assert!(st.success(), "nsenter {args:?} failed");
}

/// The config directory turns read-only under a running supervisor (its own
/// mount namespace, so nothing else sees it): a change that needs a reload
/// cannot be written, is retried with backoff (logged once), and applies by
/// itself once the directory is writable again — no further change needed.
#[test]
fn a_failed_write_heals_by_itself() {
    netns::enter();
    let a = Backend::start("web-1");
    let b = Backend::start("api-1");
    let files = Files::new();
    std::fs::create_dir_all(files.path("etc")).unwrap();
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    let env = envs();
    let mut args = vec![
        "-m".to_string(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        s(testkit::supervisor_bin()),
    ];
    args.extend(files.render_args());
    let sup = Supervisor::spawn_program(require("unshare"), &strs(&args), &env_refs(&env));
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);

    let etc = s(&files.path("etc"));
    in_mounts_of(sup.pid(), &["mount", "--bind", &etc, &etc]);
    in_mounts_of(sup.pid(), &["mount", "-o", "remount,ro,bind", &etc]);
    write_catalog(
        &files.catalog(),
        &[
            service("www", &[&a], &[]),
            service("api", &[&b], &["HAPROXY.VHOST=api.example.com"]),
        ],
    );
    assert!(wait_for(&sup, Event::ReloadRetry));
    // Several attempts, one error. Not a wait: the retries go on for 1.5 s
    // and the test asserts that they logged one error all that time.
    thread::sleep(Duration::from_millis(1500));
    assert!(matches!(get(WWW), Ok((200, _))), "www keeps serving");
    assert_eq!(sup.events(Event::ReloadRetry).len(), 1);
    in_mounts_of(sup.pid(), &["umount", &etc]);
    let t0 = Instant::now();
    wait_until(Duration::from_secs(20), "api serves once writable", || {
        matches!(
            http_get(FRONT, "api.example.com", "/", Duration::from_secs(2)),
            Ok((200, _))
        )
    });
    eprintln!(
        "healed {:?} after the directory became writable",
        t0.elapsed()
    );
    assert!(wait_for(&sup, Event::ReloadsHealed));
}

/// External-watcher mode: a config that passes `haproxy -c` but cannot
/// start (its port is taken). The serving HAProxy keeps serving, the last
/// good file is restored, and when the serving HAProxy then crashes the
/// restart uses the config that served — not the one that failed.
#[test]
fn a_failed_start_rolls_back_and_a_crash_restarts_what_served() {
    netns::enter();
    let a = Backend::start("web-1");
    let files = Files::new();
    let run_dir = files.run_dir();
    let good = format!(
        "global\n    stats socket {} mode 600 level admin expose-fd listeners\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 5s\n    timeout server 5s\n\
         frontend app_http_in\n    bind *:8080\n    default_backend www\n\
         backend www\n    server web-1 127.0.0.1:{}\n",
        run_dir.join("admin.sock").display(),
        a.port()
    );
    let external = files.path("external.cfg");
    std::fs::write(&external, &good).unwrap();
    let env = envs();
    let sup = Supervisor::spawn(
        &[
            "run",
            "--no-render",
            "--config-file",
            &s(&external),
            "--run-dir",
            &s(&run_dir),
        ],
        &env_refs(&env),
    );
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);
    let serving = haproxies_under(sup.pid());

    let _holder = TcpListener::bind("0.0.0.0:19001").expect("hold port 19001");
    let bad = format!("{good}frontend extra\n    bind *:19001\n    default_backend www\n");
    std::fs::write(&external, &bad).unwrap();
    sup.signal(Signal::SIGHUP).unwrap();
    assert!(wait_for(&sup, Event::ReloadFailed));
    // Rolled back (not "cannot roll back", which carries an error).
    assert!(poll_until(T, || sup
        .events(Event::RolledBack)
        .iter()
        .any(|e| e["fields"]["error"].is_null())));
    assert_eq!(read(&run_dir.join("haproxy.cfg")), good, "the running file");
    assert_eq!(haproxies_under(sup.pid()), serving);

    // The serving HAProxy crashes: the restart uses what served.
    let before = done_count(&sup);
    for p in &serving {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), Signal::SIGKILL);
    }
    wait_until(T, "restarted", || done_count(&sup) > before);
    wait_serving(WWW, T);
    assert_eq!(read(&run_dir.join("haproxy.cfg")), good);
}

/// SIGHUP re-reads the template file (a broken one is an error and changes
/// nothing) and the catalog file (even a change its poll cannot see: same
/// size, same inode, same modification time).
#[test]
fn sighup_rereads_the_template_and_the_catalog_file() {
    netns::enter();
    let a = Backend::start("web-1");
    let files = Files::new();
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    let template = files.path("haproxy.cfg.tera");
    let builtin = include_str!("../templates/haproxy.cfg.tera");
    std::fs::write(&template, builtin).unwrap();
    let mut env = envs();
    env.push(("HAPROXY_TEMPLATE", s(&template)));
    let sup = Supervisor::spawn(&strs(&files.render_args()), &env_refs(&env));
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);

    std::fs::write(&template, format!("# marker-1\n{builtin}")).unwrap();
    sup.signal(Signal::SIGHUP).unwrap();
    wait_done(&sup, 2, T);
    assert!(read(&files.config()).starts_with("# marker-1\n"));

    let before = read(&files.config());
    // The generation before the SIGHUP finishes draining first.
    wait_until(T, "one haproxy", || haproxies_under(sup.pid()).len() == 1);
    let pids = haproxies_under(sup.pid());
    std::fs::write(&template, "{% if %}broken").unwrap();
    sup.signal(Signal::SIGHUP).unwrap();
    assert!(wait_for(&sup, Event::RenderFailed));
    // Not a wait: nothing may change after the failed render; 300 ms gives
    // a wrong reload the time to show.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&files.config()), before);
    assert_eq!(haproxies_under(sup.pid()), pids);
    assert_eq!(done_count(&sup), 2);
    std::fs::write(&template, builtin).unwrap();

    // The catalog file changes in place, same length, same mtime: only a
    // re-read finds it.
    let path = files.catalog();
    let text = read(&path);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let changed = text.replacen("www-1", "www-9", 1);
    assert_eq!(changed.len(), text.len());
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(changed.as_bytes()).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let done = done_count(&sup);
    sup.signal(Signal::SIGHUP).unwrap();
    wait_until(T, "the SIGHUP reload", || done_count(&sup) > done);
    let cfg = read(&files.config());
    assert!(cfg.contains("server www-9 "), "{cfg}");
    let _ = json!(null);
}

/// `show servers state <backend>` through the admin socket: server name →
/// (srv_op_state, srv_admin_state).
fn server_states(
    sock: &std::path::Path,
    backend: &str,
) -> std::collections::BTreeMap<String, (u32, u32)> {
    use std::io::{Read, Write};
    let Ok(mut c) = std::os::unix::net::UnixStream::connect(sock) else {
        return Default::default();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = c.write_all(format!("show servers state {backend}\n").as_bytes());
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 8)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
            (
                f[3].to_string(),
                (f[5].parse().unwrap_or(99), f[6].parse().unwrap_or(99)),
            )
        })
        .collect()
}

/// Outside probe (issue 23): the serving HAProxy stalls (SIGSTOP) across a
/// live change. The `add server` times out, the supervisor reloads; the
/// stalled process runs the abandoned command once resumed (SIGCONT) and
/// leaves the new server in maintenance, which must not be carried into
/// the next generation: every server ends in the state the catalog says.
#[test]
fn a_stalled_haproxy_across_a_live_change_leaves_no_state_behind() {
    for strategy in ["inherit", "seamless"] {
        let (_orphans, [w1, w2, w3], files) = isolated::<3>();
        write_catalog(&files.catalog(), &[service("www", &[&w1, &w2], &[])]);
        let sup = spawn_serving(&files.render_args(), &env(strategy));
        let stalled = logged_serving_pid(&sup).expect("serving pid");
        let sock = files.run_dir().join("admin.sock");
        let stopped = nix::unistd::Pid::from_raw(stalled);
        nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).unwrap();
        write_catalog(&files.catalog(), &[service("www", &[&w1, &w2, &w3], &[])]);
        wait_until(
            Duration::from_secs(20),
            "the live change to time out",
            || sup.has_event(Event::LiveFailed),
        );
        // Resumed 3 s after it stopped, as the probe did; the abandoned
        // `add server` may run now.
        thread::sleep(Duration::from_secs(1));
        nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGCONT).unwrap();
        wait_until(Duration::from_secs(20), "a new generation to serve", || {
            logged_serving_pid(&sup).is_some_and(|p| p != stalled)
        });
        wait_until(T, "www-3 in rotation, as the catalog says", || {
            server_states(&sock, "www").get("www-3") == Some(&(2, 0))
        });
        let states = server_states(&sock, "www");
        assert_eq!(states.len(), 3, "{strategy}: {states:?}");
        for (name, st) in &states {
            assert_eq!(
                *st,
                (2, 0),
                "{strategy}: {name} is {st:?} (op, admin): {states:?}"
            );
        }
        wait_until(T, "www-3 answers", || {
            (0..12).any(|_| matches!(get(WWW), Ok((200, b)) if b.trim_end() == "web-3"))
        });
        sup.stop();
    }
}
