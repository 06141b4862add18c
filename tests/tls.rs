//! Issue #12 (SPEC §15): TLS termination with live certificate updates.
//!
//! Certificates are made in the test (rcgen): a test CA, a certificate per
//! host, a replacement, a key that does not match, an expired one. Clients
//! are real: curl (`--resolve`, `--cacert`, HTTP/2 by ALPN) and a rustls
//! client that reports which certificate the server sent. Real haproxy and
//! demo backends, a catalog file, every test in its own network namespace.
//! Tests read the supervisor's JSON log by its `event` field.
//! Run as root: `cargo test --release --test tls`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use testkit::pki::Issued;
use testkit::*;

const HTTPS: u16 = 8443;
const HTTP: u16 = 8080;
const T: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A test CA that issues host certificates, its certificate in a file.
struct Pki(CaFile);

impl Pki {
    fn new() -> Pki {
        Pki(CaFile::new("haproxy-supervisor test CA"))
    }

    fn ca_file(&self) -> PathBuf {
        self.0.path()
    }

    /// A certificate for `host`; `generation` goes into the subject's O and
    /// the serial, so two certificates for one host differ.
    fn issue(&self, host: &str, generation: u64) -> Issued {
        self.issue_valid(host, generation, None)
    }

    fn issue_valid(&self, host: &str, generation: u64, expired: Option<()>) -> Issued {
        self.0.issue(&[host], host, |p| {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, format!("gen{generation}"));
            p.serial_number = Some(rcgen::SerialNumber::from(1000 + generation));
            if expired.is_some() {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2020, 1, 2);
            }
        })
    }
}

/// Writes a file into the certificates directory the way an operator's
/// tooling does: a hidden temporary file, then a rename.
fn put(dir: &Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// What curl got.
#[derive(Debug)]
struct Curl {
    code: u16,
    http_version: String,
    headers: String,
    body: String,
    ok: bool,
    #[allow(dead_code)] // shown in failure messages (Debug)
    stderr: String,
}

/// Real curl: `--resolve host:port:127.0.0.1`, the test CA, `extra` args.
fn curl(pki: &Pki, url: &str, host: &str, port: u16, extra: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = Command::new(require("curl"))
        .args(["-sS", "--max-time", "5", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(pki.ca_file())
        .arg("-D")
        .arg(&headers)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut it = tail.split_whitespace();
    Curl {
        code: it.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        http_version: it.next().unwrap_or("").to_string(),
        headers: std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        body: body.trim_end().to_string(),
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn https_url(host: &str, path: &str) -> String {
    format!("https://{host}:{HTTPS}{path}")
}

/// Accepts any certificate: the probe reports what the server sent, curl
/// checks that it verifies.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client: `verify` against the test CA, or accept anything (to
/// see the default certificate). No session resumption: every connection
/// is a full handshake and shows the certificate served now.
fn tls_config(pki: Option<&Pki>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut cfg = match pki {
        Some(pki) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(pki.0.cert.der().to_vec()))
                .unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(cfg: &Arc<rustls::ClientConfig>, sni: &str) -> Result<Tls, String> {
    let tcp = TcpStream::connect(("127.0.0.1", HTTPS)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(s)
}

/// The leaf certificate (DER) the server sends for `sni`.
fn served_cert(sni: &str) -> Result<Vec<u8>, String> {
    let s = connect(&tls_config(None), sni)?;
    s.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "no certificate".to_string())
}

/// One HTTP/1.1 request on `s`; the status, the body, and whether the
/// connection can be reused. Reads by Content-Length.
fn request(s: &mut Tls, host: &str, keep_alive: bool) -> Result<(u16, String), String> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| format!("read: {e}"))?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status:?}"))?;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// A backend that answers every request with the X-Forwarded-Proto values
/// it got (comma separated), so the test sees what HAProxy forwarded.
fn header_echo_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut r = BufReader::new(&s);
                let mut seen = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("x-forwarded-proto") {
                            seen.push(v.trim().to_string());
                        }
                    }
                }
                let body = format!("xfp={}", seen.join(","));
                let _ = (&s).write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    port
}

// ---------------------------------------------------------------------------
// The supervisor
// ---------------------------------------------------------------------------

fn spawn(catalog: &Path, certs: &Path, extra: &[(&str, &str)]) -> Supervisor {
    let certs = certs.display().to_string();
    let mut envs: Vec<(&str, &str)> = vec![
        ("HAPROXY_LOG_FORMAT", "json"),
        ("HAPROXY_CERTS_DIR", &certs),
        // HAProxy's access log away from the supervisor's own log.
        ("LOCAL_SYSLOG", "127.0.0.1:5514"),
    ];
    envs.extend_from_slice(extra);
    let catalog = catalog.display().to_string();
    Supervisor::spawn(
        &[
            "run",
            "--catalog-file",
            &catalog,
            "--config-file",
            "etc/haproxy.cfg",
            "--run-dir",
            "run",
        ],
        &envs,
    )
}

fn wait_event(sup: &Supervisor, event: Event, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    if !poll_until(T, || {
        found = sup.events(event).into_iter().find(|e| pred(e));
        found.is_some()
    }) {
        panic!("no {event} event within {T:?}; log:\n{}", sup.log());
    }
    found.unwrap()
}

fn file_is(e: &Value, name: &str) -> bool {
    e["fields"]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with(&format!("/{name}")))
}

