//! Backend protocols (issue #22, the backend half) on the host's HAProxy
//! (2.6): the PROXY protocol to servers (`HAPROXY.BACKEND.PROXY_PROTOCOL`),
//! HTTP/2 and TLS to servers (`HAPROXY.BACKEND.PROTO`), end to end with
//! real gRPC servers and clients (Debian's python3-grpcio, tests/grpc/).
//! Run as root: `cargo test --release --test backend_proto`.

use std::process::Command;

use testkit::*;

/// `GET /client` through the frontend from `source` (an address on lo):
/// what the backend says the client was.
fn client_seen(source: &str, host: &str) -> Option<String> {
    let out = Command::new(require("curl"))
        .args([
            "-s",
            "--max-time",
            "2",
            "--interface",
            source,
            "-H",
            &format!("Host: {host}"),
            &format!("http://{FRONT}/client"),
        ])
        .output()
        .ok()?;
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !body.is_empty()).then_some(body)
}

/// The check status (`L4OK`, `L7OK`, `L6RSP`, ...) of every server of
/// `backend` from `show stat`.
fn check_status(sock: &std::path::Path, backend: &str) -> Vec<(String, String)> {
    let stat = admin(sock, "show stat");
    let head: Vec<&str> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let (px, sv, st) = (col("pxname"), col("svname"), col("check_status"));
    stat.lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > st && f[px] == backend && f[sv] != "BACKEND" && f[sv] != "FRONTEND")
        .map(|f| (f[sv].to_string(), f[st].to_string()))
        .collect()
}

#[test]
fn the_proxy_protocol_carries_the_client_address_and_checks_pass() {
    let (_orphans, [www], files) = isolated::<1>();
    let pp = |name: &str| Backend::start_with(name, "127.0.0.1:0", &["--proxy-protocol"]);
    let (v1, v2, v2b) = (pp("pp-v1"), pp("pp-v2"), pp("pp-v2b"));
    // v1 with the TCP connect check, v2 with an HTTP check: both must send
    // a PROXY header, as such a server closes a connection without one.
    let ppa = [
        "HAPROXY.VHOST=ppa.example.com",
        "HAPROXY.BACKEND.PROXY_PROTOCOL=v1",
    ];
    let ppb = [
        "HAPROXY.VHOST=ppb.example.com",
        "HAPROXY.BACKEND.PROXY_PROTOCOL=v2",
        "HAPROXY.BACKEND.HEALTHCHECK=/health",
    ];
    write_catalog(
        &files.catalog(),
        &[
            service("www", &[&www], &[]),
            service("ppa", &[&v1], &ppa),
            service("ppb", &[&v2], &ppb),
        ],
    );
    let sup = spawn_serving(&files.render_args(), &env("inherit"));
    let sock = files.run_dir().join("admin.sock");
    let config = std::fs::read_to_string(files.config()).unwrap();
    let (ba, bb) = (
        backend_name(&config, "ppa").unwrap(),
        backend_name(&config, "ppb").unwrap(),
    );

    for (source, host, backend) in [
        ("127.0.0.2", "ppa.example.com", &ba),
        ("127.0.0.3", "ppa.example.com", &ba),
        ("127.0.0.2", "ppb.example.com", &bb),
        ("127.0.0.3", "ppb.example.com", &bb),
    ] {
        wait_until(T, &format!("{host} answers from {source}"), || {
            client_seen(source, host).is_some_and(|c| c.starts_with(&format!("{source}:")))
        });
        let seen = client_seen(source, host).unwrap();
        println!("{host} ({backend}) from {source}: the backend saw {seen}");
    }
    // The checks pass, with the PROXY header (a check without one is
    // closed by the backend: L4 or L7 failure).
    wait_until(T, "the checks pass", || {
        check_status(&sock, &ba).iter().all(|(_, s)| s == "L4OK")
            && check_status(&sock, &bb).iter().all(|(_, s)| s == "L7OK")
    });

    // A new instance is added live on 2.6 (`add server` takes
    // `send-proxy-v2 check-send-proxy`), checked and served.
    let reloads_before = done_count(&sup);
    write_catalog(
        &files.catalog(),
        &[
            service("www", &[&www], &[]),
            service("ppa", &[&v1], &ppa),
            service("ppb", &[&v2, &v2b], &ppb),
        ],
    );
    sup.wait_for_event(Event::LiveApplied, T);
    wait_until(T, "the added server's check passes", || {
        let st = check_status(&sock, &bb);
        st.len() == 2 && st.iter().all(|(_, s)| s == "L7OK")
    });
    for _ in 0..6 {
        let seen = client_seen("127.0.0.3", "ppb.example.com").expect("ppb answers");
        assert!(seen.starts_with("127.0.0.3:"), "{seen}");
    }
    assert_eq!(done_count(&sup), reloads_before, "a reload, not live");
    println!(
        "ppb: an instance added live, check {:?}",
        check_status(&sock, &bb)
    );
}
