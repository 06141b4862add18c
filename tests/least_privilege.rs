//! Issue #9, item 8 (SPEC §13): least privilege.
//!
//! - HAProxy binds as root, then serves as the `haproxy` user (the default
//!   `HAPROXY_USER` where that user exists), across reloads too.
//! - The stats page takes credentials (`HAPROXY_STATS_AUTH`) and a bind
//!   address (`HAPROXY_STATS_BIND`).
//! - The Consul token never reaches HAProxy's environment nor the log.
//! - A Consul ACL denial is reported as an authorization error naming the
//!   token source, not as "consul unavailable".
//!
//! Real haproxy, consul (with ACLs for the last) and demo backends; every
//! test in its own network namespace. Run as root:
//! `cargo test --release --test least_privilege`.

use std::time::Duration;

use serde_json::json;
use testkit::*;

const T: Duration = Duration::from_secs(15);
const REQ: Duration = Duration::from_secs(2);
/// A token value to look for where it must not be.
const TOKEN: &str = "d3adb33f-0000-4000-8000-5ec4e7000001";

/// The serving HAProxy processes under `sup` (not `haproxy -c` checks).
fn serving_haproxies(sup: &Supervisor) -> Vec<i32> {
    descendants_of(sup.pid())
        .into_iter()
        .filter(|p| p.comm == "haproxy" && p.state != 'Z')
        .map(|p| p.pid)
        .filter(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            !cmdline.split(|b| *b == 0).any(|a| a == b"-c")
        })
        .collect()
}

/// The values of a `/proc/<pid>/status` line (`Uid:`, `Gid:`, `Groups:`).
fn status_field(pid: i32, field: &str) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    Some(
        line[field.len()..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect(),
    )
}

fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Every serving HAProxy runs as `haproxy` (real, effective, saved and
/// filesystem ids), without supplementary groups, and without the token.
fn assert_unprivileged(sup: &Supervisor) -> Vec<i32> {
    let user = nix::unistd::User::from_name("haproxy")
        .unwrap()
        .expect("the haproxy user exists (Debian's haproxy package creates it)");
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let mut pids = Vec::new();
    wait_until(T, "a serving haproxy runs as the haproxy user", || {
        pids = serving_haproxies(sup);
        !pids.is_empty()
            && pids.iter().all(|p| {
                status_field(*p, "Uid:").is_some_and(|u| u == [uid; 4])
                    && status_field(*p, "Gid:").is_some_and(|g| g == [gid; 4])
            })
    });
    for p in &pids {
        assert_eq!(
            status_field(*p, "Groups:").unwrap_or_default(),
            Vec::<u32>::new(),
            "haproxy {p} keeps supplementary groups"
        );
        let env = environ(*p);
        assert!(
            !env.iter()
                .any(|v| v.starts_with("CONSUL_HTTP_TOKEN") || v.contains(TOKEN)),
            "haproxy {p} has the Consul token in its environment: {env:?}"
        );
    }
    // Never root, not even while it read its config: the admin socket it
    // created itself belongs to the user. (Started as root and dropped by
    // HAProxy's `user`, it is root's: HAProxy binds before it drops.)
    use std::os::unix::fs::MetadataExt;
    let sock = sup.dir().join("run/admin.sock");
    assert_eq!(
        std::fs::metadata(&sock).map(|m| m.uid()).ok(),
        Some(uid),
        "{} was created by root: haproxy started as root",
        sock.display()
    );
    pids
}

/// `GET path` on `addr` with an optional `Authorization` header.
fn get_auth(addr: &str, path: &str, auth: Option<&str>) -> Result<(u16, String), HttpError> {
    let auth = auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: stats\r\n{auth}Connection: close\r\n\r\n");
    http_raw(addr, req.as_bytes(), REQ)
}

/// Local addresses (`0100007F`, ...) of the TCP sockets listening on
/// `port` in this thread's network namespace, IPv4 and IPv6.
fn listening_addresses(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let text =
            std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "0A" {
                continue;
            }
            if let Some((addr, p)) = f[1].split_once(':') {
                if u16::from_str_radix(p, 16) == Ok(port) {
                    out.push(addr.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn haproxy_serves_as_the_haproxy_user_and_never_sees_the_consul_token() {
    netns::enter();
    let consul = Consul::start();
    let www = Backend::start("www");
    let api = Backend::start("api");
    consul.register(&json!({
        "ID": "www-1", "Name": "www", "Address": "127.0.0.1", "Port": www.port(),
        "Tags": ["HAPROXY.ENABLE=true"]
    }));
    let addr = consul.addr();
    let sup = Supervisor::spawn_run(
        &["--consul", &addr],
        &[
            ("HAPROXY_DOM", "example.com"),
            ("NO_COLOR", "1"),
            // Consul without ACLs ignores it; the supervisor sends it.
            ("CONSUL_HTTP_TOKEN", TOKEN),
        ],
    );
    wait_served("www.example.com", "/", "www", &sup, T);
    assert_no_token_in_haproxy_env(&sup);
    let config = std::fs::read_to_string(sup.dir().join("etc/haproxy.cfg")).unwrap();
    assert!(
        config.contains("\n    user haproxy\n    group haproxy\n"),
        "{config}"
    );
    let first = assert_unprivileged(&sup);

    // A reload (a new service): the new generation is unprivileged too,
    // and took over from the old one.
    consul.register(&json!({
        "ID": "api-1", "Name": "api", "Address": "127.0.0.1", "Port": api.port(),
        "Tags": ["HAPROXY.ENABLE=true"]
    }));
    wait_served("api.example.com", "/", "api", &sup, T);
    wait_until(T, "the first generation is gone", || {
        serving_haproxies(&sup).iter().all(|p| !first.contains(p))
    });
    assert_unprivileged(&sup);
    assert_eq!(served_by("www.example.com", "/").as_deref(), Some("www"));

    // The stats page is open and bound to every address by default.
    assert_eq!(
        listening_addresses(4444),
        ["00000000"],
        "stats listener not on every address"
    );
    assert_eq!(get_auth("127.0.0.2:4444", "/", None).map(|r| r.0), Ok(200));

    let log = sup.log();
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    sup.stop();
}

#[test]
fn stats_page_takes_credentials_and_binds_only_where_told() {
    netns::enter();
    let www = Backend::start("www");
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.json");
    std::fs::write(
        &catalog,
        json!({"services": [{"name": "www", "instances": [{
            "id": "www-1", "address": "127.0.0.1", "port": www.port(),
            "tags": ["HAPROXY.ENABLE=true"]}]}]})
        .to_string(),
    )
    .unwrap();
    let password = "s3cret-pw";
    let sup = Supervisor::spawn_run(
        &["--catalog-file", &catalog.display().to_string()],
        &[
            ("HAPROXY_DOM", "example.com"),
            ("NO_COLOR", "1"),
            ("HAPROXY_STATS_AUTH", "admin:s3cret-pw"),
            ("HAPROXY_STATS_BIND", "127.0.0.1"),
        ],
    );
    wait_served("www.example.com", "/", "www", &sup, T);

    // Credentials: 401 without or with wrong ones, 200 with the right ones.
    const RIGHT: &str = "YWRtaW46czNjcmV0LXB3"; // admin:s3cret-pw
    const WRONG: &str = "YWRtaW46d3Jvbmc="; // admin:wrong
    let stats = "127.0.0.1:4444";
    assert_eq!(get_auth(stats, "/", None).map(|r| r.0), Ok(401));
    assert_eq!(get_auth(stats, "/", Some(WRONG)).map(|r| r.0), Ok(401));
    let page = get_auth(stats, "/", Some(RIGHT)).expect("stats page");
    assert_eq!(page.0, 200);
    assert!(page.1.contains("Statistics Report"), "{}", page.1);
    // HAProxy's Prometheus exporter takes the same credentials.
    assert_eq!(get_auth(stats, "/metrics", None).map(|r| r.0), Ok(401));
    let m = get_auth(stats, "/metrics", Some(RIGHT)).expect("metrics");
    assert_eq!(m.0, 200);
    assert!(m.1.contains("haproxy_frontend_http_requests_total"));
    // The container health check needs no credentials.
    assert_eq!(
        get_auth(stats, "/_haproxy_health_check", None).map(|r| r.0),
        Ok(200)
    );

    // Bound to 127.0.0.1 only: the kernel lists that one listener, and
    // another loopback address is refused where the HTTP frontend (bound
    // to every address) answers.
    assert_eq!(listening_addresses(4444), ["0100007F"]);
    assert!(
        matches!(
            get_auth("127.0.0.2:4444", "/", Some(RIGHT)),
            Err(HttpError::Refused(_))
        ),
        "stats answered on 127.0.0.2"
    );
    assert_eq!(
        http_get("127.0.0.2:8080", "www.example.com", "/", REQ).map(|r| r.0),
        Ok(200)
    );

    // The password is in the config, nowhere in the log.
    let config = std::fs::read_to_string(sup.dir().join("etc/haproxy.cfg")).unwrap();
    // The supervisor holds the socket (bound to 127.0.0.1, as the kernel
    // said above); the stats section binds it by its descriptor.
    let held = std::fs::read_to_string(sup.dir().join("run/listeners")).unwrap_or_default();
    let fd = held
        .lines()
        .find_map(|l| l.strip_prefix("4444 "))
        .unwrap_or_else(|| panic!("4444 is not held: {held}"));
    assert!(
        config.contains(&format!("listen _stats from base\n    bind fd@{fd}\n")),
        "{config}"
    );
    assert!(
        config.contains("    stats auth admin:s3cret-pw\n"),
        "{config}"
    );
    let log = sup.log();
    assert!(
        !log.contains(password),
        "the password is in the log:\n{log}"
    );
    sup.stop();

    // A value that would change the config: exit 2 before anything starts,
    // and the error does not repeat it.
    let out = run_once(
        &["render", "--catalog-file", &catalog.display().to_string()],
        &[("HAPROXY_STATS_AUTH", "admin:pw\n    stats admin if TRUE")],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("HAPROXY_STATS_AUTH"), "{}", out.stderr);
    assert!(!out.stderr.contains("stats admin"), "{}", out.stderr);
    let out = run_once(
        &["render", "--catalog-file", &catalog.display().to_string()],
        &[("HAPROXY_STATS_BIND", "localhost")],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("HAPROXY_STATS_BIND"), "{}", out.stderr);
}

const ROOT_TOKEN: &str = "7e570000-0000-4000-8000-000000000001";

#[test]
fn a_consul_acl_denial_is_an_authorization_error_naming_the_token_source() {
    netns::enter();
    let hcl = format!(
        r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{ROOT_TOKEN}" agent = "{ROOT_TOKEN}" }} }}"#
    );
    let consul = Consul::start_with_args(&["-hcl", &hcl]);
    let www = Backend::start("www");
    // Registered with the management token (anonymous may not).
    let body = json!({
        "ID": "www-1", "Name": "www", "Address": "127.0.0.1", "Port": www.port(),
        "Tags": ["HAPROXY.ENABLE=true"]
    })
    .to_string();
    let req = format!(
        "PUT /v1/agent/service/register HTTP/1.1\r\nHost: consul\r\nX-Consul-Token: {ROOT_TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = http_raw("127.0.0.1:8500", req.as_bytes(), REQ);
    assert!(matches!(r, Ok((200, _))), "register: {r:?}");

    let addr = consul.addr();
    let spawn = |token: Option<&str>| {
        let mut envs = vec![
            ("HAPROXY_DOM", "example.com"),
            ("NO_COLOR", "1"),
            ("HAPROXY_LOG_FORMAT", "json"),
        ];
        if let Some(t) = token {
            envs.push(("CONSUL_HTTP_TOKEN", t));
        }
        Supervisor::spawn_run(&["--consul", &addr], &envs)
    };

    // A token Consul does not know: 403 on every query.
    let sup = spawn(Some(TOKEN));
    sup.wait_for_event(Event::ConsulDenied, T);
    let log = sup.log();
    let denied = sup.events(Event::ConsulDenied);
    let f = &denied[0]["fields"];
    assert!(
        f["status"] == 403
            && f["token_source"] == "token"
            // Consul's own answer
            && f["body"].as_str().is_some_and(|b| b.contains("ACL not found")),
        "{log}"
    );
    assert!(!sup.has_event(Event::ConsulError), "{log}");
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    sup.stop();

    // No token: Consul 1.8 hides everything from the anonymous token
    // (empty lists, not 403); reported as authorization, naming "no token".
    let sup = spawn(None);
    sup.wait_for_event(Event::ConsulDenied, T);
    let log = sup.log();
    let denied = sup.events(Event::ConsulDenied);
    assert!(
        denied[0]["fields"]["token_source"] == "none"
            && denied[0]["fields"]["reason"] == "empty_catalog",
        "{log}"
    );
    assert!(!sup.has_event(Event::ConsulError), "{log}");
    sup.stop();

    // The right token: served, no authorization complaint.
    let sup = spawn(Some(ROOT_TOKEN));
    wait_served("www.example.com", "/", "www", &sup, T);
    let log = sup.log();
    assert!(!sup.has_event(Event::ConsulDenied), "{log}");
    assert!(!log.contains(ROOT_TOKEN), "the token is in the log:\n{log}");
    assert_no_token_in_haproxy_env(&sup);
    sup.stop();
}

/// No serving HAProxy has a Consul token in its environment.
fn assert_no_token_in_haproxy_env(sup: &Supervisor) {
    let pids = serving_haproxies(sup);
    assert!(!pids.is_empty());
    for p in pids {
        assert!(
            !environ(p)
                .iter()
                .any(|v| v.starts_with("CONSUL_HTTP_TOKEN")),
            "haproxy {p} has CONSUL_HTTP_TOKEN"
        );
    }
}
