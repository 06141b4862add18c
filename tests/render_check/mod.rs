//! The checks of a rendered config shared by the property tests
//! (tests/proptest_render.rs) and the fuzz targets (tests/fuzz.rs): every
//! line rendered is either the template's or built from validated values,
//! in the template's places. Not a test target of its own (a directory
//! under tests/ without main.rs); each test file that uses it says
//! `mod render_check;`.

// Each including test file uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use haproxy_supervisor::model::HaproxyVars;
use haproxy_supervisor::model::{
    enabled, hostname, is_path, is_server_name, is_service_name, Catalog, Context, Desired,
};
use haproxy_supervisor::render::{self, Rendered, Renderer};
use proptest::prelude::*;

pub fn renderer(config: &Path, socket: &Path) -> Renderer {
    Renderer::new(None, config, socket).expect("the built-in template loads")
}

/// The renderer for the fixed paths, built once (compiling the template is
/// most of the cost of a case otherwise).
pub fn fixed_renderer() -> &'static Renderer {
    static R: std::sync::OnceLock<Renderer> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        renderer(
            Path::new("/etc/haproxy/haproxy.cfg"),
            Path::new("/run/haproxy-supervisor/admin.sock"),
        )
    })
}

/// A rendered config cut into its sections: (header, indented lines).
/// Comments and blank lines are returned separately.
pub fn sections(config: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut comments = Vec::new();
    for line in config.lines() {
        if line.trim().is_empty() {
            continue;
        } else if line.starts_with('#') {
            comments.push(line.to_string());
        } else if !line.starts_with(' ') {
            out.push((line.to_string(), Vec::new()));
        } else {
            match out.last_mut() {
                Some((_, lines)) => lines.push(line.to_string()),
                None => out.push((String::new(), vec![line.to_string()])),
            }
        }
    }
    (out, comments)
}

/// Replaces content-addressed map names by their kind (the file name
/// before its hash: `hosts`, `paths`, `rule_strip`, `rule_reqhdr_x-team`,
/// ...), so configs with different maps compare.
pub fn normalize_maps(line: &str) -> String {
    let mut out = line.to_string();
    let dir = "/etc/haproxy/maps/";
    while let Some(start) = out.find(dir) {
        let end = out[start..]
            .find(".map")
            .map_or(out.len(), |e| start + e + 4);
        let name = &out[start + dir.len()..end];
        let kind = name.rsplit_once('-').map_or(name, |(k, _)| k).to_string();
        out.replace_range(start..end, &format!("<{kind} map>"));
    }
    out
}

/// A rule line of `app_http_in` with its header name (if any) replaced by
/// `HDR`, after [`normalize_maps`]; None if the line is not a rule line.
/// A header line must name the header its map is for.
pub fn rule_line(norm: &str) -> Option<Result<(String, Option<String>), String>> {
    // The template's comments on its rule lines.
    const COMMENTS: &[&str] = &[
        "    # Per-service rules",
        "    # keyed by the backend the routing",
        "    # a kind of rule no service",
        "    # Basic authentication",
        "    # Requests a second per client",
        "    # requests count, so under",
        "    # Canary / blue-green",
        "    # sends this percent",
    ];
    let is_rule = norm.contains("txn.r_")
        || norm.contains("<rule_")
        || norm.starts_with("    stick-table ")
        || COMMENTS.iter().any(|c| norm.starts_with(c));
    if !is_rule {
        return None;
    }
    for (prefix, kind) in [
        ("    http-request set-header ", "rule_reqhdr_"),
        ("    http-response set-header ", "rule_reshdr_"),
    ] {
        if let Some(rest) = norm
            .strip_prefix(prefix)
            .filter(|_| norm.contains(&format!("<{kind}")))
        {
            let Some(name) = rest.split(' ').next() else {
                return Some(Err(format!("no header name in {norm:?}")));
            };
            if !norm.contains(&format!("<{kind}{name} map>")) {
                return Some(Err(format!(
                    "header {name:?} read from another map: {norm:?}"
                )));
            }
            let generic = norm
                .replacen(&format!("{prefix}{name} "), &format!("{prefix}HDR "), 1)
                .replace(&format!("<{kind}{name} map>"), &format!("<{kind}HDR map>"));
            return Some(Ok((generic, Some(name.to_string()))));
        }
    }
    Some(Ok((norm.to_string(), None)))
}

