//! Issue #3: reloads that lose no request, SYN-drop rules that never stay
//! behind, fast discovery of a new service, invalid configs that change
//! nothing, SIGHUP storms, and start-up errors.
//!
//! Every test runs in its own network namespace (`netns::enter`), with real
//! HAProxy, iptables, Consul and signals. Run as root: `cargo test --test reload`.

use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testkit::*;

/// Clients of every load: each opens a new connection per request.
const CLIENTS: usize = 20;
/// SIGHUP-triggered reloads per strategy.
const RELOADS: u64 = 30;
/// Pause between one reload being done and the next SIGHUP.
const PAUSE: Duration = Duration::from_millis(120);
/// The same for `syn-drop`. A SYN dropped by a rule is sent again by the
/// client's kernel after 1 s (the initial RTO), and if that one is dropped
/// too, after 3 s: past the 2 s after which the load's clients give up.
/// Leaving more than 1 s between one reload's rules going and the next
/// reload's coming (as a consul-template `wait` would) makes every dropped
/// SYN's retransmission land while nothing is dropped, so any failure is a
/// real loss, not two reloads compounding the retransmission timer.
const SYN_DROP_PAUSE: Duration = Duration::from_millis(1050);

static ONE_LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Run {
    report: LoadReport,
    reloads: u64,
    took: Duration,
    /// How long generations took to start, for the failure messages.
    windows: String,
}

/// Starts a supervisor with `strategy` on a `www` service with two backends,
/// puts 20 clients on it and triggers 30 reloads by SIGHUP, each once the
/// previous one is done plus `pause`. With `syn-drop`, checks after every
/// reload that no rule of ours is left in INPUT.
/// How the load's clients use connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Conn {
    /// A new connection per request (`Connection: close`).
    PerRequest,
    /// HTTP keep-alive: one connection per client, reopened only after the
    /// server closed it (issue #9: browsers and most client libraries).
    KeepAlive,
}

fn reloads_under_load(strategy: &str, pause: Duration) -> Run {
    reloads_under(strategy, pause, Conn::PerRequest)
}

fn reloads_under(strategy: &str, pause: Duration, conn: Conn) -> Run {
    // One 20-client load at a time: two at once on a 2-core machine starve
    // the supervisor and HAProxy of CPU, and a syn-drop reload whose rules
    // stay in place for over a second drops a SYN's retransmission too.
    let _one_load = ONE_LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let (_orphans, _backends, files) = www_on::<2>();
    let env = env(strategy);
    let sup = Supervisor::spawn(&strs(&files.render_args()), &env_refs(&env));
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);
    assert!(our_rules().is_empty(), "{:?}", our_rules());

    let load = match conn {
        Conn::PerRequest => Load::start(FRONT, WWW, CLIENTS),
        Conn::KeepAlive => KeepAliveLoad::start(FRONT, WWW, CLIENTS).into_load(),
    };
    // Let every client get going before the first reload.
    load.wait_running(T);
    let started = Instant::now();
    for i in 0..RELOADS {
        let before = done_count(&sup);
        sup.signal(Signal::SIGHUP).expect("SIGHUP");
        if !poll_until(T, || done_count(&sup) > before) {
            panic!(
                "reload {} of {RELOADS} ({strategy}) not done within {T:?}; log:\n{}",
                i + 1,
                sup.log()
            );
        }
        if strategy == "syn-drop" {
            let left = our_rules();
            assert!(
                left.is_empty(),
                "after syn-drop reload {}: rules left in INPUT: {left:?}",
                i + 1
            );
        }
        // Pacing: the pause between reloads the test is run with.
        thread::sleep(pause);
    }
    let took = started.elapsed();
    // Requests in flight during the last reload complete.
    load.wait_answered_since(&load.progress(), T);
    let report = load.stop();
    let reloads = reloads(&sup);
    let failed = sup.events(Event::ReloadFailed).len();
    assert_eq!(failed, 0, "failed reloads; log:\n{}", sup.log());
    let strategies: Vec<String> = sup
        .events(Event::ReloadDone)
        .iter()
        .skip(1)
        .map(|e| e["fields"]["strategy"].as_str().unwrap_or("?").to_string())
        .collect();
    assert!(
        strategies.iter().all(|s| s == strategy),
        "reloads did not all use {strategy}: {strategies:?}"
    );
    assert!(our_rules().is_empty(), "{:?}", our_rules());
    let mut took_ms: Vec<u64> = sup
        .events(Event::ReloadDone)
        .iter()
        .skip(1)
        .filter_map(|e| e["fields"]["took_ms"].as_u64())
        .collect();
    took_ms.sort_unstable();
    let windows = format!(
        "start-up of a generation (with syn-drop: while SYNs are dropped): min {} ms, median {} ms, max {} ms",
        took_ms.first().unwrap_or(&0),
        took_ms.get(took_ms.len() / 2).unwrap_or(&0),
        took_ms.last().unwrap_or(&0),
    );
    println!("{strategy} ({conn:?}): {reloads} reloads in {took:.2?} ({windows}): {report}");
    Run {
        report,
        reloads,
        took,
        windows,
    }
}

