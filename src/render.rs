//! Rendering the desired state into haproxy.cfg plus map files (written by
//! [`crate::files`]).
//!
//! Map files are named by a hash of their content (`maps/hosts-<hash>.map`)
//! so a candidate config never changes a file the running config refers to:
//! staging writes new maps beside the old ones and the candidate config to a
//! temporary file; committing is a single `rename` of the config. The output
//! is a pure function of its inputs, so an unchanged catalog gives
//! byte-identical text and never causes a reload.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::listeners::Binds;
use sha2::{Digest, Sha256};

use crate::files::{absolute, maps_dir, server_state_path, Output};
use crate::model::HaproxyVars;
use crate::model::{BackendProto, Desired, Mode, ProxyProtocol, Service};

/// The built-in template, compiled into the binary.
pub const DEFAULT_TEMPLATE: &str = include_str!("../templates/haproxy.cfg.tera");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read template {path}: {source}")]
    ReadTemplate { path: PathBuf, source: io::Error },
    #[error("invalid template {name}: {detail}")]
    Template { name: String, detail: String },
    #[error("rendering failed: {detail}")]
    Render { detail: String },
}

/// Flattens tera's error chain, which hides the useful part in `source()`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A rendered config and the map files it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub config: String,
    /// File name (inside the maps directory) → content.
    pub maps: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct MapPaths {
    hosts: String,
    paths: Option<String>,
    /// SNI → backend of the TLS passthrough services; none without one.
    sni: Option<String>,
}

/// The map files of the per-service rules ([`crate::rules`]), each set
/// only while some service uses that kind of rule (the template has its
/// lines only then).
#[derive(Serialize, Default)]
struct RuleMaps {
    /// Whether any rule map is set.
    any: bool,
    strip: Option<String>,
    /// The depths a `strip` line exists for (1 to
    /// [`crate::rules::MAX_STRIP_DEPTH`]).
    strip_depths: Vec<StripDepth>,
    prefix: Option<String>,
    host: Option<String>,
    timeout: Option<String>,
    redirect: Option<String>,
    allow_on: Option<String>,
    allow_nets: Option<String>,
    allow_pairs: Option<String>,
    deny_nets: Option<String>,
    deny_pairs: Option<String>,
    auth_on: Option<String>,
    auth: Option<String>,
    rate: Option<String>,
    /// Shared routes: owner backend → the other backend, the percent of
    /// requests it gets, and whether the draw is by client address.
    split: Option<String>,
    split_pct: Option<String>,
    split_sticky: Option<String>,
    request_headers: Vec<HeaderRule>,
    response_headers: Vec<HeaderRule>,
}

/// Removing `depth` leading path segments keeps the path's fields (split
/// at `/`, the first one empty) from `field` on.
#[derive(Serialize)]
struct StripDepth {
    depth: usize,
    field: usize,
}

/// A header set from a map: its name and the map.
#[derive(Serialize)]
struct HeaderRule {
    name: String,
    map: String,
}

#[derive(Serialize)]
struct TemplateContext<'a> {
    vars: &'a HaproxyVars,
    /// The per-service rules' maps.
    rules: RuleMaps,
    admin_socket: String,
    /// Where the supervisor puts the serving generation's server state
    /// before a reload (beside the admin socket).
    server_state_file: String,
    maps: MapPaths,
    /// Each service with its backend's name and profile.
    services: Vec<Routed<'a>>,
    /// The `defaults` profiles the backends are made from, one per
    /// distinct combination of backend options in use.
    profiles: Vec<Profile>,
    /// Services with a dedicated `HAPROXY.FRONTEND.PORT` frontend, each
    /// with its `bind` address.
    tcp_frontends: Vec<TcpFrontend<'a>>,
    /// The bind addresses of the fixed frontends: `fd@<n>` for a socket
    /// the supervisor holds, else `*:<port>` ([`crate::listeners`]).
    binds: BindAddrs,
    /// The HTTPS bind (`HAPROXY_CERTS_DIR` with a bundle served), or none.
    tls: Option<&'a crate::model::TlsFrontend>,
    /// With TLS passthrough services, the socket (beside the admin
    /// socket) the HTTPS bind of `app_http_in` listens on: the HTTPS port
    /// hands it every connection it does not pass through.
    tls_socket: String,
}

