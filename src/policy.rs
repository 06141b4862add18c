//! The supervisor's decisions, as pure functions over values: the
//! generations of HAProxy and their transitions, which reload strategy a
//! reload uses, when a catalog change is applied (quiescence) and how,
//! retry and restart backoff, which services a refusal is blamed on and for
//! how long they are left out, and how a stop escalates. Nothing here spawns,
//! signals, sleeps or touches a file: `supervisor.rs` performs what these
//! decide, so each rule is unit-tested here without root or HAProxy.
//!
//! (The live-change plan, the other pure core, is [`crate::live`]; the
//! signal table is [`crate::signals`].)

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use rand::Rng;

use crate::process::Exit;

/// How a reload hands traffic from the old HAProxy to the new one (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadStrategy {
    /// The supervisor holds the listening sockets and every generation
    /// inherits them (`bind fd@<n>`): nothing is ever refused, not even
    /// while no HAProxy runs ([`crate::listeners`]).
    Inherit,
    /// `-x <admin socket> -sf old`: the listening sockets are transferred.
    Seamless,
    /// Drop SYNs with iptables while the new process binds, `-sf old`.
    SynDrop,
    /// `-sf old` and nothing else: connections may be reset.
    Plain,
}

impl ReloadStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadStrategy::Inherit => "inherit",
            ReloadStrategy::Seamless => "seamless",
            ReloadStrategy::SynDrop => "syn-drop",
            ReloadStrategy::Plain => "plain",
        }
    }
}

// ---------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------

/// Jittered exponential backoff: 100 ms doubling to `max`, each delay drawn
/// from [d/2, d] so many supervisors do not retry in lockstep. The one
/// backoff of the product (Consul retries, reload retries, restarts).
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

// ---------------------------------------------------------------------------
// Triggers
// ---------------------------------------------------------------------------

/// What made a reload happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first start.
    Start,
    Catalog,
    /// SIGHUP or SIGUSR2.
    Sighup,
    /// Nothing served (the serving HAProxy died, or a start failed).
    Restart,
    /// A reload retried after a transient failure.
    Retry,
    /// Certificates changed in a way the runtime API cannot apply.
    Certs,
}

impl Trigger {
    /// The `trigger` field of reload events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Catalog => "catalog",
            Trigger::Sighup => "sighup",
            Trigger::Restart => "restart",
            Trigger::Retry => "retry",
            Trigger::Certs => "certs",
        }
    }

    /// Whether a generation started by it counts as a reload (a first start
    /// and a restart after a death do not).
    pub const fn counts_as_reload(self) -> bool {
        !matches!(self, Trigger::Start | Trigger::Restart)
    }
}

// ---------------------------------------------------------------------------
// Generations
// ---------------------------------------------------------------------------

/// Where an HAProxy generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenState {
    /// Started, not yet listening on every port.
    Starting,
    /// The current generation.
    Serving,
    /// Told to finish (`-sf` or SIGUSR1); exits when its connections end.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub id: u64,
    pub pid: Pid,
    pub state: GenState,
    pub started: Instant,
}

/// How a generation's exit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// An old generation finished draining: expected.
    Drained,
    /// The serving (or starting) one died. `served` when it had listened
    /// (it was the serving generation), `stable` when it had run long
    /// enough that this is a new episode, not a crash loop.
    Died { served: bool, stable: bool },
}

/// A generation that ran this long before dying resets the restart backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Deaths of serving generations within this window count towards a crash
/// loop.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// This many deaths within `CRASH_WINDOW` are a crash loop: from then on
/// restarts back off. Fewer (a SIGKILL, an OOM kill, a rare crash) restart
/// at once, since every millisecond without HAProxy refuses connections.
pub const CRASH_LOOP_DEATHS: usize = 30;

/// When to start HAProxy again once nothing serves. A generation that had
/// served and died is restarted at once unless deaths come in a crash loop;
/// a start that failed (a generation that died before it ever served, a
/// port taken) backs off.
#[derive(Debug, Clone)]
pub struct Restarts {
    deaths: std::collections::VecDeque<Instant>,
    backoff: Backoff,
    at_once: bool,
}

impl Restarts {
    pub fn new(max: Duration) -> Restarts {
        Restarts {
            deaths: std::collections::VecDeque::new(),
            backoff: Backoff::new(max),
            at_once: false,
        }
    }

    /// A generation died (`Ended::Died`).
    pub fn died(&mut self, served: bool, stable: bool, now: Instant) {
        if stable {
            self.deaths.clear();
            self.backoff.reset();
        }
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.deaths.pop_front();
        }
        self.deaths.push_back(now);
        self.at_once = served && self.deaths.len() < CRASH_LOOP_DEATHS;
        if self.at_once {
            self.backoff.reset();
        }
    }

    /// Whether the deaths of the last `CRASH_WINDOW` are a crash loop.
    pub fn crash_loop(&self) -> bool {
        self.deaths.len() >= CRASH_LOOP_DEATHS
    }

    /// The wait before the next start: zero right after a serving
    /// generation died outside a crash loop, else the next backoff step.
    pub fn next_delay(&mut self) -> Duration {
        if std::mem::take(&mut self.at_once) {
            Duration::ZERO
        } else {
            self.backoff.next_delay()
        }
    }
}

