//! Issue #8: server changes applied live through HAProxy's runtime API,
//! against a real `consul agent -dev`, a real HAProxy and real clients.
//! Every test runs in its own network namespace.
//! Run as root: `cargo test --release --test live`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::*;

const TAGS: [&str; 3] = [
    "HAPROXY.ENABLE=true",
    "HAPROXY.PROTOCOL=http",
    "HAPROXY.BACKEND.BALANCE=roundrobin",
];

/// An agent registration of `www` with a passing TTL check `<id>-ttl`.
fn instance(id: &str, port: u16, weight: u32, tags: &[&str]) -> Value {
    let mut v = ttl_instance(id, "www", "127.0.0.1", port, tags);
    v["Weights"] = json!({"Passing": weight, "Warning": 1});
    v
}

/// The supervisor on `consul`, JSON logs, config in `<its dir>/etc`.
fn spawn(consul: &Consul, extra: &[(&'static str, &str)]) -> Supervisor {
    let mut envs: Vec<(&str, &str)> = vec![
        ("HAPROXY_LOG_FORMAT", "json"),
        ("HAPROXY_DOM", "example.com"),
        // HAProxy's access log to a UDP port nobody reads: under load it
        // would bury the supervisor's own log (printed when a test fails).
        ("LOCAL_SYSLOG", "127.0.0.1:5514"),
    ];
    envs.extend_from_slice(extra);
    Supervisor::spawn_on_consul(consul, &envs)
}

/// `show servers state <backend>`: server name → (admin state, user weight).
fn servers_state(sup: &Supervisor, backend: &str) -> BTreeMap<String, (u32, u32)> {
    let sock = sup.dir().join("run/admin.sock");
    admin(&sock, &format!("show servers state {backend}"))
        .lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 8)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight ...
            (
                f[3].to_string(),
                (f[6].parse().unwrap_or(99), f[7].parse().unwrap_or(0)),
            )
        })
        .collect()
}

/// Servers in rotation (admin state without the maintenance bits) and their weights.
fn in_rotation(state: &BTreeMap<String, (u32, u32)>) -> BTreeMap<String, u32> {
    state
        .iter()
        .filter(|(_, (admin, _))| admin & 0x2d == 0)
        .map(|(n, (_, w))| (n.clone(), *w))
        .collect()
}

fn server_lines(config: &str, backend: &str) -> BTreeMap<String, String> {
    testkit::server_lines(config, backend)
        .into_iter()
        .map(|l| (l.split_whitespace().nth(1).unwrap_or("").to_string(), l))
        .collect()
}

fn count(sup: &Supervisor, event: Event) -> usize {
    sup.events(event).len()
}

/// Bodies seen in `n` requests to `host` (the demo backends answer their name).
fn bodies(host: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .filter_map(|_| match get(host) {
            Ok((200, b)) => Some(b.trim_end().to_string()),
            _ => None,
        })
        .collect()
}

