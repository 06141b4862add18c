//! TLS termination (SPEC §15): the certificate bundles of `HAPROXY_CERTS_DIR`,
//! validated, copied into a store beside the config, listed in a crt-list
//! the HTTPS bind loads, and kept in step with the directory — live through
//! the runtime API where HAProxy 2.6 can do it, otherwise by a checked reload.
//!
//! # The data's way
//!
//! - [`Scanner`] polls the directory's metadata. A file whose metadata
//!   stopped changing (seen the same on two polls, so a half-written file is
//!   not judged) is read and validated ([`parse_bundle`]): PEM blocks only,
//!   a certificate first, exactly one private key, the key matching the
//!   certificate (rustls' `keys_match`), names and validity read with
//!   x509-parser. A broken file is an error naming it (`event =
//!   "cert_rejected"`) and changes nothing: the version served before stays.
//!   A directory that disappears or cannot be read changes nothing either
//!   (`event = %Event::CertDirError`). An expired certificate is served with a
//!   warning (`event = %Event::CertExpired`).
//! - [`Tls`] holds what the serving HAProxy has (the store on disk says the
//!   same) and applies a new set: the store and the crt-list are written
//!   first (so any reload reproduces it), then the runtime API changes the
//!   serving process. Names stay stable: HAProxy knows a certificate by its
//!   path in the crt-list, `<config dir>/certs/<file name>`.
//!
//! # What HAProxy 2.6.12 accepts (tried through socat on the admin socket)
//!
//! - Replace: `set ssl cert <path> <<` with the bundle as payload ("Transaction
//!   created for certificate <path>!"), then `commit ssl cert <path>`
//!   ("Committing <path>" ... "Success!"). New handshakes get the new
//!   certificate at once; connections already open keep theirs.
//! - Add: `new ssl cert <path>` ("New empty certificate store"), `set ssl
//!   cert`, `commit ssl cert`, then `add ssl crt-list <list> <path>`
//!   ("Inserting certificate ... Success!"): SNI finds it at once.
//! - Remove: `del ssl crt-list <list> <path>` ("Entry ... deleted in
//!   crtlist"), then `del ssl cert <path>` ("Certificate ... deleted!").
//! - Refused: deleting the default certificate (the crt-list's first line)
//!   of a bind ("cannot be deleted, it is used as default certificate"); so
//!   a change of the default certificate reloads. A key that does not match
//!   is refused at commit ("inconsistencies between private key and
//!   certificate"), and the transaction must then be aborted (`abort ssl
//!   cert`); a payload that is not PEM at `set` ("unable to load
//!   certificate"). An `ssl` bind with no certificate at all does not start
//!   ("no SSL certificate specified"): with no usable bundle the HTTPS bind
//!   is not rendered, so the first bundle added and the last one removed
//!   reload.
//! - The payload ends at its first empty line and must fit in
//!   `tune.bufsize` (16 KB): bundles are stored without blank lines; a
//!   bigger one fails live and is applied by the reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::events::Event;
use crate::model::TlsFrontend;

/// A validated certificate bundle: certificate chain (leaf first) and key.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The file name in `HAPROXY_CERTS_DIR` (and in the store).
    pub name: String,
    /// The PEM blocks only, `\n` line ends, no blank line: what the store
    /// holds and what the runtime API gets.
    pub pem: String,
    /// The leaf's subject, serial (hex) and DNS names, for logs.
    pub subject: String,
    pub serial: String,
    pub dns_names: Vec<String>,
    /// The leaf's notAfter (RFC 2822 text) and whether it has passed.
    pub not_after: String,
    pub expired: bool,
}