#[derive(Serialize)]
struct TcpFrontend<'a> {
    #[serde(flatten)]
    service: Routed<'a>,
    bind: String,
}

/// A service as the template sees it: its fields, its backend's name and
/// the profile the backend is made from.
#[derive(Serialize, Clone)]
struct Routed<'a> {
    #[serde(flatten)]
    service: &'a Service,
    backend: String,
    profile: String,
}

/// The backend options a `defaults` profile holds: everything about a
/// backend except its servers (and a TCP stick-table, which no `defaults`
/// section can hold). Services with the same options share one profile,
/// so that on HAProxy 3.4 a new backend is `add backend <name> from
/// <profile>`, a live change.
#[derive(Serialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Profile {
    pub name: String,
    pub mode: Mode,
    pub balance: String,
    pub healthcheck: Option<String>,
    /// HTTP stickiness by cookie (`HAPROXY.BACKEND.STICKY` on HTTP).
    pub cookie: bool,
    /// Plain HTTP redirected to HTTPS (`HAPROXY.HTTPS_REDIRECT` with TLS on).
    pub https_redirect: bool,
    /// gzip for text types (`HAPROXY.COMPRESS`).
    pub compress: bool,
    /// Keywords for the profile's `default-server` line, after the fixed
    /// ones: the protocol to the servers (`HAPROXY.BACKEND.PROTO`, TLS,
    /// PROXY protocol). On `default-server` so a server added at run time
    /// gets them too ([`crate::live`] passes them to `add server`).
    pub server_keywords: String,
}

impl Profile {
    /// The profile of a service. `tls`: whether HTTPS is served (a
    /// redirect means nothing without it).
    pub fn of(s: &Service, tls: bool) -> Profile {
        let mut p = Profile {
            name: String::new(),
            mode: s.mode,
            balance: s.balance.clone(),
            healthcheck: s.healthcheck.clone(),
            cookie: s.sticky && s.mode == Mode::Http,
            https_redirect: tls && s.https_redirect && s.mode == Mode::Http,
            compress: s.rules.compress && s.mode == Mode::Http,
            server_keywords: server_keywords(s).join(" "),
        };
        let mode = match s.mode {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        };
        let mut key = format!(
            "{mode}|{}|{}|{}|{}",
            p.balance,
            p.healthcheck.as_deref().unwrap_or(""),
            p.cookie,
            p.https_redirect,
        );
        if p.compress {
            key.push_str("|compress");
        }
        // Only when set, so the profiles of services without them keep
        // the names they had before these options existed.
        if !p.server_keywords.is_empty() {
            key.push('|');
            key.push_str(&p.server_keywords);
        }
        p.name = format!("be_{mode}_{}", short_hash(&key));
        p
    }

    /// Whether a backend made from it keeps the service's own name: the
    /// options a service has when it sets none. Other backends are named
    /// `<service>:<hash>`, so that a service whose options change gets a
    /// new backend beside the old one (switched to, then drained).
    fn plain(&self) -> bool {
        self.balance == "roundrobin"
            && self.healthcheck.is_none()
            && !self.cookie
            && !self.https_redirect
            && !self.compress
            && self.server_keywords.is_empty()
    }

    /// The backend name of a service made from this profile.
    pub fn backend_name(&self, service: &str) -> String {
        if self.plain() {
            service.to_string()
        } else {
            format!("{service}:{}", &self.name[self.name.len() - 12..])
        }
    }
}

/// The `default-server` keywords of a service's protocol to its servers.
/// Every one is accepted by `add server` on HAProxy 2.6 (checked by
/// tests/backend_proto.rs). Health checks follow the traffic explicitly
/// (`check-ssl` and `check-alpn`, `check-send-proxy`, `check-proto h2`): a check in
/// another protocol than the server speaks would mark it down.
pub fn server_keywords(s: &Service) -> Vec<String> {
    let mut k: Vec<String> = Vec::new();
    let mut push = |words: &[&str]| k.extend(words.iter().map(|w| w.to_string()));
    match s.backend_proto {
        BackendProto::H1 => {}
        BackendProto::H2c => push(&["proto", "h2"]),
        BackendProto::H1Tls => push(&[
            "ssl",
            "check-ssl",
            "alpn",
            "http/1.1",
            "check-alpn",
            "http/1.1",
        ]),
        BackendProto::H2Tls => push(&["ssl", "check-ssl", "alpn", "h2", "check-alpn", "h2"]),
    }
    if s.backend_proto.h2() && s.healthcheck.is_some() {
        push(&["check-proto", "h2"]);
    }
    if let Some(tls) = &s.backend_tls {
        match &tls.ca_file {
            Some(ca) => push(&["verify", "required", "ca-file", ca]),
            None => push(&["verify", "none"]),
        }
        if let Some(name) = &tls.name {
            push(&["sni", &format!("str({name})"), "verifyhost", name]);
        }
    }
    match s.backend_proxy_protocol {
        None => {}
        Some(ProxyProtocol::V1) => push(&["send-proxy", "check-send-proxy"]),
        Some(ProxyProtocol::V2) => push(&["send-proxy-v2", "check-send-proxy"]),
    }
    k
}

