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
//! forces a full refetch); an unchanged index changes nothing. Errors and
//! timeouts keep the last good catalog and retry with jittered backoff; so
//! does an answer without a known leader. After an error, an empty catalog
//! replacing a non-empty one is believed only once it has been seen for
//! [`EMPTY_GRACE`]: an agent that restarts answers "nothing" before it has
//! synced.
//!
//! An ACL denial (HTTP 403) is reported as an authorization error naming
//! where the token came from, not as an outage. Consul 1.8 answers a
//! token without read rights (the anonymous one included) with empty lists
//! rather than 403: a catalog without even the `consul` service itself is
//! reported as most likely that.

use crate::events::Event;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{publish, Backoff, CatalogTx};
use crate::model::{enabled, is_service_name, Catalog, CatalogService, Instance};

/// How long a blocking query waits on Consul's side.
pub const WAIT: Duration = Duration::from_secs(55);
/// How long an empty catalog must persist after an error before it replaces
/// a non-empty one.
pub const EMPTY_GRACE: Duration = Duration::from_secs(30);
/// Concurrent per-service fetches.
const FETCH_CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("consul request {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
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
    #[error("consul at {url} has no known leader")]
    NoLeader { url: String },
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Where the token sent to Consul came from, for authorization errors.
fn token_source(token: &Option<String>) -> &'static str {
    match token {
        Some(_) => "the token from CONSUL_HTTP_TOKEN / --consul-token",
        None => "no token (CONSUL_HTTP_TOKEN / --consul-token unset: Consul's anonymous token)",
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    pub url: String,
    pub token: Option<String>,
    pub cacert: Option<PathBuf>,
    /// Blocking-query wait (shortened in tests).
    pub wait: Duration,
    pub empty_grace: Duration,
}

impl ConsulConfig {
    pub fn new(url: impl Into<String>) -> ConsulConfig {
        ConsulConfig {
            url: url.into(),
            token: None,
            cacert: None,
            wait: WAIT,
            empty_grace: EMPTY_GRACE,
        }
    }
}

/// A thin client for the few endpoints we use.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    wait: Duration,
}

/// A response body with its `X-Consul-Index`.
struct Answer<T> {
    index: u64,
    body: T,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(default)]
    node: String,
    #[serde(default, rename = "CheckID")]
    check_id: String,
    #[serde(default)]
    status: String,
    #[serde(default, rename = "ServiceID")]
    service_id: String,
    #[serde(default)]
    service_name: String,
    #[serde(default)]
    modify_index: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    node: EntryNode,
    service: EntryService,
    #[serde(default)]
    checks: Option<Vec<EntryCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryCheck {
    #[serde(default)]
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryNode {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryService {
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: i64,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    weights: Option<Weights>,
    #[serde(default)]
    create_index: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default = "one")]
    passing: i64,
}

fn one() -> i64 {
    1
}

