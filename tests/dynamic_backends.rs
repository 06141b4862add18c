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

    // Afterwards that profile runs: another service made from it is live.
    let live_before = live_with(&sup, "add_backend");
    consul.register(&svc(
        "lc-2",
        "hc",
        l.port(),
        &["HAPROXY.BACKEND.HEALTHCHECK=/"],
    ));
    wait_served("hc.example.com", "/", "lc-1", &sup, T);
    assert_eq!(live_with(&sup, "add_backend"), live_before + 1);
    assert_eq!(done_count(&sup), 2, "a second reload; log:\n{}", sup.log());
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

/// The supervisor on a catalog file with HAProxy 3.4.
fn spawn_on_file(files: &Files) -> Supervisor {
    let bin = haproxy34();
    let mut envs = env("inherit");
    envs.push(("HAPROXY_BIN", bin.to_string_lossy().into_owned()));
    Supervisor::spawn(&strs(&files.render_args()), &env_refs(&envs))
}

/// The tag sets of the profiles the tests move services between. Each is
/// held by an anchor service from the start, so every profile runs and a
/// move between them is live.
const PROFILES: [&[&str]; 4] = [
    &[],
    &["HAPROXY.BACKEND.BALANCE=leastconn"],
    &["HAPROXY.BACKEND.HEALTHCHECK=/health"],
    &["HAPROXY.BACKEND.STICKY=true"],
];

/// Issue #20: 20 long-lived connections (WebSocket-style Upgrade tunnels,
/// 10 to a service that never changes, 10 to one re-tagged again and
/// again) across 100 structural changes on 3.4: a new service, one
/// removed, a balance change, a health check, stickiness, a new vhost.
/// Every tunnel echoes after every change (0 cut), no process starts.
#[test]
fn long_lived_connections_survive_a_hundred_structural_changes() {
    let (_orphans, [w, t, x], files) = isolated::<3>();
    // `ws` moves through the profiles; `www` gets vhosts; `new-<i>` come
    // and go; the anchors keep every profile running.
    let anchors: Vec<Value> = PROFILES
        .iter()
        .enumerate()
        .map(|(i, tags)| service(&format!("anchor-{i}"), &[&x], tags))
        .collect();
    let catalog = |ws: usize, vhost: Option<usize>, new: Option<usize>| {
        let mut all = anchors.clone();
        let v = vhost.map(|i| format!("HAPROXY.VHOST=www.example.com,alt-{i}.example.com"));
        all.push(service(
            "www",
            &[&w],
            &v.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        all.push(service("ws", &[&t], PROFILES[ws]));
        if let Some(i) = new {
            all.push(service(&format!("new-{i}"), &[&x], &[]));
        }
        all
    };
    write_catalog(&files.catalog(), &catalog(0, None, None));
    let sup = spawn_on_file(&files);
    wait_done(&sup, 1, Duration::from_secs(20));
    wait_served(WWW, "/", "web-1", &sup, T);
    wait_served("ws.example.com", "/", "web-2", &sup, T);
    let pid = logged_serving_pid(&sup).expect("a serving pid");
    // The backend the serving HAProxy's hosts map routes `host` to.
    let hosts = config_map_path(&std::fs::read_to_string(files.config()).unwrap(), "hosts")
        .expect("a hosts map");
    let sock = files.run_dir().join("admin.sock");
    let routed_to = |host: &str| -> Option<String> {
        admin(&sock, &format!("show map {}", hosts.display()))
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&host)).then(|| f.get(2).map(|b| b.to_string()))
            })
            .flatten()
    };

    let mut tunnels: Vec<(&str, Tunnel)> = (0..20)
        .map(|i| {
            let host = if i % 2 == 0 { WWW } else { "ws.example.com" };
            (host, Tunnel::open(host))
        })
        .collect();
    let (mut ws, mut vhost, mut new) = (0, None, None);
    let mut cuts = Vec::new();
    for i in 0..100 {
        let kind = match i % 5 {
            0 => {
                new = Some(i);
                "new service"
            }
            1 => {
                new = None;
                "service removed"
            }
            2 => {
                ws = if ws == 1 { 0 } else { 1 };
                "balance"
            }
            3 => {
                ws = if ws == 2 { 3 } else { 2 };
                "health check / sticky"
            }
            _ => {
                vhost = Some(i);
                "new vhost"
            }
        };
        let ws_was = routed_to("ws.example.com");
        write_catalog(&files.catalog(), &catalog(ws, vhost, new));
        wait_until(T, &format!("change {i} ({kind}) applied"), || match i % 5 {
            0 => served_by(&format!("new-{i}.example.com"), "/").as_deref() == Some("web-3"),
            1 => get(&format!("new-{}.example.com", i - 1)).is_ok_and(|(s, _)| s == 503),
            2 | 3 => routed_to("ws.example.com").is_some_and(|b| Some(&b) != ws_was.as_ref()),
            _ => served_by(&format!("alt-{i}.example.com"), "/").as_deref() == Some("web-1"),
        });
        for (n, (host, tunnel)) in tunnels.iter_mut().enumerate() {
            if let Err(e) = tunnel.echo(&format!("change {i} tunnel {n}\n")) {
                cuts.push(format!(
                    "tunnel {n} to {host} after change {i} ({kind}): {e}"
                ));
            }
        }
    }
    // What the last changes route is served.
    wait_served("ws.example.com", "/", "web-2", &sup, T);
    wait_served("alt-99.example.com", "/", "web-1", &sup, T);
    assert!(cuts.is_empty(), "{} cut:\n{}", cuts.len(), cuts.join("\n"));
    assert_eq!(done_count(&sup), 1, "a reload ran; log:\n{}", sup.log());
    assert_eq!(logged_serving_pid(&sup), Some(pid));
    assert!(sup.events(Event::LiveFailed).is_empty(), "{}", sup.log());
}

