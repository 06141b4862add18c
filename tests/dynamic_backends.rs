//! Issue #20: on HAProxy 3.4, a new, removed or re-tagged service is a
//! backend added (`add backend <name> from <profile>`), published, routed
//! by the hosts map, and drained then deleted: no HAProxy process starts.
//! Against a real `consul agent -dev`, HAProxy 3.4.7 (the rootfs
//! scripts/setup.sh installs) and real clients, each test in its own
//! network namespace. Run as root: `cargo test --release --test
//! dynamic_backends`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::*;

/// An agent registration with a passing TTL check.
fn svc(id: &str, name: &str, port: u16, tags: &[&str]) -> Value {
    let mut all = vec!["HAPROXY.ENABLE=true"];
    all.extend_from_slice(tags);
    ttl_instance(id, name, "127.0.0.1", port, &all)
}

/// The supervisor on `consul` with HAProxy 3.4.
fn spawn(consul: &Consul) -> Supervisor {
    let bin = haproxy34();
    let envs: Vec<(&str, &str)> = vec![
        ("HAPROXY_LOG_FORMAT", "json"),
        ("HAPROXY_DOM", "example.com"),
        ("LOCAL_SYSLOG", "127.0.0.1:5514"),
        ("HAPROXY_BIN", bin.to_str().unwrap()),
    ];
    Supervisor::spawn_on_consul(consul, &envs)
}

/// One command line on HAProxy's admin socket through socat; its answer.
fn admin(sock: &Path, line: &str) -> String {
    let out = Command::new(require("socat"))
        .args(["-", &format!("UNIX-CONNECT:{}", sock.display())])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{line}\n").as_bytes())?;
            c.wait_with_output()
        })
        .expect("socat to the admin socket");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The backends the serving HAProxy has (`show backend`).
fn backends(sup: &Supervisor) -> Vec<String> {
    admin(&sup.dir().join("run/admin.sock"), "show backend")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

/// The live changes applied whose operation kinds include `kind`.
fn live_with(sup: &Supervisor, kind: &str) -> usize {
    sup.events(Event::LiveApplied)
        .iter()
        .filter(|e| {
            e["fields"]["kinds"]
                .as_str()
                .is_some_and(|k| k.split(',').any(|x| x == kind))
        })
        .count()
}

fn status_of(host: &str) -> Option<u16> {
    http_get(FRONT, host, "/", Duration::from_secs(2))
        .ok()
        .map(|(s, _)| s)
}

/// A new service, its re-tag to a profile that runs, and its removal: all
/// live on 3.4, one process throughout; a re-tag to a profile no backend
/// runs reloads once.
#[test]
fn services_come_and_go_without_a_process_start() {
    netns::enter();
    let consul = Consul::start();
    let w = Backend::start("web-1");
    let a = Backend::start("api-1");
    let l = Backend::start("lc-1");
    consul.register(&svc("web-1", "www", w.port(), &[]));
    consul.register(&svc(
        "lc-1",
        "lc",
        l.port(),
        &["HAPROXY.BACKEND.BALANCE=leastconn"],
    ));
    wait_until(T, "consul lists www", || consul.passing("www").len() == 1);
    let sup = spawn(&consul);
    wait_done(&sup, 1, Duration::from_secs(20));
    wait_serving(WWW, T);
    wait_serving("lc.example.com", T);
    let pid = logged_serving_pid(&sup).expect("a serving pid");

    // New: added, published, routed.
    consul.register(&svc("api-1", "api", a.port(), &[]));
    wait_served("api.example.com", "/", "api-1", &sup, T);
    assert!(backends(&sup).contains(&"api".to_string()));
    assert_eq!(live_with(&sup, "add_backend"), 1);

    // Re-tagged to the running leastconn profile: a new backend beside,
    // switched to, the old one drained and deleted.
    consul.register(&svc(
        "api-1",
        "api",
        a.port(),
        &["HAPROXY.BACKEND.BALANCE=leastconn"],
    ));
    wait_until(T, "api's backend is the leastconn one", || {
        let b = backends(&sup);
        b.iter().any(|n| n.starts_with("api:")) && !b.contains(&"api".to_string())
    });
    wait_served("api.example.com", "/", "api-1", &sup, T);

    // Removed: 503 from the no-route backend, then the backend is gone.
    consul.deregister("api-1");
    wait_until(T, "api answers 503", || {
        status_of("api.example.com") == Some(503)
    });
    wait_until(T, "api's backend deleted", || {
        !backends(&sup).iter().any(|n| n.starts_with("api"))
    });
    assert_eq!(done_count(&sup), 1, "no reload; log:\n{}", sup.log());
    assert_eq!(logged_serving_pid(&sup), Some(pid));
    assert!(live_with(&sup, "park_backend") >= 2);

    // A profile nothing runs (a health check) is config text: one reload.
    consul.register(&svc(
        "api-1",
        "api",
        a.port(),
        &["HAPROXY.BACKEND.HEALTHCHECK=/"],
    ));
    wait_done(&sup, 2, T);
    wait_served("api.example.com", "/", "api-1", &sup, T);
    // The file on disk holds what runs.
    let cfg = std::fs::read_to_string(sup.dir().join("etc/haproxy.cfg")).unwrap();
    assert!(cfg.contains("\nbackend api:"), "{cfg}");
    assert_eq!(bodies_of(WWW), "web-1");
}

fn bodies_of(host: &str) -> String {
    served_by(host, "/").unwrap_or_default()
}

/// `add backend` refused (the name taken by hand through the admin
/// socket): the change lands through a reload, nothing half-applied.
#[test]
fn a_refused_add_backend_falls_back_to_a_reload() {
    netns::enter();
    let consul = Consul::start();
    let w = Backend::start("web-1");
    let n = Backend::start("new-1");
    consul.register(&svc("web-1", "www", w.port(), &[]));
    wait_until(T, "consul lists www", || consul.passing("www").len() == 1);
    let sup = spawn(&consul);
    wait_done(&sup, 1, Duration::from_secs(20));
    wait_serving(WWW, T);
    let cfg = std::fs::read_to_string(sup.dir().join("etc/haproxy.cfg")).unwrap();
    let profile = cfg
        .lines()
        .find_map(|l| l.strip_prefix("backend www from "))
        .expect("www's profile")
        .trim()
        .to_string();
    let sock = sup.dir().join("run/admin.sock");
    let answer = admin(&sock, &format!("add backend new from {profile}"));
    assert!(answer.contains("New backend registered"), "{answer}");
    consul.register(&svc("new-1", "new", n.port(), &[]));
    wait_done(&sup, 2, T);
    assert!(!sup.events(Event::LiveFailed).is_empty());
    wait_served("new.example.com", "/", "new-1", &sup, T);
    wait_served(WWW, "/", "web-1", &sup, T);
}
