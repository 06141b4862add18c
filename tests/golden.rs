//! Golden files of the built-in template (issue #2): fixed catalogs rendered
//! with fixed paths (`/etc/haproxy/haproxy.cfg`, the admin socket in
//! `/run/haproxy-supervisor`, default variables, `HAPROXY_DOM=example.com`)
//! compared byte for byte with `tests/golden/<case>.cfg` and its maps
//! (`<case>.hosts.map`, `<case>.paths.map`). `UPDATE_GOLDEN=1` rewrites
//! them. Each config is also rendered into a temporary directory and put
//! through `haproxy -c` there (run as root: each test enters its own network
//! namespace). Run: `cargo test --test golden`.

use std::path::{Path, PathBuf};

use haproxy_supervisor::files;
use haproxy_supervisor::model::HaproxyVars;
use haproxy_supervisor::model::{Catalog, Context, Desired};
use haproxy_supervisor::render::{Rendered, Renderer};

const CONFIG: &str = "/etc/haproxy/haproxy.cfg";
const SOCKET: &str = "/run/haproxy-supervisor/admin.sock";

fn vars() -> HaproxyVars {
    HaproxyVars {
        dom: Some("example.com".into()),
        ..HaproxyVars::default()
    }
}

fn render_at(catalog: &str, vars: &HaproxyVars, config: &Path, socket: &Path) -> Rendered {
    let catalog = Catalog::parse_file(catalog).expect("fixture catalog parses");
    let (desired, warnings) = Desired::build(&catalog, &Context::from(vars));
    assert!(
        warnings.is_empty(),
        "fixture catalogs are valid: {warnings:?}"
    );
    Renderer::new(None, config, socket)
        .unwrap()
        .render(&desired, vars)
        .unwrap()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Compares `actual` with the golden file `name` (None: the file must not
/// exist), or rewrites it under UPDATE_GOLDEN=1.
fn compare(name: &str, actual: Option<&str>) {
    let path = golden_dir().join(name);
    if updating() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        match actual {
            Some(text) => std::fs::write(&path, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        eprintln!("UPDATE_GOLDEN=1: wrote {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).ok();
    match (expected.as_deref(), actual) {
        (None, None) => {}
        (Some(e), Some(a)) if e == a => {}
        (None, Some(a)) => panic!(
            "golden file {} is missing; run with UPDATE_GOLDEN=1 to create it. Rendered:\n{a}",
            path.display()
        ),
        (Some(_), None) => panic!(
            "golden file {} exists but nothing of the kind was rendered",
            path.display()
        ),
        (Some(e), Some(a)) => {
            let first = e
                .lines()
                .zip(a.lines())
                .position(|(x, y)| x != y)
                .unwrap_or_else(|| e.lines().count().min(a.lines().count()));
            panic!(
                "{} differs from the rendering at line {}:\n  golden:   {:?}\n  rendered: {:?}\n\
                 (run with UPDATE_GOLDEN=1 if the change is intended)\nrendered:\n{a}",
                path.display(),
                first + 1,
                e.lines().nth(first),
                a.lines().nth(first)
            )
        }
    }
}

/// The map of `kind` in a rendering: (file name, content).
fn map_of<'a>(r: &'a Rendered, kind: &str) -> Option<(&'a str, &'a str)> {
    let mut found = r
        .maps
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{kind}-")) && k.ends_with(".map"));
    let m = found.next().map(|(k, v)| (k.as_str(), v.as_str()));
    assert!(found.next().is_none(), "two {kind} maps");
    m
}

fn golden(case: &str, catalog: &str) {
    golden_with(case, catalog, &vars());
}

fn golden_with(case: &str, catalog: &str, vars: &HaproxyVars) {
    let r = render_at(catalog, vars, Path::new(CONFIG), Path::new(SOCKET));
    assert!(
        r.maps
            .keys()
            .all(|k| k.starts_with("hosts-") || k.starts_with("paths-")),
        "{:?}",
        r.maps.keys()
    );
    // The config names its maps beside it.
    for name in r.maps.keys() {
        assert!(
            r.config.contains(&format!("/etc/haproxy/maps/{name})")),
            "config does not name {name}:\n{}",
            r.config
        );
    }
    compare(&format!("{case}.cfg"), Some(&r.config));
    compare(
        &format!("{case}.hosts.map"),
        Some(map_of(&r, "hosts").expect("a hosts map, even empty").1),
    );
    compare(
        &format!("{case}.paths.map"),
        map_of(&r, "paths").map(|m| m.1),
    );

    // Rendering is deterministic.
    assert_eq!(
        render_at(catalog, vars, Path::new(CONFIG), Path::new(SOCKET)),
        r
    );

    // The same config, rendered for a temporary directory, passes
    // `haproxy -c` with its maps in place.
    testkit::netns::enter();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let sock = dir.path().join("admin.sock");
    let here = render_at(catalog, vars, &cfg, &sock);
    let maps_dir = format!("{}/maps/", dir.path().display());
    assert_eq!(
        here.config
            .replace(&maps_dir, "/etc/haproxy/maps/")
            .replace(&sock.display().to_string(), SOCKET)
            .replace(
                &sock.with_file_name("server-state").display().to_string(),
                &Path::new(SOCKET)
                    .with_file_name("server-state")
                    .display()
                    .to_string()
            ),
        r.config,
        "only the paths differ"
    );
    assert_eq!(here.maps, r.maps);
    files::stage(&cfg, &here).unwrap().commit(&here).unwrap();
    let (valid, msg) = testkit::haproxy_check(&cfg);
    assert!(
        valid,
        "haproxy -c rejected the {case} config: {msg}\n{}",
        here.config
    );
}

/// Two HTTP services with the seed's tags, one with a health check and
/// sticky sessions; names derive the host names from HAPROXY_DOM.
const HTTP_ONLY: &str = r#"{"services":[
  {"name":"www","instances":[
    {"id":"www-2","address":"10.0.0.2","port":8080,"tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=http","HAPROXY.BACKEND.BALANCE=roundrobin","HAPROXY.BACKEND.MAXCONN=10000"]},
    {"id":"www-1","address":"10.0.0.1","port":8080,"tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=http","HAPROXY.BACKEND.BALANCE=roundrobin","HAPROXY.BACKEND.MAXCONN=10000"]}]},
  {"name":"shop","instances":[
    {"id":"shop-1","address":"10.0.1.1","port":3000,"weight":5,"tags":["HAPROXY.ENABLE=true","HAPROXY.BACKEND.BALANCE=leastconn","HAPROXY.BACKEND.HEALTHCHECK=/health","HAPROXY.BACKEND.STICKY=true"]},
    {"id":"shop-2","address":"fd00::2","port":3000,"tags":["HAPROXY.ENABLE=true","HAPROXY.BACKEND.BALANCE=leastconn","HAPROXY.BACKEND.HEALTHCHECK=/health","HAPROXY.BACKEND.STICKY=true"]}]}
]}"#;

