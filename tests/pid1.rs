//! Issue #3, the supervisor as PID 1 of a pid namespace (as a container's
//! ENTRYPOINT): it reaps orphans it never started, lets in-flight requests
//! finish on SIGTERM and exits 0, and restarts a killed HAProxy.
//!
//! Each test runs in its own network namespace, under
//! `unshare --pid --fork --mount-proc`. Run as root: `cargo test --test pid1`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::*;

/// Starts the supervisor as PID 1 on `services` and waits until `www`
/// answers.
fn start_pid1(files: &Files, extra_args: &[String], envs: &[(&'static str, String)]) -> Supervisor {
    let mut args = files.render_args();
    args.extend(extra_args.iter().cloned());
    let sup = Supervisor::spawn_as_pid1(&strs(&args), &env_refs(envs));
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);
    sup
}

/// SIGTERM, then the exit status of `unshare` (the supervisor's own).
fn terminate(sup: &mut Supervisor) -> std::process::ExitStatus {
    sup.signal(Signal::SIGTERM).expect("SIGTERM");
    match sup.wait_timeout(Duration::from_secs(15)) {
        Some(st) => st,
        None => panic!("did not exit within 15 s of SIGTERM; log:\n{}", sup.log()),
    }
}

/// With an `--haproxy-bin` wrapper that leaves a background `sleep` behind
/// every time it runs (`haproxy -c` and every generation), the orphans are
/// reparented to the supervisor, PID 1, which must reap them: none stays a
/// zombie.
#[test]
fn pid1_reaps_orphaned_grandchildren() {
    let (_orphans, _backends, files) = www_on::<2>();
    let wrapper = files.path("haproxy-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# The subshell exits at once: its background sleep is orphaned.\n\
             ( sleep 1.5 & )\nexec {} \"$@\"\n",
            require("haproxy").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = env("seamless");
    let mut sup = start_pid1(&files, &["--haproxy-bin".into(), s(&wrapper)], &env);
    let init = sup.pid();
    let ns = sup.wrapper_pid().expect("unshare pid");

    // More orphans: a reload runs the wrapper twice (check, new generation).
    let before = done_count(&sup);
    sup.signal(Signal::SIGHUP).expect("SIGHUP");

    // Orphaned sleeps whose parent is now PID 1 (the supervisor).
    let mut adopted: Vec<i32> = Vec::new();
    wait_until(T, "an orphaned sleep reparented to the supervisor", || {
        for p in children_of(init) {
            if p.comm == "sleep" && !adopted.contains(&p.pid) {
                adopted.push(p.pid);
            }
        }
        !adopted.is_empty()
    });
    wait_done(&sup, before + 1, T);
    // Each exits after 1.5 s and must then disappear from /proc: reaped.
    for pid in &adopted {
        if !poll_until(Duration::from_secs(5), || proc_stat(*pid).is_none()) {
            panic!(
                "orphan {pid} not reaped: {:?}; log:\n{}",
                proc_stat(*pid),
                sup.log()
            );
        }
    }
    // Nothing in the pid namespace is left a zombie once the sleeps are over.
    wait_until(T, "every sleep of the wrappers to be over", || {
        !descendants_of(ns).iter().any(|p| p.comm == "sleep")
    });
    assert!(
        poll_until(Duration::from_secs(2), || zombies_under(ns).is_empty()),
        "zombies in the pid namespace: {:?}",
        descendants_of(ns)
            .into_iter()
            .filter(|p| p.state == 'Z')
            .collect::<Vec<_>>()
    );
    println!("reaped orphans {adopted:?}");
    assert!(matches!(get(WWW), Ok((200, _))));
    let status = terminate(&mut sup);
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{}", sup.log());
}

/// A backend on a test thread that answers each request after `delay`, and
/// counts the requests it has received.
struct SlowBackend {
    port: u16,
    received: Arc<AtomicUsize>,
}

impl SlowBackend {
    fn start(delay: Duration) -> SlowBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind slow backend");
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let counter = Arc::clone(&counter);
                thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Health checks connect and close: only full heads count.
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    // The point: a backend that answers slowly.
                    thread::sleep(delay);
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nslow\n",
                    );
                });
            }
        });
        SlowBackend { port, received }
    }
}