impl Run {
    /// Every reload was done, and requests were served.
    fn assert_served(&self) {
        assert_eq!(self.reloads, RELOADS, "reload counter");
        assert!(self.report.ok > 0, "{}", self.report);
    }

    /// [`Run::assert_served`], and no request failed.
    fn assert_lost_none(&self, what: &str) {
        self.assert_served();
        assert_eq!(
            self.report.failed(),
            0,
            "{what}: {} failed requests in {} reloads ({:.2?}; {}): {}",
            self.report.failed(),
            self.reloads,
            self.took,
            self.windows,
            self.report
        );
    }
}

#[test]
fn seamless_reloads_under_load_lose_no_request() {
    let run = reloads_under_load("seamless", PAUSE);
    run.assert_lost_none("seamless");
    // Both backends took traffic.
    assert!(run.report.bodies.contains_key("web-1"), "{}", run.report);
    assert!(run.report.bodies.contains_key("web-2"), "{}", run.report);
}

/// The default: the supervisor holds the listening sockets and each
/// generation inherits them (no `-x`, nothing asked of the old process).
#[test]
fn inherit_reloads_under_load_lose_no_request() {
    let run = reloads_under_load("inherit", PAUSE);
    run.assert_lost_none("inherit");
    assert!(run.report.bodies.contains_key("web-1"), "{}", run.report);
    assert!(run.report.bodies.contains_key("web-2"), "{}", run.report);
}

#[test]
fn syn_drop_reloads_under_load_lose_no_request_and_leave_no_rule() {
    let run = reloads_under_load("syn-drop", SYN_DROP_PAUSE);
    run.assert_lost_none("syn-drop");
}

/// `plain` may reset connections: its failures are reported, not asserted.
#[test]
fn plain_reloads_under_load_are_reported() {
    let run = reloads_under_load("plain", PAUSE);
    run.assert_served();
    println!(
        "plain: {} failed requests (refused={} reset={} timeout={} other={} non_2xx={}) in {} reloads",
        run.report.failed(),
        run.report.refused,
        run.report.reset,
        run.report.timeout,
        run.report.other,
        run.report.non_2xx,
        run.reloads
    );
}

/// Issue #9: keep-alive clients lose no request across reloads, whatever the
/// strategy: an old process answers the next request on an idle
/// connection with `Connection: close` instead of closing it under the
/// client (`option idle-close-on-response`).
fn keepalive_reloads_lose_no_request(strategy: &str, pause: Duration) {
    let run = reloads_under(strategy, pause, Conn::KeepAlive);
    run.assert_lost_none(&format!("{strategy}, keep-alive clients"));
}

#[test]
fn keepalive_clients_lose_no_request_across_seamless_reloads() {
    keepalive_reloads_lose_no_request("seamless", PAUSE);
}

#[test]
fn keepalive_clients_lose_no_request_across_inherit_reloads() {
    keepalive_reloads_lose_no_request("inherit", PAUSE);
}

#[test]
fn keepalive_clients_lose_no_request_across_plain_reloads() {
    keepalive_reloads_lose_no_request("plain", PAUSE);
}

#[test]
fn keepalive_clients_lose_no_request_across_syn_drop_reloads() {
    keepalive_reloads_lose_no_request("syn-drop", SYN_DROP_PAUSE);
}

