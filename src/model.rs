//! The catalog as discovered ([`Catalog`]) and the validated desired state
//! built from it ([`Desired`]).
//!
//! Everything in a [`Catalog`] came from outside (Consul or a file) and is
//! untrusted. [`Desired::build`] accepts a value only when it is exactly of
//! the form SPEC §3 gives; anything else makes that one service invalid, with
//! a [`Warning`] naming the service and the tag, and every other service
//! still renders. So every string in a [`Desired`] is safe to write into
//! haproxy.cfg and map files verbatim: no whitespace, quote, `#` or newline.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::syntax::strict_int;
pub use crate::syntax::{
    hostname, is_path, is_server_name, is_service_name, is_syslog_address, MAX_NAME,
};

/// A snapshot of discovered services, keyed by service name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub services: BTreeMap<String, CatalogService>,
}

/// One service as discovered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogService {
    /// Service-level tags: the union of every instance's tags, passing or
    /// not. They decide whether the service is exposed and how, so a service
    /// whose instances are all failing keeps its route and answers 503.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Instances; only `passing` ones become servers.
    #[serde(default)]
    pub instances: Vec<Instance>,
    /// Seniority: the lowest Consul `CreateIndex` of the service's
    /// instances, or the service's position in the catalog file. When two
    /// services claim the same host (+ path) or frontend port, the lower
    /// value keeps it (ties: the first by name), so a newcomer never takes
    /// a route from the service that holds it, and the owner is the same
    /// after a restart (SPEC §12).
    #[serde(default)]
    pub created: u64,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub address: String,
    pub port: i64,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "default_weight")]
    pub weight: i64,
    #[serde(default = "default_passing")]
    pub passing: bool,
}

fn default_weight() -> i64 {
    1
}
fn default_passing() -> bool {
    true
}

/// The on-disk catalog file: a list, so the service name is a field.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatalogFile {
    pub services: Vec<CatalogFileService>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogFileService {
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub instances: Vec<Instance>,
}

impl Catalog {
    /// Builds a catalog from the file shape. Service-level tags default to
    /// the union of the instances' tags; services listed twice are merged.
    /// A service's seniority (`created`) is its first position in the file:
    /// the earlier listed keeps a contested route.
    pub fn from_file(file: CatalogFile) -> Catalog {
        let mut services: BTreeMap<String, CatalogService> = BTreeMap::new();
        for (position, s) in file.services.into_iter().enumerate() {
            let entry = services.entry(s.name).or_insert_with(|| CatalogService {
                created: position as u64,
                ..CatalogService::default()
            });
            entry.tags.extend(s.tags);
            for i in &s.instances {
                entry.tags.extend(i.tags.iter().cloned());
            }
            entry.instances.extend(s.instances);
        }
        for s in services.values_mut() {
            s.tags.sort();
            s.tags.dedup();
        }
        Catalog { services }
    }

    /// Parses the catalog file format.
    pub fn parse_file(text: &str) -> Result<Catalog, serde_json::Error> {
        serde_json::from_str::<CatalogFile>(text).map(Catalog::from_file)
    }
}

/// HAProxy backend/frontend mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Http,
    Tcp,
}

/// A validated service, ready to render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// The service name; also the backend name.
    pub name: String,
    pub mode: Mode,
    pub balance: String,
    pub maxconn: Option<u32>,
    pub frontend_port: Option<u16>,
    /// Host names routed to this service on the shared HTTP frontend.
    pub vhosts: Vec<String>,
    /// Path prefix, without a trailing `/` (never `/` alone: that is no
    /// path). It matches itself and what continues it after a `/`.
    pub path: Option<String>,
    pub healthcheck: Option<String>,
    pub sticky: bool,
    /// `HAPROXY.HTTPS_REDIRECT=true`: plain HTTP answers a permanent
    /// redirect to HTTPS (when TLS is on).
    pub https_redirect: bool,
    /// `HAPROXY.ROUTE.WEIGHT`: the service may share its route with one
    /// other service that declares a weight too (canary, blue-green).
    pub route_weight: Option<u32>,
    /// `HAPROXY.ROUTE.STICKY=true`: a shared route sends a client (by
    /// address) to the same side while the weights stay.
    pub route_sticky: bool,
    /// `HAPROXY.TLS=passthrough`: TLS for its hosts (`vhosts`) is passed
    /// untouched to its servers on the HTTPS port, chosen by SNI. Its
    /// backend is TCP (`mode` is [`Mode::Tcp`]), it has no frontend port.
    pub passthrough: bool,
    /// `HAPROXY.BACKEND.PROTO`: how HAProxy speaks to the servers.
    pub backend_proto: BackendProto,
    /// How a TLS backend's certificate is checked: set exactly when
    /// `backend_proto` is a TLS one.
    pub backend_tls: Option<BackendTls>,
    /// `HAPROXY.BACKEND.PROXY_PROTOCOL`: a PROXY protocol header on every
    /// connection to the servers (their health checks too).
    pub backend_proxy_protocol: Option<ProxyProtocol>,
    pub servers: Vec<Server>,
    /// Per-service rules (`HAPROXY.PATH.STRIP`, `HAPROXY.ALLOW`, ...):
    /// data the running HAProxy reads from maps ([`crate::rules`]).
    pub rules: crate::rules::Rules,
}

/// `HAPROXY.BACKEND.PROTO`. The names are those of the wire: `h1` and
/// `h2c` (IANA's name for HTTP/2 over cleartext TCP), each with `-tls`
/// when HAProxy opens TLS to the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum BackendProto {
    /// HTTP/1.1 over TCP (the default; what the seed always did).
    #[default]
    #[serde(rename = "h1")]
    H1,
    /// HTTP/2 over cleartext TCP, with prior knowledge (gRPC servers).
    #[serde(rename = "h2c")]
    H2c,
    /// HTTP/1.1 over TLS.
    #[serde(rename = "h1-tls")]
    H1Tls,
    /// HTTP/2 over TLS (ALPN `h2`).
    #[serde(rename = "h2-tls")]
    H2Tls,
}

pub const BACKEND_PROTOS: &[&str] = &["h1", "h2c", "h1-tls", "h2-tls"];

impl BackendProto {
    fn parse(s: &str) -> Option<BackendProto> {
        Some(match s {
            "h1" => BackendProto::H1,
            "h2c" => BackendProto::H2c,
            "h1-tls" => BackendProto::H1Tls,
            "h2-tls" => BackendProto::H2Tls,
            _ => return None,
        })
    }
    pub fn tls(self) -> bool {
        matches!(self, BackendProto::H1Tls | BackendProto::H2Tls)
    }
    pub fn h2(self) -> bool {
        matches!(self, BackendProto::H2c | BackendProto::H2Tls)
    }
}

