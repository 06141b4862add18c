//! Issue #2: hostile and malformed input from the catalog never reaches the
//! config. Each hostile service is left out with a warning naming it and the
//! tag at fault, the config still passes `haproxy -c`, no injected text
//! appears in it or its maps, and the valid services beside it render.
//!
//! Most cases go through one catalog file (`render` and `check`); a set that
//! Consul 1.8 accepts through its agent API is registered there and served
//! by `run`. Run as root: `cargo test --test hostile`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::*;

const T: Duration = Duration::from_secs(15);

/// Every injection carries this marker (or the address 6.6.6.6), so "never
/// rendered" is one search of the config and the maps.
const MARK: &str = "evil";
const MARK_ADDR: &str = "6.6.6.6";

/// One hostile service: a valid instance with one thing wrong.
#[derive(Debug, Clone)]
struct Case {
    service: String,
    id: String,
    address: String,
    port: i64,
    tags: Vec<String>,
    /// The tag or field the warning must name.
    tag: &'static str,
}

impl Case {
    /// A valid http service `hNN` with a single instance.
    fn new(n: usize, tag: &'static str) -> Case {
        let service = format!("h{n:02}");
        Case {
            id: format!("{service}-1"),
            service,
            address: format!("10.9.0.{}", n % 250 + 1),
            port: 8000 + n as i64,
            tags: vec!["HAPROXY.ENABLE=true".into(), "HAPROXY.PROTOCOL=http".into()],
            tag,
        }
    }

    fn with_tag(mut self, tag: impl Into<String>) -> Case {
        let tag = tag.into();
        // Replace a tag with the same key (e.g. PROTOCOL).
        if let Some((key, _)) = tag.split_once('=') {
            self.tags.retain(|t| !t.starts_with(&format!("{key}=")));
        }
        self.tags.push(tag);
        self
    }

    fn file_json(&self) -> Value {
        json!({
            "name": self.service,
            "instances": [{
                "id": self.id,
                "address": self.address,
                "port": self.port,
                "tags": self.tags,
                "weight": 1,
                "passing": true
            }]
        })
    }
}