/// Every rule line the template can write in `app_http_in`, header names
/// as `HDR`: rendered for one service with every rule.
pub fn rule_lines(vars: &HaproxyVars) -> BTreeSet<String> {
    let hash = "0".repeat(64);
    let catalog = Catalog::parse_file(&format!(
        r#"{{"services":[{{"name":"r","instances":[{{"id":"r1","address":"10.0.0.1","port":80,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=r.example.com","HAPROXY.PATH=/p",
            "HAPROXY.PATH.STRIP=true","HAPROXY.PATH.PREFIX=/x","HAPROXY.BACKEND.HOST=h.example.com",
            "HAPROXY.BACKEND.TIMEOUT=5s","HAPROXY.REDIRECT=301,https://o.example.com",
            "HAPROXY.ALLOW=10.0.0.0/8","HAPROXY.DENY=10.1.0.0/16",
            "HAPROXY.AUTH=u:saltsalt:{hash}","HAPROXY.RATE_LIMIT=5",
            "HAPROXY.REQUEST.HEADER.X-A=1","HAPROXY.RESPONSE.HEADER.X-B=2"]}}]}},
            {{"name":"s1","instances":[{{"id":"s1","address":"10.0.0.2","port":80,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=s.example.com","HAPROXY.ROUTE.WEIGHT=1"]}}]}},
            {{"name":"s2","instances":[{{"id":"s2","address":"10.0.0.3","port":80,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=s.example.com","HAPROXY.ROUTE.WEIGHT=1",
            "HAPROXY.ROUTE.STICKY=true"]}}]}}]}}"#
    ))
    .unwrap();
    let (d, w) = Desired::build(&catalog, &Context::from(vars));
    assert!(w.is_empty(), "{w:?}");
    let r = fixed_renderer().render(&d, vars).unwrap();
    sections(&r.config)
        .0
        .into_iter()
        .filter(|(h, _)| h == "frontend app_http_in from base")
        .flat_map(|(_, lines)| lines)
        .filter_map(|l| rule_line(&normalize_maps(&l)))
        .map(|r| r.expect("the template's own header lines").0)
        .collect()
}

/// The sections of the template itself, rendered with `vars` for no
/// service, for one service with a path (the two shapes of the HTTP
/// frontend) and for one TLS passthrough service (the HTTPS port's SNI
/// frontend and its default backend; none without an HTTPS port), maps
/// normalized.
pub fn skeletons(vars: &HaproxyVars) -> [BTreeMap<String, Vec<String>>; 3] {
    let with_path = Catalog::parse_file(
        r#"{"services":[{"name":"p","instances":[{"id":"p1","address":"10.0.0.1","port":80,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=p.example.com","HAPROXY.PATH=/p"]}]}]}"#,
    )
    .unwrap();
    let with_sni = Catalog::parse_file(
        r#"{"services":[{"name":"p","instances":[{"id":"p1","address":"10.0.0.1","port":80,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=p.example.com","HAPROXY.TLS=passthrough"]}]}]}"#,
    )
    .unwrap();
    [Catalog::default(), with_path, with_sni].map(|c| {
        let (d, _) = Desired::build(&c, &Context::from(vars));
        let r = fixed_renderer().render(&d, vars).unwrap();
        sections(&r.config)
            .0
            .into_iter()
            .filter(|(h, _)| !h.starts_with("backend p ") && !h.starts_with("defaults be_"))
            .map(|(h, lines)| (h, lines.iter().map(|l| normalize_maps(l)).collect()))
            .collect()
    })
}

