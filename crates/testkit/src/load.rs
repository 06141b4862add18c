//! Closed-loop HTTP load: client threads that each send one request at a
//! time for as long as the load runs, counting every outcome by its class.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::{self, HttpError, KeepAlive, Response};

/// Outcome counts of a [`Load`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// 2xx responses.
    pub ok: u64,
    /// Complete responses with another status.
    pub non_2xx: u64,
    /// Connections refused.
    pub refused: u64,
    /// Connections reset, or closed before a complete response.
    pub reset: u64,
    /// Requests that took longer than the timeout.
    pub timeout: u64,
    /// Any other failure.
    pub other: u64,
    /// Count of 2xx responses per body (trailing whitespace trimmed, so a
    /// demo-backend named `web-1` counts under `"web-1"`).
    pub bodies: BTreeMap<String, u64>,
    /// Count of non-2xx responses per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// The first few error messages, for diagnostics.
    pub errors: Vec<String>,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Latency of every 2xx request, µs, connect included (in the order of
    /// the clients; sort before taking quantiles).
    pub lat_us: Vec<u32>,
    /// When each request of [`LoadReport::lat_us`] started, µs since the
    /// load started (same order: take both before sorting either).
    pub start_us: Vec<u32>,
    /// 2xx responses per [`LoadOptions::bucket`] since the start.
    pub buckets: Vec<u64>,
    /// Failed requests per [`LoadOptions::bucket`] since the start.
    pub fail_buckets: Vec<u64>,
    /// TCP connections opened by keep-alive clients.
    pub connections: u64,
}

impl LoadReport {
    /// Requests that did not get a 2xx response.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.refused + self.reset + self.timeout + self.other
    }

    /// All requests made.
    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }

    /// Successful requests per second.
    pub fn ok_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Adds `other`'s counts to these (two loads run side by side).
    pub fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.other += other.other;
        for (k, v) in other.bodies {
            *self.bodies.entry(k).or_default() += v;
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.lat_us.extend(other.lat_us);
        self.start_us.extend(other.start_us);
        add_buckets(&mut self.buckets, &other.buckets);
        add_buckets(&mut self.fail_buckets, &other.fail_buckets);
        self.connections += other.connections;
        for e in other.errors {
            if self.errors.len() < MAX_ERRORS {
                self.errors.push(e);
            }
        }
    }
}

const MAX_ERRORS: usize = 10;

fn add_buckets(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

fn count_in(buckets: &mut Vec<u64>, i: usize) {
    if buckets.len() <= i {
        buckets.resize(i + 1, 0);
    }
    buckets[i] += 1;
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests in {:.2?} ({:.0} ok/s): ok={} non_2xx={} refused={} reset={} timeout={} other={}",
            self.total(),
            self.elapsed,
            self.ok_per_sec(),
            self.ok,
            self.non_2xx,
            self.refused,
            self.reset,
            self.timeout,
            self.other
        )?;
        write!(f, " bodies={:?}", self.bodies)?;
        if !self.statuses.is_empty() {
            write!(f, " statuses={:?}", self.statuses)?;
        }
        if !self.errors.is_empty() {
            write!(f, " first errors={:?}", self.errors)?;
        }
        Ok(())
    }
}

/// How a [`Load`] runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Client threads, each with one request in flight.
    pub clients: usize,
    /// Each client keeps one HTTP/1.1 keep-alive connection ([`KeepAlive`])
    /// instead of a new connection per request (`Connection: close`).
    pub keepalive: bool,
    /// Per-request timeout, connect included.
    pub timeout: Duration,
    /// Width of the [`LoadReport::buckets`].
    pub bucket: Duration,
    /// Stack size of a client thread.
    pub stack_size: usize,
}

impl LoadOptions {
    /// `clients` clients, a new connection per request, 2 s timeout,
    /// 100 ms buckets.
    pub fn new(clients: usize) -> LoadOptions {
        LoadOptions {
            clients,
            keepalive: false,
            timeout: Duration::from_secs(2),
            bucket: Duration::from_millis(100),
            stack_size: 256 * 1024,
        }
    }
}

/// Closed-loop HTTP load: `clients` threads, each repeatedly sending
/// `GET /` with the given `Host` and counting the outcome — on a new
/// connection per request (`Connection: close`), or with keep-alive as
/// browsers and most HTTP client libraries do (see [`KeepAliveLoad`]).
/// After a failed request a client pauses 5 ms so that a closed port does
/// not turn into a busy loop that starves the processes under test.
///
/// The client threads inherit the network namespace of the thread that
/// calls [`Load::start`].
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
    started: Instant,
    /// Requests each client has finished so far, whatever their outcome.
    progress: Arc<Vec<AtomicU64>>,
}

impl Load {
    /// Starts `clients` clients against `addr` (`"127.0.0.1:8080"`), a new
    /// connection per request, 2 s timeout.
    pub fn start(addr: &str, host: &str, clients: usize) -> Load {
        Load::start_with(resolve(addr), host, &LoadOptions::new(clients))
    }

