//! The catalog-file source: a JSON file in the shape of
//! [`crate::model::CatalogFile`], re-read when its content changes. For
//! running without Consul, and for tests and benchmarks that do not need it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{publish, CatalogTx, Health};
use crate::events::Event;
use crate::model::Catalog;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read catalog file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid catalog file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Reads and parses the catalog file once.
pub fn load(path: &Path) -> Result<Catalog, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Catalog::parse_file(&text).map_err(|source| FileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// What tells a file changed without reading it: inode, size, mtime.
fn stamp(path: &std::path::Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Watches `path` (its metadata every `interval`, its content when that
/// changed, and at least every 2 s) and publishes each new valid catalog. A
/// read or parse error is logged once per distinct error and the last good
/// catalog stays. Each answer and error is counted in `health`.
pub async fn watch(path: PathBuf, interval: Duration, tx: CatalogTx, health: Arc<Health>) {
    let mut last_bytes: Option<Vec<u8>> = None;
    let mut last_error: Option<String> = None;
    let mut last_stamp = None;
    let mut last_read = tokio::time::Instant::now();
    loop {
        let st = stamp(&path);
        if last_bytes.is_some()
            && st.is_some()
            && st == last_stamp
            && last_read.elapsed() < Duration::from_secs(2)
        {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(interval).await;
            continue;
        }
        last_stamp = st;
        last_read = tokio::time::Instant::now();
        match tokio::fs::read(&path).await {
            Ok(bytes) if last_bytes.as_ref() != Some(&bytes) => {
                match std::str::from_utf8(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|t| Catalog::parse_file(t).map_err(|e| e.to_string()))
                {
                    Ok(c) => {
                        health.ok();
                        crate::log!(info, Event::CatalogFileRead, path = %path.display(), services = c.services.len(), "catalog file read");
                        publish(&tx, c);
                        last_error = None;
                    }
                    Err(e) => {
                        health.error(&e);
                        if last_error.as_ref() != Some(&e) {
                            crate::log!(error, Event::CatalogFileRejected, path = %path.display(), error = %e, "invalid catalog file; keeping the last good catalog");
                            last_error = Some(e);
                        }
                    }
                }
                last_bytes = Some(bytes);
            }
            Ok(_) => health.ok(),
            Err(e) => {
                health.error(&e);
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    crate::log!(error, Event::CatalogFileRejected, path = %path.display(), error = %e, "cannot read catalog file; keeping the last good catalog");
                    last_error = Some(e);
                }
                last_bytes = None;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}
