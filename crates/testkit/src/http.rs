//! A blocking HTTP/1.1 client (std only) whose failures come in classes
//! (refused, reset, timeout, other): the one the tests, the load generators
//! and the benchmarks all use. One request per connection
//! (`Connection: close`, [`http_request`], [`request_at`]) or one keep-alive
//! connection at a time ([`KeepAlive`]).

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why an HTTP exchange failed, by kind, so tests and benchmarks count and
/// report failures alike. Each variant carries a detail message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The TCP connection was refused (nothing listening).
    Refused(String),
    /// The connection was reset or aborted, or the server closed it before a
    /// complete response arrived.
    Reset(String),
    /// Connecting or reading took longer than the timeout.
    Timeout(String),
    /// Anything else: bad address, malformed response, other I/O errors.
    Other(String),
}

impl HttpError {
    /// `"refused"`, `"reset"`, `"timeout"` or `"other"`.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Refused(_) => "refused",
            HttpError::Reset(_) => "reset",
            HttpError::Timeout(_) => "timeout",
            HttpError::Other(_) => "other",
        }
    }

    fn from_io(e: &std::io::Error, during: &str) -> HttpError {
        let msg = format!("{during}: {e}");
        match e.kind() {
            ErrorKind::ConnectionRefused => HttpError::Refused(msg),
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => HttpError::Reset(msg),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => HttpError::Timeout(msg),
            _ => HttpError::Other(msg),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Refused(m)
            | HttpError::Reset(m)
            | HttpError::Timeout(m)
            | HttpError::Other(m) => write!(f, "{}: {m}", self.kind()),
        }
    }
}

impl std::error::Error for HttpError {}

/// `GET path` with the given `Host` header on a new connection to `addr`
/// (`"127.0.0.1:8080"`; a leading `http://` is ignored), with
/// `Connection: close`. `timeout` bounds the whole exchange. Returns the
/// status and the body (chunked bodies are decoded).
pub fn http_get(
    addr: &str,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    http_request(addr, "GET", host, path, None, timeout)
}

/// Sends `request` verbatim (a whole HTTP/1.x request head, and body if
/// any) on a new connection to `addr` and reads one response: for requests
/// the other helpers cannot write (no `Host`, a hostile `Host`, extra
/// headers). Returns the status and the body.
pub fn http_raw(addr: &str, request: &[u8], timeout: Duration) -> Result<(u16, String), HttpError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(&resolve(addr)?, timeout)?;
    send(&mut stream, request, deadline)?;
    let (status, body) = read_response(&mut stream, deadline)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A new connection to `addr` (`TCP_NODELAY`).