/// The hostile cases fed through a catalog file.
fn file_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut n = 0;
    let mut next = |tag: &'static str| {
        n += 1;
        Case::new(n, tag)
    };

    // Service names.
    for name in [
        "bad name evil".to_string(),
        "bad\nbackend evil".into(),
        "bad\n    server evil 6.6.6.6:80".into(),
        "bad#evil".into(),
        "bad\"evil".into(),
        "bad'evil".into(),
        "a".repeat(200),
        "sérvice-evil".into(),
        "サービス".into(),
        "_no_route".into(),
        "-evil".into(),
        "evil\0nul".into(),
        "evil\u{202e}rtl".into(),
        "evil\r\nx".into(),
        "evil\tx".into(),
        String::new(),
    ] {
        let mut c = next("service name");
        c.service = name;
        cases.push(c);
    }
    // Instance ids (server names).
    for id in [
        "id with space evil".to_string(),
        "id\n    server evil 6.6.6.6:80".into(),
        "id#evil".into(),
        "i".repeat(300),
        "ïd-evil".into(),
        "-evil".into(),
        String::new(),
    ] {
        let mut c = next("instance id");
        c.id = id;
        cases.push(c);
    }
    // Addresses and ports.
    for address in [
        "10.0.0.1 backup evil".to_string(),
        "10.0.0.1\n    server evil 6.6.6.6:80".into(),
        "10.0.0.1#evil".into(),
        "ünï-evil.example".into(),
        "e".repeat(300),
        String::new(),
        "10.0.0.1:8080".into(),
        "[::1]".into(),
        "evil_host.example".into(),
    ] {
        let mut c = next("instance address");
        c.address = address;
        cases.push(c);
    }
    for port in [0, -1, 65536, 99_999_999_999] {
        let mut c = next("instance address");
        c.port = port;
        cases.push(c);
    }
    // Tag values.
    let bad_values: &[(&'static str, &[&str])] = &[
        (
            "HAPROXY.BACKEND.MAXCONN",
            &[
                "0",
                "-1",
                "1e3",
                "10 0",
                "99999999999",
                "1000001",
                " 100",
                "0100",
                "+100",
                "100\n    server evil 6.6.6.6:80",
                "",
            ],
        ),
        (
            "HAPROXY.BACKEND.BALANCE",
            &[
                "weighted-evil",
                "roundrobin\n    option evil",
                "ROUNDROBIN",
                "uri whole evil",
                "hdr(evil)",
            ],
        ),
        ("HAPROXY.PROTOCOL", &["udp", "http\n    mode evil", "HTTP"]),
        (
            "HAPROXY.VHOST",
            &[
                "a.example.com\n    use_backend evil",
                "evil host.example.com",
                "evil.example.com#x",
                "ünï-evil.example.com",
                "",
                "evil..example.com",
                "-evil.example.com",
                "evil.example.com,\n",
                "${HOME}.evil.com",
                "evil.example.com:8080",
                "evil\u{0}.example.com",
            ],
        ),
        (
            "HAPROXY.PATH",
            &[
                "v1-evil",
                "/v1 /evil",
                "/v1\n    http-request deny evil",
                "/v1#evil",
                "/\"evil\"",
                "/%[req.hdr(evil)]",
                "/evil\\x",
                "/évil",
                "/evil'",
            ],
        ),
        (
            "HAPROXY.BACKEND.HEALTHCHECK",
            &[
                "/health HTTP/1.1\r\nHost: evil",
                "health-evil",
                "/health evil",
            ],
        ),
        (
            "HAPROXY.BACKEND.STICKY",
            &["yes-evil", "true\n    cookie evil"],
        ),
        (
            "HAPROXY.BACKEND.PROTO",
            &[
                "h2",
                "grpc",
                "h2c ssl verify none",
                "h2c\n    server evil 6.6.6.6:80",
                // TLS verified, and no HAPROXY_BACKEND_CA_FILE here.
                "h2-tls",
            ],
        ),
        (
            "HAPROXY.BACKEND.TLS_VERIFY",
            &[
                "optional",
                "none\n    server evil 6.6.6.6:80",
                "none ca-file /etc/passwd",
            ],
        ),
        (
            "HAPROXY.BACKEND.TLS_NAME",
            &[
                "evil name",
                "x.com)\n    server evil 6.6.6.6:80",
                "x.com) verify none",
            ],
        ),
        (
            "HAPROXY.BACKEND.PROXY_PROTOCOL",
            &["v3", "v1 evil", "v2\n    server evil 6.6.6.6:80"],
        ),
    ];
    for (key, values) in bad_values {
        for v in *values {
            cases.push(next(key).with_tag(format!("{key}={v}")));
        }
    }
    // Rule tags (issue 21): every value not exactly of its form.
    let bad_hash = "g".repeat(64);
    let rule_values: Vec<(&'static str, Vec<String>)> = vec![
        (
            "HAPROXY.PATH.STRIP",
            vec!["yes-evil".into(), "true\n    http-request deny evil".into()],
        ),
        (
            "HAPROXY.PATH.PREFIX",
            vec![
                "evil".into(),
                "/v1 evil".into(),
                "/v1\n    http-request deny evil".into(),
                "/evil/".into(),
                "/%[req.hdr(evil)]".into(),
                "/evil\"x".into(),
            ],
        ),
        (
            "HAPROXY.BACKEND.HOST",
            vec![
                "evil host.example.com".into(),
                "evil.example.com\n    use_backend x".into(),
                "evil.example.com:99999".into(),
                "%[req.hdr(evil)]".into(),
            ],
        ),
        (
            "HAPROXY.BACKEND.TIMEOUT",
            vec![
                "10 evil".into(),
                "evil".into(),
                "1s\n    timeout server evil".into(),
                "25h".into(),
            ],
        ),
        (
            "HAPROXY.REDIRECT",
            vec![
                "301,https://evil.example.com/a b".into(),
                "301,javascript:evil".into(),
                "302,https://evil.example.com/?x=1".into(),
                "301 https://evil.example.com".into(),
                "301,https://evil.example.com/\"".into(),
                "301,https://user@evil.example.com".into(),
                "303,https://evil.example.com".into(),
                "301,https://evil.example.com\n    http-request deny".into(),
            ],
        ),
        (
            "HAPROXY.ALLOW",
            vec![
                "10.0.0.0/8,evil".into(),
                "10.0.0.1/8".into(),
                "10.0.0.0/8\n    http-request deny evil".into(),
                "".into(),
            ],
        ),
        ("HAPROXY.DENY", vec!["evil".into(), "10.0.0.0/33".into()]),
        (
            "HAPROXY.AUTH",
            vec![
                "evil:clear-text-password".into(),
                format!("evil:saltsalt:{bad_hash}"),
                format!("evil:short:{}", "a".repeat(64)),
                format!("evil:saltsalt:{}\n    http-request deny", "a".repeat(64)),
            ],
        ),
        (
            "HAPROXY.RATE_LIMIT",
            vec!["evil".into(), "0".into(), "10\n    evil".into()],
        ),
        ("HAPROXY.COMPRESS", vec!["yes-evil".into()]),
        (
            "HAPROXY.ROUTE.WEIGHT",
            vec![
                "101".into(),
                "evil".into(),
                "-1".into(),
                "50\n    evil".into(),
            ],
        ),
        ("HAPROXY.ROUTE.STICKY", vec!["yes-evil".into()]),
        (
            "HAPROXY.REQUEST.HEADER.X-Team",
            vec![
                "two evil".into(),
                "\"evil\"".into(),
                "evil\n    http-request deny".into(),
                "evil#x".into(),
            ],
        ),
        (
            "HAPROXY.RESPONSE.HEADER.X-Team",
            vec!["two evil".into(), "evil\\x".into()],
        ),
        (
            "HAPROXY.REQUEST.HEADER.Host",
            vec!["evil.example.com".into()],
        ),
        (
            "HAPROXY.REQUEST.HEADER.X-Forwarded-For",
            vec!["6.6.6.6".into()],
        ),
        ("HAPROXY.RESPONSE.HEADER.x_evil", vec!["1".into()]),
    ];
    for (key, values) in &rule_values {
        for v in values {
            cases.push(next(key).with_tag(format!("{key}={v}")));
        }
    }
    // Rules on a TCP service, and beside a frontend port of its own.
    cases.push(
        next("HAPROXY.RATE_LIMIT")
            .with_tag("HAPROXY.PROTOCOL=tcp")
            .with_tag("HAPROXY.FRONTEND.PORT=9100")
            .with_tag("HAPROXY.RATE_LIMIT=5"),
    );
    cases.push(
        next("HAPROXY.FRONTEND.PORT")
            .with_tag("HAPROXY.FRONTEND.PORT=9101")
            .with_tag("HAPROXY.ALLOW=10.0.0.0/8"),
    );
    // Overlong path (no marker: over 256 characters of a valid alphabet).
    cases.push(next("HAPROXY.PATH").with_tag(format!("HAPROXY.PATH=/{}", "p".repeat(300))));
    // Overlong host name label.
    cases.push(
        next("HAPROXY.VHOST").with_tag(format!("HAPROXY.VHOST={}.example.com", "v".repeat(64))),
    );
    // Frontend ports, for tcp services.
    for port in [
        "0",
        "65536",
        "80a",
        "8080",
        "4444",
        "9000\n    bind *:6666 evil",
    ] {
        cases.push(
            next("HAPROXY.FRONTEND.PORT")
                .with_tag("HAPROXY.PROTOCOL=tcp")
                .with_tag(format!("HAPROXY.FRONTEND.PORT={port}")),
        );
    }
    // HAPROXY.TLS: values that are not terminate or passthrough, and
    // passthrough without HAPROXY_CERTS_DIR (no HTTPS port to serve it on).
    for v in [
        "PASSTHROUGH",
        "passthrough ",
        "",
        "passthrough\n    bind *:6666 evil",
        "passthrough",
    ] {
        cases.push(next("HAPROXY.TLS").with_tag(format!("HAPROXY.TLS={v}")));
    }
    // tcp without a frontend port.
    cases.push(next("HAPROXY.FRONTEND.PORT").with_tag("HAPROXY.PROTOCOL=tcp"));
    // A port taken by the valid tcp service (listed or registered first).
    let mut c = next("HAPROXY.FRONTEND.PORT")
        .with_tag("HAPROXY.PROTOCOL=tcp")
        .with_tag("HAPROXY.FRONTEND.PORT=9000");
    c.service = "zz-port-taken".into();
    cases.push(c);
    // A route taken by the valid http service.
    let mut c = next("HAPROXY.VHOST").with_tag("HAPROXY.VHOST=good.example.com");
    c.service = "zz-route-taken".into();
    cases.push(c);
    // A valid service name that is no host name, and no VHOST: the default
    // `<service>.<HAPROXY_DOM>` is invalid.
    let mut c = next("HAPROXY.VHOST");
    c.service = "under_score".into();
    cases.push(c);
    cases
}

