//! The supervisor's rules as one pure step: [`State::step`] takes what
//! arrived (an [`Input`]: a catalog, a signal, a child's exit, a deadline,
//! the result of an action) and returns what to do (a list of [`Action`]s:
//! render, check, start, apply live, signal, write, exit). It performs
//! nothing: no file, no process, no socket, no clock (the time comes with
//! the input). `supervisor` turns what arrives into inputs and performs the
//! actions; every rule lives here or in [`policy`] and [`live`].
//!
//! What serves and what is on disk is one value, [`Applied`]: each part is
//! a whole checked render, replaced by assignment (a rollback is one).
//!
//! One reload is an *episode* ([`Busy::Reload`]): render → check → probe →
//! spawn → listening, with up to [`ATTEMPTS`] attempts when HAProxy blames
//! a service (it is left out and the rest applies). While an episode runs,
//! the loop feeds it its own results first, so catalog changes and signals
//! that arrive meanwhile are handled after it: a catalog change becomes one
//! follow-up, a SIGHUP one more reload.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::events::Event;
use crate::live::{self, Layout, Op, Plan, Running};
use crate::log;
use crate::model::HaproxyVars;
use crate::model::{Catalog, CatalogService, Context, Desired, Warning};
use crate::policy::ReloadStrategy;
use crate::policy::{
    self, AfterStructural, Due, Ended, Exclusion, Generations, Pending, Removal, RemovalGuard,
    Restarts, Retries, Stop, StopStep, Trigger, Waits,
};
use crate::process::Exit;
use crate::render::Rendered;
use crate::signals;
use crate::status::{LeftOut, RemovalHeld, Snapshot};
use crate::tls::{self, CertSet};

/// Attempts of one reload episode: each one leaves out the services
/// HAProxy blamed in the one before.
pub const ATTEMPTS: u32 = 8;

/// How often the config applied live is written to disk and checked: each
/// write costs a `haproxy -c` (tens of ms of CPU, most of it loading the
/// system CA store), which at a change every 150 ms would take a fifth of a
/// core from the HAProxy serving. A restart or reload never waits on it:
/// they write what they start from first.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// How often parked servers (in maintenance, connections left) are tried
/// for deletion.
pub const PARKED_EVERY: Duration = Duration::from_secs(2);

/// The facts the rules need that do not change while the supervisor runs.
#[derive(Debug, Clone)]
pub struct Facts {
    pub strategy: ReloadStrategy,
    /// The supervisor renders (false: an external watcher writes the config).
    pub renders: bool,
    /// A discovery source feeds catalogs.
    pub discovery: bool,
    pub live_changes: bool,
    pub waits: Waits,
    pub stop_timeout: Duration,
    /// iptables works: syn-drop (and the fallback of seamless) possible.
    pub syn_drop: bool,
    /// The open-files limit HAProxy inherits (`None`: unknown).
    pub fd_limit: Option<u64>,
    pub vars: HaproxyVars,
    pub caps: live::Caps,
    /// The crt-list our certificate store writes (a config that loads it
    /// can take certificate changes live).
    pub crt_list: Option<String>,
    /// The certificate store's directory (the files HAProxy loads) and
    /// `HAPROXY_CERTS_DIR` (certificates are logged by their file there).
    pub cert_store: Option<std::path::PathBuf>,
    pub certs_dir: Option<std::path::PathBuf>,
    /// HAProxy is started as `HAPROXY_USER` (held sockets, root).
    pub run_as_user: bool,
    /// The admin socket (named in logs).
    pub admin_socket: String,
    pub guard_percent: u32,
    pub guard_grace: Duration,
}

/// A whole checked render: the text and maps, its layout (what the diff
/// of live changes reads), and the catalog it came from (fingerprints, to
/// blame what changed).
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub rendered: Rendered,
    /// `None` for a config an external watcher wrote (no live changes).
    pub layout: Option<Layout>,
    pub fingerprints: BTreeMap<String, u64>,
}

impl Checked {
    pub fn config(&self) -> &str {
        &self.rendered.config
    }
}

/// What the running file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum OnDisk {
    Nothing,
    /// Written by an earlier run: not checked by this one yet.
    Earlier(String),
    /// Checked and written by this run.
    Checked(Arc<Checked>),
}

/// What serves and what is on disk, each replaced whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// What the serving HAProxy runs (the last config that served, live
    /// changes included; kept when that HAProxy dies: a restart uses it).
    pub serving: Option<Arc<Checked>>,
    /// The running file: what a restart starts from.
    pub on_disk: OnDisk,
    /// The serving HAProxy's servers and maps as we know them; `None`
    /// when unknown (live changes off, or a live operation failed).
    pub live: Option<Running>,
}

impl Applied {
    fn disk_checked(&self) -> Option<&Arc<Checked>> {
        match &self.on_disk {
            OnDisk::Checked(c) => Some(c),
            _ => None,
        }
    }

    fn disk_text(&self) -> Option<&str> {
        match &self.on_disk {
            OnDisk::Nothing => None,
            OnDisk::Earlier(t) => Some(t),
            OnDisk::Checked(c) => Some(c.config()),
        }
    }

    /// What serves differs from the file (applied live): write it.
    fn unsynced(&self) -> Option<&Arc<Checked>> {
        let s = self.serving.as_ref()?;
        (self.disk_text() != Some(s.config()) && s.layout.is_some()).then_some(s)
    }
}

/// How a candidate is checked and put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckHow {
    /// The running file already holds this text (an earlier run wrote it):
    /// check it where it is.
    InPlace,
    /// Stage beside the running file, check, swap in (maps with it).
    Staged,
}

/// What the executor is asked to do.
// A few actions live at a time: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Hold the ports `desired` binds, render, settle the held sockets;
    /// answers [`Input::Rendered`]. The executor adds the certificate
    /// frontend it holds.
    Render {
        desired: Desired,
        vars: HaproxyVars,
    },
    /// External mode: read the watcher's file, check it, copy it to the
    /// running file; answers [`Input::Checked`] with the text read.
    PrepareExternal {
        epoch: u64,
    },
    /// Check `candidate` and put it in place; answers [`Input::Checked`].
    Check {
        candidate: Arc<Checked>,
        how: CheckHow,
        epoch: u64,
    },
    /// Find out what the strategy choice needs: does the admin socket
    /// answer, do the held sockets cover `config`; answers [`Input::Probed`].
    Probe {
        config: Arc<Checked>,
    },
    /// Write the server state, then spawn HAProxy on the running file;
    /// answers [`Input::Spawned`] or [`Input::StartFailed`].
    Spawn {
        strategy: ReloadStrategy,
        /// What it starts (its layout: what the carried state keeps).
        config: Arc<Checked>,
        /// A generation serves: carry its server state.
        carry_state: bool,
        /// Servers whose live change failed: their state is not carried.
        unconfirmed: BTreeSet<(String, String)>,
        run_as_user: bool,
    },
    /// Wait until generation `id` serves; then tell `old` to finish
    /// (SIGUSR1); answers [`Input::Listening`] or [`Input::StartFailed`].
    AwaitListening {
        id: u64,
        pid: Pid,
        config: Arc<Checked>,
        strategy: ReloadStrategy,
        old: Vec<Pid>,
    },
    /// Put `config` (what served) back in the running file; answers
    /// [`Input::RolledBack`].
    RollBack {
        config: Arc<Checked>,
        epoch: u64,
    },
    /// Apply live operations in order; answers [`Input::LiveDone`].
    ApplyLive {
        ops: Vec<Op>,
    },
    /// Delete parked servers, then the parked backends none of whose
    /// servers is left; answers [`Input::ParkedDone`].
    DeleteParked {
        servers: Vec<(String, String)>,
        backends: Vec<String>,
    },
    /// Write what serves (applied live) to the running file in the
    /// background (or now, `wait`); answers [`Input::Synced`].
    Sync {
        checked: Arc<Checked>,
        epoch: u64,
        wait: bool,
    },
    /// Write the certificate store with `set` (what renders and HAProxy
    /// load from now on); answers [`Input::CertsStored`].
    StoreCerts {
        set: CertSet,
    },
    /// SIGHUP: load the template again and re-read the catalog file;
    /// answers [`Input::Reread`].
    Reread,
    /// Close the held sockets `keep` does not name.
    ReleaseListeners {
        keep: String,
    },
    /// Write the pid file.
    WritePids(Vec<Pid>),
    Kill(Pid, Signal),
    /// Metrics of the status server.
    CheckFailed,
    Restarted,
    ReloadMetric {
        trigger: Trigger,
        strategy: ReloadStrategy,
        took: Duration,
        error: Option<String>,
    },
    /// The supervisor exits with this code (after removing the pid file).
    Exit(i32),
}

