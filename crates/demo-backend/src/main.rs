//! `demo-backend`: a small, fast HTTP/1.x backend for the demo, the tests,
//! the docker image test and the benchmarks.
//!
//! ```text
//! demo-backend [--listen ADDR] [--name NAME] [--proxy-protocol]
//! ```
//!
//! * `--listen ADDR` (default `127.0.0.1:9001`); port 0 picks a free port.
//!   The first stdout line is always `listening <bound address>` (flushed),
//!   so a caller can learn the port.
//! * `--name NAME` (default `demo-backend`): every request gets `200 OK`,
//!   `Content-Type: text/plain` and the body `NAME\n`; `GET /health` gets
//!   `ok\n`; `GET /client` gets the client's address and port
//!   (`127.0.0.2:40112\n`): the PROXY header's source with
//!   `--proxy-protocol`, else the TCP peer's.
//! * `--proxy-protocol`: every connection must start with a PROXY protocol
//!   header, v1 (text) or v2 (binary), told apart by their signatures; a
//!   connection without one is closed unanswered, as a server configured for
//!   it does. `PROXY UNKNOWN` (v1) and the `LOCAL` command (v2, health
//!   checks) carry no client: `/client` answers the TCP peer.
//!
//! Keep-alive is supported (HTTP/1.1 default, `Connection: close` honoured;
//! HTTP/1.0 closes unless `Connection: keep-alive`), pipelined requests are
//! answered in order with one write per batch, request bodies are skipped by
//! `Content-Length` (a chunked request body is answered and the connection
//! closed). A request with `Connection: upgrade` and an `Upgrade` header
//! (a WebSocket handshake, say) gets `101 Switching Protocols`, and from then
//! on the connection echoes every byte it receives: a long-lived tunnel, as
//! HAProxy carries WebSockets. Responses are pre-rendered once at start-up, and each connection
//! reuses one input and one output buffer, so the hot path does not allocate.
//! SIGTERM or SIGINT exits with status 0.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// Largest request head accepted before answering 431 and closing.
const MAX_HEAD: usize = 64 * 1024;
/// Read granularity.
const READ_CHUNK: usize = 8 * 1024;

const USAGE: &str = "usage: demo-backend [--listen ADDR] [--name NAME]\n\
  --listen ADDR  address to listen on (default 127.0.0.1:9001; port 0 = any free port)\n\
  --name NAME    body of every response (default demo-backend)\n\
  --proxy-protocol  require a PROXY protocol header (v1 or v2) on every connection\n";

struct Args {
    listen: String,
    name: String,
    proxy_protocol: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:9001".to_string(),
        name: "demo-backend".to_string(),
        proxy_protocol: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |flag: &str| -> Result<String, String> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) => Ok(v),
                None => Err(format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "--listen" | "-l" => args.listen = value("--listen")?,
            "--name" | "-n" => args.name = value("--name")?,
            "--proxy-protocol" => args.proxy_protocol = true,
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.name.contains(['\r', '\n']) {
        return Err("--name must not contain a line break".to_string());
    }
    Ok(args)
}

/// One pre-rendered response: `bytes[..head_len]` is the head (for HEAD
/// requests), `bytes` the whole response.
struct Canned {
    bytes: Vec<u8>,
    head_len: usize,
}

impl Canned {
    fn new(status: &str, body: &str, keep_alive: bool) -> Canned {
        let conn = if keep_alive { "keep-alive" } else { "close" };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
            body.len()
        );
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        Canned {
            bytes,
            head_len: head.len(),
        }
    }

    fn get(&self, head_only: bool) -> &[u8] {
        if head_only {
            &self.bytes[..self.head_len]
        } else {
            &self.bytes
        }
    }
}

/// Every response the server can give, rendered once.
struct Responses {
    name_keep: Canned,
    name_close: Canned,
    health_keep: Canned,
    health_close: Canned,
    bad_request: Canned,
    too_large: Canned,
}

impl Responses {
    fn new(name: &str) -> Responses {
        let body = format!("{name}\n");
        Responses {
            name_keep: Canned::new("200 OK", &body, true),
            name_close: Canned::new("200 OK", &body, false),
            health_keep: Canned::new("200 OK", "ok\n", true),
            health_close: Canned::new("200 OK", "ok\n", false),
            bad_request: Canned::new("400 Bad Request", "bad request\n", false),
            too_large: Canned::new(
                "431 Request Header Fields Too Large",
                "request head too large\n",
                false,
            ),
        }
    }
}

/// What one parsed request head asks for.
struct Request {
    head_only: bool,
    health: bool,
    /// `GET /client`: answered with the client's address.
    client: bool,
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
    /// `Connection: upgrade` and an `Upgrade` header: answered 101, then
    /// the connection echoes.
    upgrade: bool,
    /// `Sec-WebSocket-Key`, answered with its `Sec-WebSocket-Accept`.
    ws_key: Option<Vec<u8>>,
}

