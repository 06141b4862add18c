//! `haproxy-supervisor run`: PID-1 duties, the reload loop and graceful stop.
//! The lifecycle is described step by step in LIFECYCLE.md beside this file.
//!
//! One loop owns all state. It reacts to: the catalog changing (after the
//! `HAPROXY_RELOAD_WAIT` quiescence), SIGHUP (check and reload now), an
//! HAProxy generation exiting (drained, or died: restart with backoff), and
//! SIGTERM/SIGINT (graceful stop; a second one forces). Reloads run inline in
//! that loop, so they are serialized by construction, and signals that
//! arrive during one merge into a single follow-up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use crate::discovery::{self, CatalogRx};
use crate::events::Event;
use crate::files;
use crate::haproxy::{self, HaproxyError, StartSpec, SynDropGuard};
use crate::listeners::Listeners;
use crate::live::{self, Layout, Op, Plan, Running};
use crate::model::{Catalog, Context, Desired};
use crate::policy::ReloadStrategy;
use crate::policy::{
    self, AfterStructural, Due, Ended, Exclusion, Generations, Pending, Retries, Stop, StopStep,
    Trigger, Waits,
};
use crate::process::{self, Exit, Reaper};
use crate::render::{self, Rendered, Renderer};
use crate::runtime::{AdminState, RuntimeApi, RuntimeError};
use crate::settings::{Settings, SourceSettings};
use crate::signals;
use crate::status::{self, LeftOut, Snapshot, Status};
use crate::tls::{Tls, TlsOutcome};

/// Why `prepare` produced no config.
#[derive(Debug)]
enum PrepareError {
    /// `haproxy -c` refused the candidate (logged, counted); `config` is its text.
    Invalid { message: String, config: String },
    /// Reading or writing a file failed: may heal, retried with backoff.
    Transient(FileStep),
}

/// A file step of a reload that failed (a full disk, a read-only mount):
/// it may heal, so the reload is retried.
#[derive(Debug, thiserror::Error)]
enum FileStep {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the candidate config: {0}")]
    Stage(#[source] std::io::Error),
    #[error("cannot put the new config in place: {0}")]
    Commit(#[source] std::io::Error),
}

/// Why the supervisor could not start (exit code 1); each names the
/// setting or resource at fault.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    StatusPort(#[from] status::BindError),
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("iptables: {0}")]
    Iptables(#[source] std::io::Error),
    #[error("HAPROXY_RELOAD_STRATEGY=syn-drop needs iptables and the NET_ADMIN capability: {0}")]
    SynDropUnavailable(#[source] HaproxyError),
    #[error("template: {0}")]
    Template(#[from] render::RenderError),
    #[error("consul: {0}")]
    Consul(#[from] discovery::consul::ConsulError),
    #[error("running {bin} -v: {source}")]
    HaproxyVersion {
        bin: PathBuf,
        source: std::io::Error,
    },
}

/// Counters, logged with each reload.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub reloads: u64,
    pub failed_reloads: u64,
    pub restarts: u64,
    /// Catalog changes applied through the runtime API, without a reload.
    pub live_changes: u64,
    /// Runtime API operations those took.
    pub live_ops: u64,
    /// Live changes that failed and fell back to a reload.
    pub live_failures: u64,
}

/// What became of a catalog change tried live.
#[derive(Debug)]
enum LiveOutcome {
    /// Applied (or nothing the serving HAProxy would notice).
    Applied,
    /// Needs a reload: the change is structural.
    Structural(live::Structural),
    /// A live operation failed: the process may be half-changed, reload now.
    Failed,
}

struct Supervisor {
    settings: Settings,
    reaper: Reaper,
    renderer: Option<Renderer>,
    catalog: Option<CatalogRx>,
    gens: Generations,
    exits_tx: mpsc::UnboundedSender<(u64, Pid, Exit)>,
    /// The config file HAProxy runs from (only ever holds a checked config).
    running_file: PathBuf,
    /// The text of the config the serving generation runs.
    running_text: Option<String>,
    /// Warnings already logged, so each is logged once while it lasts.
    warned: BTreeSet<String>,
    syn_drop_available: bool,
    counters: Counters,
    restarts: policy::Restarts,
    /// The mass-removal guard, and the last catalog it let through (what
    /// renders while an answer is held).
    guard: policy::RemovalGuard,
    guard_applied: Option<std::sync::Arc<Catalog>>,
    /// The removal held now, for /status and /readyz.
    guard_held: Option<policy::Removal>,
    /// Pids of HAProxy processes left by an earlier run of ours (adopted).
    adopted: Vec<Pid>,
    /// The global maxconn last lowered to fit the servers' descriptors.
    fd_fit: Option<u32>,
    /// The layout of `running_text` (the config the next generation starts
    /// from); `None` in external-watcher mode.
    running_layout: Option<Layout>,
    /// The layout `prepare` produced, until a reload adopts it.
    prepared_layout: Option<Layout>,
    /// What the serving generation runs, for live changes; `None` when not
    /// known (nothing started by us yet, or a live change failed half-way).
    live: Option<Running>,
    caps: live::Caps,
    runtime: RuntimeApi,
    /// A config applied live but not yet on disk (written at most once per
    /// [`SYNC_EVERY`], before any start, and at stop).
    unsynced: Option<(Rendered, Layout)>,
    last_sync: Option<Instant>,
    /// Serializes writes of the config on disk (a reload's, and the write
    /// after live changes, which runs as a task); holds the count of
    /// reloads, so a write after live changes that a reload overtook is
    /// dropped instead of putting an older config back.
    disk: Arc<tokio::sync::Mutex<u64>>,
    /// The same count, as the loop last set it.
    disk_epoch: u64,
    sync_in_flight: bool,
    sync_tx: mpsc::UnboundedSender<SyncDone>,
    /// The config (and maps) the serving generation runs: what the file on
    /// disk rolls back to when a new generation fails to start.
    serving_config: Option<Rendered>,
    /// What `prepare` last rendered, until a start adopts it.
    prepared_rendered: Option<Rendered>,
    /// Services HAProxy refused, left out of renders.
    excluded: BTreeMap<String, Exclusion>,
    /// A reload to retry after a transient failure, with its backoff, and
    /// what failed first (logged once per episode).
    retry_at: Option<tokio::time::Instant>,
    retries: Retries,
    /// Excluded services whose time is up: included in the next render.
    retry_excluded: Vec<String>,
    status: Arc<Status>,
    /// Each service's catalog entry as in the config that serves: a change
    /// HAProxy refuses is blamed on the services that differ.
    good_fingerprints: BTreeMap<String, u64>,
    prepared_fingerprints: Option<BTreeMap<String, u64>>,
    /// Services and servers of the last render, and the services it left out.
    rendered_counts: (usize, usize),
    left_out: Vec<LeftOut>,
    /// `HAPROXY_CERTS_DIR`: the certificates served (SPEC §15).
    tls: Option<Tls>,
    /// The listening sockets we hold (`HAPROXY_RELOAD_STRATEGY=inherit`
    /// with a rendered config); `None` otherwise: HAProxy binds.
    listeners: Option<Listeners>,
    /// Servers whose last live operation failed or timed out: what the
    /// serving process made of them is not carried into the next
    /// generation's server state.
    unconfirmed: BTreeSet<(String, String)>,
    /// (uid, gid) HAProxy starts as when it inherits every socket: it never
    /// runs as root, not even while it reads its config.
    run_as: Option<(u32, u32)>,
}

/// Identifies a service's catalog entry (an excluded service changed when
/// this did).
fn fingerprint(s: &crate::model::CatalogService) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{s:?}").hash(&mut h);
    h.finish()
}

fn fingerprints(c: &Catalog) -> BTreeMap<String, u64> {
    c.services
        .iter()
        .map(|(n, s)| (n.clone(), fingerprint(s)))
        .collect()
}

/// The outcome of writing a config applied live to disk.
struct SyncDone {
    epoch: u64,
    /// The text and layout now on disk; `None` when the write failed
    /// (logged) or was overtaken by a reload.
    written: Option<(Rendered, Layout)>,
}

/// What a [`sync_job`] needs of the supervisor.
struct SyncJob {
    disk: Arc<tokio::sync::Mutex<u64>>,
    epoch: u64,
    reaper: Reaper,
    bin: PathBuf,
    file: PathBuf,
    /// The held sockets the config names (`haproxy -c` inspects them).
    fds: Vec<std::os::fd::RawFd>,
}

/// Writes `rendered` (applied live, so it runs already) to `file`: staged,
/// checked by `haproxy -c` at nice 19, swapped in. Holds the disk lock; does
/// nothing if a reload wrote the file since `epoch`.
async fn sync_job(job: SyncJob, rendered: Rendered, layout: Layout) -> SyncDone {
    let SyncJob {
        disk,
        epoch,
        reaper,
        bin,
        file,
        fds,
    } = job;
    let done = |written| SyncDone { epoch, written };
    let current = disk.lock().await;
    if *current != epoch {
        return done(None);
    }
    let on_disk = std::fs::read_to_string(&file).ok();
    if on_disk.as_deref() != Some(rendered.config.as_str()) {
        let staged = match files::stage(&file, &rendered) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(event = %Event::WriteFailed, error = %e, "cannot write the config applied live");
                return done(None);
            }
        };
        if let Err(e) = haproxy::check_niced(&reaper, &bin, &staged.candidate, &fds).await {
            // Cannot happen with validated server lines; if it does, the
            // file keeps the last checked config and the next change (or
            // SIGHUP) tries again.
            tracing::error!(event = %Event::ConfigInvalid, error = %e, "the config applied live does not pass haproxy -c; the file on disk is not updated");
            staged.abort();
            return done(None);
        }
        if let Err(e) = staged.commit(&rendered) {
            tracing::error!(event = %Event::WriteFailed, error = %e, "cannot put the config applied live in place");
            return done(None);
        }
    }
    drop(current);
    done(Some((rendered, layout)))
}

