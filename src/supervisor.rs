//! `haproxy-supervisor run`: PID-1 duties and the loop that performs what
//! [`step`](crate::step) decides. The lifecycle, and which function decides
//! what, is described in LIFECYCLE.md beside this file.
//!
//! [`run`] sets up the edges (signals, the status server, discovery, the
//! certificate watcher, HAProxy control) and hands them to [`drive`], the
//! loop: it turns what arrives into [`Input`]s, gives each to
//! [`State::step`], and has the [`Executor`] perform the [`Action`]s it
//! returns. The results of an action are fed back before anything else
//! arrives, so one reload runs to its end before the next input: catalog
//! changes and signals that arrive meanwhile merge into one follow-up.
//! The loop holds no rule of its own; the executor performs only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use crate::discovery::{self, CatalogRx};
use crate::events::Event;
use crate::files;
use crate::haproxy::{self, HaproxyError, StartSpec, SynDropGuard};
use crate::listeners::Listeners;
use crate::live::{self, Layout, Op};
use crate::log;
use crate::model::HaproxyVars;
use crate::model::{Catalog, Desired};
use crate::pipeline::{self, StageError, Then};
use crate::policy::ReloadStrategy;
use crate::process::{self, Reaper};
use crate::render::{self, Rendered, Renderer};
use crate::runtime::{AdminState, RuntimeApi, RuntimeError};
use crate::settings::{Settings, SourceSettings};
use crate::signals;
use crate::status::{self, Status};
use crate::step::{Action, CheckError, CheckHow, Facts, Input, LiveFailure, OnDisk, State};
use crate::tls::Tls;

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

/// What a [`sync_job`] needs of the executor.
struct SyncJob {
    /// The epoch of the last write a reload made (under the disk lock).
    disk: Arc<tokio::sync::Mutex<u64>>,
    epoch: u64,
    reaper: Reaper,
    bin: PathBuf,
    file: PathBuf,
    /// The held sockets the config names (`haproxy -c` inspects them).
    fds: Vec<std::os::fd::RawFd>,
}