/// Lines of the template with no placeholder or tag: allowed verbatim.
pub fn template_literals() -> BTreeSet<String> {
    render::DEFAULT_TEMPLATE
        .lines()
        .filter(|l| !l.contains("{{") && !l.contains("{%") && !l.trim().is_empty())
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// Every line is the template's own or built from `desired`'s validated
/// values, in the template's places.
pub fn check_structure(
    vars: &HaproxyVars,
    desired: &Desired,
    r: &Rendered,
) -> Result<(), TestCaseError> {
    let (secs, comments) = sections(&r.config);
    let literals = template_literals();
    for c in &comments {
        prop_assert!(
            literals.contains(c),
            "comment {:?} is not the template's",
            c
        );
    }
    let [plain, with_paths, with_sni] = skeletons(vars);
    let passthrough = desired.services.iter().any(|s| s.passthrough);
    let tcp: Vec<_> = desired
        .services
        .iter()
        .filter(|s| s.frontend_port.is_some())
        .collect();
    // The section headers, in order.
    let mut want: Vec<String> = [
        "global",
        "defaults base",
        "frontend app_http_in from base",
        "backend _no_route from base",
        // The stats credentials (HAPROXY_STATS_AUTH) have a section.
        "userlist _stats_users",
        "listen _stats from base",
    ]
    .iter()
    .filter(|h| vars.stats_auth.is_some() || **h != "userlist _stats_users")
    .map(|h| h.to_string())
    .collect();
    if passthrough {
        let default = if desired.tls.is_some() {
            "backend _tls_terminate from base"
        } else {
            "backend _tls_no_route from base"
        };
        want.splice(
            3..3,
            [
                "frontend app_https_in from base".to_string(),
                default.to_string(),
            ],
        );
    }
    want.extend(tcp.iter().map(|s| {
        format!(
            "frontend {}_port_{} from base",
            s.name,
            s.frontend_port.unwrap()
        )
    }));
    // One profile per distinct combination of backend options, then each
    // service's backend made from its profile.
    let tls = desired.tls.is_some();
    let profile = |s: &haproxy_supervisor::model::Service| render::Profile::of(s, tls);
    let mut profiles: Vec<render::Profile> = desired.services.iter().map(profile).collect();
    profiles.sort();
    profiles.dedup();
    want.extend(
        profiles
            .iter()
            .map(|p| format!("defaults {} from base", p.name)),
    );
    want.extend(desired.services.iter().map(|s| {
        let p = profile(s);
        format!("backend {} from {}", p.backend_name(&s.name), p.name)
    }));
    let headers: Vec<&String> = secs.iter().map(|(h, _)| h).collect();
    prop_assert_eq!(headers, want.iter().collect::<Vec<_>>());

    for (header, lines) in &secs {
        let norm: Vec<String> = lines.iter().map(|l| normalize_maps(l)).collect();
        if let Some(skel) = plain.get(header) {
            // The template's own sections: exactly as for no service.
            if header == "frontend app_http_in from base" {
                // The rule lines apart: each one the template writes, its
                // header names those of accepted services.
                let allowed = rule_lines(vars);
                let headers: BTreeSet<String> = desired
                    .services
                    .iter()
                    .flat_map(|s| {
                        s.rules
                            .request_headers
                            .keys()
                            .chain(s.rules.response_headers.keys())
                            .cloned()
                    })
                    .collect();
                let mut rest = Vec::new();
                for l in &norm {
                    match rule_line(l) {
                        None => rest.push(l.clone()),
                        Some(Err(e)) => prop_assert!(false, "{}", e),
                        Some(Ok((generic, name))) => {
                            prop_assert!(
                                allowed.contains(&generic),
                                "rule line {:?} is not the template's",
                                l
                            );
                            if let Some(n) = name {
                                prop_assert!(headers.contains(&n), "header {:?} of no service", n);
                            }
                        }
                    }
                }
                let norm = rest;
                prop_assert!(
                    &norm == skel || Some(&norm) == with_paths.get(header),
                    "app_http_in differs from the template: {:?}",
                    lines
                );
                for l in lines {
                    if let Some(p) = l.find("/etc/haproxy/maps/") {
                        let name = l[p + 18..].split(')').next().unwrap_or_default();
                        prop_assert!(
                            r.maps.contains_key(name),
                            "{:?} names a map not rendered",
                            l
                        );
                    }
                }
            } else {
                prop_assert_eq!(&norm, skel, "section {} differs from the template", header);
            }
        } else if let Some(skel) = with_sni.get(header) {
            // The SNI frontend and its default backend: exactly as for
            // one passthrough service, their map rendered.
            prop_assert_eq!(&norm, skel, "section {} differs from the template", header);
            for l in lines {
                if let Some(p) = l.find("/etc/haproxy/maps/") {
                    let name = l[p + 18..].split(')').next().unwrap_or_default();
                    prop_assert!(
                        r.maps.contains_key(name),
                        "{:?} names a map not rendered",
                        l
                    );
                }
            }
        } else if let Some(s) = tcp.iter().find(|s| {
            *header
                == format!(
                    "frontend {}_port_{} from base",
                    s.name,
                    s.frontend_port.unwrap()
                )
        }) {
            let mode = if s.mode == haproxy_supervisor::model::Mode::Http {
                "http"
            } else {
                "tcp"
            };
            let log = if vars.log_json {
                json_log_format(mode)
            } else {
                format!("    option {mode}log")
            };
            let mut want = vec![
                format!("    bind *:{}", s.frontend_port.unwrap()),
                format!("    mode {mode}"),
                log,
            ];
            if !vars.proxy_protocol_from.is_empty() {
                let sources = vars.proxy_protocol_from.join(" ");
                want.push(format!(
                    "    tcp-request connection expect-proxy layer4 if {{ src {sources} }}"
                ));
                if mode == "tcp" {
                    // A header from a source not listed is refused:
                    // the template's own lines, the list as above.
                    want.push("    tcp-request inspect-delay 1s".to_string());
                    want.push(format!(
                        "    tcp-request content accept if {{ src {sources} }}"
                    ));
                    want.extend(
                        [
                            "    tcp-request content accept if { req.len gt 0 } !{ req.payload(0,1) -m bin 50 } !{ req.payload(0,1) -m bin 0d }",
                            "    tcp-request content reject if { req.payload(0,6) -m bin 50524f585920 }",
                            "    tcp-request content accept if { req.payload(0,1) -m bin 50 }",
                            "    tcp-request content reject if { req.payload(0,12) -m bin 0d0a0d0a000d0a515549540a }",
                            "    tcp-request content accept if { req.len gt 0 }",
                        ]
                        .map(String::from),
                    );
                }
            }
            want.push(format!(
                "    default_backend {}",
                profile(s).backend_name(&s.name)
            ));
            // The template's comments aside.
            let lines: Vec<String> = lines
                .iter()
                .filter(|l| !(l.trim_start().starts_with('#') && literals.contains(*l)))
                .cloned()
                .collect();
            prop_assert_eq!(&lines, &want);
        } else if let Some(p) = profiles
            .iter()
            .find(|p| *header == format!("defaults {} from base", p.name))
        {
            // The protocol keywords, written out here from the tags'
            // documented meaning (not by the renderer's own function).
            let default_servers: BTreeSet<String> = desired
                .services
                .iter()
                .filter(|s| profile(s).name == p.name)
                .map(expected_default_server)
                .collect();
            let mode = if p.mode == haproxy_supervisor::model::Mode::Http {
                "http"
            } else {
                "tcp"
            };
            for l in lines {
                let rule_bound = l.starts_with("    compression ") || l.contains("txn.r_timeout");
                // The SNI frontend's literal `mode tcp` and `tcp-request`
                // lines are not a profile's.
                let literal = literals.contains(l)
                    && !rule_bound
                    && !l.starts_with("    mode ")
                    && !l.starts_with("    tcp-request ");
                let ok = literal
                    || *l == format!("    mode {mode}")
                    || *l == format!("    balance {}", p.balance)
                    || default_servers.contains(l)
                    || p.healthcheck
                        .as_ref()
                        .is_some_and(|h| *l == format!("    option httpchk GET {h}"))
                    || (l.starts_with("    compression ") && p.compress)
                    || (l.starts_with("    http-request set-timeout server var(txn.r_timeout)")
                        && desired
                            .services
                            .iter()
                            .any(|s| s.rules.timeout_server_ms.is_some()))
                    || (p.https_redirect
                        && l.starts_with(
                            "    http-request redirect location https://%[var(txn.host)]",
                        )
                        && l.ends_with("%[pathq] code 301 unless { ssl_fc }"));
                prop_assert!(
                    ok,
                    "profile {}: line {:?} is not the template's nor the profile's",
                    p.name,
                    l
                );
            }
        } else {
            let s = desired
                .services
                .iter()
                .find(|s| {
                    let p = profile(s);
                    *header == format!("backend {} from {}", p.backend_name(&s.name), p.name)
                })
                .expect("headers checked above");
            let mode = if s.mode == haproxy_supervisor::model::Mode::Http {
                "http"
            } else {
                "tcp"
            };
            let cookie = s.sticky && mode == "http";
            let servers: BTreeSet<String> = s
                .servers
                .iter()
                .map(|v| {
                    let mut l = format!(
                        "    server {} {} check weight {}",
                        v.name, v.address, v.weight
                    );
                    if let Some(m) = s.maxconn {
                        l.push_str(&format!(" maxconn {m}"));
                    }
                    if cookie {
                        l.push_str(&format!(" cookie {}", v.name));
                    }
                    l
                })
                .collect();
            let mut placed = BTreeSet::new();
            for l in lines {
                let ok = (literals.contains(l) && mode == "tcp" && s.sticky)
                    || (servers.contains(l) && placed.insert(l.clone()));
                prop_assert!(
                    ok,
                    "backend {}: line {:?} is not the template's nor the service's",
                    s.name,
                    l
                );
            }
            prop_assert_eq!(
                placed.len(),
                servers.len(),
                "backend {} lacks servers",
                s.name
            );
        }
    }
    Ok(())
}

/// The JSON `log-format` line of a `mode` ("http", "tcp") frontend, as in
/// the golden file: fixed text, whatever the catalog.
pub fn json_log_format(mode: &str) -> String {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/json_logs.cfg");
    let text = std::fs::read_to_string(golden).expect("the json_logs golden file");
    let event = if mode == "http" {
        "\"event\":\"http_request\""
    } else {
        "\"event\":\"tcp_session\""
    };
    text.lines()
        .find(|l| l.starts_with("    log-format ") && l.contains(event))
        .expect("a log-format line of the mode")
        .to_string()
}

/// `host:port`, `ip:port` or `[ipv6]:port` as the model renders it.
pub fn is_rendered_address(a: &str) -> bool {
    let Some((host, port)) = a.rsplit_once(':') else {
        return false;
    };
    let port_ok = matches!(port.parse::<u32>(), Ok(1..=65535)) && !port.starts_with('0');
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>().is_ok()
    } else {
        host.parse::<Ipv4Addr>().is_ok() || hostname(host).as_deref() == Some(host)
    };
    port_ok && host_ok
}

