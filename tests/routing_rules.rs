//! Issue #9, items 6 and 7 (SPEC §12): routing that cannot be bypassed and
//! route ownership that does not move.
//!
//! - A Host that is not a host name (optionally with `:port`) gets 400 and
//!   never reaches a service; a trailing dot is the same host; `HAPROXY.PATH`
//!   matches the prefix and what continues it after a `/`, never `/apix`.
//! - A host (+ path) or a frontend port claimed by two services belongs to
//!   the one that has held it longest (earliest in the catalog file, lowest
//!   Consul `CreateIndex`), across supervisor restarts; the newcomer is left
//!   out with a warning naming both.
//!
//! Real haproxy, consul and demo backends; every test in its own network
//! namespace. Run as root: `cargo test --release --test routing_rules`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::*;

const FRONT: &str = "127.0.0.1:8080";
const T: Duration = Duration::from_secs(15);
const REQ: Duration = Duration::from_secs(2);

/// A catalog-file service `name` on `backend`, with `HAPROXY.ENABLE=true`
/// and `tags`.
fn file_service(name: &str, backend: &Backend, tags: &[&str]) -> Value {
    let mut all = vec!["HAPROXY.ENABLE=true".to_string()];
    all.extend(tags.iter().map(|t| t.to_string()));
    json!({"name": name, "instances": [{
        "id": format!("{name}-1"), "address": "127.0.0.1", "port": backend.port(), "tags": all
    }]})
}

fn write_catalog(path: &Path, services: &[Value]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&json!({ "services": services })).unwrap(),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn envs() -> [(&'static str, &'static str); 3] {
    [
        ("HAPROXY_DOM", "example.com"),
        ("NO_COLOR", "1"),
        ("HAPROXY_LOG_FORMAT", "json"),
    ]
}

/// Who holds what `service` claimed over `tag`: the `held_by` field of a
/// `warning` event leaving `service` out (None: no such warning yet).
fn held_by(sup: &Supervisor, service: &str, tag: &str) -> Option<String> {
    sup.events(Event::Warning).into_iter().find_map(|e| {
        let f = &e["fields"];
        (f["service"] == service && f["tag"] == tag && f["left_out"] == true)
            .then(|| f["held_by"].as_str().unwrap_or("(no held_by)").to_string())
    })
}

/// Waits until a warning leaves `service` out over `tag`; panics with the
/// log on timeout.
fn wait_left_out(sup: &Supervisor, service: &str, tag: &str) {
    wait_until(
        T,
        &format!("a warning leaving {service} out ({tag})"),
        || held_by(sup, service, tag).is_some(),
    );
}

/// `GET path` with the raw `host` header value (None: no Host header, as
/// HTTP/1.0 allows).
fn get_raw(host: Option<&str>, path: &str) -> (u16, String) {
    let req = match host {
        Some(h) => format!("GET {path} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"),
        None => format!("GET {path} HTTP/1.0\r\n\r\n"),
    };
    match http_raw(FRONT, req.as_bytes(), REQ) {
        Ok((status, body)) => (status, body.trim_end().to_string()),
        Err(e) => panic!("GET {path} with Host {host:?}: {e}"),
    }
}