impl std::fmt::Debug for Bundle {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The bundles to serve, by file name.
pub type CertSet = BTreeMap<String, Bundle>;

/// A bundle that cannot be served: names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate bundle {file}: {reason}")]
pub struct BundleError {
    pub file: PathBuf,
    pub reason: String,
}

/// The file name used as the default certificate when present; otherwise
/// the lexically first bundle is the default.
pub const DEFAULT_BUNDLE: &str = "default.pem";

/// The certificate HAProxy serves to a client whose SNI matches none (the
/// crt-list's first line).
pub fn default_name(set: &CertSet) -> Option<&str> {
    if set.contains_key(DEFAULT_BUNDLE) {
        Some(DEFAULT_BUNDLE)
    } else {
        set.keys().next().map(String::as_str)
    }
}

/// A file name usable as a store file and a runtime API token.
fn is_bundle_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0] != b'.'
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// Validates one bundle's bytes. `now` is a UNIX timestamp.
pub fn parse_bundle(name: &str, bytes: &[u8], now: i64) -> Result<Bundle, String> {
    use rustls::pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    };
    use x509_parser::pem::Pem;

    if !is_bundle_name(name) {
        return Err(
            "the file name is not usable (letters, digits, '.', '_', '-'; not starting with '.')"
                .into(),
        );
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not PEM: not text".to_string())?;
    if !text.contains("-----BEGIN ") {
        return Err("not PEM: no -----BEGIN block".into());
    }
    let mut certs: Vec<Vec<u8>> = Vec::new();
    let mut key: Option<PrivateKeyDer<'static>> = None;
    let mut keys = 0;
    let mut blocks = String::new();
    for pem in Pem::iter_from_buffer(bytes) {
        let pem = pem.map_err(|e| format!("not PEM: {e}"))?;
        match pem.label.as_str() {
            "CERTIFICATE" => certs.push(pem.contents.clone()),
            "PRIVATE KEY" => {
                keys += 1;
                key = Some(PrivatePkcs8KeyDer::from(pem.contents.clone()).into());
            }
            "RSA PRIVATE KEY" => {
                keys += 1;
                key = Some(PrivatePkcs1KeyDer::from(pem.contents.clone()).into());
            }
            "EC PRIVATE KEY" => {
                keys += 1;
                key = Some(PrivateSec1KeyDer::from(pem.contents.clone()).into());
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(
                    "the private key is encrypted (HAProxy would ask for a passphrase)".into(),
                )
            }
            "EC PARAMETERS" | "DH PARAMETERS" => {}
            other => return Err(format!("unexpected PEM block {other:?}")),
        }
        blocks.push_str(&pem_block(&pem.label, &pem.contents));
    }
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    let Some(key) = key else {
        return Err("no private key in the file (a bundle holds the chain and the key)".into());
    };
    if keys > 1 {
        return Err(format!("{keys} private keys in the file; expected one"));
    }
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    for (i, c) in certs.iter().enumerate().skip(1) {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("certificate {} of the chain does not parse: {e}", i + 1))?;
    }
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key is not usable: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(vec![CertificateDer::from(certs[0].clone())], signing);
    match ck.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err("the private key does not match the certificate".into())
        }
        // A key type whose public key rustls cannot derive: HAProxy checks
        // the pair itself (at commit, and `haproxy -c` before a reload).
        Err(_) => {}
    }
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push(d.to_string());
            }
        }
    }
    let not_after = leaf.validity().not_after;
    Ok(Bundle {
        name: name.to_string(),
        pem: blocks,
        subject: leaf.subject().to_string(),
        serial: leaf.raw_serial_as_string(),
        dns_names,
        not_after: not_after.to_string(),
        expired: not_after.timestamp() < now,
    })
}

