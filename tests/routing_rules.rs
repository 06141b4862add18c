//! Issue #9, item 6 (SPEC §12): routing that cannot be bypassed.
//!
//! - A Host that is not a host name (optionally with `:port`) gets 400 and
//!   never reaches a service; a trailing dot is the same host; `HAPROXY.PATH`
//!   matches the prefix and what continues it after a `/`, never `/apix`.
//!
//! Real haproxy and demo backends; every test in its own network
//! namespace. Run as root: `cargo test --release --test routing_rules`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

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

fn run_args<'a>(source: &'a [&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run"];
    a.extend_from_slice(source);
    a.extend(["--config-file", "etc/haproxy.cfg", "--run-dir", "run"]);
    a
}

fn envs() -> [(&'static str, &'static str); 2] {
    [("HAPROXY_DOM", "example.com"), ("NO_COLOR", "1")]
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

fn served_by(host: &str, path: &str) -> Option<String> {
    match http_get(FRONT, host, path, REQ) {
        Ok((200, b)) => Some(b.trim_end().to_string()),
        _ => None,
    }
}

fn wait_served(host: &str, path: &str, by: &str, sup: &Supervisor) {
    if !poll_until(T, || served_by(host, path).as_deref() == Some(by)) {
        panic!(
            "{host}{path} not served by {by} within {T:?} (last: {:?}); log:\n{}",
            http_get(FRONT, host, path, REQ),
            sup.log()
        );
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
    let sup = Supervisor::spawn(&run_args(&["--catalog-file", &cat]), &envs());
    wait_served("www.example.com", "/api", "api", &sup);

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