/// A profile's `default-server` line for a service, as docs/tags.md and
/// docs/tls.md say it is.
pub fn expected_default_server(s: &haproxy_supervisor::model::Service) -> String {
    use haproxy_supervisor::model::{BackendProto as P, ProxyProtocol};
    let mut l = "    default-server inter 10s rise 2 fall 1 init-addr libc,none".to_string();
    let hc = s.healthcheck.is_some();
    l.push_str(match (s.backend_proto, hc) {
        (P::H1, _) => "",
        (P::H2c, false) => " proto h2",
        (P::H2c, true) => " proto h2 check-proto h2",
        (P::H1Tls, _) => " ssl check-ssl alpn http/1.1 check-alpn http/1.1",
        (P::H2Tls, false) => " ssl check-ssl alpn h2 check-alpn h2",
        (P::H2Tls, true) => " ssl check-ssl alpn h2 check-alpn h2 check-proto h2",
    });
    if let Some(t) = &s.backend_tls {
        assert!(is_path(t.ca_file.as_deref().unwrap_or("/")));
        match &t.ca_file {
            Some(f) => l.push_str(&format!(" verify required ca-file {f}")),
            None => l.push_str(" verify none"),
        }
        if let Some(n) = &t.name {
            assert_eq!(hostname(n).as_ref(), Some(n));
            l.push_str(&format!(" sni str({n}) verifyhost {n}"));
        }
    }
    match s.backend_proxy_protocol {
        None => {}
        Some(ProxyProtocol::V1) => l.push_str(" send-proxy check-send-proxy"),
        Some(ProxyProtocol::V2) => l.push_str(" send-proxy-v2 check-send-proxy"),
    }
    l
}