/// The TLS to a backend: whom its certificate must come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendTls {
    /// `HAPROXY_BACKEND_CA_FILE`; `None` only with
    /// `HAPROXY.BACKEND.TLS_VERIFY=none` (no check at all).
    pub ca_file: Option<String>,
    /// `HAPROXY.BACKEND.TLS_NAME`: sent as SNI and required in the
    /// certificate (`verifyhost`).
    pub name: Option<String>,
}

/// `HAPROXY.BACKEND.PROXY_PROTOCOL`: `v1` (text) or `v2` (binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// A validated server line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    pub name: String,
    /// `ip:port`, `[ipv6]:port` or `host:port`.
    pub address: String,
    pub weight: u32,
}

/// Why a service (or part of it) was left out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub service: String,
    /// The tag or field at fault (`HAPROXY.BACKEND.MAXCONN`, `instance id`, ...).
    pub tag: String,
    /// What is wrong, and what was done instead when the service stays.
    pub message: String,
    /// The service is left out of the config (it stays otherwise, adjusted
    /// or without what the tag asked for).
    pub left_out: bool,
    /// For a contested route or port: the service that holds it (which
    /// claimed it first).
    pub held_by: Option<String>,
}

impl Warning {
    /// Logs it: event [`Event::Warning`](crate::events::Event::Warning)
    /// with the fields `service`, `tag` (both escaped, so a hostile name
    /// cannot forge a log line), `reason` (the message) and `left_out`;
    /// for a contested route or port, `held_by` (the holder, escaped too).
    pub fn log(&self) {
        let held_by = self.held_by.as_ref().map(|s| s.escape_debug().to_string());
        crate::log!(
            warn,
            crate::events::Event::Warning,
            service = %self.service.escape_debug(),
            tag = %self.tag.escape_debug(),
            reason = %self.message,
            left_out = self.left_out,
            held_by = held_by.as_deref(),
            "{self}"
        );
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tag may be an unknown key straight from Consul: escaped, so a
        // newline in it cannot forge a log line.
        write!(
            f,
            "service {:?}: {}: {}{}",
            self.service,
            self.tag.escape_debug(),
            self.message,
            if self.left_out {
                "; service left out"
            } else {
                ""
            }
        )
    }
}

/// The validated desired state: what haproxy.cfg must express.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Desired {
    /// Sorted by name.
    pub services: Vec<Service>,
    /// The HTTPS bind, when certificates are served (filled by the
    /// supervisor from [`crate::tls`], not from the catalog).
    pub tls: Option<TlsFrontend>,
    /// Routes two services share by weight (canary, blue-green), sorted.
    pub splits: Vec<Split>,
}

/// A route (its hosts and path) held by `owner` and shared with `other`:
/// `percent` of its requests go to `other` (`HAPROXY.ROUTE.WEIGHT` of
/// each: other / (owner + other); 0 when both are 0), drawn per request
/// or, when `sticky`, from the client's address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Split {
    pub owner: String,
    pub other: String,
    pub percent: u32,
    pub sticky: bool,
}

pub const TAG_PREFIX: &str = "HAPROXY.";
pub const KNOWN_TAGS: &[&str] = &[
    "HAPROXY.ENABLE",
    "HAPROXY.PROTOCOL",
    "HAPROXY.BACKEND.BALANCE",
    "HAPROXY.BACKEND.MAXCONN",
    "HAPROXY.FRONTEND.PORT",
    "HAPROXY.VHOST",
    "HAPROXY.PATH",
    "HAPROXY.BACKEND.HEALTHCHECK",
    "HAPROXY.BACKEND.STICKY",
    "HAPROXY.HTTPS_REDIRECT",
    "HAPROXY.ROUTE.WEIGHT",
    "HAPROXY.ROUTE.STICKY",
    "HAPROXY.TLS",
    "HAPROXY.BACKEND.PROTO",
    "HAPROXY.BACKEND.TLS_VERIFY",
    "HAPROXY.BACKEND.TLS_NAME",
    "HAPROXY.BACKEND.PROXY_PROTOCOL",
];
pub const BALANCES: &[&str] = &[
    "roundrobin",
    "static-rr",
    "leastconn",
    "first",
    "source",
    "random",
    "uri",
];
/// True when an instance's or service's tags expose it.
pub fn enabled(tags: &[String]) -> bool {
    tags.iter().any(|t| t == "HAPROXY.ENABLE=true")
}

/// Renders `address:port` for a server line, or `None` if the address is not
/// an IPv4 address, an IPv6 address or a host name.
fn server_address(addr: &str, port: i64) -> Option<String> {
    if !(1..=65535).contains(&port) {
        return None;
    }
    if addr.parse::<Ipv4Addr>().is_ok() {
        Some(format!("{addr}:{port}"))
    } else if let Ok(v6) = addr.parse::<Ipv6Addr>() {
        Some(format!("[{v6}]:{port}"))
    } else {
        hostname(addr).map(|h| format!("{h}:{port}"))
    }
}

/// The HAPROXY.* tags of a service, one value per key.
struct Tags<'a> {
    values: BTreeMap<&'a str, &'a str>,
}

/// Settings the model needs from the environment.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub dom: Option<String>,
    /// Ports the config binds besides per-service frontends.
    pub reserved_ports: Vec<u16>,
    /// The HTTPS port (`HAPROXY_CERTS_DIR` set): where TLS passthrough
    /// services are served.
    pub https_port: Option<u16>,
    /// `HAPROXY_BACKEND_CA_FILE`.
    pub backend_ca_file: Option<String>,
}

impl From<&HaproxyVars> for Context {
    fn from(v: &HaproxyVars) -> Context {
        Context {
            dom: v.dom.clone(),
            reserved_ports: [v.http_port, v.stats_port]
                .into_iter()
                .chain(v.https_port)
                .collect(),
            https_port: v.https_port,
            backend_ca_file: v.backend_ca_file.clone(),
        }
    }
}

struct Invalid {
    tag: String,
    message: String,
}

fn invalid(tag: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        tag: tag.to_string(),
        message: message.into(),
    }
}

