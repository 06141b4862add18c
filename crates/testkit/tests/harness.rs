//! Tests of the test kit (this crate) and of `demo-backend`.
//! Run as root: `cargo test --release -p testkit --test harness`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use testkit::*;

const T: Duration = Duration::from_secs(5);

fn web_1() -> serde_json::Value {
    json!({
        "ID": "web-1",
        "Name": "web",
        "Address": "127.0.0.1",
        "Port": 9001,
        "Tags": ["HAPROXY.ENABLE=true"],
        "Check": {"CheckID": "web-1-ttl", "TTL": "30s"}
    })
}

#[test]
fn consul_ttl_check_passing_then_critical_then_agent_restart() {
    netns::enter();
    let mut consul = Consul::start();
    assert_eq!(consul.addr(), "http://127.0.0.1:8500");

    consul.register(&web_1());
    // A TTL check starts critical.
    assert!(consul.passing("web").is_empty());

    consul.ttl_pass("web-1-ttl");
    wait_until(T, "web-1 passing", || consul.passing("web").len() == 1);
    let entry = &consul.passing("web")[0];
    assert_eq!(entry["Service"]["ID"], "web-1");
    assert_eq!(entry["Service"]["Port"], 9001);
    assert_eq!(entry["Service"]["Tags"], json!(["HAPROXY.ENABLE=true"]));

    consul.ttl_fail("web-1-ttl");
    wait_until(T, "web-1 critical", || consul.passing("web").is_empty());
    let all = consul.get_json("/v1/health/service/web");
    let checks = all[0]["Checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c["CheckID"] == "web-1-ttl" && c["Status"] == "critical"),
        "{all}"
    );

    // Agent away: connections are refused, and the harness says so.
    consul.stop();
    match consul.get("/v1/agent/self") {
        Err(HttpError::Refused(_)) => {}
        other => panic!("expected refused while consul is stopped, got {other:?}"),
    }

    // Back with the same arguments; a -dev agent has forgotten everything.
    consul.start_again();
    assert!(consul.get_json("/v1/health/service/web") == json!([]));
    consul.register(&web_1());
    consul.ttl_pass("web-1-ttl");
    wait_until(T, "web-1 passing again", || {
        consul.passing("web").len() == 1
    });
    consul.deregister("web-1");
    wait_until(T, "web-1 gone", || {
        consul.get_json("/v1/health/service/web") == json!([])
    });
}

#[test]
fn two_backends_answer_with_their_names() {
    netns::enter();
    let a = Backend::start("web-1");
    let b = Backend::start("web-2");
    assert_ne!(a.port(), b.port());
    assert_eq!(a.addr(), format!("127.0.0.1:{}", a.port()));

    assert_eq!(
        http_get(&a.addr(), "web.example", "/", T).unwrap(),
        (200, "web-1\n".to_string())
    );
    assert_eq!(
        http_get(&b.addr(), "web.example", "/anything?x=1", T).unwrap(),
        (200, "web-2\n".to_string())
    );
    assert_eq!(
        http_get(&b.addr(), "web.example", "/health", T).unwrap(),
        (200, "ok\n".to_string())
    );
    // A request body is skipped by Content-Length.
    assert_eq!(
        http_request(&a.addr(), "POST", "x", "/", Some(b"{\"a\":1}"), T).unwrap(),
        (200, "web-1\n".to_string())
    );
}

#[test]
fn demo_backend_keep_alive_and_pipelining() {
    netns::enter();
    let a = Backend::start("web-1");
    let mut s = TcpStream::connect(a.addr()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    // Three pipelined requests in one write, the second with a body, the last
    // asking to close: three responses, then EOF.
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    assert_eq!(text.matches("\r\n\r\nweb-1\n").count(), 2, "{text}");
    assert!(text.ends_with("Connection: close\r\n\r\nok\n"), "{text}");

    // Keep-alive: several requests, one per write, on one connection.
    let mut s = TcpStream::connect(a.addr()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        let resp = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("Content-Length: 6\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nweb-1\n"), "{resp}");
    }
}

