//! The Consul source, built for 10,000 services without one long poll per
//! service.
//!
//! Two blocking queries run at all times, whatever the number of services:
//!
//! - `/v1/catalog/services` — every service name with the union of its
//!   instances' tags. Says which services are exposed and how.
//! - `/v1/health/state/any` — every check. Grouped by service, each group is
//!   reduced to a fingerprint (check ids, statuses, modify indexes).
//!
//! When either fires, only the exposed services that are new, whose tags
//! changed or whose check fingerprint changed are fetched with
//! `/v1/health/service/<name>` (a few at a time): every instance with its
//! checks (passing when all of them pass, as `?passing` filters) and its
//! `CreateIndex`, the lowest of which is the service's seniority when two
//! services claim one route (SPEC §12). A change the two queries cannot
//! attribute to a service (say an instance without checks re-registered
//! with a new address) refetches every exposed service.
//!
//! Index rules (SPEC §2): an index that goes backwards resets to 0 (and
//! forces a full refetch); an unchanged index with the same answer changes
//! nothing. A different answer under the same index is a change: Consul
//! 1.8 filters answers by the token's ACL policy without moving the index,
//! so a policy that stops granting service reads shows as the same index
//! with fewer (or no) services, within two blocking waits (the query in
//! flight at the change still answers with the old rights). Errors and
//! timeouts keep the last good catalog and retry with jittered backoff; so
//! does an answer without a known leader. After an error, an empty catalog
//! replacing a non-empty one is believed only once it has been seen for
//! [`EMPTY_GRACE`]: an agent that restarts answers "nothing" before it has
//! synced.
//!
//! Agents (issue 14): a list of addresses, the first preferred. A read
//! that an agent does not answer moves on to the next address at once
//! ([`Client`]); a probe asks the first address again every
//! [`PROBE_INTERVAL`] while it is not in use, and every address while all
//! fail, and wakes the watcher when one answers, so a returning agent is
//! read within the probe interval instead of after the backoff. Reads may
//! be `?stale` with a maximum staleness ([`Consistency`]). TLS and token
//! failures name the setting that fixes them.
//!
//! An ACL denial (HTTP 403) is reported as an authorization error naming
//! where the token came from, not as an outage. Consul 1.8 answers a
//! token without read rights (the anonymous one included) with empty lists
//! rather than 403: a catalog without even the `consul` service itself is
//! reported as most likely that.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::events::Event;
use crate::model::Instance;

mod watch;
mod wire;

pub use watch::{next_index, watch};
pub use wire::{decode_catalog_services, decode_health_service, decode_health_state};
use wire::{instances_of, ServiceEntry};

/// How long a blocking query waits on Consul's side.
pub const WAIT: Duration = Duration::from_secs(55);
/// The longest answer body read by default. The largest answer is
/// `/v1/health/state/any`, about 450 bytes per check with a few tags:
/// 10,000 services of three instances with one check each (plus a node
/// check per node) is about 15 MB, so this leaves twice that room.
pub const MAX_ANSWER: u64 = 32 << 20;
/// How long a read may go without progress beyond what it asked for: an
/// answer's headers after the blocking wait (and Consul's jitter of up to
/// wait/16), each piece of its body after the last.
pub const READ_MARGIN: Duration = Duration::from_secs(5);
/// How long a body may take once its first byte came (a slow link, not a
/// stall: each piece must still come within [`READ_MARGIN`]).
const BODY_DEADLINE: Duration = Duration::from_secs(60);
/// How much of an error answer's body is read.
const ERROR_BODY: u64 = 4096;
/// How long an empty catalog must persist after an error before it replaces
/// a non-empty one.
pub const EMPTY_GRACE: Duration = Duration::from_secs(30);
/// How often a watcher that has moved off its first address, or whose
/// agent is away, asks the first address whether it answers again
/// (jittered in [d/2, d]). A probe is one `/v1/status/leader`; against an
/// agent that is down it is a refused connection, which costs nothing.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("consul request {url} failed: {}", chain(.source))]
    Http { url: String, source: reqwest::Error },
    #[error("consul TLS with {url} failed: {problem}")]
    Tls { url: String, problem: String },
    #[error(
        "consul authorization error: {url} answered 403 ({body}) to a request made with {token_source}; the token needs service:read and node:read"
    )]
    Denied {
        url: String,
        body: String,
        token_source: &'static str,
    },
    #[error("consul request {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("consul answer from {url} is not understood: {source}")]
    Decode {
        url: String,
        source: serde_json::Error,
    },
    #[error("consul answer from {url} is refused: its body exceeds {} (HAPROXY_CONSUL_MAX_ANSWER); reading stopped there", size(*.limit))]
    TooLarge { url: String, limit: u64 },
    #[error("consul answer from {url} is refused: X-Consul-Index is {value}, not a number, so a blocking query cannot follow it")]
    BadIndex { url: String, value: String },
    #[error("consul request {url} abandoned: {what} after {after:?}")]
    Hung {
        url: String,
        after: Duration,
        what: &'static str,
    },
    #[error("consul at {url} has no known leader")]
    NoLeader { url: String },
    #[error("{var}: cannot use {}: {reason}", .path.display())]
    File {
        var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot build the HTTP client: {}", chain(.0))]
    Client(reqwest::Error),
}

