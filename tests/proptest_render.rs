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

/// Every balance algorithm the model accepts.
use haproxy_supervisor::model::{BACKEND_PROTOS, BALANCES, KNOWN_TAGS};

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
    .prop_flat_map(|dom| (Just(dom), any::<bool>(), any::<bool>()))
    .prop_map(|(dom, log_json, ca)| HaproxyVars {
        dom,
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
    runner
        .run(&(catalog(), vars()), |(catalog, vars)| {
            let (desired, _) = Desired::build(&catalog, &Context::from(&vars));
            let rendered = r.render(&desired, &vars).unwrap();
            let staged = files::stage(&cfg, &rendered).expect("stage");
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