/// A supervisor SIGKILLed while its SYN-drop rules are in place leaves them
/// (and its HAProxy processes) behind; the next one, started on the same run
/// dir and config, removes the rules before it says it started, takes over
/// from the orphaned HAProxy processes and serves.
#[test]
fn syn_drop_rules_of_a_supervisor_killed_mid_reload_are_removed_at_start_up() {
    let (_orphans, _backends, files) = www_on::<2>();
    let env = env("syn-drop");
    let args = files.render_args();
    let mut first = Supervisor::spawn(&strs(&args), &env_refs(&env));
    wait_done(&first, 1, T);
    wait_serving(WWW, T);

    // SIGHUP, and as soon as a rule of ours shows in INPUT the reload is
    // under way: freeze the supervisor (SIGSTOP), let any iptables command
    // it started finish, and if its rules are still there, SIGKILL it. A
    // reload that got past its rules first is let go and tried again.
    let mut caught = None;
    for _ in 0..20 {
        let before = done_count(&first);
        first.signal(Signal::SIGHUP).expect("SIGHUP");
        let mut rules = Vec::new();
        poll_until(T, || {
            rules = our_rules();
            !rules.is_empty() || done_count(&first) > before
        });
        if rules.is_empty() {
            continue;
        }
        first.signal(Signal::SIGSTOP).expect("SIGSTOP");
        wait_until(T, "iptables commands finished", || {
            in_my_netns("iptables").is_empty()
        });
        let rules = our_rules();
        if rules.is_empty() {
            first.signal(Signal::SIGCONT).expect("SIGCONT");
            wait_done(&first, before + 1, T);
            continue;
        }
        first.signal(Signal::SIGKILL).expect("SIGKILL");
        caught = Some(rules);
        break;
    }
    let caught = caught.expect("never caught a reload with its SYN-drop rules in place");
    assert!(
        first.wait_timeout(T).is_some(),
        "supervisor did not die of SIGKILL"
    );
    let left = our_rules();
    println!("rules seen before SIGKILL: {caught:?}; left after it: {left:?}");
    assert!(
        !left.is_empty(),
        "the killed supervisor left no rule: the test did not kill it mid-reload"
    );
    let orphans = in_my_netns("haproxy");
    assert!(!orphans.is_empty(), "no haproxy survived the supervisor");
    drop(first);

    let second = Supervisor::spawn(&strs(&args), &env_refs(&env));
    second.wait_for_event(Event::Started, T);
    // Its own first start (a syn-drop reload over the adopted processes)
    // puts the same rules in for a moment, and takes them out when done.
    wait_done(&second, 1, T);
    poll_until(T, || our_rules().is_empty());
    let left = our_rules();
    assert!(
        left.is_empty(),
        "rules still in INPUT after the new supervisor started: {left:?}; log:\n{}",
        second.log()
    );
    assert!(
        !second.events(Event::StaleRulesRemoved).is_empty(),
        "no warning about the stale rules; log:\n{}",
        second.log()
    );
    wait_done(&second, 1, T);
    wait_serving(WWW, T);
    assert!(our_rules().is_empty(), "{:?}", our_rules());

    // The orphans were told to finish; only the new supervisor's HAProxy is left.
    let mine = second.pid();
    if !poll_until(T, || {
        let all = in_my_netns("haproxy");
        !all.is_empty() && all == haproxies_under(mine)
    }) {
        panic!(
            "haproxy processes not under the new supervisor remain: all {:?}, under it {:?} \
             (orphans of the killed one were {orphans:?}); log:\n{}",
            in_my_netns("haproxy"),
            haproxies_under(mine),
            second.log()
        );
    }
    for _ in 0..20 {
        assert!(matches!(get(WWW), Ok((200, _))), "{:?}", get(WWW));
    }
    // And it reloads cleanly afterwards.
    let before = done_count(&second);
    second.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_done(&second, before + 1, T);
    assert!(our_rules().is_empty(), "{:?}", our_rules());
    wait_serving(WWW, T);
    drop(second);
    kill_haproxies_in_my_netns();
}