/// Position just past the first `\r\n\r\n` in `buf`, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &s[start..end.max(start)]
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Parses a request head (everything up to and including the blank line).
fn parse_head(head: &[u8]) -> Option<Request> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| match l.last() {
        Some(b'\r') => &l[..l.len() - 1],
        _ => l,
    });
    let request_line = lines.next()?;
    let mut parts = request_line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return None,
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    let mut req = Request {
        head_only: method == b"HEAD",
        health: path == b"/health",
        client: path == b"/client",
        keep_alive: http11,
        content_length: 0,
        chunked: false,
        upgrade: false,
        ws_key: None,
    };
    let (mut conn_upgrade, mut upgrade_header) = (false, false);
    for line in lines {
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_header = !value.is_empty();
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            req.ws_key = Some(value.to_vec());
        }
        if name.eq_ignore_ascii_case(b"connection") {
            conn_upgrade |= has_token(value, b"upgrade");
            if has_token(value, b"close") {
                req.keep_alive = false;
            } else if has_token(value, b"keep-alive") {
                req.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            req.content_length = std::str::from_utf8(value).ok()?.parse().ok()?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            req.chunked = has_token(value, b"chunked");
        }
    }
    req.upgrade = conn_upgrade && upgrade_header;
    Some(req)
}

/// The v2 signature (12 bytes).
const PP2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY header at the start of `buf`: `Ok(Some((length, client)))` when
/// complete (client `None` for `UNKNOWN`/`LOCAL`), `Ok(None)` when more
/// bytes are needed, `Err` when it is no PROXY header.
#[allow(clippy::type_complexity)]
fn parse_proxy(buf: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ()> {
    let n = buf.len().min(PP2_SIG.len());
    if buf[..n] == PP2_SIG[..n] {
        if buf.len() < 16 {
            return Ok(None);
        }
        let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if buf[12] >> 4 != 2 {
            return Err(());
        }
        if buf.len() < len {
            return Ok(None);
        }
        let body = &buf[16..len];
        let client = match (buf[12] & 0xf, buf[13] >> 4) {
            (0, _) => None,
            (1, 1) if body.len() >= 12 => Some(SocketAddr::from((
                [body[0], body[1], body[2], body[3]],
                u16::from_be_bytes([body[8], body[9]]),
            ))),
            (1, 2) if body.len() >= 36 => {
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&body[..16]);
                Some(SocketAddr::from((
                    ip,
                    u16::from_be_bytes([body[32], body[33]]),
                )))
            }
            (1, 0) => None,
            _ => return Err(()),
        };
        return Ok(Some((len, client)));
    }
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err(());
    }
    // v1: at most 107 bytes, ending in CRLF.
    let Some(end) = buf.windows(2).take(107).position(|w| w == b"\r\n") else {
        return if buf.len() >= 107 { Err(()) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ())?;
    let f: Vec<&str> = line.split(' ').collect();
    let client = match f.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => Some(SocketAddr::new(
            src.parse().map_err(|_| ())?,
            sport.parse().map_err(|_| ())?,
        )),
        _ => return Err(()),
    };
    Ok(Some((end + 2, client)))
}