/// Valid services that must render beside the hostile ones.
fn good_services() -> Vec<Value> {
    vec![
        json!({"name": "good", "instances": [{
            "id": "good-1", "address": "10.0.0.1", "port": 80,
            "tags": ["HAPROXY.ENABLE=true", "HAPROXY.PROTOCOL=http",
                     "HAPROXY.BACKEND.BALANCE=leastconn", "HAPROXY.BACKEND.MAXCONN=100",
                     "HAPROXY.VHOST=good.example.com"]}]}),
        // Every kind of rule, valid (issue 21).
        json!({"name": "good-rules", "instances": [{
            "id": "good-rules-1", "address": "10.0.0.6", "port": 80,
            "tags": ["HAPROXY.ENABLE=true", "HAPROXY.VHOST=rules.example.com",
                     "HAPROXY.PATH=/api/v1", "HAPROXY.PATH.STRIP=true", "HAPROXY.PATH.PREFIX=/x",
                     "HAPROXY.BACKEND.HOST=inner.example.com:81", "HAPROXY.BACKEND.TIMEOUT=5s",
                     "HAPROXY.REDIRECT=308,https://other.example.com/p",
                     "HAPROXY.ALLOW=10.0.0.0/8,::1", "HAPROXY.DENY=10.1.0.0/16",
                     format!("HAPROXY.AUTH=alice:saltsalt:{}", "0".repeat(64)),
                     "HAPROXY.RATE_LIMIT=100", "HAPROXY.REQUEST.HEADER.X-Team=blue",
                     "HAPROXY.RESPONSE.HEADER.Access-Control-Allow-Origin=*",
                     "HAPROXY.COMPRESS=true"]}]}),
        json!({"name": "good-tcp", "instances": [{
            "id": "good-tcp-1", "address": "10.0.0.2", "port": 5432,
            "tags": ["HAPROXY.ENABLE=true", "HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=9000"]}]}),
        // Warned about, but rendered: an unknown tag (a typo) is ignored ...
        json!({"name": "typo", "instances": [{
            "id": "typo-1", "address": "10.0.0.3", "port": 80,
            "tags": ["HAPROXY.ENABLE=true", "HAPROXY.BACKEND.MAXCON=10"]}]}),
        // ... even one that tries to forge a log line ...
        json!({"name": "typo2", "instances": [{
            "id": "typo2-1", "address": "10.0.0.4", "port": 80,
            "tags": ["HAPROXY.ENABLE=true",
                     "HAPROXY.X\n2099-01-01T00:00:00.000000Z  INFO forged log line=1"]}]}),
        // ... and an overlarge weight is capped.
        json!({"name": "heavy", "instances": [{
            "id": "heavy-1", "address": "10.0.0.5", "port": 80, "weight": 100000,
            "tags": ["HAPROXY.ENABLE=true"]}]}),
    ]
}

