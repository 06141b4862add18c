//! Every CLI flag and `HAPROXY_*` variable, parsed and validated once at
//! start-up. Every flag has its variable and every variable its flag. A value
//! that does not parse is a [`SettingsError`] naming the variable and the
//! value; the binary exits with code 2 before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::discovery::consul::{Consistency, ConsulConfig, TlsConfig, Token};
use crate::duration;
use crate::model::{HaproxyVars, Secret};
use crate::policy::{fitted_maxconn, ReloadStrategy, FD_RESERVE};

/// Command line of `haproxy-supervisor`.
#[derive(Debug, Parser)]
#[command(
    name = "haproxy-supervisor",
    version,
    about = "PID 1 for an HAProxy container: renders haproxy.cfg from Consul and reloads HAProxy without dropping connections",
    after_help = "Every flag can also be set through the environment variable shown beside it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Watch discovery, run HAProxy and reload it on change and on SIGHUP (the default).
    Run,
    /// Render haproxy.cfg once to stdout and exit.
    Render,
    /// Render, run `haproxy -c` on the result, exit 0 if valid and 1 if not.
    Check,
    /// Show what the running supervisor would change for the catalog, and
    /// whether live or by a reload; changes nothing. Exit 0: nothing to do,
    /// 2: live only, 3: a reload, 1: an error.
    Plan {
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },
}

/// Output of `plan`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// One line per change
    #[default]
    Text,
    /// One JSON document
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Raw options as given by flags or the environment; validated by
/// [`Settings::from_options`].
#[derive(Debug, Clone, Default, Args)]
pub struct Options {
    /// Consul HTTP API address; several, comma separated, are tried in order (the first preferred) [default: CONSUL_SERVER, else http://127.0.0.1:8500]
    #[arg(long, env = "CONSUL_HTTP_ADDR", global = true)]
    pub consul: Option<String>,
    /// Consul address as host:port (the seed image's variable); used when --consul is unset
    #[arg(long, env = "CONSUL_SERVER", global = true)]
    pub consul_server: Option<String>,
    /// ACL token sent to Consul as X-Consul-Token
    #[arg(long, env = "CONSUL_HTTP_TOKEN", global = true, hide_env_values = true)]
    pub consul_token: Option<String>,
    /// File holding the ACL token (read for every request; wins over --consul-token, as in Consul)
    #[arg(long, env = "CONSUL_HTTP_TOKEN_FILE", global = true)]
    pub consul_token_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that verify an https Consul address; replaces the built-in roots
    #[arg(long, env = "CONSUL_CACERT", global = true)]
    pub consul_cacert: Option<PathBuf>,
    /// true: Consul addresses given as host:port use https [default: false]
    #[arg(long, env = "CONSUL_HTTP_SSL", global = true)]
    pub consul_ssl: Option<String>,
    /// false: accept any certificate from Consul (testing only) [default: true]
    #[arg(long, env = "CONSUL_HTTP_SSL_VERIFY", global = true)]
    pub consul_ssl_verify: Option<String>,
    /// Client certificate (PEM) for agents that verify clients (verify_incoming)
    #[arg(long, env = "CONSUL_CLIENT_CERT", global = true)]
    pub consul_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --consul-client-cert
    #[arg(long, env = "CONSUL_CLIENT_KEY", global = true)]
    pub consul_client_key: Option<PathBuf>,
    /// Consul datacenter to read [default: the agent's own]
    #[arg(long, env = "CONSUL_DATACENTER", global = true)]
    pub consul_datacenter: Option<String>,
    /// Consul Enterprise namespace: not supported (an error when set)
    #[arg(long, env = "CONSUL_NAMESPACE", global = true, hide = true)]
    pub consul_namespace: Option<String>,
    /// Read with ?stale from any Consul server, asking the leader again when an answer is older than this [default: off, every read goes to the leader]
    #[arg(long, env = "HAPROXY_CONSUL_MAX_STALE", global = true)]
    pub consul_max_stale: Option<String>,
    /// Longest Consul answer body read, in bytes with an optional KiB/MiB/GiB suffix; a longer one is refused [default: 32MiB]
    #[arg(long, env = "HAPROXY_CONSUL_MAX_ANSWER", global = true)]
    pub consul_max_answer: Option<String>,
    /// How long a Consul blocking query waits for a change (Consul's wait=, 1s to 10m) [default: 55s]
    #[arg(long, env = "HAPROXY_CONSUL_WAIT", global = true)]
    pub consul_wait: Option<String>,
    /// Read services from this JSON catalog file instead of Consul (re-read on change)
    #[arg(long, env = "HAPROXY_CATALOG_FILE", global = true)]
    pub catalog_file: Option<PathBuf>,
    /// Where the rendered config is written (map files go beside it)
    #[arg(long, env = "HAPROXY_CONFIG_FILE", global = true)]
    pub config_file: Option<PathBuf>,
    /// Do not render: an external watcher writes --config-file; SIGHUP checks and reloads it
    #[arg(long, env = "HAPROXY_NO_RENDER", global = true)]
    pub no_render: bool,
    /// Directory for the admin socket and pid files [default: /run/haproxy-supervisor]
    #[arg(long, env = "HAPROXY_RUN_DIR", global = true)]
    pub run_dir: Option<PathBuf>,
    /// The haproxy executable [default: haproxy]
    #[arg(long, env = "HAPROXY_BIN", global = true)]
    pub haproxy_bin: Option<PathBuf>,
    /// A tera template that replaces the built-in one
    #[arg(long, env = "HAPROXY_TEMPLATE", global = true)]
    pub template: Option<PathBuf>,
    /// Log format of the supervisor and, with json, of HAProxy's access logs and events
    #[arg(
        long,
        env = "HAPROXY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Domain appended to a service name when it has no HAPROXY.VHOST tag
    #[arg(long, env = "HAPROXY_DOM", global = true)]
    pub dom: Option<String>,
    /// global maxconn [default: 50000]
    #[arg(long, env = "HAPROXY_MAXCONN_GLOBAL", global = true)]
    pub maxconn_global: Option<String>,
    /// spread-checks percentage [default: 5]
    #[arg(long, env = "HAPROXY_SPREAD_CHECKS", global = true)]
    pub spread_checks: Option<String>,
    /// max-spread-checks in ms [default: 15000]
    #[arg(long, env = "HAPROXY_MAX_SPREAD_CHECKS", global = true)]
    pub max_spread_checks: Option<String>,
    /// retries [default: 3]
    #[arg(long, env = "HAPROXY_RETRIES", global = true)]
    pub retries: Option<String>,
    /// backlog [default: 10000]
    #[arg(long, env = "HAPROXY_BACKLOG", global = true)]
    pub backlog: Option<String>,
    /// defaults maxconn [default: 10000]
    #[arg(long, env = "HAPROXY_MAXCONN", global = true)]
    pub maxconn: Option<String>,
    /// timeout connect [default: 3s]
    #[arg(long, env = "HAPROXY_TIMEOUT_CONNECT", global = true)]
    pub timeout_connect: Option<String>,
    /// timeout client [default: 30s]
    #[arg(long, env = "HAPROXY_TIMEOUT_CLIENT", global = true)]
    pub timeout_client: Option<String>,
    /// timeout server [default: 30s]
    #[arg(long, env = "HAPROXY_TIMEOUT_SERVER", global = true)]
    pub timeout_server: Option<String>,
    /// timeout http-keep-alive [default: 1s]
    #[arg(long, env = "HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE", global = true)]
    pub timeout_http_keep_alive: Option<String>,
    /// timeout http-request [default: 15s]
    #[arg(long, env = "HAPROXY_TIMEOUT_HTTP_REQUEST", global = true)]
    pub timeout_http_request: Option<String>,
    /// timeout queue [default: 30s]
    #[arg(long, env = "HAPROXY_TIMEOUT_QUEUE", global = true)]
    pub timeout_queue: Option<String>,
    /// timeout tunnel: how long an idle WebSocket (or other upgraded or
    /// CONNECT) connection stays open [default: 1h]
    #[arg(long, env = "HAPROXY_TIMEOUT_TUNNEL", global = true)]
    pub timeout_tunnel: Option<String>,
    /// Syslog address for HAProxy's logs [default: unset, HAProxy logs to stdout]
    #[arg(long, env = "LOCAL_SYSLOG", global = true)]
    pub local_syslog: Option<String>,
    /// Port of the shared HTTP frontend app_http_in [default: 8080]
    #[arg(long, env = "HAPROXY_HTTP_PORT", global = true)]
    pub http_port: Option<String>,
    /// Port of the stats page and /_haproxy_health_check [default: 4444]
    #[arg(long, env = "HAPROXY_STATS_PORT", global = true)]
    pub stats_port: Option<String>,
    /// IP address the stats listener binds, e.g. 127.0.0.1 [default: every address]
    #[arg(long, env = "HAPROXY_STATS_BIND", global = true)]
    pub stats_bind: Option<String>,
    /// Credentials of the stats page, user:password [default: none, the page is open]
    #[arg(
        long,
        env = "HAPROXY_STATS_AUTH",
        global = true,
        hide_env_values = true
    )]
    pub stats_auth: Option<String>,
    /// User HAProxy runs as after binding; empty: stay root [default: haproxy, if that user exists]
    #[arg(long, env = "HAPROXY_USER", global = true)]
    pub haproxy_user: Option<String>,
    /// inherit (the supervisor holds the listening sockets), seamless, syn-drop or plain [default: inherit]
    #[arg(long, env = "HAPROXY_RELOAD_STRATEGY", global = true)]
    pub reload_strategy: Option<String>,
    /// Quiescence before a reload, min:max as consul-template's wait [default: 100ms:1s]
    #[arg(long, env = "HAPROXY_RELOAD_WAIT", global = true)]
    pub reload_wait: Option<String>,
    /// Port of the supervisor's status server: /metrics, /healthz, /readyz, /status [default: 4445]
    #[arg(long, env = "HAPROXY_STATUS_PORT", global = true)]
    pub status_port: Option<String>,
    /// Quiescence before a change that needs no reload is applied live [default: 10ms]
    #[arg(long, env = "HAPROXY_LIVE_WAIT", global = true)]
    pub live_wait: Option<String>,
    /// Never apply changes live through the runtime API: every change reloads
    #[arg(long, env = "HAPROXY_NO_LIVE", global = true)]
    pub no_live: bool,
    /// Directory of PEM bundles (chain and key) served over HTTPS; unset: no TLS
    #[arg(long, env = "HAPROXY_CERTS_DIR", global = true)]
    pub certs_dir: Option<PathBuf>,
    /// CA certificates (PEM) that backends served over TLS are verified against; unset: TLS backends need HAPROXY.BACKEND.TLS_VERIFY=none
    #[arg(long, env = "HAPROXY_BACKEND_CA_FILE", global = true)]
    pub backend_ca_file: Option<PathBuf>,
    /// Port of the HTTPS bind of app_http_in, with HAPROXY_CERTS_DIR [default: 8443]
    #[arg(long, env = "HAPROXY_HTTPS_PORT", global = true)]
    pub https_port: Option<String>,
    /// Sources (IPs and CIDRs, comma-separated) that must send a PROXY protocol header, v1 or v2 [default: none]
    #[arg(long, env = "HAPROXY_PROXY_PROTOCOL_FROM", global = true)]
    pub proxy_protocol_from: Option<String>,
    /// Strict-Transport-Security max-age (seconds) on HTTPS answers [default: none]
    #[arg(long, env = "HAPROXY_HSTS_MAX_AGE", global = true)]
    pub hsts_max_age: Option<String>,
    /// How long an old HAProxy may drain after a reload [default: 60s]
    #[arg(long, env = "HAPROXY_HARD_STOP_AFTER", global = true)]
    pub hard_stop_after: Option<String>,
    /// Graceful stop on SIGTERM before forcing [default: 8s]
    #[arg(long, env = "HAPROXY_STOP_TIMEOUT", global = true)]
    pub stop_timeout: Option<String>,
    /// Hold a catalog answer that removes more than this share of the serving instances, as N% or off [default: 50%]
    #[arg(long, env = "HAPROXY_REMOVAL_GUARD", global = true)]
    pub removal_guard: Option<String>,
    /// How long such an answer is held before answers that still say so apply it [default: 30s]
    #[arg(long, env = "HAPROXY_REMOVAL_GUARD_GRACE", global = true)]
    pub removal_guard_grace: Option<String>,
}

