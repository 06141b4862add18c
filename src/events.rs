//! The event contract: every log line the product writes carries a stable
//! `event` field naming what happened, one of [`Event`]. Log collectors,
//! tests and benchmarks match on that field (and on the documented fields
//! beside it), never on the message text, which is for people and may be
//! reworded.
//!
//! With `--log-format json` a line looks like
//! `{"timestamp":…,"level":"INFO","fields":{"event":"reload_done","message":"haproxy reload done","generation":3,"strategy":"seamless","trigger":"sighup","took_ms":41,…},"target":…}`.
//!
//! The names are part of the interface: a renamed event is a breaking
//! change. `tests` in this module check every log call in `src/` names one.

/// Logs one line of the event contract: `log!(level, Event::X, fields..., "message")`.
/// The second argument must be an [`Event`] (the compiler checks it), and
/// it becomes the `event` field; the rest is what `tracing::<level>!` takes.
///
/// ```
/// use haproxy_supervisor::{events::Event, log};
/// log!(info, Event::ReloadDone, generation = 3, "haproxy reload done");
/// ```
///
/// The tracing level macros are disallowed in `clippy.toml`, so this is
/// the product's only way to log. It expands to `tracing::event!` with the
/// level spelled out rather than to `tracing::<level>!` under an
/// `#[allow(clippy::disallowed_macros)]`: clippy reports a disallowed macro
/// whose expansion holds an attribute (tracing's do) at the crate root,
/// where no allow inside the crate reaches (rust-clippy#14017).
#[macro_export]
macro_rules! log {
    (trace, $($rest:tt)+) => { $crate::log!(@ TRACE, $($rest)+) };
    (debug, $($rest:tt)+) => { $crate::log!(@ DEBUG, $($rest)+) };
    (info, $($rest:tt)+) => { $crate::log!(@ INFO, $($rest)+) };
    (warn, $($rest:tt)+) => { $crate::log!(@ WARN, $($rest)+) };
    (error, $($rest:tt)+) => { $crate::log!(@ ERROR, $($rest)+) };
    (@ $level:ident, $event:expr $(,)?) => {{
        let event: $crate::events::Event = $event;
        $crate::events::__tracing::event!($crate::events::__tracing::Level::$level, event = %event)
    }};
    (@ $level:ident, $event:expr, $($rest:tt)+) => {{
        let event: $crate::events::Event = $event;
        $crate::events::__tracing::event!($crate::events::__tracing::Level::$level, event = %event, $($rest)+)
    }};
}

#[doc(hidden)]
pub use tracing as __tracing;