fn connect(addr: &SocketAddr, timeout: Duration) -> Result<TcpStream, HttpError> {
    let s = TcpStream::connect_timeout(addr, timeout)
        .map_err(|e| HttpError::from_io(&e, &format!("connect {addr}")))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Writes the whole request, by `deadline`.
fn send(stream: &mut TcpStream, request: &[u8], deadline: Instant) -> Result<(), HttpError> {
    let _ = stream.set_write_timeout(Some(remaining(deadline)?));
    stream
        .write_all(request)
        .map_err(|e| HttpError::from_io(&e, "send request"))
}

/// One HTTP/1.1 request on a new connection with `Connection: close`.
/// `body`, when given, is sent with a `Content-Length` (and
/// `Content-Type: application/json`). `timeout` bounds the whole exchange.
pub fn http_request(
    addr: &str,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let r = request_at(&resolve(addr)?, method, host, path, body, timeout)?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The body (a chunked one decoded).
    pub body: Vec<u8>,
    /// The server ends the connection after it (`Connection: close`, or
    /// HTTP/1.0 without keep-alive, or a body delimited by the close).
    pub closes: bool,
}

impl Response {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, trailing whitespace trimmed (a demo backend's
    /// name).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_string()
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, HttpError> {
    let hostport = addr.strip_prefix("http://").unwrap_or(addr);
    let hostport = hostport.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| HttpError::Other(format!("bad address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| HttpError::Other(format!("address {addr:?} resolves to nothing")))
}

/// `GET /` with `Host: host` on a new connection to `addr`, with
/// `Connection: close` (see [`request_at`]).
pub fn get_at(addr: &SocketAddr, host: &str, timeout: Duration) -> Result<Response, HttpError> {
    request_at(addr, "GET", host, "/", None, timeout)
}

/// One request on a new connection with `Connection: close`; `body`, when
/// given, is sent with a `Content-Length` (and
/// `Content-Type: application/json`). `timeout` bounds the whole exchange,
/// connect included. After the response the connection is read to its end,
/// so the server closes first and TIME_WAIT stays on its side, not on the
/// client's ephemeral ports (a load of ~20k connections a second would run
/// out of them); what ends the connection after a complete response does not
/// make it fail.
pub fn request_at(
    addr: &SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, timeout)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    if let Some(b) = body {
        req.extend_from_slice(b);
    }
    send(&mut stream, &req, deadline)?;
    let response = read_response_full(&mut stream, deadline)?;
    let mut rest = Vec::new();
    while matches!(read_more(&mut stream, &mut rest, deadline), Ok(n) if n > 0) {
        rest.clear();
    }
    Ok(response)
}

/// The status of one `GET /` (any status), or the failure.
pub fn status_of(addr: &SocketAddr, host: &str, timeout: Duration) -> Result<u16, HttpError> {
    get_at(addr, host, timeout).map(|r| r.status)
}

/// Polls `GET /` of `host` every 20 ms until it answers `want` (true) or
/// `timeout` passes (false).
pub fn wait_status(addr: &SocketAddr, host: &str, want: u16, timeout: Duration) -> bool {
    crate::poll_until(timeout, || {
        status_of(addr, host, Duration::from_secs(1)).ok() == Some(want)
    })
}

/// One HTTP/1.1 keep-alive connection of a client, as browsers and most
/// HTTP client libraries keep: requests go one at a time on the same
/// connection; a new one is opened only when there is none (at first, after
/// the server ended the connection, or after a failure).
#[derive(Debug, Default)]
pub struct KeepAlive {
    stream: Option<TcpStream>,
    /// Connections opened (successful connects) so far.
    pub opened: u64,
}

impl KeepAlive {
    /// One `GET /` with `Host: host` on the connection (opened first when
    /// there is none). The response is read by its framing; a response that
    /// ends the connection ends it here too. A request that gets no complete
    /// response fails and ends the connection: there is no retry, so a
    /// connection closed while a request is on its way shows up as a failure
    /// (`Reset`) — what a client that does not retry sees. `timeout` bounds
    /// the whole exchange, connect included.
    pub fn get(
        &mut self,
        addr: &SocketAddr,
        host: &str,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let deadline = Instant::now() + timeout;
        let result = self.exchange(addr, host, timeout, deadline);
        if !matches!(result, Ok(Response { closes: false, .. })) {
            self.stream = None;
        }
        result
    }

    fn exchange(
        &mut self,
        addr: &SocketAddr,
        host: &str,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Response, HttpError> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = connect(addr, timeout)?;
                self.opened += 1;
                self.stream.insert(s)
            }
        };
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        send(stream, request.as_bytes(), deadline)?;
        read_response_full(stream, deadline)
    }
}

fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(HttpError::Timeout("deadline passed".into()));
    }
    Ok(deadline - now)
}

/// Reads more bytes into `buf`, honouring `deadline`; Ok(0) on EOF.
fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, HttpError> {
    let mut chunk = [0u8; 8192];
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| HttpError::Other(format!("set_read_timeout: {e}")))?;
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(HttpError::from_io(&e, "read response")),
        }
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn read_response(stream: &mut TcpStream, deadline: Instant) -> Result<(u16, Vec<u8>), HttpError> {
    read_response_full(stream, deadline).map(|r| (r.status, r.body))
}