/// Every HAProxy process the supervisor runs, and their transitions.
#[derive(Debug, Default)]
pub struct Generations {
    gens: Vec<Generation>,
    next_id: u64,
}

impl Generations {
    pub fn new() -> Generations {
        Generations {
            gens: Vec::new(),
            next_id: 1,
        }
    }

    pub fn all(&self) -> &[Generation] {
        &self.gens
    }

    pub fn is_empty(&self) -> bool {
        self.gens.is_empty()
    }

    pub fn serving(&self) -> Option<&Generation> {
        self.gens.iter().find(|g| g.state == GenState::Serving)
    }

    pub fn draining(&self) -> usize {
        self.gens
            .iter()
            .filter(|g| g.state == GenState::Draining)
            .count()
    }

    /// The processes a new generation takes over from: every one not
    /// already draining.
    pub fn to_hand_over(&self) -> Vec<Pid> {
        self.gens
            .iter()
            .filter(|g| g.state != GenState::Draining)
            .map(|g| g.pid)
            .collect()
    }

    /// A process was spawned: a generation `Starting`; returns its id.
    pub fn spawned(&mut self, pid: Pid, now: Instant) -> u64 {
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        self.gens.push(Generation {
            id,
            pid,
            state: GenState::Starting,
            started: now,
        });
        id
    }

    /// It listens: it serves, and every other generation not yet draining
    /// drains (the caller tells them to finish).
    pub fn listening(&mut self, id: u64) {
        for g in &mut self.gens {
            if g.id == id {
                g.state = GenState::Serving;
            } else if g.state != GenState::Draining {
                g.state = GenState::Draining;
            }
        }
    }

    /// It died before listening (already reaped): it never existed.
    pub fn died_at_start(&mut self, id: u64) {
        self.gens.retain(|g| g.id != id);
    }

    /// It did not listen in time and is being killed: it drains (its exit
    /// is still awaited); the old ones keep serving.
    pub fn abandoned(&mut self, id: u64) {
        if let Some(g) = self.gens.iter_mut().find(|g| g.id == id) {
            g.state = GenState::Draining;
        }
    }

    /// A generation exited; `None` when it is not ours (or already gone).
    pub fn exited(&mut self, id: u64, now: Instant) -> Option<(Generation, Ended)> {
        let pos = self.gens.iter().position(|g| g.id == id)?;
        let g = self.gens.remove(pos);
        let ended = match g.state {
            GenState::Draining => Ended::Drained,
            GenState::Starting | GenState::Serving => Ended::Died {
                served: g.state == GenState::Serving,
                stable: now.duration_since(g.started) > STABLE_AFTER,
            },
        };
        Some((g, ended))
    }

    /// Forgets a generation (at stop, once it exited).
    pub fn remove(&mut self, id: u64) {
        self.gens.retain(|g| g.id != id);
    }
}

// ---------------------------------------------------------------------------
// Mass-removal guard
// ---------------------------------------------------------------------------

/// What a catalog answer does to the serving instances, against the last
/// catalog the guard let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Serving instances (passing, of an exposed service) before.
    pub serving: usize,
    /// How many of them the answer no longer serves.
    pub removed: usize,
    /// The services they belong to.
    pub services: usize,
    /// Whether every one of those services still serves an instance (one
    /// service's instances replaced or scaled down: an ordinary deploy).
    pub replaced: bool,
}

impl Removal {
    /// Compares two catalogs.
    pub fn between(before: &crate::model::Catalog, after: &crate::model::Catalog) -> Removal {
        let serving = |c: &crate::model::Catalog| -> BTreeSet<(String, String)> {
            c.services
                .iter()
                .filter(|(_, s)| s.tags.iter().any(|t| t == "HAPROXY.ENABLE=true"))
                .flat_map(|(name, s)| {
                    s.instances
                        .iter()
                        .filter(|i| i.passing)
                        .map(move |i| (name.clone(), i.id.clone()))
                })
                .collect()
        };
        let (b, a) = (serving(before), serving(after));
        let gone: Vec<&(String, String)> = b.difference(&a).collect();
        let services: BTreeSet<&str> = gone.iter().map(|(s, _)| s.as_str()).collect();
        let replaced = services.len() == 1
            && services
                .iter()
                .all(|svc| a.iter().any(|(name, _)| name == svc));
        Removal {
            serving: b.len(),
            removed: gone.len(),
            services: services.len(),
            replaced,
        }
    }
}

/// What the guard makes of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardVerdict {
    /// Apply it.
    Apply {
        /// It had been held (confirmed over the grace period, or by SIGHUP).
        was_held: bool,
    },
    /// Keep the last catalog let through until `until`.
    Hold {
        removal: Removal,
        until: Instant,
        /// First answer of this episode (report it).
        new: bool,
    },
}