/// A service registered in Consul answers through HAProxy within 2 s, and
/// the reload that adds it fails no request of the other service.
#[test]
fn new_consul_service_answers_within_two_seconds_without_failed_requests() {
    netns::enter();
    let _orphans = OrphanGuard;
    let consul = Consul::start();
    let a = Backend::start("web-1");
    let b = Backend::start("web-2");
    let api = Backend::start("api-1");
    let register = |id: &str, name: &str, port: u16| {
        consul.register(&serde_json::json!({
            "ID": id, "Name": name, "Address": "127.0.0.1", "Port": port,
            "Tags": ["HAPROXY.ENABLE=true"],
        }));
    };
    register("www-1", "www", a.port());
    register("www-2", "www", b.port());
    let files = Files::new();
    let env = env("seamless");
    let sup = Supervisor::spawn(
        &[
            "run",
            "--consul",
            &consul.addr(),
            "--config-file",
            &s(&files.config()),
            "--run-dir",
            &s(&files.run_dir()),
        ],
        &env_refs(&env),
    );
    wait_done(&sup, 1, Duration::from_secs(20));
    wait_serving(WWW, T);
    assert!(
        matches!(get("api.example.com"), Ok((503, _))),
        "api before registration: {:?}",
        get("api.example.com")
    );

    let load = Load::start(FRONT, WWW, CLIENTS);
    load.wait_running(T);
    let before = done_count(&sup);
    let registered = Instant::now();
    register("api-1", "api", api.port());
    let mut last = None;
    let answered = poll_until(Duration::from_secs(5), || {
        let r = http_get(FRONT, "api.example.com", "/", Duration::from_secs(1));
        let ok = matches!(&r, Ok((200, body)) if body == "api-1\n");
        last = Some(r);
        ok
    });
    let took = registered.elapsed();
    // Let the reload's old process finish with the load still on.
    wait_until(T, "the old haproxy has exited", || {
        haproxies_under(sup.pid()).len() == 1
    });
    let report = load.stop();
    println!("new service answered after {took:.2?}; www during the reload: {report}");
    assert!(
        answered,
        "api.example.com not served within 5 s (last answer {last:?}); log:\n{}",
        sup.log()
    );
    assert!(
        took <= Duration::from_secs(2),
        "api.example.com took {took:.2?} (> 2 s) to answer"
    );
    assert!(
        done_count(&sup) > before,
        "no reload happened; log:\n{}",
        sup.log()
    );
    assert!(report.ok > 0, "{report}");
    assert_eq!(
        report.failed(),
        0,
        "www lost requests during the reload: {report}"
    );
    // Still routed separately.
    assert_eq!(get(WWW).map(|(s, _)| s), Ok(200));
    assert_eq!(get("api.example.com"), Ok((200, "api-1\n".to_string())));
}

/// A hand-written config for `--no-render` mode: the HTTP frontend on 8080
/// to `servers`, and the admin socket for seamless reloads.
fn external_config(run_dir: &std::path::Path, servers: &[&Backend]) -> String {
    let mut cfg = format!(
        "global\n    stats socket {}/admin.sock mode 600 level admin expose-fd listeners\n\n\
         defaults\n    mode http\n    timeout connect 3s\n    timeout client 30s\n    timeout server 30s\n\n\
         frontend app_http_in\n    bind *:8080\n    default_backend www\n\n\
         backend www\n",
        run_dir.display()
    );
    for (i, b) in servers.iter().enumerate() {
        cfg.push_str(&format!("    server s{} {}\n", i + 1, b.addr()));
    }
    cfg
}

/// `--no-render`: SIGHUP after the watched file was overwritten with
/// garbage leaves the serving HAProxy (same pid) and the last good file;
/// a valid file and SIGHUP afterwards do reload.
#[test]
fn invalid_config_on_sighup_keeps_the_old_haproxy_and_file() {
    let (_orphans, [a, b], files) = isolated();
    let watched = files.path("external.cfg");
    let run_dir = files.run_dir();
    let running = run_dir.join("haproxy.cfg");
    let good = external_config(&run_dir, &[&a]);
    write_atomic(&watched, good.as_bytes());
    let env = env("seamless");
    let sup = Supervisor::spawn(
        &[
            "run",
            "--no-render",
            "--config-file",
            &s(&watched),
            "--run-dir",
            &s(&run_dir),
        ],
        &env_refs(&env),
    );
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);
    assert_eq!(std::fs::read(&running).unwrap(), good.as_bytes());
    let pid = logged_serving_pid(&sup).expect("serving pid");
    assert_eq!(haproxies_under(sup.pid()), vec![pid]);

    write_atomic(&watched, b"this is not\nan haproxy {config}\n");
    sup.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_until(T, "the invalid config to be reported", || {
        !sup.events(Event::ConfigInvalid).is_empty()
    });
    assert_eq!(
        done_count(&sup),
        1,
        "a generation was started; log:\n{}",
        sup.log()
    );
    assert_eq!(
        std::fs::read(&running).unwrap(),
        good.as_bytes(),
        "the running config file changed"
    );
    assert_eq!(
        haproxies_under(sup.pid()),
        vec![pid],
        "the serving haproxy changed"
    );
    for _ in 0..10 {
        assert_eq!(get(WWW), Ok((200, "web-1\n".to_string())));
    }

    // The SIGHUP path does reload a valid file.
    let next = external_config(&run_dir, &[&b]);
    write_atomic(&watched, next.as_bytes());
    sup.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_done(&sup, 2, T);
    assert_eq!(std::fs::read(&running).unwrap(), next.as_bytes());
    wait_until(T, "web-2 served after the reload", || {
        get(WWW) == Ok((200, "web-2\n".to_string()))
    });
    assert_ne!(logged_serving_pid(&sup), Some(pid));
}

