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

// ---------------------------------------------------------------------------
// gRPC: tests/grpc/server.py and client.py on Debian's python3-grpcio
// ---------------------------------------------------------------------------

/// Debian's python3 (the one python3-grpcio installs for), with grpc.
fn python() -> std::path::PathBuf {
    let py = require("/usr/bin/python3");
    let ok = Command::new(&py)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3-grpcio is not installed; run scripts/setup.sh as root"
    );
    py
}

fn script(name: &str) -> String {
    format!("{}/tests/grpc/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A gRPC server (tests/grpc/server.py), stopped on drop.
struct GrpcServer {
    child: std::process::Child,
    port: u16,
}

impl GrpcServer {
    fn start(name: &str, tls: Option<(&std::path::Path, &std::path::Path)>) -> GrpcServer {
        use std::io::BufRead;
        let mut cmd = Command::new(python());
        cmd.args([&script("server.py"), "--port", "0", "--name", name])
            .stdout(std::process::Stdio::piped());
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn server.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("server.py {name}: {line:?}"));
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A load of gRPC calls (tests/grpc/client.py) through the frontend,
/// until [`GrpcLoad::stop`].
struct GrpcLoad {
    child: std::process::Child,
}

impl GrpcLoad {
    fn start(authority: &str, threads: usize) -> GrpcLoad {
        GrpcLoad::start_rounds(authority, threads, 0)
    }

    /// `rounds` rounds of calls per thread (0: until [`GrpcLoad::stop`]).
    fn start_rounds(authority: &str, threads: usize, rounds: usize) -> GrpcLoad {
        use std::io::BufRead;
        let mut cmd = Command::new(python());
        cmd.args([
            &script("client.py"),
            FRONT,
            authority,
            &threads.to_string(),
            &rounds.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn client.py");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "running");
        child.stdout = Some(out.into_inner());
        GrpcLoad { child }
    }

    /// Stops the calls; the client's summary.
    fn stop(mut self) -> serde_json::Value {
        drop(self.child.stdin.take());
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("client.py summary: {e}: {out:?}"))
    }
}

impl Drop for GrpcLoad {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<dir>/<name>.pem` and `<dir>/<name>-key.pem`: a server certificate
/// for `sans` from `ca`.
fn server_cert(
    ca: &TestCa,
    dir: &std::path::Path,
    name: &str,
    sans: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    ca.issue(sans, name, |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    })
    .write(dir, name)
}

fn grpc_service(name: &str, servers: &[&GrpcServer], tags: &[&str]) -> serde_json::Value {
    let mut all = vec!["HAPROXY.ENABLE=true".to_string()];
    all.extend(tags.iter().map(|t| t.to_string()));
    let instances: Vec<serde_json::Value> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({
                "id": format!("{name}-{}", i + 1),
                "address": "127.0.0.1",
                "port": s.port,
                "tags": all,
            })
        })
        .collect();
    serde_json::json!({ "name": name, "instances": instances })
}

#[test]
fn grpc_over_h2c_and_tls_survives_reloads_and_live_changes() {
    let (_orphans, [www, other], files) = isolated::<2>();
    let pki = files.path("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new("backend CA");
    ca.write(&pki.join("ca.pem"));
    let good = server_cert(&ca, &pki, "grpcs", &["grpcs.internal", "127.0.0.1"]);
    let bad = server_cert(
        &TestCa::new("another CA"),
        &pki,
        "impostor",
        &["grpcs.internal", "127.0.0.1"],
    );
    let (g1, g2) = (GrpcServer::start("g1", None), GrpcServer::start("g2", None));
    let tls = Some((good.0.as_path(), good.1.as_path()));
    let (s1, s2) = (GrpcServer::start("s1", tls), GrpcServer::start("s2", tls));
    let impostor = GrpcServer::start("impostor", Some((bad.0.as_path(), bad.1.as_path())));

    let h2c = [
        "HAPROXY.VHOST=grpc.example.com",
        "HAPROXY.BACKEND.PROTO=h2c",
    ];
    let h2tls = [
        "HAPROXY.VHOST=grpcs.example.com",
        "HAPROXY.BACKEND.PROTO=h2-tls",
        "HAPROXY.BACKEND.TLS_NAME=grpcs.internal",
    ];
    let wrong = [
        "HAPROXY.VHOST=wrong.example.com",
        "HAPROXY.BACKEND.PROTO=h2-tls",
    ];
    // The same impostor, unverified by name: served, with a warning.
    let loose = [
        "HAPROXY.VHOST=loose.example.com",
        "HAPROXY.BACKEND.PROTO=h2-tls",
        "HAPROXY.BACKEND.TLS_VERIFY=none",
    ];
    let catalog = |second: bool, extra: bool| {
        let n = if second { 2 } else { 1 };
        let mut v = vec![
            service("www", &[&www], &[]),
            grpc_service("grpc", &[&g1, &g2][..n], &h2c),
            grpc_service("grpcs", &[&s1, &s2][..n], &h2tls),
            grpc_service("wrong", &[&impostor], &wrong),
            grpc_service("loose", &[&impostor], &loose),
        ];
        if extra {
            v.push(service("other", &[&other], &[]));
        }
        write_catalog(&files.catalog(), &v);
    };
    catalog(false, false);
    let mut envs = env("inherit");
    envs.push(("HAPROXY_BACKEND_CA_FILE", s(&pki.join("ca.pem"))));
    let sup = spawn_serving(&files.render_args(), &envs);

    // The impostor's certificate is refused: its check fails the TLS
    // handshake, HAProxy says so in the log, and nothing is served.
    sup.wait_for_log("SSL handshake failure", T);
    let line = sup
        .log()
        .lines()
        .find(|l| l.contains("SSL handshake failure"))
        .unwrap()
        .to_string();
    assert!(line.contains("wrong"), "{line}");
    println!("the impostor, as the supervisor logs it: {line}");
    wait_until(T, "wrong answers 503", || {
        get("wrong.example.com").is_ok_and(|(status, _)| status == 503)
    });

    // Under load, 30 reloads and 100 live server changes.
    let loads = [
        GrpcLoad::start("grpc.example.com", 3),
        GrpcLoad::start("grpc.example.com", 3),
        GrpcLoad::start("grpcs.example.com", 3),
    ];
    let started = std::time::Instant::now();
    let (mut second, mut extra) = (false, false);
    let mut reloads = done_count(&sup);
    for i in 0..100 {
        second = !second;
        let live = sup.events(Event::LiveApplied).len();
        catalog(second, extra);
        wait_until(T, "a live change", || {
            sup.events(Event::LiveApplied).len() > live
        });
        if i % 10 < 3 {
            extra = !extra;
            catalog(second, extra);
            reloads += 1;
            wait_done(&sup, reloads, T);
        }
    }
    let took = started.elapsed();
    assert_eq!(sup.events(Event::LiveFailed).len(), 0, "{}", sup.log());
    let [a, b, c] = loads;
    for (what, summary, servers) in [
        ("h2c", a.stop(), ["g1", "g2"]),
        ("h2c", b.stop(), ["g1", "g2"]),
        ("h2-tls", c.stop(), ["s1", "s2"]),
    ] {
        println!("gRPC over {what}: {summary}");
        assert_eq!(summary["failed"], 0, "{what}: {summary}");
        assert!(summary["ok"].as_u64().unwrap() > 100, "{summary}");
        assert!(
            summary["deadline_exceeded"].as_u64().unwrap() > 0,
            "{summary}"
        );
        assert!(summary["trailers"].as_u64().unwrap() > 0, "{summary}");
        assert_eq!(summary["trailers"], summary["not_found"], "{summary}");
        for s in servers {
            assert!(
                summary["servers"][s].as_u64().unwrap_or(0) > 0,
                "{s}: {summary}"
            );
        }
    }
    println!("30 reloads and 100 live changes in {took:?}");

    // TLS_VERIFY=none: served by the impostor, and a warning naming the
    // service at every render (one per catalog change at least).
    let summary = GrpcLoad::start_rounds("loose.example.com", 1, 20).stop();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(
        summary["servers"]["impostor"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    let unverified = sup
        .events(Event::Warning)
        .iter()
        .filter(|e| {
            e["fields"]["service"] == "loose" && e["fields"]["tag"] == "HAPROXY.BACKEND.TLS_VERIFY"
        })
        .count();
    println!("loose (TLS_VERIFY=none): served by the impostor; {unverified} warnings for 131 catalog changes");
    assert!(unverified >= 131, "{unverified} warnings");
}