/// The rendered config and every map file beside it, as (name, text).
fn rendered_files(cfg: &Path) -> Vec<(String, String)> {
    let mut files = vec![(
        cfg.display().to_string(),
        std::fs::read_to_string(cfg).expect("read config"),
    )];
    for e in std::fs::read_dir(cfg.parent().unwrap().join("maps"))
        .expect("maps dir")
        .flatten()
    {
        files.push((
            e.path().display().to_string(),
            std::fs::read_to_string(e.path()).unwrap(),
        ));
    }
    files
}

/// Nothing hostile in any rendered file: no marker, only printable ASCII.
fn assert_clean(files: &[(String, String)]) {
    for (name, text) in files {
        let lower = text.to_lowercase();
        assert!(
            !lower.contains(MARK) && !text.contains(MARK_ADDR),
            "{name} contains injected text:\n{text}"
        );
        for line in text.lines() {
            assert!(
                line.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
                "{name}: line {line:?} has a character outside printable ASCII"
            );
        }
    }
}

fn backends(config: &str) -> Vec<&str> {
    config
        .lines()
        .filter_map(|l| l.strip_prefix("backend "))
        .filter_map(|l| l.split([' ', ':']).next())
        .collect()
}

/// The `warning` events of a JSON log, their fields.
fn warnings(log: &str) -> Vec<Value> {
    events_in(log, Event::Warning)
}