impl ConsulError {
    /// Whether the error is about the agent that answered (or did not):
    /// another address may do better, and the agent may come back. An ACL
    /// denial or an unreadable local file is the same everywhere.
    pub fn agent_away(&self) -> bool {
        match self {
            ConsulError::Http { .. }
            | ConsulError::Tls { .. }
            | ConsulError::NoLeader { .. }
            | ConsulError::Hung { .. }
            | ConsulError::BadIndex { .. }
            | ConsulError::Decode { .. } => true,
            ConsulError::Status { status, .. } => *status >= 500 || *status == 429,
            // The same catalog is as large on every agent.
            ConsulError::Denied { .. }
            | ConsulError::TooLarge { .. }
            | ConsulError::File { .. }
            | ConsulError::Client(_) => false,
        }
    }
}

impl ConsulError {
    /// The URL the error is about, if any.
    fn url(&self) -> Option<&str> {
        match self {
            ConsulError::Http { url, .. }
            | ConsulError::Tls { url, .. }
            | ConsulError::Denied { url, .. }
            | ConsulError::Status { url, .. }
            | ConsulError::Decode { url, .. }
            | ConsulError::TooLarge { url, .. }
            | ConsulError::BadIndex { url, .. }
            | ConsulError::Hung { url, .. }
            | ConsulError::NoLeader { url } => Some(url),
            ConsulError::File { .. } | ConsulError::Client(_) => None,
        }
    }

    /// What makes two errors "the same" for the log: the text, with the
    /// URL's query (the blocking index, which moves) left out.
    fn log_key(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(url) => match url.split_once('?') {
                Some((bare, _)) => text.replace(url, bare),
                None => text,
            },
            None => text,
        }
    }

    /// How much an error says about what is wrong, to report the most
    /// telling one when every address failed: a refused connection says
    /// less than a rejected certificate.
    fn rank(&self) -> u8 {
        match self {
            ConsulError::Http { .. } => 0,
            ConsulError::Status { .. }
            | ConsulError::NoLeader { .. }
            | ConsulError::Hung { .. } => 1,
            ConsulError::Decode { .. } | ConsulError::BadIndex { .. } => 2,
            _ => 3,
        }
    }
}

/// `32MiB (33554432 bytes)`, `100000 bytes`.
fn size(n: u64) -> String {
    match [(30, "GiB"), (20, "MiB"), (10, "KiB")]
        .into_iter()
        .find(|(shift, _)| n >= 1 << shift && n.is_multiple_of(1 << shift))
    {
        Some((shift, unit)) => format!("{}{unit} ({n} bytes)", n >> shift),
        None => format!("{n} bytes"),
    }
}

