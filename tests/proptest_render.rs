//! Issue #2: property tests of tag parsing and rendering through the library
//! API. Arbitrary service names, instance ids, addresses, ports, weights and
//! tags (any Unicode, control characters, HAProxy syntax) go through
//! `Desired::build` and `Renderer::render`; nothing panics, and every line
//! rendered is either the template's or built from validated values. A
//! smaller run puts the results through `haproxy -c`.
//! Run as root (for `haproxy -c` in a network namespace):
//! `cargo test --test proptest_render`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use haproxy_supervisor::files;
use haproxy_supervisor::model::HaproxyVars;
use haproxy_supervisor::model::{
    enabled, Catalog, CatalogFile, CatalogFileService, Context, Desired, Instance,
};
use proptest::prelude::*;

mod render_check;
use render_check::{check_rendered, fixed_renderer, renderer};

/// Tag keys: every one the model knows, and some it does not.
fn keys() -> Vec<&'static str> {
    let unknown = ["HAPROXY.BACKEND.MAXCON", "HAPROXY.", "haproxy.vhost"];
    KNOWN_TAGS.iter().copied().chain(unknown).collect()
}

/// The rule tags (issue 21), drawn apart so that they do not crowd out
/// the others.
fn rule_keys() -> Vec<&'static str> {
    let headers = [
        "HAPROXY.REQUEST.HEADER.X-Team",
        "HAPROXY.RESPONSE.HEADER.X-Frame-Options",
        "HAPROXY.REQUEST.HEADER.Host",
    ];
    RULE_TAGS.iter().copied().chain(headers).collect()
}

/// Every balance algorithm the model accepts.
use haproxy_supervisor::model::{BACKEND_PROTOS, BALANCES, KNOWN_TAGS};
use haproxy_supervisor::rules::RULE_TAGS;

