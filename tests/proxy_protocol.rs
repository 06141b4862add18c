//! Issue #22, the frontend half: HAPROXY_PROXY_PROTOCOL_FROM. Behind a
//! cloud L4 balancer the proxy accepts the PROXY protocol (v1 and v2) from
//! the listed sources only, and their header's address is the client's.
//!
//! Real haproxy, real clients from several source addresses of the test's
//! own network namespace (127.0.0.2, 127.0.0.3, ... all reach 127.0.0.1):
//! curl `--haproxy-protocol` (v1, curl's own address), hand-written v1 and
//! v2 headers carrying another address. The backend echoes the request
//! head it got, so the test reads the X-Forwarded-For HAProxy sent; the
//! TCP frontend's client address is read from HAProxy's JSON access log.
//!
//! What HAProxy 2.6.12 does in the four cases (`tcp-request connection
//! expect-proxy layer4 if { src <list> }`), each asserted below:
//! - listed source, PROXY header: accepted; `src` (logs, X-Forwarded-For)
//!   is the header's address;
//! - listed source, no header: closed without an answer (HAProxy logs
//!   "Received something which does not look like a PROXY protocol header");
//! - other source, PROXY header: the header is the request line of an HTTP
//!   frontend: 400 Bad Request; a TCP frontend reads the first bytes and
//!   closes the connection (see docs/variables.md);
//! - other source, no header: served as before, its own address.
//!
//! Run as root: `cargo test --release --test proxy_protocol`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::process::Command;
use std::time::Duration;

use testkit::*;

const HTTP: u16 = 8080;
const TCP_PORT: u16 = 9100;
const T: Duration = Duration::from_secs(15);