/// The warning for `service` (its name as logged: escaped) whose tag
/// starts with `tag`.
fn warning_for<'a>(warnings: &'a [Value], service: &str, tag: &str) -> Option<&'a Value> {
    let service = service.escape_debug().to_string();
    warnings.iter().find(|w| {
        w["service"] == service.as_str() && w["tag"].as_str().is_some_and(|t| t.starts_with(tag))
    })
}

/// Asserts the JSON `log` has, for each case, a warning naming its service
/// and tag that leaves it out.
fn assert_warned_fields(log: &str, cases: &[Case]) {
    let ws = warnings(log);
    for c in cases {
        assert!(
            warning_for(&ws, &c.service, c.tag).is_some_and(|w| w["left_out"] == true),
            "no warning leaving out {c:?}; log:\n{log}"
        );
    }
}

/// No log line was forged by the hostile tag of `typo2`, and the JSON `log`
/// warns about that tag, escaped, keeping the service.
fn assert_no_forged_line(log: &str) {
    assert!(
        !log.lines().any(|l| l.starts_with("2099-01-01")),
        "a tag forged a log line:\n{log}"
    );
    assert!(
        warning_for(&warnings(log), "typo2", r"HAPROXY.X\n2099-01-01")
            .is_some_and(|w| w["left_out"] == false),
        "the unknown tag is not reported (escaped):\n{log}"
    );
}