#[derive(Serialize)]
struct BindAddrs {
    http: String,
    https: String,
    stats: String,
}

/// Renders configs for one config path.
pub struct Renderer {
    tera: tera::Tera,
    name: String,
    maps_dir: PathBuf,
    admin_socket: PathBuf,
}

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Renderer {
    /// Loads `template` (or the built-in one) for configs written at `config_path`.
    pub fn new(
        template: Option<&Path>,
        config_path: &Path,
        admin_socket: &Path,
    ) -> Result<Renderer, RenderError> {
        let (name, text) = match template {
            None => (
                "haproxy.cfg (built-in)".to_string(),
                DEFAULT_TEMPLATE.to_string(),
            ),
            Some(p) => (
                p.display().to_string(),
                fs::read_to_string(p).map_err(|source| RenderError::ReadTemplate {
                    path: p.to_path_buf(),
                    source,
                })?,
            ),
        };
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        tera.add_raw_template(&name, &text)
            .map_err(|e| RenderError::Template {
                name: name.clone(),
                detail: chain(&e),
            })?;
        Ok(Renderer {
            tera,
            name,
            maps_dir: absolute(&maps_dir(config_path)),
            admin_socket: absolute(admin_socket),
        })
    }

    /// The directory the rendered config names its maps in.
    pub fn maps_dir_str(&self) -> String {
        self.maps_dir.display().to_string()
    }

    /// Renders the config and its maps, every port bound by HAProxy
    /// itself. Deterministic.
    pub fn render(&self, desired: &Desired, vars: &HaproxyVars) -> Result<Rendered, RenderError> {
        self.render_with(desired, vars, &Binds::default())
    }

    /// [`Renderer::render`] with the sockets the supervisor holds: their
    /// ports bind `fd@<n>`.
    pub fn render_with(
        &self,
        desired: &Desired,
        vars: &HaproxyVars,
        binds: &Binds,
    ) -> Result<Rendered, RenderError> {
        let tls = desired.tls.is_some();
        let mut profiles: Vec<Profile> = Vec::new();
        let routed: Vec<Routed> = desired
            .services
            .iter()
            .map(|s| {
                let p = Profile::of(s, tls);
                let r = Routed {
                    service: s,
                    backend: p.backend_name(&s.name),
                    profile: p.name.clone(),
                };
                profiles.push(p);
                r
            })
            .collect();
        profiles.sort();
        profiles.dedup();
        let mut hosts: Vec<(String, &str)> = Vec::new();
        let mut paths: Vec<(String, &str)> = Vec::new();
        for r in routed.iter().filter(|r| r.service.mode == Mode::Http) {
            for h in &r.service.vhosts {
                match &r.service.path {
                    None => hosts.push((h.clone(), &r.backend)),
                    // The frontend looks up `host + path + "/"`: with the
                    // entry ending in `/`, `/api` matches `/api` and
                    // `/api/...`, never `/apix`.
                    Some(p) => paths.push((format!("{h}{p}/"), &r.backend)),
                }
            }
        }
        hosts.sort();
        let mut sni: Vec<(String, &str)> = routed
            .iter()
            .filter(|r| r.service.passthrough)
            .flat_map(|r| {
                r.service
                    .vhosts
                    .iter()
                    .map(|h| (h.clone(), r.backend.as_str()))
            })
            .collect();
        sni.sort();
        // map_beg returns the first match in file order: longest prefix first.
        paths.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let to_text = |entries: &[(String, &str)]| {
            let mut t = String::with_capacity(entries.len() * 48);
            for (k, v) in entries {
                t.push_str(k);
                t.push(' ');
                t.push_str(v);
                t.push('\n');
            }
            t
        };
        let mut maps = BTreeMap::new();
        // A map file is named by its role and a hash of its content
        // (`<role>-<hash>.map`: live.rs finds the role before the last `-`).
        let add_map = |maps: &mut BTreeMap<String, String>, role: &str, text: String| {
            let name = format!("{role}-{}.map", short_hash(&text));
            maps.insert(name.clone(), text);
            name
        };
        let hosts_name = add_map(&mut maps, "hosts", to_text(&hosts));
        let paths_name = (!paths.is_empty()).then(|| add_map(&mut maps, "paths", to_text(&paths)));
        let rules = {
            let with_rules: Vec<(&str, &crate::rules::Rules)> = routed
                .iter()
                .filter(|r| r.service.mode == Mode::Http && r.service.rules.on_frontend())
                .map(|r| (r.backend.as_str(), &r.service.rules))
                .collect();
            let mut rm = RuleMaps::default();
            let mut all = crate::rules::maps(&with_rules);
            let backend_of = |name: &str| {
                routed
                    .iter()
                    .find(|r| r.service.name == name)
                    .map(|r| r.backend.clone())
                    .unwrap_or_default()
            };
            for sp in &desired.splits {
                let owner = backend_of(&sp.owner);
                let put =
                    |all: &mut BTreeMap<String, crate::rules::Entries>, role: &str, v: String| {
                        all.entry(role.to_string())
                            .or_default()
                            .push((owner.clone(), v))
                    };
                put(&mut all, "rule_split", backend_of(&sp.other));
                put(&mut all, "rule_split_pct", sp.percent.to_string());
                if sp.sticky {
                    put(&mut all, "rule_split_sticky", "1".into());
                }
            }
            for (role, entries) in all {
                let text: String = entries.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
                let name = add_map(&mut maps, &role, text);
                let path = self.maps_dir.join(&name).display().to_string();
                rm.any = true;
                let slot = match role.as_str() {
                    "rule_strip" => &mut rm.strip,
                    "rule_prefix" => &mut rm.prefix,
                    "rule_host" => &mut rm.host,
                    "rule_timeout" => &mut rm.timeout,
                    "rule_redirect" => &mut rm.redirect,
                    "rule_allow_on" => &mut rm.allow_on,
                    "rule_allow_nets" => &mut rm.allow_nets,
                    "rule_allow_pairs" => &mut rm.allow_pairs,
                    "rule_deny_nets" => &mut rm.deny_nets,
                    "rule_deny_pairs" => &mut rm.deny_pairs,
                    "rule_auth_on" => &mut rm.auth_on,
                    "rule_auth" => &mut rm.auth,
                    "rule_rate" => &mut rm.rate,
                    "rule_split" => &mut rm.split,
                    "rule_split_pct" => &mut rm.split_pct,
                    "rule_split_sticky" => &mut rm.split_sticky,
                    other => {
                        let (list, name) = match other.strip_prefix("rule_reqhdr_") {
                            Some(n) => (&mut rm.request_headers, n),
                            None => (
                                &mut rm.response_headers,
                                other.strip_prefix("rule_reshdr_").unwrap_or(other),
                            ),
                        };
                        list.push(HeaderRule {
                            name: name.to_string(),
                            map: path,
                        });
                        continue;
                    }
                };
                *slot = Some(path);
            }
            if rm.strip.is_some() {
                rm.strip_depths = (1..=crate::rules::MAX_STRIP_DEPTH)
                    .map(|depth| StripDepth {
                        depth,
                        field: depth + 2,
                    })
                    .collect();
            }
            rm
        };
        let sni_name = (!sni.is_empty()).then(|| add_map(&mut maps, "sni", to_text(&sni)));
        let ctx = TemplateContext {
            vars,
            rules,
            admin_socket: self.admin_socket.display().to_string(),
            server_state_file: server_state_path(&self.admin_socket).display().to_string(),
            maps: MapPaths {
                hosts: self.maps_dir.join(&hosts_name).display().to_string(),
                paths: paths_name.map(|n| self.maps_dir.join(n).display().to_string()),
                sni: sni_name.map(|n| self.maps_dir.join(n).display().to_string()),
            },
            tcp_frontends: routed
                .iter()
                .filter_map(|r| {
                    let port = r.service.frontend_port?;
                    Some(TcpFrontend {
                        service: r.clone(),
                        bind: binds.address("*", port),
                    })
                })
                .collect(),
            services: routed,
            profiles,
            binds: BindAddrs {
                http: binds.address("*", vars.http_port),
                https: vars
                    .https_port
                    .map(|p| binds.address("*", p))
                    .unwrap_or_default(),
                stats: binds.address(&vars.stats_bind, vars.stats_port),
            },
            tls: desired.tls.as_ref(),
            tls_socket: self
                .admin_socket
                .with_file_name("tls-terminate.sock")
                .display()
                .to_string(),
        };
        let context = tera::Context::from_serialize(&ctx)
            .map_err(|e| RenderError::Render { detail: chain(&e) })?;
        let config = self
            .tera
            .render(&self.name, &context)
            .map_err(|e| RenderError::Render { detail: chain(&e) })?;
        Ok(Rendered { config, maps })
    }
}