/// Holds an answer that removes more than `percent` % of the serving
/// instances at once (an ACL change that hides every service, a Consul
/// answering empty) for `grace`: answers that still say so after it
/// confirm the removal; SIGHUP confirms at once. A removal within one
/// service that keeps serving is never held.
#[derive(Debug, Clone)]
pub struct RemovalGuard {
    percent: u32,
    grace: Duration,
    held_since: Option<Instant>,
    confirmed: bool,
}

impl RemovalGuard {
    /// `percent` 100 never holds (more than all cannot be removed).
    pub fn new(percent: u32, grace: Duration) -> RemovalGuard {
        RemovalGuard {
            percent,
            grace,
            held_since: None,
            confirmed: false,
        }
    }

    /// SIGHUP: the next answer applies whatever it removes.
    pub fn confirm(&mut self) {
        self.confirmed = self.held_since.is_some();
    }

    /// When the hold ends, while one is on.
    pub fn until(&self) -> Option<Instant> {
        self.held_since.map(|t| t + self.grace)
    }

    /// Judges one answer.
    pub fn judge(&mut self, r: Removal, now: Instant) -> GuardVerdict {
        let was_held = self.held_since.is_some();
        let massive = r.removed > 0
            && !r.replaced
            && (r.removed as u64) * 100 > (r.serving as u64) * self.percent as u64;
        if !massive || std::mem::take(&mut self.confirmed) {
            self.held_since = None;
            return GuardVerdict::Apply { was_held };
        }
        let since = *self.held_since.get_or_insert(now);
        if now >= since + self.grace {
            self.held_since = None;
            return GuardVerdict::Apply { was_held: true };
        }
        GuardVerdict::Hold {
            removal: r,
            until: since + self.grace,
            new: !was_held,
        }
    }
}

// ---------------------------------------------------------------------------
// Strategy
// ---------------------------------------------------------------------------

/// The strategy a reload uses, and whether it is a fallback from the
/// configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrategyChoice {
    pub strategy: ReloadStrategy,
    pub fell_back: bool,
}

/// Inherit needs every port of the config held by the supervisor
/// (`held`); a config that binds by itself (a custom template) is started
/// as seamless would start it. Nothing to hand over from: a plain start.
/// Seamless needs the old process's listeners (`expose-fd listeners` and a
/// live admin socket); without them it falls back to syn-drop where
/// iptables works, else plain.
pub fn choose_strategy(
    configured: ReloadStrategy,
    held: bool,
    has_old: bool,
    can_transfer: bool,
    syn_drop_available: bool,
) -> StrategyChoice {
    let configured = match configured {
        ReloadStrategy::Inherit if held => {
            return StrategyChoice {
                strategy: ReloadStrategy::Inherit,
                fell_back: false,
            }
        }
        ReloadStrategy::Inherit => ReloadStrategy::Seamless,
        c => c,
    };
    if !has_old {
        return StrategyChoice {
            strategy: ReloadStrategy::Plain,
            fell_back: false,
        };
    }
    if configured == ReloadStrategy::Seamless && !can_transfer {
        return StrategyChoice {
            strategy: if syn_drop_available {
                ReloadStrategy::SynDrop
            } else {
                ReloadStrategy::Plain
            },
            fell_back: true,
        };
    }
    StrategyChoice {
        strategy: configured,
        fell_back: false,
    }
}

// ---------------------------------------------------------------------------
// Quiescence
// ---------------------------------------------------------------------------

/// How long catalog changes wait before they apply.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// Quiet time before a change is tried live (`HAPROXY_LIVE_WAIT`).
    pub live: Duration,
    /// Quiet time before a reload (`HAPROXY_RELOAD_WAIT` min).
    pub reload_min: Duration,
    /// The longest a change waits from its first event (max).
    pub reload_max: Duration,
}

/// Catalog changes waiting to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub first: Instant,
    pub last: Instant,
    /// A live try found the change structural: it waits the reload wait.
    pub structural: bool,
}

/// What to do when the quiet time is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    TryLive,
    Reload,
}

/// After a live try found the change structural.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStructural {
    ReloadNow,
    Wait(Pending),
}

impl Pending {
    /// A change at `now`, merging into what already waits.
    pub fn changed(prev: Option<Pending>, now: Instant) -> Pending {
        match prev {
            Some(p) => Pending { last: now, ..p },
            None => Pending {
                first: now,
                last: now,
                structural: false,
            },
        }
    }

    /// A change that is known to need a reload (a left-out service tried
    /// again).
    pub fn changed_structural(prev: Option<Pending>, now: Instant) -> Pending {
        Pending {
            structural: true,
            ..Pending::changed(prev, now)
        }
    }

    fn reload_at(&self, w: &Waits) -> Instant {
        (self.last + w.reload_min).min(self.first + w.reload_max)
    }

    /// When it applies: after the live wait when it may go live, else the
    /// reload wait; never later than `reload_max` after the first change.
    pub fn deadline(&self, live_possible: bool, w: &Waits) -> Instant {
        if self.structural || !live_possible {
            self.reload_at(w)
        } else {
            (self.last + w.live).min(self.first + w.reload_max)
        }
    }