/// A `--template` that renders garbage once the catalog has a service named
/// `garbage`: the catalog change is rejected by `haproxy -c`, the serving
/// HAProxy and the last good config stay.
#[test]
fn template_rendering_garbage_keeps_the_old_haproxy_and_file() {
    let (_orphans, [a, b], files) = isolated();
    let template = files.path("haproxy.cfg.tera");
    let text = format!(
        "{}\n{{% for s in services %}}{{% if s.name == \"garbage\" %}}\n    this-is-not-an-haproxy-keyword {{{{ s.name }}}}\n{{% endif %}}{{% endfor %}}\n",
        include_str!("../templates/haproxy.cfg.tera")
    );
    std::fs::write(&template, text).unwrap();
    write_catalog(&files.catalog(), &[service("www", &[&a, &b], &[])]);
    let mut args = files.render_args();
    args.extend(["--template".to_string(), s(&template)]);
    let sup = spawn_serving(&args, &env("seamless"));
    let good = std::fs::read(files.config()).expect("rendered config");
    // The map files the good config refers to, with their content.
    let maps: Vec<(String, Vec<u8>)> = String::from_utf8_lossy(&good)
        .split("map(")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|path| {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read map {path}: {e}"));
            (path.to_string(), bytes)
        })
        .collect();
    assert!(!maps.is_empty(), "no map in the rendered config");
    let pid = logged_serving_pid(&sup).expect("serving pid");
    assert_eq!(haproxies_under(sup.pid()), vec![pid]);

    write_catalog(
        &files.catalog(),
        &[
            service("www", &[&a, &b], &[]),
            service("garbage", &[&a], &[]),
        ],
    );
    wait_until(T, "the invalid rendered config to be reported", || {
        !sup.events(Event::ConfigInvalid).is_empty()
    });
    let err = sup.events(Event::ConfigInvalid);
    let msg = err[0]["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("this-is-not-an-haproxy-keyword"),
        "HAProxy's message is not logged: {msg}"
    );
    assert_eq!(
        done_count(&sup),
        1,
        "a generation was started; log:\n{}",
        sup.log()
    );
    assert_eq!(
        std::fs::read(files.config()).unwrap(),
        good,
        "the config file changed"
    );
    assert_eq!(
        haproxies_under(sup.pid()),
        vec![pid],
        "the serving haproxy changed"
    );
    for (path, bytes) in &maps {
        assert_eq!(
            std::fs::read(path).ok().as_ref(),
            Some(bytes),
            "map {path} of the running config changed"
        );
    }
    for _ in 0..10 {
        assert!(matches!(get(WWW), Ok((200, _))), "{:?}", get(WWW));
    }
    // Issue #9: the service whose lines HAProxy refused (the one that
    // changed) is left out with a warning, the rest applies.
    let left_out = sup.events(Event::ServiceLeftOut);
    assert_eq!(left_out.len(), 1, "{left_out:?}");
    assert_eq!(left_out[0]["fields"]["service"], "garbage");
    // SIGHUP re-renders the same catalog: the refused service stays out,
    // the file stays the good one, and www keeps serving.
    sup.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_done(&sup, 2, T);
    assert_eq!(std::fs::read(files.config()).unwrap(), good);
    assert!(matches!(get(WWW), Ok((200, _))), "{:?}", get(WWW));
}

