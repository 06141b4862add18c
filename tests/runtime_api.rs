//! The runtime API client (`haproxy_supervisor::runtime`) against a real
//! HAProxy started by each test in its own network namespace, with effects
//! checked through real HTTP requests where possible.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use haproxy_supervisor::runtime::{AdminState, RuntimeApi, RuntimeError};
use testkit::{http_get, netns, poll_until, require, wait_until, Backend, Supervisor};

/// The frontend every test's HAProxy listens on (inside its namespace).
const FRONT: &str = "127.0.0.1:8080";
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `haproxy -db` with a config written to a temporary directory: admin
/// socket `<dir>/admin.sock`, frontend on [`FRONT`] routing by
/// `<dir>/hosts.map` (Host → backend name) and to `be_default` otherwise.
/// Killed on drop (through [`Supervisor`], which also prints its log when
/// the test panics).
struct Haproxy {
    api: RuntimeApi,
    rt: tokio::runtime::Runtime,
    map: PathBuf,
    _proc: Supervisor,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy with `backends` (config sections, one must be
    /// `be_default`) and the initial `hosts.map` content `map`.
    fn start(backends: &str, map: &str) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("runtime-api-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().display();
        let map_path = dir.path().join("hosts.map");
        std::fs::write(&map_path, map).expect("write map");
        let config = format!(
            "global\n\
             \x20   stats socket {d}/admin.sock mode 600 level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             frontend fe\n\
             \x20   bind {FRONT}\n\
             \x20   use_backend %[req.hdr(host),lower,map({d}/hosts.map)]\n\
             \x20   default_backend be_default\n\
             {backends}\n"
        );
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write config");
        let haproxy = require("haproxy");
        let proc = Supervisor::spawn_program(&haproxy, &["-db", "-f", &cfg.to_string_lossy()], &[]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let api = RuntimeApi::new(dir.path().join("admin.sock"), Duration::from_secs(5));
        let h = Haproxy {
            api,
            rt,
            map: map_path,
            _proc: proc,
            _dir: dir,
        };
        wait_until(
            Duration::from_secs(10),
            "haproxy admin socket and frontend",
            || h.block(h.api.command("show info")).is_ok() && TcpStream::connect(FRONT).is_ok(),
        );
        h
    }

    fn block<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn map_path(&self) -> String {
        self.map.to_string_lossy().into_owned()
    }

    /// Server names of `backend` in `show servers state`.
    fn servers(&self, backend: &str) -> Vec<String> {
        let st = self.block(self.api.servers_state(Some(backend))).unwrap();
        st.rows.into_iter().map(|r| r.server).collect()
    }
}

/// `n` GETs with `Host: host` through the frontend, counted by body (or
/// `HTTP <status>` for a non-200).
fn bodies(host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = http_get(FRONT, host, "/", HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET Host {host}: {e}"));
        let key = if status == 200 {
            body.trim().to_string()
        } else {
            format!("HTTP {status}")
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

fn only(name: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(name.to_string(), n)])
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn assert_refused<T: std::fmt::Debug>(r: Result<T, RuntimeError>, needle: &str) -> String {
    match r {
        Err(RuntimeError::Refused { answer, .. }) => {
            assert!(
                answer.contains(needle),
                "answer {answer:?} lacks {needle:?}"
            );
            answer
        }
        other => panic!("expected Refused containing {needle:?}, got {other:?}"),
    }
}

fn roundrobin(name: &str, servers: &[(&str, &Backend)]) -> String {
    let mut s = format!("backend {name}\n    balance roundrobin\n");
    for (srv, b) in servers {
        s.push_str(&format!("    server {srv} {}\n", b.addr()));
    }
    s
}

#[test]
fn dynamic_server_lifecycle_in_a_roundrobin_backend() {
    netns::enter();
    let one = Backend::start("one");
    let two = Backend::start("two");
    let three = Backend::start("three");
    let h = Haproxy::start(&roundrobin("be_default", &[("one", &one)]), "");
    let api = &h.api;
    assert_eq!(bodies("x.test", 10), only("one", 10));

    // `check` makes add_server enable health checks before enabling it.
    let kw = strings(&[
        "check", "inter", "1s", "rise", "1", "fall", "1", "weight", "1",
    ]);
    h.block(api.add_server("be_default", "two", "127.0.0.1", two.port(), &kw))
        .unwrap();
    let st = h.block(api.servers_state(Some("be_default"))).unwrap();
    let row = st.server("be_default", "two").expect("two listed");
    assert_eq!(row.addr.as_deref(), Some("127.0.0.1"));
    assert_eq!((row.port, row.weight), (two.port(), 1));
    assert!(row.is_up() && !row.in_maintenance(), "{row:?}");
    assert!(st.to_file().contains(&row.raw));
    let seen = bodies("x.test", 20);
    assert_eq!(
        (seen.get("one"), seen.get("two")),
        (Some(&10), Some(&10)),
        "{seen:?}"
    );

    h.block(api.set_weight("be_default", "two", 0)).unwrap();
    assert_eq!(bodies("x.test", 20), only("one", 20));
    let st = h.block(api.servers_state(Some("be_default"))).unwrap();
    assert_eq!(st.server("be_default", "two").unwrap().weight, 0);
    h.block(api.set_weight("be_default", "two", 1)).unwrap();
    assert!(bodies("x.test", 10).contains_key("two"));

    h.block(api.set_state("be_default", "two", AdminState::Drain))
        .unwrap();
    assert_eq!(bodies("x.test", 20), only("one", 20));
    let st = h.block(api.servers_state(Some("be_default"))).unwrap();
    assert!(st.server("be_default", "two").unwrap().draining());
    h.block(api.set_state("be_default", "two", AdminState::Ready))
        .unwrap();
    assert!(bodies("x.test", 10).contains_key("two"));

    // set server addr: on the dynamic server, and on `one` from the config.
    h.block(api.set_addr("be_default", "two", "127.0.0.1", three.port()))
        .unwrap();
    let seen = bodies("x.test", 20);
    assert_eq!(
        (seen.get("one"), seen.get("three")),
        (Some(&10), Some(&10)),
        "{seen:?}"
    );
    h.block(api.set_addr("be_default", "one", "127.0.0.1", two.port()))
        .unwrap();
    let seen = bodies("x.test", 20);
    assert_eq!(
        (seen.get("two"), seen.get("three")),
        (Some(&10), Some(&10)),
        "{seen:?}"
    );
    h.block(api.set_addr("be_default", "one", "127.0.0.1", one.port()))
        .unwrap();
    assert_refused(
        h.block(api.set_addr("be_default", "one", "localhost", one.port())),
        "not sent",
    );

    h.block(api.set_state("be_default", "two", AdminState::Maint))
        .unwrap();
    assert_eq!(bodies("x.test", 20), only("one", 20));
    let st = h.block(api.servers_state(Some("be_default"))).unwrap();
    assert!(st.server("be_default", "two").unwrap().in_maintenance());

    h.block(api.del_server("be_default", "two")).unwrap();
    assert_eq!(h.servers("be_default"), ["one"]);
    assert_eq!(bodies("x.test", 10), only("one", 10));
    assert_refused(
        h.block(api.del_server("be_default", "two")),
        "No such server",
    );
}

#[test]
fn add_server_needs_a_dynamic_algorithm_and_clean_arguments() {
    netns::enter();
    let one = Backend::start("one");
    let algos = [
        ("be_roundrobin", "roundrobin", true),
        ("be_static", "static-rr", false),
        ("be_leastconn", "leastconn", true),
        ("be_first", "first", true),
        ("be_source", "source", false),
        ("be_random", "random", true),
        ("be_uri", "uri", false),
        ("be_source_c", "source\n    hash-type consistent", true),
        ("be_uri_c", "uri\n    hash-type consistent", true),
    ];
    let mut config = roundrobin("be_default", &[("one", &one)]);
    for (name, balance, _) in algos {
        config.push_str(&format!("backend {name}\n    balance {balance}\n"));
    }
    let h = Haproxy::start(&config, "");
    let api = &h.api;
    for (name, balance, dynamic) in algos {
        let r = h.block(api.add_server(name, "new", "127.0.0.1", one.port(), &[]));
        if dynamic {
            r.unwrap_or_else(|e| panic!("{balance}: {e}"));
            assert_eq!(h.servers(name), ["new"], "{balance}");
        } else {
            assert_refused(r, "dynamic");
            assert!(h.servers(name).is_empty(), "{balance}");
        }
    }

    // Refused before sending: nothing reaches HAProxy.
    let add = |kw: &[&str], ip: &str| {
        h.block(api.add_server("be_roundrobin", "bad", ip, one.port(), &strings(kw)))
    };
    assert_refused(add(&["enabled"], "127.0.0.1"), "not sent");
    assert_refused(add(&["disabled"], "127.0.0.1"), "not sent");
    assert_refused(add(&["weight 5"], "127.0.0.1"), "not sent");
    assert_refused(add(&["check;", "del"], "127.0.0.1"), "not sent");
    assert_refused(add(&["check\nshow info"], "127.0.0.1"), "not sent");
    assert_refused(add(&[], "localhost"), "not sent");
    let bad_name = h.block(api.add_server("be_roundrobin", "a b", "127.0.0.1", 80, &[]));
    assert_refused(bad_name, "not sent");
    // Refused by HAProxy 2.6 for dynamic servers.
    assert_refused(
        add(&["cookie", "x"], "127.0.0.1"),
        "'cookie' option is not accepted",
    );
    assert_eq!(h.servers("be_roundrobin"), ["new"]);
}

#[test]
fn replace_map_swaps_routes_atomically_even_beyond_16kb() {
    netns::enter();
    let (one, two, three) = (
        Backend::start("one"),
        Backend::start("two"),
        Backend::start("three"),
    );
    let config = [
        roundrobin("be_default", &[("one", &one)]),
        roundrobin("be_two", &[("two", &two)]),
        roundrobin("be_three", &[("three", &three)]),
    ]
    .concat();
    let h = Haproxy::start(&config, "a.test be_two\n");
    let (api, map) = (&h.api, h.map_path());
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        h.block(api.show_map(&map)).unwrap(),
        pairs(&[("a.test", "be_two")])
    );
    assert_eq!(bodies("a.test", 2), only("two", 2));

    let small = pairs(&[
        ("b.test", "be_three"),
        ("a.test", "be_three"),
        ("c.test", "be_two"),
    ]);
    h.block(api.replace_map(&map, &small)).unwrap();
    assert_eq!(h.block(api.show_map(&map)).unwrap(), small);
    assert_eq!(bodies("a.test", 2), only("three", 2));
    assert_eq!(bodies("B.test", 2), only("three", 2));
    assert_eq!(bodies("c.test", 2), only("two", 2));
    assert_eq!(bodies("d.test", 2), only("one", 2));

    // Refused unsent, and the map in use is untouched.
    for bad in [("a b", "be_two"), ("k", "be two"), ("k", ""), ("k\n", "v")] {
        let r = h.block(api.replace_map(&map, &pairs(&[bad])));
        assert_refused(r, "not sent");
    }
    assert_refused(h.block(api.replace_map("/nope.map", &small)), "Unknown map");
    assert_eq!(h.block(api.show_map(&map)).unwrap(), small);

    // 2,000 entries (about 56 KB of payload): several add map requests.
    let big: Vec<(String, String)> = (0..2000)
        .map(|i| {
            let be = if i % 2 == 0 { "be_two" } else { "be_three" };
            (format!("host-{i:04}.example.test"), be.to_string())
        })
        .collect();
    let payload: usize = big.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    assert!(payload > 16 * 1024, "payload {payload} bytes");
    let started = Instant::now();
    h.block(api.replace_map(&map, &big)).unwrap();
    eprintln!(
        "replace_map of {} entries ({payload} bytes): {:?}",
        big.len(),
        started.elapsed()
    );
    assert_eq!(h.block(api.show_map(&map)).unwrap(), big);
    assert_eq!(bodies("host-0000.example.test", 2), only("two", 2));
    assert_eq!(bodies("host-1999.example.test", 2), only("three", 2));
    assert_eq!(bodies("a.test", 2), only("one", 2));

    // An empty replacement empties the map.
    h.block(api.replace_map(&map, &[])).unwrap();
    assert!(h.block(api.show_map(&map)).unwrap().is_empty());
    assert_eq!(bodies("host-0000.example.test", 2), only("one", 2));
}

#[test]
fn errors_are_typed() {
    netns::enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = RuntimeApi::new(dir.path().join("nope.sock"), Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(missing.command("show info")) {
        Err(RuntimeError::Connect { socket, .. }) => assert!(socket.ends_with("nope.sock")),
        other => panic!("expected Connect, got {other:?}"),
    }

    // A socket that accepts (backlog) and never answers.
    let silent_path = dir.path().join("silent.sock");
    let _silent = std::os::unix::net::UnixListener::bind(&silent_path).unwrap();
    let silent = RuntimeApi::new(&silent_path, Duration::from_millis(300));
    let started = Instant::now();
    match rt.block_on(silent.command("show info")) {
        Err(RuntimeError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(300)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(rt);

    let one = Backend::start("one");
    let h = Haproxy::start(&roundrobin("be_default", &[("one", &one)]), "");
    let api = &h.api;
    assert!(h
        .block(api.command("show info"))
        .unwrap()
        .contains("Name: HAProxy"));
    assert_refused(
        h.block(api.command("frobnicate the server")),
        "Unknown command",
    );
    assert_refused(h.block(api.command("show info\nshow info")), "not sent");
    assert_refused(
        h.block(api.set_weight("be_default", "nope", 1)),
        "No such server",
    );
    assert_refused(
        h.block(api.set_weight("be_nope", "one", 1)),
        "No such backend",
    );
    assert_refused(
        h.block(api.set_weight("be_default", "one", 300)),
        "between 0 and 256",
    );
    assert_refused(
        h.block(api.servers_state(Some("be_nope"))),
        "Can't find backend",
    );
    assert_refused(
        h.block(api.server_connections("be_default", "nope")),
        "no row",
    );
    assert_refused(
        h.block(api.server_connections("be_nope", "one")),
        "No such proxy",
    );
    assert_refused(h.block(api.show_map("/nope.map")), "Unknown map");
    assert_eq!(
        h.block(api.server_connections("be_default", "one"))
            .unwrap(),
        0
    );
    // Everything still works after the errors.
    assert_eq!(bodies("x.test", 2), only("one", 2));
}

/// Reads one HTTP/1.1 response (head plus Content-Length body) from a
/// keep-alive connection: Some((status, body)), or None if the connection
/// was closed first.
fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
                let body = text[end + 4..end + 4 + length].to_string();
                return Some((status.expect("status line"), body));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!(
                "read response: {e}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

#[test]
fn del_server_is_busy_while_a_request_is_in_flight() {
    netns::enter();
    let one = Backend::start("one");
    let two = Backend::start("two");
    // Accepts connections (kernel backlog) and never answers: a request sent
    // there stays in flight.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    let config = [
        roundrobin("be_default", &[("one", &one)]),
        "backend be_hold\n    balance roundrobin\n".to_string(),
    ]
    .concat();
    let h = Haproxy::start(&config, "hold.test be_hold\n");
    let api = &h.api;
    let conns = || h.block(api.server_connections("be_hold", "hold")).unwrap();

    h.block(api.add_server("be_hold", "hold", "127.0.0.1", hole_port, &[]))
        .unwrap();
    let mut client = TcpStream::connect(FRONT).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: hold.test\r\n\r\n")
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the request in flight on be_hold/hold",
        || conns() == 1,
    );

    match h.block(api.del_server("be_hold", "hold")) {
        Err(RuntimeError::Busy { server, answer }) => {
            assert_eq!(server, "be_hold/hold");
            assert!(answer.contains("maintenance"), "{answer}");
        }
        other => panic!("expected Busy (not in maintenance), got {other:?}"),
    }
    h.block(api.set_state("be_hold", "hold", AdminState::Maint))
        .unwrap();
    // Maintenance does not end the request: still busy.
    match h.block(api.del_server("be_hold", "hold")) {
        Err(RuntimeError::Busy { answer, .. }) => {
            assert!(answer.contains("still has connections"), "{answer}")
        }
        other => panic!("expected Busy (connections), got {other:?}"),
    }
    assert_eq!(conns(), 1);

    h.block(api.shutdown_sessions("be_hold", "hold")).unwrap();
    wait_until(
        Duration::from_secs(5),
        "no connection on be_hold/hold",
        || conns() == 0,
    );
    h.block(api.del_server("be_hold", "hold")).unwrap();
    assert!(h.servers("be_hold").is_empty());
    // The held client got an error answer or a closed connection.
    let held = read_response(&mut client);
    eprintln!("held client after shutdown sessions: {held:?}");
    match held {
        None => {}
        Some((status, _)) => assert!((500..600).contains(&status), "status {status}"),
    }

    // A client's idle keep-alive connection does not hold the server: a
    // dynamic server keeps no idle server connection, and maintenance
    // closes idle ones anyway.
    h.block(api.add_server("be_hold", "two", "127.0.0.1", two.port(), &[]))
        .unwrap();
    let mut ka = TcpStream::connect(FRONT).unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: hold.test\r\n\r\n";
    ka.write_all(req).unwrap();
    assert_eq!(read_response(&mut ka), Some((200, "two\n".to_string())));
    h.block(api.set_state("be_hold", "two", AdminState::Maint))
        .unwrap();
    assert!(poll_until(Duration::from_secs(2), || h
        .block(api.server_connections("be_hold", "two"))
        .unwrap()
        == 0));
    h.block(api.del_server("be_hold", "two")).unwrap();
    // The same client connection's next request finds no server.
    ka.write_all(req).unwrap();
    assert_eq!(read_response(&mut ka).map(|r| r.0), Some(503));
}

/// `CumConns` of `show info`: every connection HAProxy accepted, the
/// admin socket's included.
fn accepted(h: &Haproxy) -> u64 {
    let info = h.block(h.api.command("show info")).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("CumConns: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no CumConns in {info:?}"))
}

#[test]
fn a_session_runs_every_call_on_one_connection_and_answers_as_a_plain_client() {
    netns::enter();
    let (one, two) = (Backend::start("one"), Backend::start("two"));
    let config = [
        roundrobin("be_default", &[("one", &one)]),
        roundrobin("be_two", &[]),
    ]
    .concat();
    let h = Haproxy::start(&config, "");
    let map = h.map_path();
    let session = h.api.session();

    // One change's worth of calls, with payloads (`add map <<`, in several
    // requests) and refusals in between: the answers read as a plain
    // client's, and HAProxy accepted one connection for all of them.
    let before = accepted(&h);
    h.block(session.add_server(
        "be_two",
        "two",
        "127.0.0.1",
        two.port(),
        &strings(&["weight", "5"]),
    ))
    .unwrap();
    assert_refused(
        h.block(session.set_weight("be_two", "two", 300)),
        "between 0 and 256",
    );
    assert_refused(h.block(session.command("frobnicate")), "Unknown command");
    let routes: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("host-{i:04}.example.test"), "be_two".to_string()))
        .chain([("two.test".to_string(), "be_two".to_string())])
        .collect();
    h.block(session.replace_map(&map, &routes)).unwrap();
    assert_eq!(h.block(session.show_map(&map)).unwrap(), routes);
    h.block(session.set_weight("be_two", "two", 7)).unwrap();
    let st = h.block(session.servers_state(Some("be_two"))).unwrap();
    assert_eq!(st.server("be_two", "two").unwrap().weight, 7);
    assert_eq!(
        h.block(session.servers_state(Some("be_two"))).unwrap().rows,
        h.block(h.api.servers_state(Some("be_two"))).unwrap().rows,
    );
    assert_eq!(
        h.block(session.command("show servers state be_two"))
            .unwrap(),
        h.block(h.api.command("show servers state be_two")).unwrap(),
    );
    // Counted since `before` (its own connection included in it): the
    // session's one, the two plain calls above, and this count's own: 4.
    // The frontend's readiness probe from `Haproxy::start` may still be
    // in the accept queue and count here too: 5. One connection per
    // command, as a plain client does, would be over 20.
    let delta = accepted(&h) - before;
    assert!((4..=5).contains(&delta), "{delta} connections accepted");
    assert_eq!(bodies("two.test", 3), only("two", 3));
    assert_eq!(bodies("host-0999.example.test", 3), only("two", 3));

    // The connection ends under the session (here by `quit`): that call
    // fails, and the next one connects again and works.
    assert!(h.block(session.command("quit")).is_err());
    h.block(session.set_state("be_two", "two", AdminState::Maint))
        .unwrap();
    h.block(session.del_server("be_two", "two")).unwrap();
    assert_eq!(h.servers("be_two"), Vec::<String>::new());
    assert_eq!(bodies("two.test", 2), only("HTTP 503", 2));
}
