//! Issue 23: the supervisor holds the listening sockets
//! (`HAPROXY_RELOAD_STRATEGY=inherit`, the default) and every generation
//! inherits them (`bind fd@<n>`). A TCP service's port is bound by the
//! supervisor before the reload that serves it and released when the
//! service goes; `plan` renders the same binds as the running supervisor.
//!
//! Each test runs in its own network namespace. Run as root:
//! `cargo test --test held_sockets`.

use std::net::TcpStream;
use std::time::Duration;

use testkit::*;

const TCP: &str = "127.0.0.1:19100";

fn tcp_answers() -> bool {
    matches!(http_get(TCP, "x", "/", Duration::from_secs(2)), Ok((200, b)) if b.trim_end() == "web-2")
}

fn refused() -> bool {
    matches!(TcpStream::connect(TCP), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// The ports in `<run-dir>/listeners` (`<port> <fd>` lines).
fn held_ports(files: &Files) -> Vec<u16> {
    std::fs::read_to_string(files.run_dir().join("listeners"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ')?.0.parse().ok())
        .collect()
}

#[test]
fn a_tcp_service_port_is_held_while_served_and_released_when_it_goes() {
    let (_orphans, [web, db], files) = isolated::<2>();
    let www = service("www", &[&web], &[]);
    let tcp = service(
        "db",
        &[&db],
        &["HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=19100"],
    );
    write_catalog(&files.catalog(), std::slice::from_ref(&www));
    let env = env("inherit");
    let sup = spawn_serving(&files.render_args(), &env);
    let cfg = std::fs::read_to_string(files.config()).unwrap();
    assert!(
        !cfg.contains("bind *:") && cfg.contains("bind fd@"),
        "HAProxy binds a port itself:\n{cfg}"
    );
    assert_eq!(held_ports(&files), vec![4444, 8080]);
    assert!(refused(), "19100 answers before its service exists");

    // The plan of the catalog that serves: nothing to do (the binds render
    // as the supervisor renders them).
    let plan = |catalog_file: &std::path::Path| {
        let args = vec![
            "plan".to_string(),
            "--catalog-file".into(),
            s(catalog_file),
            "--config-file".into(),
            s(&files.config()),
            "--run-dir".into(),
            s(&files.run_dir()),
        ];
        run_once(&strs(&args), &env_refs(&env), Duration::from_secs(20))
    };
    let out = plan(&files.catalog());
    assert_eq!(out.code, Some(0), "plan of what serves: {out:?}");

    let served_by = |sup: &Supervisor| logged_serving_pid(sup);
    let before = served_by(&sup);
    write_catalog(&files.catalog(), &[www.clone(), tcp.clone()]);
    // A connection to the new port made before the reload is done waits
    // in the held socket's queue: it is answered, not refused.
    wait_until(T, "the TCP service answers on 19100", tcp_answers);
    wait_until(T, "a reload (a new port)", || served_by(&sup) != before);
    wait_until(T, "19100 in the listeners file", || {
        held_ports(&files) == vec![4444, 8080, 19100]
    });
    let cfg = std::fs::read_to_string(files.config()).unwrap();
    assert!(!cfg.contains("bind *:"), "{cfg}");

    // Removed: the port refuses again, and the release is logged.
    write_catalog(&files.catalog(), std::slice::from_ref(&www));
    wait_until(T, "19100 refuses once its service is gone", refused);
    wait_until(T, "the release to be logged", || {
        sup.events(Event::ListenersReleased)
            .iter()
            .any(|e| e["fields"]["ports"].to_string().contains("19100"))
    });
    assert_eq!(held_ports(&files), vec![4444, 8080]);
    assert!(matches!(get(WWW), Ok((200, _))), "{:?}", get(WWW));

    // And back.
    write_catalog(&files.catalog(), &[www, tcp]);
    wait_until(T, "the TCP service answers on 19100 again", tcp_answers);
    assert!(sup.events(Event::ReloadFailed).is_empty(), "{}", sup.log());
}

/// A port another process holds cannot be held: HAProxy binds it itself
/// (and fails, and the failure rules leave the service out, as with any
/// strategy); the other services apply, and once the port is free and the
/// registration changes, the port is held and served.
#[test]
fn a_port_held_by_another_process_is_left_to_the_failure_rules() {
    let (_orphans, [web, db], files) = isolated::<2>();
    let holder = std::net::TcpListener::bind("0.0.0.0:19100").expect("hold 19100");
    let www = service("www", &[&web], &[]);
    let tcp = |extra: &[&str]| {
        let mut tags = vec!["HAPROXY.PROTOCOL=tcp", "HAPROXY.FRONTEND.PORT=19100"];
        tags.extend_from_slice(extra);
        service("db", &[&db], &tags)
    };
    write_catalog(&files.catalog(), &[www.clone(), tcp(&[])]);
    let env = env("inherit");
    let sup = spawn_serving(&files.render_args(), &env);
    wait_until(T, "the failed hold to be logged", || {
        sup.events(Event::ListenerFailed)
            .iter()
            .any(|e| e["fields"]["port"] == 19100)
    });
    wait_until(T, "db to be left out", || {
        sup.events(Event::ServiceLeftOut)
            .iter()
            .any(|e| e["fields"]["service"] == "db")
    });
    assert!(matches!(get(WWW), Ok((200, _))), "{:?}", get(WWW));
    drop(holder);
    write_catalog(
        &files.catalog(),
        &[www, tcp(&["HAPROXY.BACKEND.BALANCE=leastconn"])],
    );
    wait_until(T, "db serves once changed", tcp_answers);
    wait_until(T, "19100 held", || held_ports(&files).contains(&19100));
}
