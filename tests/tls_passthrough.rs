//! Issue #22, the frontend half: TLS passthrough by SNI
//! (`HAPROXY.TLS=passthrough`) beside TLS termination on the same HTTPS
//! port, with the PROXY protocol from a trusted balancer in front.
//!
//! Real haproxy 2.6, real clients (`openssl s_client` to see the
//! certificate served for a name, curl verifying against the test CA), a
//! passthrough backend that terminates TLS itself (rustls, its own
//! certificate) and an HTTP backend that echoes the request head it got.
//! Run as root: `cargo test --release --test tls_passthrough`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use testkit::pki::Issued;
use testkit::*;

const HTTPS: u16 = 8443;
const HTTP: u16 = 8080;
const T: Duration = Duration::from_secs(15);

/// A certificate for `hosts` from `ca`, its subject's CN the first of them.
fn issue(ca: &TestCa, hosts: &[&str]) -> Issued {
    ca.issue(hosts, hosts[0], |_| {})
}

/// A backend that terminates TLS itself with `cert`, and answers every
/// request `passthrough <SNI it got>`.
fn tls_backend(cert: &Issued) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key.serialize_der());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert.der.clone())],
            key.into(),
        )
        .unwrap();
    let cfg = Arc::new(cfg);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let cfg = cfg.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut r = BufReader::new(&mut tls);
                loop {
                    let mut line = String::new();
                    // A health check closes before any TLS: nothing to do.
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                }
                let sni = tls.conn.server_name().unwrap_or("none").to_string();
                let body = format!("passthrough {sni}");
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

/// A plain HTTP backend that answers with the request head it got.
fn head_echo_backend() -> u16 {
    HeadEcho {
        prefix: "terminated\n".into(),
        pad: 0,
    }
    .start()
}

/// The subject line `openssl s_client -servername <sni>` prints for the
/// certificate the HTTPS port sends.
fn subject(sni: &str) -> String {
    let out = Command::new(require("openssl"))
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{HTTPS}"))
        .args(["-servername", sni])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_default()
        .to_string()
}