impl Desired {
    /// Validates a catalog. Returns the desired state and the warnings, both
    /// deterministic for a given catalog.
    ///
    /// Contested routes: a host (+ path) or a frontend port claimed by two
    /// valid services belongs to the senior one (the lower
    /// [`CatalogService::created`], then the first by name); the other is
    /// left out with a warning naming both.
    pub fn build(catalog: &Catalog, ctx: &Context) -> (Desired, Vec<Warning>) {
        let mut warnings = Vec::new();
        let mut valid: Vec<(u64, Service)> = Vec::new();
        for (name, cs) in &catalog.services {
            if !enabled(&cs.tags) {
                // `HAPROXY.ENABLE=TRUE`, `=yes`...: most likely meant to expose.
                if let Some(t) = cs.tags.iter().find(|t| {
                    t.strip_prefix("HAPROXY.ENABLE=")
                        .is_some_and(|v| v != "false")
                }) {
                    warnings.push(Warning {
                        service: name.clone(),
                        tag: "HAPROXY.ENABLE".into(),
                        message: format!(
                            "{t:?}: only HAPROXY.ENABLE=true exposes a service; not exposed"
                        ),
                        left_out: false,
                        held_by: None,
                    });
                }
                continue;
            }
            let mut warn = |tag: &str, message: String, left_out: bool| {
                warnings.push(Warning {
                    service: name.clone(),
                    tag: tag.to_string(),
                    message,
                    left_out,
                    held_by: None,
                })
            };
            match build_service(name, cs, ctx, &mut |tag, message| warn(tag, message, false)) {
                Err(e) => warn(&e.tag, e.message, true),
                Ok(svc) => valid.push((cs.created, svc)),
            }
        }

        // Claims are granted by seniority; the catalog is keyed by name, so
        // the stable sort keeps ties in name order.
        valid.sort_by_key(|(created, _)| *created);
        let mut ports: BTreeMap<u16, Option<String>> =
            ctx.reserved_ports.iter().map(|p| (*p, None)).collect();
        let mut routes: BTreeMap<(String, String), String> = BTreeMap::new();
        // Each route owner's routes, sorted, and the shared routes.
        let mut owned: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let mut splits: Vec<Split> = Vec::new();
        let mut services: Vec<Service> = Vec::with_capacity(valid.len());
        // A host is one service's on the HTTPS port: a passthrough
        // service's (SNI) or those of the HTTP routes on it.
        let mut sni: BTreeMap<String, String> = BTreeMap::new();
        let mut http_hosts: BTreeMap<String, String> = BTreeMap::new();
        for (_, svc) in valid {
            let mut refuse = |tag: &str, message: String, held_by: Option<&String>| {
                warnings.push(Warning {
                    service: svc.name.clone(),
                    tag: tag.to_string(),
                    message,
                    left_out: true,
                    held_by: held_by.cloned(),
                })
            };
            if let Some(p) = svc.frontend_port {
                match ports.get(&p) {
                    None => {}
                    Some(None) => {
                        refuse(
                            "HAPROXY.FRONTEND.PORT",
                            format!("port {p} is bound by the HTTP frontend or the stats listener"),
                            None,
                        );
                        continue;
                    }
                    Some(Some(owner)) => {
                        refuse(
                            "HAPROXY.FRONTEND.PORT",
                            format!(
                                "port {p} is held by service {owner:?}, which claimed it first"
                            ),
                            Some(owner),
                        );
                        continue;
                    }
                }
            }
            let my_routes: Vec<(String, String)> = if svc.mode == Mode::Http {
                svc.vhosts
                    .iter()
                    .map(|h| (h.clone(), svc.path.clone().unwrap_or_default()))
                    .collect()
            } else {
                Vec::new()
            };
            if let Some((r, owner)) = my_routes
                .iter()
                .find_map(|r| routes.get(r).map(|owner| (r, owner)))
            {
                // Canary / blue-green: both declare a weight, the
                // newcomer claims exactly the owner's routes, and the
                // owner shares with no one yet.
                let owner_svc = services.iter().find(|s: &&Service| &s.name == owner);
                let same_routes = owned.get(owner).is_some_and(|o| {
                    let mut mine = my_routes.clone();
                    mine.sort();
                    *o == mine
                });
                if let Some(o) = owner_svc.filter(|o| {
                    o.route_weight.is_some()
                        && svc.route_weight.is_some()
                        && same_routes
                        && svc.frontend_port.is_none()
                        && !splits.iter().any(|s: &Split| s.owner == o.name)
                }) {
                    let (wo, wn) = (o.route_weight.unwrap_or(0), svc.route_weight.unwrap_or(0));
                    let percent = (wn * 100 + (wo + wn) / 2).checked_div(wo + wn).unwrap_or(0);
                    splits.push(Split {
                        owner: o.name.clone(),
                        other: svc.name.clone(),
                        percent,
                        sticky: o.route_sticky || svc.route_sticky,
                    });
                    services.push(svc);
                    continue;
                }
                let why = if svc.route_weight.is_some() {
                    " (a shared route needs HAPROXY.ROUTE.WEIGHT on both, the same hosts and path, and no third service)"
                } else {
                    ""
                };
                refuse(
                    "HAPROXY.VHOST",
                    format!(
                        "route {}{} is held by service {owner:?}, which claimed it first{why}",
                        r.0, r.1
                    ),
                    Some(owner),
                );
                continue;
            }
            let held = svc.vhosts.iter().find_map(|h| {
                let owner = sni.get(h).map(|o| (o, " (TLS passthrough)")).or_else(|| {
                    http_hosts
                        .get(h)
                        .filter(|_| svc.passthrough)
                        .map(|o| (o, ""))
                })?;
                Some((h, owner))
            });
            if let Some((h, (owner, how))) = held {
                let owner = owner.clone();
                refuse(
                    "HAPROXY.VHOST",
                    format!("host {h} is held by service {owner:?}{how}, which claimed it first"),
                    Some(&owner),
                );
                continue;
            }
            if let Some(p) = svc.frontend_port {
                ports.insert(p, Some(svc.name.clone()));
            }
            let mut mine = my_routes.clone();
            mine.sort();
            owned.insert(svc.name.clone(), mine);
            for h in &svc.vhosts {
                let hosts = if svc.passthrough {
                    &mut sni
                } else {
                    &mut http_hosts
                };
                hosts.entry(h.clone()).or_insert_with(|| svc.name.clone());
            }
            for r in my_routes {
                routes.insert(r, svc.name.clone());
            }
            services.push(svc);
        }
        services.sort_by(|a, b| a.name.cmp(&b.name));
        warnings.sort();
        warnings.dedup();
        (
            Desired {
                services,
                tls: None,
                splits: {
                    splits.sort();
                    splits
                },
            },
            warnings,
        )
    }
}