/// 200 SIGHUPs as fast as they can be sent merge into far fewer reloads; the
/// supervisor stays responsive, reaps everything, and only the serving
/// HAProxy is left once the old ones have drained.
#[test]
fn sighup_storm_coalesces_and_leaves_one_haproxy_and_no_zombie() {
    let (_orphans, _backends, files) = www_on::<2>();
    let sup = spawn_serving(&files.render_args(), &env("seamless"));

    let load = Load::start(FRONT, WWW, 10);
    for _ in 0..200 {
        sup.signal(Signal::SIGHUP).expect("SIGHUP");
    }
    // Quiet: no new generation for a second.
    let mut seen = done_count(&sup);
    let mut since = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "the storm's reloads to settle",
        || {
            let n = done_count(&sup);
            if n != seen {
                seen = n;
                since = Instant::now();
            }
            since.elapsed() > Duration::from_secs(1)
        },
    );
    let report = load.stop();
    let storm = reloads(&sup);
    println!("200 SIGHUPs -> {storm} reloads; load during the storm: {report}");
    assert!(storm >= 1, "no reload for 200 SIGHUPs; log:\n{}", sup.log());
    assert!(
        storm < 100,
        "{storm} reloads for 200 SIGHUPs: not coalesced"
    );
    assert!(report.ok > 0, "{report}");

    // Still responsive.
    let before = done_count(&sup);
    sup.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_done(&sup, before + 1, T);
    assert_eq!(reloads(&sup), storm + 1);
    for _ in 0..10 {
        assert!(matches!(get(WWW), Ok((200, _))), "{:?}", get(WWW));
    }

    let pid = sup.pid();
    let serving = logged_serving_pid(&sup).expect("serving pid");
    if !poll_until(T, || haproxies_under(pid) == vec![serving]) {
        panic!(
            "haproxy processes under the supervisor: {:?} (serving {serving}); log:\n{}",
            descendants_of(pid),
            sup.log()
        );
    }
    assert!(
        poll_until(Duration::from_secs(2), || zombies_under(pid).is_empty()),
        "zombies under the supervisor: {:?}",
        zombies_under(pid)
    );
    assert!(
        in_my_netns("haproxy") == vec![serving],
        "{:?}",
        in_my_netns("haproxy")
    );
}

/// `HAPROXY_RELOAD_STRATEGY=syn-drop` without NET_ADMIN is an error at
/// start-up, before any HAProxy runs; `seamless` only warns.
#[test]
fn syn_drop_without_net_admin_fails_at_start_up() {
    let (_orphans, [_a], files) = www_on();
    let setpriv = require("setpriv");
    let mut args = vec![
        "--inh-caps=-net_admin".to_string(),
        "--bounding-set=-net_admin".to_string(),
        "--".to_string(),
        s(testkit::supervisor_bin()),
    ];
    args.extend(files.render_args());

    let env_sd = env("syn-drop");
    let mut sup = Supervisor::spawn_program(&setpriv, &strs(&args), &env_refs(&env_sd));
    let status = sup
        .wait_timeout(T)
        .unwrap_or_else(|| panic!("still running without NET_ADMIN; log:\n{}", sup.log()));
    let log = sup.log();
    println!("exit {status}; log:\n{log}");
    assert!(!status.success(), "exit {status}; log:\n{log}");
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(
        fatal_error(&log).is_some_and(|e| e.contains("NET_ADMIN") && e.contains("syn-drop")),
        "no fatal event saying what is missing:\n{log}"
    );
    assert!(in_my_netns("haproxy").is_empty());
    assert!(matches!(get(WWW), Err(HttpError::Refused(_))));
    drop(sup);

    // seamless: one warning that the fallback is unavailable, and it serves.
    let env_sl = env("seamless");
    let sup = Supervisor::spawn_program(&setpriv, &strs(&args), &env_refs(&env_sl));
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);
    let iptables: Vec<_> = sup
        .events(Event::Degraded)
        .into_iter()
        .filter(|e| e["fields"]["what"] == "iptables")
        .collect();
    assert_eq!(iptables.len(), 1, "log:\n{}", sup.log());
}

/// A value that does not parse exits 2, naming the variable and the value,
/// before anything starts.
#[test]
fn bad_environment_value_exits_2_naming_the_variable() {
    netns::enter();
    let files = Files::new();
    write_catalog(&files.catalog(), &[]);
    let mut env = env("seamless");
    env.push(("HAPROXY_HTTP_PORT", "70000".into()));
    let mut sup = Supervisor::spawn(&strs(&files.render_args()), &env_refs(&env));
    let status = sup
        .wait_timeout(T)
        .unwrap_or_else(|| panic!("still running with HAPROXY_HTTP_PORT=70000"));
    let log = sup.log();
    assert_eq!(status.code(), Some(2), "exit {status}; log:\n{log}");
    assert!(
        log.contains("HAPROXY_HTTP_PORT") && log.contains("70000"),
        "the error does not name the variable and value:\n{log}"
    );
    assert!(in_my_netns("haproxy").is_empty());
    assert!(!files.run_dir().exists(), "it started: the run dir exists");
}
