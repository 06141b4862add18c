//! Issue #2: property tests of tag parsing and rendering through the library
//! API. Arbitrary service names, instance ids, addresses, ports, weights and
//! tags (any Unicode, control characters, HAProxy syntax) go through
//! `Desired::build` and `Renderer::render`; nothing panics, and every line
//! rendered is either the template's or built from validated values. A
//! smaller run puts the results through `haproxy -c`.
//! Run as root (for `haproxy -c` in a network namespace):
//! `cargo test --test proptest_render`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use haproxy_supervisor::model::{
    enabled, hostname, is_path, is_server_name, is_service_name, Catalog, CatalogFile,
    CatalogFileService, Context, Desired, Instance,
};
use haproxy_supervisor::render::{self, Rendered, Renderer};
use haproxy_supervisor::settings::HaproxyVars;
use proptest::prelude::*;

/// Tag keys: every one the model knows, and some it does not.
fn keys() -> Vec<&'static str> {
    let unknown = ["HAPROXY.BACKEND.MAXCON", "HAPROXY.", "haproxy.vhost"];
    KNOWN_TAGS.iter().copied().chain(unknown).collect()
}

/// Every balance algorithm the model accepts.
use haproxy_supervisor::model::{BALANCES, KNOWN_TAGS};

/// Characters that mean something to HAProxy, map files, shells or
/// terminals, plus some that are harmless.
const NASTY: &[char] = &[
    '\n', '\r', '\t', '\0', '\u{7f}', '\u{1b}', '\u{85}', '\u{2028}', '\u{202e}', '\u{feff}', ' ',
    '#', '"', '\'', '\\', '%', '$', '{', '}', '[', ']', '(', ')', ',', ':', ';', '/', '.', '-',
    '_', '=', '*', 'a', 'b', 'Z', '0', '9', 'é', 'ß', '日',
];

fn nasty() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(NASTY), 0..24).prop_map(String::from_iter)
}

/// Any string: valid-looking, HAProxy-syntax-laden, or arbitrary Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9][a-z0-9._-]{0,12}",
        2 => nasty(),
        2 => any::<String>(),
        1 => "[ -~]{0,40}",
        1 => Just(String::new()),
        1 => "[a-z]{200,300}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(BALANCES).prop_map(str::to_string),
        1 => Just("http".to_string()),
        1 => Just("tcp".to_string()),
        1 => Just("true".to_string()),
        2 => (0u64..2_000_000).prop_map(|n| n.to_string()),
        1 => prop::sample::select(&[8080u32, 4444, 9000, 9001, 65535, 65536, 0][..])
            .prop_map(|n| n.to_string()),
        2 => "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}(,[a-z]{1,6}\\.com){0,2}",
        2 => "/[a-z0-9/._~%-]{0,12}",
        4 => text(),
    ]
}

/// A value that fits `key` (so services do get accepted), or any value.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let fitting: BoxedStrategy<String> = match key {
        "HAPROXY.ENABLE" => Just("true".to_string()).boxed(),
        "HAPROXY.PROTOCOL" => prop::sample::select(&["http", "tcp"][..])
            .prop_map(str::to_string)
            .boxed(),
        "HAPROXY.BACKEND.BALANCE" => prop::sample::select(BALANCES)
            .prop_map(str::to_string)
            .boxed(),
        "HAPROXY.BACKEND.MAXCONN" => (1u32..=1_000_000).prop_map(|n| n.to_string()).boxed(),
        "HAPROXY.FRONTEND.PORT" => prop_oneof![
            (1u32..=65535).prop_map(|n| n.to_string()),
            prop::sample::select(&[8080u32, 4444, 9000][..]).prop_map(|n| n.to_string()),
        ]
        .boxed(),
        "HAPROXY.VHOST" => "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}(,[a-z]{1,6}\\.com){0,2}".boxed(),
        "HAPROXY.PATH" | "HAPROXY.BACKEND.HEALTHCHECK" => "/[a-z0-9/._~%-]{0,12}".boxed(),
        "HAPROXY.BACKEND.STICKY" => prop::sample::select(&["true", "false"][..])
            .prop_map(str::to_string)
            .boxed(),
        _ => value().boxed(),
    };
    prop_oneof![8 => fitting, 1 => value()].boxed()
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => prop::sample::select(keys())
            .prop_flat_map(|k| value_for(k).prop_map(move |v| format!("{k}={v}"))),
        1 => text(),
        1 => text().prop_map(|t| format!("HAPROXY.{t}")),
    ]
}