fn build_service(
    name: &str,
    cs: &CatalogService,
    ctx: &Context,
    warn: &mut impl FnMut(&str, String),
) -> Result<Service, Invalid> {
    if !is_service_name(name) {
        return Err(invalid(
            "service name",
            format!(
                "{:?} is not a valid name (letters, digits, '.', '_', '-', at most {MAX_NAME})",
                name
            ),
        ));
    }
    let tags = parse_tags(&cs.tags, warn)?;

    let passthrough = match tags.values.get("HAPROXY.TLS") {
        None | Some(&"terminate") => false,
        Some(&"passthrough") => true,
        Some(v) => {
            return Err(invalid(
                "HAPROXY.TLS",
                format!("{v:?} is not terminate or passthrough"),
            ))
        }
    };
    if passthrough {
        passthrough_fits(&tags, ctx)?;
    }
    let mode = match tags.values.get("HAPROXY.PROTOCOL") {
        None | Some(&"http") if !passthrough => Mode::Http,
        None | Some(&"tcp") => Mode::Tcp,
        Some(v) => {
            return Err(invalid(
                "HAPROXY.PROTOCOL",
                format!("{v:?} is not http or tcp"),
            ))
        }
    };
    let balance = match tags.values.get("HAPROXY.BACKEND.BALANCE") {
        None => "roundrobin".to_string(),
        Some(v) if BALANCES.contains(v) => v.to_string(),
        Some(v) => {
            return Err(invalid(
                "HAPROXY.BACKEND.BALANCE",
                format!("{v:?} is not one of {}", BALANCES.join(", ")),
            ))
        }
    };
    let maxconn = match tags.values.get("HAPROXY.BACKEND.MAXCONN") {
        None => None,
        Some(v) => Some(strict_int(v, 1, 1_000_000).ok_or_else(|| {
            invalid(
                "HAPROXY.BACKEND.MAXCONN",
                format!("{v:?} is not an integer 1..=1000000"),
            )
        })?),
    };
    let frontend_port = match tags.values.get("HAPROXY.FRONTEND.PORT") {
        None => None,
        Some(v) => Some(strict_int(v, 1, 65535).ok_or_else(|| {
            invalid(
                "HAPROXY.FRONTEND.PORT",
                format!("{v:?} is not a port 1..=65535"),
            )
        })? as u16),
    };
    if mode == Mode::Tcp && frontend_port.is_none() && !passthrough {
        return Err(invalid(
            "HAPROXY.FRONTEND.PORT",
            "required when HAPROXY.PROTOCOL=tcp",
        ));
    }
    let vhosts = if mode == Mode::Tcp && !passthrough {
        Vec::new()
    } else {
        match tags.values.get("HAPROXY.VHOST") {
            Some(v) => {
                let mut hosts = Vec::new();
                for h in v.split(',') {
                    let host = hostname(h).ok_or_else(|| {
                        invalid(
                            "HAPROXY.VHOST",
                            format!("{h:?} in {v:?} is not a host name"),
                        )
                    })?;
                    hosts.push(host);
                }
                hosts.sort();
                hosts.dedup();
                hosts
            }
            None => match &ctx.dom {
                None => {
                    return Err(invalid(
                        "HAPROXY.VHOST",
                        "absent and HAPROXY_DOM is unset, so the service has no host name",
                    ))
                }
                Some(dom) => {
                    let host = hostname(&format!("{name}.{dom}")).ok_or_else(|| {
                        invalid(
                            "HAPROXY.VHOST",
                            format!("absent, and {name}.{dom} is not a host name"),
                        )
                    })?;
                    vec![host]
                }
            },
        }
    };
    let path = match tags.values.get("HAPROXY.PATH") {
        None => None,
        // `/api/` is `/api` (it matches `/api` and `/api/...` either way),
        // and `/` is the whole host, the same as no path.
        Some(v) if is_path(v) => Some(v.trim_end_matches('/'))
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        Some(v) => {
            return Err(invalid(
                "HAPROXY.PATH",
                format!("{v:?} is not a path starting with /"),
            ))
        }
    };
    let healthcheck = match tags.values.get("HAPROXY.BACKEND.HEALTHCHECK") {
        None => None,
        Some(v) if is_path(v) => Some(v.to_string()),
        Some(v) => {
            return Err(invalid(
                "HAPROXY.BACKEND.HEALTHCHECK",
                format!("{v:?} is not a path starting with /"),
            ))
        }
    };
    let sticky = match tags.values.get("HAPROXY.BACKEND.STICKY") {
        None => false,
        Some(&"true") => true,
        Some(&"false") => false,
        Some(v) => {
            return Err(invalid(
                "HAPROXY.BACKEND.STICKY",
                format!("{v:?} is not true or false"),
            ))
        }
    };

    let https_redirect = match tags.values.get("HAPROXY.HTTPS_REDIRECT") {
        None | Some(&"false") => false,
        Some(&"true") => true,
        Some(v) => {
            return Err(invalid(
                "HAPROXY.HTTPS_REDIRECT",
                format!("{v:?} is not true or false"),
            ))
        }
    };

    let route_weight = match tags.values.get("HAPROXY.ROUTE.WEIGHT") {
        None => None,
        Some(v) => Some(strict_int(v, 0, 100).ok_or_else(|| {
            invalid(
                "HAPROXY.ROUTE.WEIGHT",
                format!("{v:?} is not an integer 0..=100"),
            )
        })?),
    };
    let route_sticky = match tags.values.get("HAPROXY.ROUTE.STICKY") {
        None | Some(&"false") => false,
        Some(&"true") => true,
        Some(v) => {
            return Err(invalid(
                "HAPROXY.ROUTE.STICKY",
                format!("{v:?} is not true or false"),
            ))
        }
    };
    if mode == Mode::Tcp && (route_weight.is_some() || route_sticky) {
        return Err(invalid(
            "HAPROXY.ROUTE.WEIGHT",
            "only for HTTP services (a TCP service has its own port, no shared route)",
        ));
    }
    let rules = crate::rules::parse(&tags.values, path.as_deref(), mode == Mode::Http)
        .map_err(|b| invalid(&b.tag, b.message))?;
    if frontend_port.is_some() && rules.on_frontend() {
        // The rules are read on the shared frontend: a port of its own
        // would be a way around them (an allow-list, say).
        return Err(invalid(
            "HAPROXY.FRONTEND.PORT",
            "a service with rules (HAPROXY.ALLOW, HAPROXY.AUTH, ...) is served on the shared frontend only",
        ));
    }
    let (backend_proto, backend_tls) = backend_protocol(&tags, mode, ctx, warn)?;
    let backend_proxy_protocol = match tags.values.get("HAPROXY.BACKEND.PROXY_PROTOCOL") {
        None => None,
        Some(&"v1") => Some(ProxyProtocol::V1),
        Some(&"v2") => Some(ProxyProtocol::V2),
        Some(v) => {
            return Err(invalid(
                "HAPROXY.BACKEND.PROXY_PROTOCOL",
                format!("{v:?} is not v1 or v2"),
            ))
        }
    };

    let mut instances: Vec<&Instance> = cs
        .instances
        .iter()
        .filter(|i| i.passing && enabled(&i.tags))
        .collect();
    instances.sort_by(|a, b| (&a.id, &a.address, a.port).cmp(&(&b.id, &b.address, b.port)));
    let mut servers = Vec::with_capacity(instances.len());
    let mut names = BTreeSet::new();
    for i in instances {
        if !is_server_name(&i.id) {
            return Err(invalid(
                "instance id",
                format!("{:?} is not a valid server name", i.id),
            ));
        }
        let address = server_address(&i.address, i.port).ok_or_else(|| {
            invalid(
                "instance address",
                format!(
                    "{:?} port {} of instance {} is not an address and port",
                    i.address, i.port, i.id
                ),
            )
        })?;
        // Consul IDs are unique per agent, not per service: keep names unique.
        let mut name = i.id.clone();
        let mut n = 2;
        while !names.insert(name.clone()) {
            name = format!("{}-{n}", i.id);
            n += 1;
        }
        let weight = if i.weight > 256 {
            warn(
                "instance weight",
                format!("weight {} of instance {} capped at 256", i.weight, i.id),
            );
            256
        } else {
            i.weight.max(0) as u32
        };
        servers.push(Server {
            name,
            address,
            weight,
        });
    }

    Ok(Service {
        name: name.to_string(),
        mode,
        balance,
        maxconn,
        frontend_port,
        vhosts,
        path,
        healthcheck,
        sticky,
        https_redirect,
        route_weight,
        route_sticky,
        passthrough,
        backend_proto,
        backend_tls,
        backend_proxy_protocol,
        servers,
        rules,
    })
}