/// An error with its causes, `a: b: c` (reqwest's own text leaves out
/// whether the connection was refused or the certificate rejected).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// The ACL token sent as `X-Consul-Token`.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Token {
    /// None: Consul's anonymous token.
    #[default]
    None,
    /// `CONSUL_HTTP_TOKEN` / `--consul-token`.
    Value(String),
    /// `CONSUL_HTTP_TOKEN_FILE` / `--consul-token-file`: read for every
    /// request, so a rotated token is picked up and a vanished file is an
    /// error naming the setting (the last good catalog is kept).
    File(PathBuf),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::None => f.write_str("None"),
            Token::Value(_) => f.write_str("Value(<hidden>)"),
            Token::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl Token {
    /// Where the token came from, for authorization errors.
    fn source(&self) -> &'static str {
        match self {
            Token::Value(_) => "the token from CONSUL_HTTP_TOKEN / --consul-token",
            Token::File(_) => "the token from CONSUL_HTTP_TOKEN_FILE / --consul-token-file",
            Token::None => {
                "no token (CONSUL_HTTP_TOKEN and CONSUL_HTTP_TOKEN_FILE unset: Consul's anonymous token)"
            }
        }
    }

    /// Where the token came from, as the `token_source` field of a
    /// denial: `token` (`CONSUL_HTTP_TOKEN` / `--consul-token`),
    /// `token_file` (`CONSUL_HTTP_TOKEN_FILE` / `--consul-token-file`) or
    /// `none` (Consul's anonymous token).
    pub fn source_field(&self) -> &'static str {
        match self {
            Token::Value(_) => "token",
            Token::File(_) => "token_file",
            Token::None => "none",
        }
    }

    /// The token's value now.
    pub fn read(&self) -> Result<Option<String>, ConsulError> {
        match self {
            Token::None => Ok(None),
            Token::Value(v) => Ok(Some(v.clone())),
            Token::File(path) => {
                let bad = |reason: String| ConsulError::File {
                    var: "CONSUL_HTTP_TOKEN_FILE",
                    path: path.clone(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
                let t = text.trim();
                if t.is_empty() {
                    // Half-written during a rotation, or emptied: never fall
                    // back to the anonymous token (it sees an empty catalog).
                    return Err(bad("the file is empty".into()));
                }
                if !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad("the token is not one line of printable ASCII".into()));
                }
                Ok(Some(t.to_string()))
            }
        }
    }
}

/// How reads are served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Consul's default: every read is answered by the leader.
    #[default]
    Default,
    /// `?stale`: any server answers from its own copy, so a fleet's
    /// blocking queries spread over all servers. An answer whose
    /// `X-Consul-LastContact` exceeds `max_stale` is asked again in default
    /// mode, as consul-template's `max_stale` does.
    Stale { max_stale: Duration },
}

/// TLS towards the agents (Consul's own variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// `CONSUL_CACERT`: replaces the built-in roots.
    pub cacert: Option<PathBuf>,
    /// `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`, for agents with
    /// `verify_incoming`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `CONSUL_HTTP_SSL_VERIFY=false`: accept any certificate.
    pub skip_verify: bool,
}

/// Connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Agent addresses, the preferred first (`CONSUL_HTTP_ADDR`, comma
    /// separated). The watcher moves to the next one when one stops
    /// answering and back to the first when it answers again.
    pub urls: Vec<String>,
    /// The setting the addresses came from, for messages.
    pub urls_from: &'static str,
    pub token: Token,
    pub tls: TlsConfig,
    /// `CONSUL_DATACENTER`: sent as `dc=` with every read.
    pub datacenter: Option<String>,
    pub consistency: Consistency,
    /// Blocking-query wait (`HAPROXY_CONSUL_WAIT`).
    pub wait: Duration,
    /// Longest answer body read (`HAPROXY_CONSUL_MAX_ANSWER`).
    pub max_answer: u64,
    pub empty_grace: Duration,
    pub probe_interval: Duration,
}

impl ConsulConfig {
    pub fn new(url: impl Into<String>) -> ConsulConfig {
        ConsulConfig {
            urls: vec![url.into()],
            urls_from: "CONSUL_HTTP_ADDR / --consul",
            token: Token::None,
            tls: TlsConfig::default(),
            datacenter: None,
            consistency: Consistency::Default,
            wait: WAIT,
            max_answer: MAX_ANSWER,
            empty_grace: EMPTY_GRACE,
            probe_interval: PROBE_INTERVAL,
        }
    }
}