/// TCP services with dedicated frontends (one sticky by source address).
const TCP: &str = r#"{"services":[
  {"name":"postgres","instances":[
    {"id":"pg-1","address":"10.0.2.1","port":5432,"tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=tcp","HAPROXY.FRONTEND.PORT=15432","HAPROXY.BACKEND.BALANCE=first","HAPROXY.BACKEND.MAXCONN=100"]},
    {"id":"pg-2","address":"10.0.2.2","port":5432,"tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=tcp","HAPROXY.FRONTEND.PORT=15432","HAPROXY.BACKEND.BALANCE=first","HAPROXY.BACKEND.MAXCONN=100"]}]},
  {"name":"redis","instances":[
    {"id":"redis-1","address":"10.0.3.1","port":6379,"tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=tcp","HAPROXY.FRONTEND.PORT=16379","HAPROXY.BACKEND.BALANCE=source","HAPROXY.BACKEND.STICKY=true"]}]}
]}"#;

/// Host names and path prefixes: several hosts for one service, paths on a
/// shared host (the longest prefix first), a path on the default host.
const VHOST_AND_PATH: &str = r#"{"services":[
  {"name":"site","instances":[
    {"id":"site-1","address":"10.0.4.1","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=example.org,WWW.example.org"]}]},
  {"name":"api-v1","instances":[
    {"id":"api-v1-1","address":"10.0.5.1","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=api.example.org","HAPROXY.PATH=/v1"]}]},
  {"name":"api-v2","instances":[
    {"id":"api-v2-1","address":"10.0.6.1","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=api.example.org","HAPROXY.PATH=/v2"]}]},
  {"name":"api-v2-admin","instances":[
    {"id":"api-v2-admin-1","address":"10.0.7.1","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=api.example.org","HAPROXY.PATH=/v2/admin"]}]},
  {"name":"docs","instances":[
    {"id":"docs-1","address":"docs.internal","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.PATH=/docs"]}]}
]}"#;