/// A setting that did not parse: names the variable, its flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var} (--{flag}) = {value:?}: {reason}")]
pub struct SettingsError {
    pub var: &'static str,
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

/// A setting's names, as clap's definition of [`Options`] gives them: the
/// only place a variable or a flag is named. `names!` takes them by the
/// field of [`Options`], checked by the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Names {
    /// The environment variable, e.g. `HAPROXY_DOM`.
    pub var: &'static str,
    /// The flag without its dashes, e.g. `dom`.
    pub flag: &'static str,
    /// Both as messages name a setting: `HAPROXY_DOM / --dom`.
    pub both: &'static str,
}

/// Every argument of [`Options`] by its id (the field's name), read once
/// from clap.
static NAMES: std::sync::LazyLock<std::collections::BTreeMap<&'static str, Names>> =
    std::sync::LazyLock::new(|| {
        // Built once per process from clap's own definition; kept for the
        // life of the process.
        let keep = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        Options::augment_args(clap::Command::new("options"))
            .get_arguments()
            .filter_map(|a| {
                let var = a.get_env()?.to_str()?.to_string();
                let flag = a.get_long()?.to_string();
                let both = format!("{var} / --{flag}");
                Some((
                    keep(a.get_id().to_string()),
                    Names {
                        var: keep(var),
                        flag: keep(flag),
                        both: keep(both),
                    },
                ))
            })
            .collect()
    });

impl Names {
    /// The names of the argument whose id is `id`. Panics when there is no
    /// such argument with a variable and a flag (a unit test covers every
    /// argument); use `names!`, which checks the field exists.
    pub fn of(id: &str) -> Names {
        *NAMES
            .get(id)
            .unwrap_or_else(|| panic!("no option {id:?} with a variable and a flag"))
    }
}

/// The [`Names`] of a field of [`Options`]: `names!(maxconn_global)`
/// (the compiler checks the field exists).
macro_rules! names {
    ($field:ident) => {{
        let _ = |o: &Options| {
            let _ = &o.$field;
        };
        Names::of(stringify!($field))
    }};
}

/// The variables that hold the Consul token: the supervisor's alone, taken
/// out of the environment its children inherit.
pub fn secret_vars() -> [&'static str; 2] {
    [names!(consul_token).var, names!(consul_token_file).var]
}

/// `HAPROXY_USER`: whom HAProxy drops to after binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaproxyUser {
    /// Unset: `haproxy` when that user exists and we run as root.
    Default,
    /// Set empty: HAProxy keeps the supervisor's user.
    Off,
    /// Set: this user, which must exist.
    Named(String),
}

/// The user the default `HAPROXY_USER` picks (Debian's haproxy package
/// creates it).
pub const DEFAULT_HAPROXY_USER: &str = "haproxy";

impl Default for HaproxyVars {
    fn default() -> Self {
        Settings::from_options(&Options::default())
            .expect("defaults are valid")
            .vars
    }
}

/// Where services come from.
// Built once at start-up: the size of the Consul variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSettings {
    Consul(ConsulConfig),
    File(PathBuf),
    /// `--no-render`: an external watcher writes the config.
    External,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceSettings,
    pub config_file: PathBuf,
    pub run_dir: PathBuf,
    pub haproxy_bin: PathBuf,
    pub template: Option<PathBuf>,
    pub log_format: LogFormat,
    pub vars: HaproxyVars,
    pub reload_strategy: ReloadStrategy,
    pub reload_wait_min: Duration,
    pub reload_wait_max: Duration,
    /// Quiescence before a live change (no reload needed).
    pub live_wait: Duration,
    /// The status server's port.
    pub status_port: u16,
    /// Whether server and map changes are applied through the runtime API.
    pub live_changes: bool,
    pub hard_stop_after: Duration,
    pub stop_timeout: Duration,
    /// `HAPROXY_REMOVAL_GUARD`: an answer removing more than this percent
    /// of the serving instances is held (100: never).
    pub removal_guard_percent: u32,
    pub removal_guard_grace: Duration,
    /// `HAPROXY_USER` as given; [`Settings::resolve_user`] turns it into
    /// `vars.user` / `vars.group`.
    pub haproxy_user: HaproxyUser,
    /// `HAPROXY_CERTS_DIR`: TLS termination is on when set.
    pub certs_dir: Option<PathBuf>,
}