/// The agent addresses and which one is in use, shared by every request
/// of one watcher and its probe.
struct Endpoints {
    urls: Vec<String>,
    urls_from: &'static str,
    current: AtomicUsize,
    /// Every address failed on the last request: the agents are away.
    failing: AtomicBool,
    /// Bumped by the probe when the watcher should ask again at once: the
    /// first address answers again, or an agent answers after an outage.
    again: tokio::sync::watch::Sender<u64>,
}

impl Endpoints {
    fn bump(&self) {
        self.again.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// A thin client for the few endpoints we use.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    ep: Arc<Endpoints>,
    token: Token,
    tls: TlsConfig,
    datacenter: Option<String>,
    consistency: Consistency,
    wait: Duration,
    max_answer: u64,
}

/// A response body with its `X-Consul-Index`.
struct Answer<T> {
    index: u64,
    body: T,
    /// The request moved to another address before it was answered.
    failed_over: bool,
}

/// Whether an answer served with `?stale` is older than allowed:
/// `X-Consul-LastContact` (ms since the answering server last heard from
/// the leader) above `max_stale`.
pub fn too_stale(last_contact_ms: Option<u64>, max_stale: Duration) -> bool {
    last_contact_ms.is_some_and(|ms| Duration::from_millis(ms) > max_stale)
}

/// The query string of a read: datacenter, consistency, blocking index.
fn query_string(dc: Option<&str>, stale: bool, index: Option<u64>, wait: Duration) -> String {
    let mut q = Vec::new();
    if let Some(dc) = dc {
        q.push(format!("dc={}", encode(dc)));
    }
    if stale {
        q.push("stale".to_string());
    }
    if let Some(i) = index.filter(|i| *i > 0) {
        q.push(format!("index={i}"));
        q.push(format!("wait={}ms", wait.as_millis()));
    }
    q.join("&")
}

/// Why a body was not read whole.
enum BodyError {
    /// Longer than the bound: what was read, up to it.
    TooLarge(Vec<u8>),
    /// No piece arrived within [`READ_MARGIN`] of the last.
    Stalled,
    Transport(reqwest::Error),
}

/// Reads a body piece by piece, stopping at `limit` bytes (the connection
/// is then dropped, unread): memory stays bounded whatever the agent sends.
async fn read_body(resp: &mut reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    let hint = resp.content_length().unwrap_or(0).min(limit);
    let mut buf = Vec::with_capacity(hint as usize);
    loop {
        match tokio::time::timeout(READ_MARGIN, resp.chunk()).await {
            Err(_) => return Err(BodyError::Stalled),
            Ok(Err(e)) => return Err(BodyError::Transport(e)),
            Ok(Ok(None)) => return Ok(buf),
            Ok(Ok(Some(c))) => {
                let room = limit.saturating_sub(buf.len() as u64) as usize;
                if c.len() > room {
                    buf.extend_from_slice(&c[..room]);
                    return Err(BodyError::TooLarge(buf));
                }
                buf.extend_from_slice(&c);
            }
        }
    }
}

fn read_file(var: &'static str, path: &PathBuf) -> Result<Vec<u8>, ConsulError> {
    std::fs::read(path).map_err(|e| ConsulError::File {
        var,
        path: path.clone(),
        reason: e.to_string(),
    })
}

impl Client {
    /// Builds the client; fails on an unreadable CA, client certificate,
    /// key or token file, naming its variable.
    pub fn new(cfg: &ConsulConfig) -> Result<Client, ConsulError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(90));
        let tls = &cfg.tls;
        if let Some(path) = &tls.cacert {
            let pem = read_file("CONSUL_CACERT", path)?;
            let bad = |reason: String| ConsulError::File {
                var: "CONSUL_CACERT",
                path: path.clone(),
                reason,
            };
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("not a PEM certificate bundle: {}", chain(&e))))?;
            if certs.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
            // As Consul's own clients do: the CA file replaces the roots.
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            let mut pem = read_file("CONSUL_CLIENT_CERT", cert)?;
            pem.push(b'\n');
            pem.extend(read_file("CONSUL_CLIENT_KEY", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| ConsulError::File {
                var: "CONSUL_CLIENT_CERT",
                path: cert.clone(),
                reason: format!(
                    "with the key in CONSUL_CLIENT_KEY ({}) it is not a PEM certificate and private key: {}",
                    key.display(),
                    chain(&e)
                ),
            })?;
            b = b.identity(id);
        }
        if tls.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        // Fail now on a token file that is not there.
        cfg.token.read()?;
        let (again, _) = tokio::sync::watch::channel(0);
        Ok(Client {
            http: b.build().map_err(ConsulError::Client)?,
            ep: Arc::new(Endpoints {
                urls: cfg
                    .urls
                    .iter()
                    .map(|u| u.trim_end_matches('/').to_string())
                    .collect(),
                urls_from: cfg.urls_from,
                current: AtomicUsize::new(0),
                failing: AtomicBool::new(false),
                again,
            }),
            token: cfg.token.clone(),
            tls: cfg.tls.clone(),
            datacenter: cfg.datacenter.clone(),
            consistency: cfg.consistency,
            wait: cfg.wait,
            max_answer: cfg.max_answer,
        })
    }

    /// The address requests go to now.
    pub fn current_url(&self) -> &str {
        &self.ep.urls[self.ep.current.load(Ordering::SeqCst) % self.ep.urls.len()]
    }

    /// Reads `path` from the address in use; when that agent does not
    /// answer, moves on to the next address at once (no backoff while an
    /// address is left to try). An error means every address failed, or an
    /// error no other agent would change (a denial).
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        index: Option<u64>,
    ) -> Result<Answer<T>, ConsulError> {
        let n = self.ep.urls.len();
        let mut tried = 0;
        let mut worst: Option<ConsulError> = None;
        loop {
            let i = self.ep.current.load(Ordering::SeqCst) % n;
            let stale = matches!(self.consistency, Consistency::Stale { .. });
            let mut r = self.get_at(i, path, index, stale).await;
            if let (Ok((_, Some(ms))), Consistency::Stale { max_stale }) = (&r, self.consistency) {
                if too_stale(Some(*ms), max_stale) {
                    crate::log!(
                        debug,
                        Event::ConsulStaleRetry,
                        last_contact_ms = ms,
                        "stale answer older than the maximum staleness; asking the leader"
                    );
                    r = self.get_at(i, path, index, false).await;
                }
            }
            match r {
                Ok((mut a, _)) => {
                    self.ep.failing.store(false, Ordering::SeqCst);
                    a.failed_over = tried > 0;
                    return Ok(a);
                }
                Err(e) if e.agent_away() => {
                    tried += 1;
                    if tried >= n {
                        self.ep.failing.store(true, Ordering::SeqCst);
                        return Err(match worst {
                            Some(w) if w.rank() > e.rank() => w,
                            _ => e,
                        });
                    }
                    let next = (i + 1) % n;
                    if self
                        .ep
                        .current
                        .compare_exchange(i, next, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        // Said once per outage: while every address fails
                        // each retry walks the list again.
                        if !self.ep.failing.load(Ordering::SeqCst) {
                            crate::log!(warn, Event::ConsulFailover,
                                from = %self.ep.urls[i],
                                to = %self.ep.urls[next],
                                setting = self.ep.urls_from,
                                error = %e,
                                "consul address not answering; moving to the next one"
                            );
                        }
                    }
                    if worst.as_ref().is_none_or(|w| e.rank() > w.rank()) {
                        worst = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One read from address `i`, with the answer's `X-Consul-LastContact`.
    async fn get_at<T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
        index: Option<u64>,
        stale: bool,
    ) -> Result<(Answer<T>, Option<u64>), ConsulError> {
        let base = &self.ep.urls[i];
        let q = query_string(self.datacenter.as_deref(), stale, index, self.wait);
        let url = if q.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?{q}")
        };
        // A blocking query is answered when something changes or after
        // its wait (plus Consul's jitter of up to wait/16); any other read
        // at once. An agent that sends nothing beyond that, or whose body
        // stalls, is abandoned: it is as good as away.
        let blocking = index.is_some_and(|i| i > 0);
        let head_limit = if blocking {
            self.wait + self.wait / 16 + READ_MARGIN
        } else {
            READ_MARGIN
        };
        let mut req = self.http.get(&url).timeout(head_limit + BODY_DEADLINE);
        if let Some(t) = self.token.read()? {
            req = req.header("X-Consul-Token", t);
        }
        let mut resp = match tokio::time::timeout(head_limit, req.send()).await {
            Ok(r) => r.map_err(|e| self.transport_error(&url, e))?,
            Err(_) => {
                return Err(ConsulError::Hung {
                    url,
                    after: head_limit,
                    what: if blocking {
                        "no answer within the blocking wait, Consul's jitter and the margin"
                    } else {
                        "no answer"
                    },
                })
            }
        };
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        if !status.is_success() {
            // Only the start of an error body is shown.
            let bytes = match read_body(&mut resp, ERROR_BODY).await {
                Ok(b) | Err(BodyError::TooLarge(b)) => b,
                Err(BodyError::Stalled) => Vec::new(),
                Err(BodyError::Transport(e)) => return Err(self.transport_error(&url, e)),
            };
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            if status == reqwest::StatusCode::FORBIDDEN {
                return Err(ConsulError::Denied {
                    url,
                    body: text.trim().escape_debug().to_string(),
                    token_source: self.token.source(),
                });
            }
            return Err(ConsulError::Status {
                url,
                status: status.as_u16(),
                body: text,
            });
        }
        if headers
            .get("X-Consul-KnownLeader")
            .is_some_and(|v| v.as_bytes() == b"false")
        {
            return Err(ConsulError::NoLeader { url });
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let last_contact = header("X-Consul-LastContact");
        // A blocking read follows the index: without a number there is
        // nothing to block on, and asking again at once would spin.
        let index = match (index, header("X-Consul-Index")) {
            (_, Some(i)) => i,
            (None, None) => 0,
            (Some(_), None) => {
                let value = match headers.get("X-Consul-Index") {
                    Some(v) => {
                        let v = String::from_utf8_lossy(v.as_bytes());
                        let mut v: String = v.chars().take(40).collect();
                        v = v.escape_debug().to_string();
                        format!("{v:?}")
                    }
                    None => "missing".to_string(),
                };
                return Err(ConsulError::BadIndex { url, value });
            }
        }
        // Consul's advice: never block on index 0.
        .max(1);
        if resp.content_length().is_some_and(|n| n > self.max_answer) {
            return Err(ConsulError::TooLarge {
                url,
                limit: self.max_answer,
            });
        }
        let bytes = match read_body(&mut resp, self.max_answer).await {
            Ok(b) => b,
            Err(BodyError::TooLarge(_)) => {
                return Err(ConsulError::TooLarge {
                    url,
                    limit: self.max_answer,
                })
            }
            Err(BodyError::Stalled) => {
                return Err(ConsulError::Hung {
                    url,
                    after: READ_MARGIN,
                    what: "the answer's body stalled",
                })
            }
            Err(BodyError::Transport(e)) => return Err(self.transport_error(&url, e)),
        };
        let body =
            serde_json::from_slice(&bytes).map_err(|source| ConsulError::Decode { url, source })?;
        Ok((
            Answer {
                index,
                body,
                failed_over: false,
            },
            last_contact,
        ))
    }

    /// A failed exchange, with a TLS failure told apart and pinned on the
    /// setting that can fix it.
    fn transport_error(&self, url: &str, e: reqwest::Error) -> ConsulError {
        let text = chain(&e);
        let problem = if text.contains("invalid peer certificate") {
            Some(match &self.tls.cacert {
                Some(p) => format!(
                    "the agent's certificate is not accepted with the CA in CONSUL_CACERT ({}): {text}",
                    p.display()
                ),
                None => format!(
                    "the agent's certificate is not signed by a built-in root; set CONSUL_CACERT to the CA that signed it: {text}"
                ),
            })
        } else if text.contains("received fatal alert") {
            Some(match &self.tls.client_cert {
                Some(p) => format!(
                    "the agent rejected the client certificate in CONSUL_CLIENT_CERT ({}): expired, not yet valid or not signed by a CA the agent trusts: {text}",
                    p.display()
                ),
                None => format!(
                    "the agent refused the TLS handshake; if it verifies clients (verify_incoming), set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY: {text}"
                ),
            })
        } else {
            None
        };
        match problem {
            Some(problem) => ConsulError::Tls {
                url: url.to_string(),
                problem,
            },
            None => ConsulError::Http {
                url: url.to_string(),
                source: e,
            },
        }
    }

    /// Every instance of one service (passing when all its checks pass,
    /// node checks included, as `?passing` would filter), and the lowest
    /// `CreateIndex` among them (`None` without instances).
    async fn instances(
        &self,
        name: &str,
    ) -> Result<(Vec<Instance>, Option<u64>, usize), ConsulError> {
        let path = format!("/v1/health/service/{}", encode(name));
        let a: Answer<Vec<ServiceEntry>> = self.get(&path, None).await?;
        Ok(instances_of(a.body))
    }

    /// Whether address `i` answers with a known leader.
    async fn answers(&self, i: usize) -> bool {
        let mut url = format!("{}/v1/status/leader", self.ep.urls[i]);
        if let Some(dc) = &self.datacenter {
            url.push_str(&format!("?dc={}", encode(dc)));
        }
        let Ok(mut resp) = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            return false;
        };
        if !resp.status().is_success() {
            return false;
        }
        // A leader's address is a few dozen bytes: no more is read.
        read_body(&mut resp, ERROR_BODY).await.is_ok_and(|b| {
            !String::from_utf8_lossy(&b)
                .trim()
                .trim_matches('"')
                .is_empty()
        })
    }
}

/// While the watcher is off its first address, asks the first one every
/// `interval` (jittered) whether it answers with a leader, and moves back
/// to it when it does. While every address fails, asks each in order and
/// takes the first that answers. Either way it then wakes the watcher,
/// which asks again at once instead of waiting out its backoff. Probes
/// that answer while the watcher's reads still fail (an agent that knows
/// its leader but cannot serve) slow the probe down after the third,
/// doubling to 30 s: the agent is not hammered on the watcher's behalf.
async fn probe(client: Client, interval: Duration) {
    let mut wasted = 0u32;
    loop {
        let slow = 1u32 << wasted.saturating_sub(2).min(7);
        let d = interval.saturating_mul(slow).min(Duration::from_secs(30));
        let half = d / 2;
        let jittered = half + rand::thread_rng().gen_range(Duration::ZERO..=half);
        tokio::time::sleep(jittered).await;
        let ep = &client.ep;
        let cur = ep.current.load(Ordering::SeqCst);
        let failing = ep.failing.load(Ordering::SeqCst);
        let targets: Vec<usize> = if failing {
            (0..ep.urls.len()).collect()
        } else if cur != 0 {
            wasted = 0;
            vec![0]
        } else {
            wasted = 0;
            continue;
        };
        for i in targets {
            if !client.answers(i).await {
                continue;
            }
            if i != cur
                && ep
                    .current
                    .compare_exchange(cur, i, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                if i == 0 {
                    crate::log!(info, Event::ConsulFailback,
                        from = %ep.urls[cur],
                        to = %ep.urls[0],
                        "the first consul address answers again; moving back to it"
                    );
                } else {
                    crate::log!(warn, Event::ConsulFailover,
                        from = %ep.urls[cur],
                        to = %ep.urls[i],
                        setting = ep.urls_from,
                        "consul address not answering; moving to one that does"
                    );
                }
            }
            if failing {
                wasted = wasted.saturating_add(1);
            }
            // The re-asked reads set it again if they fail.
            ep.failing.store(false, Ordering::SeqCst);
            ep.bump();
            break;
        }
    }
}

/// Percent-encodes a path segment (service names are untrusted).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_denial_names_the_token_source() {
        let e = ConsulError::Denied {
            url: "http://c/v1/catalog/services".into(),
            body: "ACL not found".into(),
            token_source: Token::Value("s3cret".into()).source(),
        };
        let t = e.to_string();
        assert!(
            t.contains("authorization") && t.contains("CONSUL_HTTP_TOKEN"),
            "{t}"
        );
        assert!(!t.contains("s3cret") && !t.contains("unavailable"), "{t}");
        assert!(Token::None.source().starts_with("no token"));
        assert!(Token::File("/t".into())
            .source()
            .contains("CONSUL_HTTP_TOKEN_FILE"));
        assert!(!format!("{:?}", Token::Value("s3cret".into())).contains("s3cret"));
    }

    #[test]
    fn staleness_is_last_contact_above_the_maximum() {
        let max = Duration::from_secs(2);
        assert!(!too_stale(None, max));
        assert!(!too_stale(Some(0), max));
        assert!(!too_stale(Some(2000), max));
        assert!(too_stale(Some(2001), max));
    }

    #[test]
    fn query_strings_carry_datacenter_consistency_and_index() {
        let w = Duration::from_secs(5);
        assert_eq!(query_string(None, false, None, w), "");
        assert_eq!(query_string(None, false, Some(0), w), "");
        assert_eq!(
            query_string(Some("eu west"), true, Some(7), w),
            "dc=eu%20west&stale&index=7&wait=5000ms"
        );
        assert_eq!(query_string(None, true, None, w), "stale");
    }

    #[test]
    fn a_token_file_is_read_each_time_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let t = Token::File(path.clone());
        let e = t.read().unwrap_err().to_string();
        assert!(e.starts_with("CONSUL_HTTP_TOKEN_FILE: "), "{e}");
        std::fs::write(&path, "abc-123\n").unwrap();
        assert_eq!(t.read().unwrap().as_deref(), Some("abc-123"));
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(t.read().unwrap().as_deref(), Some("rotated"));
        std::fs::write(&path, " \n").unwrap();
        assert!(t.read().unwrap_err().to_string().contains("empty"));
        std::fs::remove_file(&path).unwrap();
        assert!(t.read().is_err());
    }

    /// An agent stand-in that answers every request with `{}` and index 5.
    async fn fake_agent() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let r = "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nX-Consul-KnownLeader: true\r\nContent-Length: 2\r\n\r\n{}";
                        if c.write_all(r.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_address_that_does_not_answer_is_skipped_at_once() {
        // A port nobody listens on.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let live = fake_agent().await;
        let mut cfg = ConsulConfig::new(dead.clone());
        cfg.urls.push(live.clone());
        let c = Client::new(&cfg).unwrap();
        let t0 = Instant::now();
        let a: Answer<serde_json::Value> = c.get("/v1/catalog/services", None).await.unwrap();
        assert!(a.failed_over);
        assert_eq!(a.index, 5);
        assert_eq!(c.current_url(), live);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // Staying there: the next request goes straight to it.
        let a: Answer<serde_json::Value> = c.get("/v1/catalog/services", None).await.unwrap();
        assert!(!a.failed_over);
        // Every address down: an error, and the probe is asked to watch.
        let only_dead = Client::new(&ConsulConfig::new(dead)).unwrap();
        let r: Result<Answer<serde_json::Value>, _> =
            only_dead.get("/v1/catalog/services", None).await;
        assert!(r.err().is_some_and(|e| e.agent_away()));
        assert!(only_dead.ep.failing.load(Ordering::SeqCst));
    }

    #[test]
    fn a_refused_answer_names_the_bound() {
        let e = ConsulError::TooLarge {
            url: "http://c/v1/health/state/any".into(),
            limit: 32 << 20,
        };
        let t = e.to_string();
        assert!(
            t.contains("/v1/health/state/any") && t.contains("32MiB (33554432 bytes)"),
            "{t}"
        );
        assert!(!e.agent_away());
        assert_eq!(size(100_000), "100000 bytes");
        assert_eq!(size(64 << 10), "64KiB (65536 bytes)");
        let k = ConsulError::BadIndex {
            url: "http://c/v1/catalog/services?index=5&wait=55000ms".into(),
            value: "\"abc\"".into(),
        };
        assert_eq!(
            k.log_key(),
            k.to_string().replace("?index=5&wait=55000ms", "")
        );
    }

    #[test]
    fn encodes_untrusted_names() {
        assert_eq!(encode("web"), "web");
        assert_eq!(encode("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