/// What `HAPROXY.TLS=passthrough` excludes: the service is reached on the
/// HTTPS port by the SNI of its host names, with its TLS untouched, so
/// nothing that reads HTTP or needs a port of its own applies.
fn passthrough_fits(tags: &Tags, ctx: &Context) -> Result<(), Invalid> {
    const WHY: &str = "HAPROXY.TLS=passthrough passes TLS untouched to the servers";
    if ctx.https_port.is_none() {
        return Err(invalid(
            "HAPROXY.TLS",
            "passthrough is served on the HTTPS port, and HAPROXY_CERTS_DIR is unset",
        ));
    }
    for (tag, what) in [
        (
            "HAPROXY.PROTOCOL",
            "only tcp (the default with passthrough) fits",
        ),
        (
            "HAPROXY.FRONTEND.PORT",
            "it is reached on the HTTPS port by SNI, not on a port of its own",
        ),
        ("HAPROXY.PATH", "HAProxy never sees the path"),
        (
            "HAPROXY.BACKEND.HEALTHCHECK",
            "an HTTP check is not TLS; the TCP check is used",
        ),
        (
            "HAPROXY.HTTPS_REDIRECT",
            "the service is not served over plain HTTP",
        ),
    ] {
        match tags.values.get(tag) {
            None => {}
            Some(&"tcp") if tag == "HAPROXY.PROTOCOL" => {}
            Some(&"false") if tag == "HAPROXY.HTTPS_REDIRECT" => {}
            Some(v) => return Err(invalid(tag, format!("{v:?}: {WHY}; {what}"))),
        }
    }
    Ok(())
}

/// `HAPROXY.BACKEND.PROTO` with `HAPROXY.BACKEND.TLS_VERIFY` and
/// `HAPROXY.BACKEND.TLS_NAME`. TLS verifies the certificate against
/// `HAPROXY_BACKEND_CA_FILE` (never the system store: backends found in a
/// catalog carry certificates of a private CA, and a public CA would vouch
/// for anyone's); without one the service is left out unless it asks for
/// no verification by name.
fn backend_protocol(
    tags: &Tags,
    mode: Mode,
    ctx: &Context,
    warn: &mut impl FnMut(&str, String),
) -> Result<(BackendProto, Option<BackendTls>), Invalid> {
    let proto = match tags.values.get("HAPROXY.BACKEND.PROTO") {
        None => BackendProto::H1,
        Some(v) => BackendProto::parse(v).ok_or_else(|| {
            invalid(
                "HAPROXY.BACKEND.PROTO",
                format!("{v:?} is not one of {}", BACKEND_PROTOS.join(", ")),
            )
        })?,
    };
    if proto != BackendProto::H1 && mode == Mode::Tcp {
        return Err(invalid(
            "HAPROXY.BACKEND.PROTO",
            "applies to HTTP services only, not with HAPROXY.PROTOCOL=tcp",
        ));
    }
    let verify = match tags.values.get("HAPROXY.BACKEND.TLS_VERIFY") {
        None | Some(&"required") => true,
        Some(&"none") => false,
        Some(v) => {
            return Err(invalid(
                "HAPROXY.BACKEND.TLS_VERIFY",
                format!("{v:?} is not required or none"),
            ))
        }
    };
    let name = match tags.values.get("HAPROXY.BACKEND.TLS_NAME") {
        None => None,
        Some(v) => Some(hostname(v).ok_or_else(|| {
            invalid(
                "HAPROXY.BACKEND.TLS_NAME",
                format!("{v:?} is not a host name"),
            )
        })?),
    };
    if !proto.tls() {
        for tag in ["HAPROXY.BACKEND.TLS_VERIFY", "HAPROXY.BACKEND.TLS_NAME"] {
            if tags.values.contains_key(tag) {
                warn(
                    tag,
                    "no effect without TLS to the backend (HAPROXY.BACKEND.PROTO=h1-tls or h2-tls); ignored"
                        .into(),
                );
            }
        }
        return Ok((proto, None));
    }
    let ca_file = match (verify, &ctx.backend_ca_file) {
        (false, _) => None,
        (true, Some(f)) => Some(f.clone()),
        (true, None) => {
            return Err(invalid(
                "HAPROXY.BACKEND.PROTO",
                "TLS to the backend verifies its certificate against HAPROXY_BACKEND_CA_FILE, \
                 which is unset (set it, or tag HAPROXY.BACKEND.TLS_VERIFY=none)",
            ))
        }
    };
    Ok((proto, Some(BackendTls { ca_file, name })))
}

fn parse_tags<'a>(
    tags: &'a [String],
    warn: &mut impl FnMut(&str, String),
) -> Result<Tags<'a>, Invalid> {
    let mut values: BTreeMap<&str, &str> = BTreeMap::new();
    for t in tags {
        if !t.starts_with(TAG_PREFIX) {
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            warn(t, "HAPROXY tag without '=value'; ignored".into());
            continue;
        };
        if !KNOWN_TAGS.contains(&key) && !crate::rules::is_rule_tag(key) {
            warn(key, "unknown HAPROXY tag (a typo?); ignored".into());
            continue;
        }
        if key == "HAPROXY.ENABLE" {
            continue;
        }
        match values.get(key) {
            None => {
                values.insert(key, value);
            }
            Some(prev) if *prev == value => {}
            Some(prev) => {
                // Instances disagree (a rolling change of tags): keep the
                // smallest value so the result does not depend on order.
                let keep = if value < *prev { value } else { *prev };
                warn(
                    key,
                    format!("instances disagree ({prev:?} and {value:?}); using {keep:?}"),
                );
                values.insert(key, keep);
            }
        }
    }
    Ok(Tags { values })
}