/// A TCP connection to 127.0.0.1:`port` from `src` (any 127/8 address is
/// local in the namespace).
fn connect_from(src: Ipv4Addr, port: u16) -> TcpStream {
    // std has no bind-before-connect: a socket made by hand.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let addr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = addr(src, 0);
        let rc = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
        let remote = addr(Ipv4Addr::LOCALHOST, port);
        let rc = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        let s = TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

fn v1(client: Ipv4Addr, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n").into_bytes()
}

const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn v2_tcp4(client: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(client.octets());
    h.extend(Ipv4Addr::LOCALHOST.octets());
    h.extend(40001u16.to_be_bytes());
    h.extend(port.to_be_bytes());
    h
}

fn v2_tcp6(client: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.extend([0x21, 0x21, 0, 36]);
    h.extend(client.octets());
    h.extend(Ipv6Addr::LOCALHOST.octets());
    h.extend(40002u16.to_be_bytes());
    h.extend(port.to_be_bytes());
    h
}

/// Sends `prefix` then a GET for www.example.com from `src`; everything
/// the proxy answered until it closed (empty: closed without a word).
fn exchange(src: Ipv4Addr, port: u16, prefix: &[u8]) -> String {
    let mut s = connect_from(src, port);
    let mut out = prefix.to_vec();
    out.extend_from_slice(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n");
    // A closed connection may refuse the request bytes: what came back
    // is what counts.
    let _ = s.write_all(&out);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn status(answer: &str) -> Option<u16> {
    answer
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The X-Forwarded-For values the backend got, from its echo.
fn xff(answer: &str) -> Vec<String> {
    answer
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// A backend that answers every HTTP request with the request head it
/// received as the body; a raw TCP client gets the same.
fn head_echo_backend() -> u16 {
    HeadEcho {
        prefix: "".into(),
        pad: 0,
    }
    .start()
}

fn catalog(backend: u16) -> serde_json::Value {
    let inst = |id: &str, tags: &[&str]| {
        let mut t = vec!["HAPROXY.ENABLE=true".to_string()];
        t.extend(tags.iter().map(|s| s.to_string()));
        serde_json::json!({"id": id, "address": "127.0.0.1", "port": backend, "tags": t})
    };
    serde_json::json!({"services": [
        {"name": "www", "instances": [inst("www-1", &[])]},
        {"name": "raw", "instances": [inst("raw-1", &["HAPROXY.PROTOCOL=tcp", &format!("HAPROXY.FRONTEND.PORT={TCP_PORT}")])]},
    ]})
}

fn spawn(files: &Files, from: &str) -> Supervisor {
    let backend = head_echo_backend();
    std::fs::write(files.catalog(), catalog(backend).to_string()).unwrap();
    let args = files.render_args();
    let sup = Supervisor::spawn(
        &strs(&args),
        &[
            ("HAPROXY_LOG_FORMAT", "json"),
            ("HAPROXY_DOM", "example.com"),
            ("HAPROXY_PROXY_PROTOCOL_FROM", from),
        ],
    );
    wait_done(&sup, 1, T);
    let untrusted = Ipv4Addr::new(127, 0, 0, 3);
    wait_until(T, "www served to an untrusted source", || {
        status(&exchange(untrusted, HTTP, b"")) == Some(200)
    });
    sup
}

/// The HTTP frontend: v1 (curl's and by hand) and v2 (IPv4 and IPv6
/// clients) from listed sources give the header's address; a listed source
/// without a header is closed; a header from another source is a 400; and
/// another source without one is served as itself.
#[test]
fn http_frontend_takes_the_client_address_from_trusted_proxies_only() {
    netns::enter();
    let _orphans = OrphanGuard;
    let files = Files::new();
    let sup = spawn(&files, "127.0.0.2,127.0.0.16/28,2001:db8::/32");
    let trusted = Ipv4Addr::new(127, 0, 0, 2);
    let trusted_net = Ipv4Addr::new(127, 0, 0, 20);
    let untrusted = Ipv4Addr::new(127, 0, 0, 3);
    let client = Ipv4Addr::new(203, 0, 113, 7);

    // curl's own v1 header, from a listed source: its address, once.
    let out = Command::new(require("curl"))
        .args(["-sS", "--max-time", "5", "--haproxy-protocol"])
        .args(["--interface", "127.0.0.2", "-H", "Host: www.example.com"])
        .arg(format!("http://127.0.0.1:{HTTP}/"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {out:?}");
    assert_eq!(xff(&body), ["127.0.0.2"], "{body}");

    // v1 by hand: another address than the balancer's own.
    let a = exchange(trusted, HTTP, &v1(client, HTTP));
    assert_eq!(status(&a), Some(200), "{a}");
    assert_eq!(xff(&a), ["203.0.113.7"], "{a}");
    // v2, IPv4 and IPv6 clients, from a source inside a listed network.
    let a = exchange(
        trusted_net,
        HTTP,
        &v2_tcp4(Ipv4Addr::new(198, 51, 100, 9), HTTP),
    );
    assert_eq!(xff(&a), ["198.51.100.9"], "{a}");
    let a = exchange(
        trusted_net,
        HTTP,
        &v2_tcp6("2001:db8::5".parse().unwrap(), HTTP),
    );
    assert_eq!(xff(&a), ["2001:db8::5"], "{a}");
    // The header's address is the one logged too.
    wait_until(T, "the access log names the header's client", || {
        sup.log().contains("\"client_ip\":\"203.0.113.7\"")
    });

    // A listed source that sends no header: closed without an answer,
    // never served as itself.
    let a = exchange(trusted, HTTP, b"");
    assert_eq!(
        a, "",
        "a trusted source without a PROXY header was answered"
    );
    let a = exchange(trusted_net, HTTP, b"");
    assert_eq!(a, "");

    // Another source that sends one: the header is a bad request, its
    // address is never used.
    for header in [v1(client, HTTP), v2_tcp4(client, HTTP)] {
        let a = exchange(untrusted, HTTP, &header);
        assert_eq!(status(&a), Some(400), "{a}");
        assert!(!a.contains("203.0.113.7"), "{a}");
    }
    // 127.0.0.1 is not listed either.
    let a = exchange(Ipv4Addr::LOCALHOST, HTTP, &v1(client, HTTP));
    assert_eq!(status(&a), Some(400), "{a}");

    // Another source without a header: served, as itself.
    let a = exchange(untrusted, HTTP, b"");
    assert_eq!(status(&a), Some(200), "{a}");
    assert_eq!(xff(&a), ["127.0.0.3"], "{a}");

    sup.stop();
}

/// A per-service TCP frontend: a listed source's header gives the client
/// address HAProxy logs, and the header is not passed on to the backend;
/// a listed source without one is closed.
#[test]
fn tcp_frontend_takes_the_client_address_from_trusted_proxies_only() {
    netns::enter();
    let _orphans = OrphanGuard;
    let files = Files::new();
    let sup = spawn(&files, "127.0.0.2");
    let trusted = Ipv4Addr::new(127, 0, 0, 2);
    let untrusted = Ipv4Addr::new(127, 0, 0, 3);

    let a = exchange(
        trusted,
        TCP_PORT,
        &v2_tcp4(Ipv4Addr::new(198, 51, 100, 4), TCP_PORT),
    );
    // The backend got the request, not the header (it echoes its first
    // line: the request line).
    assert_eq!(status(&a), Some(200), "{a}");
    assert!(a.contains("\r\n\r\nGET / HTTP/1.1"), "{a}");
    let a = exchange(
        trusted,
        TCP_PORT,
        &v1(Ipv4Addr::new(198, 51, 100, 5), TCP_PORT),
    );
    assert!(a.contains("\r\n\r\nGET / HTTP/1.1"), "{a}");
    for ip in ["198.51.100.4", "198.51.100.5"] {
        wait_until(T, "the TCP access log names the header's client", || {
            sup.log().lines().any(|l| {
                l.contains("\"event\":\"tcp_session\"")
                    && l.contains(&format!("\"client_ip\":\"{ip}\""))
            })
        });
    }
    assert_eq!(exchange(trusted, TCP_PORT, b""), "");
    // Another source without a header: served as before, at once (its
    // first byte cannot start a header).
    let t0 = std::time::Instant::now();
    let a = exchange(untrusted, TCP_PORT, b"");
    assert_eq!(status(&a), Some(200), "{a}");
    println!(
        "TCP frontend, a source not listed without a header: answered in {:?}",
        t0.elapsed()
    );
    // ... and with one (v1 or v2): refused, closed without reaching the
    // backend.
    for header in [
        v1(Ipv4Addr::new(198, 51, 100, 6), TCP_PORT),
        v2_tcp4(Ipv4Addr::new(198, 51, 100, 7), TCP_PORT),
    ] {
        assert_eq!(
            exchange(untrusted, TCP_PORT, &header),
            "",
            "a header from {untrusted}"
        );
    }
    assert!(
        !sup.log().contains("198.51.100.6") && !sup.log().contains("198.51.100.7"),
        "a refused header's address was used"
    );
    sup.stop();
}

/// A bad list stops the start with exit code 2, naming the variable and
/// the item.
#[test]
fn a_bad_source_list_is_exit_2_naming_it() {
    netns::enter();
    let files = Files::new();
    std::fs::write(files.catalog(), r#"{"services":[]}"#).unwrap();
    let args = files.render_args();
    let out = run_once(
        &strs(&args),
        &[("HAPROXY_PROXY_PROTOCOL_FROM", "10.0.0.0/8,10.1.2.3/16")],
        T,
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("HAPROXY_PROXY_PROTOCOL_FROM")
            && out.stderr.contains("\"10.1.2.3/16\": host bits are set"),
        "{out:?}"
    );
}
