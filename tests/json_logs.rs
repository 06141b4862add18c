//! Issue #24: JSON logs end to end. With `HAPROXY_LOG_FORMAT=json` every
//! line the supervisor writes — its own, and HAProxy's access logs, events
//! and alerts, which it passes on — is one JSON object, and the access log
//! lines carry the names and numbers a user queries (backend, server,
//! status, client address, timings). A real HAProxy on a catalog file, in
//! the test's own network namespace.
//! Run as root: `cargo test --release --test json_logs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Map, Value};
use testkit::*;

/// The dedicated frontend port of the TCP service.
const TCP_PORT: u16 = 15432;

/// One request on a connection of its own (closed after the answer), so
/// its client port is known: (client port, status, body).
fn request(addr: &str, raw: &[u8]) -> (u16, u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(raw).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim_end()
        .to_string();
    (port, status, body)
}

fn get(addr: &str, host: &str, path: &str) -> (u16, u16, String) {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Every line of `log`, parsed; panics naming the lines that are not JSON
/// objects.
fn parse_all(log: &str) -> Vec<Map<String, Value>> {
    let mut bad = Vec::new();
    let mut out = Vec::new();
    for line in log.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => out.push(o),
            _ => bad.push(line),
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} lines are not JSON objects:\n{}\n\nwhole log:\n{log}",
        bad.len(),
        log.lines().count(),
        bad.join("\n")
    );
    out
}

/// The lines written so far: a last line still being written is left out.
fn complete(log: &str) -> &str {
    log.rfind('\n').map_or("", |end| &log[..=end])
}

/// HAProxy's lines (the supervisor passes them on with `source`).
fn haproxy_lines(log: &str) -> Vec<Map<String, Value>> {
    parse_all(complete(log))
        .into_iter()
        .filter(|o| o.get("source").and_then(Value::as_str) == Some("haproxy"))
        .collect()
}

/// The access log line of the request with this client port.
fn access_line(log: &str, event: &str, client_port: u16) -> Option<Map<String, Value>> {
    haproxy_lines(log).into_iter().find(|o| {
        o.get("event").and_then(Value::as_str) == Some(event)
            && o.get("client_port").and_then(Value::as_u64) == Some(u64::from(client_port))
    })
}

fn wait_access_line(sup: &Supervisor, event: &str, client_port: u16) -> Map<String, Value> {
    let mut found = None;
    if !poll_until(T, || {
        found = access_line(&sup.log(), event, client_port);
        found.is_some()
    }) {
        panic!(
            "no {event} line for client port {client_port} within {T:?}; log:\n{}",
            sup.log()
        );
    }
    found.unwrap()
}