// ---------------------------------------------------------------------------
// Values of the config that come from the supervisor, not the catalog
// ---------------------------------------------------------------------------

/// Values that end up in the rendered config. Every field is validated so it
/// can be written verbatim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HaproxyVars {
    pub dom: Option<String>,
    pub maxconn_global: u32,
    pub spread_checks: u32,
    pub max_spread_checks: u32,
    pub retries: u32,
    pub backlog: u32,
    pub maxconn: u32,
    pub timeout_connect: String,
    pub timeout_client: String,
    pub timeout_server: String,
    pub timeout_http_keep_alive: String,
    pub timeout_http_request: String,
    pub timeout_queue: String,
    /// `timeout tunnel`: an idle upgraded connection (WebSocket) closes.
    pub timeout_tunnel: String,
    pub hard_stop_after: String,
    /// `log` target: `stdout format raw` or a syslog address
    /// (`stdout format priority` with JSON logs: the supervisor reads the
    /// level from the prefix).
    pub log_target: String,
    /// `HAPROXY_LOG_FORMAT=json`: HAProxy's access logs are JSON objects.
    pub log_json: bool,
    pub http_port: u16,
    pub stats_port: u16,
    /// The HTTPS port: set only with `HAPROXY_CERTS_DIR`.
    pub https_port: Option<u16>,
    /// `Strict-Transport-Security: max-age=N` on HTTPS answers.
    pub hsts_max_age: Option<u32>,
    /// `HAPROXY_PROXY_PROTOCOL_FROM`: the sources (canonical IPs and
    /// networks) that must open every connection to a public frontend with
    /// a PROXY protocol header; empty: none.
    pub proxy_protocol_from: Vec<String>,
    /// Address part of the stats listener's `bind`: `*`, an IPv4 address
    /// or a bracketed IPv6 address.
    pub stats_bind: String,
    /// `stats auth` credentials (`user:password`).
    pub stats_auth: Option<Secret>,
    /// `user` and `group` in `global`: whom HAProxy serves as once bound.
    /// Resolved by `settings::Settings::build` from the machine's users.
    pub user: Option<String>,
    pub group: Option<String>,
    /// `HAPROXY_BACKEND_CA_FILE`: the CA file backends served over TLS
    /// are verified against (an absolute path, checked readable at start).
    pub backend_ca_file: Option<String>,
}