/// Why a check gave no config.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckError {
    /// `haproxy -c` refused it: HAProxy's message.
    Invalid(String),
    /// A file step failed (a full disk): may heal, retried with backoff.
    Transient(String),
}

/// What arrives.
#[derive(Debug, Clone)]
pub enum Input {
    /// The first step: starts the external config when nothing discovers.
    Begin,
    /// A discovery answer.
    Catalog(Arc<Catalog>),
    DiscoveryStopped,
    /// The certificate directory gave a new set (bundles that validated).
    Certs(CertSet),
    Signal(Signal),
    Exited {
        id: u64,
        pid: Pid,
        exit: Exit,
    },
    /// A deadline ([`State::next_deadline`]) passed.
    Tick,
    Rendered(Result<(Rendered, Layout), String>),
    Checked {
        /// The text checked (external mode: what the watcher wrote).
        candidate: Option<Rendered>,
        result: Result<(), CheckError>,
    },
    Probed {
        socket_answers: bool,
        held_covers: bool,
    },
    Spawned {
        pid: Pid,
    },
    Listening {
        id: u64,
    },
    StartFailed {
        /// The generation, once spawned; `abandoned` when it did not
        /// listen in time and is being killed (its exit still comes).
        id: Option<u64>,
        abandoned: bool,
        /// It died before it listened: `output` is what it printed.
        died_at_start: bool,
        /// HAProxy's output when it died at start, else the error.
        output: String,
        error: String,
    },
    RolledBack {
        ok: bool,
    },
    LiveDone(Result<(), LiveFailure>),
    ParkedDone {
        deleted: Vec<(String, String)>,
        backends: Vec<String>,
    },
    Synced {
        epoch: u64,
        ok: bool,
    },
    /// The store holds the set asked (`ok`), or still the one served.
    CertsStored {
        ok: bool,
    },
    Reread {
        template_ok: bool,
        /// The catalog file, read again (file source).
        catalog: Option<Arc<Catalog>>,
    },
}

/// A live operation failed: the process may be half-changed.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveFailure {
    pub applied: usize,
    pub error: String,
}

/// What the loop is in the middle of.
#[derive(Debug, Clone, PartialEq)]
pub enum Busy {
    /// Rendering the catalog to try it live: the catalog's fingerprints,
    /// and the change that waited (a structural one waits on).
    LiveRender {
        fingerprints: BTreeMap<String, u64>,
        pending: Pending,
    },
    /// Applying live operations.
    LiveOps {
        candidate: Arc<Checked>,
        next: Option<Running>,
        ops: Vec<Op>,
        started: Instant,
    },
    Reload(Episode),
    /// Writing the certificate store for `set`; `live`: a change that
    /// needs no reload can go live.
    CertStore {
        set: CertSet,
        live: bool,
    },
    /// Applying certificate changes through the runtime API.
    CertOps {
        logs: Vec<CertLog>,
    },
    /// SIGHUP: re-reading the template and the catalog file.
    Reread,
}

/// One reload (or restart) in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub trigger: Trigger,
    pub attempt: u32,
    /// The checked (or being checked) candidate.
    pub candidate: Option<Arc<Checked>>,
    /// The catalog fingerprints the candidate renders.
    pub fingerprints: BTreeMap<String, u64>,
    pub strategy: Option<ReloadStrategy>,
    pub generation: Option<u64>,
    pub old: Vec<Pid>,
    pub started: Option<Instant>,
    /// The candidate is checked where it is (an earlier run wrote it).
    pub in_place: bool,
}

impl Episode {
    fn new(trigger: Trigger) -> Episode {
        Episode {
            trigger,
            attempt: 0,
            candidate: None,
            fingerprints: BTreeMap::new(),
            strategy: None,
            generation: None,
            old: Vec::new(),
            started: None,
            in_place: false,
        }
    }
}

/// Counters, logged with each reload and shown by `/status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
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

/// A stop in progress.
#[derive(Debug, Clone)]
pub struct Stopping {
    pub stop: Stop,
    pub serving: Option<u64>,
    pub serving_exit: Option<Exit>,
    pub kill_at: Option<Instant>,
    pub signal: &'static str,
    /// The exit was decided.
    pub exited: bool,
}

/// Everything the rules decide from.
pub struct State {
    pub facts: Facts,
    pub gens: Generations,
    pub applied: Applied,
    pub counters: Counters,
    pub busy: Option<Busy>,
    /// A SIGHUP or certificate change that arrived during an episode.
    pub follow_up: Option<Trigger>,
    /// The certificate set served (what the store holds), and one that
    /// arrived during an episode.
    pub certs: CertSet,
    pub certs_waiting: Option<CertSet>,
    pub pending: Option<Pending>,
    pub restarts: Restarts,
    pub restart_at: Option<Instant>,
    pub retries: Retries,
    pub retry_at: Option<Instant>,
    pub guard: RemovalGuard,
    /// The latest discovery answer, and the last one the guard let through.
    pub incoming: Option<Arc<Catalog>>,
    pub guard_applied: Option<Arc<Catalog>>,
    pub guard_held: Option<Removal>,
    pub excluded: BTreeMap<String, Exclusion>,
    /// Left-out services whose time is up, rendered in the next attempt.
    pub retry_excluded: Vec<String>,
    /// The catalog the serving config renders (blame: what changed since).
    pub good_fingerprints: BTreeMap<String, u64>,
    /// Servers whose live change failed: their state is not carried over.
    pub unconfirmed: BTreeSet<(String, String)>,
    /// HAProxy processes of an earlier run the first generation takes over.
    pub adopted: Vec<Pid>,
    /// Warnings logged, so each is logged once while it lasts.
    pub warned: BTreeSet<String>,
    pub fd_fit: Option<u32>,
    pub rendered_counts: (usize, usize),
    pub left_out: Vec<LeftOut>,
    /// Moves on with every write a reload makes: a background write of an
    /// older epoch is stale.
    pub epoch: u64,
    pub sync_in_flight: bool,
    /// What the write in flight puts on disk.
    pub syncing: Option<Arc<Checked>>,
    pub last_sync: Option<Instant>,
    /// A config applied live that did not pass the check: not tried again.
    pub sync_refused: Option<String>,
    pub parked_at: Option<Instant>,
    pub discovery_open: bool,
    pub stopping: Option<Stopping>,
}