#[test]
fn hostile_catalog_file_entries_are_left_out_with_warnings() {
    netns::enter();
    let cases = file_cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    // The valid services come first in the file: they hold their routes
    // and ports against the later `zz-*-taken` claims (SPEC §12).
    let mut services: Vec<Value> = good_services();
    services.extend(cases.iter().map(Case::file_json));
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.json");
    std::fs::write(
        &catalog,
        serde_json::to_vec_pretty(&json!({ "services": services })).unwrap(),
    )
    .unwrap();
    let cfg = dir.path().join("etc/haproxy.cfg");
    let args = |cmd: &'static str| -> Vec<String> {
        vec![
            cmd.into(),
            "--catalog-file".into(),
            catalog.display().to_string(),
            "--config-file".into(),
            cfg.display().to_string(),
            "--run-dir".into(),
            dir.path().join("run").display().to_string(),
        ]
    };
    let envs = [("HAPROXY_DOM", "example.com")];

    let a = args("render");
    let out = run_once(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &envs,
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "render: {}", out.stderr);
    let config = out.stdout;
    std::fs::write(&cfg, &config).unwrap();

    // Only the valid services are rendered, and they are rendered fully.
    assert_eq!(
        backends(&config),
        [
            "_no_route",
            "good",
            "good-rules",
            "good-tcp",
            "heavy",
            "typo",
            "typo2"
        ],
        "config:\n{config}"
    );
    let good = backend_lines(&config, "good");
    let good_be = backend_name(&config, "good").unwrap();
    assert!(
        good.contains(&"    balance leastconn".to_string()),
        "{good:?}"
    );
    assert!(
        good.contains(&"    server good-1 10.0.0.1:80 check weight 1 maxconn 100".to_string()),
        "{good:?}"
    );
    assert!(config.contains("\nfrontend good-tcp_port_9000 from base\n    bind *:9000\n"));
    assert!(config.contains("    server heavy-1 10.0.0.5:80 check weight 256\n"));
    assert_eq!(
        current_map(&cfg, "hosts").as_deref(),
        Some(&*format!("good.example.com {good_be}\nheavy.example.com heavy\ntypo.example.com typo\ntypo2.example.com typo2\n"))
    );
    assert!(config_map_path(&config, "paths").is_none(), "{config}");
    assert_clean(&rendered_files(&cfg));

    // No log line forged in the text log.
    assert!(
        !out.stderr.lines().any(|l| l.starts_with("2099-01-01")),
        "a tag forged a log line:\n{}",
        out.stderr
    );
    // Each hostile service is named in a warning with its tag (JSON log).
    let mut json_envs = envs.to_vec();
    json_envs.push(("HAPROXY_LOG_FORMAT", "json"));
    let out = run_once(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &json_envs,
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "render: {}", out.stderr);
    let log = out.stderr;
    assert_warned_fields(&log, &cases);
    let ws = warnings(&log);
    // Kept, with what is wrong said: an unknown tag, a capped weight, and
    // the forging tag (escaped).
    for (service, tag) in [
        ("typo", "HAPROXY.BACKEND.MAXCON"),
        ("heavy", "instance weight"),
        ("typo2", r"HAPROXY.X\n2099-01-01"),
    ] {
        assert!(
            warning_for(&ws, service, tag).is_some_and(|w| w["left_out"] == false),
            "no warning for {service} {tag}; log:\n{log}"
        );
    }

    // The config is valid, by `haproxy -c` directly and by `check`.
    let (valid, msg) = haproxy_check(&cfg);
    assert!(valid, "haproxy -c: {msg}\n{config}");
    let a = args("check");
    let out = run_once(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &envs,
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "check: {}\n{}", out.stdout, out.stderr);
}

/// Hostile registrations Consul 1.8 accepts through its agent API (it
/// refuses only bad weights among these kinds of input; those cases are in
/// the catalog-file test). No checks: an instance without checks passes.
fn consul_cases() -> Vec<(Case, Value)> {
    let mut out = Vec::new();
    let mut n = 100;
    let mut add = |c: Case| {
        let reg = json!({
            "ID": if c.id.is_empty() { format!("reg-{n}") } else { c.id.clone() },
            "Name": c.service,
            "Address": c.address,
            "Port": c.port,
            "Tags": c.tags,
        });
        n += 1;
        out.push((c, reg));
    };
    let mut k = 0;
    let mut next = |tag: &'static str| {
        k += 1;
        Case::new(100 + k, tag)
    };
    // Consul answers 400 when asked for the instances of this one.
    for name in [
        "bad\nbackend evil",
        "bad name evil",
        "evil/slash",
        "sérvice-evil",
        "evil?q=1",
    ] {
        let mut c = next("service name");
        c.service = name.into();
        add(c);
    }
    let mut c = next("instance id");
    c.id = "id\n    server evil 6.6.6.6:80".into();
    add(c);
    let mut c = next("instance address");
    c.address = "10.0.0.1 backup evil".into();
    add(c);
    let mut c = next("instance address");
    c.address = "10.0.0.1\n    server evil 6.6.6.6:80".into();
    add(c);
    let mut c = next("instance address");
    c.port = -1;
    add(c);
    let mut c = next("instance address");
    c.port = 70000;
    add(c);
    for (key, v) in [
        ("HAPROXY.BACKEND.MAXCONN", "10 0"),
        ("HAPROXY.BACKEND.MAXCONN", "1e3"),
        ("HAPROXY.BACKEND.MAXCONN", "0"),
        ("HAPROXY.BACKEND.BALANCE", "roundrobin\n    option evil"),
        ("HAPROXY.VHOST", "a.example.com\n    use_backend evil"),
        ("HAPROXY.VHOST", "evil\u{0}.example.com"),
        ("HAPROXY.PATH", "/v1\n    http-request deny evil"),
        (
            "HAPROXY.BACKEND.HEALTHCHECK",
            "/health HTTP/1.1\r\nHost: evil",
        ),
        ("HAPROXY.BACKEND.STICKY", "yes-evil"),
        ("HAPROXY.BACKEND.PROTO", "h2c\n    server evil 6.6.6.6:80"),
        ("HAPROXY.BACKEND.TLS_VERIFY", "none verify none"),
        ("HAPROXY.BACKEND.PROXY_PROTOCOL", "v2 send-proxy"),
    ] {
        add(next(key).with_tag(format!("{key}={v}")));
    }
    out
}