/// What happened. [`Event::as_str`] is the value of the `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    // --- lifecycle -------------------------------------------------------
    /// The supervisor runs. Fields: `strategy`, `config`, `pid`.
    Started,
    /// A stop signal: every generation is soft-stopped. Fields: `signal`,
    /// `graceful`, `timeout`, `live` (generations).
    Stopping,
    /// The stop no longer waits: `reason` is `sigquit`, `second_signal` or
    /// `timeout`.
    StopForced,
    /// The supervisor exits. Fields: `exit_code`, `reloads`,
    /// `failed_reloads`, `restarts`.
    Stopped,
    /// A start-up step failed; the supervisor exits (code 1 or 2).
    /// Field: `error`.
    Fatal,
    /// A signal passed on to the serving HAProxy. Fields: `signal`, `pid`.
    SignalForwarded,
    /// A signal with no action here. Fields: `signal`, `reason`.
    SignalIgnored,
    /// SIGHUP/SIGUSR2: check and reload now. Field: `signal`.
    ReloadRequested,
    /// HAProxy processes of an earlier run found; the first generation
    /// takes over from them. Field: `pids`.
    LeftoversAdopted,
    /// An environment fact that limits the supervisor (no subreaper, no
    /// iptables, the user to run HAProxy as). Fields: `what`, `error`.
    Degraded,
    /// SYN-drop rules of an earlier run removed. Field: `rules`.
    StaleRulesRemoved,

    // --- configs ----------------------------------------------------------
    /// A checked config was put in place. Fields: `services`, `file`.
    ConfigWritten,
    /// `haproxy -c` refused a candidate; nothing changed. Fields: `error`,
    /// `failed_reloads`.
    ConfigInvalid,
    /// The template failed to render or load; nothing changed. Field: `error`.
    RenderFailed,
    /// A catalog entry or setting the model refuses or adjusts (a tag
    /// value, a port clash, a fitted maxconn). Fields: `service` (escaped
    /// as by Rust's `escape_debug`), `tag` (the tag or field at fault, also
    /// escaped: `HAPROXY.BACKEND.MAXCONN`, `instance id`, ...), `reason`
    /// (what is wrong, for people), `left_out` (the service is not in the
    /// config) — logged by [`crate::model::Warning::log`]; for Consul
    /// entries merged (an instance listed twice) `duplicates` too; for a
    /// setting no `service`, `tag` is the variable (`HAPROXY_MAXCONN_GLOBAL`)
    /// and `open_files_limit` (with `servers` and `maxconn` when the
    /// supervisor fits it to the servers); for a route or frontend port
    /// another service holds, `held_by` (that service).
    Warning,
    /// The catalog file was read. Fields: `path`, `services`.
    CatalogFileRead,
    /// The catalog file cannot be read or parsed; the last good catalog
    /// stays. Fields: `path`, `error`.
    CatalogFileRejected,
    /// The discovery task ended; the running config stays.
    DiscoveryStopped,

    // --- reloads ----------------------------------------------------------
    /// A new generation serves. Fields: `generation`, `pid`, `trigger`
    /// (`start`, `catalog`, `sighup`, `restart`, `retry`), `strategy`,
    /// `took_ms`, `reloads`, `failed_reloads`, `restarts`, `draining`.
    ReloadDone,
    /// A new generation did not come up; the previous one (if any) keeps
    /// serving. Fields: `trigger`, `error`, `serving` (whether one does).
    ReloadFailed,
    /// The configured strategy cannot be used for this reload. Fields:
    /// `fallback`, `socket`.
    StrategyFallback,
    /// A reload failed in a way that may heal; it is retried. Fields:
    /// `error`, `retry_in`, `first` (the first of an episode).
    ReloadRetry,
    /// Reloads work again after an episode of failures. Field: `after`.
    ReloadsHealed,
    /// The config that serves was put back on disk after a failed start.
    /// Field: `file`.
    RolledBack,
    /// The config that serves could not be put back on disk after a failed
    /// start: the file holds the refused config. Fields: `file`, `error`.
    RollbackFailed,
    /// Nothing serves; a start is scheduled. Field: `delay`.
    RestartScheduled,
    /// An old generation exited after draining. Fields: `pid`, `exit`.
    GenerationDrained,
    /// Held listening sockets closed: no config that serves names their
    /// ports any more. Field: `ports`.
    ListenersReleased,
    /// A port's listening socket cannot be held (bound or listened on) by
    /// the supervisor; HAProxy binds it itself. Fields: `port`, `error`.
    ListenerFailed,
    /// The serving generation exited. Fields: `pid`, `exit`, `restarts`.
    GenerationDied,
    /// A file the supervisor keeps beside HAProxy (pid file, server state,
    /// the config applied live) could not be written. Fields: `file`,
    /// `error`.
    WriteFailed,
    /// What the supervisor reads back from HAProxy to carry over (the
    /// server state, `show servers state`) could not be read; the new
    /// generation starts without it. Field: `error`.
    ReadFailed,
    /// Removing SYN-drop rules failed. Field: `error`.
    SynDropCleanupFailed,

    // --- live changes (SPEC §10) -------------------------------------------
    /// A catalog change applied through the runtime API. Fields: `ops`,
    /// `kinds`, `took_ms`, `live_changes`, `pid`.
    LiveApplied,
    /// A live operation failed; a full reload follows. Fields: `error`,
    /// `op`, `applied`, `of`, `live_failures`.
    LiveFailed,
    /// The change cannot go live; a reload follows the reload wait.
    /// Field: `reason`.
    StructuralChange,
    /// A server taken out live was deleted. Fields: `backend`, `server`.
    ParkedDeleted,
    /// A server taken out live cannot be deleted yet; it stays parked (in
    /// maintenance) and is tried again. Fields: `backend`, `server`,
    /// `error`.
    ParkedKept,
    /// A catalog answer that removes more than HAPROXY_REMOVAL_GUARD of
    /// the serving instances is held: the last catalog keeps serving.
    /// Fields: `removed`, `serving`, `services`, `grace_ms`.
    RemovalHeld,
    /// A held removal applies: confirmed by answers over the grace period
    /// or by SIGHUP (`by`), or lifted because the answers recovered.
    /// Fields: `by` (`grace`, `sighup`, `recovered`).
    RemovalApplied,

    // --- failure rules (SPEC §11) -----------------------------------------
    /// A service HAProxy refused is left out; the others apply. Fields:
    /// `service`, `haproxy` (its first alert line).
    ServiceLeftOut,
    /// Services left out are tried again (changed, or their time is up).
    /// Field: `services`.
    ServiceRetried,
    /// HAProxy refused a change that names none of the changed services, or
    /// refused too many; nothing changed. Field: `changed`.
    ChangeRefused,

    // --- TLS (SPEC §15) ----------------------------------------------------
    /// A certificate is served (at start). Fields: `file`, `subject`, `serial`, `names`.
    CertLoaded,
    /// `HAPROXY_CERTS_DIR` holds no usable bundle: no HTTPS bind until one is added.
    CertNone,
    /// A bundle added to the directory is served. Fields: `file`, `subject`, `serial`, `live` (through the runtime API, no process started).
    CertAdded,
    /// A bundle replaced in the directory is served. Fields: `file`, `subject`, `serial`, `live`.
    CertUpdated,
    /// A bundle removed from the directory is no longer served. Fields: `file`, `live`.
    CertRemoved,
    /// A certificate change that needs a checked reload. Field: `reason`.
    CertReload,
    /// A certificate change failed through the runtime API; a reload follows. Field: `error`.
    CertLiveFailed,
    /// A bundle is refused (not PEM, unreadable, key and certificate do not match); the certificate served for it, if any, stays. Fields: `file`, `error`, `keeps_previous`.
    CertRejected,
    /// An expired certificate, served anyway. Fields: `file`, `not_after`, `subject`.
    CertExpired,
    /// `HAPROXY_CERTS_DIR` cannot be read; the certificates served stay. Fields: `dir`, `error`, `serving`.
    CertDirError,
    /// `HAPROXY_CERTS_DIR` is readable again. Field: `dir`.
    CertDirOk,
    /// The copies HAProxy loads cannot be written; the certificates served stay. Fields: `store`, `error`.
    CertStoreError,

    // --- Consul -------------------------------------------------------------
    /// Consul cannot be read: no agent answers (`away`), one stops
    /// answering mid-read (abandoned after the blocking wait and a margin),
    /// one refuses the TLS setup or token, or an answer is refused (larger
    /// than `HAPROXY_CONSUL_MAX_ANSWER`, a non-numeric `X-Consul-Index`);
    /// the last good catalog stays. Logged once per error until a catalog
    /// is read again. Fields: `error` (naming the URL), `away`.
    ConsulError,
    /// The watcher moved to the next agent of `CONSUL_HTTP_ADDR`. Fields:
    /// `from`, `to`, `error`.
    ConsulFailover,
    /// The first agent answers again; the watcher is back on it. Fields:
    /// `from`, `to`.
    ConsulFailback,
    /// A stale read was older than the maximum staleness and is asked of the
    /// leader. Fields: `last_contact_ms`, `max_stale_ms`.
    ConsulStaleRetry,
    /// Consul refuses the token, or its ACLs hide the catalog. Fields:
    /// `token_source` (where the token came from: `token` for
    /// `CONSUL_HTTP_TOKEN` / `--consul-token`, `token_file` for
    /// `CONSUL_HTTP_TOKEN_FILE` / `--consul-token-file`, `none`); for a
    /// refusal (403) `url`, `status`, `body` (Consul's answer), `error`;
    /// for a catalog the ACLs hide, `reason` (`empty_catalog`).
    ConsulDenied,
    /// Consul answers again after an outage.
    ConsulRecovered,
    /// Consul answers with no services right after an outage; the last good
    /// catalog is kept for the grace period. Field: `grace`.
    ConsulEmptyAfterOutage,
    /// A new catalog from Consul. Field: `services`.
    ConsulChanged,

    // --- processes and status ---------------------------------------------
    /// A child that was not a generation was reaped (PID 1 duty). Fields:
    /// `pid`, `exit`.
    OrphanReaped,
    /// `waitpid` failed. Field: `error`.
    ReapFailed,
    /// The status server could not accept a connection. Field: `error`.
    StatusAcceptFailed,
}