/// What a HAProxy serves, as the runtime API shows it: its backends, its
/// servers (backend, server, address, port, admin state, weight) and the
/// entries of its hosts map.
#[derive(Debug, PartialEq, Eq)]
struct Served {
    backends: Vec<String>,
    servers: Vec<(String, String, String, u16, u32, u32)>,
    hosts: Vec<(String, String)>,
}

fn served(sock: &Path, hosts_map: &Path) -> Served {
    let mut backends: Vec<String> = admin(sock, "show backend")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    backends.sort();
    let mut servers: Vec<_> =
        haproxy_supervisor::runtime::parse_servers_state(&admin(sock, "show servers state"))
            .map(|s| s.rows)
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let addr = r.addr.unwrap_or_default();
                (r.backend, r.server, addr, r.port, r.admin_state, r.weight)
            })
            .collect();
    servers.sort();
    let mut hosts: Vec<(String, String)> =
        admin(sock, &format!("show map {}", hosts_map.display()))
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| (f[1].to_string(), f[2].to_string()))
            })
            .collect();
    hosts.sort();
    Served {
        backends,
        servers,
        hosts,
    }
}

/// A change to one of the services the property test moves around.
#[derive(Debug, Clone)]
enum Change {
    /// Added (with a profile and 1 or 2 instances) if absent, else removed.
    Toggle(usize, usize, usize),
    /// Moved to another profile.
    Retag(usize, usize),
    /// 1 or 2 instances.
    Instances(usize, usize),
    /// A second host name, or not.
    Vhost(usize),
}

fn change() -> impl proptest::strategy::Strategy<Value = Change> {
    use proptest::prelude::*;
    prop_oneof![
        (0..3usize, 0..PROFILES.len(), 1..=2usize).prop_map(|(s, p, n)| Change::Toggle(s, p, n)),
        (0..3usize, 0..PROFILES.len()).prop_map(|(s, p)| Change::Retag(s, p)),
        (0..3usize, 1..=2usize).prop_map(|(s, n)| Change::Instances(s, n)),
        (0..3usize).prop_map(Change::Vhost),
    ]
}