fn err(n: Names, value: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        var: n.var,
        flag: n.flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn int(
    v: &Option<String>,
    n: Names,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, SettingsError> {
    let Some(s) = v else { return Ok(default) };
    let i: u32 = s
        .parse()
        .map_err(|_| err(n, s, format!("expected an integer {min}..={max}")))?;
    if i < min || i > max {
        return Err(err(n, s, format!("must be in {min}..={max}")));
    }
    Ok(i)
}

fn port(v: &Option<String>, n: Names, default: u16) -> Result<u16, SettingsError> {
    Ok(int(v, n, default as u32, 1, 65535)? as u16)
}

/// A duration written into the config verbatim: validated, then kept as text.
fn timeout(
    v: &Option<String>,
    n: Names,
    default: &str,
) -> Result<(String, Duration), SettingsError> {
    let s = v.as_deref().unwrap_or(default);
    let d = duration::parse(s).map_err(|e| err(n, s, e.to_string()))?;
    Ok((s.to_string(), d))
}

/// HAProxy's largest time value: 2147483647 ms (about 24.8 days); a
/// longer one makes `haproxy -c` fail with "timer overflow".
const HAPROXY_MAX_TIME: Duration = Duration::from_millis(i32::MAX as u64);

/// A duration written into the config as a time value: [`timeout`], and no
/// longer than HAProxy takes.
fn config_timeout(
    v: &Option<String>,
    n: Names,
    default: &str,
) -> Result<(String, Duration), SettingsError> {
    let (s, d) = timeout(v, n, default)?;
    if d > HAPROXY_MAX_TIME {
        return Err(err(
            n,
            &s,
            "longer than HAProxy's maximum time value, 2147483647ms (about 24.8 days)",
        ));
    }
    Ok((s, d))
}

impl Settings {
    pub fn from_options(o: &Options) -> Result<Settings, SettingsError> {
        let dom = match &o.dom {
            None => None,
            Some(d) if d.is_empty() => None,
            Some(d) => Some(
                crate::syntax::hostname(d)
                    .ok_or_else(|| err(names!(dom), d, "not a DNS domain name"))?,
            ),
        };
        let log_json = o.log_format == LogFormat::Json;
        let stdout_target = if log_json {
            "stdout format priority"
        } else {
            "stdout format raw"
        };
        let log_target = match &o.local_syslog {
            None => stdout_target.to_string(),
            Some(s) if s.is_empty() => stdout_target.to_string(),
            Some(s) => {
                if !crate::syntax::is_syslog_address(s) {
                    return Err(err(
                        names!(local_syslog),
                        s,
                        "expected host[:port], ip:port or an absolute unix socket path",
                    ));
                }
                s.clone()
            }
        };
        let (hard_stop_after_s, hard_stop_after) =
            config_timeout(&o.hard_stop_after, names!(hard_stop_after), "60s")?;
        let certs_dir = o.certs_dir.clone().filter(|p| !p.as_os_str().is_empty());
        let vars = HaproxyVars {
            dom,
            maxconn_global: int(
                &o.maxconn_global,
                names!(maxconn_global),
                50000,
                1,
                10_000_000,
            )?,
            spread_checks: int(&o.spread_checks, names!(spread_checks), 5, 0, 50)?,
            max_spread_checks: int(
                &o.max_spread_checks,
                names!(max_spread_checks),
                15000,
                0,
                3_600_000,
            )?,
            retries: int(&o.retries, names!(retries), 3, 0, 100)?,
            backlog: int(&o.backlog, names!(backlog), 10000, 1, 10_000_000)?,
            maxconn: int(&o.maxconn, names!(maxconn), 10000, 1, 10_000_000)?,
            timeout_connect: config_timeout(&o.timeout_connect, names!(timeout_connect), "3s")?.0,
            timeout_client: config_timeout(&o.timeout_client, names!(timeout_client), "30s")?.0,
            timeout_server: config_timeout(&o.timeout_server, names!(timeout_server), "30s")?.0,
            timeout_http_keep_alive: config_timeout(
                &o.timeout_http_keep_alive,
                names!(timeout_http_keep_alive),
                "1s",
            )?
            .0,
            timeout_http_request: config_timeout(
                &o.timeout_http_request,
                names!(timeout_http_request),
                "15s",
            )?
            .0,
            timeout_queue: config_timeout(&o.timeout_queue, names!(timeout_queue), "30s")?.0,
            timeout_tunnel: config_timeout(&o.timeout_tunnel, names!(timeout_tunnel), "1h")?.0,
            hard_stop_after: hard_stop_after_s,
            log_target,
            log_json,
            http_port: port(&o.http_port, names!(http_port), 8080)?,
            stats_port: port(&o.stats_port, names!(stats_port), 4444)?,
            stats_bind: stats_bind(o.stats_bind.as_deref())?,
            stats_auth: stats_auth(o.stats_auth.as_deref())?,
            https_port: match &certs_dir {
                Some(_) => Some(port(&o.https_port, names!(https_port), 8443)?),
                None => None,
            },
            hsts_max_age: match o.hsts_max_age.as_deref() {
                None | Some("") => None,
                v => Some(int(
                    &v.map(str::to_string),
                    names!(hsts_max_age),
                    0,
                    0,
                    i32::MAX as u32,
                )?),
            },
            proxy_protocol_from: proxy_protocol_from(o.proxy_protocol_from.as_deref())?,
            user: None,
            group: None,
            backend_ca_file: backend_ca_file(o.backend_ca_file.as_deref())?,
        };
        if let Some(p) = vars.https_port {
            if p == vars.http_port || p == vars.stats_port {
                return Err(err(
                    names!(https_port),
                    &p.to_string(),
                    format!(
                        "must differ from {} and {}",
                        names!(http_port).var,
                        names!(stats_port).var
                    ),
                ));
            }
        }
        if vars.http_port == vars.stats_port {
            return Err(err(
                names!(stats_port),
                &vars.stats_port.to_string(),
                format!("must differ from {}", names!(http_port).var),
            ));
        }

        let reload_strategy = match o.reload_strategy.as_deref() {
            None | Some("inherit") => ReloadStrategy::Inherit,
            Some("seamless") => ReloadStrategy::Seamless,
            Some("syn-drop") => ReloadStrategy::SynDrop,
            Some("plain") => ReloadStrategy::Plain,
            Some(s) => {
                return Err(err(
                    names!(reload_strategy),
                    s,
                    "expected inherit, seamless, syn-drop or plain",
                ))
            }
        };
        let wait = o.reload_wait.as_deref().unwrap_or("100ms:1s");
        let (min_s, max_s) = match wait.split_once(':') {
            Some((a, b)) => (a, b),
            None => (wait, wait),
        };
        let bad_wait = |reason: String| err(names!(reload_wait), wait, reason);
        let reload_wait_min = duration::parse(min_s).map_err(|e| bad_wait(e.to_string()))?;
        let reload_wait_max = duration::parse(max_s).map_err(|e| bad_wait(e.to_string()))?;
        if reload_wait_max < reload_wait_min {
            return Err(bad_wait("max must not be below min".into()));
        }
        let live_wait = timeout(&o.live_wait, names!(live_wait), "10ms")?.1;
        let stop_timeout = timeout(&o.stop_timeout, names!(stop_timeout), "8s")?.1;

        let guard = o.removal_guard.as_deref().unwrap_or("50%");
        let removal_guard_percent = match guard {
            "off" => 100,
            g => g
                .strip_suffix('%')
                .unwrap_or(g)
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| err(names!(removal_guard), g, "a share from 1% to 100%, or off"))?,
        };
        let removal_guard_grace =
            timeout(&o.removal_guard_grace, names!(removal_guard_grace), "30s")?.1;

        let source = if o.no_render {
            SourceSettings::External
        } else if let Some(f) = &o.catalog_file {
            SourceSettings::File(f.clone())
        } else {
            SourceSettings::Consul(consul_config(o)?)
        };

        Ok(Settings {
            source,
            config_file: o
                .config_file
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/haproxy/haproxy.cfg")),
            run_dir: o
                .run_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/run/haproxy-supervisor")),
            haproxy_bin: o
                .haproxy_bin
                .clone()
                .unwrap_or_else(|| PathBuf::from("haproxy")),
            template: o.template.clone().filter(|p| !p.as_os_str().is_empty()),
            log_format: o.log_format,
            vars,
            reload_strategy,
            reload_wait_min,
            reload_wait_max,
            live_wait: live_wait.min(reload_wait_max),
            status_port: port(&o.status_port, names!(status_port), 4445)?,
            live_changes: !o.no_live,
            hard_stop_after,
            stop_timeout,
            removal_guard_percent,
            removal_guard_grace,
            haproxy_user: haproxy_user(o.haproxy_user.as_deref())?,
            certs_dir,
        })
    }

    /// The settings for this machine: [`Settings::from_options`], with
    /// `HAPROXY_USER` resolved against the user `facts` looked up and the
    /// global maxconn fitted to the open-files limit. Pure: `facts` are read
    /// by the caller ([`Facts::read`]); the notes are for the log.
    pub fn build(o: &Options, facts: &Facts) -> Result<(Settings, Notes), SettingsError> {
        let s = Settings::from_options(o)?;
        let (account, user_note) = resolve_user(&s.haproxy_user, facts)?;
        let fit = facts.fd_limit.and_then(|limit| {
            fitted_maxconn(s.vars.maxconn_global, None, limit).map(|m| (m, limit))
        });
        let fd_note = fit.map(|(fit, limit)| {
            format!(
                "{}={} needs about {} open files but the limit is {limit}; using maxconn {fit}",
                names!(maxconn_global).var,
                s.vars.maxconn_global,
                2 * s.vars.maxconn_global as u64 + FD_RESERVE,
            )
        });
        let (user, group) = account.unzip();
        let vars = HaproxyVars {
            user,
            group,
            maxconn_global: fit.map_or(s.vars.maxconn_global, |(m, _)| m),
            ..s.vars
        };
        Ok((
            Settings { vars, ..s },
            Notes {
                user: user_note,
                fd_fit: fd_note,
            },
        ))
    }

    /// The admin socket HAProxy exposes its listeners on (for `-x`).
    pub fn admin_socket(&self) -> PathBuf {
        self.run_dir.join("admin.sock")
    }
}

/// What the machine says that the settings depend on, read once at
/// start-up ([`Facts::read`]) and passed to [`Settings::build`]; a test
/// passes its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The open-files limit in force, once raised; `None`: unknown.
    pub fd_limit: Option<u64>,
    /// Whether the supervisor runs as root (only root can switch users).
    pub root: bool,
    /// The user `HAPROXY_USER` names (or [`DEFAULT_HAPROXY_USER`]), as the
    /// user database answered.
    pub user: UserLookup,
}

