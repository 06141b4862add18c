//! # haproxy-supervisor
//!
//! The PID 1 of an HAProxy container: it watches Consul (or a catalog file)
//! for services tagged `HAPROXY.ENABLE=true`, renders `haproxy.cfg` from a
//! tera template, checks it with `haproxy -c`, and reloads HAProxy without
//! dropping connections.
//!
//! # Layout
//!
//! The data flows one way through these modules:
//!
//! ```text
//! discovery (Consul, file) → model (services, tags, validation)
//!     → render (tera, atomic write) → haproxy (check, spawn, reload strategies)
//!     → supervisor (PID 1: signals, reaping, lifecycle)
//! ```
//!
//! - [`syntax`]: the syntax of values written verbatim into the config
//!   (names, host names, paths), shared by settings and model.
//! - [`settings`]: every `HAPROXY_*` variable and CLI flag, parsed and
//!   validated once at start-up (a bad value is exit code 2).
//! - [`duration`]: HAProxy-style durations (`100ms`, `3s`, `1m`).
//! - [`model`]: the catalog as discovered, and the validated desired state
//!   built from it; nothing from outside reaches the config unvalidated.
//! - [`discovery`]: sources of catalogs — Consul blocking queries and a
//!   catalog file — published through a `watch` channel.
//! - [`render`]: the template, map files, and the atomic write.
//! - [`haproxy`]: `haproxy -c`, spawning generations, reload strategies and
//!   the iptables guard.
//! - [`listeners`]: the listening sockets the supervisor holds and every
//!   generation inherits (`bind fd@<n>`, `HAPROXY_RELOAD_STRATEGY=inherit`).
//! - [`logjson`]: HAProxy's stdout and stderr lines as JSON objects
//!   (`HAPROXY_LOG_FORMAT=json`).
//! - [`process`]: the one reaper of child processes.
//! - [`runtime`]: an async client for HAProxy's runtime API (the admin
//!   socket): dynamic servers, weights, states, atomic map replacement.
//! - [`live`]: what the serving HAProxy runs, as a value, and the pure diff
//!   of a new render into live operations or a reload (SPEC §10).
//! - [`tls`]: the certificate bundles of `HAPROXY_CERTS_DIR`: validation,
//!   the store and crt-list the HTTPS bind loads, live updates (SPEC §15).
//! - [`policy`]: the supervisor's decisions as pure functions over values
//!   (generations, strategy fallback, quiescence, retries, failure rules,
//!   stop escalation); unit-tested without root.
//! - [`events`]: the event contract: the stable `event` field of every log
//!   line.
//! - [`signals`]: the signal table (signal-hook).
//! - [`status`]: `/metrics`, `/healthz`, `/readyz`, `/status` (SPEC §14).
//! - [`cli`]: the one-shot `render` and `check` subcommands.
//! - [`plan`]: the one-shot `plan` subcommand: what the running supervisor
//!   would change for a catalog, live or by a reload, read only.
//! - [`supervisor`]: PID-1 duties and the loop that performs what
//!   [`policy`], [`live`] and [`signals`] decide: live changes, reloads,
//!   the failure rules of SPEC §11, graceful stop.

pub mod cli;
pub mod discovery;
pub mod duration;
pub mod events;
pub mod files;
pub mod haproxy;
pub mod listeners;
pub mod live;
pub mod logjson;
pub mod model;
pub mod plan;
pub mod policy;
pub mod process;
pub mod render;
pub mod runtime;
pub mod settings;
pub mod signals;
pub mod status;
pub mod supervisor;
pub mod syntax;
pub mod tls;