#[test]
fn hostile_consul_registrations_are_left_out_and_the_valid_service_serves() {
    netns::enter();
    let consul = Consul::start();
    let backend = Backend::start("good");
    let cases = consul_cases();
    for (_, reg) in &cases {
        consul.register(reg);
    }
    consul.register(&json!({
        "ID": "good-1", "Name": "good", "Address": "127.0.0.1", "Port": backend.port(),
        "Tags": ["HAPROXY.ENABLE=true", "HAPROXY.PROTOCOL=http", "HAPROXY.BACKEND.MAXCONN=100"]
    }));
    consul.register(&json!({
        "ID": "typo2-1", "Name": "typo2", "Address": "127.0.0.1", "Port": backend.port(),
        "Tags": ["HAPROXY.ENABLE=true",
                 "HAPROXY.X\n2099-01-01T00:00:00.000000Z  INFO forged log line=1"]
    }));
    wait_until(T, "consul lists every registration", || {
        consul
            .get_json("/v1/catalog/services")
            .as_object()
            .map_or(0, |m| m.len())
            == cases.len() + 3 // + good, typo2 and consul itself
    });

    let mut sup = Supervisor::spawn_on_consul(
        &consul,
        &[
            ("HAPROXY_DOM", "example.com"),
            ("NO_COLOR", "1"),
            ("HAPROXY_LOG_FORMAT", "json"),
        ],
    );
    let cfg = sup.config_path();
    wait_until(T, "the valid service answers through haproxy", || {
        matches!(http_get("127.0.0.1:8080", "good.example.com", "/", Duration::from_secs(2)),
                 Ok((200, b)) if b.trim_end() == "good")
    });
    let config = std::fs::read_to_string(&cfg).unwrap();
    assert_eq!(
        backends(&config),
        ["_no_route", "good", "typo2"],
        "{config}"
    );
    assert_clean(&rendered_files(&cfg));
    let (valid, msg) = haproxy_check(&cfg);
    assert!(valid, "{msg}");
    let cases: Vec<Case> = cases.into_iter().map(|(c, _)| c).collect();
    // Warnings are logged with the render that started HAProxy.
    assert_warned_fields(&sup.log(), &cases);
    assert_no_forged_line(&sup.log());
    assert!(sup.is_running(), "log:\n{}", sup.log());

    // The text log of the same catalog (`render`) has no forged line either.
    let dir = tempfile::tempdir().unwrap();
    let (cfg, run) = (dir.path().join("haproxy.cfg"), dir.path().join("run"));
    let out = run_once(
        &[
            "render",
            "--consul",
            &consul.addr(),
            "--config-file",
            &cfg.display().to_string(),
            "--run-dir",
            &run.display().to_string(),
        ],
        &[("HAPROXY_DOM", "example.com")],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "render: {}", out.stderr);
    assert!(
        log_has_event(&out.stderr, Event::Warning),
        "no warning logged:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.lines().any(|l| l.starts_with("2099-01-01")),
        "a tag forged a log line:\n{}",
        out.stderr
    );
}
