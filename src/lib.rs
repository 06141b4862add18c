//! # haproxy-supervisor
//!
//! The PID 1 of an HAProxy container: it watches Consul (or a catalog file)
//! for services tagged `HAPROXY.ENABLE=true`, renders `haproxy.cfg` from a
//! tera template, checks it with `haproxy -c`, and reloads HAProxy without
//! dropping connections.
//!
//! # Layout
//!
//! Modules depend on each other one way, from the values up to the loop
//! (`tests/module_graph.rs` proves there is no circle and that this list
//! names every module and folder of `src/`):
//!
//! ```text
//! values:     syntax, duration, events, signals, logjson, runtime
//!   → rules (per-service rules from tags, and their maps)
//!   → model (catalog, desired state, HaproxyVars, TlsFrontend)
//!   → files (atomic write, staging, paths) → render, tls, listeners
//!   → live, policy (pure decisions) → discovery (Consul, file) → settings
//!   → process, haproxy (check, spawn, reload strategies)
//!   → pipeline (the one render-and-check path)
//!   → cli, plan, status → step (the rules: one pure step)
//!   → supervisor (PID 1: the loop and the executor that performs)
//! ```
//!
//! - [`syntax`]: the syntax of values written verbatim into the config
//!   (names, host names, paths), shared by settings and model.
//! - [`duration`]: HAProxy-style durations (`100ms`, `3s`, `1m`).
//! - [`events`]: the event contract: the stable `event` field of every log
//!   line.
//! - [`signals`]: the signal table (signal-hook).
//! - [`logjson`]: HAProxy's stdout and stderr lines as JSON objects
//!   (`HAPROXY_LOG_FORMAT=json`).
//! - [`runtime`]: an async client for HAProxy's runtime API (the admin
//!   socket): dynamic servers, weights, states, atomic map replacement.
//! - [`rules`]: the per-service rule tags (`HAPROXY.ALLOW`,
//!   `HAPROXY.PATH.STRIP`, ...), validated, and the map files the config
//!   reads them from per request.
//! - [`model`]: the catalog as discovered, the validated desired state
//!   built from it, and the values of the config that come from the
//!   supervisor (`HaproxyVars`, `TlsFrontend`); nothing from outside
//!   reaches the config unvalidated.
//! - [`files`]: every file written for HAProxy: the atomic write, staging a
//!   candidate config, sharing with HAProxy's group, derived paths.
//! - [`render`]: the template and map files.
//! - [`tls`]: the certificate bundles of `HAPROXY_CERTS_DIR`: validation,
//!   the store and crt-list the HTTPS bind loads, live updates (SPEC §15).
//! - [`listeners`]: the listening sockets the supervisor holds and every
//!   generation inherits (`bind fd@<n>`, `HAPROXY_RELOAD_STRATEGY=inherit`),
//!   and the bind addresses of a config.
//! - [`live`]: what the serving HAProxy runs, as a value, and the pure diff
//!   of a new render into live operations or a reload (SPEC §10).
//! - [`policy`]: the supervisor's decisions as pure functions over values
//!   (generations, reload strategy and fallback, quiescence, retries and
//!   the one backoff, failure rules, stop escalation, the fd fit);
//!   unit-tested without root.
//! - [`discovery`]: sources of catalogs, published through a `watch`
//!   channel: [`discovery::consul`] (Consul blocking queries: the client
//!   and failover; [`discovery::consul::watch`], the watch state machine;
//!   [`discovery::consul::wire`], Consul's answers) and
//!   [`discovery::file`] (a catalog file).
//! - [`settings`]: every `HAPROXY_*` variable and CLI flag, each named once
//!   (clap's definition), parsed and validated once at start-up into the
//!   components' configs (a bad value is exit code 2); never changed after.
//! - [`process`]: the one reaper of child processes.
//! - [`haproxy`]: `haproxy -c`, spawning generations, reload strategies and
//!   the iptables guard.
//! - [`pipeline`]: the one render-and-check pipeline shared by `render`,
//!   `check`, `plan` and `run`: render into a config and its layout; stage
//!   beside the running file, `haproxy -c`, put in place or remove.
//! - [`status`]: `/metrics`, `/healthz`, `/readyz`, `/status` (SPEC §14).
//! - [`cli`]: the one-shot `render` and `check` subcommands.
//! - [`plan`]: the one-shot `plan` subcommand: what the running supervisor
//!   would change for a catalog, live or by a reload, read only.
//! - [`step`]: the supervisor's rules as one pure step, `State::step(input)
//!   -> actions`, over one value for what serves and what is on disk
//!   (`Applied`): live changes, reloads, the failure rules of SPEC §11,
//!   restarts, graceful stop. Unit-tested scenario by scenario.
//! - [`supervisor`]: PID-1 duties, the loop (`drive`) that feeds the step
//!   and the executor that performs its actions (HAProxy, files, runtime
//!   API); the edges come in as arguments, so the loop runs against fakes.

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
pub mod pipeline;
pub mod plan;
pub mod policy;
pub mod process;
pub mod render;
pub mod rules;
pub mod runtime;
pub mod settings;
pub mod signals;
pub mod status;
pub mod step;
pub mod supervisor;
pub mod syntax;
pub mod tls;