/// curl, verifying against the test CA; the body, or the error.
fn curl(pki: &CaFile, host: &str, extra: &[&str]) -> Result<String, String> {
    let out = Command::new(require("curl"))
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "--cacert",
            &pki.path().display().to_string(),
        ])
        .arg("--resolve")
        .arg(format!("{host}:{HTTPS}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://{host}:{HTTPS}/"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn instance(id: &str, port: u16, tags: &[&str]) -> serde_json::Value {
    let mut t = vec!["HAPROXY.ENABLE=true".to_string()];
    t.extend(tags.iter().map(|s| s.to_string()));
    serde_json::json!({"id": id, "address": "127.0.0.1", "port": port, "tags": t})
}

fn write(path: &Path, services: &[serde_json::Value]) {
    write_atomic(
        path,
        serde_json::json!({ "services": services })
            .to_string()
            .as_bytes(),
    );
}

/// One HTTPS port: the terminated host gets the proxy's certificate and
/// its backend the client's address; a passthrough host gets its
/// backend's own certificate and TLS. The first passthrough service
/// reloads once; a host added to it is live (the SNI map); a second
/// passthrough service is a new backend, a reload on HAProxy 2.6.
#[test]
fn sni_picks_passthrough_or_termination_on_one_port() {
    netns::enter();
    let _orphans = OrphanGuard;
    let pki = CaFile::new("haproxy-supervisor test CA");
    let proxy_cert = issue(&pki, &["term.test"]);
    let backend_cert = issue(&pki, &["pass.test", "pass2.test", "pass3.test"]);
    let files = Files::new();
    let certs = files.path("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("term.pem"), proxy_cert.bundle()).unwrap();
    let echo = head_echo_backend();
    let tls = tls_backend(&backend_cert);
    let web = serde_json::json!({"name": "web", "instances": [instance("web-1", echo, &["HAPROXY.VHOST=term.test"])]});
    let secure = |hosts: &str| serde_json::json!({"name": "secure", "instances": [instance("secure-1", tls, &["HAPROXY.TLS=passthrough", &format!("HAPROXY.VHOST={hosts}")])]});
    write(&files.catalog(), std::slice::from_ref(&web));
    let args = files.render_args();
    let certs_s = certs.display().to_string();
    let sup = Supervisor::spawn(
        &strs(&args),
        &[
            ("HAPROXY_LOG_FORMAT", "json"),
            ("HAPROXY_CERTS_DIR", &certs_s),
            ("HAPROXY_PROXY_PROTOCOL_FROM", "127.0.0.2"),
            // Removing both passthrough services at the end is a change
            // the mass-removal guard would hold.
            ("HAPROXY_REMOVAL_GUARD", "off"),
        ],
    );
    wait_done(&sup, 1, T);
    wait_until(T, "term.test served over HTTPS", || {
        curl(&pki, "term.test", &[]).is_ok()
    });
    let config = std::fs::read_to_string(files.config()).unwrap();
    assert!(!config.contains("app_https_in"), "{config}");

    // The first passthrough service: the HTTPS port becomes the SNI
    // frontend, one reload.
    write(&files.catalog(), &[web.clone(), secure("pass.test")]);
    wait_done(&sup, 2, T);
    wait_until(T, "pass.test passed through", || {
        subject("pass.test").contains("pass.test")
    });
    assert!(subject("term.test").contains("term.test"), "{}", sup.log());
    // curl verifies each certificate for its name against the test CA:
    // only the backend holds pass.test's.
    assert_eq!(
        curl(&pki, "pass.test", &[]).unwrap(),
        "passthrough pass.test"
    );
    let body = curl(&pki, "term.test", &["--interface", "127.0.0.3"]).unwrap();
    assert!(body.starts_with("terminated\n"), "{body}");
    // The client's address survives the hop to the terminating bind.
    assert!(body.contains("x-forwarded-for: 127.0.0.3"), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(body.contains("x-forwarded-port: 8443"), "{body}");
    // Plain HTTP is as before; a passthrough host has no plain route.
    let r = http_get(&format!("127.0.0.1:{HTTP}"), "term.test", "/", T).unwrap();
    assert_eq!(r.0, 200);
    let r = http_get(&format!("127.0.0.1:{HTTP}"), "pass.test", "/", T).unwrap();
    assert_eq!(r.0, 503);

    // A trusted balancer's PROXY header (v1, curl's) on the HTTPS port:
    // its address for a terminated host; passed-through TLS works behind
    // it; without a header it is closed.
    let body = curl(
        &pki,
        "term.test",
        &["--interface", "127.0.0.2", "--haproxy-protocol"],
    )
    .unwrap();
    assert!(body.contains("x-forwarded-for: 127.0.0.2"), "{body}");
    assert_eq!(
        curl(
            &pki,
            "pass.test",
            &["--interface", "127.0.0.2", "--haproxy-protocol"]
        )
        .unwrap(),
        "passthrough pass.test"
    );
    assert!(curl(&pki, "term.test", &["--interface", "127.0.0.2"]).is_err());

    // A host added to the passthrough service: the SNI map, live.
    write(
        &files.catalog(),
        &[web.clone(), secure("pass.test,pass2.test")],
    );
    wait_until(T, "pass2.test passed through", || {
        curl(&pki, "pass2.test", &[]).is_ok_and(|b| b == "passthrough pass2.test")
    });
    assert_eq!(done_count(&sup), 2, "a new passthrough host reloaded");

    // A second passthrough service: a new backend, one reload (2.6).
    let other = serde_json::json!({"name": "secure2", "instances": [instance("secure2-1", tls, &["HAPROXY.TLS=passthrough", "HAPROXY.VHOST=pass3.test"])]});
    write(
        &files.catalog(),
        &[web.clone(), secure("pass.test,pass2.test"), other],
    );
    wait_done(&sup, 3, T);
    wait_until(T, "pass3.test passed through", || {
        curl(&pki, "pass3.test", &[]).is_ok_and(|b| b == "passthrough pass3.test")
    });
    assert_eq!(
        curl(&pki, "pass.test", &[]).unwrap(),
        "passthrough pass.test"
    );
    assert!(curl(&pki, "term.test", &[]).is_ok());

    // Without passthrough services, the HTTPS port is the terminating
    // bind again.
    write(&files.catalog(), std::slice::from_ref(&web));
    wait_done(&sup, 4, T);
    wait_until(T, "pass.test no longer passed through", || {
        subject("pass.test").contains("term.test")
    });
    assert!(curl(&pki, "term.test", &[]).is_ok());
    sup.stop();
}

/// Two services claiming one host: the first keeps it, whether it passes
/// TLS through or terminates it; the other is left out with a warning.
#[test]
fn a_host_claimed_twice_stays_with_the_first() {
    netns::enter();
    let _orphans = OrphanGuard;
    let pki = CaFile::new("haproxy-supervisor test CA");
    let proxy_cert = issue(&pki, &["term.test"]);
    let backend_cert = issue(&pki, &["pass.test"]);
    let files = Files::new();
    let certs = files.path("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("term.pem"), proxy_cert.bundle()).unwrap();
    let echo = head_echo_backend();
    let tls = tls_backend(&backend_cert);
    // Listed first: senior.
    write(
        &files.catalog(),
        &[
            serde_json::json!({"name": "zpass", "instances": [instance("z-1", tls, &["HAPROXY.TLS=passthrough", "HAPROXY.VHOST=pass.test"])]}),
            serde_json::json!({"name": "aweb", "instances": [instance("a-1", echo, &["HAPROXY.VHOST=pass.test,term.test"])]}),
            serde_json::json!({"name": "bpass", "instances": [instance("b-1", tls, &["HAPROXY.TLS=passthrough", "HAPROXY.VHOST=pass.test"])]}),
        ],
    );
    let args = files.render_args();
    let certs_s = certs.display().to_string();
    let sup = Supervisor::spawn(
        &strs(&args),
        &[
            ("HAPROXY_LOG_FORMAT", "json"),
            ("HAPROXY_CERTS_DIR", &certs_s),
        ],
    );
    wait_done(&sup, 1, T);
    wait_until(T, "pass.test passed through", || {
        curl(&pki, "pass.test", &[]).is_ok_and(|b| b == "passthrough pass.test")
    });
    let warnings = sup.events(Event::Warning);
    for loser in ["aweb", "bpass"] {
        assert!(
            warnings.iter().any(|w| {
                w["fields"]["service"] == loser
                    && w["fields"]["held_by"] == "zpass"
                    && w["fields"]["tag"] == "HAPROXY.VHOST"
            }),
            "{loser}: {warnings:?}"
        );
    }
    sup.stop();
}