/// The user database's answer for the user HAProxy is to run as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UserLookup {
    /// Not asked: `HAPROXY_USER` is empty (or not a user name).
    #[default]
    NotAsked,
    /// The user exists; `group` is its primary group's name, when it has
    /// one (`gid` names it otherwise).
    Found { group: Option<String>, gid: u32 },
    /// No such user.
    Missing,
    /// The database could not be read.
    Failed(String),
}

impl Facts {
    /// Reads the user database for the user `o` asks for, and whether we
    /// are root; `fd_limit` is the caller's (it raises the limit first:
    /// [`crate::process::raise_fd_limit`]).
    pub fn read(o: &Options, fd_limit: Option<u64>) -> Facts {
        use nix::unistd::{Group, Uid, User};
        let name = match haproxy_user(o.haproxy_user.as_deref()) {
            Ok(HaproxyUser::Default) => Some(DEFAULT_HAPROXY_USER.to_string()),
            Ok(HaproxyUser::Named(n)) => Some(n),
            Ok(HaproxyUser::Off) | Err(_) => None,
        };
        let user = match name.map(|n| User::from_name(&n)) {
            None => UserLookup::NotAsked,
            Some(Ok(Some(u))) => UserLookup::Found {
                group: Group::from_gid(u.gid).ok().flatten().map(|g| g.name),
                gid: u.gid.as_raw(),
            },
            Some(Ok(None)) => UserLookup::Missing,
            Some(Err(e)) => UserLookup::Failed(e.to_string()),
        };
        Facts {
            fd_limit,
            root: Uid::effective().is_root(),
            user,
        }
    }
}

/// What building the settings has to say, logged once logging is set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// HAProxy will run as root, and why.
    pub user: Option<String>,
    /// The global maxconn was lowered to fit the open-files limit.
    pub fd_fit: Option<String>,
}

/// The `user` and `group` HAProxy serves as.
type Account = (String, String);

/// `HAPROXY_USER` against the machine's users: the `user` / `group` HAProxy
/// drops to (the user's primary group). The default picks
/// [`DEFAULT_HAPROXY_USER`] when it exists and we are root (only root can
/// switch); otherwise HAProxy keeps our user, and the note says so when that
/// user is root. A named user that does not exist is an error.
fn resolve_user(
    setting: &HaproxyUser,
    facts: &Facts,
) -> Result<(Option<Account>, Option<String>), SettingsError> {
    let n = names!(haproxy_user);
    let (name, explicit) = match setting {
        HaproxyUser::Off => {
            return Ok((
                None,
                facts
                    .root
                    .then(|| format!("{} is empty: HAProxy runs as root", n.var)),
            ));
        }
        HaproxyUser::Default => (DEFAULT_HAPROXY_USER, false),
        HaproxyUser::Named(name) => (name.as_str(), true),
    };
    let bad = |reason: String| err(n, name, reason);
    let group = match &facts.user {
        UserLookup::Found { group, gid } => (group, gid),
        UserLookup::Missing if explicit => return Err(bad("no such user on this machine".into())),
        UserLookup::Failed(e) if explicit => {
            return Err(bad(format!("cannot look the user up: {e}")))
        }
        _ => {
            return Ok((
                None,
                facts.root.then(|| {
                    format!(
                        "no {DEFAULT_HAPROXY_USER:?} user on this machine: HAProxy runs as root (set {} to an unprivileged user)",
                        n.var
                    )
                }),
            ));
        }
    };
    if !explicit && !facts.root {
        // Not root: HAProxy could not switch users, and needs not.
        return Ok((None, None));
    }
    let group = match group {
        (Some(g), _) if is_account_name(g) => g.clone(),
        (_, gid) => {
            return Err(bad(format!(
                "the user's primary group {gid} has no usable name"
            )))
        }
    };
    Ok((Some((name.to_string(), group)), None))
}

/// A user or group name HAProxy's `user` / `group` can carry verbatim.
fn is_account_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

fn haproxy_user(v: Option<&str>) -> Result<HaproxyUser, SettingsError> {
    match v {
        None => Ok(HaproxyUser::Default),
        Some("") => Ok(HaproxyUser::Off),
        Some(n) if is_account_name(n) => Ok(HaproxyUser::Named(n.to_string())),
        Some(n) => Err(err(
            names!(haproxy_user),
            n,
            "expected a user name (letters, digits, '.', '_', '-') or nothing",
        )),
    }
}

/// `HAPROXY_STATS_BIND`: an IP address (unset or empty: every address).
/// `HAPROXY_BACKEND_CA_FILE`: an absolute path HAProxy can take verbatim
/// (no space, quote or `#`), of a readable file holding at least one PEM
/// certificate. Read at start so a typo stops the supervisor with a clear
/// message instead of every TLS backend failing its checks.
fn backend_ca_file(v: Option<&Path>) -> Result<Option<String>, SettingsError> {
    let Some(p) = v.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let n = names!(backend_ca_file);
    let shown = p.display().to_string();
    let s = p
        .to_str()
        .filter(|s| crate::syntax::is_path(s))
        .ok_or_else(|| {
            err(
                n,
                &shown,
                "expected an absolute path of letters, digits and /._~%!$&*+,;=:@-",
            )
        })?;
    let text = std::fs::read(p).map_err(|e| err(n, &shown, format!("cannot read it: {e}")))?;
    if !text
        .windows(27)
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(err(n, &shown, "holds no PEM certificate"));
    }
    Ok(Some(s.to_string()))
}

fn stats_bind(v: Option<&str>) -> Result<String, SettingsError> {
    match v {
        None | Some("") => Ok("*".to_string()),
        Some(s) => match s.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => Ok(a.to_string()),
            Ok(std::net::IpAddr::V6(a)) => Ok(format!("[{a}]")),
            Err(_) => Err(err(
                names!(stats_bind),
                s,
                "expected an IP address such as 127.0.0.1 or ::1",
            )),
        },
    }
}