/// Reads the PROXY header off `stream`: the client it names (or the
/// peer's address) and the bytes read past it. `None`: not a PROXY
/// header, or the peer closed first.
async fn read_proxy(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Option<SocketAddr>>> {
    loop {
        if !buf.is_empty() {
            match parse_proxy(buf) {
                Err(()) => return Ok(None),
                Ok(Some((len, client))) => {
                    buf.drain(..len);
                    return Ok(Some(client));
                }
                Ok(None) => {}
            }
        }
        buf.reserve(READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    responses: Arc<Responses>,
    proxy_protocol: bool,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let peer = stream.peer_addr().ok();
    let client = if proxy_protocol {
        match read_proxy(&mut stream, &mut buf).await? {
            None => return Ok(()),
            Some(c) => c.or(peer),
        }
    } else {
        peer
    };
    // Bytes already read past the PROXY header are a request's.
    let mut pending = !buf.is_empty();
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // Bytes of a request body still to be discarded.
    let mut skip: usize = 0;
    // Where the search for the end of the current head resumes.
    let mut scanned: usize = 0;
    loop {
        if !std::mem::take(&mut pending) {
            buf.reserve(READ_CHUNK);
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        if skip > 0 {
            let n = skip.min(buf.len());
            buf.drain(..n);
            skip -= n;
            if buf.is_empty() {
                continue;
            }
        }
        let mut pos = 0;
        let mut close = false;
        while let Some(end) = find_head_end(&buf[pos..], scanned) {
            scanned = 0;
            let head_end = pos + end;
            let resp = match parse_head(&buf[pos..head_end]) {
                Some(r) => r,
                None => {
                    out.extend_from_slice(responses.bad_request.get(false));
                    close = true;
                    break;
                }
            };
            if resp.upgrade {
                out.extend_from_slice(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n",
                );
                if let Some(key) = &resp.ws_key {
                    out.extend_from_slice(b"Sec-WebSocket-Accept: ");
                    out.extend_from_slice(ws_accept(key).as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                // What came after the head is already tunnel traffic.
                out.extend_from_slice(&buf[head_end..]);
                stream.write_all(&out).await?;
                return echo(stream).await;
            }
            let keep = resp.keep_alive && !resp.chunked;
            if resp.client {
                let body = client.map_or("unknown\n".to_string(), |c| format!("{c}\n"));
                out.extend_from_slice(Canned::new("200 OK", &body, keep).get(resp.head_only));
            } else {
                let canned = match (resp.health, keep) {
                    (true, true) => &responses.health_keep,
                    (true, false) => &responses.health_close,
                    (false, true) => &responses.name_keep,
                    (false, false) => &responses.name_close,
                };
                out.extend_from_slice(canned.get(resp.head_only));
            }
            pos = head_end;
            if !keep {
                close = true;
                break;
            }
            let avail = buf.len() - pos;
            if resp.content_length <= avail {
                pos += resp.content_length;
            } else {
                skip = resp.content_length - avail;
                pos = buf.len();
            }
        }
        if !close {
            buf.drain(..pos);
            scanned = buf.len();
            if buf.len() > MAX_HEAD {
                out.extend_from_slice(responses.too_large.get(false));
                close = true;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            linger(&mut stream, &mut buf).await;
            return Ok(());
        }
    }
}

/// RFC 6455's `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
fn ws_accept(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// An upgraded connection: every byte read is written back, until the
/// peer closes.
async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

/// After our FIN, reads (and discards) what the client still sends until it
/// closes, for at most a second: closing a socket with unread input sends a
/// RST, which can destroy the response before the client has read it.
async fn linger(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let drain = async {
        loop {
            buf.clear();
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.capacity() > MAX_HEAD => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

async fn run(listener: TcpListener, responses: Arc<Responses>, proxy_protocol: bool) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let responses = Arc::clone(&responses);
                tokio::spawn(async move {
                    let _ = serve(stream, responses, proxy_protocol).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("demo-backend: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprint!("demo-backend: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let addr: SocketAddr = match tokio::net::lookup_host(&args.listen).await {
        Ok(mut addrs) => match addrs.next() {
            Some(a) => a,
            None => {
                eprintln!("demo-backend: {:?} resolves to nothing", args.listen);
                std::process::exit(2);
            }
        },
        Err(e) => {
            eprintln!("demo-backend: bad --listen {:?}: {e}", args.listen);
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-backend: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening {bound}");
        let _ = stdout.flush();
    }
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let responses = Arc::new(Responses::new(&args.name));
    tokio::spawn(run(listener, responses, args.proxy_protocol));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_head_end_across_resumes() {
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET";
        assert_eq!(find_head_end(buf, 0), Some(27));
        assert_eq!(find_head_end(buf, 25), Some(27));
        assert_eq!(find_head_end(&buf[27..], 0), None);
        assert_eq!(find_head_end(b"\r\n\r", 0), None);
    }

    #[test]
    fn parses_heads() {
        let r = parse_head(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert!(r.health && r.keep_alive && !r.head_only);
        let r = parse_head(b"POST / HTTP/1.1\r\nconnection: Close\r\ncontent-length: 5\r\n\r\n")
            .unwrap();
        assert!(!r.health && !r.keep_alive && r.content_length == 5);
        let r = parse_head(b"HEAD / HTTP/1.0\r\n\r\n").unwrap();
        assert!(r.head_only && !r.keep_alive);
        let r = parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(r.keep_alive);
        assert!(parse_head(b"GET / HTTP/2.0\r\n\r\n").is_none());
        assert!(parse_head(b"GARBAGE\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_none());
        let r = parse_head(
            b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert!(r.upgrade);
        // RFC 6455's example.
        assert_eq!(
            ws_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        // Either half alone is no upgrade.
        assert!(
            !parse_head(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .upgrade
        );
        assert!(
            !parse_head(b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n")
                .unwrap()
                .upgrade
        );
    }

    #[test]
    fn proxy_headers_v1_and_v2() {
        let v1 = b"PROXY TCP4 127.0.0.2 127.0.0.1 40112 80\r\nGET";
        assert_eq!(
            parse_proxy(v1),
            Ok(Some((41, Some("127.0.0.2:40112".parse().unwrap()))))
        );
        assert_eq!(parse_proxy(&v1[..20]), Ok(None));
        assert_eq!(parse_proxy(b"PROXY UNKNOWN\r\n"), Ok(Some((15, None))));
        assert_eq!(parse_proxy(b"GET / HTTP/1.1\r\n"), Err(()));
        let mut v2 = PP2_SIG.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 127, 0, 0, 3, 127, 0, 0, 1, 0x9c, 0x40, 0, 80,
        ]);
        assert_eq!(
            parse_proxy(&v2),
            Ok(Some((28, Some("127.0.0.3:40000".parse().unwrap()))))
        );
        assert_eq!(parse_proxy(&v2[..20]), Ok(None));
        let mut local = PP2_SIG.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse_proxy(&local), Ok(Some((16, None))));
    }

    #[test]
    fn canned_responses_have_correct_length() {
        let r = Responses::new("web-1");
        let text = String::from_utf8(r.name_keep.bytes.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 6\r\n"));
        assert!(text.ends_with("\r\n\r\nweb-1\n"));
        assert_eq!(r.name_keep.get(true).len(), text.len() - 6);
    }
}