/// How often the config applied live is written to disk and checked: each
/// write costs a `haproxy -c` (tens of ms of CPU, most of it loading the
/// system CA store), which at a change every 150 ms would take a fifth of a
/// core from the HAProxy serving. A restart or reload never waits on it:
/// they write what they start from first.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// With held sockets and `HAPROXY_USER`, HAProxy needs no privilege at
/// all: it is started as that user (uid, gid), and the files it reads are
/// shared with the user's group ([`files::share_with_group`]); the run
/// dir, where it creates its admin socket, is group-writable and sticky (it
/// cannot replace the supervisor's own files there).
fn unprivileged_start(settings: &Settings) -> Option<(u32, u32)> {
    if settings.reload_strategy != ReloadStrategy::Inherit
        || matches!(settings.source, SourceSettings::External)
    {
        return None;
    }
    // Only root can start a process as another user.
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let name = settings.vars.user.as_deref()?;
    let user = match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => u,
        _ => return None,
    };
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let run_dir = || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(&settings.run_dir, None, Some(gid))?;
        std::fs::set_permissions(&settings.run_dir, std::fs::Permissions::from_mode(0o1770))
    };
    if let Err(e) = run_dir() {
        tracing::warn!(event = %Event::Degraded, what = "user", dir = %settings.run_dir.display(), error = %e, "cannot give the run dir to HAProxy's group; HAProxy starts as root and drops to HAPROXY_USER");
        return None;
    }
    files::share_with_group(gid);
    Some((uid, gid))
}