#[test]
fn json_mode_every_line_is_json_and_access_logs_carry_the_request() {
    let (_orphans, [a, b, c], files) = isolated::<3>();
    let www = service("www", &[&a, &b], &[]);
    let tcp = service(
        "raw",
        &[&c],
        &[
            "HAPROXY.PROTOCOL=tcp",
            &format!("HAPROXY.FRONTEND.PORT={TCP_PORT}"),
        ],
    );
    write_catalog(&files.catalog(), &[www.clone(), tcp.clone()]);
    let sup = spawn_serving(&files.render_args(), &env("seamless"));
    let config = std::fs::read_to_string(files.config()).unwrap();
    assert!(
        config.contains("log stdout format priority") && config.contains("log-format '{"),
        "{config}"
    );

    // HTTP: four requests, each answered by the backend the log must name.
    for i in 0..4 {
        let path = format!("/json-logs/{i}?q=[1]");
        let (port, status, body) = get(FRONT, WWW, &path);
        assert_eq!(status, 200, "{body}");
        // Instance ids follow the backends: web-1 is www-1.
        let server = body.replace("web-", "www-");
        let line = wait_access_line(&sup, "http_request", port);
        assert_eq!(line["client_ip"], "127.0.0.1", "{line:?}");
        assert_eq!(line["frontend"], "app_http_in", "{line:?}");
        assert_eq!(line["backend"], "www", "{line:?}");
        assert_eq!(line["server"], server.as_str(), "{line:?}");
        assert_eq!(line["status"], 200, "{line:?}");
        assert_eq!(line["method"], "GET", "{line:?}");
        assert_eq!(line["uri"], path.as_str(), "{line:?}");
        assert_eq!(line["http_version"], "HTTP/1.1", "{line:?}");
        assert_eq!(line["level"], "INFO", "{line:?}");
        assert_eq!(line["termination_state"], "----", "{line:?}");
        assert!(line["bytes"].as_u64().is_some_and(|n| n > 0), "{line:?}");
        for t in ["t_request", "t_queue", "t_connect", "t_response", "t_total"] {
            assert!(line[t].as_i64().is_some_and(|n| n >= 0), "{t}: {line:?}");
        }
        assert!(line["accept_time"].is_f64(), "{line:?}");
        assert!(
            line["timestamp"].as_str().and_then(parse_rfc3339).is_some(),
            "{line:?}"
        );
    }

    // No route: HAProxy's own answer, no server.
    let (port, status, _) = get(FRONT, "nowhere.example.com", "/");
    assert_eq!(status, 503);
    let line = wait_access_line(&sup, "http_request", port);
    assert_eq!(line["backend"], "_no_route", "{line:?}");
    assert_eq!(line["server"], "<NOSRV>", "{line:?}");
    assert_eq!(line["status"], 503, "{line:?}");

    // What a client puts in the request line stays a JSON string: a
    // backslash (HAProxy logs it raw), brackets, a quote, bytes above 127.
    let odd = "/odd\\path?q=[1]&b=\\";
    let (port, status, _) = get(FRONT, WWW, odd);
    assert_eq!(status, 200);
    let line = wait_access_line(&sup, "http_request", port);
    assert_eq!(line["uri"], odd, "{line:?}");
    for raw in [
        &b"GET /q\"uote HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"[..],
        &b"GET /\xc3\xa9\xff HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"[..],
        &b"G\"T / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"[..],
    ] {
        let (port, status, _) = request(FRONT, raw);
        let line = wait_access_line(&sup, "http_request", port);
        assert_eq!(line["status"], status, "{line:?}");
        if status == 200 {
            assert_eq!(line["uri"], "/q\"uote", "{line:?}");
        } else {
            // Refused (400): no request to show.
            assert_eq!((line["uri"].as_str(), status), (Some("-"), 400), "{line:?}");
        }
    }

    // TCP: the tcp variant, without HTTP fields.
    let (port, status, body) = get(&format!("127.0.0.1:{TCP_PORT}"), "raw", "/");
    assert_eq!((status, body.as_str()), (200, "web-3"));
    let line = wait_access_line(&sup, "tcp_session", port);
    assert_eq!(line["client_ip"], "127.0.0.1", "{line:?}");
    assert_eq!(line["frontend"], format!("raw_port_{TCP_PORT}"), "{line:?}");
    assert_eq!(line["backend"], "raw", "{line:?}");
    assert_eq!(line["server"], "raw-1", "{line:?}");
    assert_eq!(line["termination_state"], "--", "{line:?}");
    assert!(line["bytes"].as_u64().is_some_and(|n| n > 0), "{line:?}");
    assert!(
        line.get("status").is_none() && line.get("uri").is_none(),
        "{line:?}"
    );

    // A server state change: www-2 fails its Consul check, so the
    // supervisor parks it (maintenance) live; HAProxy's event line says so.
    let mut www_down = www.clone();
    www_down["instances"][1]["passing"] = Value::Bool(false);
    write_catalog(&files.catalog(), &[www_down, tcp]);
    let is_maint = |o: &Map<String, Value>| {
        o.get("event").and_then(Value::as_str) == Some("server_state")
            && o.get("backend").and_then(Value::as_str) == Some("www")
            && o.get("server").and_then(Value::as_str) == Some("www-2")
            && o.get("state").and_then(Value::as_str) == Some("MAINT")
    };
    wait_until(T, "HAProxy's www/www-2 maintenance event", || {
        haproxy_lines(&sup.log()).iter().any(is_maint)
    });

    // Stop, so HAProxy's stopping lines are in the log too.
    let mut sup = sup;
    sup.signal(Signal::SIGTERM).unwrap();
    let exit = sup.wait_timeout(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}:\n{}",
        sup.log()
    );

    let log = sup.log();
    assert!(log.ends_with('\n'), "the last line is complete");
    let all = parse_all(&log);
    for o in &all {
        assert!(
            o.get("timestamp")
                .and_then(Value::as_str)
                .and_then(parse_rfc3339)
                .is_some()
                && o.get("level").is_some_and(Value::is_string),
            "every line has a timestamp and a level: {o:?}"
        );
    }
    // The three kinds are all there: the supervisor's own lines, HAProxy's
    // stdout (access logs, events) and its stderr (notices, warnings).
    assert!(
        all.iter().any(|o| o
            .get("fields")
            .is_some_and(|f| f["event"] == Event::ReloadDone.as_str())),
        "{log}"
    );
    let haproxy = haproxy_lines(&log);
    let is_maint_on = |stream: &str| {
        haproxy
            .iter()
            .any(|o| is_maint(o) && o.get("stream").and_then(Value::as_str) == Some(stream))
    };
    assert!(is_maint_on("stdout"), "{log}");
    assert!(is_maint_on("stderr"), "{log}");
    assert!(
        haproxy.iter().any(
            |o| o.get("stream").and_then(Value::as_str) == Some("stderr")
                && o.get("pid").is_some_and(Value::is_u64)
        ),
        "{log}"
    );
    eprintln!(
        "{} lines, {} from HAProxy, all JSON; examples:\n{}",
        all.len(),
        haproxy.len(),
        log.lines()
            .filter(|l| l.contains("\"source\":\"haproxy\""))
            .filter(|l| l.contains("tcp_session")
                || l.contains("server_state")
                || l.contains("json-logs\\/0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