#[test]
fn host_header_is_a_host_name_and_paths_match_whole_segments() {
    netns::enter();
    let www = Backend::start("www");
    let api = Backend::start("api");
    let v2 = Backend::start("v2");
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.json");
    write_catalog(
        &catalog,
        &[
            file_service("www", &www, &["HAPROXY.VHOST=www.example.com"]),
            file_service(
                "api",
                &api,
                &["HAPROXY.VHOST=www.example.com", "HAPROXY.PATH=/api"],
            ),
            // A tag path with a trailing slash is the same prefix.
            file_service(
                "v2",
                &v2,
                &["HAPROXY.VHOST=www.example.com", "HAPROXY.PATH=/v2/"],
            ),
        ],
    );
    let cat = catalog.display().to_string();
    let sup = Supervisor::spawn_run(&["--catalog-file", &cat], &envs());
    wait_served("www.example.com", "/api", "api", &sup, T);

    // Not a host name: 400, never a service. The first is the bypass: the
    // Host carried the path, and any request path reached `api`.
    for host in [
        "www.example.com/api",
        "www.example.com/api/",
        "www.example.com/",
        "www.example.com/v2",
        "www.example.com?/api",
        "www.example.com#/api",
        "www.example.com@www.example.com",
        "user@www.example.com",
        "a.example.com,www.example.com",
        "www.example.com:8080:80",
        "www.example.com:",
        "www.example.com:http",
        "www.example.com..",
        ".www.example.com",
        "www..example.com",
        "-www.example.com",
        "www_1.example.com",
        "www.example.com%2Fapi",
        "[::1]:8080",
        "",
    ] {
        for path in ["/", "/api", "/x", "/v2"] {
            let (status, body) = get_raw(Some(host), path);
            assert_eq!(
                status, 400,
                "Host {host:?} path {path:?} answered {status} {body:?}"
            );
            assert!(
                !["www", "api", "v2"].contains(&body.as_str()),
                "Host {host:?} reached a service: {body:?}"
            );
        }
    }

    // The same host, however it is written.
    for host in [
        "www.example.com.",
        "WWW.Example.COM",
        "www.example.com:8080",
        "www.example.com.:8080",
    ] {
        assert_eq!(
            get_raw(Some(host), "/"),
            (200, "www".into()),
            "Host {host:?}"
        );
        assert_eq!(
            get_raw(Some(host), "/api/x"),
            (200, "api".into()),
            "Host {host:?}"
        );
        assert_eq!(
            get_raw(Some(host), "/apix"),
            (200, "www".into()),
            "Host {host:?}"
        );
    }

    // Path prefixes match whole segments.
    for (path, by) in [
        ("/", "www"),
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/users?id=1", "api"),
        ("/api?x=1", "api"),
        ("/apix", "www"),
        ("/api-docs", "www"),
        ("/ap", "www"),
        ("/v2", "v2"),
        ("/v2/x", "v2"),
        ("/v2x", "www"),
    ] {
        assert_eq!(
            get_raw(Some("www.example.com"), path),
            (200, by.to_string()),
            "path {path:?}"
        );
    }

    // An unknown host and no Host at all: no route, 503 (as before).
    assert_eq!(get_raw(Some("other.example.com"), "/api").0, 503);
    assert_eq!(get_raw(None, "/api").0, 503);
    assert_eq!(get_raw(None, "/").0, 503);
}

#[test]
fn the_service_listed_first_in_the_catalog_file_keeps_its_host_and_port() {
    netns::enter();
    let old = Backend::start("zeta");
    let old_tcp = Backend::start("zeta-tcp");
    let new = Backend::start("alpha");
    let new_tcp = Backend::start("alpha-tcp");
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.json");
    let holders = [
        file_service("zeta", &old, &["HAPROXY.VHOST=shared.example.com"]),
        file_service(
            "zeta-tcp",
            &old_tcp,
            &["HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9100"],
        ),
    ];
    write_catalog(&catalog, &holders);
    let cat = catalog.display().to_string();
    let sup = Supervisor::spawn_run(&["--catalog-file", &cat], &envs());
    wait_served("shared.example.com", "/", "zeta", &sup, T);

    // Newcomers that sort first by name claim the same host and port.
    let mut all = holders.to_vec();
    all.push(file_service(
        "alpha",
        &new,
        &["HAPROXY.VHOST=shared.example.com,alpha.example.com"],
    ));
    all.push(file_service(
        "alpha-tcp",
        &new_tcp,
        &["HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9100"],
    ));
    write_catalog(&catalog, &all);
    wait_left_out(&sup, "alpha-tcp", "HAPROXY.FRONTEND.PORT");
    let check = |sup: &Supervisor| {
        let log = sup.log();
        assert_eq!(
            held_by(sup, "alpha", "HAPROXY.VHOST").as_deref(),
            Some("zeta"),
            "{log}"
        );
        assert_eq!(
            held_by(sup, "alpha-tcp", "HAPROXY.FRONTEND.PORT").as_deref(),
            Some("zeta-tcp"),
            "{log}"
        );
        assert_eq!(
            served_by("shared.example.com", "/").as_deref(),
            Some("zeta")
        );
        assert_eq!(
            http_get("127.0.0.1:9100", "x", "/", REQ).map(|(s, b)| (s, b.trim_end().to_string())),
            Ok((200, "zeta-tcp".to_string()))
        );
        // The newcomer is left out whole: its other host does not route.
        assert_eq!(
            http_get(FRONT, "alpha.example.com", "/", REQ).map(|r| r.0),
            Ok(503)
        );
    };
    check(&sup);

    // After a restart, the same owners.
    sup.stop();
    let sup = Supervisor::spawn_run(&["--catalog-file", &cat], &envs());
    wait_left_out(&sup, "alpha-tcp", "HAPROXY.FRONTEND.PORT");
    wait_served("shared.example.com", "/", "zeta", &sup, T);
    check(&sup);

    // Once the holder is gone, the newcomer gets the host.
    write_catalog(&catalog, &all[2..]);
    wait_served("shared.example.com", "/", "alpha", &sup, T);
}