#[test]
fn load_counts_outcomes_and_bodies() {
    netns::enter();
    let a = Backend::start("web-1");
    let load = Load::start(&a.addr(), "web.example", 8);
    wait_until(Duration::from_secs(10), "more than 100 answers", || {
        load.progress().iter().sum::<u64>() > 100
    });
    let report = load.stop();
    println!("{report}");
    assert!(report.ok > 100, "{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert_eq!(report.bodies.get("web-1"), Some(&report.ok), "{report}");

    // Nothing listening: every request is refused.
    let load = Load::start("127.0.0.1:1", "web.example", 2);
    load.wait_running(Duration::from_secs(10));
    let report = load.stop();
    assert!(
        report.refused > 0 && report.refused == report.failed(),
        "{report}"
    );
    assert_eq!(report.ok, 0);
}

#[test]
fn http_errors_are_classified() {
    netns::enter();
    match http_get("127.0.0.1:1", "x", "/", T) {
        Err(HttpError::Refused(_)) => {}
        other => panic!("expected Refused, got {other:?}"),
    }

    // Accepts and never answers: Timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let start = std::time::Instant::now();
    match http_get(&addr, "x", "/", Duration::from_millis(300)) {
        Err(HttpError::Timeout(_)) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2));

    // Accepts and closes without answering: Reset.
    let closer = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closer.local_addr().unwrap().to_string();
    let t = thread::spawn(move || {
        let (mut s, _) = closer.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
    });
    match http_get(&addr, "x", "/", T) {
        Err(HttpError::Reset(_)) => {}
        other => panic!("expected Reset, got {other:?}"),
    }
    t.join().unwrap();

    // Chunked responses are decoded.
    let chunked = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = chunked.local_addr().unwrap().to_string();
    let t = thread::spawn(move || {
        let (mut s, _) = chunked.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nno s\r\n9\r\nerver\r\nup\r\n0\r\n\r\n",
        )
        .unwrap();
    });
    assert_eq!(
        http_get(&addr, "x", "/", T).unwrap(),
        (503, "no server\r\nup".to_string())
    );
    t.join().unwrap();
}

#[test]
fn two_namespaces_bind_the_same_ports_at_the_same_time() {
    let both_bound = Arc::new(Barrier::new(2));
    let both_checked = Arc::new(Barrier::new(2));
    let threads: Vec<_> = ["ns-a", "ns-b"]
        .into_iter()
        .map(|name| {
            let both_bound = Arc::clone(&both_bound);
            let both_checked = Arc::clone(&both_checked);
            thread::spawn(move || {
                netns::enter();
                let consul_port = TcpListener::bind("127.0.0.1:8500")
                    .unwrap_or_else(|e| panic!("{name}: bind 127.0.0.1:8500: {e}"));
                // A child process inherits the thread's namespace.
                let backend = Backend::start_at(name, "127.0.0.1:9001");
                both_bound.wait();
                assert_eq!(
                    http_get("127.0.0.1:9001", "x", "/", T).unwrap(),
                    (200, format!("{name}\n"))
                );
                TcpStream::connect("127.0.0.1:8500").unwrap();
                consul_port.accept().unwrap();
                both_checked.wait();
                drop(backend);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("namespace thread failed");
    }
}

#[test]
fn pid1_mode_runs_the_program_as_pid_1_and_signals_it() {
    netns::enter();
    let mut sup = Supervisor::spawn_program_as_pid1(
        testkit::backend_bin(),
        &["--listen", "127.0.0.1:9001", "--name", "pid1"],
        &[],
    );
    sup.wait_for_log("listening 127.0.0.1:9001", T);
    assert_eq!(
        http_get("127.0.0.1:9001", "x", "/", T).unwrap(),
        (200, "pid1\n".to_string())
    );
    let pid = sup.pid();
    assert_ne!(Some(pid), sup.wrapper_pid());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid line");
    assert!(
        nspid.ends_with("\t1"),
        "not PID 1 in its namespace: {nspid}"
    );

    sup.signal(Signal::SIGTERM).unwrap();
    let exit = sup.wait_timeout(T).expect("exit after SIGTERM");
    assert_eq!(exit.code(), Some(0), "{exit}");
}

#[test]
fn supervisor_handle_logs_and_finds_zombies() {
    // `sh` forks a short `sleep`, then execs a long one that never reaps it.
    let mut sup = Supervisor::spawn_program(
        "sh",
        &[
            "-c",
            "echo started; echo oops >&2; sleep 0.1 & exec sleep 30",
        ],
        &[("FOO", "bar")],
    );
    sup.wait_for_log("started", T);
    let pid = sup.pid();
    wait_until(T, "a zombie under sh", || zombies_under(pid).len() == 1);
    assert!(pids_of("sleep").contains(&pid));
    assert!(sup.log().contains("oops"));
    assert!(sup.is_running());
    sup.signal(Signal::SIGTERM).unwrap();
    let exit = sup.wait_timeout(T).expect("sleep exits on SIGTERM");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit.signal(), Some(libc::SIGTERM));
}

#[test]
fn haproxy_check_accepts_good_and_rejects_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.cfg");
    std::fs::write(
        &good,
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n\
         frontend f\n  bind 127.0.0.1:8080\n  default_backend b\n\
         backend b\n  server s1 127.0.0.1:9001\n",
    )
    .unwrap();
    let (ok, out) = haproxy_check(&good);
    assert!(ok, "{out}");

    let bad = dir.path().join("bad.cfg");
    std::fs::write(&bad, "backend b\n  balance nonsense\n").unwrap();
    let (ok, out) = haproxy_check(&bad);
    assert!(!ok, "{out}");
    assert!(out.contains("bad.cfg:2"), "{out}");
}

#[test]
#[should_panic(expected = "required program `no-such-program-xyz` is not installed")]
fn require_panics_on_a_missing_program() {
    require("no-such-program-xyz");
}

#[test]
fn require_finds_the_prerequisites() {
    for cmd in ["haproxy", "consul", "iptables", "unshare", "curl", "socat"] {
        assert!(require(cmd).is_absolute());
    }
}