/// `HAPROXY_PROXY_PROTOCOL_FROM`: a comma-separated list of IPv4 or IPv6
/// addresses and networks (`10.0.0.0/8`, `192.168.1.5`, `2001:db8::/32`),
/// nothing else (no spaces, no empty items, no host bits set in a
/// network: `10.0.0.1/8` is a mistake for `10.0.0.0/8` or `10.0.0.1`).
/// Written in canonical form, each once, in the order given.
fn proxy_protocol_from(v: Option<&str>) -> Result<Vec<String>, SettingsError> {
    use std::net::IpAddr;
    let Some(s) = v.filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    let n = names!(proxy_protocol_from);
    let mut out: Vec<String> = Vec::new();
    for item in s.split(',') {
        let bad = |reason: String| err(n, s, format!("{item:?}: {reason}"));
        if item.is_empty() {
            return Err(bad("an empty item (a stray comma?)".into()));
        }
        let (addr, prefix) = match item.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (item, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected an IPv4 or IPv6 address, or a network such as 10.0.0.0/8 or 2001:db8::/32".into()))?;
        let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
        let canonical = match prefix {
            None => ip.to_string(),
            Some(p) => {
                let len = (!p.is_empty()
                    && p.len() <= 3
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0')))
                .then(|| p.parse::<u32>().ok())
                .flatten()
                .filter(|l| *l <= bits)
                .ok_or_else(|| bad(format!("the prefix length must be 0..={bits}")))?;
                let host_bits = |x: u128, width: u32| {
                    if len == width {
                        0
                    } else {
                        x & ((1u128 << (width - len)) - 1)
                    }
                };
                let stray = match ip {
                    IpAddr::V4(a) => host_bits(u32::from(a) as u128, 32),
                    IpAddr::V6(a) => host_bits(u128::from(a), 128),
                };
                if stray != 0 {
                    return Err(bad(format!(
                        "host bits are set below the /{len} prefix (a network starts at its first address)"
                    )));
                }
                format!("{ip}/{len}")
            }
        };
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// `HAPROXY_STATS_AUTH`: `user:password`, each part non-empty printable
/// ASCII without whitespace, quotes, `#` or backslash (they would change
/// the config line). The value is a secret: an error never repeats it.
fn stats_auth(v: Option<&str>) -> Result<Option<Secret>, SettingsError> {
    let Some(s) = v.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad = |reason: &str| err(names!(stats_auth), "<hidden>", reason);
    if s.len() > 256 {
        return Err(bad("longer than 256 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\"'\\#".contains(&b))
    {
        return Err(bad(
            "only printable ASCII without whitespace, quotes, '#' or backslash",
        ));
    }
    match s.split_once(':') {
        Some((user, pass)) if !user.is_empty() && !pass.is_empty() => Ok(Some(Secret::new(s))),
        _ => Err(bad("expected user:password")),
    }
}

/// A boolean as Consul's variables take it (Go's `strconv.ParseBool`).
fn consul_bool(v: &Option<String>, n: Names, default: bool) -> Result<bool, SettingsError> {
    match v.as_deref() {
        None | Some("") => Ok(default),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(s) => Err(err(n, s, "expected true or false")),
    }
}

fn nonempty_path(p: &Option<PathBuf>) -> Option<PathBuf> {
    p.clone().filter(|p| !p.as_os_str().is_empty())
}

/// The Consul source's settings: addresses, token, TLS, datacenter and
/// consistency, each checked here and named when wrong.
fn consul_config(o: &Options) -> Result<ConsulConfig, SettingsError> {
    let https = consul_bool(&o.consul_ssl, names!(consul_ssl), false)?;
    let (urls, urls_from) = match (&o.consul, &o.consul_server) {
        (Some(u), _) if !u.trim().is_empty() => {
            (consul_urls(u, names!(consul), https)?, names!(consul).both)
        }
        (_, Some(s)) if !s.trim().is_empty() => (
            consul_urls(s, names!(consul_server), https)?,
            names!(consul_server).both,
        ),
        _ => (
            vec![if https {
                "https://127.0.0.1:8500"
            } else {
                "http://127.0.0.1:8500"
            }
            .to_string()],
            "the default address",
        ),
    };
    let mut cfg = ConsulConfig::new(String::new());
    cfg.urls = urls;
    cfg.urls_from = urls_from;
    cfg.token = match (nonempty_path(&o.consul_token_file), &o.consul_token) {
        (Some(f), _) => Token::File(f),
        (None, Some(t)) if !t.is_empty() => Token::Value(t.clone()),
        _ => Token::None,
    };
    if let Token::Value(t) = &cfg.token {
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                names!(consul_token),
                "<hidden>",
                "expected one line of printable ASCII",
            ));
        }
    }
    cfg.tls = TlsConfig {
        cacert: nonempty_path(&o.consul_cacert),
        client_cert: nonempty_path(&o.consul_client_cert),
        client_key: nonempty_path(&o.consul_client_key),
        skip_verify: !consul_bool(&o.consul_ssl_verify, names!(consul_ssl_verify), true)?,
    };
    match (&cfg.tls.client_cert, &cfg.tls.client_key) {
        (Some(c), None) => {
            return Err(err(
                names!(consul_client_key),
                "",
                format!(
                    "{} ({}) is set: its private key is needed too",
                    names!(consul_client_cert).var,
                    c.display()
                ),
            ))
        }
        (None, Some(k)) => {
            return Err(err(
                names!(consul_client_cert),
                "",
                format!(
                    "{} ({}) is set: the certificate is needed too",
                    names!(consul_client_key).var,
                    k.display()
                ),
            ))
        }
        _ => {}
    }
    cfg.datacenter = match o.consul_datacenter.as_deref() {
        None | Some("") => None,
        Some(dc)
            if dc.len() <= 64
                && dc
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) =>
        {
            Some(dc.to_string())
        }
        Some(dc) => {
            return Err(err(
                names!(consul_datacenter),
                dc,
                "expected a datacenter name (letters, digits, '_', '-', '.')",
            ))
        }
    };
    if let Some(ns) = o.consul_namespace.as_deref().filter(|n| !n.is_empty()) {
        return Err(err(names!(consul_namespace),
            ns,
            "namespaces are a Consul Enterprise feature this supervisor does not support; unset it to read the default namespace",
        ));
    }
    cfg.consistency = match o.consul_max_stale.as_deref() {
        None | Some("") => Consistency::Default,
        Some(s) => {
            let d =
                duration::parse(s).map_err(|e| err(names!(consul_max_stale), s, e.to_string()))?;
            if d.is_zero() {
                Consistency::Default
            } else {
                Consistency::Stale { max_stale: d }
            }
        }
    };
    if let Some(s) = o.consul_max_answer.as_deref().filter(|s| !s.is_empty()) {
        cfg.max_answer = byte_size(s)
            .filter(|n| (MIN_ANSWER..=MAX_ANSWER).contains(n))
            .ok_or_else(|| {
                err(
                    names!(consul_max_answer),
                    s,
                    "a size from 64KiB to 4GiB: bytes, or a number with KiB, MiB or GiB",
                )
            })?;
    }
    if let Some(s) = o.consul_wait.as_deref().filter(|s| !s.is_empty()) {
        let d = duration::parse(s).map_err(|e| err(names!(consul_wait), s, e.to_string()))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d) {
            return Err(err(
                names!(consul_wait),
                s,
                "must be from 1s to 10m (Consul caps a blocking wait at 10m)",
            ));
        }
        cfg.wait = d;
    }
    Ok(cfg)
}

/// Bounds of `HAPROXY_CONSUL_MAX_ANSWER`.
const MIN_ANSWER: u64 = 64 << 10;
const MAX_ANSWER: u64 = 4 << 30;

/// `1048576`, `512KiB`, `32MiB`, `1GiB` (also `K`/`M`/`G`, `KB`/`MB`/`GB`,
/// all binary: these are buffer sizes, not disk sizes).
fn byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let shift = match s[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// A comma-separated list of Consul addresses, each as [`consul_url`].
fn consul_urls(s: &str, n: Names, https: bool) -> Result<Vec<String>, SettingsError> {
    let mut urls = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(err(n, s, "an empty address in the list"));
        }
        let u = consul_url(part, n, https)?;
        if urls.contains(&u) {
            return Err(err(n, s, format!("{u} is listed twice")));
        }
        urls.push(u);
    }
    Ok(urls)
}

