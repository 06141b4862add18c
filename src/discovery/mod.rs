//! Sources of catalogs: Consul blocking queries ([`consul`]) and a JSON
//! catalog file ([`file`]). Each runs as a task and publishes whole
//! [`Catalog`] snapshots through a `watch` channel; `None` until the first
//! successful read. A source never publishes an empty catalog because of an
//! error: it keeps the last good one and retries.

pub mod consul;
pub mod file;

use std::sync::Arc;

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
/// its last good answer and its errors. Written by the watcher it is given
/// to, read by the status server (one value per source, passed in; no
/// global).
#[derive(Default)]
pub struct Health {
    last_ok_ms: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

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

pub use crate::policy::Backoff;