/// SIGTERM while slow requests are in flight (and a load is running): the
/// in-flight requests complete with 200, and the exit code is 0.
#[test]
fn pid1_sigterm_under_load_finishes_in_flight_requests_and_exits_0() {
    netns::enter();
    let _orphans = OrphanGuard;
    let a = Backend::start("web-1");
    let b = Backend::start("web-2");
    let slow = SlowBackend::start(Duration::from_millis(1500));
    let files = Files::new();
    let slow_service = serde_json::json!({
        "name": "slow",
        "instances": [{"id": "slow-1", "address": "127.0.0.1", "port": slow.port,
                        "tags": ["HAPROXY.ENABLE=true"]}],
    });
    write_catalog(
        &files.catalog(),
        &[service("www", &[&a, &b], &[]), slow_service],
    );
    let env = env("seamless");
    let mut sup = start_pid1(&files, &[], &env);
    let ns = sup.wrapper_pid().expect("unshare pid");

    let load = Load::start(FRONT, WWW, 20);
    load.wait_running(T);
    const SLOW: usize = 5;
    let in_flight: Vec<_> = (0..SLOW)
        .map(|_| {
            thread::spawn(|| http_get(FRONT, "slow.example.com", "/", Duration::from_secs(10)))
        })
        .collect();
    wait_until(T, "the slow requests to reach the backend", || {
        slow.received.load(Ordering::SeqCst) >= SLOW
    });

    let status = terminate(&mut sup);
    let report = load.stop();
    let answers: Vec<_> = in_flight.into_iter().map(|t| t.join().unwrap()).collect();
    println!("exit {status}; in-flight answers {answers:?}; load during the stop: {report}");
    for r in &answers {
        assert_eq!(
            r,
            &Ok((200, "slow\n".to_string())),
            "an in-flight request did not finish; log:\n{}",
            sup.log()
        );
    }
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{}", sup.log());
    // Once HAProxy stops listening new connections are refused; a request
    // that got an answer got a complete, successful one.
    assert_eq!(report.non_2xx, 0, "{report}");
    assert_eq!(report.other, 0, "{report}");
    assert!(report.ok > 0, "{report}");
    assert!(
        !sup.events(Event::Stopped).is_empty(),
        "log:\n{}",
        sup.log()
    );
    // The namespace is gone with its PID 1: nothing of it is left.
    assert!(descendants_of(ns).is_empty(), "{:?}", descendants_of(ns));
    assert!(
        in_my_netns("haproxy").is_empty(),
        "{:?}",
        in_my_netns("haproxy")
    );
}

/// SIGKILL of the serving HAProxy: the supervisor logs it, restarts HAProxy
/// at once (no backoff: the generation had served; issue 23), and it serves
/// again; the dead one is reaped. Then four more kills in a row, each of the
/// generation that replaced the last: each restart scheduled at once too.
#[test]
fn pid1_restarts_a_killed_haproxy() {
    let (_orphans, _backends, files) = www_on::<2>();
    let env = env("seamless");
    let mut sup = start_pid1(&files, &[], &env);
    let init = sup.pid();
    let ns = sup.wrapper_pid().expect("unshare pid");
    // Pids as the test sees them (the log has the namespace's own).
    let serving = haproxies_under(init);
    assert_eq!(serving.len(), 1, "{serving:?}");
    let old = serving[0];

    kill(Pid::from_raw(old), Signal::SIGKILL).expect("kill haproxy");
    wait_until(T, "the death to be logged", || {
        !sup.events(Event::GenerationDied).is_empty()
    });
    wait_done(&sup, 2, T);
    let restarted = sup.events(Event::ReloadDone);
    let last = &restarted[restarted.len() - 1]["fields"];
    assert_eq!(last["trigger"], "restart", "{last}");
    wait_serving(WWW, T);
    for _ in 0..10 {
        assert!(matches!(get(WWW), Ok((200, _))), "{:?}", get(WWW));
    }
    let serving = haproxies_under(init);
    assert_eq!(serving.len(), 1, "{serving:?}");
    assert_ne!(serving[0], old);
    assert!(
        proc_stat(old).is_none(),
        "the killed haproxy was not reaped"
    );
    assert!(
        poll_until(Duration::from_secs(2), || zombies_under(ns).is_empty()),
        "zombies: {:?}",
        zombies_under(ns)
    );

    let mut gaps = Vec::new();
    for round in 0..4 {
        let serving = haproxies_under(init);
        assert_eq!(serving.len(), 1, "{serving:?}");
        let killed = std::time::Instant::now();
        kill(Pid::from_raw(serving[0]), Signal::SIGKILL).expect("kill haproxy");
        wait_done(&sup, 3 + round, T);
        wait_serving(WWW, T);
        // A figure, not a goal: includes this test's polling.
        gaps.push(killed.elapsed().as_millis());
    }
    println!("kill -> serving again (ms, polled): {gaps:?}");
    let scheduled = sup.events(Event::RestartScheduled);
    assert_eq!(scheduled.len(), 5, "{scheduled:?}");
    for e in &scheduled {
        assert_eq!(
            e["fields"]["delay_ms"], 0,
            "a restart after a death backs off: {e}"
        );
        assert_eq!(e["fields"]["crash_loop"], false, "{e}");
    }
    println!("5 SIGKILLs of the serving haproxy: each restart scheduled at once");

    let status = terminate(&mut sup);
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{}", sup.log());
}