/// HAProxy processes under the supervisor that serve (not `haproxy -c`
/// checks, which the supervisor runs after live changes to check the file it
/// writes).
fn serving_haproxies(sup: &Supervisor) -> Vec<i32> {
    haproxies_under(sup.pid())
        .into_iter()
        .filter(|p| {
            // A process gone meanwhile (a check that ended) has no cmdline.
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            !cmdline.is_empty() && !cmdline.split(|b| *b == 0).any(|a| a == b"-c")
        })
        .collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// 100 server-only changes through Consul under load — instances added and
/// removed, weights changed, TTL checks flapping, an instance moved to
/// another port: no HAProxy process starts, no request fails, and routing,
/// the running servers and the file on disk all end where Consul is.
#[test]
fn server_changes_under_load_start_no_haproxy() {
    netns::enter();
    let consul = Consul::start();
    let backends: Vec<Backend> = (1..=4)
        .map(|i| Backend::start(&format!("web-{i}")))
        .collect();
    let port = |i: usize| backends[i - 1].port();
    consul.register(&instance("web-1", port(1), 1, &TAGS));
    consul.register(&instance("web-2", port(2), 1, &TAGS));
    wait_until(T, "consul lists www", || consul.passing("www").len() == 2);
    let sup = spawn(&consul, &[]);
    wait_done(&sup, 1, Duration::from_secs(20));
    wait_serving(WWW, T);
    let first = serving_haproxies(&sup);
    assert_eq!(first.len(), 1, "one haproxy at start: {first:?}");

    let load = Load::start(FRONT, WWW, 10);
    let mut seen: BTreeSet<i32> = first.iter().copied().collect();
    let t0 = Instant::now();
    for i in 0..100usize {
        match i % 6 {
            0 => consul.register(&instance("web-3", port(3), 1, &TAGS)),
            1 => consul.register(&instance("web-1", port(1), 1 + (i as u32 % 7), &TAGS)),
            2 => consul.ttl_fail("web-2-ttl"),
            3 => consul.deregister("web-3"),
            4 => consul.ttl_pass("web-2-ttl"),
            _ => {
                // Alternately on backend 4 and backend 3: the same server
                // moved to another port (`set server addr`).
                let p = if (i / 6) % 2 == 0 { port(4) } else { port(3) };
                consul.register(&instance("web-4", p, 2, &TAGS));
            }
        }
        // Pacing: a change every 120 ms, the rate the test is about.
        thread::sleep(Duration::from_millis(120));
        seen.extend(serving_haproxies(&sup));
    }
    let changes_took = t0.elapsed();
    // Where Consul ended: the passing instances and their weights.
    let mut want: BTreeMap<String, u32> = BTreeMap::new();
    let mut want_bodies = BTreeSet::new();
    for e in consul.passing("www") {
        let id = e["Service"]["ID"].as_str().unwrap().to_string();
        let p = e["Service"]["Port"].as_u64().unwrap() as u16;
        let w = e["Service"]["Weights"]["Passing"].as_u64().unwrap() as u32;
        want.insert(id, w);
        let b = backends.iter().find(|b| b.port() == p).unwrap();
        want_bodies.insert(b.name().to_string());
    }
    // Let the last change arrive (the assertion below says what if not).
    poll_until(T, || in_rotation(&servers_state(&sup, "www")) == want);
    let report = load.stop();
    eprintln!("100 changes in {changes_took:?}; load: {report}");
    let live = count(&sup, Event::LiveApplied);
    eprintln!(
        "live changes applied: {live}; reloads done: {}",
        done_count(&sup)
    );

    assert_eq!(
        seen,
        first.iter().copied().collect(),
        "an haproxy process was started during server-only changes (the log is printed below)"
    );
    assert_eq!(
        done_count(&sup),
        1,
        "server-only changes reloaded (the log is printed below)"
    );
    assert_eq!(count(&sup, Event::LiveFailed), 0);
    assert!(
        live >= 50,
        "only {live} live changes for 100 Consul changes"
    );
    assert_eq!(report.failed(), 0, "failed requests: {report}");

    eprintln!("consul's final passing instances: {want:?}");
    assert_eq!(in_rotation(&servers_state(&sup, "www")), want);
    assert_eq!(bodies(WWW, 60), want_bodies, "routing");
    // The file on disk follows within a second (it is written and checked at
    // most once a second after live changes).
    let names: BTreeSet<String> = want.keys().cloned().collect();
    poll_until(Duration::from_secs(3), || {
        let lines = server_lines(&read(&sup.dir().join("etc/haproxy.cfg")), "www");
        lines.keys().cloned().collect::<BTreeSet<_>>() == names
            && want
                .iter()
                .all(|(n, w)| lines[n].contains(&format!(" weight {w}")))
    });
    let cfg = read(&sup.dir().join("etc/haproxy.cfg"));
    let lines = server_lines(&cfg, "www");
    assert_eq!(
        lines.keys().cloned().collect::<BTreeSet<_>>(),
        want.keys().cloned().collect::<BTreeSet<_>>(),
        "servers in the file on disk:\n{cfg}"
    );
    for (name, w) in &want {
        assert!(
            lines[name].contains(&format!(" weight {w}")),
            "{name} weight {w} not on disk: {}",
            lines[name]
        );
    }
    let (ok, msg) = haproxy_check(sup.dir().join("etc/haproxy.cfg"));
    assert!(ok, "the file on disk does not pass haproxy -c: {msg}");

    // The file on disk reproduces what ran: a reload from it serves the same.
    sup.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_done(&sup, 2, T);
    assert_eq!(in_rotation(&servers_state(&sup, "www")), want);
    assert_eq!(bodies(WWW, 60), want_bodies, "routing after a reload");
}

/// A new service is structural (a reload); an instance added to it after
/// that goes live again; a new virtual host is a live map change.
#[test]
fn structural_changes_reload_and_live_changes_resume() {
    netns::enter();
    let consul = Consul::start();
    let a = Backend::start("web-1");
    let b = Backend::start("api-1");
    let c = Backend::start("api-2");
    consul.register(&instance("web-1", a.port(), 1, &TAGS));
    wait_until(T, "consul lists www", || consul.passing("www").len() == 1);
    let sup = spawn(&consul, &[]);
    wait_done(&sup, 1, Duration::from_secs(20));
    wait_serving(WWW, T);

    let api = |id: &str, port: u16, vhost: &str| {
        json!({"ID": id, "Name": "api", "Address": "127.0.0.1", "Port": port,
               "Tags": ["HAPROXY.ENABLE=true", format!("HAPROXY.VHOST={vhost}")],
               "Check": {"CheckID": format!("{id}-ttl"), "TTL": "300s", "Status": "passing"}})
    };
    consul.register(&api("api-1", b.port(), "api.example.com"));
    wait_done(&sup, 2, T);
    wait_serving("api.example.com", T);

    consul.register(&api("api-2", c.port(), "api.example.com"));
    wait_until(T, "api-2 serves", || {
        bodies("api.example.com", 10).contains("api-2")
    });
    // Every instance now carries a second host: the hosts map changes live.
    consul.register(&api("api-1", b.port(), "api.example.com,api2.example.com"));
    consul.register(&api("api-2", c.port(), "api.example.com,api2.example.com"));
    wait_until(T, "api2.example.com routes", || {
        bodies("api2.example.com", 10) == BTreeSet::from(["api-1".into(), "api-2".into()])
    });
    assert_eq!(done_count(&sup), 2, "reloads (the log is printed below)");
    assert!(count(&sup, Event::LiveApplied) >= 2);
    // The file on disk follows once `haproxy -c` has passed (after the live change).
    let cfg = sup.dir().join("etc/haproxy.cfg");
    wait_until(T, "the hosts map on disk has api2.example.com", || {
        current_map(&cfg, "hosts").is_some_and(|m| m.contains("api2.example.com api\n"))
    });
    assert_eq!(bodies(WWW, 5), BTreeSet::from(["web-1".into()]));
}

/// A live operation HAProxy refuses — here a server someone added by hand
/// through the admin socket, so `add server` finds the name taken — falls
/// back to a full checked reload; nothing is left half-applied.
#[test]
fn a_refused_live_operation_falls_back_to_a_reload() {
    netns::enter();
    let consul = Consul::start();
    let a = Backend::start("web-1");
    let b = Backend::start("web-2");
    consul.register(&instance("web-1", a.port(), 1, &TAGS));
    wait_until(T, "consul lists www", || consul.passing("www").len() == 1);
    let sup = spawn(&consul, &[]);
    wait_done(&sup, 1, Duration::from_secs(20));
    wait_serving(WWW, T);
    let sock = sup.dir().join("run/admin.sock");
    let answer = admin(
        &sock,
        &format!(
            "add server www/web-2 127.0.0.1:{}; set server www/web-2 state ready",
            b.port()
        ),
    );
    assert!(answer.contains("New server registered"), "{answer}");
    consul.register(&instance("web-2", b.port(), 1, &TAGS));
    wait_done(&sup, 2, T);
    assert_eq!(count(&sup, Event::LiveFailed), 1);
    wait_until(T, "both serve", || {
        bodies(WWW, 10) == BTreeSet::from(["web-1".into(), "web-2".into()])
    });
    assert_eq!(
        in_rotation(&servers_state(&sup, "www"))
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["web-1", "web-2"]
    );
}

/// `HAPROXY.BACKEND.BALANCE=static-rr` refuses dynamic servers: a new
/// instance there reloads; removing one is still live.
#[test]
fn static_backends_reload_to_add_servers() {
    netns::enter();
    let consul = Consul::start();
    let a = Backend::start("web-1");
    let b = Backend::start("web-2");
    let tags = ["HAPROXY.ENABLE=true", "HAPROXY.BACKEND.BALANCE=static-rr"];
    consul.register(&instance("web-1", a.port(), 1, &tags));
    wait_until(T, "consul lists www", || consul.passing("www").len() == 1);
    let sup = spawn(&consul, &[]);
    wait_done(&sup, 1, Duration::from_secs(20));
    wait_serving(WWW, T);
    consul.register(&instance("web-2", b.port(), 1, &tags));
    wait_done(&sup, 2, T);
    wait_until(T, "both serve", || bodies(WWW, 10).len() == 2);
    consul.ttl_fail("web-2-ttl");
    wait_until(T, "web-2 parked", || {
        bodies(WWW, 10) == BTreeSet::from(["web-1".into()])
    });
    assert_eq!(done_count(&sup), 2, "reloads (the log is printed below)");
    assert_eq!(count(&sup, Event::LiveApplied), 1);
}

/// Server state survives a reload: a server HAProxy found down stays down
/// in the new process from its first instant (the state file written from
/// the serving one), instead of taking traffic until its first check.
#[test]
fn a_server_found_down_stays_down_across_a_structural_reload() {
    netns::enter();
    let a = Backend::start("web-1");
    let files = Files::new();
    // www-2 points at a port nothing listens on: its health check fails.
    let dead = TcpListenerPort::free();
    let catalog = |extra: bool| {
        let mut services = vec![json!({"name": "www", "instances": [
            {"id": "www-1", "address": "127.0.0.1", "port": a.port(), "tags": ["HAPROXY.ENABLE=true"]},
            {"id": "www-2", "address": "127.0.0.1", "port": dead, "tags": ["HAPROXY.ENABLE=true"]},
        ]})];
        if extra {
            services.push(json!({"name": "api", "instances": [
                {"id": "api-1", "address": "127.0.0.1", "port": a.port(), "tags": ["HAPROXY.ENABLE=true"]}]}));
        }
        services
    };
    write_catalog(&files.catalog(), &catalog(false));
    let mut env = env("seamless");
    env.push(("LOCAL_SYSLOG", "127.0.0.1:5514".into()));
    let sup = Supervisor::spawn(&strs(&files.render_args()), &env_refs(&env));
    wait_done(&sup, 1, T);
    wait_serving(WWW, T);
    let sock = files.run_dir().join("admin.sock");
    // HAProxy's own check finds www-2 down (first check within `inter`).
    wait_until(Duration::from_secs(20), "www-2 found down", || {
        op_state(&sock, "www", "www-2") == Some(0)
    });
    write_catalog(&files.catalog(), &catalog(true));
    wait_done(&sup, 2, T);
    // The new process knew it from the start.
    assert_eq!(
        op_state(&sock, "www", "www-2"),
        Some(0),
        "www-2 in the new process"
    );
    let failed = (0..100)
        .filter(|_| !matches!(get(WWW), Ok((200, _))))
        .count();
    assert_eq!(failed, 0, "requests sent to the server found down");
}

/// A free TCP port on loopback (bound, then released).
struct TcpListenerPort;

impl TcpListenerPort {
    fn free() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }
}

/// A server's operational state (`srv_op_state`: 0 down, 2 up) from `show
/// servers state`.
fn op_state(sock: &Path, backend: &str, server: &str) -> Option<u32> {
    admin(sock, &format!("show servers state {backend}"))
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 8 && f[3] == server).then(|| f[5].parse().ok())?
        })
}