/// The fingerprint of a service's registration: a left-out service is
/// tried again when it changes.
pub fn fingerprint(s: &CatalogService) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{s:?}").hash(&mut h);
    h.finish()
}

pub fn fingerprints(c: &Catalog) -> BTreeMap<String, u64> {
    c.services
        .iter()
        .map(|(n, s)| (n.clone(), fingerprint(s)))
        .collect()
}

/// HAProxy's first alert line of `message` (what a left-out service logs).
fn first_alert(message: &str) -> &str {
    message
        .lines()
        .find(|l| {
            l.contains("[ALERT]") && !l.contains("Fatal errors") && !l.contains("Error(s) found")
        })
        .unwrap_or(message)
        .trim()
}

impl State {
    pub fn new(facts: Facts, on_disk: OnDisk, adopted: Vec<Pid>) -> State {
        State {
            guard: RemovalGuard::new(facts.guard_percent, facts.guard_grace),
            discovery_open: facts.discovery,
            facts,
            gens: Generations::new(),
            applied: Applied {
                serving: None,
                on_disk,
                live: None,
            },
            counters: Counters::default(),
            busy: None,
            follow_up: None,
            certs: CertSet::new(),
            certs_waiting: None,
            pending: None,
            restarts: Restarts::new(Duration::from_secs(10)),
            restart_at: None,
            retries: Retries::new(Duration::from_secs(30)),
            retry_at: None,
            incoming: None,
            guard_applied: None,
            guard_held: None,
            excluded: BTreeMap::new(),
            retry_excluded: Vec::new(),
            good_fingerprints: BTreeMap::new(),
            unconfirmed: BTreeSet::new(),
            adopted,
            warned: BTreeSet::new(),
            fd_fit: None,
            rendered_counts: (0, 0),
            left_out: Vec::new(),
            epoch: 0,
            sync_in_flight: false,
            syncing: None,
            last_sync: None,
            sync_refused: None,
            parked_at: None,
            stopping: None,
        }
    }

    /// Whether catalog changes can be tried live: rendering, live changes
    /// on, and a serving generation whose state we know.
    pub fn live_possible(&self) -> bool {
        self.facts.live_changes
            && self.facts.renders
            && self.applied.live.is_some()
            && self.gens.serving().is_some()
    }