/// A value that goes into the config but never into a log: `Debug` hides
/// it; it serializes (for the template) as itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// What the template needs for the HTTPS bind (rendered only when at least
/// one bundle is served: HAProxy does not start an `ssl` bind without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFrontend {
    /// Absolute path of the crt-list the bind loads.
    pub crt_list: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, addr: &str, port: i64, tags: &[&str]) -> Instance {
        Instance {
            id: id.into(),
            address: addr.into(),
            port,
            tags: tags.iter().map(|s| s.to_string()).collect(),
            weight: 1,
            passing: true,
        }
    }

    fn catalog(services: &[(&str, Vec<Instance>)]) -> Catalog {
        Catalog::from_file(CatalogFile {
            services: services
                .iter()
                .map(|(n, i)| CatalogFileService {
                    name: n.to_string(),
                    tags: vec![],
                    instances: i.clone(),
                })
                .collect(),
        })
    }

    fn ctx() -> Context {
        Context {
            dom: Some("example.com".into()),
            reserved_ports: vec![8080, 4444],
            https_port: Some(8443),
            backend_ca_file: None,
        }
    }

    #[test]
    fn seed_tags() {
        let tags = [
            "HAPROXY.ENABLE=true",
            "HAPROXY.PROTOCOL=http",
            "HAPROXY.BACKEND.BALANCE=leastconn",
            "HAPROXY.BACKEND.MAXCONN=10000",
        ];
        let c = catalog(&[(
            "www",
            vec![
                inst("www-2", "10.0.0.2", 80, &tags),
                inst("www-1", "10.0.0.1", 80, &tags),
            ],
        )]);
        let (d, w) = Desired::build(&c, &ctx());
        assert!(w.is_empty(), "{w:?}");
        let s = &d.services[0];
        assert_eq!(s.name, "www");
        assert_eq!(s.balance, "leastconn");
        assert_eq!(s.maxconn, Some(10000));
        assert_eq!(s.vhosts, vec!["www.example.com"]);
        assert_eq!(
            s.servers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["www-1", "www-2"]
        );
        assert_eq!(s.servers[0].address, "10.0.0.1:80");
    }

    #[test]
    fn two_weighted_services_share_a_route_and_a_third_is_left_out() {
        let tags = |w: &'static str| -> Vec<&'static str> {
            vec!["HAPROXY.ENABLE=true", "HAPROXY.VHOST=app.example.com", w]
        };
        let c = catalog(&[
            (
                "blue",
                vec![inst("b", "10.0.0.1", 80, &tags("HAPROXY.ROUTE.WEIGHT=75"))],
            ),
            (
                "green",
                vec![inst("g", "10.0.0.2", 80, &tags("HAPROXY.ROUTE.WEIGHT=25"))],
            ),
            (
                "red",
                vec![inst("r", "10.0.0.3", 80, &tags("HAPROXY.ROUTE.WEIGHT=5"))],
            ),
            (
                "plain",
                vec![inst("p", "10.0.0.4", 80, &tags("HAPROXY.PATH=/x"))],
            ),
        ]);
        let (d, w) = Desired::build(&c, &ctx());
        let names: Vec<&str> = d.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["blue", "green", "plain"], "{w:?}");
        assert_eq!(
            d.splits,
            [Split {
                owner: "blue".into(),
                other: "green".into(),
                percent: 25,
                sticky: false
            }]
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(
            (w[0].service.as_str(), w[0].tag.as_str()),
            ("red", "HAPROXY.VHOST")
        );
        // Without a weight on both, the newcomer is left out, as before.
        let c = catalog(&[
            (
                "blue",
                vec![inst("b", "10.0.0.1", 80, &tags("HAPROXY.ROUTE.WEIGHT=75"))],
            ),
            (
                "green",
                vec![inst(
                    "g",
                    "10.0.0.2",
                    80,
                    &["HAPROXY.ENABLE=true", "HAPROXY.VHOST=app.example.com"],
                )],
            ),
        ]);
        let (d, w) = Desired::build(&c, &ctx());
        assert_eq!(d.services.len(), 1);
        assert!(d.splits.is_empty() && w.len() == 1, "{w:?}");
    }

    #[test]
    fn not_enabled_is_ignored() {
        let c = catalog(&[(
            "www",
            vec![inst("a", "10.0.0.1", 80, &["HAPROXY.ENABLE=false"])],
        )]);
        assert!(Desired::build(&c, &ctx()).0.services.is_empty());
    }

    #[test]
    fn bad_tag_excludes_only_that_service() {
        let c = catalog(&[
            (
                "bad",
                vec![inst(
                    "a",
                    "10.0.0.1",
                    80,
                    &["HAPROXY.ENABLE=true", "HAPROXY.BACKEND.MAXCONN=10 0"],
                )],
            ),
            (
                "good",
                vec![inst("b", "10.0.0.2", 80, &["HAPROXY.ENABLE=true"])],
            ),
        ]);
        let (d, w) = Desired::build(&c, &ctx());
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.services[0].name, "good");
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].service, "bad");
        assert_eq!(w[0].tag, "HAPROXY.BACKEND.MAXCONN");
    }

    #[test]
    fn ipv6_and_hostnames() {
        assert_eq!(server_address("::1", 80).as_deref(), Some("[::1]:80"));
        assert_eq!(
            server_address("Web.Local", 80).as_deref(),
            Some("web.local:80")
        );
        assert_eq!(server_address("a b", 80), None);
        assert_eq!(server_address("10.0.0.1", 0), None);
        assert_eq!(server_address("10.0.0.1", 65536), None);
    }

    #[test]
    fn strict_ints() {
        assert_eq!(strict_int("1", 1, 10), Some(1));
        assert_eq!(strict_int("01", 1, 10), None);
        assert_eq!(strict_int("+1", 1, 10), None);
        assert_eq!(strict_int("11", 1, 10), None);
        assert_eq!(strict_int("99999999999", 1, u32::MAX), None);
    }

    #[test]
    fn port_and_route_conflicts_keep_the_first_by_name() {
        let c = catalog(&[
            (
                "a",
                vec![inst(
                    "a1",
                    "10.0.0.1",
                    80,
                    &["HAPROXY.ENABLE=true", "HAPROXY.VHOST=x.com"],
                )],
            ),
            (
                "b",
                vec![inst(
                    "b1",
                    "10.0.0.1",
                    80,
                    &["HAPROXY.ENABLE=true", "HAPROXY.VHOST=x.com"],
                )],
            ),
            (
                "c",
                vec![inst(
                    "c1",
                    "10.0.0.1",
                    80,
                    &[
                        "HAPROXY.ENABLE=true",
                        "HAPROXY.PROTOCOL=tcp",
                        "HAPROXY.FRONTEND.PORT=8080",
                    ],
                )],
            ),
        ]);
        let (d, w) = Desired::build(&c, &ctx());
        assert_eq!(
            d.services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(w.len(), 2, "{w:?}");
    }

    fn names(d: &Desired) -> Vec<&str> {
        d.services.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn the_senior_service_keeps_a_contested_route_or_port() {
        let http = |id: &str, vhost: &str| {
            vec![inst(
                id,
                "10.0.0.1",
                80,
                &["HAPROXY.ENABLE=true", &format!("HAPROXY.VHOST={vhost}")],
            )]
        };
        let tcp = |id: &str| {
            vec![inst(
                id,
                "10.0.0.1",
                80,
                &[
                    "HAPROXY.ENABLE=true",
                    "HAPROXY.PROTOCOL=tcp",
                    "HAPROXY.FRONTEND.PORT=9000",
                ],
            )]
        };
        // In the file, the later-named services come first: they hold.
        let c = catalog(&[
            ("zeta", http("z1", "x.com")),
            ("omega", tcp("o1")),
            ("alpha", http("a1", "x.com,y.com")),
            ("beta", tcp("b1")),
        ]);
        let (d, w) = Desired::build(&c, &ctx());
        assert_eq!(names(&d), ["omega", "zeta"], "{w:?}");
        assert_eq!(w.len(), 2, "{w:?}");
        let alpha = w.iter().find(|w| w.service == "alpha").unwrap();
        assert!(
            alpha.message.contains("\"zeta\"") && alpha.left_out,
            "{alpha}"
        );
        let beta = w.iter().find(|w| w.service == "beta").unwrap();
        assert_eq!(beta.tag, "HAPROXY.FRONTEND.PORT");
        assert!(
            beta.message.contains("\"omega\"") && beta.left_out,
            "{beta}"
        );

        // Consul: the lowest CreateIndex holds, whatever the names.
        let mut c = c;
        c.services.get_mut("alpha").unwrap().created = 5;
        c.services.get_mut("zeta").unwrap().created = 7;
        let (d, _) = Desired::build(&c, &ctx());
        assert!(names(&d).contains(&"alpha") && !names(&d).contains(&"zeta"));
        // A tie: the first by name.
        c.services.get_mut("zeta").unwrap().created = 5;
        let (d, _) = Desired::build(&c, &ctx());
        assert!(names(&d).contains(&"alpha") && !names(&d).contains(&"zeta"));
    }

    #[test]
    fn paths_are_normalised() {
        let svc = |id: &str, path: &str| {
            vec![inst(
                id,
                "10.0.0.1",
                80,
                &[
                    "HAPROXY.ENABLE=true",
                    "HAPROXY.VHOST=x.com",
                    &format!("HAPROXY.PATH={path}"),
                ],
            )]
        };
        let c = catalog(&[("a", svc("a1", "/api/")), ("b", svc("b1", "/"))]);
        let (d, w) = Desired::build(&c, &ctx());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(d.services[0].path.as_deref(), Some("/api"));
        assert_eq!(d.services[1].path, None);
        // `/api/` and `/api` are one route, `/` and no path another.
        let c = catalog(&[
            ("a", svc("a1", "/api/")),
            ("b", svc("b1", "/api")),
            (
                "c",
                vec![inst(
                    "c1",
                    "10.0.0.1",
                    80,
                    &["HAPROXY.ENABLE=true", "HAPROXY.VHOST=x.com"],
                )],
            ),
            ("d", svc("d1", "/")),
        ]);
        let (d, w) = Desired::build(&c, &ctx());
        assert_eq!(names(&d), ["a", "c"], "{w:?}");
    }

    fn one(tags: &[&str], ctx: &Context) -> (Option<Service>, Vec<Warning>) {
        let mut all = vec!["HAPROXY.ENABLE=true"];
        all.extend(tags);
        let c = catalog(&[("g", vec![inst("g1", "10.0.0.1", 80, &all)])]);
        let (mut d, w) = Desired::build(&c, ctx);
        (d.services.pop(), w)
    }

    #[test]
    fn backend_protocols() {
        let with_ca = Context {
            backend_ca_file: Some("/etc/ca.pem".into()),
            ..ctx()
        };
        let (s, w) = one(&[], &ctx());
        let s = s.unwrap();
        assert!(w.is_empty());
        assert_eq!(
            (s.backend_proto, &s.backend_tls, s.backend_proxy_protocol),
            (BackendProto::H1, &None, None)
        );
        let (s, w) = one(&["HAPROXY.BACKEND.PROTO=h2c"], &ctx());
        assert!(w.is_empty());
        assert_eq!(s.unwrap().backend_proto, BackendProto::H2c);
        // TLS verifies against the CA file; without one, left out.
        let (s, w) = one(&["HAPROXY.BACKEND.PROTO=h2-tls"], &ctx());
        assert!(s.is_none());
        assert_eq!(w[0].tag, "HAPROXY.BACKEND.PROTO");
        assert!(w[0].left_out && w[0].message.contains("HAPROXY_BACKEND_CA_FILE"));
        let (s, _) = one(
            &[
                "HAPROXY.BACKEND.PROTO=h2-tls",
                "HAPROXY.BACKEND.TLS_NAME=Grpc.Internal",
            ],
            &with_ca,
        );
        assert_eq!(
            s.unwrap().backend_tls,
            Some(BackendTls {
                ca_file: Some("/etc/ca.pem".into()),
                name: Some("grpc.internal".into())
            })
        );
        // No verification only by name, CA file or not.
        for c in [&ctx(), &with_ca] {
            let (s, _) = one(
                &[
                    "HAPROXY.BACKEND.PROTO=h1-tls",
                    "HAPROXY.BACKEND.TLS_VERIFY=none",
                ],
                c,
            );
            assert_eq!(s.unwrap().backend_tls.unwrap().ca_file, None);
        }
        // TLS options without TLS: a warning, the service stays.
        let (s, w) = one(&["HAPROXY.BACKEND.TLS_VERIFY=none"], &ctx());
        assert!(s.unwrap().backend_tls.is_none());
        assert!(!w[0].left_out && w[0].tag == "HAPROXY.BACKEND.TLS_VERIFY");
        let (s, _) = one(&["HAPROXY.BACKEND.PROXY_PROTOCOL=v2"], &ctx());
        assert_eq!(s.unwrap().backend_proxy_protocol, Some(ProxyProtocol::V2));
        // Bad values leave the service out, naming the tag.
        for (tag, proto) in [
            ("HAPROXY.BACKEND.PROTO=h2", "HAPROXY.BACKEND.PROTO=h2"),
            ("HAPROXY.BACKEND.PROTO=H1", "HAPROXY.BACKEND.PROTO=H1"),
            (
                "HAPROXY.BACKEND.PROXY_PROTOCOL=v3",
                "HAPROXY.BACKEND.PROTO=h1",
            ),
            (
                "HAPROXY.BACKEND.TLS_VERIFY=optional",
                "HAPROXY.BACKEND.PROTO=h1-tls",
            ),
        ] {
            let (s, w) = one(&[tag, proto], &with_ca);
            assert!(s.is_none(), "{tag}");
            assert!(tag.starts_with(&w[0].tag) && w[0].left_out, "{tag}: {w:?}");
        }
        let (s, w) = one(
            &[
                "HAPROXY.BACKEND.TLS_NAME=a b",
                "HAPROXY.BACKEND.PROTO=h1-tls",
            ],
            &with_ca,
        );
        assert!(s.is_none() && w[0].tag == "HAPROXY.BACKEND.TLS_NAME");
        // Only HTTP services speak a backend protocol.
        let (s, w) = one(
            &[
                "HAPROXY.PROTOCOL=tcp",
                "HAPROXY.FRONTEND.PORT=9000",
                "HAPROXY.BACKEND.PROTO=h2c",
            ],
            &ctx(),
        );
        assert!(s.is_none() && w[0].tag == "HAPROXY.BACKEND.PROTO");
    }

    #[test]
    fn passthrough_fits_only_what_tls_passes() {
        let svc = |tags: &[&str]| {
            let mut t = vec!["HAPROXY.ENABLE=true", "HAPROXY.TLS=passthrough"];
            t.extend_from_slice(tags);
            catalog(&[("p", vec![inst("p1", "10.0.0.1", 443, &t)])])
        };
        let (d, w) = Desired::build(&svc(&["HAPROXY.VHOST=a.test"]), &ctx());
        assert!(w.is_empty(), "{w:?}");
        assert!(d.services[0].passthrough && d.services[0].mode == Mode::Tcp);
        assert_eq!(d.services[0].vhosts, ["a.test"]);
        // The default host name, and an explicit tcp protocol.
        let (d, w) = Desired::build(&svc(&["HAPROXY.PROTOCOL=tcp"]), &ctx());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(d.services[0].vhosts, ["p.example.com"]);
        for (tag, bad) in [
            ("HAPROXY.PROTOCOL", "HAPROXY.PROTOCOL=http"),
            ("HAPROXY.FRONTEND.PORT", "HAPROXY.FRONTEND.PORT=9000"),
            ("HAPROXY.PATH", "HAPROXY.PATH=/x"),
            (
                "HAPROXY.BACKEND.HEALTHCHECK",
                "HAPROXY.BACKEND.HEALTHCHECK=/h",
            ),
            ("HAPROXY.HTTPS_REDIRECT", "HAPROXY.HTTPS_REDIRECT=true"),
        ] {
            let (d, w) = Desired::build(&svc(&[bad]), &ctx());
            assert!(d.services.is_empty(), "{bad}");
            assert_eq!((w.len(), w[0].tag.as_str()), (1, tag), "{w:?}");
        }
        // No HTTPS port: nowhere to serve it.
        let no_https = Context {
            https_port: None,
            ..ctx()
        };
        let (d, w) = Desired::build(&svc(&[]), &no_https);
        assert!(d.services.is_empty());
        assert_eq!(w[0].tag, "HAPROXY.TLS");
    }

    #[test]
    fn warnings_cannot_forge_log_lines() {
        let c = catalog(&[(
            "www\nx",
            vec![inst(
                "a",
                "10.0.0.1",
                80,
                &["HAPROXY.ENABLE=true", "HAPROXY.X\nforged=1"],
            )],
        )]);
        let (_, w) = Desired::build(&c, &ctx());
        assert!(!w.is_empty());
        for w in &w {
            assert!(!w.to_string().contains('\n'), "{w}");
        }
    }
}