impl<'a> From<&'a Rendered> for Output<'a> {
    fn from(r: &'a Rendered) -> Output<'a> {
        Output {
            config: &r.config,
            maps: &r.maps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::stage;
    use crate::model::{Catalog, Context};

    fn rendered(catalog: &str) -> Rendered {
        let c = Catalog::parse_file(catalog).unwrap();
        let vars = HaproxyVars {
            dom: Some("example.com".into()),
            ..HaproxyVars::default()
        };
        let (d, _) = Desired::build(&c, &Context::from(&vars));
        Renderer::new(
            None,
            Path::new("/etc/haproxy/haproxy.cfg"),
            Path::new("/run/hs/admin.sock"),
        )
        .unwrap()
        .render(&d, &vars)
        .unwrap()
    }

    const TWO: &str = r#"{"services":[
        {"name":"www","instances":[{"id":"www-1","address":"10.0.0.1","port":80,"tags":["HAPROXY.ENABLE=true"]}]},
        {"name":"api","instances":[{"id":"api-1","address":"10.0.0.2","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.PATH=/v1"]}]}
    ]}"#;

    #[test]
    fn deterministic() {
        assert_eq!(rendered(TWO), rendered(TWO));
    }

    #[test]
    fn maps_route_hosts_and_paths() {
        let r = rendered(TWO);
        let hosts: Vec<_> = r
            .maps
            .iter()
            .filter(|(k, _)| k.starts_with("hosts-"))
            .collect();
        assert_eq!(hosts[0].1, "www.example.com www\n");
        let paths: Vec<_> = r
            .maps
            .iter()
            .filter(|(k, _)| k.starts_with("paths-"))
            .collect();
        assert_eq!(paths[0].1, "api.example.com/v1/ api\n");
        assert!(r
            .config
            .contains(&format!("/etc/haproxy/maps/{}", hosts[0].0)));
    }

    #[test]
    fn tls_adds_the_https_bind_redirect_hsts_and_forwarded_proto() {
        let c = Catalog::parse_file(
            r#"{"services":[
            {"name":"www","instances":[{"id":"www-1","address":"10.0.0.1","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.HTTPS_REDIRECT=true"]}]},
            {"name":"api","instances":[{"id":"api-1","address":"10.0.0.2","port":80,"tags":["HAPROXY.ENABLE=true"]}]}
        ]}"#,
        )
        .unwrap();
        let vars = HaproxyVars {
            dom: Some("example.com".into()),
            https_port: Some(443),
            hsts_max_age: Some(0),
            ..HaproxyVars::default()
        };
        let (mut d, warnings) = Desired::build(&c, &Context::from(&vars));
        assert!(warnings.is_empty(), "{warnings:?}");
        let r = Renderer::new(
            None,
            Path::new("/etc/haproxy/haproxy.cfg"),
            Path::new("/run/hs/admin.sock"),
        )
        .unwrap();
        // No certificate served: nothing of TLS, the tag has no effect.
        let plain = r.render(&d, &vars).unwrap().config;
        assert!(!plain.contains("crt-list") && !plain.contains("redirect"));
        assert!(!plain.contains("Strict-Transport-Security"));
        // Set in either case, never passed through from the client: in
        // the one profile both services share without TLS (the redirect
        // means nothing without it), in each of the two with TLS.
        assert_eq!(
            plain
                .matches("set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]")
                .count(),
            1
        );
        d.tls = Some(crate::model::TlsFrontend {
            crt_list: "/etc/haproxy/certs/crt-list".into(),
        });
        let tls = r.render(&d, &vars).unwrap().config;
        assert!(
            tls.contains("bind *:443 ssl crt-list /etc/haproxy/certs/crt-list alpn h2,http/1.1")
        );
        // Port 443: no port in the Location; only the tagged service.
        assert_eq!(
            tls.matches(
                "http-request redirect location https://%[var(txn.host)]%[pathq] code 301 unless { ssl_fc }"
            )
            .count(),
            1
        );
        assert!(tls.contains(r#"Strict-Transport-Security "max-age=0" if { ssl_fc }"#));
        assert_eq!(
            tls.matches("set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]")
                .count(),
            2
        );
    }

    #[test]
    fn backend_protocols_go_on_the_profiles_default_server_line() {
        let vars = HaproxyVars {
            dom: Some("example.com".into()),
            backend_ca_file: Some("/etc/ca.pem".into()),
            ..HaproxyVars::default()
        };
        let c = Catalog::parse_file(
            r#"{"services":[
            {"name":"plain","instances":[{"id":"p1","address":"10.0.0.1","port":80,"tags":["HAPROXY.ENABLE=true"]}]},
            {"name":"grpc","instances":[{"id":"g1","address":"10.0.0.2","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.BACKEND.PROTO=h2c","HAPROXY.BACKEND.HEALTHCHECK=/health"]}]},
            {"name":"secure","instances":[{"id":"s1","address":"10.0.0.3","port":443,"tags":["HAPROXY.ENABLE=true","HAPROXY.BACKEND.PROTO=h2-tls","HAPROXY.BACKEND.TLS_NAME=secure.internal","HAPROXY.BACKEND.PROXY_PROTOCOL=v2"]}]},
            {"name":"loose","instances":[{"id":"l1","address":"10.0.0.4","port":443,"tags":["HAPROXY.ENABLE=true","HAPROXY.BACKEND.PROTO=h1-tls","HAPROXY.BACKEND.TLS_VERIFY=none","HAPROXY.BACKEND.PROXY_PROTOCOL=v1"]}]}
        ]}"#,
        )
        .unwrap();
        let (d, w) = Desired::build(&c, &Context::from(&vars));
        assert!(w.is_empty(), "{w:?}");
        let cfg = Renderer::new(
            None,
            Path::new("/etc/haproxy/haproxy.cfg"),
            Path::new("/run/hs/admin.sock"),
        )
        .unwrap()
        .render(&d, &vars)
        .unwrap()
        .config;
        let base = "default-server inter 10s rise 2 fall 1 init-addr libc,none";
        for want in [
            format!("{base}\n"),
            format!("{base} proto h2 check-proto h2\n"),
            format!("{base} ssl check-ssl alpn h2 check-alpn h2 verify required ca-file /etc/ca.pem sni str(secure.internal) verifyhost secure.internal send-proxy-v2 check-send-proxy\n"),
            format!("{base} ssl check-ssl alpn http/1.1 check-alpn http/1.1 verify none send-proxy check-send-proxy\n"),
        ] {
            assert_eq!(cfg.matches(&want).count(), 1, "{want}\n{cfg}");
        }
        // The plain service keeps its name; the others are named by profile.
        assert!(cfg.contains("backend plain from "));
        assert!(cfg.contains("backend grpc:"));
    }

    #[test]
    fn stage_commit_and_abort() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("haproxy.cfg");
        let r = rendered(TWO);
        let st = stage(&target, &r).unwrap();
        assert!(!target.exists());
        st.commit(&r).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), r.config);
        let n_maps = fs::read_dir(maps_dir(&target)).unwrap().count();
        assert_eq!(n_maps, 2);

        let other = rendered(r#"{"services":[]}"#);
        let st = stage(&target, &other).unwrap();
        st.abort();
        assert_eq!(fs::read_to_string(&target).unwrap(), r.config);
        assert_eq!(fs::read_dir(maps_dir(&target)).unwrap().count(), 2);
    }
}