    /// The earliest time a [`Input::Tick`] is due; `None`: nothing waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some(s) = &self.stopping {
            return match (s.stop.forced, s.kill_at) {
                (None, _) => Some(s.stop.deadline),
                (Some(_), k) => k,
            };
        }
        if self.busy.is_some() {
            return None;
        }
        let w = &self.facts.waits;
        let mut at: Vec<Instant> = Vec::new();
        at.extend(self.restart_at);
        at.extend(self.retry_at);
        at.extend(self.pending.map(|p| p.deadline(self.live_possible(), w)));
        if self.discovery_open && self.facts.discovery {
            at.extend(self.guard.until());
        }
        if self.facts.renders {
            at.extend(self.excluded.values().map(|x| x.until).min());
        }
        if self.needs_sync() && !self.sync_in_flight {
            at.push(self.last_sync.map_or_else(Instant::now, |t| t + SYNC_EVERY));
        }
        at.extend(self.parked_at);
        at.into_iter().min()
    }

    fn needs_sync(&self) -> bool {
        self.applied
            .unsynced()
            .is_some_and(|s| self.sync_refused.as_deref() != Some(s.config()))
    }

    /// What the status server shows.
    pub fn snapshot(&self) -> Snapshot {
        let serving = self.gens.serving();
        let discovery_answered = !self.discovery_open || self.incoming.is_some();
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
        Snapshot {
            not_ready,
            serving_generation: serving.map(|g| g.id),
            serving_pid: serving.map(|g| g.pid.as_raw()),
            draining: self.gens.draining(),
            strategy: self.facts.strategy.as_str().to_string(),
            live_changes: self.facts.live_changes,
            services_rendered: self.rendered_counts.0,
            servers_rendered: self.rendered_counts.1,
            left_out: self.left_out.clone(),
            reloads: self.counters.reloads,
            failed_reloads: self.counters.failed_reloads,
            restarts: self.counters.restarts,
            live_applied: self.counters.live_changes,
            live_ops: self.counters.live_ops,
            live_failures: self.counters.live_failures,
            removal_held: self.guard_held.map(|r| RemovalHeld {
                removed: r.removed,
                serving: r.serving,
                services: r.services,
            }),
        }
    }

    fn pids(&self) -> Action {
        Action::WritePids(self.gens.all().iter().map(|g| g.pid).collect())
    }

    fn serving_pid(&self) -> i32 {
        self.gens.serving().map(|g| g.pid.as_raw()).unwrap_or(0)
    }

    /// One step: what `input` changes, and what to do about it.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopping.is_some() {
            self.step_stopping(input, now, &mut out);
            return out;
        }
        match input {
            Input::Begin => {
                if !self.facts.discovery {
                    self.begin_reload(Trigger::Start, now, &mut out);
                }
            }
            Input::Catalog(c) => self.on_catalog(c, now, &mut out),
            Input::DiscoveryStopped => {
                log!(
                    error,
                    Event::DiscoveryStopped,
                    "discovery stopped; keeping the running config"
                );
                self.discovery_open = false;
            }
            Input::Certs(set) => {
                if self.busy.is_some() {
                    self.certs_waiting = Some(set);
                    self.follow_up = Some(Trigger::Certs);
                } else {
                    self.certs_changed(set, &mut out);
                }
            }
            Input::CertsStored { ok } => {
                if let Some(Busy::CertStore { set, live }) = self.busy.take() {
                    if ok {
                        self.certs_stored(set, live, now, &mut out);
                    }
                }
            }
            Input::Signal(sig) => self.on_signal(sig, now, &mut out),
            Input::Reread {
                template_ok,
                catalog,
            } => {
                self.busy = None;
                if !template_ok {
                    self.counters.failed_reloads += 1;
                } else {
                    if let Some(c) = catalog {
                        self.incoming = Some(c);
                    }
                    self.begin_reload(Trigger::Sighup, now, &mut out);
                }
            }
            Input::Exited { id, pid, exit } => self.on_exit(id, pid, exit, now, &mut out),
            Input::Tick => self.on_tick(now, &mut out),
            Input::Rendered(r) => match self.busy.take() {
                Some(Busy::LiveRender {
                    fingerprints,
                    pending,
                }) => self.live_rendered(fingerprints, pending, r, now, &mut out),
                Some(Busy::Reload(ep)) => self.reload_rendered(ep, r, now, &mut out),
                other => self.busy = other,
            },
            Input::Checked { candidate, result } => {
                if let Some(Busy::Reload(ep)) = self.busy.take() {
                    self.checked(ep, candidate, result, now, &mut out);
                }
            }
            Input::Probed {
                socket_answers,
                held_covers,
            } => {
                if let Some(Busy::Reload(ep)) = self.busy.take() {
                    self.probed(ep, socket_answers, held_covers, now, &mut out);
                }
            }
            Input::Spawned { pid } => {
                if let Some(Busy::Reload(mut ep)) = self.busy.take() {
                    let id = self.gens.spawned(pid, now);
                    ep.generation = Some(id);
                    // Recorded before it serves: if we are killed during
                    // this reload, the next run finds (and finishes) it too.
                    out.push(self.pids());
                    out.push(Action::AwaitListening {
                        id,
                        pid,
                        config: ep.candidate.clone().unwrap_or_else(|| {
                            Arc::new(Checked {
                                rendered: Rendered {
                                    config: String::new(),
                                    maps: BTreeMap::new(),
                                },
                                layout: None,
                                fingerprints: BTreeMap::new(),
                            })
                        }),
                        strategy: ep.strategy.unwrap_or(self.facts.strategy),
                        old: ep.old.clone(),
                    });
                    self.busy = Some(Busy::Reload(ep));
                }
            }
            Input::Listening { id } => {
                if let Some(Busy::Reload(ep)) = self.busy.take() {
                    self.listening(ep, id, now, &mut out);
                }
            }
            Input::StartFailed {
                id,
                abandoned,
                died_at_start,
                output,
                error,
            } => {
                if let Some(Busy::Reload(ep)) = self.busy.take() {
                    let failure = StartFailure {
                        id,
                        abandoned,
                        died_at_start,
                        output,
                        error,
                    };
                    self.start_failed(ep, failure, now, &mut out);
                }
            }
            Input::RolledBack { ok } => {
                if let (true, Some(s)) = (ok, self.applied.serving.clone()) {
                    self.applied.on_disk = OnDisk::Checked(s);
                }
            }
            Input::LiveDone(r) => {
                if let Some(Busy::CertOps { logs }) = &self.busy {
                    let logs = logs.clone();
                    self.busy = None;
                    self.certs_live_done(logs, r, now, &mut out);
                } else if let Some(Busy::LiveOps {
                    candidate,
                    next,
                    ops,
                    started,
                }) = self.busy.take()
                {
                    self.live_done(candidate, next, ops, started, r, now, &mut out);
                }
            }
            Input::ParkedDone { deleted, backends } => {
                if let Some(l) = &mut self.applied.live {
                    for (b, s) in &deleted {
                        l.deleted(b, s);
                    }
                    for b in &backends {
                        l.backend_deleted(b);
                    }
                }
                self.parked_at = self
                    .applied
                    .live
                    .as_ref()
                    .is_some_and(|l| l.has_parked())
                    .then(|| now + PARKED_EVERY);
            }
            Input::Synced { epoch, ok } => {
                self.sync_in_flight = false;
                let written = self.syncing.take();
                if let (true, Some(s)) = (epoch == self.epoch, written) {
                    if ok {
                        self.applied.on_disk = OnDisk::Checked(s);
                    } else {
                        self.sync_refused = Some(s.config().to_string());
                    }
                }
                match self.busy.take() {
                    Some(Busy::Reload(ep))
                        if ep.trigger == Trigger::Restart && ep.candidate.is_none() =>
                    {
                        self.restart_from_disk(ep, &mut out)
                    }
                    other => self.busy = other,
                }
            }
        }
        if self.busy.is_none() && self.stopping.is_none() {
            self.after_episode(now, &mut out);
        }
        out
    }

    /// Between episodes: a follow-up waits, or nothing serves.
    fn after_episode(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.follow_up.take() {
            Some(Trigger::Certs) => {
                if let Some(set) = self.certs_waiting.take() {
                    self.step_into(Input::Certs(set), now, out);
                }
            }
            Some(Trigger::Sighup) => {
                self.busy = Some(Busy::Reread);
                out.push(Action::Reread);
            }
            Some(t) => self.begin_reload(t, now, out),
            None => {}
        }
        if self.busy.is_some() {
            return;
        }
        // A checked config but nothing serving (a start that failed, say
        // because a port was taken): retry with backoff until it serves.
        if self.restart_at.is_none()
            && self.applied.disk_checked().is_some()
            && self.gens.serving().is_none()
        {
            let delay = self.restarts.next_delay();
            log!(
                warn,
                Event::RestartScheduled,
                delay_ms = delay.as_millis() as u64,
                crash_loop = self.restarts.crash_loop(),
                "no haproxy is serving; starting one"
            );
            self.restart_at = Some(now + delay);
        }
    }

    fn step_into(&mut self, input: Input, now: Instant, out: &mut Vec<Action>) {
        let more = self.step(input, now);
        out.extend(more);
    }

    fn on_signal(&mut self, sig: Signal, now: Instant, out: &mut Vec<Action>) {
        match signals::action(sig) {
            signals::Action::Stop { graceful } => self.begin_stop(sig.as_str(), graceful, now, out),
            signals::Action::Forward => match self.gens.serving() {
                Some(g) => {
                    log!(
                        info,
                        Event::SignalForwarded,
                        signal = sig.as_str(),
                        pid = g.pid.as_raw(),
                        "forwarding the signal to the serving haproxy"
                    );
                    out.push(Action::Kill(g.pid, sig));
                }
                None => {
                    log!(
                        info,
                        Event::SignalIgnored,
                        signal = sig.as_str(),
                        "no haproxy serves; signal ignored"
                    )
                }
            },
            signals::Action::Ignore => {
                log!(
                    info,
                    Event::SignalIgnored,
                    signal = sig.as_str(),
                    "signal ignored"
                );
            }
            signals::Action::Reload => {
                log!(
                    info,
                    Event::ReloadRequested,
                    signal = sig.as_str(),
                    "SIGHUP: checking and reloading"
                );
                self.pending = None;
                // SIGHUP also confirms a removal the guard holds.
                self.guard.confirm();
                if self.busy.is_some() {
                    self.follow_up = Some(Trigger::Sighup);
                } else {
                    // It re-reads what the supervisor reads: the template
                    // (a broken one changes nothing) and the catalog file.
                    self.busy = Some(Busy::Reread);
                    out.push(Action::Reread);
                }
            }
        }
    }

    fn on_catalog(&mut self, c: Arc<Catalog>, now: Instant, out: &mut Vec<Action>) {
        self.incoming = Some(c);
        if self.gens.is_empty() && self.applied.disk_checked().is_none() && self.busy.is_none() {
            // The first catalog: start without waiting.
            self.begin_reload(Trigger::Start, now, out);
        } else {
            self.pending = Some(Pending::changed(self.pending, now));
        }
    }

    fn on_exit(&mut self, id: u64, pid: Pid, exit: Exit, now: Instant, out: &mut Vec<Action>) {
        let Some((_, ended)) = self.gens.exited(id, now) else {
            return;
        };
        out.push(self.pids());
        match ended {
            Ended::Drained => {
                log!(info, Event::GenerationDrained, pid = pid.as_raw(), %exit, "old haproxy finished draining");
            }
            Ended::Died { served, stable } => {
                self.restarts.died(served, stable, now);
                log!(error, Event::GenerationDied, pid = pid.as_raw(), %exit, restarts = self.counters.restarts, "serving haproxy died unexpectedly");
            }
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.busy.is_some() {
            return;
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            if self.gens.serving().is_none() {
                self.counters.restarts += 1;
                out.push(Action::Restarted);
                let ep = Episode::new(Trigger::Restart);
                if self.flush(out) {
                    // It starts from what the write leaves on disk.
                    self.busy = Some(Busy::Reload(ep));
                } else {
                    self.restart_from_disk(ep, out);
                }
                return;
            }
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.begin_reload(Trigger::Retry, now, out);
            return;
        }
        if let Some(p) = self.pending {
            if p.deadline(self.live_possible(), &self.facts.waits) <= now {
                self.pending = None;
                match p.due(self.live_possible()) {
                    Due::TryLive => self.try_live(p, now, out),
                    Due::Reload => self.begin_reload(Trigger::Catalog, now, out),
                }
                if self.busy.is_some() {
                    return;
                }
            }
        }
        if self.discovery_open && self.guard.until().is_some_and(|t| t <= now) {
            // The grace period ended: judge the latest answer now (which
            // ends the hold) and apply it as a catalog change.
            let _ = self.catalog_to_render(now);
            self.pending = Some(Pending::changed(self.pending, now));
        }
        if self.facts.renders && self.excluded.values().any(|x| x.until <= now) {
            // A service left out is tried again: as a catalog change.
            let ended: Vec<String> = self
                .excluded
                .iter()
                .filter(|(_, x)| x.until <= now)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &ended {
                if let Some(x) = self.excluded.get_mut(n) {
                    x.tried_again(now);
                }
            }
            log!(info, Event::ServiceRetried, services = ?ended, "trying services left out again");
            self.retry_excluded = ended;
            self.pending = Some(Pending::changed_structural(self.pending, now));
        }
        if !self.sync_in_flight
            && self.needs_sync()
            && self.last_sync.is_none_or(|t| t + SYNC_EVERY <= now)
        {
            if let Some(s) = self.applied.unsynced().cloned() {
                self.last_sync = Some(now);
                self.sync_in_flight = true;
                self.syncing = Some(s.clone());
                out.push(Action::Sync {
                    checked: s,
                    epoch: self.epoch,
                    wait: false,
                });
            }
        }
        if self.parked_at.is_some_and(|t| t <= now) {
            self.parked_at = None;
            if let Some(l) = &self.applied.live {
                if l.has_parked() {
                    out.push(Action::DeleteParked {
                        servers: l.parked(),
                        backends: l.parked_backends(),
                    });
                }
            }
        }
    }

    /// Writes what serves (applied live) to disk now: before a restart,
    /// and at stop. True when it asked for a write.
    fn flush(&mut self, out: &mut Vec<Action>) -> bool {
        if !self.needs_sync() {
            return false;
        }
        let Some(s) = self.applied.unsynced().cloned() else {
            return false;
        };
        self.last_sync = None;
        self.sync_in_flight = true;
        self.syncing = Some(s.clone());
        out.push(Action::Sync {
            checked: s,
            epoch: self.epoch,
            wait: true,
        });
        true
    }

    /// A restart starts the running file as it is.
    fn restart_from_disk(&mut self, mut ep: Episode, out: &mut Vec<Action>) {
        ep.candidate = match &self.applied.on_disk {
            OnDisk::Checked(c) => Some(c.clone()),
            OnDisk::Earlier(t) => Some(Arc::new(Checked {
                rendered: Rendered {
                    config: t.clone(),
                    maps: BTreeMap::new(),
                },
                layout: None,
                fingerprints: BTreeMap::new(),
            })),
            OnDisk::Nothing => None,
        };
        self.start(ep, out);
    }

    /// The catalog to render: the latest answer, unless the mass-removal
    /// guard holds it (then the last one it let through); reports holds
    /// and their end.
    fn catalog_to_render(&mut self, now: Instant) -> Option<Arc<Catalog>> {
        let incoming = self.incoming.clone()?;
        let Some(applied) = &self.guard_applied else {
            self.guard_applied = Some(incoming.clone());
            return Some(incoming);
        };
        let removal = Removal::between(applied, &incoming);
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
                    log!(
                        warn,
                        Event::RemovalApplied,
                        by,
                        removed = removal.removed,
                        serving = removal.serving,
                        "mass-removal guard: the catalog answer applies"
                    );
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
                    log!(error, Event::RemovalHeld, removed = removal.removed, serving = removal.serving, services = removal.services, grace_ms = until.saturating_duration_since(now).as_millis() as u64, "mass-removal guard: a catalog answer removes too many serving instances at once; holding it (SIGHUP applies it now)");
                }
                let applied = applied.clone();
                self.guard_held = Some(removal);
                Some(applied)
            }
        }
    }

    /// The desired state of `catalog`, without the services HAProxy
    /// refused (unless their registration changed since, or their time out
    /// is up), and the variables fitted to the open-files limit.
    fn desired(&mut self, catalog: &Catalog) -> (Desired, HaproxyVars) {
        let (mut desired, warnings) = Desired::build(catalog, &Context::from(&self.facts.vars));
        let retry = std::mem::take(&mut self.retry_excluded);
        self.excluded.retain(|name, x| {
            let same = catalog
                .services
                .get(name)
                .is_some_and(|c| fingerprint(c) == x.fingerprint);
            if !same {
                log!(info, Event::ServiceRetried, service = %name, "a service left out changed; trying it again");
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
        self.log_warnings(&warnings);
        // Not once while it lasts, as other warnings: every render that
        // serves a backend unverified says so.
        for svc in &desired.services {
            if svc
                .backend_tls
                .as_ref()
                .is_some_and(|t| t.ca_file.is_none())
            {
                log!(warn, Event::Warning,
                    service = %svc.name,
                    tag = "HAPROXY.BACKEND.TLS_VERIFY",
                    reason = "TLS to the backend without verifying its certificate",
                    left_out = false,
                    "service {:?}: HAPROXY.BACKEND.TLS_VERIFY=none: TLS to its servers does not verify their certificates; anyone on the path can pose as them",
                    svc.name
                );
            }
        }
        let vars = self.fit_fd_limit(&desired);
        (desired, vars)
    }

    /// Logs each warning once while it lasts.
    fn log_warnings(&mut self, warnings: &[Warning]) {
        let now: BTreeSet<String> = warnings.iter().map(|w| w.to_string()).collect();
        for w in warnings {
            if !self.warned.contains(&w.to_string()) {
                w.log();
            }
        }
        self.warned = now;
    }

    /// HAProxy reserves one descriptor per health-checked server on top of
    /// two per connection and refuses to start when the open-files limit
    /// cannot hold them all: the global maxconn is lowered so that every
    /// server fits too; logged when the fitted value changes.
    fn fit_fd_limit(&mut self, desired: &Desired) -> HaproxyVars {
        let mut vars = self.facts.vars.clone();
        let Some(limit) = self.facts.fd_limit else {
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
                log!(warn, Event::Warning,
                    servers,
                    open_files_limit = limit,
                    maxconn = fit,
                    tag = "HAPROXY_MAXCONN_GLOBAL",
                    reason = "the open-files limit cannot hold every connection and checked server",
                    "HAPROXY_MAXCONN_GLOBAL={} and one descriptor per checked server do not fit the open-files limit; using a lower global maxconn{}",
                    vars.maxconn_global,
                    if limit < policy::FD_RESERVE + servers + 2 { " (too many servers: haproxy will refuse to start)" } else { "" }
                );
            }
            self.fd_fit = fitted;
        }
        if let Some(fit) = fitted {
            vars.maxconn_global = fit;
        }
        vars
    }

    fn try_live(&mut self, p: Pending, now: Instant, out: &mut Vec<Action>) {
        let Some(catalog) = self.catalog_to_render(now) else {
            return;
        };
        let fingerprints = fingerprints(&catalog);
        let (desired, vars) = self.desired(&catalog);
        self.busy = Some(Busy::LiveRender {
            fingerprints,
            pending: p,
        });
        out.push(Action::Render { desired, vars });
    }

    fn live_rendered(
        &mut self,
        fps: BTreeMap<String, u64>,
        p: Pending,
        r: Result<(Rendered, Layout), String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let (rendered, layout) = match r {
            Ok(x) => x,
            Err(e) => {
                self.counters.failed_reloads += 1;
                log!(error, Event::RenderFailed, error = %e, "render failed; keeping the running haproxy");
                return;
            }
        };
        let Some(running) = &self.applied.live else {
            self.begin_reload(Trigger::Catalog, now, out);
            return;
        };
        let candidate = Arc::new(Checked {
            rendered,
            layout: Some(layout.clone()),
            fingerprints: fps,
        });
        match running.plan(&layout, self.facts.caps) {
            Plan::Reload(why) => {
                log!(info, Event::StructuralChange, reason = %why, "structural change: reloading after the reload wait");
                match p.structural(now, &self.facts.waits) {
                    AfterStructural::ReloadNow => self.begin_reload(Trigger::Catalog, now, out),
                    AfterStructural::Wait(p) => self.pending = Some(p),
                }
            }
            Plan::Same => {
                self.good_fingerprints = candidate.fingerprints.clone();
                self.applied.serving = Some(candidate);
            }
            Plan::Live { ops, next } => {
                out.push(Action::ApplyLive { ops: ops.clone() });
                self.busy = Some(Busy::LiveOps {
                    candidate,
                    next: Some(*next),
                    ops,
                    started: now,
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn live_done(
        &mut self,
        candidate: Arc<Checked>,
        next: Option<Running>,
        ops: Vec<Op>,
        started: Instant,
        r: Result<(), LiveFailure>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match r {
            Ok(()) => {
                self.good_fingerprints = candidate.fingerprints.clone();
                self.applied.serving = Some(candidate);
                if let Some(next) = next {
                    self.applied.live = Some(next);
                    self.counters.live_changes += 1;
                    self.counters.live_ops += ops.len() as u64;
                    let mut kinds: Vec<&str> = ops.iter().map(Op::kind).collect();
                    kinds.dedup();
                    log!(
                        info,
                        Event::LiveApplied,
                        ops = ops.len(),
                        kinds = kinds.join(","),
                        took_ms = now.saturating_duration_since(started).as_millis() as u64,
                        live_changes = self.counters.live_changes,
                        pid = self.serving_pid(),
                        "live change applied"
                    );
                }
                if let Some(l) = &self.applied.live {
                    if l.has_parked() {
                        out.push(Action::DeleteParked {
                            servers: l.parked(),
                            backends: l.parked_backends(),
                        });
                    }
                }
            }
            Err(f) => {
                self.applied.live = None;
                let op = ops.get(f.applied);
                self.unconfirmed.extend(op.and_then(Op::server));
                self.counters.live_failures += 1;
                log!(error, Event::LiveFailed,
                    error = %f.error,
                    op = op.map(Op::kind).unwrap_or(""),
                    applied = f.applied,
                    of = ops.len(),
                    live_failures = self.counters.live_failures,
                    "live change failed; reloading instead"
                );
                self.begin_reload(Trigger::Catalog, now, out);
            }
        }
    }
}

/// A start that failed, as the executor reports it.
#[derive(Debug, Clone)]
struct StartFailure {
    id: Option<u64>,
    abandoned: bool,
    died_at_start: bool,
    output: String,
    error: String,
}

/// The reload episode and the stop.
impl State {
    fn begin_reload(&mut self, trigger: Trigger, now: Instant, out: &mut Vec<Action>) {
        self.retry_at = None;
        self.attempt(Episode::new(trigger), now, out);
    }

    /// One attempt of an episode: render the catalog (or read the external
    /// config).
    fn attempt(&mut self, mut ep: Episode, now: Instant, out: &mut Vec<Action>) {
        // A background write of what was applied live, older than this
        // attempt, is stale from now on.
        self.epoch += 1;
        if !self.facts.renders {
            self.busy = Some(Busy::Reload(ep));
            out.push(Action::PrepareExternal { epoch: self.epoch });
            return;
        }
        let Some(catalog) = self.catalog_to_render(now) else {
            // Nothing to render yet.
            self.healed();
            return;
        };
        ep.fingerprints = fingerprints(&catalog);
        let (desired, vars) = self.desired(&catalog);
        self.busy = Some(Busy::Reload(ep));
        out.push(Action::Render { desired, vars });
    }

    /// The episode ends with nothing new to start: what serves is this
    /// catalog.
    fn nothing_new(&mut self, ep: Episode) {
        self.good_fingerprints = ep.fingerprints;
        self.healed();
    }

    fn reload_rendered(
        &mut self,
        mut ep: Episode,
        r: Result<(Rendered, Layout), String>,
        _now: Instant,
        out: &mut Vec<Action>,
    ) {
        let (rendered, layout) = match r {
            Ok(x) => x,
            Err(e) => {
                // The template is the user's: a render error is theirs to fix.
                self.counters.failed_reloads += 1;
                log!(error, Event::RenderFailed, error = %e, "render failed; keeping the running haproxy");
                self.nothing_new(ep);
                return;
            }
        };
        let candidate = Arc::new(Checked {
            rendered,
            layout: Some(layout),
            fingerprints: ep.fingerprints.clone(),
        });
        // The skip-the-check rule: the very text this run checked and put
        // in place needs no second check.
        let checked_here = self
            .applied
            .disk_checked()
            .is_some_and(|c| c.config() == candidate.config());
        let in_place = self.applied.disk_text() == Some(candidate.config());
        if checked_here && ep.trigger == Trigger::Catalog {
            log!(
                debug,
                Event::ConsulChanged,
                "catalog changed but the config did not; no reload"
            );
            self.nothing_new(ep);
            return;
        }
        if checked_here && ep.trigger != Trigger::Certs {
            // A SIGHUP (or retry, restart) with nothing new: start it.
            self.applied.on_disk = OnDisk::Checked(candidate.clone());
            ep.candidate = Some(candidate);
            self.start(ep, out);
            return;
        }
        ep.in_place = in_place;
        let how = if in_place {
            CheckHow::InPlace
        } else {
            CheckHow::Staged
        };
        out.push(Action::Check {
            candidate: candidate.clone(),
            how,
            epoch: self.epoch,
        });
        ep.candidate = Some(candidate);
        self.busy = Some(Busy::Reload(ep));
    }

    fn checked(
        &mut self,
        mut ep: Episode,
        from_file: Option<Rendered>,
        result: Result<(), CheckError>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Some(r) = from_file {
            ep.candidate = Some(Arc::new(Checked {
                rendered: r,
                layout: None,
                fingerprints: BTreeMap::new(),
            }));
        }
        if let Err(CheckError::Transient(what)) = result {
            self.counters.failed_reloads += 1;
            self.retry_later(what, now);
            return;
        }
        let Some(candidate) = ep.candidate.clone() else {
            return;
        };
        match result {
            Ok(()) => {
                self.applied.on_disk = OnDisk::Checked(candidate);
                self.start(ep, out);
            }
            Err(CheckError::Invalid(_)) if ep.in_place => {
                // In place but not passing: stage and check it as new.
                ep.in_place = false;
                out.push(Action::Check {
                    candidate: candidate.clone(),
                    how: CheckHow::Staged,
                    epoch: self.epoch,
                });
                self.busy = Some(Busy::Reload(ep));
            }
            Err(CheckError::Invalid(message)) => {
                out.push(Action::CheckFailed);
                self.counters.failed_reloads += 1;
                log!(error, Event::ConfigInvalid, error = %message, failed_reloads = self.counters.failed_reloads, "invalid config; keeping the running haproxy and the last good file");
                out.push(self.release());
                if self.facts.renders
                    && self.exclude_blamed(&message, candidate.config(), true, now)
                {
                    self.next_attempt(ep, now, out);
                }
                // Else it waits for a change or SIGHUP.
            }
            Err(CheckError::Transient(_)) => {}
        }
    }

    fn release(&self) -> Action {
        Action::ReleaseListeners {
            keep: self.applied.disk_text().unwrap_or_default().to_string(),
        }
    }

    fn next_attempt(&mut self, ep: Episode, now: Instant, out: &mut Vec<Action>) {
        if ep.attempt + 1 >= ATTEMPTS {
            log!(
                error,
                Event::ChangeRefused,
                "too many services refused in one reload; keeping the running haproxy"
            );
            return;
        }
        let mut next = Episode::new(ep.trigger);
        next.attempt = ep.attempt + 1;
        self.attempt(next, now, out);
    }

    /// The candidate is in place: find out how it can start.
    fn start(&mut self, ep: Episode, out: &mut Vec<Action>) {
        if let Some(c) = &ep.candidate {
            out.push(Action::Probe { config: c.clone() });
            self.busy = Some(Busy::Reload(ep));
        }
    }

    fn probed(
        &mut self,
        mut ep: Episode,
        socket_answers: bool,
        held_covers: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(candidate) = ep.candidate.clone() else {
            return;
        };
        let mut old = self.gens.to_hand_over();
        old.extend(self.adopted.iter().copied());
        let can_transfer =
            !old.is_empty() && candidate.config().contains("expose-fd listeners") && socket_answers;
        let choice = policy::choose_strategy(
            self.facts.strategy,
            held_covers,
            !old.is_empty(),
            can_transfer,
            self.facts.syn_drop,
        );
        if choice.fell_back {
            log!(warn, Event::StrategyFallback, socket = %self.facts.admin_socket, fallback = choice.strategy.as_str(), "socket transfer impossible; falling back");
        }
        ep.strategy = Some(choice.strategy);
        ep.old = old;
        ep.started = Some(now);
        out.push(Action::Spawn {
            strategy: choice.strategy,
            config: candidate.clone(),
            carry_state: self.gens.serving().is_some(),
            unconfirmed: self.unconfirmed.clone(),
            run_as_user: self.facts.run_as_user && choice.strategy == ReloadStrategy::Inherit,
        });
        self.busy = Some(Busy::Reload(ep));
    }

    fn listening(&mut self, ep: Episode, id: u64, now: Instant, out: &mut Vec<Action>) {
        let Some(candidate) = ep.candidate else {
            return;
        };
        self.gens.listening(id);
        self.adopted.clear();
        // Its state came from the config, not from the old process.
        self.unconfirmed.clear();
        self.applied.live = candidate
            .layout
            .clone()
            .filter(|_| self.facts.live_changes)
            .map(Running::started);
        self.parked_at = None;
        if self.facts.renders && ep.trigger != Trigger::Restart {
            self.good_fingerprints = candidate.fingerprints.clone();
        }
        self.applied.serving = Some(candidate);
        if ep.trigger.counts_as_reload() {
            self.counters.reloads += 1;
        }
        let strategy = ep.strategy.unwrap_or(self.facts.strategy);
        let took = ep
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        out.push(self.release());
        log!(
            info,
            Event::ReloadDone,
            generation = id,
            trigger = ep.trigger.as_str(),
            strategy = strategy.as_str(),
            pid = self.serving_pid(),
            took_ms = took.as_millis() as u64,
            reloads = self.counters.reloads,
            failed_reloads = self.counters.failed_reloads,
            restarts = self.counters.restarts,
            draining = self.gens.draining(),
            "haproxy reload done"
        );
        out.push(self.pids());
        out.push(Action::ReloadMetric {
            trigger: ep.trigger,
            strategy,
            took,
            error: None,
        });
        self.healed();
    }

    fn start_failed(&mut self, ep: Episode, f: StartFailure, now: Instant, out: &mut Vec<Action>) {
        if let Some(id) = f.id {
            if f.abandoned {
                self.gens.abandoned(id);
            } else {
                self.gens.died_at_start(id);
            }
        }
        out.push(self.release());
        let strategy = ep.strategy.unwrap_or(self.facts.strategy);
        let took = ep
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        out.push(Action::ReloadMetric {
            trigger: ep.trigger,
            strategy,
            took,
            error: Some(f.error.clone()),
        });
        self.counters.failed_reloads += 1;
        if self.gens.serving().is_some() {
            log!(error, Event::ReloadFailed, error = %f.error, trigger = ep.trigger.as_str(), "haproxy reload failed; the previous generation keeps serving");
        } else {
            log!(error, Event::ReloadFailed, error = %f.error, trigger = ep.trigger.as_str(), "haproxy failed to start");
        }
        let text = ep
            .candidate
            .as_ref()
            .map(|c| c.config().to_string())
            .unwrap_or_default();
        if ep.trigger == Trigger::Restart {
            // A service HAProxy refuses: render without it.
            if f.died_at_start
                && self.facts.renders
                && self.exclude_blamed(&f.output, &text, false, now)
            {
                self.begin_reload(Trigger::Retry, now, out);
            }
            return;
        }
        // The last config that served (even if its HAProxy died since: a
        // restart must use it, never the one that failed).
        if let Some(s) = &self.applied.serving {
            out.push(Action::RollBack {
                config: s.clone(),
                epoch: self.epoch,
            });
        }
        let output = if f.died_at_start { &f.output } else { &f.error };
        if self.facts.renders && self.exclude_blamed(output, &text, false, now) {
            self.next_attempt(ep, now, out);
            return;
        }
        if self.gens.serving().is_some() {
            self.retry_later(f.error, now);
        }
        // Nothing serving: a restart is scheduled with backoff.
    }

    /// Leaves out the services HAProxy's `message` blames in `config` (a
    /// frontend or backend it names or points at); true when it found any
    /// not left out yet.
    fn exclude_blamed(
        &mut self,
        message: &str,
        config: &str,
        sole_change: bool,
        now: Instant,
    ) -> bool {
        // What was rendered: the catalog the guard let through.
        let Some(catalog) = self.guard_applied.clone() else {
            return false;
        };
        let blamed = crate::haproxy::blamed_proxies(message, config);
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
            log!(error, Event::ChangeRefused, changed = ?changed, "haproxy refused the change and names none of the services that changed; keeping the running haproxy");
        }
        let mut any = false;
        for name in culprits {
            if self.excluded.contains_key(&name) {
                continue;
            }
            log!(warn, Event::ServiceLeftOut, service = %name, haproxy = %first_alert(message), "service left out: haproxy refused it; the others still apply");
            self.excluded.insert(
                name.clone(),
                Exclusion::new(fingerprint(&catalog.services[&name]), now),
            );
            any = true;
        }
        any
    }

    /// A failure that may heal: the reload is retried with backoff, and
    /// logged once per episode.
    fn retry_later(&mut self, what: String, now: Instant) {
        let r = self.retries.failed(&what);
        if r.first {
            log!(error, Event::ReloadRetry, error = %what, retry_in = ?r.delay, first = true, "reload failed; retrying with backoff until it succeeds (the running haproxy keeps serving)");
        } else {
            log!(debug, Event::ReloadRetry, error = %what, retry_in = ?r.delay, first = false, "reload failed again");
        }
        self.retry_at = Some(now + r.delay);
    }

    /// A reload went through: the failure episode, if any, ends.
    fn healed(&mut self) {
        self.retry_at = None;
        if let Some(what) = self.retries.healed() {
            log!(info, Event::ReloadsHealed, after = %what, "reloads work again");
        }
    }

    /// Graceful stop: soft-stop every generation (SIGUSR1), wait up to the
    /// stop timeout, then force. A second stop signal forces at once, and
    /// so does a stop that is not `graceful` (SIGQUIT).
    fn begin_stop(
        &mut self,
        signal: &'static str,
        graceful: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        log!(info, Event::Stopping, signal, graceful, timeout = ?self.facts.stop_timeout, live = self.gens.all().len(), "stopping: soft-stopping haproxy");
        for g in self.gens.all() {
            out.push(Action::Kill(g.pid, Signal::SIGUSR1));
        }
        // What ran, applied live, is what the next start reproduces.
        let _ = self.flush(out);
        let (stop, step) = Stop::begin(graceful, now, self.facts.stop_timeout);
        self.busy = None;
        self.stopping = Some(Stopping {
            stop,
            serving: self.gens.serving().map(|g| g.id),
            serving_exit: None,
            kill_at: None,
            signal,
            exited: false,
        });
        self.stop_step(step, signal, now, out);
        self.maybe_exit(out);
    }

    fn stop_step(&mut self, step: StopStep, signal: &str, now: Instant, out: &mut Vec<Action>) {
        if let StopStep::Force(reason) = step {
            log!(
                warn,
                Event::StopForced,
                signal,
                reason = reason.as_str(),
                "stopping now: terminating haproxy"
            );
            for g in self.gens.all() {
                out.push(Action::Kill(g.pid, Signal::SIGTERM));
            }
            if let Some(s) = &mut self.stopping {
                s.kill_at = Some(now + policy::KILL_AFTER);
            }
        }
    }

    fn step_stopping(&mut self, input: Input, now: Instant, out: &mut Vec<Action>) {
        let Some(s) = self.stopping.as_mut() else {
            return;
        };
        match input {
            Input::Signal(sig) => match s.stop.on_signal(signals::action(sig)) {
                StopStep::Nothing => {
                    log!(
                        info,
                        Event::SignalIgnored,
                        signal = sig.as_str(),
                        "stopping; signal ignored"
                    )
                }
                step => self.stop_step(step, sig.as_str(), now, out),
            },
            Input::Tick => {
                if s.stop.forced.is_none() && s.stop.deadline <= now {
                    let step = s.stop.on_deadline();
                    let signal = s.signal;
                    self.stop_step(step, signal, now, out);
                } else if s.kill_at.is_some_and(|k| k <= now) {
                    s.kill_at = Some(now + policy::KILL_AFTER);
                    for g in self.gens.all() {
                        out.push(Action::Kill(g.pid, Signal::SIGKILL));
                    }
                }
            }
            Input::Exited { id, exit, .. } => {
                if s.serving == Some(id) {
                    s.serving_exit = Some(exit);
                }
                self.gens.remove(id);
            }
            Input::Spawned { pid } => {
                // A start that was under way: it stops too.
                let forced = s.stop.forced.is_some();
                self.gens.spawned(pid, now);
                let sig = if forced {
                    Signal::SIGTERM
                } else {
                    Signal::SIGUSR1
                };
                out.push(Action::Kill(pid, sig));
            }
            Input::StartFailed {
                id: Some(id),
                abandoned: false,
                ..
            } => self.gens.died_at_start(id),
            Input::Synced { .. } => self.sync_in_flight = false,
            _ => {}
        }
        self.maybe_exit(out);
    }

    fn maybe_exit(&mut self, out: &mut Vec<Action>) {
        if !self.gens.is_empty() {
            return;
        }
        let Some(s) = self.stopping.as_mut() else {
            return;
        };
        if s.exited {
            return;
        }
        s.exited = true;
        let code = policy::exit_code(s.serving_exit);
        log!(
            info,
            Event::Stopped,
            exit_code = code,
            reloads = self.counters.reloads,
            failed_reloads = self.counters.failed_reloads,
            restarts = self.counters.restarts,
            "stopped"
        );
        out.push(Action::Exit(code));
    }
}

#[cfg(test)]
mod tests;

/// A certificate change, logged once it is applied (live or by a reload).
#[derive(Debug, Clone, PartialEq)]
pub struct CertLog {
    pub event: Event,
    pub file: String,
    pub subject: String,
    pub serial: String,
}

/// Certificates: ordinary state with ordinary operations. The watcher
/// reports a set; the store is written first; the diff gives live
/// operations (the one executor of [`Action::ApplyLive`]) or a reload, and
/// a failed operation falls back to a reload like any other.
impl State {
    fn certs_changed(&mut self, set: CertSet, out: &mut Vec<Action>) {
        if set == self.certs {
            return;
        }
        let live = self.live_possible()
            && self.facts.crt_list.as_deref().is_some_and(|l| {
                self.applied
                    .serving
                    .as_ref()
                    .is_some_and(|s| s.config().contains(l))
            });
        out.push(Action::StoreCerts { set: set.clone() });
        self.busy = Some(Busy::CertStore { set, live });
    }

    fn certs_stored(&mut self, set: CertSet, live: bool, now: Instant, out: &mut Vec<Action>) {
        let old = std::mem::replace(&mut self.certs, set);
        let diff = tls::diff_certs(&old, &self.certs, live);
        let in_dir = |dir: &Option<std::path::PathBuf>, name: &str| {
            dir.as_ref()
                .map_or_else(|| name.to_string(), |d| d.join(name).display().to_string())
        };
        let file = |name: &str| in_dir(&self.facts.certs_dir, name);
        let stored = |name: &str| in_dir(&self.facts.cert_store, name);
        let list = self.facts.crt_list.clone().unwrap_or_default();
        let mut logs = Vec::new();
        let mut ops = Vec::new();
        for b in &diff.replaced {
            logs.push(CertLog {
                event: Event::CertUpdated,
                file: file(&b.name),
                subject: b.subject.clone(),
                serial: b.serial.clone(),
            });
            ops.push(Op::SetCert {
                path: stored(&b.name),
                pem: b.pem.clone(),
            });
        }
        for b in &diff.added {
            logs.push(CertLog {
                event: Event::CertAdded,
                file: file(&b.name),
                subject: b.subject.clone(),
                serial: b.serial.clone(),
            });
            ops.push(Op::AddCert {
                list: list.clone(),
                path: stored(&b.name),
                pem: b.pem.clone(),
            });
        }
        for b in &diff.removed {
            logs.push(CertLog {
                event: Event::CertRemoved,
                file: file(&b.name),
                subject: String::new(),
                serial: String::new(),
            });
            ops.push(Op::DelCert {
                list: list.clone(),
                path: stored(&b.name),
            });
        }
        if let Some(reason) = diff.reload {
            log_certs(&logs, false);
            log!(info, Event::CertReload, reason = %reason, "certificates change by a reload");
            self.begin_reload(Trigger::Certs, now, out);
            return;
        }
        out.push(Action::ApplyLive { ops });
        self.busy = Some(Busy::CertOps { logs });
    }

    fn certs_live_done(
        &mut self,
        logs: Vec<CertLog>,
        r: Result<(), LiveFailure>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match r {
            Ok(()) => log_certs(&logs, true),
            Err(f) => {
                log_certs(&logs, false);
                log!(error, Event::CertLiveFailed, error = %f.error, "a certificate change failed live; reloading instead");
                self.begin_reload(Trigger::Certs, now, out);
            }
        }
    }
}

fn log_certs(logs: &[CertLog], live: bool) {
    for l in logs {
        match l.event {
            Event::CertRemoved => {
                log!(info, Event::CertRemoved, file = %l.file, live, "certificate removed")
            }
            Event::CertAdded => {
                log!(info, Event::CertAdded, file = %l.file, subject = %l.subject, serial = %l.serial, live, "certificate added")
            }
            _ => {
                log!(info, Event::CertUpdated, file = %l.file, subject = %l.subject, serial = %l.serial, live, "certificate replaced")
            }
        }
    }
}