/// A service of the property test: profile, instances, second host.
#[derive(Debug, Clone, Copy)]
struct Svc {
    profile: usize,
    instances: usize,
    vhost: bool,
}

/// The on-disk config made fit to start beside the serving HAProxy: its
/// own admin socket, its binds on 127.0.0.2 (the serving one holds the
/// ports), no server-state file (a start from nothing but the file).
fn fresh_config(config: &str, sock: &Path) -> String {
    let mut port = 20000;
    config
        .lines()
        .filter(|l| !l.trim_start().starts_with("server-state-file"))
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("stats socket ") {
                format!("    stats socket {} mode 600 level admin", sock.display())
            } else if t.starts_with("bind ") {
                port += 1;
                format!("    bind 127.0.0.2:{port}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Issue #20's round trip: random sequences of services added, removed,
/// re-tagged (another profile), scaled and given a second host, applied
/// live on 3.4 (one process throughout); then a fresh HAProxy started from
/// the file on disk serves the same backends, servers (`show servers
/// state`) and hosts map as the one changed live.
#[test]
fn what_runs_after_live_changes_is_what_the_file_on_disk_starts() {
    use proptest::prelude::*;
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let (_orphans, [b1, b2, x], files) = isolated::<3>();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        // Each shrink step is a supervisor run: a failure reports soon.
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    });
    let case = std::cell::Cell::new(0);
    let result = runner.run(&proptest::collection::vec(change(), 3..10), |changes| {
        case.set(case.get() + 1);
        let dir = files.path(&format!("case-{}", case.get()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = Files {
            dir: tempfile::Builder::new().tempdir_in(&dir).unwrap(),
        };
        let anchors: Vec<Value> = PROFILES
            .iter()
            .enumerate()
            .map(|(i, tags)| service(&format!("anchor-{i}"), &[&x], tags))
            .collect();
        let names = ["s0", "s1", "s2"];
        let catalog = |state: &[Option<Svc>]| {
            let mut all = anchors.clone();
            for (i, s) in state.iter().enumerate() {
                let Some(s) = s else { continue };
                let mut tags: Vec<String> =
                    PROFILES[s.profile].iter().map(|t| t.to_string()).collect();
                if s.vhost {
                    tags.push(format!(
                        "HAPROXY.VHOST={n}.example.com,alt-{n}.example.com",
                        n = names[i]
                    ));
                }
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                all.push(service(names[i], &[&b1, &b2][..s.instances], &tags));
            }
            all
        };
        let mut state: [Option<Svc>; 3] = [None; 3];
        write_catalog(&run.catalog(), &catalog(&state));
        let sup = spawn_on_file(&run);
        wait_done(&sup, 1, Duration::from_secs(20));
        let pid = logged_serving_pid(&sup).expect("a serving pid");
        let started = std::fs::read_to_string(run.config()).unwrap();
        let hosts = config_map_path(&started, "hosts").expect("a hosts map");
        let sock = run.run_dir().join("admin.sock");
        // A profile's backend-name suffix, from the anchor that has it.
        let suffix = |p: usize| {
            let a = format!("anchor-{p}");
            backend_name(&started, &a).unwrap()[a.len()..].to_string()
        };
        // The hosts map the serving HAProxy must have for `state`.
        let want_hosts = |state: &[Option<Svc>]| {
            let mut h: Vec<(String, String)> = (0..PROFILES.len())
                .map(|p| {
                    (
                        format!("anchor-{p}.example.com"),
                        format!("anchor-{p}{}", suffix(p)),
                    )
                })
                .collect();
            for (i, s) in state.iter().enumerate() {
                let Some(s) = s else { continue };
                let be = format!("{}{}", names[i], suffix(s.profile));
                h.push((format!("{}.example.com", names[i]), be.clone()));
                if s.vhost {
                    h.push((format!("alt-{}.example.com", names[i]), be));
                }
            }
            h.sort();
            h
        };

        for c in &changes {
            match *c {
                Change::Toggle(i, p, n) => {
                    state[i] = match state[i] {
                        Some(_) => None,
                        None => Some(Svc {
                            profile: p,
                            instances: n,
                            vhost: false,
                        }),
                    }
                }
                Change::Retag(i, p) => {
                    if let Some(s) = &mut state[i] {
                        s.profile = p;
                    }
                }
                Change::Instances(i, n) => {
                    if let Some(s) = &mut state[i] {
                        s.instances = n;
                    }
                }
                Change::Vhost(i) => {
                    if let Some(s) = &mut state[i] {
                        s.vhost = !s.vhost;
                    }
                }
            }
            write_catalog(&run.catalog(), &catalog(&state));
            let want = want_hosts(&state);
            let ready = |s: &Served| {
                s.hosts == want
                    && state.iter().enumerate().all(|(i, sv)| {
                        sv.is_none_or(|sv| {
                            let be = format!("{}{}", names[i], suffix(sv.profile));
                            let on: Vec<_> =
                                s.servers.iter().filter(|r| r.0 == be && r.4 == 0).collect();
                            on.len() == sv.instances
                        })
                    })
            };
            if !poll_until(T, || ready(&served(&sock, &hosts))) {
                panic!(
                    "after {c:?} the serving HAProxy has {:#?}, want hosts {want:#?}; log:\n{}",
                    served(&sock, &hosts),
                    sup.log()
                );
            }
        }
        // The file on disk catches up (written in the background, at most
        // once a second); a fresh HAProxy starts from it.
        let want = want_hosts(&state);
        wait_until(T, "the file on disk holds the last change", || {
            let cfg = std::fs::read_to_string(run.config()).unwrap_or_default();
            let map = config_map_path(&cfg, "hosts")
                .and_then(|m| std::fs::read_to_string(m).ok())
                .unwrap_or_default();
            let mut on_disk: Vec<(String, String)> = map
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            on_disk.sort();
            // ... and every service's servers (a server-only change leaves
            // the hosts map as it was).
            on_disk == want
                && state.iter().enumerate().all(|(i, sv)| {
                    sv.is_none_or(|sv| server_lines(&cfg, names[i]).len() == sv.instances)
                })
        });
        let fresh_sock = run.path("fresh.sock");
        let fresh_cfg = run.path("fresh.cfg");
        let on_disk = std::fs::read_to_string(run.config()).unwrap();
        std::fs::write(&fresh_cfg, fresh_config(&on_disk, &fresh_sock)).unwrap();
        let fresh_hosts = config_map_path(&on_disk, "hosts").unwrap();
        let mut fresh = Command::new(haproxy34())
            .args(["-db", "-f"])
            .arg(&fresh_cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a fresh HAProxy 3.4");
        wait_until(T, "the fresh HAProxy answers", || {
            fresh_sock.exists() && !admin(&fresh_sock, "show backend").is_empty()
        });
        // Parked backends and servers are deleted once idle: then the two
        // are the same.
        let same = poll_until(T, || {
            served(&sock, &hosts) == served(&fresh_sock, &fresh_hosts)
        });
        let (live, started_fresh) = (served(&sock, &hosts), served(&fresh_sock, &fresh_hosts));
        let _ = fresh.kill();
        let _ = fresh.wait();
        prop_assert!(
            same,
            "after {changes:?}:\nlive {live:#?}\nfresh {started_fresh:#?}"
        );
        prop_assert_eq!(done_count(&sup), 1, "a reload ran; log:\n{}", sup.log());
        prop_assert_eq!(logged_serving_pid(&sup), Some(pid));
        drop(sup);
        kill_haproxies_in_my_netns();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