/// One PEM block, 64 columns, no blank line.
fn pem_block(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                b64.push(B64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A bundle larger than this is refused unread (a chain of a few
/// certificates and a key is a few KB).
const MAX_BUNDLE_BYTES: u64 = 1 << 20;

/// Reads and validates one bundle file (following symlinks; only regular
/// files are read).
pub fn load_bundle(path: &Path) -> Result<Bundle, BundleError> {
    let fail = |reason: String| BundleError {
        file: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_BUNDLE_BYTES {
        return Err(fail(format!(
            "{} bytes: larger than a bundle can be ({MAX_BUNDLE_BYTES})",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_bundle(&name, &bytes, unix_now()).map_err(fail)
}

/// What tells a file changed without reading it.
type Stamp = Result<(u64, u64, u64, i64, i64, u32), String>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| e.to_string())?;
    Ok((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.mode(),
    ))
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    /// Whether this stamp has been judged (read and validated).
    judged: bool,
    /// The last version that validated: what is served for this file.
    good: Option<Bundle>,
}

/// Polls `HAPROXY_CERTS_DIR` and says which bundles to serve.
#[derive(Debug)]
pub struct Scanner {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    dir_error: Option<String>,
    current: CertSet,
}

impl Scanner {
    pub fn new(dir: PathBuf) -> Scanner {
        Scanner {
            dir,
            files: BTreeMap::new(),
            dir_error: None,
            current: CertSet::new(),
        }
    }

    /// One poll. With `settle`, a file is judged only once its metadata is
    /// the same as at the previous poll (a file being written is not judged
    /// half-way). Returns the set to serve when it changed.
    pub fn poll(&mut self, settle: bool) -> Option<CertSet> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<String>, _>>(),
            Err(e) => Err(e),
        };
        let names = match entries {
            Ok(n) => n,
            Err(e) => {
                let e = e.to_string();
                if self.dir_error.as_ref() != Some(&e) {
                    crate::log!(error, Event::CertDirError, dir = %self.dir.display(), error = %e, serving = self.current.len(), "cannot read HAPROXY_CERTS_DIR; the certificates served stay");
                    self.dir_error = Some(e);
                }
                return None;
            }
        };
        if self.dir_error.take().is_some() {
            crate::log!(info, Event::CertDirOk, dir = %self.dir.display(), "HAPROXY_CERTS_DIR is readable again");
        }
        let mut seen = BTreeMap::new();
        for name in names {
            if name.starts_with('.') {
                continue; // editors' and Kubernetes' hidden files
            }
            let path = self.dir.join(&name);
            let st = stamp(&path);
            if matches!(&st, Ok((_, _, _, _, _, mode)) if mode & 0o170000 == 0o040000) {
                continue; // a subdirectory
            }
            seen.insert(name, st);
        }
        self.files.retain(|n, _| seen.contains_key(n));
        for (name, st) in seen {
            let path = self.dir.join(&name);
            let fresh = !self.files.contains_key(&name);
            let f = self.files.entry(name).or_insert(FileState {
                stamp: st.clone(),
                judged: false,
                good: None,
            });
            if fresh && settle {
                continue; // judged at the next poll if it did not change
            }
            if f.stamp != st {
                f.stamp = st;
                f.judged = false;
                if settle {
                    continue;
                }
            } else if f.judged {
                continue;
            }
            f.judged = true;
            match load_bundle(&path) {
                Ok(b) => {
                    if b.expired {
                        crate::log!(warn, Event::CertExpired, file = %path.display(), not_after = %b.not_after, subject = %b.subject, "certificate expired; served anyway");
                    }
                    f.good = Some(b);
                }
                Err(e) => {
                    crate::log!(error, Event::CertRejected,
                        file = %path.display(),
                        error = %e.reason,
                        keeps_previous = f.good.is_some(),
                        "{e}; {}",
                        if f.good.is_some() { "the version served before stays" } else { "not served" }
                    );
                }
            }
        }
        let set: CertSet = self
            .files
            .values()
            .filter_map(|f| f.good.clone())
            .map(|b| (b.name.clone(), b))
            .collect();
        if set != self.current {
            self.current = set.clone();
            Some(set)
        } else {
            None
        }
    }
}

/// The store beside the config: `<config dir>/certs`.
pub fn store_dir(config_file: &Path) -> PathBuf {
    crate::files::absolute(
        &config_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("certs"),
    )
}

/// The store: a copy of each bundle served, and the crt-list naming them
/// (the default certificate first).
struct Store {
    dir: PathBuf,
    crt_list: PathBuf,
}

impl Store {
    fn beside(config_file: &Path) -> Store {
        let dir = store_dir(config_file);
        Store {
            crt_list: dir.join("crt-list"),
            dir,
        }
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn crt_list_text(&self, set: &CertSet) -> String {
        let default = default_name(set);
        let mut names: Vec<&str> = Vec::with_capacity(set.len());
        names.extend(default);
        names.extend(
            set.keys()
                .map(String::as_str)
                .filter(|n| Some(*n) != default),
        );
        names
            .iter()
            .map(|n| format!("{}\n", self.path_of(n).display()))
            .collect()
    }

    /// Writes the bundles of `set` (changed ones only), the crt-list, and
    /// removes store files `set` does not have.
    fn write(&self, set: &CertSet) -> std::io::Result<()> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
        }
        crate::files::share_dir(&self.dir, 0o750)?;
        for b in set.values() {
            let p = self.path_of(&b.name);
            if std::fs::read(&p).ok().as_deref() != Some(b.pem.as_bytes()) {
                crate::files::write_atomic(&p, b.pem.as_bytes())?;
            }
        }
        crate::files::write_atomic(&self.crt_list, self.crt_list_text(set).as_bytes())?;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "crt-list" && !name.starts_with('.') && !set.contains_key(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    fn frontend(&self, set: &CertSet) -> Option<TlsFrontend> {
        (!set.is_empty()).then(|| TlsFrontend {
            crt_list: self.crt_list.display().to_string(),
        })
    }
}

/// For the one-shot `render` and `check`: the bundles of `dir` now, written
/// to the store beside `config_file`; the HTTPS bind when any is usable.
pub fn prepare_once(dir: &Path, config_file: &Path) -> std::io::Result<Option<TlsFrontend>> {
    let set = Scanner::new(dir.to_path_buf())
        .poll(false)
        .unwrap_or_default();
    let store = Store::beside(config_file);
    store.write(&set)?;
    Ok(store.frontend(&set))
}

/// What a new certificate set changes against the one served.
#[derive(Debug)]
pub struct CertDiff<'a> {
    pub added: Vec<&'a Bundle>,
    pub replaced: Vec<&'a Bundle>,
    pub removed: Vec<&'a Bundle>,
    /// Why it needs a reload; `None`: it goes live. `live`: whether a
    /// serving HAProxy loads our crt-list and live changes are on.
    pub reload: Option<String>,
}

/// Diffs the certificate sets `old` (served) and `new`.
pub fn diff_certs<'a>(old: &'a CertSet, new: &'a CertSet, live: bool) -> CertDiff<'a> {
    let added: Vec<&Bundle> = new
        .values()
        .filter(|b| !old.contains_key(&b.name))
        .collect();
    let replaced: Vec<&Bundle> = new
        .values()
        .filter(|b| old.get(&b.name).is_some_and(|o| o != *b))
        .collect();
    let removed: Vec<&Bundle> = old
        .values()
        .filter(|b| !new.contains_key(&b.name))
        .collect();
    let reload = if !live {
        Some("no serving haproxy to change live (or live changes are off)".to_string())
    } else if old.is_empty() || new.is_empty() {
        Some("the HTTPS bind is added or removed".to_string())
    } else if default_name(old) != default_name(new) {
        Some(format!(
            "the default certificate changes ({} → {})",
            default_name(old).unwrap_or("-"),
            default_name(new).unwrap_or("-")
        ))
    } else {
        None
    };
    CertDiff {
        added,
        replaced,
        removed,
        reload,
    }
}

/// For `plan`, reading only: the bundles the store beside `config_file`
/// holds (what the supervisor serves), the bundles `dir` holds now, and the
/// HTTPS bind a render of the latter has.
pub fn peek(dir: &Path, config_file: &Path) -> (CertSet, CertSet, Option<TlsFrontend>) {
    let new = Scanner::new(dir.to_path_buf())
        .poll(false)
        .unwrap_or_default();
    let store = Store::beside(config_file);
    let served: CertSet = std::fs::read_dir(&store.dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "crt-list" && !n.starts_with('.'))
                .filter_map(|n| load_bundle(&store.path_of(&n)).ok())
                .map(|b| (b.name.clone(), b))
                .collect()
        })
        .unwrap_or_default();
    let frontend = store.frontend(&new);
    (served, new, frontend)
}

/// The certificates the serving HAProxy has, and the watcher of the directory.
pub struct Tls {
    /// `HAPROXY_CERTS_DIR`, for logs.
    dir: PathBuf,
    store: Store,
    served: CertSet,
    rx: watch::Receiver<CertSet>,
}

impl Tls {
    /// Scans `dir` once, writes the store, and starts polling it every
    /// `interval`.
    pub fn start(dir: PathBuf, config_file: &Path, interval: Duration) -> Tls {
        let mut scanner = Scanner::new(dir.clone());
        let initial = scanner.poll(false).unwrap_or_default();
        let (tx, rx) = watch::channel(initial.clone());
        let mut tls = Tls {
            dir,
            store: Store::beside(config_file),
            served: CertSet::new(),
            rx,
        };
        if let Err(e) = tls.store.write(&initial) {
            crate::log!(error, Event::CertStoreError, store = %tls.store.dir.display(), error = %e, "cannot write the certificate store");
        } else {
            tls.served = initial;
        }
        for b in tls.served.values() {
            crate::log!(info, Event::CertLoaded, file = %tls.dir.join(&b.name).display(), subject = %b.subject, serial = %b.serial, names = ?b.dns_names, "certificate served");
        }
        if tls.served.is_empty() {
            crate::log!(
                warn,
                Event::CertNone,
                "HAPROXY_CERTS_DIR holds no usable bundle: no HTTPS bind until one is added"
            );
        }
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if tx.is_closed() {
                    return;
                }
                if let Some(set) = scanner.poll(true) {
                    tx.send_replace(set);
                }
            }
        });
        tls
    }

    /// The HTTPS bind, when a bundle is served.
    pub fn frontend(&self) -> Option<TlsFrontend> {
        self.store.frontend(&self.served)
    }

    /// The sets the directory gives, for the loop to wait on.
    pub fn subscribe(&self) -> watch::Receiver<CertSet> {
        self.rx.clone()
    }

    /// The crt-list path (what a rendered config names).
    pub fn crt_list(&self) -> &Path {
        &self.store.crt_list
    }

    /// The set served: what the store holds.
    pub fn served(&self) -> &CertSet {
        &self.served
    }

    /// `HAPROXY_CERTS_DIR` (certificates are logged by their file there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store's directory (the files HAProxy loads, named in live
    /// operations).
    pub fn store_dir(&self) -> &Path {
        &self.store.dir
    }

    /// Writes `set` to the store: what a render and HAProxy load from now
    /// on. On an error the store goes back to the set served (false).
    pub fn store_set(&mut self, set: &CertSet) -> bool {
        if let Err(e) = self.store.write(set) {
            crate::log!(error, Event::CertStoreError, store = %self.store.dir.display(), error = %e, "cannot write the certificate store; the certificates served stay");
            let _ = self.store.write(&self.served);
            return false;
        }
        self.served = set.clone();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(bundles: impl IntoIterator<Item = Bundle>) -> CertSet {
        bundles.into_iter().map(|b| (b.name.clone(), b)).collect()
    }

    fn pair(cn: &str) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        (c.pem(), k.serialize_pem())
    }

    #[test]
    fn a_bundle_validates_and_is_normalized() {
        let (c, k) = pair("a.test");
        let text = format!("junk before\r\n{c}\n\n{k}");
        let b = parse_bundle("a.pem", text.as_bytes(), unix_now()).unwrap();
        assert_eq!(b.dns_names, vec!["a.test".to_string()]);
        assert!(!b.expired);
        assert!(!b.pem.contains("\n\n") && !b.pem.contains('\r') && !b.pem.contains("junk"));
        // The normalized text validates to the same bundle.
        assert_eq!(
            parse_bundle("a.pem", b.pem.as_bytes(), unix_now()).unwrap(),
            b
        );
    }

    #[test]
    fn broken_bundles_are_refused_with_a_reason() {
        let (c, k) = pair("a.test");
        let (_, k2) = pair("b.test");
        let now = unix_now();
        let e = parse_bundle("a.pem", format!("{c}{k2}").as_bytes(), now).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        assert!(parse_bundle("a.pem", b"hello", now)
            .unwrap_err()
            .contains("not PEM"));
        assert!(parse_bundle("a.pem", c.as_bytes(), now)
            .unwrap_err()
            .contains("no private key"));
        assert!(parse_bundle("a.pem", k.as_bytes(), now)
            .unwrap_err()
            .contains("no certificate"));
        assert!(parse_bundle("a b.pem", format!("{c}{k}").as_bytes(), now)
            .unwrap_err()
            .contains("file name"));
        // Expired: served, flagged.
        let b = parse_bundle("a.pem", format!("{c}{k}").as_bytes(), i64::MAX).unwrap();
        assert!(b.expired);
    }

    #[test]
    fn the_default_is_default_pem_else_the_first() {
        let (c, k) = pair("a.test");
        let mk = |n: &str| parse_bundle(n, format!("{c}{k}").as_bytes(), 0).unwrap();
        let s = set_of([mk("b.pem"), mk("a.pem")]);
        assert_eq!(default_name(&s), Some("a.pem"));
        let s = set_of([mk("b.pem"), mk("a.pem"), mk("default.pem")]);
        assert_eq!(default_name(&s), Some("default.pem"));
    }

    #[test]
    fn the_scanner_keeps_the_good_version_of_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair("a.test");
        std::fs::write(dir.path().join("a.pem"), format!("{c}{k}")).unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        let mut s = Scanner::new(dir.path().to_path_buf());
        let set = s.poll(false).unwrap();
        assert_eq!(set.keys().collect::<Vec<_>>(), vec!["a.pem"]);
        // A new file is judged once it was seen unchanged.
        let (c2, k2) = pair("c.test");
        std::fs::write(dir.path().join("c.pem"), format!("{c2}{k2}")).unwrap();
        assert_eq!(s.poll(true), None);
        assert_eq!(s.poll(true).unwrap().len(), 2);
        std::fs::remove_file(dir.path().join("c.pem")).unwrap();
        assert_eq!(s.poll(true).unwrap().len(), 1);
        std::fs::write(dir.path().join("a.pem"), "broken").unwrap();
        std::fs::write(dir.path().join("b.pem"), "broken").unwrap();
        // Judged once settled; the old a.pem stays, b.pem is not served.
        assert_eq!(s.poll(true), None);
        assert_eq!(s.poll(true), None);
        assert_eq!(s.current.keys().collect::<Vec<_>>(), vec!["a.pem"]);
        // The directory gone: nothing changes.
        drop(dir);
        assert_eq!(s.poll(true), None);
        assert_eq!(s.current.len(), 1);
    }
}
