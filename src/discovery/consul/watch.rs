//! The watch state machine: the two blocking queries, their index rules
//! (SPEC §2), backoff after errors, the empty-catalog grace, and the
//! refetch of the services that changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::wire::{catalog_tags, fingerprints, HealthCheck};
use super::{probe, Answer, Client, ConsulConfig, ConsulError};
use crate::discovery::{publish, Backoff, CatalogTx, Health};
use crate::events::Event;
use crate::model::{enabled, is_service_name, Catalog, CatalogService, Instance};

/// Distinct errors logged per episode (a fetch error names its service:
/// with many services failing, the first few say it).
const MAX_LOGGED: usize = 16;
/// Concurrent per-service fetches.
const FETCH_CONCURRENCY: usize = 32;

/// Applies SPEC §2's index rules. Returns the index to block on next and
/// whether the answer may carry a change.
pub fn next_index(old: u64, new: u64) -> (u64, bool) {
    if new < old {
        (0, true)
    } else {
        (new, new != old)
    }
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
    /// Services whose last answer listed an instance twice (warned).
    merged: BTreeSet<String>,
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

    fn on_health(&mut self, new: HashMap<String, u64>, reset: bool) {
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
                Ok((name, Ok((inst, created, merged)))) => {
                    self.dirty.remove(&name);
                    // Said once while it lasts, not at every refetch.
                    if merged == 0 {
                        self.merged.remove(&name);
                    } else if self.merged.insert(name.clone()) {
                        crate::log!(warn, Event::Warning,
                            service = %name.escape_debug(),
                            tag = "instance id",
                            reason = "duplicate instance entries",
                            duplicates = merged,
                            "consul lists instances of this service more than once (same node, service ID and port); each is one server"
                        );
                    }
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
                    crate::log!(error, Event::ConsulError, error = %e, "consul fetch task failed")
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

/// Watches Consul and publishes catalogs until `tx` is closed; each answer
/// and error is counted in `health`.
pub async fn watch(
    cfg: ConsulConfig,
    tx: CatalogTx,
    health: Arc<Health>,
) -> Result<(), ConsulError> {
    let client = Client::new(&cfg)?;
    let mut again = client.ep.again.subscribe();
    let prober = tokio::spawn(probe(client.clone(), cfg.probe_interval));
    // The probe ends with the watcher, however it ends.
    let _prober = AbortOnDrop(prober);
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
        merged: BTreeSet::new(),
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
    // The errors logged since the last good catalog.
    let mut logged: BTreeSet<String> = BTreeSet::new();
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
            health.error(e);
            // Once per error per episode, however often it is retried and
            // whichever query meets it in between.
            if logged.len() < MAX_LOGGED && logged.insert(e.log_key()) {
                let text = e.to_string();
                if let ConsulError::Denied { url, body, .. } = e {
                    crate::log!(error, Event::ConsulDenied, token_source = st.cfg.token.source_field(), url = %url, status = 403, body = %body, error = %text, "consul denied access (ACL); keeping the last good catalog and retrying");
                } else if e.agent_away() {
                    crate::log!(warn, Event::ConsulError, error = %text, away = true, "consul unavailable; keeping the last good catalog and retrying");
                } else {
                    crate::log!(error, Event::ConsulError, error = %text, away = false, "consul cannot be read; keeping the last good catalog and retrying");
                }
            }
            st.recovering = true;
        };
        let changed = tokio::select! {
            _ = tx.closed() => return Ok(()),
            // The address changed, or the agent answers again: ask now
            // rather than after the backoff or the blocking wait.
            Ok(()) = again.changed() => {
                cat_q = query(&client, "/v1/catalog/services", cat_index, Duration::ZERO);
                health_q = query(&client, "/v1/health/state/any", health_index, Duration::ZERO);
                false
            }
            r = &mut cat_q => match r {
                Ok(a) => {
                    health.ok();
                    cat_backoff.reset();
                    cat_ok = true;
                    st.recovering |= a.failed_over;
                    let (idx, changed) = next_index(cat_index, a.index);
                    let reset = idx == 0;
                    cat_index = if reset { 0 } else { idx };
                    if a.body.is_empty() != warned_empty {
                        warned_empty = a.body.is_empty();
                        if warned_empty {
                            crate::log!(warn, Event::ConsulDenied,
                                token_source = st.cfg.token.source_field(),
                                reason = "empty_catalog",
                                "consul authorization: the catalog lists no service, not even consul's own; ACLs most likely hide them from {}, which needs service:read and node:read",
                                st.cfg.token.source()
                            );
                        }
                    }
                    let tags = catalog_tags(a.body);
                    // Consul 1.8 does not move the index when an ACL
                    // policy changes what the token may see: the answer
                    // (at the end of the wait) differs under the same one.
                    let changed = changed || st.tags.as_ref() != Some(&tags);
                    if changed {
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
                    health.ok();
                    health_backoff.reset();
                    health_ok = true;
                    st.recovering |= a.failed_over;
                    let (idx, changed) = next_index(health_index, a.index);
                    let reset = idx == 0;
                    health_index = if reset { 0 } else { idx };
                    let fps = fingerprints(&a.body);
                    // As for the catalog: the same index, other checks.
                    let changed = changed || st.fps.as_ref() != Some(&fps);
                    if changed {
                        st.on_health(fps, reset || st.recovering);
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
                if !logged.is_empty() {
                    logged.clear();
                    crate::log!(info, Event::ConsulRecovered, url = %client.current_url(), "consul reachable again");
                }
                let was_empty = tx.borrow().as_ref().is_none_or(|c| c.services.is_empty());
                if catalog.services.is_empty() && !was_empty && st.recovering {
                    let first = st.empty_since.is_none();
                    let since = *st.empty_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < st.cfg.empty_grace {
                        if first {
                            crate::log!(warn, Event::ConsulEmptyAfterOutage,
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
                    crate::log!(
                        debug,
                        Event::ConsulChanged,
                        services = n,
                        "consul catalog changed"
                    );
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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
}