/// Services without a passing instance keep their backend and route: one
/// whose instances all fail, one with no instance at all.
const EMPTY_BACKENDS: &str = r#"{"services":[
  {"name":"down","instances":[
    {"id":"down-1","address":"10.0.8.1","port":80,"passing":false,"tags":["HAPROXY.ENABLE=true","HAPROXY.BACKEND.MAXCONN=50"]},
    {"id":"down-2","address":"10.0.8.2","port":80,"passing":false,"tags":["HAPROXY.ENABLE=true","HAPROXY.BACKEND.MAXCONN=50"]}]},
  {"name":"idle","tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=tcp","HAPROXY.FRONTEND.PORT=9100"],"instances":[]},
  {"name":"up","instances":[
    {"id":"up-1","address":"10.0.9.1","port":80,"tags":["HAPROXY.ENABLE=true"]}]}
]}"#;

/// Nothing exposed: the template's own sections and an empty hosts map.
const NO_SERVICES: &str = r#"{"services":[
  {"name":"internal","instances":[{"id":"internal-1","address":"10.0.10.1","port":80,"tags":["team=core"]}]}
]}"#;

/// HTTP services, TCP services and an HTTP service on a port of its own.
const MIXED: &str = r#"{"services":[
  {"name":"www","instances":[
    {"id":"www-1","address":"10.0.0.1","port":8080,"tags":["HAPROXY.ENABLE=true"]}]},
  {"name":"admin","instances":[
    {"id":"admin-1","address":"10.0.0.3","port":8080,"tags":["HAPROXY.ENABLE=true","HAPROXY.FRONTEND.PORT=9090"]}]},
  {"name":"postgres","instances":[
    {"id":"pg-1","address":"10.0.2.1","port":5432,"tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=tcp","HAPROXY.FRONTEND.PORT=15432"]}]}
]}"#;

/// The JSON access log format (`HAPROXY_LOG_FORMAT=json`): a `log-format`
/// per frontend, the http one on HTTP frontends (also `_stats`, also a
/// dedicated HTTP port), the tcp one on TCP frontends, and HAProxy's
/// syslog priority on stdout.
#[test]
fn golden_json_logs() {
    let json = HaproxyVars {
        log_json: true,
        log_target: "stdout format priority".into(),
        ..vars()
    };
    golden_with("json_logs", MIXED, &json);
    let text = std::fs::read_to_string(golden_dir().join("json_logs.cfg")).unwrap();
    let formats: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("log-format "))
        .collect();
    assert_eq!(formats.len(), 4, "{text}");
    assert!(!text.contains("option httplog") && !text.contains("option tcplog"));
    for f in &formats {
        // One single-quoted word: a JSON object once HAProxy fills it in.
        assert!(
            f.starts_with("'{\"source\":\"haproxy\",") && f.ends_with("}'"),
            "{f}"
        );
        assert!(!f[1..f.len() - 1].contains('\''), "{f}");
    }
    assert_eq!(formats[0], formats[1], "app_http_in and _stats");
    assert_eq!(formats[0], formats[2], "an HTTP service on its own port");
    assert!(
        formats[3].contains("\"event\":\"tcp_session\""),
        "{}",
        formats[3]
    );
    // The same catalog in text mode: HAProxy's own formats.
    let plain = render_at(MIXED, &vars(), Path::new(CONFIG), Path::new(SOCKET)).config;
    assert!(!plain.contains("log-format"), "{plain}");
    assert!(plain.contains("log stdout format raw local0"), "{plain}");
}

#[test]
fn golden_http_only() {
    golden("http_only", HTTP_ONLY);
}

#[test]
fn golden_tcp() {
    golden("tcp", TCP);
}

#[test]
fn golden_vhost_and_path() {
    golden("vhost_and_path", VHOST_AND_PATH);
}

#[test]
fn golden_empty_backends() {
    golden("empty_backends", EMPTY_BACKENDS);
}

#[test]
fn golden_no_services() {
    golden("no_services", NO_SERVICES);
}
