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

/// Replaces content-addressed map names by their kind, so configs with
/// different maps compare.
pub fn normalize_maps(line: &str) -> String {
    let mut out = line.to_string();
    for kind in ["hosts", "paths"] {
        while let Some(start) = out.find(&format!("/etc/haproxy/maps/{kind}-")) {
            let end = out[start..]
                .find(".map")
                .map_or(out.len(), |e| start + e + 4);
            out.replace_range(start..end, &format!("<{kind} map>"));
        }
    }
    out
}

/// The sections of the template itself, rendered with `vars` for no
/// service and for one service with a path (the two shapes of the HTTP
/// frontend), maps normalized.
pub fn skeletons(vars: &HaproxyVars) -> [BTreeMap<String, Vec<String>>; 2] {
    let with_path = Catalog::parse_file(
        r#"{"services":[{"name":"p","instances":[{"id":"p1","address":"10.0.0.1","port":80,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=p.example.com","HAPROXY.PATH=/p"]}]}]}"#,
    )
    .unwrap();
    [Catalog::default(), with_path].map(|c| {
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
    let [plain, with_paths] = skeletons(vars);
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
            prop_assert_eq!(
                lines,
                &vec![
                    format!("    bind *:{}", s.frontend_port.unwrap()),
                    format!("    mode {mode}"),
                    log,
                    format!("    default_backend {}", profile(s).backend_name(&s.name)),
                ]
            );
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
                let ok = literals.contains(l)
                    || *l == format!("    mode {mode}")
                    || *l == format!("    balance {}", p.balance)
                    || default_servers.contains(l)
                    || p.healthcheck
                        .as_ref()
                        .is_some_and(|h| *l == format!("    option httpchk GET {h}"))
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
    prop_assert_eq!(backend_names.len(), 1 + desired.services.len());
    let mut want: Vec<String> = vec!["_no_route".into()];
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

    // Map lines: `key backend`, the backend of an accepted http service.
    for (name, text) in &r.maps {
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            prop_assert_eq!(w.len(), 2, "{}: {:?}", name, line);
            prop_assert!(
                want.iter().skip(1).any(|b| b == w[1]),
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