/// Reads one response, by its framing.
fn read_response_full(stream: &mut TcpStream, deadline: Instant) -> Result<Response, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n", 0) {
            break p + 4;
        }
        if read_more(stream, &mut buf, deadline)? == 0 {
            return Err(HttpError::Reset(if buf.is_empty() {
                "connection closed without a response".into()
            } else {
                format!("connection closed mid-head after {} bytes", buf.len())
            }));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = match (version.starts_with("HTTP/1."), parts.next().map(str::parse)) {
        (true, Some(Ok(s))) => s,
        _ => return Err(HttpError::Other(format!("bad status line {status_line:?}"))),
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    // HTTP/1.0 closes unless it says keep-alive.
    let mut closes = version == "HTTP/1.0";
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        closes = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") && version == "HTTP/1.0" {
                        closes = false;
                    }
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    value
                        .parse()
                        .map_err(|_| HttpError::Other(format!("bad Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
    }
    let mut body = buf.split_off(head_end);
    let no_body = status / 100 == 1 || status == 204 || status == 304;
    if no_body {
        body.clear();
    } else if chunked {
        body = read_chunked(stream, body, deadline)?;
    } else if let Some(len) = content_length {
        while body.len() < len {
            if read_more(stream, &mut body, deadline)? == 0 {
                return Err(HttpError::Reset(format!(
                    "connection closed after {} of {len} body bytes",
                    body.len()
                )));
            }
        }
        body.truncate(len);
    } else {
        while read_more(stream, &mut body, deadline)? != 0 {}
        closes = true;
    }
    Ok(Response {
        status,
        body,
        closes,
    })
}

fn read_chunked(
    stream: &mut TcpStream,
    mut raw: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        // Chunk size line.
        let line_end = loop {
            if let Some(p) = find(&raw, b"\r\n", pos) {
                break p;
            }
            if read_more(stream, &mut raw, deadline)? == 0 {
                return Err(HttpError::Reset(
                    "connection closed inside a chunked body".into(),
                ));
            }
        };
        let size_text = String::from_utf8_lossy(&raw[pos..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Other(format!("bad chunk size {size_text:?}")))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers are skipped up to the empty line that ends them, so a
            // keep-alive connection is left at the next response.
            loop {
                match find(&raw, b"\r\n", pos) {
                    Some(p) if p == pos => return Ok(out),
                    Some(p) => pos = p + 2,
                    None => {
                        if read_more(stream, &mut raw, deadline)? == 0 {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        while raw.len() < pos + size + 2 {
            if read_more(stream, &mut raw, deadline)? == 0 {
                return Err(HttpError::Reset("connection closed inside a chunk".into()));
            }
        }
        out.extend_from_slice(&raw[pos..pos + size]);
        pos += size + 2;
    }
}

/// An upgraded connection through the HTTP frontend (a WebSocket
/// handshake; the demo backend answers 101 and echoes every byte).
pub struct Tunnel(pub std::net::TcpStream);

impl Tunnel {
    /// Opens one through the frontend at [`FRONT`](crate::FRONT) for `host`;
    /// panics unless the answer is 101.
    pub fn open(host: &str) -> Tunnel {
        Tunnel::open_at(crate::FRONT, host)
    }

    /// [`Tunnel::open`] through the frontend at `front`.
    pub fn open_at(front: &str, host: &str) -> Tunnel {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(front).expect("connect to the frontend");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut b).expect("101 from the backend"),
                1,
                "closed in the handshake"
            );
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        Tunnel(s)
    }

    /// Sends `msg` and reads it back; an error is a cut.
    pub fn echo(&mut self, msg: &str) -> Result<(), String> {
        use std::io::{Read, Write};
        self.0
            .write_all(msg.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut back = vec![0u8; msg.len()];
        self.0.read_exact(&mut back).map_err(|e| e.to_string())?;
        (back == msg.as_bytes())
            .then_some(())
            .ok_or_else(|| format!("echoed {:?}", String::from_utf8_lossy(&back)))
    }

    /// Whether the proxy closed it: a read sees the end (or an error)
    /// within `within`.
    pub fn closed_within(&mut self, within: std::time::Duration) -> bool {
        use std::io::Read;
        self.0.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 1];
        let closed = match self.0.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.0
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        closed
    }
}