/// Runs the supervisor until SIGTERM/SIGINT; returns the exit code.
pub async fn run(settings: Settings) -> Result<i32, SupervisorError> {
    let create_dir = |path: &std::path::Path| {
        std::fs::create_dir_all(path).map_err(|source| SupervisorError::CreateDir {
            path: path.to_path_buf(),
            source,
        })
    };
    // PID 1 gets no default signal actions: install every handler first.
    let mut sigs = signals::listen().map_err(SupervisorError::Signals)?;
    if let Err(e) = process::become_subreaper() {
        tracing::warn!(event = %Event::Degraded, what = "subreaper", error = %e, "cannot become a child subreaper; orphans may not be reaped here");
    }
    // The status server: its port taken is a start-up error naming it.
    let status = Status::new();
    let listener = status::bind(std::net::SocketAddr::from((
        [0, 0, 0, 0],
        settings.status_port,
    )))
    .await?;
    tokio::spawn(status::serve(listener, status.clone()));
    let reaper = Reaper::new();
    tokio::spawn(reaper.clone().run());

    create_dir(&settings.run_dir)?;
    if let Some(dir) = settings.config_file.parent() {
        if !dir.as_os_str().is_empty() {
            create_dir(dir)?;
        }
    }
    let run_as = unprivileged_start(&settings);

    // iptables: required for syn-drop, the fallback of seamless.
    let ipt = reaper
        .hold_off(haproxy::iptables_usable)
        .await
        .map_err(SupervisorError::Iptables)?;
    let syn_drop_available = match (ipt, settings.reload_strategy) {
        (Ok(()), _) => {
            match reaper.hold_off(haproxy::remove_stale_rules).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    tracing::warn!(event = %Event::StaleRulesRemoved, rules = n, "removed SYN-drop rules left by an earlier run")
                }
                Ok(Err(e)) => {
                    tracing::error!(event = %Event::SynDropCleanupFailed, error = %e, "cannot remove stale SYN-drop rules")
                }
                Err(e) => {
                    tracing::error!(event = %Event::SynDropCleanupFailed, error = %e, "cannot remove stale SYN-drop rules")
                }
            }
            true
        }
        (Err(e), ReloadStrategy::SynDrop) => return Err(SupervisorError::SynDropUnavailable(e)),
        (Err(e), ReloadStrategy::Seamless) => {
            tracing::warn!(event = %Event::Degraded, what = "iptables", error = %e, "iptables unavailable: seamless reloads cannot fall back to syn-drop");
            false
        }
        (Err(_), ReloadStrategy::Plain | ReloadStrategy::Inherit) => false,
    };

    let mut catalog_file: Option<(PathBuf, discovery::CatalogTx)> = None;
    let (renderer, catalog, running_file) = match &settings.source {
        SourceSettings::External => (None, None, settings.run_dir.join("haproxy.cfg")),
        source => {
            let r = Renderer::new(
                settings.template.as_deref(),
                &settings.config_file,
                &settings.admin_socket(),
            )?;
            let (tx, rx) = watch::channel(None::<Arc<Catalog>>);
            match source.clone() {
                SourceSettings::File(path) => {
                    catalog_file = Some((path.clone(), tx.clone()));
                    tokio::spawn(discovery::file::watch(path, Duration::from_millis(20), tx));
                }
                SourceSettings::Consul(cfg) => {
                    // Fail now on a bad CA file rather than in the task.
                    discovery::consul::Client::new(&cfg)?;
                    tokio::spawn(async move {
                        if let Err(e) = discovery::consul::watch(cfg, tx).await {
                            tracing::error!(event = %Event::DiscoveryStopped, error = %e, "consul watcher stopped");
                        }
                    });
                }
                SourceSettings::External => unreachable!(),
            }
            (Some(r), Some(rx), settings.config_file.clone())
        }
    };

    let tls = match (&settings.certs_dir, &renderer) {
        (Some(dir), Some(_)) => Some(Tls::start(
            dir.clone(),
            &settings.config_file,
            Duration::from_millis(100),
        )),
        (Some(_), None) => {
            tracing::warn!(
                event = %Event::Degraded,
                what = "certs_dir",
                "HAPROXY_CERTS_DIR is ignored with --no-render: the external config decides"
            );
            None
        }
        (None, _) => None,
    };

    let caps = match reaper
        .run_output({
            let mut c = std::process::Command::new(&settings.haproxy_bin);
            c.arg("-v").stdin(std::process::Stdio::null());
            c
        })
        .await
    {
        Ok(out) => live::Caps::from_version(&String::from_utf8_lossy(&out.stdout)),
        Err(source) => {
            return Err(SupervisorError::HaproxyVersion {
                bin: settings.haproxy_bin.clone(),
                source,
            })
        }
    };
    let runtime = RuntimeApi::new(settings.admin_socket(), Duration::from_secs(2));

    let (exits_tx, mut exits_rx) = mpsc::unbounded_channel();
    let (sync_tx, mut sync_rx) = mpsc::unbounded_channel();
    let settings_guard = (settings.removal_guard_percent, settings.removal_guard_grace);
    let mut sup = Supervisor {
        adopted: adopt_leftovers(&settings, &running_file),
        settings,
        reaper,
        renderer,
        catalog,
        gens: Generations::new(),
        exits_tx,
        running_file,
        running_text: None,
        warned: BTreeSet::new(),
        syn_drop_available,
        counters: Counters::default(),
        restarts: policy::Restarts::new(Duration::from_secs(10)),
        guard: policy::RemovalGuard::new(settings_guard.0, settings_guard.1),
        guard_applied: None,
        guard_held: None,
        fd_fit: None,
        running_layout: None,
        prepared_layout: None,
        live: None,
        caps,
        runtime,
        unsynced: None,
        last_sync: None,
        disk: Arc::new(tokio::sync::Mutex::new(0)),
        disk_epoch: 0,
        sync_in_flight: false,
        sync_tx,
        serving_config: None,
        prepared_rendered: None,
        excluded: BTreeMap::new(),
        retry_at: None,
        retries: Retries::new(Duration::from_secs(30)),
        retry_excluded: Vec::new(),
        status,
        good_fingerprints: BTreeMap::new(),
        prepared_fingerprints: None,
        rendered_counts: (0, 0),
        left_out: Vec::new(),
        tls,
        listeners: None,
        unconfirmed: BTreeSet::new(),
        run_as,
    };
    if sup.settings.reload_strategy == ReloadStrategy::Inherit && sup.renderer.is_some() {
        sup.listeners = Some(Listeners::new(sup.settings.vars.backlog));
    } else {
        // No sockets held: `plan` must not render an earlier run's.
        let _ = std::fs::remove_file(sup.settings.run_dir.join("listeners"));
    }
    tracing::info!(event = %Event::Started,
        strategy = sup.settings.reload_strategy.as_str(),
        config = %sup.settings.config_file.display(),
        pid = std::process::id(),
        "haproxy-supervisor started"
    );

    if sup.catalog.is_none() {
        sup.reload(Trigger::Start).await;
    }
    // Catalog changes wait for quiescence (policy::Pending): a change that
    // can go live waits `live_wait`; a structural one the reload wait.
    let mut pending: Option<Pending> = None;
    let waits = Waits {
        live: sup.settings.live_wait,
        reload_min: sup.settings.reload_wait_min,
        reload_max: sup.settings.reload_wait_max,
    };
    let mut restart_at: Option<tokio::time::Instant> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86400);

    loop {
        sup.publish_status();
        // A checked config but nothing serving (a start that failed, say
        // because a port was taken): retry with backoff until it serves.
        if restart_at.is_none() && sup.running_text.is_some() && sup.serving().is_none() {
            let delay = sup.restarts.next_delay();
            tracing::warn!(event = %Event::RestartScheduled, delay_ms = delay.as_millis() as u64, crash_loop = sup.restarts.crash_loop(), "no haproxy is serving; starting one");
            restart_at = Some(tokio::time::Instant::now() + delay);
        }
        let deadline = match pending {
            Some(p) => tokio::time::Instant::from_std(p.deadline(sup.live_possible(), &waits)),
            None => far(),
        };
        let guard_on = sup.guard.until().is_some() && sup.catalog.is_some();
        let guard_until = tokio::time::Instant::from_std(
            sup.guard
                .until()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400)),
        );
        let cleanup_parked = sup.live.as_ref().is_some_and(|l| !l.parked.is_empty());
        let exclusion_ends = tokio::time::Instant::from_std(
            sup.excluded
                .values()
                .map(|x| x.until)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400)),
        );
        let sync_at = tokio::time::Instant::from_std(
            sup.last_sync.map_or_else(Instant::now, |t| t + SYNC_EVERY),
        );
        let catalog_changed = async {
            match &mut sup.catalog {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let certs_changed = async {
            match &mut sup.tls {
                Some(t) => t.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(sig) = sigs.recv() => match signals::action(sig) {
                signals::Action::Stop { graceful } => {
                    return Ok(sup.stop(sig.as_str(), graceful, &mut sigs, &mut exits_rx).await)
                }
                signals::Action::Forward => match sup.serving() {
                    Some(g) => {
                        tracing::info!(event = %Event::SignalForwarded, signal = sig.as_str(), pid = g.pid.as_raw(), "forwarding the signal to the serving haproxy");
                        let _ = kill(g.pid, sig);
                    }
                    None => tracing::info!(event = %Event::SignalIgnored, signal = sig.as_str(), "no haproxy serves; signal ignored"),
                },
                signals::Action::Ignore => {
                    tracing::info!(event = %Event::SignalIgnored, signal = sig.as_str(), "signal ignored");
                }
                signals::Action::Reload => {
                tracing::info!(event = %Event::ReloadRequested, signal = sig.as_str(), "SIGHUP: checking and reloading");
                pending = None;
                // SIGHUP re-reads what the supervisor reads: the template
                // (a broken one changes nothing) and the catalog file.
                // SIGHUP also confirms a removal the guard holds.
                sup.guard.confirm();
                if !sup.reread_template() {
                    continue;
                }
                if let Some((path, tx)) = &catalog_file {
                    match discovery::file::load(path) {
                        Ok(c) => {
                            discovery::publish(tx, c);
                        }
                        Err(e) => tracing::error!(event = %Event::CatalogFileRejected, path = %path.display(), error = %e, "SIGHUP: cannot read the catalog file; keeping the last good catalog"),
                    }
                    if let Some(rx) = &mut sup.catalog {
                        rx.borrow_and_update();
                    }
                }
                sup.reload(Trigger::Sighup).await;
                }
            },
            ok = catalog_changed => {
                if !ok {
                    tracing::error!(event = %Event::DiscoveryStopped, "discovery stopped; keeping the running config");
                    sup.catalog = None;
                    continue;
                }
                let now = Instant::now();
                if sup.gens.is_empty() && sup.running_text.is_none() {
                    // The first catalog: start without waiting.
                    sup.reload(Trigger::Start).await;
                } else {
                    pending = Some(Pending::changed(pending, now));
                }
            }
            _ = sleep_until(deadline), if pending.is_some() => {
                let p = pending.take().expect("pending");
                match p.due(sup.live_possible()) {
                    Due::TryLive => match sup.try_live().await {
                        LiveOutcome::Applied => {}
                        LiveOutcome::Failed => sup.reload(Trigger::Catalog).await,
                        LiveOutcome::Structural(why) => {
                            tracing::info!(event = %Event::StructuralChange, reason = %why, "structural change: reloading after the reload wait");
                            match p.structural(Instant::now(), &waits) {
                                AfterStructural::ReloadNow => sup.reload(Trigger::Catalog).await,
                                AfterStructural::Wait(p) => pending = Some(p),
                            }
                        }
                    },
                    Due::Reload => sup.reload(Trigger::Catalog).await,
                }
            }
            _ = sleep_until(guard_until), if guard_on => {
                // The grace period ended: judge the latest answer now (which
                // ends the hold) and apply it as a catalog change.
                let _ = sup.current_catalog();
                pending = Some(Pending::changed(pending, Instant::now()));
            }
            () = certs_changed => sup.certs_changed().await,
            _ = sleep_until(sync_at), if sup.unsynced.is_some() && !sup.sync_in_flight => {
                sup.sync_in_background();
            }
            Some(done) = sync_rx.recv() => {
                sup.sync_in_flight = false;
                sup.synced(done);
            }
            _ = sleep_until(sup.retry_at.unwrap_or_else(far)), if sup.retry_at.is_some() => {
                sup.retry_at = None;
                sup.reload(Trigger::Retry).await;
            }
            _ = sleep_until(exclusion_ends), if sup.renderer.is_some() && !sup.excluded.is_empty() => {
                // A service left out is tried again: as a catalog change.
                let now = Instant::now();
                let ended: Vec<String> = sup.excluded.iter().filter(|(_, x)| x.until <= now).map(|(n, _)| n.clone()).collect();
                for n in &ended {
                    if let Some(x) = sup.excluded.get_mut(n) {
                        x.tried_again(now);
                    }
                }
                tracing::info!(event = %Event::ServiceRetried, services = ?ended, "trying services left out again");
                sup.retry_excluded = ended;
                pending = Some(Pending::changed_structural(pending, now));
            }
            _ = tokio::time::sleep(Duration::from_secs(2)), if cleanup_parked => {
                sup.delete_parked().await;
            }
            Some((id, pid, exit)) = exits_rx.recv() => {
                // A needed restart is scheduled at the top of the loop.
                sup.on_exit(id, pid, exit);
            }
            _ = sleep_until(restart_at.unwrap_or_else(far)), if restart_at.is_some() => {
                restart_at = None;
                if sup.serving().is_none() {
                    sup.flush().await;
                    sup.counters.restarts += 1;
                    sup.status.restarted();
                    if let Err(HaproxyError::DiedAtStart { output, .. }) = sup.start_generation(Trigger::Restart).await {
                        // A service HAProxy refuses: render without it.
                        let text = sup.running_text.clone().unwrap_or_default();
                        if sup.renderer.is_some() && sup.exclude_blamed(&output, &text, false) {
                            sup.reload(Trigger::Retry).await;
                        }
                    }
                }
            }
        }
    }
}

/// HAProxy processes of an earlier run of ours (the supervisor was killed):
/// the first generation takes their sockets and finishes them. They are the
/// pids of the pid file, and any `haproxy -f <running_file>`: a process
/// spawned just before the kill may not have reached the pid file yet.
fn adopt_leftovers(settings: &Settings, running_file: &std::path::Path) -> Vec<Pid> {
    let is_haproxy = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "haproxy")
    };
    // Same file: `-f` resolved against that process's working directory,
    // compared canonically (tests and users pass relative paths).
    let ours = std::fs::canonicalize(running_file).ok();
    let runs_our_file = |p: i32| {
        let Some(ours) = &ours else { return false };
        let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else {
            return false;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{p}/cwd")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2).any(|w| {
            w[0] == b"-f"
                && std::str::from_utf8(w[1])
                    .ok()
                    .and_then(|f| std::fs::canonicalize(cwd.join(f)).ok())
                    .as_ref()
                    == Some(ours)
        })
    };
    // Only processes of our own network namespace hold our ports.
    let my_netns = std::fs::read_link("/proc/self/ns/net").ok();
    let same_netns = |p: i32| {
        my_netns.is_some() && std::fs::read_link(format!("/proc/{p}/ns/net")).ok() == my_netns
    };
    let mut pids: BTreeSet<i32> = std::fs::read_to_string(settings.run_dir.join("haproxy.pids"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .collect();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        pids.extend(
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| runs_our_file(*p)),
        );
    }
    let me = std::process::id() as i32;
    let pids: Vec<Pid> = pids
        .into_iter()
        .filter(|p| *p > 1 && *p != me && is_haproxy(*p) && same_netns(*p))
        .map(Pid::from_raw)
        .collect();
    if !pids.is_empty() {
        tracing::warn!(event = %Event::LeftoversAdopted,
            ?pids,
            "found haproxy processes of an earlier run; the new one will take over from them"
        );
    }
    pids
}