/// Mostly well-formed names (so services get through), sometimes anything.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![8 => "[a-z0-9][a-z0-9:-]{0,12}", 1 => "[a-z0-9][a-z0-9._:-]{0,12}", 1 => text()]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        2 => any::<[u16; 8]>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        2 => "[a-zA-Z0-9-]{1,10}(\\.[a-zA-Z0-9-]{1,10}){0,3}\\.?",
        1 => text(),
    ]
}

fn instance() -> impl Strategy<Value = Instance> {
    (
        name(),
        address(),
        prop_oneof![8 => 1i64..=65535, 1 => any::<i64>()],
        prop::bool::weighted(0.85),
        prop::collection::vec(tag(), 0..4),
        prop_oneof![3 => 0i64..=300, 1 => any::<i64>()],
        prop::bool::weighted(0.8),
    )
        .prop_map(|(id, address, port, enable, mut tags, weight, passing)| {
            if enable {
                tags.insert(0, "HAPROXY.ENABLE=true".into());
            }
            Instance {
                id,
                address,
                port,
                tags,
                weight,
                passing,
            }
        })
}

fn catalog() -> impl Strategy<Value = Catalog> {
    prop::collection::vec(
        (
            name().prop_map(|n| n.replace(':', "")),
            prop::collection::vec(tag(), 0..2),
            prop::collection::vec(instance(), 0..4),
        ),
        0..8,
    )
    .prop_map(|services| {
        Catalog::from_file(CatalogFile {
            services: services
                .into_iter()
                .map(|(name, tags, instances)| CatalogFileService {
                    name,
                    tags,
                    instances,
                })
                .collect(),
        })
    })
}

fn vars() -> impl Strategy<Value = HaproxyVars> {
    prop_oneof![
        3 => Just(Some("example.com".to_string())),
        1 => Just(None),
        1 => "[a-z]{1,8}\\.[a-z]{2,4}".prop_map(Some),
    ]
    .prop_flat_map(|dom| (Just(dom), any::<bool>()))
    .prop_map(|(dom, log_json)| HaproxyVars {
        dom,
        // HAPROXY_LOG_FORMAT=json (settings pair the two).
        log_json,
        log_target: if log_json {
            "stdout format priority"
        } else {
            "stdout format raw"
        }
        .into(),
        ..HaproxyVars::default()
    })
}

fn renderer(config: &Path, socket: &Path) -> Renderer {
    Renderer::new(None, config, socket).expect("the built-in template loads")
}

/// The renderer for the fixed paths, built once (compiling the template is
/// most of the cost of a case otherwise).
fn fixed_renderer() -> &'static Renderer {
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
fn sections(config: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
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
fn normalize_maps(line: &str) -> String {
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
fn skeletons(vars: &HaproxyVars) -> [BTreeMap<String, Vec<String>>; 2] {
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
            .filter(|(h, _)| h != "backend p")
            .map(|(h, lines)| (h, lines.iter().map(|l| normalize_maps(l)).collect()))
            .collect()
    })
}