/// Writes `rendered` (applied live, so it runs already) to `file`: staged,
/// checked by `haproxy -c` at nice 19, swapped in. Holds the disk lock;
/// does nothing if a reload wrote the file since `epoch` (that reload's
/// step supersedes this one). False when the write or the check failed.
async fn sync_job(job: SyncJob, checked: Arc<crate::step::Checked>) -> bool {
    let rendered = &checked.rendered;
    let SyncJob {
        disk,
        epoch,
        reaper,
        bin,
        file,
        fds,
    } = job;
    let current = disk.lock().await;
    if *current > epoch {
        return false;
    }
    let on_disk = std::fs::read_to_string(&file).ok();
    if on_disk.as_deref() != Some(rendered.config.as_str()) {
        let checked =
            pipeline::stage_and_check(&file, rendered, Then::Commit, |staged| async move {
                haproxy::check_niced(&reaper, &bin, &staged, &fds).await
            })
            .await;
        match checked {
            Ok(()) => {}
            Err(StageError::Invalid(e)) => {
                // Cannot happen with validated server lines; if it does,
                // the file keeps the last checked config.
                log!(error, Event::ConfigInvalid, error = %e, "the config applied live does not pass haproxy -c; the file on disk is not updated");
                return false;
            }
            Err(e) => {
                log!(error, Event::WriteFailed, error = %e, "cannot write the config applied live");
                return false;
            }
        }
    }
    true
}

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
        crate::log!(warn, Event::Degraded, what = "user", dir = %settings.run_dir.display(), error = %e, "cannot give the run dir to HAProxy's group; HAProxy starts as root and drops to HAPROXY_USER");
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
    let sigs = signals::listen().map_err(SupervisorError::Signals)?;
    if let Err(e) = process::become_subreaper() {
        crate::log!(warn, Event::Degraded, what = "subreaper", error = %e, "cannot become a child subreaper; orphans may not be reaped here");
    }
    // The status server: its port taken is a start-up error naming it.
    let health = Arc::new(discovery::Health::default());
    let status = Status::new(health.clone());
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
                    crate::log!(
                        warn,
                        Event::StaleRulesRemoved,
                        rules = n,
                        "removed SYN-drop rules left by an earlier run"
                    )
                }
                Ok(Err(e)) => {
                    crate::log!(error, Event::SynDropCleanupFailed, error = %e, "cannot remove stale SYN-drop rules")
                }
                Err(e) => {
                    crate::log!(error, Event::SynDropCleanupFailed, error = %e, "cannot remove stale SYN-drop rules")
                }
            }
            true
        }
        (Err(e), ReloadStrategy::SynDrop) => return Err(SupervisorError::SynDropUnavailable(e)),
        (Err(e), ReloadStrategy::Seamless) => {
            crate::log!(warn, Event::Degraded, what = "iptables", error = %e, "iptables unavailable: seamless reloads cannot fall back to syn-drop");
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
                    tokio::spawn(discovery::file::watch(
                        path,
                        Duration::from_millis(20),
                        tx,
                        health,
                    ));
                }
                SourceSettings::Consul(cfg) => {
                    // Fail now on a bad CA file rather than in the task.
                    discovery::consul::Client::new(&cfg)?;
                    tokio::spawn(async move {
                        if let Err(e) = discovery::consul::watch(cfg, tx, health).await {
                            crate::log!(error, Event::DiscoveryStopped, error = %e, "consul watcher stopped");
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
            crate::log!(
                warn,
                Event::Degraded,
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

    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let listeners = if settings.reload_strategy == ReloadStrategy::Inherit && renderer.is_some() {
        Some(Listeners::new(settings.vars.backlog))
    } else {
        // No sockets held: `plan` must not render an earlier run's.
        let _ = std::fs::remove_file(settings.run_dir.join("listeners"));
        None
    };
    let facts = Facts {
        strategy: settings.reload_strategy,
        renders: renderer.is_some(),
        discovery: catalog.is_some(),
        live_changes: settings.live_changes,
        waits: crate::policy::Waits {
            live: settings.live_wait,
            reload_min: settings.reload_wait_min,
            reload_max: settings.reload_wait_max,
        },
        stop_timeout: settings.stop_timeout,
        syn_drop: syn_drop_available,
        fd_limit: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft),
        vars: settings.vars.clone(),
        caps,
        crt_list: tls.as_ref().map(|t| t.crt_list().display().to_string()),
        cert_store: tls.as_ref().map(|t| t.store_dir().to_path_buf()),
        certs_dir: tls.as_ref().map(|t| t.dir().to_path_buf()),
        run_as_user: run_as.is_some(),
        admin_socket: settings.admin_socket().display().to_string(),
        guard_percent: settings.removal_guard_percent,
        guard_grace: settings.removal_guard_grace,
    };
    let on_disk = match std::fs::read_to_string(&running_file) {
        Ok(t) if renderer.is_some() => OnDisk::Earlier(t),
        _ => OnDisk::Nothing,
    };
    let adopted = adopt_leftovers(&settings, &running_file);
    let mut state = State::new(facts, on_disk, adopted);
    state.certs = tls.as_ref().map(|t| t.served().clone()).unwrap_or_default();
    let sources = Sources {
        catalog,
        certs: tls.as_ref().map(Tls::subscribe),
        signals: sigs,
        results: results_rx,
    };
    log!(info, Event::Started,
        strategy = settings.reload_strategy.as_str(),
        config = %settings.config_file.display(),
        pid = std::process::id(),
        "haproxy-supervisor started"
    );
    let mut exec = Executor {
        running_file,
        reaper,
        renderer,
        catalog_file,
        tls,
        listeners,
        runtime,
        status: status.clone(),
        results: results_tx,
        disk: Arc::new(tokio::sync::Mutex::new(0)),
        starting: None,
        syn_drop: None,
        bind_warned: BTreeSet::new(),
        services: 0,
        run_as,
        settings,
    };
    Ok(drive(state, &mut exec, sources, &status).await)
}

/// What the loop waits on: the edges, passed in so that a test drives the
/// loop with fakes.
pub struct Sources {
    /// Discovery's answers (`None`: an external watcher writes the config).
    pub catalog: Option<CatalogRx>,
    /// The certificate directory's sets.
    pub certs: Option<watch::Receiver<crate::tls::CertSet>>,
    pub signals: mpsc::UnboundedReceiver<Signal>,
    /// Results of what runs in the background: generations' exits,
    /// writes of configs applied live.
    pub results: mpsc::UnboundedReceiver<Input>,
}

/// What performs an [`Action`]: HAProxy, the files, the runtime API. The
/// real one is [`Executor`]; tests pass a fake.
pub trait Perform {
    /// Performs `action`; the input it answers, if it answers at once.
    fn perform(&mut self, action: Action) -> impl Future<Output = Option<Input>>;
}

/// The loop: each input to the step, each action performed, its results
/// fed back first. Returns the exit code.
pub async fn drive<P: Perform>(
    mut state: State,
    exec: &mut P,
    mut src: Sources,
    status: &Status,
) -> i32 {
    let mut queue = VecDeque::from([Input::Begin]);
    loop {
        let input = match queue.pop_front() {
            Some(i) => i,
            None => {
                status.publish(state.snapshot());
                next_input(&state, &mut src).await
            }
        };
        for action in state.step(input, Instant::now()) {
            if let Action::Exit(code) = action {
                exec.perform(Action::Exit(code)).await;
                return code;
            }
            if let Some(i) = exec.perform(action).await {
                queue.push_back(i);
            }
        }
    }
}

/// The next thing that arrives from outside (or a deadline).
async fn next_input(state: &State, src: &mut Sources) -> Input {
    let far = Instant::now() + Duration::from_secs(86400);
    let deadline = tokio::time::Instant::from_std(state.next_deadline().unwrap_or(far));
    let catalog_open = state.discovery_open;
    let catalog = async {
        match &mut src.catalog {
            Some(rx) if catalog_open => match rx.changed().await {
                Ok(()) => rx.borrow_and_update().clone(),
                Err(_) => None,
            },
            _ => std::future::pending().await,
        }
    };
    let certs = async {
        match &mut src.certs {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                rx.borrow_and_update().clone()
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some(sig) = src.signals.recv() => Input::Signal(sig),
        c = catalog => match c {
            Some(c) => Input::Catalog(c),
            None => Input::DiscoveryStopped,
        },
        set = certs => Input::Certs(set),
        Some(i) = src.results.recv() => i,
        _ = tokio::time::sleep_until(deadline) => Input::Tick,
    }
}

/// A generation spawned, until it listens.
struct Starting {
    pid: Pid,
    exited: tokio::sync::oneshot::Receiver<process::Exit>,
    stderr: haproxy::StderrTail,
    inherited: bool,
}

/// Performs the actions with the real HAProxy, files and runtime API.
pub struct Executor {
    settings: Settings,
    running_file: PathBuf,
    reaper: Reaper,
    renderer: Option<Renderer>,
    /// The catalog file and its channel (file source: SIGHUP re-reads it).
    catalog_file: Option<(PathBuf, discovery::CatalogTx)>,
    tls: Option<Tls>,
    listeners: Option<Listeners>,
    runtime: RuntimeApi,
    status: Arc<Status>,
    results: mpsc::UnboundedSender<Input>,
    /// The epoch of the last write a reload made, held while writing.
    disk: Arc<tokio::sync::Mutex<u64>>,
    starting: Option<Starting>,
    syn_drop: Option<(SynDropGuard, BTreeSet<u16>)>,
    /// Ports whose socket could not be held, logged once each.
    bind_warned: BTreeSet<String>,
    /// Services of the last render (logged with `config_written`).
    services: usize,
    run_as: Option<(u32, u32)>,
}

impl Perform for Executor {
    async fn perform(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Render { desired, vars } => Some(Input::Rendered(self.render(desired, &vars))),
            Action::PrepareExternal { epoch } => Some(self.prepare_external(epoch).await),
            Action::Check {
                candidate,
                how,
                epoch,
            } => Some(self.check(&candidate.rendered, how, epoch).await),
            Action::Probe { config } => Some(Input::Probed {
                socket_answers: std::os::unix::net::UnixStream::connect(
                    self.settings.admin_socket(),
                )
                .is_ok(),
                held_covers: self
                    .listeners
                    .as_ref()
                    .is_some_and(|l| l.covers(config.config())),
            }),
            Action::Spawn {
                strategy,
                config,
                carry_state,
                unconfirmed,
                run_as_user,
            } => {
                self.write_server_state(
                    config.config(),
                    config.layout.as_ref(),
                    carry_state,
                    &unconfirmed,
                )
                .await;
                Some(self.spawn(strategy, config.config(), run_as_user).await)
            }
            Action::AwaitListening {
                id,
                pid,
                config,
                strategy: _,
                old,
            } => Some(self.await_listening(id, pid, config.config(), &old).await),
            Action::RollBack { config, epoch } => Some(self.roll_back(config, epoch).await),
            Action::ApplyLive { ops } => {
                // One connection for the whole change.
                let rt = self.runtime.session();
                for (i, op) in ops.iter().enumerate() {
                    let applied = Self::apply(&rt, op).await;
                    self.status.live_op(op.kind(), applied.is_ok());
                    if let Err(e) = applied {
                        return Some(Input::LiveDone(Err(LiveFailure {
                            applied: i,
                            error: e.to_string(),
                        })));
                    }
                }
                Some(Input::LiveDone(Ok(())))
            }
            Action::DeleteParked { servers, backends } => {
                Some(self.delete_parked(servers, backends).await)
            }
            Action::Sync {
                checked,
                epoch,
                wait,
            } => {
                let job = self.sync_job(checked.config(), epoch);
                if wait {
                    let ok = sync_job(job, checked).await;
                    Some(Input::Synced { epoch, ok })
                } else {
                    let tx = self.results.clone();
                    tokio::spawn(async move {
                        let ok = sync_job(job, checked).await;
                        let _ = tx.send(Input::Synced { epoch, ok });
                    });
                    None
                }
            }
            Action::StoreCerts { set } => {
                let ok = self.tls.as_mut().is_some_and(|t| t.store_set(&set));
                Some(Input::CertsStored { ok })
            }
            Action::Reread => Some(self.reread()),
            Action::ReleaseListeners { keep } => {
                self.release_listeners(&keep);
                None
            }
            Action::WritePids(pids) => {
                self.write_pids(&pids);
                None
            }
            Action::Kill(pid, sig) => {
                let _ = kill(pid, sig);
                None
            }
            Action::CheckFailed => {
                self.status.check_failed();
                None
            }
            Action::Restarted => {
                self.status.restarted();
                None
            }
            Action::ReloadMetric {
                trigger,
                strategy,
                took,
                error,
            } => {
                self.status
                    .reload(trigger.as_str(), strategy.as_str(), took, error);
                None
            }
            Action::Exit(_) => {
                let _ = std::fs::remove_file(self.settings.run_dir.join("haproxy.pids"));
                self.reaper.drain();
                None
            }
        }
    }
}

impl Executor {
    fn write_pids(&self, pids: &[Pid]) {
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        let path = self.settings.run_dir.join("haproxy.pids");
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return; // as at spawn: nothing to write at "reload done"
        }
        if let Err(e) = crate::files::write_replace(&path, text.as_bytes()) {
            log!(warn, Event::WriteFailed, error = %e, "cannot write the pid file");
        }
    }

    /// The ports `desired` binds, held by us (bound now where new), as the
    /// render names them; no held socket when HAProxy binds itself.
    fn hold_ports(&mut self, desired: &Desired, vars: &HaproxyVars) -> crate::listeners::Binds {
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
            if self.bind_warned.insert(format!("{port}:{e}")) {
                log!(warn, Event::ListenerFailed, port, error = %e, "cannot hold this port's listening socket; haproxy binds it itself");
            }
        }
        binds
    }

    /// Holds the ports, renders, and settles the held sockets: those the
    /// config names listen from now on, the others are closed.
    fn render(
        &mut self,
        mut desired: Desired,
        vars: &HaproxyVars,
    ) -> Result<(Rendered, Layout), String> {
        desired.tls = self.tls.as_ref().and_then(Tls::frontend);
        self.services = desired.services.len();
        let binds = self.hold_ports(&desired, vars);
        let renderer = self.renderer.as_ref().ok_or("no renderer")?;
        let (rendered, layout) =
            pipeline::render(renderer, &desired, vars, &binds).map_err(|e| e.to_string())?;
        if let Some(l) = &mut self.listeners {
            if let Err(e) = l.settle(&rendered.config) {
                log!(error, Event::ListenerFailed, error = %e, "cannot listen on a held socket");
            }
        }
        Ok((rendered, layout))
    }

    /// The held sockets `config` names.
    fn held_fds(&self, config: &str) -> Vec<std::os::fd::RawFd> {
        self.listeners
            .as_ref()
            .map(|l| l.fds_for(config))
            .unwrap_or_default()
    }

    /// External watcher mode: check its file, then copy it to ours.
    async fn prepare_external(&mut self, epoch: u64) -> Input {
        let disk = self.disk.clone();
        let mut written = disk.lock().await;
        *written = epoch;
        let src = self.settings.config_file.clone();
        let transient = |step: FileStep| Input::Checked {
            candidate: None,
            result: Err(CheckError::Transient(step.to_string())),
        };
        let text = match std::fs::read_to_string(&src) {
            Ok(t) => t,
            Err(source) => return transient(FileStep::Read { path: src, source }),
        };
        let candidate = Some(Rendered {
            config: text.clone(),
            maps: BTreeMap::new(),
        });
        if let Err(e) = haproxy::check(&self.reaper, &self.settings.haproxy_bin, &src, &[]).await {
            return Input::Checked {
                candidate,
                result: Err(CheckError::Invalid(e.to_string())),
            };
        }
        if let Err(source) = crate::files::write_atomic(&self.running_file, text.as_bytes()) {
            return transient(FileStep::Write {
                path: self.running_file.clone(),
                source,
            });
        }
        Input::Checked {
            candidate,
            result: Ok(()),
        }
    }

    /// Checks `candidate` and puts it in place (under the disk lock: a
    /// write of what was applied live finishes first).
    async fn check(&mut self, candidate: &Rendered, how: CheckHow, epoch: u64) -> Input {
        let disk = self.disk.clone();
        let mut written = disk.lock().await;
        *written = epoch;
        let bin = self.settings.haproxy_bin.clone();
        let fds = self.held_fds(&candidate.config);
        let result = match how {
            CheckHow::InPlace => haproxy::check(&self.reaper, &bin, &self.running_file, &fds)
                .await
                .map_err(|e| CheckError::Invalid(e.to_string())),
            CheckHow::Staged => {
                let (reaper, file) = (&self.reaper, &self.running_file);
                let checked =
                    pipeline::stage_and_check(file, candidate, Then::Commit, |staged| async move {
                        haproxy::check(reaper, &bin, &staged, &fds).await
                    })
                    .await;
                match checked {
                    Ok(()) => {
                        log!(info, Event::ConfigWritten, services = self.services, file = %self.running_file.display(), "config written");
                        Ok(())
                    }
                    Err(StageError::Invalid(e)) => Err(CheckError::Invalid(e.to_string())),
                    Err(e) => Err(CheckError::Transient(e.to_string())),
                }
            }
        };
        Input::Checked {
            candidate: None,
            result,
        }
    }

    /// Writes the server-state file the new generation loads: what the
    /// serving one knows of servers the new config keeps in place (health,
    /// maintenance), or an empty state when nothing serves.
    async fn write_server_state(
        &self,
        config: &str,
        layout: Option<&Layout>,
        carry: bool,
        unconfirmed: &BTreeSet<(String, String)>,
    ) {
        let path = crate::files::server_state_path(&self.settings.admin_socket());
        let dump = if carry {
            match self.runtime.command("show servers state").await {
                Ok(d) => Some(d),
                Err(e) => {
                    log!(warn, Event::ReadFailed, error = %e, "cannot read the server state; the new haproxy starts without it");
                    None
                }
            }
        } else {
            None
        };
        let content = match dump {
            Some(d) => {
                let parsed;
                let layout = match layout {
                    Some(l) => l,
                    None => {
                        parsed = Layout::from_text(config);
                        &parsed
                    }
                };
                live::carry_state(&d, layout, unconfirmed)
            }
            None => "1\n".to_string(),
        };
        if let Err(e) = crate::files::write_replace(&path, content.as_bytes()) {
            log!(warn, Event::WriteFailed, file = %path.display(), error = %e, "cannot write the server state");
        }
    }

    /// Spawns a generation on the running file by `strategy`.
    async fn spawn(&mut self, strategy: ReloadStrategy, config: &str, run_as_user: bool) -> Input {
        let failed = |e: String| Input::StartFailed {
            id: None,
            abandoned: false,
            died_at_start: false,
            output: String::new(),
            error: e,
        };
        let socket = self.settings.admin_socket();
        let fds = match strategy {
            ReloadStrategy::SynDrop => Vec::new(),
            _ => self.held_fds(config),
        };
        if strategy == ReloadStrategy::SynDrop {
            // The seed's reload: drop SYNs to every bound port while the
            // new process starts and the old ones unbind.
            let ports = crate::listeners::bind_ports(config);
            let p = ports.clone();
            match self.reaper.hold_off(move || SynDropGuard::insert(&p)).await {
                Ok(Ok(guard)) => {
                    self.status.syn_drop_rules(ports.len());
                    self.syn_drop = Some((guard, ports));
                }
                Ok(Err(e)) => return failed(HaproxyError::Iptables(e.to_string()).to_string()),
                Err(e) => return failed(HaproxyError::Iptables(e.to_string()).to_string()),
            }
        }
        let run_as = if run_as_user { self.run_as } else { None };
        if let Some((uid, _)) = run_as {
            // An admin socket a root HAProxy left (an earlier run, a
            // generation that bound by itself) cannot be replaced by the
            // user in the sticky run dir: HAProxy would refuse to start.
            if let Ok(m) = std::fs::symlink_metadata(&socket) {
                use std::os::unix::fs::MetadataExt;
                if m.uid() != uid {
                    let _ = std::fs::remove_file(&socket);
                }
            }
        }
        let spec = StartSpec {
            bin: &self.settings.haproxy_bin,
            config: &self.running_file,
            take_sockets_from: (strategy == ReloadStrategy::Seamless).then_some(socket.as_path()),
            inherit: &fds,
            run_as,
            json_logs: self.settings.log_format == crate::settings::LogFormat::Json,
        };
        match haproxy::start(&self.reaper, &spec) {
            Ok((pid, exited, stderr)) => {
                self.starting = Some(Starting {
                    pid,
                    exited,
                    stderr,
                    inherited: !fds.is_empty(),
                });
                Input::Spawned { pid }
            }
            Err(e) => {
                self.remove_syn_drop().await;
                failed(e.to_string())
            }
        }
    }

    /// Waits until generation `id` listens; then the old ones finish (what
    /// `-sf` would do, but only now, so they were never paused).
    async fn await_listening(&mut self, id: u64, pid: Pid, config: &str, old: &[Pid]) -> Input {
        let Some(mut s) = self.starting.take().filter(|s| s.pid == pid) else {
            return Input::StartFailed {
                id: Some(id),
                abandoned: false,
                died_at_start: false,
                output: String::new(),
                error: "no generation starting".into(),
            };
        };
        let ports = crate::listeners::bind_ports(config);
        let admin = self.settings.admin_socket();
        let r = haproxy::wait_listening(
            pid,
            &ports,
            Some(&admin),
            s.inherited,
            &mut s.exited,
            Duration::from_secs(10),
        )
        .await;
        let forward = |exited: tokio::sync::oneshot::Receiver<process::Exit>,
                       tx: mpsc::UnboundedSender<Input>| {
            tokio::spawn(async move {
                if let Ok(exit) = exited.await {
                    let _ = tx.send(Input::Exited { id, pid, exit });
                }
            });
        };
        let input = match r {
            Ok(()) => {
                forward(s.exited, self.results.clone());
                for p in old {
                    let _ = kill(*p, Signal::SIGUSR1);
                }
                if let Some((_, ports)) = &self.syn_drop {
                    // New SYNs must not land in an old socket's queue: wait
                    // (briefly) until the old generations closed their listeners.
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < deadline
                        && old
                            .iter()
                            .any(|p| !haproxy::ports_listening(*p, ports).is_empty())
                    {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                Input::Listening { id }
            }
            Err(HaproxyError::DiedAtStart { pid: p, exit, .. }) => {
                // Let the stderr reader take the last lines.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let output = s.stderr.text();
                let error = HaproxyError::DiedAtStart {
                    pid: p,
                    exit,
                    output: output.clone(),
                }
                .to_string();
                Input::StartFailed {
                    id: Some(id),
                    abandoned: false,
                    died_at_start: true,
                    output,
                    error,
                }
            }
            Err(e) => {
                // Not serving: make sure it goes away; the old keep serving.
                forward(s.exited, self.results.clone());
                let _ = kill(pid, Signal::SIGKILL);
                Input::StartFailed {
                    id: Some(id),
                    abandoned: true,
                    died_at_start: false,
                    output: String::new(),
                    error: e.to_string(),
                }
            }
        };
        self.remove_syn_drop().await;
        input
    }

    /// Removes the SYN-drop rules of a start, if any.
    async fn remove_syn_drop(&mut self) {
        let Some((guard, _)) = self.syn_drop.take() else {
            return;
        };
        let removed = self.reaper.hold_off(move || guard.remove()).await;
        // The guard removes them on every path (and at the next start).
        self.status.syn_drop_rules(0);
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log!(error, Event::SynDropCleanupFailed, error = %e, "could not remove SYN-drop rules")
            }
            Err(e) => {
                log!(error, Event::SynDropCleanupFailed, error = %e, "could not remove SYN-drop rules")
            }
        }
    }

    /// Puts the config that served back in the running file.
    async fn roll_back(&mut self, checked: Arc<crate::step::Checked>, epoch: u64) -> Input {
        let cfg = &checked.rendered;
        let disk = self.disk.clone();
        let mut written = disk.lock().await;
        *written = epoch;
        let result = if cfg.maps.is_empty() {
            crate::files::write_replace(&self.running_file, cfg.config.as_bytes())
        } else {
            crate::files::stage(&self.running_file, cfg).and_then(|st| st.commit(cfg))
        };
        match result {
            Ok(()) => {
                log!(warn, Event::RolledBack, file = %self.running_file.display(), "rolled back to the config that serves");
                Input::RolledBack { ok: true }
            }
            Err(e) => {
                log!(error, Event::RollbackFailed, file = %self.running_file.display(), error = %e, "cannot roll back to the config that serves");
                Input::RolledBack { ok: false }
            }
        }
    }

    /// One live operation, on `rt` (the change's session).
    async fn apply(rt: &RuntimeApi, op: &Op) -> Result<(), RuntimeError> {
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
            Op::SetMaxconn {
                backend,
                server,
                maxconn,
            } => rt.set_maxconn(backend, server, *maxconn).await,
            Op::Ready { backend, server } => rt.set_state(backend, server, AdminState::Ready).await,
            Op::Park { backend, server } => rt.set_state(backend, server, AdminState::Maint).await,
            Op::AddBackend { backend, profile } => rt.add_backend(backend, profile).await,
            Op::Publish { backend } => rt.publish_backend(backend).await,
            Op::ParkBackend { backend, servers } => {
                rt.unpublish_backend(backend).await?;
                for server in servers {
                    rt.set_state(backend, server, AdminState::Maint).await?;
                }
                Ok(())
            }
            Op::ReplaceMap { path, entries } => rt.replace_map(path, entries).await,
            Op::SetCert { path, pem } => rt.replace_ssl_cert(path, pem).await,
            Op::AddCert { list, path, pem } => rt.add_ssl_cert(list, path, pem).await,
            Op::DelCert { list, path } => rt.del_ssl_cert(list, path).await,
        }
    }

    /// Deletes parked servers that have no connection left; the others
    /// stay parked (in maintenance) and are tried again later.
    async fn delete_parked(
        &mut self,
        servers: Vec<(String, String)>,
        backends: Vec<String>,
    ) -> Input {
        let rt = self.runtime.session();
        let mut deleted = Vec::new();
        let mut kept: BTreeSet<String> = BTreeSet::new();
        for (backend, server) in servers {
            match rt.del_server(&backend, &server).await {
                Ok(()) => {
                    log!(
                        debug,
                        Event::ParkedDeleted,
                        backend,
                        server,
                        "parked server deleted"
                    );
                    deleted.push((backend, server));
                }
                Err(RuntimeError::Busy { .. }) => {
                    kept.insert(backend);
                }
                Err(e) => {
                    log!(debug, Event::ParkedKept, backend, server, error = %e, "cannot delete a parked server yet");
                    kept.insert(backend);
                }
            }
        }
        let mut gone = Vec::new();
        for backend in backends.into_iter().filter(|b| !kept.contains(b)) {
            match rt.del_backend(&backend).await {
                Ok(()) => {
                    log!(
                        info,
                        Event::ParkedDeleted,
                        backend,
                        "parked backend deleted"
                    );
                    gone.push(backend);
                }
                Err(e) => {
                    log!(debug, Event::ParkedKept, backend, error = %e, "cannot delete a parked backend yet")
                }
            }
        }
        Input::ParkedDone {
            deleted,
            backends: gone,
        }
    }

    fn sync_job(&self, config: &str, epoch: u64) -> SyncJob {
        SyncJob {
            disk: self.disk.clone(),
            epoch,
            reaper: self.reaper.clone(),
            bin: self.settings.haproxy_bin.clone(),
            file: self.running_file.clone(),
            fds: self.held_fds(config),
        }
    }

    /// Closes the held sockets `keep` does not name, and records the rest
    /// in `<run-dir>/listeners`.
    fn release_listeners(&mut self, keep: &str) {
        let Some(l) = &mut self.listeners else {
            return;
        };
        let released = l.release(keep);
        if !released.is_empty() {
            log!(info, Event::ListenersReleased, ports = ?released, "released the listening sockets of ports no longer served");
        }
        let path = self.settings.run_dir.join("listeners");
        if let Err(e) = crate::files::write_replace(&path, l.file_text().as_bytes()) {
            log!(warn, Event::WriteFailed, file = %path.display(), error = %e, "cannot write the listeners file");
        }
    }

    /// SIGHUP: loads `HAPROXY_TEMPLATE` again (a broken one changes
    /// nothing) and re-reads the catalog file.
    fn reread(&mut self) -> Input {
        if let (Some(path), Some(_)) = (self.settings.template.clone(), &self.renderer) {
            match Renderer::new(
                Some(&path),
                &self.settings.config_file,
                &self.settings.admin_socket(),
            ) {
                Ok(r) => self.renderer = Some(r),
                Err(e) => {
                    log!(error, Event::RenderFailed, template = %path.display(), error = %e, "SIGHUP: the template does not load; nothing changes");
                    return Input::Reread {
                        template_ok: false,
                        catalog: None,
                    };
                }
            }
        }
        let mut catalog = None;
        if let Some((path, tx)) = &self.catalog_file {
            match discovery::file::load(path) {
                Ok(c) => {
                    discovery::publish(tx, c);
                    catalog = tx.borrow().clone();
                }
                Err(e) => {
                    log!(error, Event::CatalogFileRejected, path = %path.display(), error = %e, "SIGHUP: cannot read the catalog file; keeping the last good catalog")
                }
            }
        }
        Input::Reread {
            template_ok: true,
            catalog,
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
        crate::log!(
            warn,
            Event::LeftoversAdopted,
            ?pids,
            "found haproxy processes of an earlier run; the new one will take over from them"
        );
    }
    pids
}

/// The loop against a fake HAProxy and a fake discovery: real channels,
/// real timers, no process, no file, no root.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CatalogService, Instance};
    use crate::process::Exit;
    use std::sync::Mutex;

    /// Answers like HAProxy would; records what it was asked.
    struct Fake {
        renderer: Renderer,
        next_pid: i32,
        done: Arc<Mutex<Vec<Action>>>,
        results: mpsc::UnboundedSender<Input>,
        /// How long a check takes (a reload under way meanwhile).
        check_takes: Duration,
        /// Generations exit when told to finish (SIGUSR1) or stop.
        gens: Vec<(u64, Pid)>,
    }

    impl Perform for Fake {
        async fn perform(&mut self, a: Action) -> Option<Input> {
            self.done.lock().unwrap().push(a.clone());
            match a {
                Action::Render { desired, vars } => Some(Input::Rendered(
                    crate::pipeline::render(&self.renderer, &desired, &vars, &Default::default())
                        .map_err(|e| e.to_string()),
                )),
                Action::Check { .. } => {
                    tokio::time::sleep(self.check_takes).await;
                    Some(Input::Checked {
                        candidate: None,
                        result: Ok(()),
                    })
                }
                Action::Probe { .. } => Some(Input::Probed {
                    socket_answers: true,
                    held_covers: false,
                }),
                Action::Spawn { .. } => {
                    self.next_pid += 1;
                    Some(Input::Spawned {
                        pid: Pid::from_raw(self.next_pid),
                    })
                }
                Action::AwaitListening { id, pid, old, .. } => {
                    // The old ones finish once it serves.
                    for (gid, gpid) in self.gens.clone() {
                        if old.contains(&gpid) {
                            self.exit(gid, gpid, Exit::Code(0));
                        }
                    }
                    self.gens.push((id, pid));
                    Some(Input::Listening { id })
                }
                Action::Kill(pid, sig) => {
                    if matches!(sig, Signal::SIGUSR1 | Signal::SIGTERM | Signal::SIGKILL) {
                        if let Some((id, _)) = self.gens.iter().find(|(_, p)| *p == pid).copied() {
                            self.exit(id, pid, Exit::Code(0));
                        }
                    }
                    None
                }
                Action::ApplyLive { .. } => Some(Input::LiveDone(Ok(()))),
                Action::Sync { epoch, wait, .. } => {
                    if wait {
                        Some(Input::Synced { epoch, ok: true })
                    } else {
                        let _ = self.results.send(Input::Synced { epoch, ok: true });
                        None
                    }
                }
                Action::Reread => Some(Input::Reread {
                    template_ok: true,
                    catalog: None,
                }),
                Action::RollBack { .. } => Some(Input::RolledBack { ok: true }),
                Action::DeleteParked { servers, backends } => Some(Input::ParkedDone {
                    deleted: servers,
                    backends,
                }),
                _ => None,
            }
        }
    }

    impl Fake {
        fn exit(&mut self, id: u64, pid: Pid, exit: Exit) {
            self.gens.retain(|(g, _)| *g != id);
            let _ = self.results.send(Input::Exited { id, pid, exit });
        }
    }

    fn www(ports: &[u16]) -> Option<Arc<Catalog>> {
        with_api(ports, false)
    }

    /// `www` on `ports`, and a service `api` (another backend) if `api`.
    fn with_api(ports: &[u16], api: bool) -> Option<Arc<Catalog>> {
        let mut c = Catalog::default();
        let names: &[&str] = if api { &["www", "api"] } else { &["www"] };
        for name in names {
            let tags: Vec<String> = vec![
                "HAPROXY.ENABLE=true".into(),
                format!("HAPROXY.VHOST={name}.example.com"),
            ];
            c.services.insert(
                name.to_string(),
                CatalogService {
                    tags: tags.clone(),
                    instances: ports
                        .iter()
                        .map(|p| Instance {
                            id: format!("web-{p}"),
                            address: "127.0.0.1".into(),
                            port: *p as i64,
                            tags: tags.clone(),
                            weight: 1,
                            passing: true,
                        })
                        .collect(),
                    created: 0,
                },
            );
        }
        Some(Arc::new(c))
    }

    struct Edges {
        catalog: discovery::CatalogTx,
        signals: mpsc::UnboundedSender<Signal>,
        results: mpsc::UnboundedSender<Input>,
        done: Arc<Mutex<Vec<Action>>>,
    }

    impl Edges {
        fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
            self.done.lock().unwrap().iter().filter(|a| f(a)).count()
        }

        fn spawns(&self) -> usize {
            self.count(|a| matches!(a, Action::Spawn { .. }))
        }

        async fn until(&self, what: &str, f: impl Fn(&Edges) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !f(self) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    fn setup(check_takes: Duration) -> (State, Fake, Sources, Edges, Arc<Status>) {
        let settings = Settings::from_options(&Default::default()).unwrap();
        let facts = Facts {
            strategy: ReloadStrategy::Seamless,
            renders: true,
            discovery: true,
            live_changes: true,
            waits: crate::policy::Waits {
                live: Duration::from_millis(5),
                reload_min: Duration::from_millis(20),
                reload_max: Duration::from_millis(200),
            },
            stop_timeout: Duration::from_millis(300),
            syn_drop: false,
            fd_limit: None,
            vars: settings.vars,
            caps: live::Caps::from_version("HAProxy version 2.6.12"),
            crt_list: None,
            cert_store: None,
            certs_dir: None,
            run_as_user: false,
            admin_socket: "/run/admin.sock".into(),
            guard_percent: 50,
            guard_grace: Duration::from_secs(30),
        };
        let (catalog, catalog_rx) = watch::channel(None);
        let (signals, signals_rx) = mpsc::unbounded_channel();
        let (results, results_rx) = mpsc::unbounded_channel();
        let done = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            renderer: Renderer::new(
                None,
                std::path::Path::new("/etc/haproxy/haproxy.cfg"),
                std::path::Path::new("/run/admin.sock"),
            )
            .unwrap(),
            next_pid: 100,
            done: done.clone(),
            results: results.clone(),
            check_takes,
            gens: Vec::new(),
        };
        let sources = Sources {
            catalog: Some(catalog_rx),
            certs: None,
            signals: signals_rx,
            results: results_rx,
        };
        let edges = Edges {
            catalog,
            signals,
            results,
            done,
        };
        let status = Status::new(Arc::new(discovery::Health::default()));
        (
            State::new(facts, OnDisk::Nothing, Vec::new()),
            fake,
            sources,
            edges,
            status,
        )
    }

    #[tokio::test]
    async fn the_loop_serves_the_first_catalog_and_stops_on_sigterm() {
        let (state, mut fake, sources, edges, status) = setup(Duration::ZERO);
        let script = async {
            edges.catalog.send_replace(www(&[9001]));
            edges.until("a generation", |e| e.spawns() == 1).await;
            edges.signals.send(Signal::SIGTERM).unwrap();
        };
        let (code, ()) = tokio::join!(drive(state, &mut fake, sources, &status), script);
        assert_eq!(code, 0);
        assert_eq!(
            edges.count(|a| matches!(a, Action::Kill(_, Signal::SIGUSR1))),
            1
        );
        assert_eq!(edges.count(|a| matches!(a, Action::Exit(0))), 1);
    }

    #[tokio::test]
    async fn catalog_changes_during_a_slow_reload_give_one_follow_up() {
        let (state, mut fake, sources, edges, status) = setup(Duration::from_millis(100));
        let script = async {
            edges.catalog.send_replace(www(&[9001]));
            edges.until("a generation", |e| e.spawns() == 1).await;
            // A structural change: a reload whose check takes 100 ms.
            edges.catalog.send_replace(with_api(&[9001], true));
            edges
                .until("the reload's check", |e| {
                    e.count(|a| matches!(a, Action::Check { .. })) == 2
                })
                .await;
            for p in [9002, 9003, 9004] {
                edges.catalog.send_replace(with_api(&[9001, p], true));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            edges
                .until("the follow-up", |e| {
                    e.count(|a| matches!(a, Action::ApplyLive { .. })) >= 1
                })
                .await;
            // Nothing more comes of them.
            tokio::time::sleep(Duration::from_millis(60)).await;
            edges.signals.send(Signal::SIGTERM).unwrap();
        };
        let (code, ()) = tokio::join!(drive(state, &mut fake, sources, &status), script);
        assert_eq!(code, 0);
        assert_eq!(edges.spawns(), 2, "the start and the new service");
        assert_eq!(
            edges.count(|a| matches!(a, Action::ApplyLive { .. })),
            1,
            "three changes during the reload: one follow-up"
        );
    }

    #[tokio::test]
    async fn a_crash_is_restarted_and_a_second_sigterm_forces() {
        let (state, mut fake, sources, edges, status) = setup(Duration::ZERO);
        let script = async {
            edges.catalog.send_replace(www(&[9001]));
            edges.until("a generation", |e| e.spawns() == 1).await;
            // The serving HAProxy dies.
            edges
                .results
                .send(Input::Exited {
                    id: 1,
                    pid: Pid::from_raw(101),
                    exit: Exit::Signal(9),
                })
                .unwrap();
            edges.until("a restart", |e| e.spawns() == 2).await;
            assert_eq!(edges.count(|a| *a == Action::Restarted), 1);
            assert_eq!(status.snapshot().restarts, 1);
            edges.signals.send(Signal::SIGTERM).unwrap();
            edges.signals.send(Signal::SIGTERM).unwrap();
        };
        let (code, ()) = tokio::join!(drive(state, &mut fake, sources, &status), script);
        assert_eq!(code, 0);
        assert!(edges.count(|a| matches!(a, Action::Kill(_, Signal::SIGUSR1))) >= 1);
    }

    #[tokio::test]
    async fn discovery_going_away_keeps_what_serves() {
        let (state, mut fake, sources, edges, status) = setup(Duration::ZERO);
        let Edges {
            catalog,
            signals,
            results: _r,
            done,
        } = edges;
        let edges2 = Edges {
            catalog: watch::channel(None).0,
            signals: signals.clone(),
            results: _r.clone(),
            done: done.clone(),
        };
        let script = async {
            catalog.send_replace(www(&[9001]));
            edges2.until("a generation", |e| e.spawns() == 1).await;
            drop(catalog);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(status.snapshot().serving_pid.is_some());
            signals.send(Signal::SIGTERM).unwrap();
        };
        let (code, ()) = tokio::join!(drive(state, &mut fake, sources, &status), script);
        assert_eq!(code, 0);
        assert_eq!(edges2.spawns(), 1);
    }
}