    /// Starts the clients `options` says against `addr`.
    pub fn start_with(addr: SocketAddr, host: &str, options: &LoadOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let name = if options.keepalive {
            "keepalive"
        } else {
            "load"
        };
        let progress: Arc<Vec<AtomicU64>> =
            Arc::new((0..options.clients).map(|_| AtomicU64::new(0)).collect());
        let threads = (0..options.clients)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let progress = Arc::clone(&progress);
                let host = host.to_string();
                let options = options.clone();
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .stack_size(options.stack_size)
                    .spawn(move || client(addr, &host, &options, started, &stop, &progress[i]))
                    .expect("spawn load client")
            })
            .collect();
        Load {
            stop,
            threads,
            started,
            progress,
        }
    }

    /// How many requests each client has finished so far (any outcome).
    pub fn progress(&self) -> Vec<u64> {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .collect()
    }

    /// Waits until every client has finished another request since `since`
    /// (a [`Load::progress`]) was taken: the requests in flight then are
    /// over. Panics after `timeout`.
    pub fn wait_answered_since(&self, since: &[u64], timeout: Duration) {
        crate::wait_until(timeout, "every load client answered again", || {
            self.progress()
                .iter()
                .zip(since)
                .all(|(now, then)| now > then)
        });
    }

    /// Waits until every client has finished a request (any outcome): the
    /// load is going. Panics after `timeout`.
    pub fn wait_running(&self, timeout: Duration) {
        crate::wait_until(timeout, "every load client has an answer", || {
            self.progress().iter().all(|n| *n > 0)
        });
    }

    /// When the load started (bucket 0 begins here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops the clients, waits for their in-flight requests and returns the
    /// combined counts.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        for t in self.threads {
            report.merge(t.join().expect("load client panicked"));
        }
        report.elapsed = self.started.elapsed();
        report
    }
}

/// Closed-loop HTTP load with keep-alive, as browsers and most HTTP client
/// libraries do: `clients` threads, each keeping one connection and sending
/// `GET /` with the given `Host` on it, one request at a time, opening a new
/// connection only after the server ended it (or after a failure). A request
/// that gets no complete response counts as failed: no retry, so a
/// connection the server closes while a request is on its way shows up.
pub struct KeepAliveLoad(Load);

impl KeepAliveLoad {
    pub fn start(addr: &str, host: &str, clients: usize) -> KeepAliveLoad {
        let options = LoadOptions {
            keepalive: true,
            ..LoadOptions::new(clients)
        };
        KeepAliveLoad(Load::start_with(resolve(addr), host, &options))
    }

    /// Stops the clients and returns the combined counts.
    pub fn stop(self) -> LoadReport {
        self.0.stop()
    }

    /// The [`Load`] it is (to hold either kind as one type).
    pub fn into_load(self) -> Load {
        self.0
    }

    /// See [`Load::progress`].
    pub fn progress(&self) -> Vec<u64> {
        self.0.progress()
    }

    /// See [`Load::wait_answered_since`].
    pub fn wait_answered_since(&self, since: &[u64], timeout: Duration) {
        self.0.wait_answered_since(since, timeout)
    }

    /// See [`Load::wait_running`].
    pub fn wait_running(&self, timeout: Duration) {
        self.0.wait_running(timeout)
    }
}

fn resolve(addr: &str) -> SocketAddr {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("bad load address {addr:?}"))
}

/// One client until `stop`.
fn client(
    addr: SocketAddr,
    host: &str,
    options: &LoadOptions,
    started: Instant,
    stop: &AtomicBool,
    progress: &AtomicU64,
) -> LoadReport {
    let mut r = LoadReport {
        lat_us: Vec::with_capacity(1 << 16),
        start_us: Vec::with_capacity(1 << 16),
        ..LoadReport::default()
    };
    let mut conn = KeepAlive::default();
    let bucket_ns = options.bucket.as_nanos().max(1);
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let result = if options.keepalive {
            conn.get(&addr, host, options.timeout)
        } else {
            http::get_at(&addr, host, options.timeout)
        };
        let end = Instant::now();
        let bucket = (end.saturating_duration_since(started).as_nanos() / bucket_ns) as usize;
        let ok = r.tally(result, end - start, bucket);
        if ok {
            let since = start.saturating_duration_since(started).as_micros();
            r.start_us.push(since.min(u32::MAX as u128) as u32);
        }
        progress.fetch_add(1, Ordering::SeqCst);
        if ok {
            continue;
        }
        // Pacing, not a wait: after a failure the client pauses before its
        // next request rather than spinning on a refused port.
        thread::sleep(Duration::from_millis(5));
    }
    r.connections = conn.opened;
    r
}

impl LoadReport {
    /// Counts one request's outcome (it ended in `bucket` and took
    /// `latency`); false when it failed (its error kept among the first
    /// few).
    fn tally(
        &mut self,
        result: Result<Response, HttpError>,
        latency: Duration,
        bucket: usize,
    ) -> bool {
        let error = match result {
            Ok(r) if r.is_success() => {
                let text = std::str::from_utf8(&r.body)
                    .unwrap_or("<binary>")
                    .trim_end();
                match self.bodies.get_mut(text) {
                    Some(n) => *n += 1,
                    None => {
                        self.bodies.insert(text.to_string(), 1);
                    }
                }
                self.ok += 1;
                self.lat_us
                    .push(latency.as_micros().min(u32::MAX as u128) as u32);
                count_in(&mut self.buckets, bucket);
                return true;
            }
            Ok(r) => {
                self.non_2xx += 1;
                *self.statuses.entry(r.status).or_default() += 1;
                format!("HTTP {}", r.status)
            }
            Err(e) => {
                match e {
                    HttpError::Refused(_) => self.refused += 1,
                    HttpError::Reset(_) => self.reset += 1,
                    HttpError::Timeout(_) => self.timeout += 1,
                    HttpError::Other(_) => self.other += 1,
                }
                e.to_string()
            }
        };
        count_in(&mut self.fail_buckets, bucket);
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(error);
        }
        false
    }
}