impl Supervisor {
    fn serving(&self) -> Option<&policy::Generation> {
        self.gens.serving()
    }

    fn write_pids(&self) {
        let text: String = self
            .gens
            .all()
            .iter()
            .map(|g| format!("{}\n", g.pid))
            .collect();
        let path = self.settings.run_dir.join("haproxy.pids");
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return; // as at spawn: nothing to write at "reload done"
        }
        if let Err(e) = files::write_replace(&path, text.as_bytes()) {
            tracing::warn!(event = %Event::WriteFailed, error = %e, "cannot write the pid file");
        }
    }

    /// Logs each warning once while it lasts.
    fn log_warnings(&mut self, warnings: &[crate::model::Warning]) {
        let now: BTreeSet<String> = warnings.iter().map(|w| w.to_string()).collect();
        for w in now.difference(&self.warned) {
            tracing::warn!(event = %Event::Warning, "{w}");
        }
        self.warned = now;
    }

    /// HAProxy reserves one descriptor per health-checked server on top of
    /// two per connection and refuses to start when the open-files limit
    /// cannot hold them all (with 3,000 servers and the start-up fit of the
    /// global maxconn it never started). Lowers the global maxconn so that
    /// every server fits too; logs when the fitted value changes.
    /// The ports `desired` binds, held by us (bound now where new), as the
    /// render names them; no held socket when HAProxy binds itself.
    fn hold_ports(
        &mut self,
        desired: &Desired,
        vars: &crate::model::HaproxyVars,
    ) -> crate::listeners::Binds {
        let Some(l) = &mut self.listeners else {
            return crate::listeners::Binds::default();
        };
        let any = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        let mut wanted = BTreeMap::new();
        wanted.insert(vars.http_port, any);
        if let (Some(p), Some(_)) = (vars.https_port, &desired.tls) {
            wanted.insert(p, any);
        }
        if let Some(ip) = crate::listeners::parse_ip(&vars.stats_bind) {
            wanted.insert(vars.stats_port, ip);
        }
        for s in &desired.services {
            if let Some(p) = s.frontend_port {
                wanted.entry(p).or_insert(any);
            }
        }
        let (binds, errors) = l.binds(&wanted);
        for (port, e) in errors {
            let key = format!("bind:{port}:{e}");
            if self.warned.insert(key) {
                tracing::warn!(event = %Event::ListenerFailed, port, error = %e, "cannot hold this port's listening socket; haproxy binds it itself");
            }
        }
        binds
    }

    /// The sockets `config` names listen from now on (connections queue
    /// until a generation accepts); those it does not name are closed.
    fn settle_listeners(&mut self, config: &str) {
        if let Some(l) = &mut self.listeners {
            if let Err(e) = l.settle(config) {
                tracing::error!(event = %Event::ListenerFailed, error = %e, "cannot listen on a held socket");
            }
        }
    }

    /// Closes the held sockets that neither the serving config nor one
    /// about to start names, and records the rest in `<run-dir>/listeners`.
    fn release_listeners(&mut self) {
        let Some(l) = &mut self.listeners else {
            return;
        };
        let keep = self.running_text.clone().unwrap_or_default();
        let released = l.release(&keep);
        if !released.is_empty() {
            tracing::info!(event = %Event::ListenersReleased, ports = ?released, "released the listening sockets of ports no longer served");
        }
        let path = self.settings.run_dir.join("listeners");
        if let Err(e) = files::write_replace(&path, l.file_text().as_bytes()) {
            tracing::warn!(event = %Event::WriteFailed, file = %path.display(), error = %e, "cannot write the listeners file");
        }
    }

    /// The held sockets `config` names.
    fn held_fds(&self, config: &str) -> Vec<std::os::fd::RawFd> {
        self.listeners
            .as_ref()
            .map(|l| l.fds_for(config))
            .unwrap_or_default()
    }

    fn fit_fd_limit(&mut self, desired: &Desired) -> crate::model::HaproxyVars {
        const RESERVE: u64 = 1000;
        let mut vars = self.settings.vars.clone();
        let Ok((limit, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        else {
            return vars;
        };
        let servers: u64 = desired
            .services
            .iter()
            .map(|s| s.servers.len() as u64)
            .sum();
        let fitted = policy::fitted_maxconn(vars.maxconn_global, Some(servers), limit);
        if fitted != self.fd_fit {
            if let Some(fit) = fitted {
                tracing::warn!(event = %Event::Warning,
                    servers,
                    open_files_limit = limit,
                    maxconn = fit,
                    "HAPROXY_MAXCONN_GLOBAL={} and one descriptor per checked server do not fit the open-files limit; using a lower global maxconn{}",
                    vars.maxconn_global,
                    if limit < RESERVE + servers + 2 { " (too many servers: haproxy will refuse to start)" } else { "" }
                );
            }
            self.fd_fit = fitted;
        }
        if let Some(fit) = fitted {
            vars.maxconn_global = fit;
        }
        vars
    }

    /// The desired state of `catalog`, without the services HAProxy
    /// refused (unless their registration changed since, or their time out
    /// is up).
    fn desired(&mut self, catalog: &Catalog) -> (Desired, Vec<crate::model::Warning>) {
        let (mut desired, warnings) = Desired::build(catalog, &Context::from(&self.settings.vars));
        desired.tls = self.tls.as_ref().and_then(Tls::frontend);
        let retry = std::mem::take(&mut self.retry_excluded);
        self.excluded.retain(|name, x| {
            let same = catalog
                .services
                .get(name)
                .is_some_and(|c| fingerprint(c) == x.fingerprint);
            if !same {
                tracing::info!(event = %Event::ServiceRetried, service = %name, "a service left out changed; trying it again");
            }
            same
        });
        desired
            .services
            .retain(|s| !self.excluded.contains_key(&s.name) || retry.contains(&s.name));
        self.rendered_counts = (
            desired.services.len(),
            desired.services.iter().map(|s| s.servers.len()).sum(),
        );
        let rendered: BTreeSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
        let mut left_out: Vec<LeftOut> = warnings
            .iter()
            .filter(|w| !rendered.contains(w.service.as_str()))
            .map(|w| LeftOut {
                service: w.service.clone(),
                reason: format!("{}: {}", w.tag, w.message),
            })
            .collect();
        left_out.extend(
            self.excluded
                .keys()
                .filter(|n| !rendered.contains(n.as_str()))
                .map(|n| LeftOut {
                    service: n.clone(),
                    reason: "haproxy refused it (see the log)".into(),
                }),
        );
        left_out.sort_by(|a, b| a.service.cmp(&b.service));
        left_out.dedup_by(|a, b| a.service == b.service);
        self.left_out = left_out;
        (desired, warnings)
    }

    /// Produces a checked config in `running_file`. Returns its text, or
    /// `None` when there is nothing new to run; an error when the candidate
    /// is invalid (logged, counted; the running HAProxy and file are
    /// untouched) or a step failed that may heal.
    async fn prepare(&mut self, trigger: Trigger) -> Result<Option<String>, PrepareError> {
        let bin = self.settings.haproxy_bin.clone();
        if self.renderer.is_none() {
            // External watcher mode: check its file, then copy it to ours.
            let src = self.settings.config_file.clone();
            let text = std::fs::read_to_string(&src).map_err(|source| {
                PrepareError::Transient(FileStep::Read {
                    path: src.clone(),
                    source,
                })
            })?;
            if let Err(e) = haproxy::check(&self.reaper, &bin, &src, &[]).await {
                self.status.check_failed();
                self.counters.failed_reloads += 1;
                tracing::error!(event = %Event::ConfigInvalid, error = %e, failed_reloads = self.counters.failed_reloads, "invalid config; keeping the running haproxy and the last good file");
                return Err(PrepareError::Invalid {
                    message: e.to_string(),
                    config: text,
                });
            }
            files::write_atomic(&self.running_file, text.as_bytes()).map_err(|source| {
                PrepareError::Transient(FileStep::Write {
                    path: self.running_file.clone(),
                    source,
                })
            })?;
            self.prepared_rendered = Some(Rendered {
                config: text.clone(),
                maps: BTreeMap::new(),
            });
            return Ok(Some(text));
        }
        let Some(catalog) = self.current_catalog() else {
            return Ok(None);
        };
        self.prepared_fingerprints = Some(fingerprints(&catalog));
        let (desired, warnings) = self.desired(&catalog);
        let vars = self.fit_fd_limit(&desired);
        let binds = self.hold_ports(&desired, &vars);
        let Some(renderer) = &self.renderer else {
            return Ok(None);
        };
        let rendered = match renderer.render_with(&desired, &vars, &binds) {
            Ok(r) => r,
            Err(e) => {
                // The template is the user's: a render error is theirs to fix.
                self.counters.failed_reloads += 1;
                tracing::error!(event = %Event::RenderFailed, error = %e, "render failed; keeping the running haproxy");
                return Ok(None);
            }
        };
        let layout = Layout::new(&rendered, &renderer.maps_dir_str());
        self.settle_listeners(&rendered.config);
        self.log_warnings(&warnings);
        self.prepared_layout = Some(layout);
        self.prepared_rendered = Some(rendered.clone());
        let on_disk = std::fs::read_to_string(&self.running_file).ok();
        let unchanged = on_disk.as_deref() == Some(rendered.config.as_str());
        let running = self.running_text.as_deref() == Some(rendered.config.as_str());
        if unchanged && running && matches!(trigger, Trigger::Catalog) {
            tracing::debug!(event = %Event::ConsulChanged, "catalog changed but the config did not; no reload");
            return Ok(None);
        }
        if unchanged && running && trigger != Trigger::Certs {
            // The very text we checked and put in place ourselves (a SIGHUP
            // with nothing new): checking it again would only cost CPU.
            return Ok(Some(rendered.config));
        }
        let fds = self.held_fds(&rendered.config);
        if unchanged
            && haproxy::check(&self.reaper, &bin, &self.running_file, &fds)
                .await
                .is_ok()
        {
            // In place but not checked by this run (a previous run wrote it).
            return Ok(Some(rendered.config));
        }
        let staged = files::stage(&self.running_file, &rendered)
            .map_err(|e| PrepareError::Transient(FileStep::Stage(e)))?;
        if let Err(e) = haproxy::check(&self.reaper, &bin, &staged.candidate, &fds).await {
            self.status.check_failed();
            self.counters.failed_reloads += 1;
            tracing::error!(event = %Event::ConfigInvalid, error = %e, failed_reloads = self.counters.failed_reloads, "invalid config; keeping the running haproxy and the last good file");
            staged.abort();
            self.release_listeners();
            return Err(PrepareError::Invalid {
                message: e.to_string(),
                config: rendered.config,
            });
        }
        staged
            .commit(&rendered)
            .map_err(|e| PrepareError::Transient(FileStep::Commit(e)))?;
        tracing::info!(event = %Event::ConfigWritten, services = desired.services.len(), file = %self.running_file.display(), "config written");
        Ok(Some(rendered.config))
    }

    /// Leaves out the services HAProxy's `message` blames in `config` (a
    /// frontend or backend it names or points at); true when it found any
    /// not left out yet.
    fn exclude_blamed(&mut self, message: &str, config: &str, sole_change: bool) -> bool {
        // What prepare rendered: the catalog the guard let through.
        let Some(catalog) = self.guard_applied.clone() else {
            return false;
        };
        let blamed = haproxy::blamed_proxies(message, config);
        let changed: BTreeSet<String> = catalog
            .services
            .iter()
            .filter(|(n, c)| self.good_fingerprints.get(*n) != Some(&fingerprint(c)))
            .map(|(n, _)| n.clone())
            .collect();
        let culprits = policy::culprits(
            &blamed,
            &changed,
            sole_change,
            !self.good_fingerprints.is_empty(),
        );
        if culprits.is_empty() && !changed.is_empty() {
            tracing::error!(event = %Event::ChangeRefused, changed = ?changed, "haproxy refused the change and names none of the services that changed; keeping the running haproxy");
        }
        let mut any = false;
        for name in culprits {
            if self.excluded.contains_key(&name) {
                continue;
            }
            let first = message
                .lines()
                .find(|l| {
                    l.contains("[ALERT]")
                        && !l.contains("Fatal errors")
                        && !l.contains("Error(s) found")
                })
                .unwrap_or(message)
                .trim();
            tracing::warn!(event = %Event::ServiceLeftOut, service = %name, haproxy = %first, "service left out: haproxy refused it; the others still apply");
            self.excluded.insert(
                name.clone(),
                Exclusion::new(fingerprint(&catalog.services[&name]), Instant::now()),
            );
            any = true;
        }
        any
    }

    /// A failure that may heal: the reload is retried with backoff, and
    /// logged once per episode.
    fn retry_later(&mut self, what: String) {
        let r = self.retries.failed(&what);
        if r.first {
            tracing::error!(event = %Event::ReloadRetry, error = %what, retry_in = ?r.delay, first = true, "reload failed; retrying with backoff until it succeeds (the running haproxy keeps serving)");
        } else {
            tracing::debug!(event = %Event::ReloadRetry, error = %what, retry_in = ?r.delay, first = false, "reload failed again");
        }
        self.retry_at = Some(tokio::time::Instant::now() + r.delay);
    }

    /// A reload went through: the failure episode, if any, ends.
    fn healed(&mut self) {
        self.retry_at = None;
        if let Some(what) = self.retries.healed() {
            tracing::info!(event = %Event::ReloadsHealed, after = %what, "reloads work again");
        }
    }

    /// Puts the config that serves back on disk after a new generation
    /// failed to start, so a restart after a crash uses it.
    async fn roll_back(&mut self) {
        // The last config that served (even if its HAProxy died since: a
        // restart must use it, never the one that failed).
        let Some(cfg) = self.serving_config.clone() else {
            return;
        };
        let disk = self.disk.clone();
        let _guard = disk.lock().await;
        let written = if cfg.maps.is_empty() {
            files::write_atomic(&self.running_file, cfg.config.as_bytes())
        } else {
            files::stage(&self.running_file, &cfg).and_then(|st| st.commit(&cfg))
        };
        match written {
            Ok(()) => {
                tracing::warn!(event = %Event::RolledBack, file = %self.running_file.display(), "rolled back to the config that serves");
                self.running_text = Some(cfg.config.clone());
                self.running_layout = self
                    .renderer
                    .as_ref()
                    .map(|r| Layout::new(&cfg, &r.maps_dir_str()));
            }
            Err(e) => {
                tracing::error!(event = %Event::RolledBack, file = %self.running_file.display(), error = %e, "cannot roll back to the config that serves");
            }
        }
    }

    /// One reload: prepare a checked config, then start a generation. A
    /// service HAProxy refuses (at the check or at the start) is left out
    /// and the rest applies; a failure that may heal is retried.
    async fn reload(&mut self, trigger: Trigger) {
        self.retry_at = None;
        for _attempt in 0..8 {
            self.prepared_layout = None;
            self.prepared_rendered = None;
            // prepare renders the current catalog: what was applied live included.
            self.unsynced = None;
            // A write after live changes in flight finishes first; one queued
            // behind this reload is dropped (the epoch moves on).
            let disk = self.disk.clone();
            let mut epoch = disk.lock().await;
            *epoch += 1;
            self.disk_epoch = *epoch;
            let prepared = self.prepare(trigger).await;
            drop(epoch);
            let text = match prepared {
                Ok(None) => {
                    // Nothing new to start: what serves is this catalog.
                    if let Some(f) = self.prepared_fingerprints.take() {
                        self.good_fingerprints = f;
                    }
                    self.healed();
                    return;
                }
                Ok(Some(text)) => text,
                Err(PrepareError::Invalid { message, config }) => {
                    if self.exclude_blamed(&message, &config, true) {
                        continue;
                    }
                    return; // waits for a change or SIGHUP
                }
                Err(PrepareError::Transient(what)) => {
                    self.counters.failed_reloads += 1;
                    self.retry_later(what.to_string());
                    return;
                }
            };
            self.running_text = Some(text.clone());
            self.running_layout = self.prepared_layout.take();
            match self.start_generation(trigger).await {
                Ok(()) => {
                    self.serving_config = self.prepared_rendered.take();
                    if let Some(f) = self.prepared_fingerprints.take() {
                        self.good_fingerprints = f;
                    }
                    self.healed();
                    return;
                }
                Err(e) => {
                    self.roll_back().await;
                    let output = match &e {
                        HaproxyError::DiedAtStart { output, .. } => output.clone(),
                        other => other.to_string(),
                    };
                    if self.renderer.is_some() && self.exclude_blamed(&output, &text, false) {
                        continue;
                    }
                    if self.serving().is_some() {
                        self.retry_later(e.to_string());
                    }
                    // Nothing serving: the loop restarts with backoff.
                    return;
                }
            }
        }
        tracing::error!(event = %Event::ChangeRefused, "too many services refused in one reload; keeping the running haproxy");
    }

    /// Publishes what the status server shows (after every loop step).
    fn publish_status(&self) {
        let serving = self.serving();
        let discovery_answered = match &self.catalog {
            Some(rx) => rx.borrow().is_some(),
            None => true, // external watcher mode, or discovery stopped
        };
        let not_ready = if !discovery_answered {
            Some("discovery has not answered yet".to_string())
        } else if serving.is_none() {
            Some("no checked config serves".to_string())
        } else {
            self.guard_held.map(|r| {
                format!(
                    "a catalog answer that removes {} of {} serving instances is held by the mass-removal guard (SIGHUP applies it)",
                    r.removed, r.serving
                )
            })
        };
        self.status.publish(Snapshot {
            not_ready,
            serving_generation: serving.map(|g| g.id),
            serving_pid: serving.map(|g| g.pid.as_raw()),
            draining: self.gens.draining(),
            strategy: self.settings.reload_strategy.as_str().to_string(),
            live_changes: self.settings.live_changes,
            services_rendered: self.rendered_counts.0,
            servers_rendered: self.rendered_counts.1,
            left_out: self.left_out.clone(),
            reloads: self.counters.reloads,
            failed_reloads: self.counters.failed_reloads,
            restarts: self.counters.restarts,
            live_applied: self.counters.live_changes,
            live_ops: self.counters.live_ops,
            live_failures: self.counters.live_failures,
            removal_held: self.guard_held.map(|r| crate::status::RemovalHeld {
                removed: r.removed,
                serving: r.serving,
                services: r.services,
            }),
        });
    }

    /// Loads `HAPROXY_TEMPLATE` again (SIGHUP). False, with an error
    /// logged, when it no longer loads: the running config stays.
    fn reread_template(&mut self) -> bool {
        let Some(path) = self.settings.template.clone() else {
            return true;
        };
        if self.renderer.is_none() {
            return true;
        }
        match Renderer::new(
            Some(&path),
            &self.settings.config_file,
            &self.settings.admin_socket(),
        ) {
            Ok(r) => {
                self.renderer = Some(r);
                true
            }
            Err(e) => {
                self.counters.failed_reloads += 1;
                tracing::error!(event = %Event::RenderFailed, template = %path.display(), error = %e, "SIGHUP: the template does not load; nothing changes");
                false
            }
        }
    }

    /// The catalog to render: the latest answer, unless the mass-removal
    /// guard holds it (then the last one it let through); reports holds
    /// and their end.
    fn current_catalog(&mut self) -> Option<std::sync::Arc<Catalog>> {
        let incoming = self.catalog.as_ref().and_then(|rx| rx.borrow().clone())?;
        let Some(applied) = &self.guard_applied else {
            self.guard_applied = Some(incoming.clone());
            return Some(incoming);
        };
        let now = Instant::now();
        let removal = policy::Removal::between(applied, &incoming);
        let deadline = self.guard.until();
        match self.guard.judge(removal, now) {
            policy::GuardVerdict::Apply { was_held } => {
                if was_held {
                    let by = if removal.removed == 0 {
                        "recovered"
                    } else if deadline.is_some_and(|d| now >= d) {
                        "grace"
                    } else {
                        "sighup"
                    };
                    tracing::warn!(event = %Event::RemovalApplied, by, removed = removal.removed, serving = removal.serving, "mass-removal guard: the catalog answer applies");
                }
                self.guard_applied = Some(incoming.clone());
                self.guard_held = None;
                Some(incoming)
            }
            policy::GuardVerdict::Hold {
                removal,
                until,
                new,
            } => {
                if new {
                    tracing::error!(event = %Event::RemovalHeld, removed = removal.removed, serving = removal.serving, services = removal.services, grace_ms = until.saturating_duration_since(now).as_millis() as u64, "mass-removal guard: a catalog answer removes too many serving instances at once; holding it (SIGHUP applies it now)");
                }
                let applied = applied.clone();
                self.guard_held = Some(removal);
                Some(applied)
            }
        }
    }

    /// Whether catalog changes can be tried live: rendering, live changes
    /// on, and a serving generation whose state we know.
    fn live_possible(&self) -> bool {
        self.settings.live_changes
            && self.renderer.is_some()
            && self.live.is_some()
            && self.serving().is_some()
    }

    /// Renders the current catalog (warnings logged once); `None` when
    /// there is no catalog or the render failed (logged).
    fn render_catalog(&mut self) -> Option<Rendered> {
        let catalog = self.current_catalog()?;
        self.prepared_fingerprints = Some(fingerprints(&catalog));
        let (desired, warnings) = self.desired(&catalog);
        let vars = self.fit_fd_limit(&desired);
        let binds = self.hold_ports(&desired, &vars);
        let rendered = self.renderer.as_ref()?.render_with(&desired, &vars, &binds);
        self.log_warnings(&warnings);
        if let Ok(r) = &rendered {
            self.settle_listeners(&r.config);
        }
        match rendered {
            Ok(r) => Some(r),
            Err(e) => {
                self.counters.failed_reloads += 1;
                tracing::error!(event = %Event::RenderFailed, error = %e, "render failed; keeping the running haproxy");
                None
            }
        }
    }

    /// Applies the current catalog through the runtime API when the diff
    /// against what runs allows it, then puts the same config on disk.
    async fn try_live(&mut self) -> LiveOutcome {
        let Some(rendered) = self.render_catalog() else {
            return LiveOutcome::Applied; // nothing new that could run
        };
        let Some(renderer) = &self.renderer else {
            return LiveOutcome::Applied;
        };
        let layout = Layout::new(&rendered, &renderer.maps_dir_str());
        let Some(running) = &self.live else {
            return LiveOutcome::Failed;
        };
        let started = Instant::now();
        let (ops, next) = match running.plan(&layout, self.caps) {
            Plan::Reload(why) => return LiveOutcome::Structural(why),
            Plan::Same => (Vec::new(), None),
            Plan::Live { ops, next } => (ops, Some(*next)),
        };
        for (i, op) in ops.iter().enumerate() {
            let applied = self.apply(op).await;
            self.status.live_op(op.kind(), applied.is_ok());
            if let Err(e) = applied {
                self.live = None;
                self.unconfirmed.extend(op.server());
                self.counters.live_failures += 1;
                tracing::error!(event = %Event::LiveFailed,
                    error = %e,
                    op = op.kind(),
                    applied = i,
                    of = ops.len(),
                    live_failures = self.counters.live_failures,
                    "live change failed; reloading instead"
                );
                return LiveOutcome::Failed;
            }
        }
        if let Some(f) = self.prepared_fingerprints.take() {
            self.good_fingerprints = f;
        }
        if let Some(next) = next {
            self.live = Some(next);
            self.counters.live_changes += 1;
            self.counters.live_ops += ops.len() as u64;
            let mut kinds: Vec<&str> = ops.iter().map(Op::kind).collect();
            kinds.dedup();
            tracing::info!(event = %Event::LiveApplied,
                ops = ops.len(),
                kinds = kinds.join(","),
                took_ms = started.elapsed().as_millis() as u64,
                live_changes = self.counters.live_changes,
                pid = self.serving().map(|g| g.pid.as_raw()).unwrap_or(0),
                "live change applied"
            );
        }
        self.unsynced = Some((rendered, layout));
        if self.live.as_ref().is_some_and(|l| !l.parked.is_empty()) {
            self.delete_parked().await;
        }
        LiveOutcome::Applied
    }

    /// The certificate directory changed: applied live when the serving
    /// HAProxy loads our crt-list, else (or when that fails) by a reload.
    async fn certs_changed(&mut self) {
        let live = self.live_possible()
            && self.tls.as_ref().is_some_and(|t| {
                let list = t.crt_list().display().to_string();
                self.running_text
                    .as_deref()
                    .is_some_and(|c| c.contains(&list))
            });
        let Some(tls) = &mut self.tls else { return };
        if let TlsOutcome::Reload(_) = tls.apply(&self.runtime, live).await {
            self.reload(Trigger::Certs).await;
        }
    }

    /// One live operation.
    async fn apply(&self, op: &Op) -> Result<(), RuntimeError> {
        let rt = &self.runtime;
        match op {
            Op::AddServer {
                backend,
                server,
                ip,
                port,
                keywords,
            } => {
                rt.add_server(backend, server, &ip.to_string(), *port, keywords)
                    .await
            }
            Op::SetAddr {
                backend,
                server,
                ip,
                port,
            } => rt.set_addr(backend, server, &ip.to_string(), *port).await,
            Op::SetWeight {
                backend,
                server,
                weight,
            } => rt.set_weight(backend, server, *weight).await,
            Op::Ready { backend, server } => rt.set_state(backend, server, AdminState::Ready).await,
            Op::Park { backend, server } => rt.set_state(backend, server, AdminState::Maint).await,
            Op::ReplaceMap { path, entries } => rt.replace_map(path, entries).await,
        }
    }

    /// Deletes parked servers that have no connection left; the others
    /// stay parked (in maintenance) and are tried again later.
    async fn delete_parked(&mut self) {
        let Some(running) = &self.live else { return };
        for (backend, server) in running.parked() {
            match self.runtime.del_server(&backend, &server).await {
                Ok(()) => {
                    tracing::debug!(event = %Event::ParkedDeleted, backend, server, "parked server deleted");
                    if let Some(l) = &mut self.live {
                        l.deleted(&backend, &server);
                    }
                }
                Err(RuntimeError::Busy { .. }) => {}
                Err(e) => {
                    tracing::debug!(event = %Event::ParkedDeleted, backend, server, error = %e, "cannot delete a parked server yet")
                }
            }
        }
    }

    fn sync_job(&self, config: &str) -> SyncJob {
        SyncJob {
            disk: self.disk.clone(),
            epoch: self.disk_epoch,
            reaper: self.reaper.clone(),
            bin: self.settings.haproxy_bin.clone(),
            file: self.running_file.clone(),
            fds: self.held_fds(config),
        }
    }

    /// Starts writing the config applied live to disk; the loop gets the
    /// outcome ([`Supervisor::synced`]) and keeps applying changes meanwhile.
    fn sync_in_background(&mut self) {
        let Some((rendered, layout)) = self.unsynced.take() else {
            return;
        };
        self.last_sync = Some(Instant::now());
        self.sync_in_flight = true;
        let job = self.sync_job(&rendered.config);
        let tx = self.sync_tx.clone();
        tokio::spawn(async move {
            let done = sync_job(job, rendered, layout).await;
            let _ = tx.send(done);
        });
    }

    /// Writes the config applied live, if any, to disk now (before a
    /// restart, and at stop).
    async fn flush(&mut self) {
        if let Some((rendered, layout)) = self.unsynced.take() {
            self.last_sync = Some(Instant::now());
            let job = self.sync_job(&rendered.config);
            let done = sync_job(job, rendered, layout).await;
            self.synced(done);
        }
    }

    /// The config applied live is on disk: a restart starts from it.
    fn synced(&mut self, done: SyncDone) {
        if done.epoch != self.disk_epoch {
            return; // a reload wrote the file since
        }
        if let Some((rendered, layout)) = done.written {
            self.running_text = Some(rendered.config.clone());
            self.running_layout = Some(layout);
            // What runs (it was applied live before it was written).
            self.serving_config = Some(rendered);
        }
    }

    /// Starts a generation on `running_file` by the configured strategy.
    async fn start_generation(&mut self, trigger: Trigger) -> Result<(), HaproxyError> {
        let Some(text) = self
            .running_text
            .clone()
            .or_else(|| std::fs::read_to_string(&self.running_file).ok())
        else {
            return Err(HaproxyError::Invalid {
                path: self.running_file.clone(),
                message: "no config to start from".into(),
            });
        };
        let ports = crate::listeners::bind_ports(&text);
        let mut old: Vec<Pid> = self.gens.to_hand_over();
        old.extend(self.adopted.iter().copied());
        let socket = self.settings.admin_socket();
        let can_transfer = !old.is_empty()
            && text.contains("expose-fd listeners")
            && std::os::unix::net::UnixStream::connect(&socket).is_ok();
        let held = self.listeners.as_ref().is_some_and(|l| l.covers(&text));
        let fds = self.held_fds(&text);

        let choice = policy::choose_strategy(
            self.settings.reload_strategy,
            held,
            !old.is_empty(),
            can_transfer,
            self.syn_drop_available,
        );
        let strategy = choice.strategy;
        if choice.fell_back {
            tracing::warn!(event = %Event::StrategyFallback, socket = %socket.display(), fallback = strategy.as_str(), "socket transfer impossible; falling back");
        }
        let started = Instant::now();
        self.write_server_state(&text).await;
        let result = match strategy {
            ReloadStrategy::SynDrop => self.start_syn_drop(&text, &ports, &old).await,
            ReloadStrategy::Seamless => {
                self.start_with(&ports, &old, Some(&socket), &fds, None)
                    .await
            }
            ReloadStrategy::Plain => self.start_with(&ports, &old, None, &fds, None).await,
            ReloadStrategy::Inherit => {
                let run_as = self.run_as;
                self.start_with(&ports, &old, None, &fds, run_as).await
            }
        };
        self.release_listeners();
        match result {
            Ok(id) => {
                self.adopted.clear();
                // Its state came from the config, not from the old process.
                self.unconfirmed.clear();
                self.live = self
                    .running_layout
                    .clone()
                    .filter(|_| self.settings.live_changes)
                    .map(Running::started);
                if trigger.counts_as_reload() {
                    self.counters.reloads += 1;
                }
                let pid = self.serving().map(|g| g.pid.as_raw()).unwrap_or(0);
                tracing::info!(event = %Event::ReloadDone,
                    generation = id,
                    trigger = trigger.as_str(),
                    strategy = strategy.as_str(),
                    pid,
                    took_ms = started.elapsed().as_millis() as u64,
                    reloads = self.counters.reloads,
                    failed_reloads = self.counters.failed_reloads,
                    restarts = self.counters.restarts,
                    draining = self.gens.draining(),
                    "haproxy reload done"
                );
                self.write_pids();
                self.status
                    .reload(trigger.as_str(), strategy.as_str(), started.elapsed(), None);
                Ok(())
            }
            Err(e) => {
                self.status.reload(
                    trigger.as_str(),
                    strategy.as_str(),
                    started.elapsed(),
                    Some(e.to_string()),
                );
                self.counters.failed_reloads += 1;
                if self.serving().is_some() {
                    tracing::error!(event = %Event::ReloadFailed, error = %e, trigger = trigger.as_str(), "haproxy reload failed; the previous generation keeps serving");
                } else {
                    tracing::error!(event = %Event::ReloadFailed, error = %e, trigger = trigger.as_str(), "haproxy failed to start");
                }
                Err(e)
            }
        }
    }

    /// Writes the server-state file the new generation loads: what the
    /// serving one knows of servers the new config keeps in place (health,
    /// maintenance), or an empty state when nothing serves.
    async fn write_server_state(&self, text: &str) {
        let path = files::server_state_path(&self.settings.admin_socket());
        let dump = match self.serving() {
            Some(_) => match self.runtime.command("show servers state").await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(event = %Event::WriteFailed, error = %e, "cannot read the server state; the new haproxy starts without it");
                    None
                }
            },
            None => None,
        };
        let content = match dump {
            Some(d) => {
                let layout = match &self.running_layout {
                    Some(l) => l.clone(),
                    None => Layout::from_text(text),
                };
                live::carry_state(&d, &layout, &self.unconfirmed)
            }
            None => "1\n".to_string(),
        };
        if let Err(e) = files::write_replace(&path, content.as_bytes()) {
            tracing::warn!(event = %Event::WriteFailed, file = %path.display(), error = %e, "cannot write the server state");
        }
    }

    /// Spawns a generation and waits until it listens.
    async fn start_with(
        &mut self,
        ports: &BTreeSet<u16>,
        old: &[Pid],
        socket: Option<&std::path::Path>,
        fds: &[std::os::fd::RawFd],
        run_as: Option<(u32, u32)>,
    ) -> Result<u64, HaproxyError> {
        let spec = StartSpec {
            bin: &self.settings.haproxy_bin,
            config: &self.running_file,
            take_sockets_from: socket,
            inherit: fds,
            run_as,
            json_logs: self.settings.log_format == crate::settings::LogFormat::Json,
        };
        if let Some((uid, _)) = run_as {
            // An admin socket a root HAProxy left (an earlier run, a
            // generation that bound by itself) cannot be replaced by the
            // user in the sticky run dir: HAProxy would refuse to start.
            let sock = self.settings.admin_socket();
            if let Ok(m) = std::fs::symlink_metadata(&sock) {
                use std::os::unix::fs::MetadataExt;
                if m.uid() != uid {
                    let _ = std::fs::remove_file(&sock);
                }
            }
        }
        let (pid, mut exited, stderr) = haproxy::start(&self.reaper, &spec)?;
        let id = self.gens.spawned(pid, Instant::now());
        // Recorded before it serves: if we are killed during this reload,
        // the next run must find (and finish) this process too.
        self.write_pids();
        let admin = self.settings.admin_socket();
        let r = haproxy::wait_listening(
            pid,
            ports,
            Some(&admin),
            !fds.is_empty(),
            &mut exited,
            Duration::from_secs(10),
        )
        .await;
        // From here on the exit goes to the main loop.
        let tx = self.exits_tx.clone();
        match r {
            Ok(()) => {
                tokio::spawn(async move {
                    if let Ok(exit) = exited.await {
                        let _ = tx.send((id, pid, exit));
                    }
                });
                self.gens.listening(id);
                // It serves: the old ones finish (what `-sf` would do, but
                // only now, so they were never paused).
                for p in old {
                    let _ = kill(*p, Signal::SIGUSR1);
                }
                Ok(id)
            }
            Err(HaproxyError::DiedAtStart { pid: p, exit, .. }) => {
                // Already reaped: the old generations keep serving.
                self.gens.died_at_start(id);
                // Let the stderr reader take the last lines.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(HaproxyError::DiedAtStart {
                    pid: p,
                    exit,
                    output: stderr.text(),
                })
            }
            Err(e) => {
                // Not serving: make sure it goes away; the old keep serving.
                tokio::spawn(async move {
                    if let Ok(exit) = exited.await {
                        let _ = tx.send((id, pid, exit));
                    }
                });
                let _ = kill(pid, Signal::SIGKILL);
                self.gens.abandoned(id);
                Err(e)
            }
        }
    }

    /// The seed's reload: drop SYNs to every bound port while the new
    /// process starts and the old ones unbind, then remove the rules.
    async fn start_syn_drop(
        &mut self,
        _text: &str,
        ports: &BTreeSet<u16>,
        old: &[Pid],
    ) -> Result<u64, HaproxyError> {
        let p = ports.clone();
        let guard = self
            .reaper
            .hold_off(move || SynDropGuard::insert(&p))
            .await
            .map_err(|e| HaproxyError::Iptables(e.to_string()))??;
        self.status.syn_drop_rules(ports.len());
        let result = self.start_with(ports, old, None, &[], None).await;
        if result.is_ok() {
            // New SYNs must not land in an old socket's queue: wait (briefly)
            // until the old generations have closed their listeners.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline
                && old
                    .iter()
                    .any(|pid| !haproxy::ports_listening(*pid, ports).is_empty())
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let removed = self.reaper.hold_off(move || guard.remove()).await;
        // The guard removes them on every path (and at the next start).
        self.status.syn_drop_rules(0);
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(event = %Event::SynDropCleanupFailed, error = %e, "could not remove SYN-drop rules")
            }
            Err(e) => {
                tracing::error!(event = %Event::SynDropCleanupFailed, error = %e, "could not remove SYN-drop rules")
            }
        }
        result
    }

    /// Handles a generation's exit.
    fn on_exit(&mut self, id: u64, pid: Pid, exit: Exit) {
        let Some((_, ended)) = self.gens.exited(id, Instant::now()) else {
            return;
        };
        self.write_pids();
        match ended {
            Ended::Drained => {
                tracing::info!(event = %Event::GenerationDrained, pid = pid.as_raw(), %exit, "old haproxy finished draining");
            }
            Ended::Died { served, stable } => {
                self.restarts.died(served, stable, Instant::now());
                tracing::error!(event = %Event::GenerationDied, pid = pid.as_raw(), %exit, restarts = self.counters.restarts, "serving haproxy died unexpectedly");
            }
        }
    }

    /// Graceful stop: soft-stop every generation (SIGUSR1), wait up to the
    /// stop timeout, then force. A second stop signal forces at once, and so
    /// does a stop that is not `graceful` (SIGQUIT).
    async fn stop(
        &mut self,
        why: &str,
        graceful: bool,
        sigs: &mut mpsc::UnboundedReceiver<Signal>,
        exits_rx: &mut mpsc::UnboundedReceiver<(u64, Pid, Exit)>,
    ) -> i32 {
        tracing::info!(event = %Event::Stopping, signal = why, graceful, timeout = ?self.settings.stop_timeout, live = self.gens.all().len(), "stopping: soft-stopping haproxy");
        let serving = self.serving().map(|g| g.id);
        for g in self.gens.all() {
            let _ = kill(g.pid, Signal::SIGUSR1);
        }
        // What ran, applied live, is what the next start reproduces.
        self.flush().await;
        let mut serving_exit: Option<Exit> = None;
        let (mut stop, step) = Stop::begin(graceful, Instant::now(), self.settings.stop_timeout);
        self.stop_step(step, why);
        let deadline = tokio::time::Instant::from_std(stop.deadline);
        while !self.gens.is_empty() {
            tokio::select! {
                _ = sleep_until(deadline), if stop.forced.is_none() => {
                    let step = stop.on_deadline();
                    self.stop_step(step, why);
                }
                Some(sig) = sigs.recv() => match stop.on_signal(signals::action(sig)) {
                    StopStep::Nothing => tracing::info!(event = %Event::SignalIgnored, signal = sig.as_str(), "stopping; signal ignored"),
                    step => self.stop_step(step, sig.as_str()),
                },
                _ = tokio::time::sleep(policy::KILL_AFTER), if stop.forced.is_some() => {
                    for g in self.gens.all() { let _ = kill(g.pid, Signal::SIGKILL); }
                }
                Some((id, _pid, exit)) = exits_rx.recv() => {
                    if Some(id) == serving { serving_exit = Some(exit); }
                    self.gens.remove(id);
                }
            }
        }
        let _ = std::fs::remove_file(self.settings.run_dir.join("haproxy.pids"));
        self.reaper.drain();
        let code = policy::exit_code(serving_exit);
        tracing::info!(event = %Event::Stopped,
            exit_code = code,
            reloads = self.counters.reloads,
            failed_reloads = self.counters.failed_reloads,
            restarts = self.counters.restarts,
            "stopped"
        );
        code
    }

    /// Performs what the stop policy decided.
    fn stop_step(&self, step: StopStep, signal: &str) {
        if let StopStep::Force(reason) = step {
            tracing::warn!(event = %Event::StopForced, signal, reason = reason.as_str(), "stopping now: terminating haproxy");
            self.force();
        }
    }

    fn force(&self) {
        for g in self.gens.all() {
            let _ = kill(g.pid, Signal::SIGTERM);
        }
    }
}