/// Lines of the template with no placeholder or tag: allowed verbatim.
fn template_literals() -> BTreeSet<String> {
    render::DEFAULT_TEMPLATE
        .lines()
        .filter(|l| !l.contains("{{") && !l.contains("{%") && !l.trim().is_empty())
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// Every line is the template's own or built from `desired`'s validated
/// values, in the template's places.
fn check_structure(
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
        "defaults",
        "frontend app_http_in",
        "backend _no_route",
        "listen _stats",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    want.extend(
        tcp.iter()
            .map(|s| format!("frontend {}_port_{}", s.name, s.frontend_port.unwrap())),
    );
    want.extend(
        desired
            .services
            .iter()
            .map(|s| format!("backend {}", s.name)),
    );
    let headers: Vec<&String> = secs.iter().map(|(h, _)| h).collect();
    prop_assert_eq!(headers, want.iter().collect::<Vec<_>>());

    for (header, lines) in &secs {
        let norm: Vec<String> = lines.iter().map(|l| normalize_maps(l)).collect();
        if let Some(skel) = plain.get(header) {
            // The template's own sections: exactly as for no service.
            if header == "frontend app_http_in" {
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
        } else if let Some(s) = tcp
            .iter()
            .find(|s| *header == format!("frontend {}_port_{}", s.name, s.frontend_port.unwrap()))
        {
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
                    format!("    default_backend {}", s.name),
                ]
            );
        } else {
            let s = desired
                .services
                .iter()
                .find(|s| *header == format!("backend {}", s.name))
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
                let ok = literals.contains(l)
                    || *l == format!("    mode {mode}")
                    || *l == format!("    balance {}", s.balance)
                    || s.healthcheck
                        .as_ref()
                        .is_some_and(|h| *l == format!("    option httpchk GET {h}"))
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
fn json_log_format(mode: &str) -> String {
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
fn is_rendered_address(a: &str) -> bool {
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

/// The properties every (desired, rendered) pair has, whatever the input.
fn check_rendered(
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

    // One backend per accepted service, plus _no_route.
    let backend_names: Vec<&str> = r
        .config
        .lines()
        .filter_map(|l| l.strip_prefix("backend "))
        .collect();
    prop_assert_eq!(backend_names.len(), 1 + desired.services.len());
    let mut want: Vec<&str> = vec!["_no_route"];
    want.extend(desired.services.iter().map(|s| s.name.as_str()));
    prop_assert_eq!(&backend_names, &want);

    // Every accepted service is an enabled catalog service with a valid
    // name; every enabled catalog service is accepted or warned about.
    let accepted: BTreeSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
    for s in &desired.services {
        prop_assert!(is_service_name(&s.name), "accepted name {:?}", s.name);
        let cs = catalog.services.get(&s.name);
        prop_assert!(cs.is_some_and(|cs| enabled(&cs.tags)));
        prop_assert!(
            !warnings
                .iter()
                .any(|w| w.service == s.name && w.message.contains("left out")),
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
                warnings
                    .iter()
                    .any(|w| &w.service == name && w.message.contains("service left out")),
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

    // Map lines: `key backend`, the backend an accepted http service.
    for (name, text) in &r.maps {
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            prop_assert_eq!(w.len(), 2, "{}: {:?}", name, line);
            prop_assert!(accepted.contains(w[1]), "{}: {:?}", name, line);
            let host = w[0].split('/').next().unwrap_or_default();
            prop_assert_eq!(hostname(host), Some(host.to_string()));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

    /// Build and render never panic, and all output is validated.
    #[test]
    fn any_catalog_renders_only_validated_values(catalog in catalog(), vars in vars()) {
        let r = fixed_renderer();
        let ctx = Context::from(&vars);
        let (desired, warnings) = Desired::build(&catalog, &ctx);
        let rendered = r.render(&desired, &vars).expect("render of a validated state");
        check_rendered(&vars, &catalog, &desired, &warnings, &rendered)?;
        // Deterministic.
        prop_assert_eq!(Desired::build(&catalog, &ctx), (desired.clone(), warnings));
        prop_assert_eq!(r.render(&desired, &vars).unwrap(), rendered);
    }

    /// Valid input is not over-rejected: distinct, well-formed services are
    /// all rendered, with one server per passing instance, and no warning.
    #[test]
    fn valid_catalogs_render_every_service(
        specs in prop::collection::vec(
            (
                prop::bool::weighted(0.2),                 // tcp
                prop::sample::select(BALANCES),
                prop::option::of(1u32..=1_000_000),        // maxconn
                prop::option::of("/[a-z0-9._~-]{1,10}"),   // path
                prop::option::of("/[a-z0-9/]{1,10}"),      // healthcheck
                any::<bool>(),                             // sticky
                prop::collection::vec(
                    (any::<[u8; 4]>(), 1i64..=65535, 0i64..=256, any::<bool>()),
                    0..4,
                ),
                any::<bool>(),                             // explicit vhost
            ),
            0..10,
        )
    ) {
        let vars = HaproxyVars { dom: Some("example.com".into()), ..HaproxyVars::default() };
        let mut file = CatalogFile::default();
        let mut want_servers = BTreeMap::new();
        for (i, (tcp, balance, maxconn, path, hc, sticky, insts, vhost)) in specs.iter().enumerate() {
            let name = format!("svc-{i}");
            let mut tags = vec!["HAPROXY.ENABLE=true".to_string(), format!("HAPROXY.BACKEND.BALANCE={balance}")];
            if *tcp {
                tags.push("HAPROXY.PROTOCOL=tcp".into());
                tags.push(format!("HAPROXY.FRONTEND.PORT={}", 10000 + i));
            } else {
                tags.push("HAPROXY.PROTOCOL=http".into());
                if *vhost {
                    tags.push(format!("HAPROXY.VHOST=v{i}.example.org,w{i}.Example.org."));
                }
                if let Some(p) = path {
                    tags.push(format!("HAPROXY.PATH={p}"));
                }
            }
            if let Some(m) = maxconn {
                tags.push(format!("HAPROXY.BACKEND.MAXCONN={m}"));
            }
            if let Some(h) = hc {
                tags.push(format!("HAPROXY.BACKEND.HEALTHCHECK={h}"));
            }
            tags.push(format!("HAPROXY.BACKEND.STICKY={sticky}"));
            let instances: Vec<Instance> = insts
                .iter()
                .enumerate()
                .map(|(j, (ip, port, weight, passing))| Instance {
                    id: format!("svc-{i}:{j}"),
                    address: Ipv4Addr::from(*ip).to_string(),
                    port: *port,
                    tags: tags.clone(),
                    weight: *weight,
                    passing: *passing,
                })
                .collect();
            want_servers.insert(name.clone(), instances.iter().filter(|i| i.passing).count());
            file.services.push(CatalogFileService { name, tags: tags.clone(), instances });
        }
        let catalog = Catalog::from_file(file);
        let (desired, warnings) = Desired::build(&catalog, &Context::from(&vars));
        prop_assert!(warnings.is_empty(), "{:?}", warnings);
        prop_assert_eq!(desired.services.len(), specs.len());
        for s in &desired.services {
            prop_assert_eq!(s.servers.len(), want_servers[&s.name]);
        }
        let r = fixed_renderer();
        let rendered = r.render(&desired, &vars).unwrap();
        check_rendered(&vars, &catalog, &desired, &warnings, &rendered)?;
    }
}

/// A smaller run through `haproxy -c`: whatever the catalog, the config
/// (with its maps) is one HAProxy accepts.
#[test]
fn any_catalog_renders_a_config_haproxy_accepts() {
    testkit::netns::enter();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let r = renderer(&cfg, &dir.path().join("admin.sock"));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 40,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let accepted = std::cell::Cell::new(0usize);
    runner
        .run(&(catalog(), vars()), |(catalog, vars)| {
            let (desired, _) = Desired::build(&catalog, &Context::from(&vars));
            let rendered = r.render(&desired, &vars).unwrap();
            let staged = render::stage(&cfg, &rendered).expect("stage");
            let (valid, msg) = testkit::haproxy_check(&staged.candidate);
            staged.abort();
            prop_assert!(valid, "haproxy -c: {}\n{}", msg, rendered.config);
            accepted.set(accepted.get() + desired.services.len());
            Ok(())
        })
        .unwrap();
    // The generator is not degenerate: some services got through.
    eprintln!("services accepted over the run: {}", accepted.get());
    assert!(accepted.get() > 0, "no service was ever accepted");
}

/// The generator exercises both paths: a fair share of exposed services is
/// accepted and a fair share is left out (else the properties above would
/// hold vacuously).
#[test]
fn generator_yields_accepted_and_rejected_services() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut exposed, mut accepted) = (0usize, 0usize);
    for _ in 0..400 {
        let (catalog, vars) = (catalog(), vars()).new_tree(&mut runner).unwrap().current();
        exposed += catalog
            .services
            .values()
            .filter(|s| enabled(&s.tags))
            .count();
        accepted += Desired::build(&catalog, &Context::from(&vars))
            .0
            .services
            .len();
    }
    eprintln!("generator: {accepted} of {exposed} exposed services accepted");
    assert!(exposed > 400, "too few exposed services: {exposed}");
    let share = accepted as f64 / exposed as f64;
    assert!(
        (0.15..=0.85).contains(&share),
        "{accepted} of {exposed} accepted"
    );
}

/// The checker above catches what it is meant to: a valid rendering passes
/// it, and the same rendering with an injected line, a stray character or
/// an extra backend does not.
#[test]
fn checker_rejects_injected_output() {
    let catalog = Catalog::parse_file(
        r#"{"services":[{"name":"www","instances":[{"id":"www-1","address":"10.0.0.1","port":80,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.BACKEND.MAXCONN=10"]}]}]}"#,
    )
    .unwrap();
    let vars = HaproxyVars {
        dom: Some("example.com".into()),
        ..HaproxyVars::default()
    };
    let (desired, warnings) = Desired::build(&catalog, &Context::from(&vars));
    let good = fixed_renderer().render(&desired, &vars).unwrap();
    assert!(check_rendered(&vars, &catalog, &desired, &warnings, &good).is_ok());
    let server = "    server www-1 10.0.0.1:80 check weight 1 maxconn 10\n";
    assert!(good.config.contains(server), "{}", good.config);
    let injections = [
        "    server www-1 10.0.0.1:80 check weight 1 maxconn 10\n    server evil 6.6.6.6:80 check weight 1\n",
        "    server www-1 10.0.0.1:80 check weight 1 maxconn 10 backup\n",
        "    server www-1 10.0.0.1:80 check weight 1 maxconn 10\n    use_backend evil\n",
        "    server www-1 10.0.0.1:80 check weight 1 maxconn 10\u{7f}\n",
        "    server www-1 10.0.0.1:80 check weight 1 maxconn 10\n\nbackend evil\n",
        "    server www-1 10.0.0.1 check weight 1 maxconn 10\n",
    ];
    let mut swaps: Vec<(&str, &str)> = injections.iter().map(|i| (server, *i)).collect();
    swaps.extend([
        ("    mode http\n    balance", "    mode tcp\n    balance"),
        (
            "    balance roundrobin\n",
            "    balance roundrobin\n    option evil\n",
        ),
        (
            "    balance roundrobin\n",
            "    balance roundrobin\n# evil\n",
        ),
        ("    retries 3\n", "    retries 3\n    option evil\n"),
        (
            "    bind *:8080\n",
            "    bind *:8080\n    use_backend evil\n",
        ),
        ("\nbackend www\n", "\nbackend evil\n"),
    ]);
    for (from, to) in swaps {
        assert!(
            good.config.contains(from),
            "{from:?} not in\n{}",
            good.config
        );
        let mut bad = good.clone();
        bad.config = bad.config.replacen(from, to, 1);
        assert!(
            check_rendered(&vars, &catalog, &desired, &warnings, &bad).is_err(),
            "not caught: {to:?}"
        );
    }
    let mut bad = good.clone();
    for text in bad.maps.values_mut() {
        text.push_str("evil.example.com evil\n");
    }
    assert!(check_rendered(&vars, &catalog, &desired, &warnings, &bad).is_err());
}
