//! Sources of catalogs: Consul blocking queries ([`consul`]) and a JSON
//! catalog file ([`file`]). Each runs as a task and publishes whole
//! [`Catalog`] snapshots through a `watch` channel; `None` until the first
//! successful read. A source never publishes an empty catalog because of an
//! error: it keeps the last good one and retries.

pub mod consul;
pub mod file;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::model::Catalog;

/// The latest catalog, shared with the render loop.
pub type CatalogRx = watch::Receiver<Option<Arc<Catalog>>>;
pub type CatalogTx = watch::Sender<Option<Arc<Catalog>>>;

/// Publishes `catalog` if it differs from the current one.
pub(crate) fn publish(tx: &CatalogTx, catalog: Catalog) -> bool {
    tx.send_if_modified(|cur| {
        if cur.as_deref() == Some(&catalog) {
            false
        } else {
            *cur = Some(Arc::new(catalog));
            true
        }
    })
}

/// How the discovery source is doing, for the status server: the time of
/// its last good answer and its errors. Written by the watchers.
pub struct Health {
    last_ok_ms: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

/// The process's one discovery source.
pub static HEALTH: Health = Health {
    last_ok_ms: std::sync::atomic::AtomicU64::new(0),
    errors: std::sync::atomic::AtomicU64::new(0),
    last_error: std::sync::Mutex::new(None),
};

impl Health {
    /// The source answered.
    pub fn ok(&self) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_ok_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The source failed to answer.
    pub fn error(&self, e: &dyn std::fmt::Display) {
        self.errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }

    /// Unix time (s) of the last good answer.
    pub fn last_ok(&self) -> Option<f64> {
        let ms = self.last_ok_ms.load(std::sync::atomic::Ordering::Relaxed);
        (ms > 0).then_some(ms as f64 / 1000.0)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Jittered exponential backoff: 100 ms doubling to `max`, each delay drawn
/// from [d/2, d] so many supervisors do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let d: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        assert!(d[7] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