/// The signal table (SPEC §11), as PID 1: SIGUSR2 reloads like SIGHUP;
/// SIGTTOU and SIGTTIN go to the serving HAProxy (which pauses and resumes
/// its listeners); signals without a row are logged and change nothing;
/// SIGQUIT stops at once.
#[test]
fn pid1_signal_table() {
    netns::enter();
    let a = Backend::start("web-1");
    let files = Files::new();
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    let env = env("seamless");
    let mut sup = start_pid1(&files, &[], &env);

    sup.signal(Signal::SIGUSR2).expect("SIGUSR2");
    wait_done(&sup, 2, T);
    wait_serving(WWW, T);
    let pids = haproxies_under(sup.pid());

    for s in [
        Signal::SIGWINCH,
        Signal::SIGALRM,
        Signal::SIGPWR,
        Signal::SIGTSTP,
    ] {
        sup.signal(s).expect("send");
    }
    wait_until(T, "four signals ignored", || {
        sup.events(Event::SignalIgnored).len() >= 4
    });
    assert!(sup.is_running());
    assert_eq!(done_count(&sup), 2);
    assert!(matches!(get(WWW), Ok((200, _))));

    sup.signal(Signal::SIGTTOU).expect("SIGTTOU");
    wait_until(T, "haproxy paused", || {
        sup.log().contains("Paused frontend app_http_in")
    });
    sup.signal(Signal::SIGTTIN).expect("SIGTTIN");
    wait_until(T, "haproxy resumed", || {
        sup.log().contains("Resumed frontend app_http_in")
    });
    assert_eq!(sup.events(Event::SignalForwarded).len(), 2);
    wait_serving(WWW, T);

    // SIGQUIT: no soft stop, no waiting for the stop timeout.
    let t0 = std::time::Instant::now();
    sup.signal(Signal::SIGQUIT).expect("SIGQUIT");
    let st = sup
        .wait_timeout(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("did not stop within 5 s of SIGQUIT"));
    eprintln!("SIGQUIT: exited {st:?} in {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(4));
    for p in pids {
        assert!(
            proc_stat(p).is_none_or(|s| s.state == 'Z'),
            "haproxy {p} left"
        );
    }
}

/// `HAPROXY_RELOAD_STRATEGY=inherit` (the default): the supervisor holds the
/// listening sockets and every generation inherits them. Under load (a new
/// connection per request), every HAProxy process SIGKILLed 20 times, 1 s
/// apart: no connection is refused (the kernel queues them while no
/// HAProxy runs, and the next generation takes them). Requests that were
/// in flight on a killed process are counted apart (reset).
#[test]
fn pid1_held_sockets_refuse_no_connection_across_20_sigkills() {
    let (_orphans, _backends, files) = www_on::<2>();
    let env = env("inherit");
    let mut sup = start_pid1(&files, &[], &env);
    let init = sup.pid();
    let config = std::fs::read_to_string(files.config()).unwrap();
    assert!(
        config.contains("bind fd@"),
        "the config does not bind held sockets:\n{config}"
    );
    let load = Load::start(FRONT, WWW, 4);
    for round in 0..20 {
        let all = haproxies_under(init);
        assert!(!all.is_empty(), "round {round}: no haproxy runs");
        for p in &all {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        wait_done(&sup, 2 + round, T);
        // Pacing, as the issue asks (1 s apart), not a wait for a condition.
        thread::sleep(Duration::from_secs(1));
    }
    let report = load.stop();
    println!("20 SIGKILLs of every haproxy, 1 s apart, under load: {report}");
    let gaps = death_to_serving_ms(&sup);
    let mut sorted = gaps.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "death -> next generation serving (ms, from the log): {:?}; max {:.1}",
        gaps.iter().map(|g| g.round() as u64).collect::<Vec<_>>(),
        sorted.last().copied().unwrap_or(0.0)
    );
    assert_eq!(gaps.len(), 20, "restarts: {gaps:?}\n{}", sup.log());
    assert_eq!(report.refused, 0, "connections refused: {report}");
    assert_eq!(report.non_2xx, 0, "{report}");
    assert_eq!(report.timeout, 0, "{report}");
    assert!(report.ok > 1000, "{report}");
    // In flight on a killed process: at most the 4 clients' requests a kill.
    assert!(
        report.reset + report.other <= 4 * 20,
        "more failures than requests in flight: {report}"
    );
    let scheduled = sup.events(Event::RestartScheduled);
    assert!(
        scheduled.iter().all(|e| e["fields"]["delay_ms"] == 0),
        "a restart backed off: {scheduled:?}"
    );
    let status = terminate(&mut sup);
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{}", sup.log());
}