/// Accepts `http(s)://host:port[/]` or a bare `host:port` (https when
/// `CONSUL_HTTP_SSL` is true).
fn consul_url(s: &str, n: Names, https: bool) -> Result<String, SettingsError> {
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else if https {
        format!("https://{s}")
    } else {
        format!("http://{s}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| err(n, s, e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(err(
            n,
            s,
            "expected http://host:port, https://host:port or host:port",
        ));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Options)) -> Result<Settings, SettingsError> {
        let mut o = Options::default();
        f(&mut o);
        Settings::from_options(&o)
    }

    #[test]
    fn defaults_follow_the_seed() {
        let s = with(|_| {}).unwrap();
        assert_eq!(s.vars.maxconn_global, 50000);
        assert_eq!(s.vars.spread_checks, 5);
        assert_eq!(s.vars.max_spread_checks, 15000);
        assert_eq!(s.vars.retries, 3);
        assert_eq!(s.vars.backlog, 10000);
        assert_eq!(s.vars.maxconn, 10000);
        assert_eq!(s.vars.timeout_connect, "3s");
        assert_eq!(s.vars.timeout_http_keep_alive, "1s");
        assert_eq!(s.vars.http_port, 8080);
        assert_eq!(s.vars.stats_port, 4444);
        assert_eq!(s.reload_strategy, ReloadStrategy::Inherit);
        assert_eq!(s.reload_wait_min, Duration::from_millis(100));
        assert_eq!(s.reload_wait_max, Duration::from_secs(1));
        assert_eq!(s.stop_timeout, Duration::from_secs(8));
        assert_eq!(
            s.source,
            SourceSettings::Consul(ConsulConfig {
                urls_from: "the default address",
                ..ConsulConfig::new("http://127.0.0.1:8500")
            })
        );
    }

    #[test]
    fn consul_answer_bound_and_wait_are_validated() {
        let s = with(|_| {}).unwrap();
        assert_eq!(consul(&s).max_answer, 32 << 20);
        assert_eq!(consul(&s).wait, Duration::from_secs(55));
        let s = with(|o| {
            o.consul_max_answer = Some("4MiB".into());
            o.consul_wait = Some("2s".into());
        })
        .unwrap();
        assert_eq!(consul(&s).max_answer, 4 << 20);
        assert_eq!(consul(&s).wait, Duration::from_secs(2));
        let s = with(|o| o.consul_max_answer = Some("100000".into())).unwrap();
        assert_eq!(consul(&s).max_answer, 100_000);
        for bad in ["", "abc", "1k", "5TiB", "-1", "12 parsecs"] {
            let r = with(|o| o.consul_max_answer = Some(bad.into()));
            if bad.is_empty() {
                assert!(r.is_ok());
            } else {
                assert_eq!(r.unwrap_err().var, "HAPROXY_CONSUL_MAX_ANSWER", "{bad}");
            }
        }
        for bad in ["0s", "500ms", "11m", "soon"] {
            let e = with(|o| o.consul_wait = Some(bad.into())).unwrap_err();
            assert_eq!(e.var, "HAPROXY_CONSUL_WAIT", "{bad}");
        }
    }

    #[test]
    fn consul_server_is_the_fallback() {
        let s = with(|o| o.consul_server = Some("consul:8500".into())).unwrap();
        assert_eq!(consul(&s).urls, ["http://consul:8500"]);
        let s = with(|o| {
            o.consul_server = Some("consul:8500".into());
            o.consul = Some("https://c.example:8501".into());
        })
        .unwrap();
        assert_eq!(consul(&s).urls, ["https://c.example:8501"]);
    }

    fn consul(s: &Settings) -> &ConsulConfig {
        match &s.source {
            SourceSettings::Consul(c) => c,
            other => panic!("not consul: {other:?}"),
        }
    }

    #[test]
    fn consul_addresses_tls_token_and_consistency() {
        let s = with(|o| {
            o.consul = Some("127.0.0.5:8501, https://10.0.0.2:8501/,http://10.0.0.3:8500".into());
            o.consul_ssl = Some("true".into());
        })
        .unwrap();
        assert_eq!(
            consul(&s).urls,
            [
                "https://127.0.0.5:8501",
                "https://10.0.0.2:8501",
                "http://10.0.0.3:8500"
            ]
        );
        for bad in ["a:1,,b:2", "a:1,a:1", "a:1,ftp://b"] {
            let e = with(|o| o.consul = Some(bad.into())).unwrap_err();
            assert_eq!(e.var, "CONSUL_HTTP_ADDR", "{bad}");
        }
        let e = with(|o| o.consul_ssl = Some("yes".into())).unwrap_err();
        assert_eq!(e.var, "CONSUL_HTTP_SSL");
        let e = with(|o| o.consul_ssl_verify = Some("no".into())).unwrap_err();
        assert_eq!(e.var, "CONSUL_HTTP_SSL_VERIFY");
        let s = with(|o| o.consul_ssl_verify = Some("false".into())).unwrap();
        assert!(consul(&s).tls.skip_verify);
        let e = with(|o| o.consul_client_cert = Some("c.pem".into())).unwrap_err();
        assert_eq!(e.var, "CONSUL_CLIENT_KEY");
        let e = with(|o| o.consul_client_key = Some("k.pem".into())).unwrap_err();
        assert_eq!(e.var, "CONSUL_CLIENT_CERT");

        // The token file wins over the token, as in Consul's clients.
        let s = with(|o| {
            o.consul_token = Some("s3cret".into());
            o.consul_token_file = Some("/run/token".into());
        })
        .unwrap();
        assert_eq!(consul(&s).token, Token::File("/run/token".into()));
        assert!(!format!("{s:?}").contains("s3cret"));
        let s = with(|o| o.consul_token = Some("s3cret".into())).unwrap();
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");

        let s = with(|o| o.consul_datacenter = Some("eu-west_1".into())).unwrap();
        assert_eq!(consul(&s).datacenter.as_deref(), Some("eu-west_1"));
        let e = with(|o| o.consul_datacenter = Some("dc1&stale".into())).unwrap_err();
        assert_eq!(e.var, "CONSUL_DATACENTER");
        let e = with(|o| o.consul_namespace = Some("team-a".into())).unwrap_err();
        assert_eq!(e.var, "CONSUL_NAMESPACE");

        assert_eq!(
            with(|_| {}).unwrap().source,
            with(|o| o.consul_max_stale = Some("0s".into()))
                .unwrap()
                .source
        );
        let s = with(|o| o.consul_max_stale = Some("2s".into())).unwrap();
        assert_eq!(
            consul(&s).consistency,
            Consistency::Stale {
                max_stale: Duration::from_secs(2)
            }
        );
        let e = with(|o| o.consul_max_stale = Some("2 s".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_CONSUL_MAX_STALE");
    }

    #[test]
    fn the_removal_guard_takes_a_share_or_off() {
        let s = with(|_| {}).unwrap();
        assert_eq!(
            (s.removal_guard_percent, s.removal_guard_grace),
            (50, Duration::from_secs(30))
        );
        let s = with(|o| o.removal_guard = Some("off".into())).unwrap();
        assert_eq!(s.removal_guard_percent, 100);
        let s = with(|o| o.removal_guard = Some("25".into())).unwrap();
        assert_eq!(s.removal_guard_percent, 25);
        for bad in ["0%", "101%", "half", "-5%", ""] {
            let e = with(|o| o.removal_guard = Some(bad.into())).unwrap_err();
            assert_eq!(e.var, "HAPROXY_REMOVAL_GUARD", "{bad:?}");
        }
        let e = with(|o| o.removal_guard_grace = Some("soon".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_REMOVAL_GUARD_GRACE");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = with(|o| o.http_port = Some("70000".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_HTTP_PORT");
        assert!(e.to_string().contains("70000"), "{e}");
        let e = with(|o| o.reload_strategy = Some("fast".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_RELOAD_STRATEGY");
        let e = with(|o| o.timeout_client = Some("30 s".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_TIMEOUT_CLIENT");
        let e = with(|o| o.timeout_client = Some("30s\n    option x".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_TIMEOUT_CLIENT");
        let e = with(|o| o.reload_wait = Some("1s:100ms".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_RELOAD_WAIT");
        let e = with(|o| o.maxconn = Some("-1".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_MAXCONN");
        let e = with(|o| o.dom = Some("bad domain".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_DOM");
        let e = with(|o| o.local_syslog = Some("1.2.3.4:514 local0\nx".into())).unwrap_err();
        assert_eq!(e.var, "LOCAL_SYSLOG");
        let e = with(|o| o.stats_port = Some("8080".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_STATS_PORT");
        let e = with(|o| o.consul = Some("ftp://x".into())).unwrap_err();
        assert_eq!(e.var, "CONSUL_HTTP_ADDR");
    }

    /// HAProxy refuses a time value over 2147483647 ms ("timer overflow"
    /// in `haproxy -c`): such a timeout is a bad setting, not a config
    /// that fails its check.
    #[test]
    fn config_time_values_stay_within_haproxys_maximum() {
        let ok = with(|o| {
            o.timeout_queue = Some("24d".into());
            o.hard_stop_after = Some("596h".into());
        })
        .unwrap();
        assert_eq!(ok.vars.timeout_queue, "24d");
        for (v, set) in [
            (
                "HAPROXY_TIMEOUT_CONNECT",
                (|o: &mut Options| o.timeout_connect = Some("25d".into())) as fn(&mut Options),
            ),
            ("HAPROXY_TIMEOUT_CLIENT", |o| {
                o.timeout_client = Some("999999999d".into())
            }),
            ("HAPROXY_TIMEOUT_SERVER", |o| {
                o.timeout_server = Some("35792m".into())
            }),
            ("HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE", |o| {
                o.timeout_http_keep_alive = Some("597h".into())
            }),
            ("HAPROXY_TIMEOUT_HTTP_REQUEST", |o| {
                o.timeout_http_request = Some("2147484s".into())
            }),
            ("HAPROXY_TIMEOUT_QUEUE", |o| {
                o.timeout_queue = Some("25d".into())
            }),
            ("HAPROXY_HARD_STOP_AFTER", |o| {
                o.hard_stop_after = Some("25d".into())
            }),
        ] {
            let e = with(set).unwrap_err();
            assert_eq!(e.var, v, "{e}");
            assert!(e.reason.contains("2147483647ms"), "{e}");
        }
    }

    #[test]
    fn tls_settings() {
        let s = with(|_| {}).unwrap();
        assert_eq!((s.certs_dir, s.vars.https_port), (None, None));
        let s = with(|o| o.certs_dir = Some("/certs".into())).unwrap();
        assert_eq!(s.vars.https_port, Some(8443));
        let e = with(|o| {
            o.certs_dir = Some("/certs".into());
            o.https_port = Some("8080".into());
        })
        .unwrap_err();
        assert_eq!(e.var, "HAPROXY_HTTPS_PORT");
        let e = with(|o| o.hsts_max_age = Some("a year".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_HSTS_MAX_AGE");
        let s = with(|o| o.hsts_max_age = Some("31536000".into())).unwrap();
        assert_eq!(s.vars.hsts_max_age, Some(31536000));
    }

    #[test]
    fn proxy_protocol_sources_are_parsed_strictly() {
        assert!(with(|_| {}).unwrap().vars.proxy_protocol_from.is_empty());
        let s = with(|o| {
            o.proxy_protocol_from =
                Some("10.0.0.0/8,192.168.1.5,2001:DB8::/32,::1,0.0.0.0/0,10.0.0.0/8".into())
        })
        .unwrap();
        assert_eq!(
            s.vars.proxy_protocol_from,
            [
                "10.0.0.0/8",
                "192.168.1.5",
                "2001:db8::/32",
                "::1",
                "0.0.0.0/0"
            ]
        );
        for bad in [
            "10.0.0.0/8,",
            "10.0.0.0/8, 10.1.0.0/16",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/",
            "::/129",
            "10.0.0",
            "example.com",
            "10.0.0.0/8 #",
            "[::1]",
            "10.0.0.0/8\n",
        ] {
            let e = with(|o| o.proxy_protocol_from = Some(bad.into())).unwrap_err();
            assert_eq!(e.var, "HAPROXY_PROXY_PROTOCOL_FROM", "{bad}");
        }
        let e = with(|o| o.proxy_protocol_from = Some("10.0.0.1/8".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid HAPROXY_PROXY_PROTOCOL_FROM (--proxy-protocol-from) = \"10.0.0.1/8\": \"10.0.0.1/8\": host bits are set below the /8 prefix (a network starts at its first address)"
        );
    }

    #[test]
    fn the_backend_ca_file_is_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, empty) = (dir.path().join("ca.pem"), dir.path().join("empty.pem"));
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&empty, "").unwrap();
        let s = with(|o| o.backend_ca_file = Some(ca.clone())).unwrap();
        assert_eq!(s.vars.backend_ca_file.as_deref(), ca.to_str());
        assert_eq!(with(|_| {}).unwrap().vars.backend_ca_file, None);
        for (path, why) in [
            (dir.path().join("missing.pem"), "cannot read it"),
            (empty, "holds no PEM certificate"),
            ("relative.pem".into(), "absolute path"),
            (dir.path().join("a b.pem"), "absolute path"),
        ] {
            let e = with(|o| o.backend_ca_file = Some(path.clone())).unwrap_err();
            let e = e.to_string();
            assert!(
                e.contains("HAPROXY_BACKEND_CA_FILE") && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn stats_bind_is_an_ip_address() {
        assert_eq!(with(|_| {}).unwrap().vars.stats_bind, "*");
        let s = with(|o| o.stats_bind = Some("127.0.0.1".into())).unwrap();
        assert_eq!(s.vars.stats_bind, "127.0.0.1");
        let s = with(|o| o.stats_bind = Some("::1".into())).unwrap();
        assert_eq!(s.vars.stats_bind, "[::1]");
        for bad in ["localhost", "127.0.0.1:80", "*", "127.0.0.1 \n", "[::1]"] {
            let e = with(|o| o.stats_bind = Some(bad.into())).unwrap_err();
            assert_eq!(e.var, "HAPROXY_STATS_BIND", "{bad:?}");
        }
    }

    #[test]
    fn stats_auth_is_validated_and_never_shown() {
        assert!(with(|_| {}).unwrap().vars.stats_auth.is_none());
        let s = with(|o| o.stats_auth = Some("admin:s3cr$t:x".into())).unwrap();
        assert_eq!(
            s.vars.stats_auth.as_ref().map(Secret::expose),
            Some("admin:s3cr$t:x")
        );
        // Neither Debug nor an error shows the password.
        assert!(!format!("{s:?}").contains("s3cr"), "{s:?}");
        for bad in [
            "adminzq",
            ":zq",
            "zq:",
            "admin:zq word",
            "admin:zq\"",
            "admin:zq'",
            "admin:zq#",
            "admin:zq\\",
            "admin:zq\nstats enable",
            "admin:zqä",
        ] {
            let e = with(|o| o.stats_auth = Some(bad.into())).unwrap_err();
            assert_eq!(e.var, "HAPROXY_STATS_AUTH", "{bad:?}");
            assert!(!e.to_string().contains("zq"), "{e}");
        }
    }

    #[test]
    fn haproxy_user_setting() {
        assert_eq!(with(|_| {}).unwrap().haproxy_user, HaproxyUser::Default);
        let s = with(|o| o.haproxy_user = Some(String::new())).unwrap();
        assert_eq!(s.haproxy_user, HaproxyUser::Off);
        let s = with(|o| o.haproxy_user = Some("www-data".into())).unwrap();
        assert_eq!(s.haproxy_user, HaproxyUser::Named("www-data".into()));
        let e = with(|o| o.haproxy_user = Some("a b".into())).unwrap_err();
        assert_eq!(e.var, "HAPROXY_USER");

        // Resolution against this machine's users.
        let build = |v: Option<&str>| {
            let o = Options {
                haproxy_user: v.map(str::to_string),
                ..Options::default()
            };
            Settings::build(&o, &Facts::read(&o, None)).map(|(s, _)| s)
        };
        assert_eq!(
            build(Some("no-such-user-here")).unwrap_err().var,
            "HAPROXY_USER"
        );
        assert_eq!(build(Some("")).unwrap().vars.user, None);
        let s = build(Some("root")).unwrap();
        assert_eq!(s.vars.user.as_deref(), Some("root"));
        assert_eq!(s.vars.group.as_deref(), Some("root"));
        // The default: the haproxy user when it exists and we are root.
        let s = build(None).unwrap();
        let exists = nix::unistd::User::from_name(DEFAULT_HAPROXY_USER)
            .ok()
            .flatten()
            .is_some();
        let root = nix::unistd::Uid::effective().is_root();
        assert_eq!(
            s.vars.user.as_deref(),
            (exists && root).then_some(DEFAULT_HAPROXY_USER)
        );
        assert_eq!(s.vars.group.is_some(), s.vars.user.is_some());
    }

    fn build(
        f: impl FnOnce(&mut Options),
        facts: Facts,
    ) -> Result<(Settings, Notes), SettingsError> {
        let mut o = Options::default();
        f(&mut o);
        Settings::build(&o, &facts)
    }

    fn found(group: &str) -> UserLookup {
        UserLookup::Found {
            group: Some(group.into()),
            gid: 7,
        }
    }

    /// The user HAProxy runs as, decided from facts passed in: no machine
    /// needed.
    #[test]
    fn the_user_is_resolved_from_the_facts() {
        let root = |user| Facts {
            root: true,
            user,
            fd_limit: None,
        };
        let user = |s: &Settings| (s.vars.user.clone(), s.vars.group.clone());
        let pair = |u: &str, g: &str| (Some(u.to_string()), Some(g.to_string()));
        // The default user, when it exists and we are root.
        let (s, n) = build(|_| {}, root(found("haproxy"))).unwrap();
        assert_eq!((user(&s), n.user), (pair("haproxy", "haproxy"), None));
        // Not root: HAProxy keeps our user, silently.
        let (s, n) = build(
            |_| {},
            Facts {
                root: false,
                ..root(found("haproxy"))
            },
        )
        .unwrap();
        assert_eq!((user(&s), n.user), ((None, None), None));
        // No such default user: root, with a note naming the variable.
        let (s, n) = build(|_| {}, root(UserLookup::Missing)).unwrap();
        assert_eq!(user(&s), (None, None));
        assert!(n
            .user
            .unwrap()
            .contains("set HAPROXY_USER to an unprivileged user"));
        let (_, n) = build(|_| {}, root(UserLookup::Failed("EIO".into()))).unwrap();
        assert!(n.user.is_some());
        // Empty: root, said so; not root: nothing to say.
        let off = |o: &mut Options| o.haproxy_user = Some(String::new());
        let (s, n) = build(off, root(UserLookup::NotAsked)).unwrap();
        assert_eq!(user(&s), (None, None));
        assert_eq!(
            n.user.as_deref(),
            Some("HAPROXY_USER is empty: HAProxy runs as root")
        );
        let (_, n) = build(off, Facts::default()).unwrap();
        assert_eq!(n.user, None);
        // Named: it must exist, with a usable group, root or not.
        let www = |o: &mut Options| o.haproxy_user = Some("www-data".into());
        let (s, _) = build(
            www,
            Facts {
                root: false,
                ..root(found("www-data"))
            },
        )
        .unwrap();
        assert_eq!(user(&s), pair("www-data", "www-data"));
        let e = build(www, root(UserLookup::Missing)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid HAPROXY_USER (--haproxy-user) = \"www-data\": no such user on this machine"
        );
        let e = build(www, root(UserLookup::Failed("EIO: I/O error".into()))).unwrap_err();
        assert_eq!(e.reason, "cannot look the user up: EIO: I/O error");
        let nameless = UserLookup::Found {
            group: None,
            gid: 4242,
        };
        let e = build(www, root(nameless)).unwrap_err();
        assert_eq!(e.reason, "the user's primary group 4242 has no usable name");
        let e = build(www, root(found("bad group"))).unwrap_err();
        assert_eq!(e.var, "HAPROXY_USER");
    }

    /// The global maxconn fitted to the open-files limit at build time, as
    /// [`fitted_maxconn`] without servers.
    #[test]
    fn the_global_maxconn_is_fitted_when_built() {
        let limit = |fd_limit| Facts {
            fd_limit,
            ..Facts::default()
        };
        let (s, n) = build(|_| {}, limit(None)).unwrap();
        assert_eq!((s.vars.maxconn_global, n.fd_fit), (50000, None));
        let (s, n) = build(|_| {}, limit(Some(101_000))).unwrap();
        assert_eq!((s.vars.maxconn_global, n.fd_fit), (50000, None));
        let (s, n) = build(|_| {}, limit(Some(20000))).unwrap();
        assert_eq!(s.vars.maxconn_global, 9500);
        assert_eq!(
            n.fd_fit.as_deref(),
            Some("HAPROXY_MAXCONN_GLOBAL=50000 needs about 101000 open files but the limit is 20000; using maxconn 9500")
        );
        let (s, _) = build(
            |o| o.maxconn_global = Some("100".into()),
            limit(Some(20000)),
        )
        .unwrap();
        assert_eq!(s.vars.maxconn_global, 100);
        // The rest is what from_options builds.
        let (s, _) = build(|_| {}, limit(Some(20000))).unwrap();
        let plain = with(|_| {}).unwrap();
        assert_eq!(
            HaproxyVars {
                maxconn_global: 50000,
                ..s.vars
            },
            plain.vars
        );
    }

    /// Every argument has its variable and its flag, taken from clap; no
    /// two share one.
    #[test]
    fn every_option_has_a_variable_and_a_flag() {
        let cmd = Options::augment_args(clap::Command::new("options"));
        let mut vars = std::collections::BTreeSet::new();
        let mut flags = std::collections::BTreeSet::new();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            let env = a.get_env().and_then(|e| e.to_str());
            assert!(env.is_some(), "--{id} has no environment variable");
            assert!(a.get_long().is_some(), "{id} has no flag");
            let n = Names::of(id);
            assert_eq!(Some(n.var), env);
            assert_eq!(n.both, format!("{} / --{}", n.var, n.flag));
            assert!(vars.insert(n.var), "{} twice", n.var);
            assert!(flags.insert(n.flag), "--{} twice", n.flag);
        }
        assert_eq!(NAMES.len(), cmd.get_arguments().count());
        assert_eq!(
            secret_vars(),
            ["CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"]
        );
    }

    /// The errors name the variable and the flag of the field that is wrong,
    /// in the same words as before the names came from clap.
    #[test]
    fn every_error_names_its_variable_and_flag() {
        type Set = fn(&mut Options);
        let cases: [(Set, &str); 10] = [
            (|o| o.dom = Some("bad domain".into()), "invalid HAPROXY_DOM (--dom) = \"bad domain\": not a DNS domain name"),
            (|o| o.maxconn_global = Some("x".into()), "invalid HAPROXY_MAXCONN_GLOBAL (--maxconn-global) = \"x\": expected an integer 1..=10000000"),
            (|o| o.timeout_http_keep_alive = Some("25d".into()), "invalid HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE (--timeout-http-keep-alive) = \"25d\": longer than HAProxy's maximum time value, 2147483647ms (about 24.8 days)"),
            (|o| o.stats_port = Some("8080".into()), "invalid HAPROXY_STATS_PORT (--stats-port) = \"8080\": must differ from HAPROXY_HTTP_PORT"),
            (|o| { o.certs_dir = Some("/c".into()); o.https_port = Some("4444".into()) }, "invalid HAPROXY_HTTPS_PORT (--https-port) = \"4444\": must differ from HAPROXY_HTTP_PORT and HAPROXY_STATS_PORT"),
            (|o| o.reload_wait = Some("1s:1ms".into()), "invalid HAPROXY_RELOAD_WAIT (--reload-wait) = \"1s:1ms\": max must not be below min"),
            (|o| o.stats_auth = Some("nocolon".into()), "invalid HAPROXY_STATS_AUTH (--stats-auth) = \"<hidden>\": expected user:password"),
            (|o| o.consul_server = Some("a:1,a:1".into()), "invalid CONSUL_SERVER (--consul-server) = \"a:1,a:1\": http://a:1 is listed twice"),
            (|o| o.consul_client_cert = Some("c.pem".into()), "invalid CONSUL_CLIENT_KEY (--consul-client-key) = \"\": CONSUL_CLIENT_CERT (c.pem) is set: its private key is needed too"),
            (|o| o.consul_ssl_verify = Some("nope".into()), "invalid CONSUL_HTTP_SSL_VERIFY (--consul-ssl-verify) = \"nope\": expected true or false"),
        ];
        for (set, message) in cases {
            assert_eq!(with(set).unwrap_err().to_string(), message);
        }
        // The source a Consul address came from, named the same way.
        let s = with(|o| o.consul_server = Some("c:8500".into())).unwrap();
        assert_eq!(consul(&s).urls_from, "CONSUL_SERVER / --consul-server");
        let s = with(|o| o.consul = Some("c:8500".into())).unwrap();
        assert_eq!(consul(&s).urls_from, "CONSUL_HTTP_ADDR / --consul");
    }
}