    pub fn due(&self, live_possible: bool) -> Due {
        if !self.structural && live_possible {
            Due::TryLive
        } else {
            Due::Reload
        }
    }

    /// The live try found it structural: reload now if the reload wait is
    /// over too, else wait for it.
    pub fn structural(self, now: Instant, w: &Waits) -> AfterStructural {
        if now >= self.reload_at(w) {
            AfterStructural::ReloadNow
        } else {
            AfterStructural::Wait(Pending {
                structural: true,
                ..self
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------

/// An episode of reloads failing in a way that may heal (a full disk, a
/// port taken): retried with backoff, logged once per episode.
#[derive(Debug)]
pub struct Retries {
    backoff: Backoff,
    failing: Option<String>,
}

/// A failure's place in its episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryIn {
    pub delay: Duration,
    /// The first failure of the episode (the one to log loudly).
    pub first: bool,
}

impl Retries {
    pub fn new(max: Duration) -> Retries {
        Retries {
            backoff: Backoff::new(max),
            failing: None,
        }
    }

    pub fn failed(&mut self, what: &str) -> RetryIn {
        let delay = self.backoff.next_delay();
        let first = self.failing.is_none();
        if first {
            self.failing = Some(what.to_string());
        }
        RetryIn { delay, first }
    }

    /// A reload went through: the episode ends; returns what failed first.
    pub fn healed(&mut self) -> Option<String> {
        self.backoff.reset();
        self.failing.take()
    }
}

// ---------------------------------------------------------------------------
// Failure rules (SPEC §11)
// ---------------------------------------------------------------------------

/// The services a refusal is blamed on. `blamed` are the proxies HAProxy's
/// message names or points at; `changed` the services whose catalog entry
/// differs from the config that serves. Only a changed service can have
/// broken it (a template may write one service's line into another's
/// section: the one HAProxy points at is innocent). When HAProxy names none
/// and `haproxy -c` refused the only change (`sole_change`, with a config
/// that served before), that change is it.
pub fn culprits(
    blamed: &BTreeSet<String>,
    changed: &BTreeSet<String>,
    sole_change: bool,
    served_before: bool,
) -> BTreeSet<String> {
    let named: BTreeSet<String> = changed
        .iter()
        .filter(|name| {
            blamed.iter().any(|p| {
                p == *name
                    || p.strip_prefix(name.as_str()).is_some_and(|rest| {
                        // Its TCP frontend, or its backend made from a
                        // profile (`<service>:<hash>`).
                        rest.starts_with("_port_") || rest.starts_with(':')
                    })
            })
        })
        .cloned()
        .collect();
    if named.is_empty() && changed.len() == 1 && sole_change && served_before {
        return changed.clone();
    }
    named
}

/// How long a refused service stays out: 60 s, doubling each time it is
/// tried again and refused, up to 10 min. It is tried again sooner when its
/// registration changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// Its catalog entry when it was left out.
    pub fingerprint: u64,
    /// Tried again after this.
    pub until: Instant,
    /// How long the next exclusion lasts.
    pub next_for: Duration,
}

pub const FIRST_EXCLUSION: Duration = Duration::from_secs(60);
pub const LONGEST_EXCLUSION: Duration = Duration::from_secs(600);

impl Exclusion {
    pub fn new(fingerprint: u64, now: Instant) -> Exclusion {
        Exclusion {
            fingerprint,
            until: now + FIRST_EXCLUSION,
            next_for: (FIRST_EXCLUSION * 2).min(LONGEST_EXCLUSION),
        }
    }

    /// Its time is up and it is tried again: if refused again it stays out
    /// for the next, longer, period.
    pub fn tried_again(&mut self, now: Instant) {
        self.until = now + self.next_for;
        self.next_for = (self.next_for * 2).min(LONGEST_EXCLUSION);
    }
}

// ---------------------------------------------------------------------------
// Stop
// ---------------------------------------------------------------------------

/// Why a stop stopped waiting for connections to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceReason {
    Sigquit,
    SecondSignal,
    Timeout,
}

impl ForceReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            ForceReason::Sigquit => "sigquit",
            ForceReason::SecondSignal => "second_signal",
            ForceReason::Timeout => "timeout",
        }
    }
}

/// A stop in progress: every generation got SIGUSR1 (soft stop); it is
/// forced (SIGTERM) at the deadline, by a second stop signal, or at once for
/// SIGQUIT; processes still there [`KILL_AFTER`] later get SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub deadline: Instant,
    pub forced: Option<ForceReason>,
}

/// After forcing, how long before SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(2);

/// What a stop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStep {
    /// SIGTERM every generation now.
    Force(ForceReason),
    /// Nothing new (already forced, or a signal that does not stop).
    Nothing,
}

impl Stop {
    /// Begins a stop; forced at once when not graceful.
    pub fn begin(graceful: bool, now: Instant, timeout: Duration) -> (Stop, StopStep) {
        let mut s = Stop {
            deadline: now + timeout,
            forced: None,
        };
        let step = if graceful {
            StopStep::Nothing
        } else {
            s.force(ForceReason::Sigquit)
        };
        (s, step)
    }