impl Event {
    /// Every event, for documentation and the contract's tests.
    pub const ALL: &'static [Event] = &[
        Event::Started,
        Event::Stopping,
        Event::StopForced,
        Event::Stopped,
        Event::Fatal,
        Event::SignalForwarded,
        Event::SignalIgnored,
        Event::ReloadRequested,
        Event::LeftoversAdopted,
        Event::Degraded,
        Event::StaleRulesRemoved,
        Event::ConfigWritten,
        Event::ConfigInvalid,
        Event::RenderFailed,
        Event::Warning,
        Event::CatalogFileRead,
        Event::CatalogFileRejected,
        Event::DiscoveryStopped,
        Event::ReloadDone,
        Event::ReloadFailed,
        Event::StrategyFallback,
        Event::ReloadRetry,
        Event::ReloadsHealed,
        Event::RolledBack,
        Event::RollbackFailed,
        Event::RestartScheduled,
        Event::GenerationDrained,
        Event::ListenersReleased,
        Event::ListenerFailed,
        Event::GenerationDied,
        Event::WriteFailed,
        Event::ReadFailed,
        Event::SynDropCleanupFailed,
        Event::LiveApplied,
        Event::LiveFailed,
        Event::StructuralChange,
        Event::ParkedDeleted,
        Event::ParkedKept,
        Event::RemovalHeld,
        Event::RemovalApplied,
        Event::ServiceLeftOut,
        Event::ServiceRetried,
        Event::ChangeRefused,
        Event::CertLoaded,
        Event::CertNone,
        Event::CertAdded,
        Event::CertUpdated,
        Event::CertRemoved,
        Event::CertReload,
        Event::CertLiveFailed,
        Event::CertRejected,
        Event::CertExpired,
        Event::CertDirError,
        Event::CertDirOk,
        Event::CertStoreError,
        Event::ConsulError,
        Event::ConsulFailover,
        Event::ConsulFailback,
        Event::ConsulStaleRetry,
        Event::ConsulDenied,
        Event::ConsulRecovered,
        Event::ConsulEmptyAfterOutage,
        Event::ConsulChanged,
        Event::OrphanReaped,
        Event::ReapFailed,
        Event::StatusAcceptFailed,
    ];

    /// The `event` field's value: stable, snake_case.
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Stopping => "stopping",
            Event::StopForced => "stop_forced",
            Event::Stopped => "stopped",
            Event::Fatal => "fatal",
            Event::SignalForwarded => "signal_forwarded",
            Event::SignalIgnored => "signal_ignored",
            Event::ReloadRequested => "reload_requested",
            Event::LeftoversAdopted => "leftovers_adopted",
            Event::Degraded => "degraded",
            Event::StaleRulesRemoved => "stale_rules_removed",
            Event::ConfigWritten => "config_written",
            Event::ConfigInvalid => "config_invalid",
            Event::RenderFailed => "render_failed",
            Event::Warning => "warning",
            Event::CatalogFileRead => "catalog_file_read",
            Event::CatalogFileRejected => "catalog_file_rejected",
            Event::DiscoveryStopped => "discovery_stopped",
            Event::ReloadDone => "reload_done",
            Event::ReloadFailed => "reload_failed",
            Event::StrategyFallback => "strategy_fallback",
            Event::ReloadRetry => "reload_retry",
            Event::ReloadsHealed => "reloads_healed",
            Event::RolledBack => "rolled_back",
            Event::RollbackFailed => "rollback_failed",
            Event::RestartScheduled => "restart_scheduled",
            Event::GenerationDrained => "generation_drained",
            Event::ListenersReleased => "listeners_released",
            Event::ListenerFailed => "listener_failed",
            Event::GenerationDied => "generation_died",
            Event::WriteFailed => "write_failed",
            Event::ReadFailed => "read_failed",
            Event::SynDropCleanupFailed => "syn_drop_cleanup_failed",
            Event::LiveApplied => "live_applied",
            Event::LiveFailed => "live_failed",
            Event::StructuralChange => "structural_change",
            Event::ParkedDeleted => "parked_deleted",
            Event::ParkedKept => "parked_kept",
            Event::RemovalHeld => "removal_held",
            Event::RemovalApplied => "removal_applied",
            Event::ServiceLeftOut => "service_left_out",
            Event::ServiceRetried => "service_retried",
            Event::ChangeRefused => "change_refused",
            Event::CertLoaded => "cert_loaded",
            Event::CertNone => "cert_none",
            Event::CertAdded => "cert_added",
            Event::CertUpdated => "cert_updated",
            Event::CertRemoved => "cert_removed",
            Event::CertReload => "cert_reload",
            Event::CertLiveFailed => "cert_live_failed",
            Event::CertRejected => "cert_rejected",
            Event::CertExpired => "cert_expired",
            Event::CertDirError => "cert_dir_error",
            Event::CertDirOk => "cert_dir_ok",
            Event::CertStoreError => "cert_store_error",
            Event::ConsulError => "consul_error",
            Event::ConsulFailover => "consul_failover",
            Event::ConsulFailback => "consul_failback",
            Event::ConsulStaleRetry => "consul_stale_retry",
            Event::ConsulDenied => "consul_denied",
            Event::ConsulRecovered => "consul_recovered",
            Event::ConsulEmptyAfterOutage => "consul_empty_after_outage",
            Event::ConsulChanged => "consul_changed",
            Event::OrphanReaped => "orphan_reaped",
            Event::ReapFailed => "reap_failed",
            Event::StatusAcceptFailed => "status_accept_failed",
        }
    }

    /// The event named `s`, if any.
    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.iter().copied().find(|e| e.as_str() == s)
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_unique_snake_case_and_parse_back() {
        let mut seen = BTreeSet::new();
        for e in Event::ALL {
            let s = e.as_str();
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert!(seen.insert(s), "{s} twice");
            assert_eq!(Event::parse(s), Some(*e));
        }
    }

    /// The product's `.rs` files, with their text.
    fn sources() -> Vec<(std::path::PathBuf, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut files = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    files.push((p, text));
                }
            }
        }
        files
    }

    /// Every event is logged somewhere: the contract is what the code does.
    /// (That each log line names an `Event` is the compiler's job: the
    /// tracing level macros are disallowed in clippy.toml, and `log!`
    /// takes an `Event`.)
    #[test]
    fn every_event_is_logged_somewhere() {
        let sources = sources();
        let used = |e: &Event| {
            let name = format!("Event::{e:?}");
            sources
                .iter()
                .filter(|(p, _)| !p.ends_with("events.rs"))
                .any(|(_, text)| {
                    text.match_indices(&name).any(|(at, _)| {
                        !text[at + name.len()..].starts_with(|c: char| c.is_alphanumeric())
                    })
                })
        };
        let unused: Vec<&Event> = Event::ALL.iter().filter(|e| !used(e)).collect();
        assert!(unused.is_empty(), "events never logged: {unused:?}");
    }

    /// `tracing::event!` is what `log!` expands to, so clippy.toml cannot
    /// disallow it (see there): this keeps it out of the product.
    #[test]
    fn no_direct_tracing_event() {
        let direct: Vec<String> = sources()
            .iter()
            .filter(|(p, _)| !p.ends_with("events.rs"))
            .flat_map(|(p, text)| {
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| l.contains("tracing::event!"))
                    .map(move |(i, _)| format!("{}:{}", p.display(), i + 1))
            })
            .collect();
        assert!(direct.is_empty(), "log with crate::log!: {direct:?}");
    }
}