/// The properties every (desired, rendered) pair has, whatever the input.
pub fn check_rendered(
    vars: &HaproxyVars,
    catalog: &Catalog,
    desired: &Desired,
    warnings: &[haproxy_supervisor::model::Warning],
    r: &Rendered,
) -> Result<(), TestCaseError> {
    // Only printable ASCII, in the config and in the maps.
    for (name, text) in
        std::iter::once(("config", &r.config)).chain(r.maps.iter().map(|(k, v)| (k.as_str(), v)))
    {
        for line in text.lines() {
            prop_assert!(
                line.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
                "{}: line {:?} is not printable ASCII",
                name,
                line
            );
        }
        prop_assert!(text.is_empty() || text.ends_with('\n'));
    }

    // One backend per accepted service (named after it, `:<hash>` when
    // it has options), plus _no_route.
    let backend_names: Vec<&str> = r
        .config
        .lines()
        .filter_map(|l| l.strip_prefix("backend "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let passthrough = desired.services.iter().any(|s| s.passthrough);
    let mut want: Vec<String> = Vec::new();
    if passthrough {
        want.push(
            if desired.tls.is_some() {
                "_tls_terminate"
            } else {
                "_tls_no_route"
            }
            .into(),
        );
    }
    want.push("_no_route".into());
    let specials = want.len();
    prop_assert_eq!(backend_names.len(), specials + desired.services.len());
    want.extend(
        desired
            .services
            .iter()
            .map(|s| render::Profile::of(s, desired.tls.is_some()).backend_name(&s.name)),
    );
    prop_assert_eq!(&backend_names, &want);

    // Every accepted service is an enabled catalog service with a valid
    // name; every enabled catalog service is accepted or warned about.
    let accepted: BTreeSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
    for s in &desired.services {
        prop_assert!(is_service_name(&s.name), "accepted name {:?}", s.name);
        let cs = catalog.services.get(&s.name);
        prop_assert!(cs.is_some_and(|cs| enabled(&cs.tags)));
        prop_assert!(
            !warnings.iter().any(|w| w.service == s.name && w.left_out),
            "accepted {:?} yet warned as left out: {:?}",
            s.name,
            warnings
        );
        if let Some(p) = &s.path {
            prop_assert!(is_path(p));
        }
        if let Some(p) = &s.healthcheck {
            prop_assert!(is_path(p));
        }
        for h in &s.vhosts {
            prop_assert_eq!(hostname(h), Some(h.clone()));
        }
        // Passthrough: a TCP backend reached by SNI on the HTTPS port only.
        if s.passthrough {
            prop_assert!(vars.https_port.is_some());
            prop_assert!(s.frontend_port.is_none() && s.path.is_none());
            prop_assert!(s.healthcheck.is_none() && !s.https_redirect);
            prop_assert_eq!(s.mode, haproxy_supervisor::model::Mode::Tcp);
            prop_assert!(!s.vhosts.is_empty());
        }
    }
    for (name, cs) in &catalog.services {
        if enabled(&cs.tags) && !accepted.contains(name.as_str()) {
            prop_assert!(
                warnings.iter().any(|w| &w.service == name && w.left_out),
                "{:?} silently dropped; warnings {:?}",
                name,
                warnings
            );
        }
    }

    check_structure(vars, desired, r)?;

    // Server lines: exactly the validated servers, in the template's shape.
    let servers: Vec<&str> = r
        .config
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .collect();
    let n_servers: usize = desired.services.iter().map(|s| s.servers.len()).sum();
    prop_assert_eq!(servers.len(), n_servers);
    for line in servers {
        let w: Vec<&str> = line.split(' ').collect();
        prop_assert!(w.len() >= 6, "short server line {:?}", line);
        prop_assert!(is_server_name(w[1]) || w[1].len() > 128, "{:?}", line);
        prop_assert!(is_rendered_address(w[2]), "address in {:?}", line);
        prop_assert_eq!(&w[3..5], &["check", "weight"][..]);
        prop_assert!(
            matches!(w[5].parse::<u32>(), Ok(0..=256)),
            "weight in {:?}",
            line
        );
        let mut rest = &w[6..];
        if rest.first() == Some(&"maxconn") {
            prop_assert!(matches!(
                rest.get(1).map(|m| m.parse::<u32>()),
                Some(Ok(1..=1_000_000))
            ));
            rest = &rest[2..];
        }
        if rest.first() == Some(&"cookie") {
            prop_assert_eq!(rest.get(1), Some(&w[1]));
            rest = &rest[2..];
        }
        prop_assert!(rest.is_empty(), "extra words in {:?}", line);
    }

    // Rule maps: keys are backends (or `backend|x`, or networks), values
    // of the rule's form.
    for (name, text) in r.maps.iter().filter(|(n, _)| n.starts_with("rule_")) {
        let kind = name.rsplit_once('-').map_or(name.as_str(), |(k, _)| k);
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            prop_assert_eq!(w.len(), 2, "{}: {:?}", name, line);
            let (key, value) = (w[0], w[1]);
            if kind.ends_with("_nets") {
                prop_assert!(key.parse::<ipnet::IpNet>().is_ok(), "{}: {:?}", name, line);
                prop_assert!(value.starts_with('n') && value[1..].parse::<u32>().is_ok());
                continue;
            }
            let be = key.split('|').next().unwrap_or_default();
            prop_assert!(
                want.iter().skip(specials).any(|b| b == be),
                "{}: {:?}",
                name,
                line
            );
            let ok = match kind {
                "rule_strip" => matches!(value.parse::<u32>(), Ok(1..=8)),
                "rule_timeout" | "rule_rate" => value.parse::<u64>().is_ok(),
                "rule_prefix" => is_path(value),
                "rule_host" => {
                    let h = value.split(':').next().unwrap_or_default();
                    hostname(h).as_deref() == Some(h)
                }
                "rule_redirect" => value.starts_with("30") && value.contains("|http"),
                "rule_auth" => value.len() > 64 && value.as_bytes()[value.len() - 65] == b':',
                _ => value
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\"'\\#".contains(&b)),
            };
            prop_assert!(ok, "{}: {:?}", name, line);
        }
    }

    // A host is one service's: no passthrough host is routed over HTTP.
    let sni_hosts: BTreeSet<&String> = desired
        .services
        .iter()
        .filter(|s| s.passthrough)
        .flat_map(|s| &s.vhosts)
        .collect();
    let http_hosts: BTreeSet<&String> = desired
        .services
        .iter()
        .filter(|s| s.mode == haproxy_supervisor::model::Mode::Http)
        .flat_map(|s| &s.vhosts)
        .collect();
    prop_assert!(
        sni_hosts.is_disjoint(&http_hosts),
        "hosts both passed through and routed: {:?}",
        sni_hosts.intersection(&http_hosts).collect::<Vec<_>>()
    );

    // Map lines: `key backend`, the backend of an accepted service.
    for (name, text) in r.maps.iter().filter(|(n, _)| !n.starts_with("rule_")) {
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            prop_assert_eq!(w.len(), 2, "{}: {:?}", name, line);
            prop_assert!(
                want.iter().skip(specials).any(|b| b == w[1]),
                "{}: {:?}",
                name,
                line
            );
            let host = w[0].split('/').next().unwrap_or_default();
            prop_assert_eq!(hostname(host), Some(host.to_string()));
        }
    }
    Ok(())
}