    fn force(&mut self, why: ForceReason) -> StopStep {
        if self.forced.is_some() {
            return StopStep::Nothing;
        }
        self.forced = Some(why);
        StopStep::Force(why)
    }

    /// A signal arrived while stopping: another stop signal forces.
    pub fn on_signal(&mut self, action: crate::signals::Action) -> StopStep {
        match action {
            crate::signals::Action::Stop { .. } => self.force(ForceReason::SecondSignal),
            _ => StopStep::Nothing,
        }
    }

    pub fn on_deadline(&mut self) -> StopStep {
        self.force(ForceReason::Timeout)
    }
}

/// The supervisor's exit code: the serving generation's, 0 when it ended
/// cleanly or was already gone.
pub fn exit_code(serving_exit: Option<Exit>) -> i32 {
    match serving_exit {
        None | Some(Exit::Code(0)) => 0,
        Some(e) => e.code(),
    }
}

/// Descriptors HAProxy needs besides two per connection and those of the
/// health checks.
pub const FD_RESERVE: u64 = 1000;

/// The global maxconn lowered to fit the open-files `limit`; `None` when
/// `maxconn_global` fits. HAProxy refuses to start when it cannot get two
/// descriptors per connection of the global maxconn plus [`FD_RESERVE`],
/// plus one per health-checked server: `servers` counts those, in steps of
/// 1,000 (a server added or removed live must not change the global
/// maxconn, a structural change, and the step leaves descriptors for the
/// checks of servers added live). `servers` is `None` at start-up, before
/// any catalog: no descriptors are set aside for checks yet. The one copy
/// of this arithmetic (settings at start-up, every render after).
pub fn fitted_maxconn(maxconn_global: u32, servers: Option<u64>, limit: u64) -> Option<u32> {
    let checks = servers.map_or(0, |s| s.div_ceil(1000).max(1) * 1000);
    let fit = (limit.saturating_sub(FD_RESERVE + checks) / 2).clamp(1, u32::MAX as u64) as u32;
    (maxconn_global > fit).then_some(fit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::Action;

    #[test]
    fn the_global_maxconn_fits_the_open_files_limit() {
        // Start-up: two per connection and the reserve.
        assert_eq!(fitted_maxconn(50000, None, 1 << 20), None);
        assert_eq!(fitted_maxconn(50000, None, 101_000), None);
        assert_eq!(fitted_maxconn(50000, None, 100_999), Some(49_999));
        assert_eq!(fitted_maxconn(50000, None, 20000), Some(9500));
        // A limit below the reserve still leaves one connection.
        assert_eq!(fitted_maxconn(50000, None, 10), Some(1));
        // With a catalog: one descriptor per checked server, in steps of
        // 1,000, at least one step.
        assert_eq!(fitted_maxconn(50000, Some(0), 20000), Some(9000));
        assert_eq!(fitted_maxconn(50000, Some(1), 20000), Some(9000));
        assert_eq!(fitted_maxconn(50000, Some(1000), 20000), Some(9000));
        assert_eq!(fitted_maxconn(50000, Some(1001), 20000), Some(8500));
        assert_eq!(fitted_maxconn(9000, Some(999), 20000), None);
        assert_eq!(fitted_maxconn(50000, Some(5000), 102_000), Some(48_000));
        assert_eq!(fitted_maxconn(50000, Some(5000), 106_000), None);
    }

    const MS: Duration = Duration::from_millis(1);

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

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

    #[test]
    fn a_reload_hands_over_and_the_old_generation_drains() {
        let t0 = Instant::now();
        let mut g = Generations::new();
        let a = g.spawned(pid(10), t0);
        assert_eq!(g.serving(), None);
        assert_eq!(g.to_hand_over(), vec![pid(10)]);
        g.listening(a);
        assert_eq!(g.serving().map(|s| s.pid), Some(pid(10)));
        // A reload: the old one is handed over from, then drains.
        let b = g.spawned(pid(11), t0);
        assert_eq!(g.to_hand_over(), vec![pid(10), pid(11)]);
        g.listening(b);
        assert_eq!(g.serving().map(|s| s.id), Some(b));
        assert_eq!(g.draining(), 1);
        assert_eq!(g.to_hand_over(), vec![pid(11)]);
        // The old one finishing is expected.
        let (old, ended) = g.exited(a, t0).unwrap();
        assert_eq!((old.pid, ended), (pid(10), Ended::Drained));
        assert_eq!(g.exited(a, t0), None, "an exit is handled once");
    }

    #[test]
    fn a_failed_start_leaves_the_serving_generation_alone() {
        let t0 = Instant::now();
        let mut g = Generations::new();
        let a = g.spawned(pid(10), t0);
        g.listening(a);
        let b = g.spawned(pid(11), t0);
        g.died_at_start(b);
        assert_eq!(g.serving().map(|s| s.id), Some(a));
        assert_eq!(g.all().len(), 1);
        // Not listening in time: it drains (being killed), a still serves.
        let c = g.spawned(pid(12), t0);
        g.abandoned(c);
        assert_eq!(g.serving().map(|s| s.id), Some(a));
        assert_eq!(g.exited(c, t0).unwrap().1, Ended::Drained);
    }

    #[test]
    fn a_death_resets_the_restart_backoff_only_after_a_stable_run() {
        let t0 = Instant::now();
        let mut g = Generations::new();
        let a = g.spawned(pid(10), t0);
        g.listening(a);
        assert_eq!(
            g.exited(a, t0 + Duration::from_secs(5)).unwrap().1,
            Ended::Died {
                served: true,
                stable: false
            }
        );
        let b = g.spawned(pid(11), t0);
        g.listening(b);
        assert_eq!(
            g.exited(b, t0 + STABLE_AFTER + MS).unwrap().1,
            Ended::Died {
                served: true,
                stable: true
            }
        );
        let c = g.spawned(pid(12), t0);
        assert_eq!(
            g.exited(c, t0 + MS).unwrap().1,
            Ended::Died {
                served: false,
                stable: false
            }
        );
        assert!(g.is_empty());
    }

    #[test]
    fn a_generation_that_served_restarts_at_once_outside_a_crash_loop() {
        let t0 = Instant::now();
        let mut r = Restarts::new(Duration::from_secs(10));
        // 20 SIGKILLs one second apart: each restart at once.
        for i in 0..20 {
            r.died(true, false, t0 + Duration::from_secs(i));
            assert_eq!(r.next_delay(), Duration::ZERO, "death {i}");
            assert!(!r.crash_loop());
        }
        // A failed start after that (it never served) backs off, and so
        // does every retry after it until something serves again.
        r.died(false, false, t0 + Duration::from_secs(20));
        assert!(r.next_delay() > Duration::ZERO);
        assert!(r.next_delay() > Duration::ZERO);
    }

    #[test]
    fn many_deaths_a_minute_are_a_crash_loop_with_backoff() {
        let t0 = Instant::now();
        let mut r = Restarts::new(Duration::from_secs(10));
        for i in 0..CRASH_LOOP_DEATHS as u64 - 1 {
            r.died(true, false, t0 + MS * i as u32);
            assert_eq!(r.next_delay(), Duration::ZERO);
        }
        r.died(true, false, t0 + Duration::from_secs(1));
        assert!(r.crash_loop());
        let first = r.next_delay();
        assert!(first >= Duration::from_millis(50), "{first:?}");
        // The delays grow while the loop lasts...
        for _ in 0..6 {
            r.next_delay();
        }
        assert!(r.next_delay() >= Duration::from_secs(5));
        // ...and the window forgets old deaths: a minute later a death of a
        // serving generation restarts at once again.
        r.died(true, false, t0 + CRASH_WINDOW + Duration::from_secs(2));
        assert!(!r.crash_loop());
        assert_eq!(r.next_delay(), Duration::ZERO);
        // A generation that ran stably clears the history.
        r.died(true, true, t0 + CRASH_WINDOW * 3);
        assert_eq!(r.next_delay(), Duration::ZERO);
    }

    #[test]
    fn a_failed_start_backs_off_from_the_first_retry() {
        let mut r = Restarts::new(Duration::from_secs(10));
        // No death recorded (a start refused, a port taken): backoff.
        let d = r.next_delay();
        assert!(
            d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
            "{d:?}"
        );
        r.died(false, false, Instant::now());
        assert!(r.next_delay() >= Duration::from_millis(100));
    }

    fn catalog(services: &[(&str, &[&str], bool)]) -> crate::model::Catalog {
        let mut c = crate::model::Catalog::default();
        for (name, ids, exposed) in services {
            c.services.insert(
                name.to_string(),
                crate::model::CatalogService {
                    tags: if *exposed {
                        vec!["HAPROXY.ENABLE=true".into()]
                    } else {
                        vec![]
                    },
                    instances: ids
                        .iter()
                        .map(|id| crate::model::Instance {
                            id: id.to_string(),
                            address: "10.0.0.1".into(),
                            port: 80,
                            tags: vec![],
                            weight: 1,
                            passing: true,
                        })
                        .collect(),
                    created: 0,
                },
            );
        }
        c
    }

    #[test]
    fn removal_counts_serving_instances_of_exposed_services() {
        let before = catalog(&[
            ("www", &["w1", "w2"], true),
            ("api", &["a1", "a2"], true),
            ("hidden", &["h1"], false),
        ]);
        let empty = crate::model::Catalog::default();
        let r = Removal::between(&before, &empty);
        assert_eq!(
            (r.serving, r.removed, r.services, r.replaced),
            (4, 4, 2, false)
        );
        // One service's instances replaced: a deploy.
        let deploy = catalog(&[("www", &["w3", "w4"], true), ("api", &["a1", "a2"], true)]);
        let r = Removal::between(&before, &deploy);
        assert_eq!((r.removed, r.services, r.replaced), (2, 1, true));
        // A whole service gone is not a replacement.
        let gone = catalog(&[("api", &["a1", "a2"], true)]);
        assert!(!Removal::between(&before, &gone).replaced);
        // Failing checks count as removed.
        let mut failing = before.clone();
        for s in failing.services.values_mut() {
            for i in &mut s.instances {
                i.passing = false;
            }
        }
        assert_eq!(Removal::between(&before, &failing).removed, 4);
    }

    #[test]
    fn the_guard_holds_a_mass_removal_for_the_grace_period() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let mut g = RemovalGuard::new(50, grace);
        let all = Removal {
            serving: 4,
            removed: 4,
            services: 2,
            replaced: false,
        };
        let half = Removal {
            serving: 4,
            removed: 2,
            services: 2,
            replaced: false,
        };
        let deploy = Removal {
            serving: 4,
            removed: 4,
            services: 1,
            replaced: true,
        };
        // Half is not more than half; a deploy is never held.
        assert_eq!(g.judge(half, t0), GuardVerdict::Apply { was_held: false });
        assert_eq!(g.judge(deploy, t0), GuardVerdict::Apply { was_held: false });
        // Everything gone: held, reported once, until the grace ends...
        assert_eq!(
            g.judge(all, t0),
            GuardVerdict::Hold {
                removal: all,
                until: t0 + grace,
                new: true
            }
        );
        assert_eq!(g.until(), Some(t0 + grace));
        assert_eq!(
            g.judge(all, t0 + Duration::from_secs(10)),
            GuardVerdict::Hold {
                removal: all,
                until: t0 + grace,
                new: false
            }
        );
        // ...when answers that still say so confirm it.
        assert_eq!(
            g.judge(all, t0 + grace),
            GuardVerdict::Apply { was_held: true }
        );
        assert_eq!(g.until(), None);
    }

    #[test]
    fn the_guard_lifts_when_the_answer_recovers_or_on_sighup() {
        let t0 = Instant::now();
        let mut g = RemovalGuard::new(50, Duration::from_secs(30));
        let all = Removal {
            serving: 4,
            removed: 4,
            services: 2,
            replaced: false,
        };
        let none = Removal {
            serving: 4,
            removed: 0,
            services: 0,
            replaced: false,
        };
        assert!(matches!(g.judge(all, t0), GuardVerdict::Hold { .. }));
        // Consul answers in full again: nothing to apply, the hold ends.
        assert_eq!(
            g.judge(none, t0 + MS),
            GuardVerdict::Apply { was_held: true }
        );
        // Held again from scratch (a new episode)...
        assert!(matches!(
            g.judge(all, t0 + MS * 2),
            GuardVerdict::Hold { new: true, .. }
        ));
        // ...and SIGHUP confirms at once.
        g.confirm();
        assert_eq!(
            g.judge(all, t0 + MS * 3),
            GuardVerdict::Apply { was_held: true }
        );
        // A SIGHUP with nothing held does not pre-confirm the next one.
        g.confirm();
        assert!(matches!(
            g.judge(all, t0 + MS * 4),
            GuardVerdict::Hold { .. }
        ));
        // 100 % never holds.
        let mut off = RemovalGuard::new(100, Duration::from_secs(30));
        assert_eq!(off.judge(all, t0), GuardVerdict::Apply { was_held: false });
    }

    #[test]
    fn strategy_falls_back_only_when_it_must() {
        use ReloadStrategy::*;
        let c = |configured, old, transfer, syn| {
            let s = choose_strategy(configured, false, old, transfer, syn);
            (s.strategy, s.fell_back)
        };
        let held = |old, transfer| {
            let s = choose_strategy(Inherit, true, old, transfer, false);
            (s.strategy, s.fell_back)
        };
        // Held sockets: inherited at the first start and at every reload.
        assert_eq!(held(false, false), (Inherit, false));
        assert_eq!(held(true, false), (Inherit, false));
        // A config binding by itself: what seamless does.
        assert_eq!(c(Inherit, false, false, true), (Plain, false));
        assert_eq!(c(Inherit, true, true, true), (Seamless, false));
        assert_eq!(c(Inherit, true, false, false), (Plain, true));
        assert_eq!(c(Seamless, false, false, true), (Plain, false));
        assert_eq!(c(Seamless, true, true, true), (Seamless, false));
        assert_eq!(c(Seamless, true, false, true), (SynDrop, true));
        assert_eq!(c(Seamless, true, false, false), (Plain, true));
        assert_eq!(c(SynDrop, true, false, true), (SynDrop, false));
        assert_eq!(c(Plain, true, true, true), (Plain, false));
    }

    #[test]
    fn triggers_that_count_as_reloads() {
        assert!(!Trigger::Start.counts_as_reload());
        assert!(!Trigger::Restart.counts_as_reload());
        assert!(Trigger::Catalog.counts_as_reload());
        assert!(Trigger::Sighup.counts_as_reload());
        assert!(Trigger::Retry.counts_as_reload());
    }

    fn waits() -> Waits {
        Waits {
            live: 10 * MS,
            reload_min: 500 * MS,
            reload_max: 2000 * MS,
        }
    }

    #[test]
    fn quiescence_merges_changes_and_is_bounded_by_max() {
        let w = waits();
        let t0 = Instant::now();
        let p = Pending::changed(None, t0);
        assert_eq!(p.deadline(true, &w), t0 + 10 * MS);
        assert_eq!(p.deadline(false, &w), t0 + 500 * MS);
        assert_eq!(p.due(true), Due::TryLive);
        assert_eq!(p.due(false), Due::Reload);
        // Changes keep coming: the wait restarts from the last one...
        let p = Pending::changed(Some(p), t0 + 400 * MS);
        assert_eq!(p.first, t0);
        assert_eq!(p.deadline(false, &w), t0 + 900 * MS);
        // ...but never beyond max after the first.
        let p = Pending::changed(Some(p), t0 + 1900 * MS);
        assert_eq!(p.deadline(false, &w), t0 + 2000 * MS);
        assert_eq!(p.deadline(true, &w), t0 + 1910 * MS);
    }

    #[test]
    fn a_structural_change_waits_the_reload_wait_then_reloads() {
        let w = waits();
        let t0 = Instant::now();
        let p = Pending::changed(None, t0);
        // Found structural after the live wait: waits out the reload wait.
        let AfterStructural::Wait(p) = p.structural(t0 + 10 * MS, &w) else {
            panic!("should wait");
        };
        assert!(p.structural);
        assert_eq!(p.due(true), Due::Reload);
        assert_eq!(p.deadline(true, &w), t0 + 500 * MS);
        assert_eq!(p.structural(t0 + 500 * MS, &w), AfterStructural::ReloadNow);
        // A service left out, tried again, is structural from the start.
        let q = Pending::changed_structural(None, t0);
        assert_eq!(q.due(true), Due::Reload);
    }

    #[test]
    fn retries_log_the_first_failure_of_an_episode() {
        let mut r = Retries::new(Duration::from_secs(30));
        let a = r.failed("disk full");
        assert!(a.first && a.delay <= 100 * MS);
        let b = r.failed("disk full");
        assert!(!b.first && b.delay >= 100 * MS);
        assert_eq!(r.healed().as_deref(), Some("disk full"));
        assert_eq!(r.healed(), None);
        assert!(r.failed("again").first, "a new episode");
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_refusal_is_blamed_only_on_changed_services() {
        let blamed = set(&["alpha", "beta_port_9000"]);
        // beta's per-port frontend is beta's; alpha did not change.
        assert_eq!(
            culprits(&blamed, &set(&["beta", "gamma"]), false, true),
            set(&["beta"])
        );
        // HAProxy names nobody that changed: nobody is blamed...
        assert!(culprits(&blamed, &set(&["gamma", "delta"]), true, true).is_empty());
        // ...unless the check refused the one change since what served.
        assert_eq!(
            culprits(&set(&[]), &set(&["gamma"]), true, true),
            set(&["gamma"])
        );
        assert!(culprits(&set(&[]), &set(&["gamma"]), false, true).is_empty());
        assert!(culprits(&set(&[]), &set(&["gamma"]), true, false).is_empty());
        // A name that only starts like a service is not it.
        assert!(culprits(&set(&["betamax"]), &set(&["beta"]), false, true).is_empty());
    }

    #[test]
    fn an_exclusion_doubles_up_to_ten_minutes() {
        let t0 = Instant::now();
        let mut x = Exclusion::new(7, t0);
        assert_eq!(x.until, t0 + FIRST_EXCLUSION);
        let mut lengths = Vec::new();
        for _ in 0..5 {
            let now = x.until;
            x.tried_again(now);
            lengths.push(x.until - now);
        }
        assert_eq!(
            lengths,
            [120, 240, 480, 600, 600].map(Duration::from_secs).to_vec()
        );
    }

    #[test]
    fn a_stop_escalates_once() {
        let t0 = Instant::now();
        let (mut s, step) = Stop::begin(true, t0, Duration::from_secs(30));
        assert_eq!(step, StopStep::Nothing);
        assert_eq!(s.deadline, t0 + Duration::from_secs(30));
        assert_eq!(s.on_signal(Action::Reload), StopStep::Nothing);
        assert_eq!(s.on_signal(Action::Forward), StopStep::Nothing);
        assert_eq!(
            s.on_signal(Action::Stop { graceful: true }),
            StopStep::Force(ForceReason::SecondSignal)
        );
        assert_eq!(s.on_deadline(), StopStep::Nothing, "forced once");

        let (mut q, step) = Stop::begin(false, t0, Duration::from_secs(30));
        assert_eq!(step, StopStep::Force(ForceReason::Sigquit));
        assert_eq!(
            q.on_signal(Action::Stop { graceful: true }),
            StopStep::Nothing
        );

        let (mut d, _) = Stop::begin(true, t0, Duration::from_secs(1));
        assert_eq!(d.on_deadline(), StopStep::Force(ForceReason::Timeout));
    }

    #[test]
    fn the_exit_code_is_the_serving_generations() {
        assert_eq!(exit_code(None), 0);
        assert_eq!(exit_code(Some(Exit::Code(0))), 0);
        assert_eq!(exit_code(Some(Exit::Code(3))), 3);
        assert_eq!(exit_code(Some(Exit::Signal(9))), 137);
    }
}