/// An agent registration with a TTL check (passing unless told otherwise).
fn registration(id: &str, name: &str, port: u16, tags: &[&str]) -> Value {
    let mut all = vec!["HAPROXY.ENABLE=true"];
    all.extend_from_slice(tags);
    json!({
        "ID": id, "Name": name, "Address": "127.0.0.1", "Port": port, "Tags": all,
        "Check": {"CheckID": format!("{id}-ttl"), "TTL": "300s", "Status": "passing"}
    })
}

#[test]
fn the_earliest_consul_registration_keeps_its_host_across_restarts_and_failing_checks() {
    netns::enter();
    let consul = Consul::start();
    let old = Backend::start("zeta");
    let new = Backend::start("alpha");
    let new2 = Backend::start("alpha2");
    // zeta registers first.
    consul.register(&registration(
        "zeta-1",
        "zeta",
        old.port(),
        &["HAPROXY.VHOST=shared.example.com", "HAPROXY.PATH=/app"],
    ));
    let addr = consul.addr();
    let sup = Supervisor::spawn_run(&["--consul", &addr], &envs());
    wait_served("shared.example.com", "/app", "zeta", &sup, T);

    // alpha (first by name) registers later for the same host and path
    // (written differently: the same route).
    consul.register(&registration(
        "alpha-1",
        "alpha",
        new.port(),
        &["HAPROXY.VHOST=shared.example.com.", "HAPROXY.PATH=/app/"],
    ));
    // The warning leaves alpha out and names zeta as the holder.
    let warned = |sup: &Supervisor| {
        wait_left_out(sup, "alpha", "HAPROXY.VHOST");
        assert_eq!(
            held_by(sup, "alpha", "HAPROXY.VHOST").as_deref(),
            Some("zeta"),
            "{}",
            sup.log()
        );
    };
    warned(&sup);
    assert_eq!(
        served_by("shared.example.com", "/app").as_deref(),
        Some("zeta")
    );

    // A second alpha instance, registered later still, changes nothing.
    consul.register(&registration(
        "alpha-2",
        "alpha",
        new2.port(),
        &["HAPROXY.VHOST=shared.example.com.", "HAPROXY.PATH=/app/"],
    ));
    wait_until(T, "consul lists alpha-2", || {
        consul.passing("alpha").len() == 2
    });
    // Not a wait: the route must not move; 1.5 s gives a wrong change
    // (live or a reload) the time to show.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        served_by("shared.example.com", "/app").as_deref(),
        Some("zeta")
    );

    // A restarted supervisor agrees.
    sup.stop();
    let sup = Supervisor::spawn_run(&["--consul", &addr], &envs());
    warned(&sup);
    wait_served("shared.example.com", "/app", "zeta", &sup, T);

    // zeta's only instance fails its check: zeta keeps the route and
    // answers 503 (no server); the route never falls to alpha.
    consul.ttl_fail("zeta-1-ttl");
    wait_until(T, "zeta has no passing instance", || {
        consul.passing("zeta").is_empty()
    });
    wait_until(T, "zeta answers 503", || {
        matches!(
            http_get(FRONT, "shared.example.com", "/app", REQ),
            Ok((503, _))
        )
    });
    for _ in 0..20 {
        let r = http_get(FRONT, "shared.example.com", "/app", REQ);
        assert!(
            matches!(&r, Ok((503, b)) if !b.contains("alpha")),
            "the route moved while its holder was failing: {r:?}; log:\n{}",
            sup.log()
        );
        // Pacing: 20 probes over a second, each asserting the route held.
        std::thread::sleep(Duration::from_millis(50));
    }
    // And a restart while it fails does not hand the route over either.
    sup.stop();
    let sup = Supervisor::spawn_run(&["--consul", &addr], &envs());
    warned(&sup);
    wait_until(T, "zeta answers 503 after the restart", || {
        matches!(
            http_get(FRONT, "shared.example.com", "/app", REQ),
            Ok((503, _))
        )
    });

    consul.ttl_pass("zeta-1-ttl");
    wait_served("shared.example.com", "/app", "zeta", &sup, T);

    // Deregistered, the holder leaves the route to the newcomer.
    consul.deregister("zeta-1");
    wait_until(T, "alpha takes the route", || {
        matches!(
            served_by("shared.example.com", "/app").as_deref(),
            Some("alpha" | "alpha2")
        )
    });
}