impl Client {
    pub fn new(cfg: &ConsulConfig) -> Result<Client, ConsulError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(90));
        if let Some(path) = &cfg.cacert {
            let pem = std::fs::read(path).map_err(|source| ConsulError::CaFile {
                path: path.clone(),
                source,
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(ConsulError::Client)?;
            b = b.add_root_certificate(cert);
        }
        Ok(Client {
            http: b.build().map_err(ConsulError::Client)?,
            base: cfg.url.trim_end_matches('/').to_string(),
            token: cfg.token.clone(),
            wait: cfg.wait,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        index: Option<u64>,
    ) -> Result<Answer<T>, ConsulError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match index {
            Some(i) if i > 0 => format!(
                "{}{path}{sep}index={i}&wait={}ms",
                self.base,
                self.wait.as_millis()
            ),
            _ => format!("{}{path}", self.base),
        };
        // Consul adds up to wait/16 of jitter to a blocking query.
        let timeout = self.wait + self.wait / 16 + Duration::from_secs(5);
        let mut req = self.http.get(&url).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        let http_err = |source| ConsulError::Http {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(http_err)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(http_err)?;
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(ConsulError::Denied {
                url,
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                    .trim()
                    .escape_debug()
                    .to_string(),
                token_source: token_source(&self.token),
            });
        }
        if !status.is_success() {
            return Err(ConsulError::Status {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            });
        }
        if headers
            .get("X-Consul-KnownLeader")
            .is_some_and(|v| v.as_bytes() == b"false")
        {
            return Err(ConsulError::NoLeader { url });
        }
        let index = headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            // Consul's advice: never block on index 0.
            .max(1);
        let body =
            serde_json::from_slice(&bytes).map_err(|source| ConsulError::Decode { url, source })?;
        Ok(Answer { index, body })
    }

    /// Every instance of one service (passing when all its checks pass,
    /// node checks included, as `?passing` would filter), and the lowest
    /// `CreateIndex` among them (`None` without instances).
    async fn instances(&self, name: &str) -> Result<(Vec<Instance>, Option<u64>), ConsulError> {
        let path = format!("/v1/health/service/{}", encode(name));
        let a: Answer<Vec<ServiceEntry>> = self.get(&path, None).await?;
        Ok(instances_of(a.body))
    }
}

fn instances_of(entries: Vec<ServiceEntry>) -> (Vec<Instance>, Option<u64>) {
    let created = entries.iter().map(|e| e.service.create_index).min();
    let instances = entries
        .into_iter()
        .map(|e| Instance {
            passing: e
                .checks
                .as_deref()
                .unwrap_or_default()
                .iter()
                .all(|c| c.status == "passing"),
            id: e.service.id,
            address: if e.service.address.is_empty() {
                e.node.address
            } else {
                e.service.address
            },
            port: e.service.port,
            tags: e.service.tags.unwrap_or_default(),
            weight: e.service.weights.map(|w| w.passing).unwrap_or(1),
        })
        .collect();
    (instances, created)
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

/// Applies SPEC §2's index rules. Returns the index to block on next and
/// whether the answer may carry a change.
pub fn next_index(old: u64, new: u64) -> (u64, bool) {
    if new < old {
        (0, true)
    } else {
        (new, new != old)
    }
}

fn fingerprints(checks: &[HealthCheck]) -> HashMap<String, u64> {
    let mut groups: HashMap<&str, Vec<&HealthCheck>> = HashMap::new();
    for c in checks.iter().filter(|c| !c.service_name.is_empty()) {
        groups.entry(&c.service_name).or_default().push(c);
    }
    groups
        .into_iter()
        .map(|(name, mut cs)| {
            cs.sort_by(|a, b| {
                (&a.node, &a.service_id, &a.check_id).cmp(&(&b.node, &b.service_id, &b.check_id))
            });
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for c in cs {
                (
                    &c.node,
                    &c.service_id,
                    &c.check_id,
                    &c.status,
                    c.modify_index,
                )
                    .hash(&mut h);
            }
            (name.to_string(), h.finish())
        })
        .collect()
}

/// Watcher state.
struct State {
    client: Client,
    cfg: ConsulConfig,
    /// Tags per service name, from `/v1/catalog/services`.
    tags: Option<BTreeMap<String, Vec<String>>>,
    /// Check fingerprint per service name, from `/v1/health/state/any`.
    fps: Option<HashMap<String, u64>>,
    /// Instances per exposed service, as last fetched.
    instances: BTreeMap<String, Vec<Instance>>,
    /// Lowest `CreateIndex` per exposed service, as last fetched.
    created: BTreeMap<String, u64>,
    /// Services to refetch before the next publish.
    dirty: BTreeSet<String>,
    /// Refetch every exposed service (first run, index reset, unattributed change).
    all_dirty: bool,
    /// Set after an error: the next empty catalog is suspect.
    recovering: bool,
    empty_since: Option<Instant>,
}

impl State {
    fn on_catalog(&mut self, new: BTreeMap<String, Vec<String>>, reset: bool) {
        let mut attributed = false;
        match &self.tags {
            Some(old) if !reset => {
                for (name, tags) in &new {
                    if old.get(name) != Some(tags) {
                        self.dirty.insert(name.clone());
                        attributed = true;
                    }
                }
                attributed |= old.keys().any(|k| !new.contains_key(k));
                if !attributed {
                    // The services table changed but no name or tag did: an
                    // instance came, went or moved. We cannot tell which.
                    self.all_dirty = true;
                }
            }
            _ => self.all_dirty = true,
        }
        self.tags = Some(new);
    }

    fn on_health(&mut self, checks: Vec<HealthCheck>, reset: bool) {
        let new = fingerprints(&checks);
        match &self.fps {
            Some(old) if !reset => {
                for (name, fp) in &new {
                    if old.get(name) != Some(fp) {
                        self.dirty.insert(name.clone());
                    }
                }
                for name in old.keys() {
                    if !new.contains_key(name) {
                        self.dirty.insert(name.clone());
                    }
                }
            }
            _ => self.all_dirty = true,
        }
        self.fps = Some(new);
    }

    /// Refetches dirty exposed services; returns the new catalog, or an
    /// error (the state then stays dirty for the next attempt).
    async fn refresh(&mut self) -> Result<Option<Catalog>, ConsulError> {
        let (Some(tags), Some(_)) = (&self.tags, &self.fps) else {
            return Ok(None);
        };
        let exposed: BTreeSet<&String> = tags
            .iter()
            .filter(|(_, t)| enabled(t))
            .map(|(n, _)| n)
            .collect();
        self.instances.retain(|n, _| exposed.contains(n));
        self.created.retain(|n, _| exposed.contains(n));
        // A name the model rejects is left out whatever its instances are,
        // and Consul itself may refuse to look it up (a newline in the name
        // is a 400): fetching it would fail every refresh, so it is not
        // fetched and renders as an invalid service with a warning.
        let todo: Vec<String> = exposed
            .iter()
            .filter(|n| is_service_name(n))
            .filter(|n| {
                self.all_dirty || self.dirty.contains(**n) || !self.instances.contains_key(**n)
            })
            .map(|n| n.to_string())
            .collect();
        let sem = Arc::new(Semaphore::new(FETCH_CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for name in todo {
            let client = self.client.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let r = client.instances(&name).await;
                (name, r)
            });
        }
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((name, Ok((inst, created)))) => {
                    self.dirty.remove(&name);
                    match created {
                        Some(c) => self.created.insert(name.clone(), c),
                        None => self.created.remove(&name),
                    };
                    self.instances.insert(name, inst);
                }
                Ok((_, Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    tracing::error!(event = %Event::ConsulUnavailable, error = %e, "consul fetch task failed")
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.all_dirty = false;
        self.dirty.clear();
        let mut catalog = Catalog::default();
        for name in exposed {
            catalog.services.insert(
                name.clone(),
                CatalogService {
                    tags: tags[name].clone(),
                    instances: self.instances.get(name).cloned().unwrap_or_default(),
                    // No instance seen (yet): the most junior.
                    created: self.created.get(name).copied().unwrap_or(u64::MAX),
                },
            );
        }
        Ok(Some(catalog))
    }
}

type Query<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer<T>, ConsulError>> + Send>>;

fn query<T: serde::de::DeserializeOwned + Send + 'static>(
    client: &Client,
    path: &'static str,
    index: u64,
    delay: Duration,
) -> Query<T> {
    let client = client.clone();
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        client.get(path, Some(index)).await
    })
}

/// Watches Consul and publishes catalogs until `tx` is closed.
pub async fn watch(cfg: ConsulConfig, tx: CatalogTx) -> Result<(), ConsulError> {
    let client = Client::new(&cfg)?;
    let mut st = State {
        client: client.clone(),
        cfg,
        tags: None,
        fps: None,
        instances: BTreeMap::new(),
        created: BTreeMap::new(),
        dirty: BTreeSet::new(),
        all_dirty: true,
        recovering: false,
        empty_since: None,
    };
    let (mut cat_index, mut health_index) = (0u64, 0u64);
    let mut cat_backoff = Backoff::new(Duration::from_secs(30));
    let mut health_backoff = Backoff::new(Duration::from_secs(30));
    let mut fetch_backoff = Backoff::new(Duration::from_secs(30));
    let mut cat_q: Query<BTreeMap<String, Option<Vec<String>>>> =
        query(&client, "/v1/catalog/services", 0, Duration::ZERO);
    let mut health_q: Query<Vec<HealthCheck>> =
        query(&client, "/v1/health/state/any", 0, Duration::ZERO);
    let mut last_error: Option<String> = None;
    // Whether the catalog was last seen empty (warned once per episode).
    let mut warned_empty = false;
    // Whether each query's last answer was a success. After an error (an
    // agent restart, say) the other query's view is from before it, and a
    // catalog mixing the two is neither the old nor the new state: with the
    // services from before and the checks from after, every instance looks
    // gone, the catalog is not empty, and the empty-catalog grace below
    // would not hold it back. So a catalog is built only when both are
    // current again.
    let (mut cat_ok, mut health_ok) = (true, true);
    loop {
        let mut report = |e: &ConsulError, st: &mut State| {
            super::HEALTH.error(e);
            let text = e.to_string();
            if last_error.as_ref() != Some(&text) {
                if matches!(e, ConsulError::Denied { .. }) {
                    tracing::error!(event = %Event::ConsulDenied, error = %text, "consul denied access (ACL); keeping the last good catalog and retrying");
                } else {
                    tracing::warn!(event = %Event::ConsulUnavailable, error = %text, "consul unavailable; keeping the last good catalog and retrying");
                }
                last_error = Some(text);
            }
            st.recovering = true;
        };
        let changed = tokio::select! {
            _ = tx.closed() => return Ok(()),
            r = &mut cat_q => match r {
                Ok(a) => {
                    super::HEALTH.ok();
                    cat_backoff.reset();
                    cat_ok = true;
                    let (idx, changed) = next_index(cat_index, a.index);
                    let reset = idx == 0;
                    cat_index = if reset { 0 } else { idx };
                    if a.body.is_empty() != warned_empty {
                        warned_empty = a.body.is_empty();
                        if warned_empty {
                            tracing::warn!(event = %Event::ConsulDenied,
                                "consul authorization: the catalog lists no service, not even consul's own; ACLs most likely hide them from {}, which needs service:read and node:read",
                                token_source(&st.cfg.token)
                            );
                        }
                    }
                    if changed {
                        let tags = a.body.into_iter().map(|(k, v)| {
                            let mut v = v.unwrap_or_default();
                            v.sort();
                            v.dedup();
                            (k, v)
                        }).collect();
                        st.on_catalog(tags, reset || st.recovering);
                    }
                    cat_q = query(&client, "/v1/catalog/services", cat_index, Duration::ZERO);
                    changed
                }
                Err(e) => {
                    report(&e, &mut st);
                    cat_ok = false;
                    cat_q = query(&client, "/v1/catalog/services", 0, cat_backoff.next_delay());
                    cat_index = 0;
                    false
                }
            },
            r = &mut health_q => match r {
                Ok(a) => {
                    super::HEALTH.ok();
                    health_backoff.reset();
                    health_ok = true;
                    let (idx, changed) = next_index(health_index, a.index);
                    let reset = idx == 0;
                    health_index = if reset { 0 } else { idx };
                    if changed {
                        st.on_health(a.body, reset || st.recovering);
                    }
                    health_q = query(&client, "/v1/health/state/any", health_index, Duration::ZERO);
                    changed
                }
                Err(e) => {
                    report(&e, &mut st);
                    health_ok = false;
                    health_q = query(&client, "/v1/health/state/any", 0, health_backoff.next_delay());
                    health_index = 0;
                    false
                }
            },
        };
        // The other query's next answer after its error comes with index 0,
        // so it counts as a change and the skipped refresh happens then.
        if !(changed && cat_ok && health_ok) {
            continue;
        }
        match st.refresh().await {
            Ok(None) => {}
            Ok(Some(catalog)) => {
                fetch_backoff.reset();
                if last_error.take().is_some() {
                    tracing::info!(event = %Event::ConsulRecovered, "consul reachable again");
                }
                let was_empty = tx.borrow().as_ref().is_none_or(|c| c.services.is_empty());
                if catalog.services.is_empty() && !was_empty && st.recovering {
                    let first = st.empty_since.is_none();
                    let since = *st.empty_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < st.cfg.empty_grace {
                        if first {
                            tracing::warn!(event = %Event::ConsulEmptyAfterOutage,
                                grace = ?st.cfg.empty_grace,
                                "consul answers with no services after an outage; keeping the last good catalog for now"
                            );
                        }
                        // Ask again soon: the grace period ends without an index change.
                        health_q =
                            query(&client, "/v1/health/state/any", 0, Duration::from_secs(1));
                        health_index = 0;
                        continue;
                    }
                }
                st.empty_since = None;
                st.recovering = false;
                let n = catalog.services.len();
                if publish(&tx, catalog) {
                    tracing::debug!(event = %Event::ConsulChanged, services = n, "consul catalog changed");
                }
            }
            Err(e) => {
                report(&e, &mut st);
                // Retry the fetch through a forced catalog round.
                cat_q = query(
                    &client,
                    "/v1/catalog/services",
                    0,
                    fetch_backoff.next_delay(),
                );
                cat_index = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 5), (5, true));
        assert_eq!(next_index(5, 5), (5, false));
        assert_eq!(next_index(5, 7), (7, true));
        assert_eq!(next_index(7, 3), (0, true));
    }

    #[test]
    fn instances_pass_when_every_check_passes_and_the_oldest_dates_the_service() {
        let entries: Vec<ServiceEntry> = serde_json::from_str(
            r#"[
              {"Node": {"Address": "10.0.0.9"},
               "Service": {"ID": "w1", "Address": "", "Port": 80, "CreateIndex": 30},
               "Checks": [{"Status": "passing"}, {"Status": "passing"}]},
              {"Node": {"Address": "10.0.0.9"},
               "Service": {"ID": "w2", "Address": "10.0.0.2", "Port": 80, "CreateIndex": 12,
                           "Weights": {"Passing": 3, "Warning": 1}},
               "Checks": [{"Status": "passing"}, {"Status": "critical"}]},
              {"Node": {"Address": "10.0.0.9"},
               "Service": {"ID": "w3", "Address": "10.0.0.3", "Port": 80, "CreateIndex": 40},
               "Checks": [{"Status": "warning"}]},
              {"Node": {"Address": "10.0.0.9"},
               "Service": {"ID": "w4", "Address": "10.0.0.4", "Port": 80, "CreateIndex": 41},
               "Checks": null}
            ]"#,
        )
        .unwrap();
        let (inst, created) = instances_of(entries);
        assert_eq!(created, Some(12));
        let passing: Vec<(&str, &str, bool)> = inst
            .iter()
            .map(|i| (i.id.as_str(), i.address.as_str(), i.passing))
            .collect();
        assert_eq!(
            passing,
            [
                ("w1", "10.0.0.9", true),
                ("w2", "10.0.0.2", false),
                ("w3", "10.0.0.3", false),
                ("w4", "10.0.0.4", true)
            ]
        );
        assert_eq!(inst[1].weight, 3);
        assert_eq!(instances_of(Vec::new()).1, None);
    }

    #[test]
    fn a_denial_names_the_token_source() {
        let e = ConsulError::Denied {
            url: "http://c/v1/catalog/services".into(),
            body: "ACL not found".into(),
            token_source: token_source(&Some("s3cret".into())),
        };
        let t = e.to_string();
        assert!(
            t.contains("authorization") && t.contains("CONSUL_HTTP_TOKEN"),
            "{t}"
        );
        assert!(!t.contains("s3cret") && !t.contains("unavailable"), "{t}");
        assert!(token_source(&None).starts_with("no token"));
    }

    #[test]
    fn encodes_untrusted_names() {
        assert_eq!(encode("web"), "web");
        assert_eq!(encode("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