fn wait_served(sup: &Supervisor, sni: &str, want: &Issued) {
    let mut last = Err(String::new());
    if !poll_until(T, || {
        last = served_cert(sni);
        last.as_deref() == Ok(want.der.as_slice())
    }) {
        panic!(
            "{sni}: the expected certificate not served within {T:?} (last: {:?}); log:\n{}",
            last.map(|d| d.len()),
            sup.log()
        );
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Two hosts with their own certificates over HTTPS (curl verifies each
/// against the test CA, so SNI chose it), HTTP/2 by ALPN, the default
/// certificate for other names, the redirect, HSTS, X-Forwarded-Proto.
#[test]
fn https_serves_each_host_its_certificate_with_h2_redirect_and_hsts() {
    netns::enter();
    let pki = Pki::new();
    let a = pki.issue("a.test", 1);
    let b = pki.issue("b.test", 1);
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    put(&certs, "a.pem", &a.bundle());
    put(&certs, "b.pem", &b.bundle());
    let www = Backend::start("www-a");
    let echo = header_echo_backend();
    let catalog = work.path().join("catalog.json");
    let mut svc_b = service("b", &[], &["HAPROXY.VHOST=b.test"]);
    svc_b["instances"] = serde_json::json!([{
        "id": "b-1", "address": "127.0.0.1", "port": echo,
        "tags": ["HAPROXY.ENABLE=true", "HAPROXY.VHOST=b.test"]
    }]);
    write_catalog(
        &catalog,
        &[
            service(
                "a",
                &[&www],
                &["HAPROXY.VHOST=a.test", "HAPROXY.HTTPS_REDIRECT=true"],
            ),
            svc_b,
        ],
    );
    let sup = spawn(&catalog, &certs, &[("HAPROXY_HSTS_MAX_AGE", "31536000")]);
    wait_done(&sup, 1, T);
    let t0 = Instant::now();

    // Each host: 200 over HTTPS with its own certificate, HTTP/2.
    let mut r = curl(&pki, &https_url("a.test", "/"), "a.test", HTTPS, &[]);
    if !poll_until(T, || {
        r = curl(&pki, &https_url("a.test", "/"), "a.test", HTTPS, &[]);
        r.code == 200
    }) {
        panic!("a.test over HTTPS: {r:?}; log:\n{}", sup.log());
    }
    assert_eq!(
        (r.body.as_str(), r.http_version.as_str()),
        ("www-a", "2"),
        "{r:?}"
    );
    assert!(
        r.headers
            .contains("strict-transport-security: max-age=31536000"),
        "{r:?}"
    );
    let r = curl(&pki, &https_url("b.test", "/"), "b.test", HTTPS, &[]);
    assert_eq!(
        (r.code, r.http_version.as_str(), r.body.as_str()),
        (200, "2", "xfp=https"),
        "{r:?}"
    );
    // HTTP/1.1 when the client asks for it.
    let r = curl(
        &pki,
        &https_url("a.test", "/"),
        "a.test",
        HTTPS,
        &["--http1.1"],
    );
    assert_eq!((r.code, r.http_version.as_str()), (200, "1.1"), "{r:?}");
    // SNI: each name gets its certificate, others the default (a.pem, the
    // lexically first).
    assert_eq!(served_cert("a.test").unwrap(), a.der);
    assert_eq!(served_cert("b.test").unwrap(), b.der);
    assert_eq!(served_cert("other.test").unwrap(), a.der);
    // Routing is the same as HTTP's: an unknown host gets 503.
    let r = curl(
        &pki,
        "https://a.test:8443/",
        "a.test",
        HTTPS,
        &["-H", "Host: nope.test"],
    );
    assert_eq!(r.code, 503, "{r:?}");

    // The redirect: 301, path and query kept; curl follows it to HTTPS.
    let url = format!("http://a.test:{HTTP}/some/path?x=1&y=two");
    let r = curl(&pki, &url, "a.test", HTTP, &[]);
    assert_eq!(r.code, 301, "{r:?}");
    assert!(
        r.headers
            .contains("location: https://a.test:8443/some/path?x=1&y=two\r\n"),
        "{r:?}"
    );
    assert!(!r.headers.contains("strict-transport-security"), "{r:?}");
    let r = curl(
        &pki,
        &url,
        "a.test",
        HTTP,
        &["-L", "--resolve", "a.test:8443:127.0.0.1"],
    );
    assert_eq!((r.code, r.body.as_str()), (200, "www-a"), "{r:?}");
    // A service without the tag answers plain HTTP, no HSTS, and
    // X-Forwarded-Proto is "http" whatever the client claims.
    let r = curl(
        &pki,
        &format!("http://b.test:{HTTP}/"),
        "b.test",
        HTTP,
        &["-H", "X-Forwarded-Proto: https"],
    );
    assert_eq!((r.code, r.body.as_str()), (200, "xfp=http"), "{r:?}");
    assert!(!r.headers.contains("strict-transport-security"), "{r:?}");
    let loaded = sup.events(Event::CertLoaded);
    assert_eq!(loaded.len(), 2, "{loaded:?}");
    eprintln!("checks took {:?}", t0.elapsed());
}

/// A certificate replaced under HTTPS load: new handshakes get the new one
/// within 1 s, no request fails, and no HAProxy process is started.
#[test]
fn a_certificate_replaced_under_load_is_served_within_a_second_without_a_process_start() {
    netns::enter();
    let pki = Pki::new();
    let a1 = pki.issue("a.test", 1);
    let a2 = pki.issue("a.test", 2);
    let b = pki.issue("b.test", 1);
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    put(&certs, "a.pem", &a1.bundle());
    put(&certs, "b.pem", &b.bundle());
    let www = Backend::start("www-a");
    let catalog = work.path().join("catalog.json");
    write_catalog(
        &catalog,
        &[service("a", &[&www], &["HAPROXY.VHOST=a.test"])],
    );
    let sup = spawn(&catalog, &certs, &[]);
    wait_done(&sup, 1, T);
    wait_served(&sup, "a.test", &a1);
    let before = haproxies_under(sup.pid());
    assert_eq!(before.len(), 1, "{before:?}");

    // Load: 4 clients with a new TLS connection (full handshake) per
    // request, 2 on keep-alive connections; every request verified against
    // the CA and checked for 200.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    // When a client first saw the new certificate.
    let first_new: Arc<Mutex<Option<Instant>>> = Arc::default();
    let cfg = tls_config(Some(&pki));
    let mut workers = Vec::new();
    for i in 0..6 {
        let (stop, ok, failures, first_new, cfg) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            first_new.clone(),
            cfg.clone(),
        );
        let new_der = a2.der.clone();
        let keep_alive = i >= 4;
        workers.push(thread::spawn(move || {
            let mut conn: Option<Tls> = None;
            while !stop.load(Ordering::Relaxed) {
                let mut s = match conn.take() {
                    Some(s) => s,
                    None => match connect(&cfg, "a.test") {
                        Ok(s) => {
                            let leaf = s.conn.peer_certificates().and_then(|c| c.first());
                            if leaf.is_some_and(|c| c.as_ref() == new_der.as_slice()) {
                                first_new.lock().unwrap().get_or_insert_with(Instant::now);
                            }
                            s
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            continue;
                        }
                    },
                };
                match request(&mut s, "a.test", keep_alive) {
                    Ok((200, body)) if body == "www-a\n" => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if keep_alive {
                            conn = Some(s);
                        }
                    }
                    Ok(other) => failures.lock().unwrap().push(format!("{other:?}")),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    wait_until(T, "the load runs", || ok.load(Ordering::Relaxed) > 50);
    let ok_before = ok.load(Ordering::Relaxed);
    assert!(
        ok_before > 50,
        "the load does not run: {ok_before} requests"
    );

    let replaced_at = Instant::now();
    put(&certs, "a.pem", &a2.bundle());
    // A probe of its own, independent of the load.
    let probe_ok = poll_until(Duration::from_secs(3), || {
        served_cert("a.test").as_deref() == Ok(a2.der.as_slice())
    });
    let probe_took = replaced_at.elapsed();
    let mut pid_sets = vec![haproxies_under(sup.pid())];
    for _ in 0..10 {
        // Pacing: ten samples of the processes over a second after the
        // change, which the test asserts stay the same.
        thread::sleep(Duration::from_millis(100));
        pid_sets.push(haproxies_under(sup.pid()));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total = ok.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap().clone();
    let clients_took = first_new.lock().unwrap().map(|t| t - replaced_at);
    eprintln!(
        "replaced: probe saw the new certificate after {probe_took:?}, the load after {clients_took:?}; {total} requests OK, {} failed",
        failures.len()
    );
    assert!(
        probe_ok,
        "the new certificate was not served; log:\n{}",
        sup.log()
    );
    assert!(
        probe_took < Duration::from_secs(1),
        "the new certificate took {probe_took:?}"
    );
    assert!(
        clients_took.is_some_and(|t| t < Duration::from_secs(1)),
        "the load saw the new certificate after {clients_took:?}"
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    for set in &pid_sets {
        assert_eq!(
            set,
            &before,
            "an haproxy process was started; log:\n{}",
            sup.log()
        );
    }
    assert_eq!(
        done_count(&sup),
        1,
        "a reload happened; log:\n{}",
        sup.log()
    );
    let e = wait_event(&sup, Event::CertUpdated, |e| file_is(e, "a.pem"));
    assert_eq!(e["fields"]["live"], true, "{e}");
    // The other host was not touched.
    assert_eq!(served_cert("b.test").unwrap(), b.der);
}

/// Starting with no usable bundle: no HTTPS bind (a warning); the first
/// bundle reloads. Later bundles are added and removed live; a new default
/// certificate reloads (2.6 cannot change the default live).
#[test]
fn certificates_added_and_removed_apply_live_and_a_new_default_reloads() {
    netns::enter();
    let pki = Pki::new();
    let a = pki.issue("a.test", 1);
    let c = pki.issue("c.test", 1);
    let d = pki.issue("d.test", 1);
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let www = Backend::start("www");
    let catalog = work.path().join("catalog.json");
    write_catalog(
        &catalog,
        &[service(
            "www",
            &[&www],
            &["HAPROXY.VHOST=a.test,c.test,d.test"],
        )],
    );
    let sup = spawn(&catalog, &certs, &[]);
    wait_done(&sup, 1, T);
    wait_event(&sup, Event::CertNone, |_| true);
    assert!(
        TcpStream::connect(("127.0.0.1", HTTPS)).is_err(),
        "an HTTPS port without a certificate"
    );

    // The first bundle: the HTTPS bind appears (a reload).
    put(&certs, "a.pem", &a.bundle());
    wait_done(&sup, 2, T);
    wait_served(&sup, "a.test", &a);
    let r = curl(&pki, &https_url("a.test", "/"), "a.test", HTTPS, &[]);
    assert_eq!((r.code, r.body.as_str()), (200, "www"), "{r:?}");
    let pids = haproxies_under(sup.pid());

    // Added live.
    put(&certs, "c.pem", &c.bundle());
    wait_served(&sup, "c.test", &c);
    let r = curl(&pki, &https_url("c.test", "/"), "c.test", HTTPS, &[]);
    assert_eq!((r.code, r.body.as_str()), (200, "www"), "{r:?}");
    let e = wait_event(&sup, Event::CertAdded, |e| file_is(e, "c.pem"));
    assert_eq!(e["fields"]["live"], true, "{e}");

    // Removed live: c.test gets the default certificate again, which curl
    // refuses for that name.
    std::fs::remove_file(certs.join("c.pem")).unwrap();
    wait_served(&sup, "c.test", &a);
    let r = curl(&pki, &https_url("c.test", "/"), "c.test", HTTPS, &[]);
    assert!(!r.ok && r.code == 0, "{r:?}");
    let e = wait_event(&sup, Event::CertRemoved, |e| file_is(e, "c.pem"));
    assert_eq!(e["fields"]["live"], true, "{e}");
    assert_eq!(haproxies_under(sup.pid()), pids, "a process was started");
    assert_eq!(done_count(&sup), 2);

    // default.pem becomes the default certificate: a checked reload.
    put(&certs, "default.pem", &d.bundle());
    wait_event(&sup, Event::CertReload, |_| true);
    wait_done(&sup, 3, T);
    wait_served(&sup, "other.test", &d);
    wait_served(&sup, "a.test", &a);
    let r = curl(&pki, &https_url("d.test", "/"), "d.test", HTTPS, &[]);
    assert_eq!((r.code, r.body.as_str()), (200, "www"), "{r:?}");
}

/// Broken input changes nothing: a key that does not match, a file that is
/// not PEM, one that cannot be read, the directory gone. Each is an error
/// naming the file (or the directory); the certificates served stay. An
/// expired certificate is served, with a warning.
#[test]
fn broken_bundles_are_errors_naming_the_file_and_the_served_certificates_stay() {
    netns::enter();
    let pki = Pki::new();
    let a = pki.issue("a.test", 1);
    let a2 = pki.issue("a.test", 2);
    let old = pki.issue_valid("old.test", 1, Some(()));
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    put(&certs, "a.pem", &a.bundle());
    let www = Backend::start("www");
    let catalog = work.path().join("catalog.json");
    write_catalog(
        &catalog,
        &[service("www", &[&www], &["HAPROXY.VHOST=a.test,old.test"])],
    );
    let sup = spawn(&catalog, &certs, &[]);
    wait_done(&sup, 1, T);
    wait_served(&sup, "a.test", &a);
    let still_served = |what: &str| {
        let r = curl(&pki, &https_url("a.test", "/"), "a.test", HTTPS, &[]);
        assert_eq!(
            (r.code, r.body.as_str()),
            (200, "www"),
            "after {what}: {r:?}"
        );
        assert_eq!(served_cert("a.test").unwrap(), a.der, "after {what}");
    };

    // A key that does not match its certificate, replacing a good bundle.
    put(&certs, "a.pem", &format!("{}{}", a2.cert, a.key_pem()));
    let e = wait_event(&sup, Event::CertRejected, |e| file_is(e, "a.pem"));
    let err = e["fields"]["error"].as_str().unwrap_or("");
    assert!(err.contains("does not match"), "{e}");
    assert!(
        e["fields"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("/a.pem")),
        "{e}"
    );
    assert_eq!(e["fields"]["keeps_previous"], true, "{e}");
    still_served("a key mismatch");

    // Not PEM.
    put(&certs, "junk.pem", "this is not a certificate\n");
    let e = wait_event(&sup, Event::CertRejected, |e| file_is(e, "junk.pem"));
    assert!(
        e["fields"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("not PEM"),
        "{e}"
    );
    // Unreadable: a link to nothing (the test runs as root, which reads
    // any file whatever its mode).
    std::os::unix::fs::symlink(work.path().join("nowhere.pem"), certs.join("gone.pem")).unwrap();
    let e = wait_event(&sup, Event::CertRejected, |e| file_is(e, "gone.pem"));
    assert!(
        e["fields"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot read"),
        "{e}"
    );
    still_served("a non-PEM and an unreadable file");

    // Expired: served, with a warning.
    put(&certs, "old.pem", &old.bundle());
    let e = wait_event(&sup, Event::CertExpired, |e| file_is(e, "old.pem"));
    assert!(e["fields"]["not_after"].as_str().is_some(), "{e}");
    wait_served(&sup, "old.test", &old);

    // The directory disappears: an error naming it; nothing changes.
    let moved = work.path().join("certs.moved");
    std::fs::rename(&certs, &moved).unwrap();
    let e = wait_event(&sup, Event::CertDirError, |_| true);
    assert!(
        e["fields"]["dir"]
            .as_str()
            .unwrap_or("")
            .ends_with("/certs"),
        "{e}"
    );
    // Not a wait: the certificates stay served while the directory is
    // gone (500 ms of it).
    thread::sleep(Duration::from_millis(500));
    still_served("the directory disappeared");
    assert_eq!(served_cert("old.test").unwrap(), old.der);
    // It comes back, fixed: the good replacement applies.
    std::fs::rename(&moved, &certs).unwrap();
    put(&certs, "a.pem", &a2.bundle());
    wait_served(&sup, "a.test", &a2);
    assert_eq!(
        done_count(&sup),
        1,
        "a reload happened; log:\n{}",
        sup.log()
    );
    assert!(
        sup.events(Event::CertRemoved).is_empty(),
        "a certificate was removed; log:\n{}",
        sup.log()
    );
}