/// A CA file for `HAPROXY_BACKEND_CA_FILE` (`haproxy -c` loads it), made
/// once per test process.
fn ca_file() -> String {
    static CA: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let path = dir.path().join("backend-ca.pem");
        std::fs::write(&path, p.self_signed(&key).unwrap().pem()).unwrap();
        let path = path.to_str().unwrap().to_string();
        (dir, path)
    })
    .1
    .clone()
}

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
        1 => Just("passthrough".to_string()),
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
        "HAPROXY.TLS" => prop::sample::select(&["terminate", "passthrough"][..])
            .prop_map(str::to_string)
            .boxed(),
        "HAPROXY.BACKEND.STICKY" => prop::sample::select(&["true", "false"][..])
            .prop_map(str::to_string)
            .boxed(),
        "HAPROXY.PATH.STRIP" | "HAPROXY.COMPRESS" => prop::sample::select(&["true", "false"][..])
            .prop_map(str::to_string)
            .boxed(),
        "HAPROXY.PATH.PREFIX" => "/[a-z0-9._~-]{1,8}(/[a-z0-9]{1,4}){0,2}".boxed(),
        "HAPROXY.BACKEND.HOST" => "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}(:[1-9][0-9]{0,3})?".boxed(),
        "HAPROXY.BACKEND.TIMEOUT" => (1u32..100_000).prop_map(|n| format!("{n}ms")).boxed(),
        "HAPROXY.REDIRECT" => (
            prop::sample::select(&["301", "302", "307", "308", "303"][..]),
            "https?://[a-z]{1,6}\\.com(:[1-9][0-9]{0,3})?(/[a-z0-9]{1,5}){0,2}/?",
        )
            .prop_map(|(c, u)| format!("{c},{u}"))
            .boxed(),
        "HAPROXY.ALLOW" | "HAPROXY.DENY" => {
            prop::collection::vec((any::<[u8; 4]>(), 8u8..=32), 1..4)
                .prop_map(|nets| {
                    nets.iter()
                        .map(|(ip, len)| {
                            let net = ipnet::Ipv4Net::new(Ipv4Addr::from(*ip), *len)
                                .unwrap()
                                .trunc();
                            net.to_string()
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .boxed()
        }
        "HAPROXY.AUTH" => ("[a-z]{1,8}", "[a-zA-Z0-9./]{8,12}", "[0-9a-f]{64}")
            .prop_map(|(u, s, h)| format!("{u}:{s}:{h}"))
            .boxed(),
        "HAPROXY.RATE_LIMIT" => (1u32..=1_000_000).prop_map(|n| n.to_string()).boxed(),
        "HAPROXY.ROUTE.WEIGHT" => (0u32..=100).prop_map(|n| n.to_string()).boxed(),
        "HAPROXY.ROUTE.STICKY" => prop::sample::select(&["true", "false"][..])
            .prop_map(str::to_string)
            .boxed(),
        k if k.contains(".HEADER.") => "[!-~]{1,12}".boxed(),
        "HAPROXY.BACKEND.PROTO" => prop::sample::select(BACKEND_PROTOS)
            .prop_map(str::to_string)
            .boxed(),
        "HAPROXY.BACKEND.TLS_VERIFY" => prop::sample::select(&["required", "none"][..])
            .prop_map(str::to_string)
            .boxed(),
        "HAPROXY.BACKEND.TLS_NAME" => "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}".boxed(),
        "HAPROXY.BACKEND.PROXY_PROTOCOL" => prop::sample::select(&["v1", "v2"][..])
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
        3 => prop::sample::select(rule_keys())
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

/// HAPROXY_PROXY_PROTOCOL_FROM as an operator may write it: networks and
/// addresses (some with host bits or out-of-range prefixes), or anything.
fn proxy_sources() -> impl Strategy<Value = Option<String>> {
    let item = prop_oneof![
        any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        (any::<[u8; 4]>(), 0u8..=34).prop_map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(a))),
        (0u8..=255, 8u8..=24).prop_map(|(a, l)| format!("{a}.0.0.0/{l}")),
        any::<[u16; 8]>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        Just("2001:db8::/32".to_string()),
        text(),
    ];
    prop_oneof![
        2 => Just(None),
        2 => prop::collection::vec(item, 1..4).prop_map(|v| Some(v.join(","))),
        1 => text().prop_map(Some),
    ]
}

/// The variables' values as settings validates them: only what it
/// accepts reaches the template.
fn validated_sources(raw: Option<String>) -> Vec<String> {
    let o = haproxy_supervisor::settings::Options {
        proxy_protocol_from: raw,
        ..Default::default()
    };
    haproxy_supervisor::settings::Settings::from_options(&o)
        .map(|s| s.vars.proxy_protocol_from)
        .unwrap_or_default()
}

fn vars() -> impl Strategy<Value = HaproxyVars> {
    prop_oneof![
        3 => Just(Some("example.com".to_string())),
        1 => Just(None),
        1 => "[a-z]{1,8}\\.[a-z]{2,4}".prop_map(Some),
    ]
    .prop_flat_map(|dom| {
        (
            Just(dom),
            any::<bool>(),
            any::<bool>(),
            proxy_sources(),
            any::<bool>(),
        )
    })
    .prop_map(|(dom, log_json, https, sources, ca)| HaproxyVars {
        dom,
        // HAPROXY_CERTS_DIR set: the HTTPS port, where passthrough is.
        https_port: https.then_some(8443),
        proxy_protocol_from: validated_sources(sources),
        // HAPROXY_BACKEND_CA_FILE: TLS backends verified, or left out.
        backend_ca_file: ca.then(ca_file),
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
                (
                    prop::sample::select(BACKEND_PROTOS),
                    any::<bool>(),                         // TLS_VERIFY=none
                    prop::option::of("[a-z]{1,6}\\.[a-z]{1,6}"), // TLS_NAME
                    prop::option::of(prop::sample::select(&["v1", "v2"][..])),
                ),
            ),
            0..10,
        )
    ) {
        let vars = HaproxyVars {
            dom: Some("example.com".into()),
            backend_ca_file: Some(ca_file()),
            ..HaproxyVars::default()
        };
        let mut file = CatalogFile::default();
        let mut want_servers = BTreeMap::new();
        for (i, (tcp, balance, maxconn, path, hc, sticky, insts, vhost, (proto, no_verify, tls_name, pp))) in specs.iter().enumerate() {
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
                tags.push(format!("HAPROXY.BACKEND.PROTO={proto}"));
                if proto.ends_with("-tls") {
                    if *no_verify {
                        tags.push("HAPROXY.BACKEND.TLS_VERIFY=none".into());
                    }
                    if let Some(n) = tls_name {
                        tags.push(format!("HAPROXY.BACKEND.TLS_NAME={n}"));
                    }
                }
            }
            if let Some(v) = pp {
                tags.push(format!("HAPROXY.BACKEND.PROXY_PROTOCOL={v}"));
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
    let with_rules = std::cell::Cell::new(0usize);
    runner
        .run(&(catalog(), vars()), |(catalog, vars)| {
            let (desired, _) = Desired::build(&catalog, &Context::from(&vars));
            let rendered = r.render(&desired, &vars).unwrap();
            let staged = files::stage(&cfg, &rendered).expect("stage");
            let (valid, msg) = testkit::haproxy_check(&staged.candidate);
            staged.abort();
            prop_assert!(valid, "haproxy -c: {}\n{}", msg, rendered.config);
            accepted.set(accepted.get() + desired.services.len());
            with_rules.set(
                with_rules.get()
                    + desired
                        .services
                        .iter()
                        .filter(|s| !s.rules.is_empty())
                        .count(),
            );
            Ok(())
        })
        .unwrap();
    // ... and some of them with rules (issue 21).
    eprintln!(
        "services with rules accepted over the run: {}",
        with_rules.get()
    );
    assert!(
        with_rules.get() > 0,
        "no service with rules was ever accepted"
    );
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
    let (mut passthrough, mut sources) = (0usize, 0usize);
    for _ in 0..1000 {
        let (catalog, vars) = (catalog(), vars()).new_tree(&mut runner).unwrap().current();
        passthrough += Desired::build(&catalog, &Context::from(&vars))
            .0
            .services
            .iter()
            .filter(|s| s.passthrough)
            .count();
        sources += usize::from(!vars.proxy_protocol_from.is_empty());
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
    // HAPROXY.TLS=passthrough and HAPROXY_PROXY_PROTOCOL_FROM get through
    // too (so the renders above and `haproxy -c` see them).
    eprintln!("generator: {passthrough} passthrough services, {sources} source lists");
    assert!(
        passthrough >= 5 && sources >= 100,
        "{passthrough} {sources}"
    );
    assert!(exposed > 1000, "too few exposed services: {exposed}");
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
        ("\nbackend www from ", "\nbackend evil from "),
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

/// TLS passthrough services (with and without certificates served) and
/// a PROXY protocol source list, beside HTTP and TCP services: `haproxy
/// -c` accepts the config, and every line passes the checks above.
#[test]
fn passthrough_and_proxy_sources_render_a_config_haproxy_accepts() {
    testkit::netns::enter();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let r = renderer(&cfg, &dir.path().join("admin.sock"));
    let catalog = Catalog::parse_file(
        r#"{"services":[
        {"name":"www","instances":[{"id":"w1","address":"10.0.0.1","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.PATH=/api"]}]},
        {"name":"raw","instances":[{"id":"r1","address":"10.0.0.2","port":80,"tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=tcp","HAPROXY.FRONTEND.PORT=9000"]}]},
        {"name":"sec","instances":[{"id":"s1","address":"10.0.0.3","port":443,"tags":["HAPROXY.ENABLE=true","HAPROXY.TLS=passthrough","HAPROXY.VHOST=a.test,b.test"]}]},
        {"name":"sec2","instances":[{"id":"s2","address":"10.0.0.4","port":443,"tags":["HAPROXY.ENABLE=true","HAPROXY.TLS=passthrough","HAPROXY.PROTOCOL=tcp","HAPROXY.BACKEND.STICKY=true","HAPROXY.BACKEND.BALANCE=leastconn"]}]},
        {"name":"bad","instances":[{"id":"x1","address":"10.0.0.5","port":443,"tags":["HAPROXY.ENABLE=true","HAPROXY.TLS=passthrough","HAPROXY.PATH=/x"]}]}
    ]}"#,
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["www.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pem = dir.path().join("www.pem");
    std::fs::write(&pem, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    let crt_list = dir.path().join("crt-list");
    std::fs::write(&crt_list, format!("{}\n", pem.display())).unwrap();
    for (log_json, tls) in [(false, false), (true, false), (false, true), (true, true)] {
        let vars = HaproxyVars {
            dom: Some("example.com".into()),
            https_port: Some(8443),
            log_json,
            proxy_protocol_from: validated_sources(Some(
                "10.0.0.0/8,192.168.1.5,2001:db8::/32".into(),
            )),
            ..HaproxyVars::default()
        };
        assert_eq!(vars.proxy_protocol_from.len(), 3);
        let (mut desired, warnings) = Desired::build(&catalog, &Context::from(&vars));
        assert_eq!(desired.services.len(), 4, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.service == "bad" && w.tag == "HAPROXY.PATH" && w.left_out),
            "{warnings:?}"
        );
        if tls {
            desired.tls = Some(haproxy_supervisor::model::TlsFrontend {
                crt_list: crt_list.display().to_string(),
            });
        }
        let rendered = r.render(&desired, &vars).unwrap();
        assert!(rendered.config.contains("frontend app_https_in from base"));
        assert_eq!(
            rendered
                .config
                .matches("tcp-request connection expect-proxy layer4 if { src 10.0.0.0/8 192.168.1.5 2001:db8::/32 }")
                .count(),
            3,
            "{}",
            rendered.config
        );
        let staged = files::stage(&cfg, &rendered).expect("stage");
        let (valid, msg) = testkit::haproxy_check(&staged.candidate);
        staged.abort();
        assert!(valid, "haproxy -c: {msg}\n{}", rendered.config);
        if !tls {
            let fixed = fixed_renderer().render(&desired, &vars).unwrap();
            check_rendered(&vars, &catalog, &desired, &warnings, &fixed).unwrap();
        }
    }
}
