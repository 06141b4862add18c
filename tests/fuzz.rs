//! Fuzz targets, run by `cargo test` on stable Rust (bolero's random
//! engine: no nightly, no cargo-fuzz). Each target reads its seed corpus
//! from `tests/__fuzz__/<target>/corpus/` (real answers: Consul's JSON,
//! HAProxy's runtime API, PEM bundles, catalog files, environment files),
//! runs every seed as it is, then a fixed number of random inputs; each
//! random input is also turned into a mutation of a seed (bit flips,
//! inserted syntax, deleted and spliced ranges), which reaches much deeper
//! into the parsers than random bytes do. Properties: no input panics; and
//! whatever the tag parser or the settings accept renders a config that
//! passes the render checks of tests/proptest_render.rs (tests/render_check):
//! every line the template's or built from validated values, in its place;
//! and a sample of what each render target accepted passes `haproxy -c`
//! (root, in a network namespace, as the other integration tests).
//!
//! Each target prints `fuzz <target>: N inputs` on stderr (`--nocapture`).
//! A longer run (see docs/testing.md):
//! `BOLERO_RANDOM_ITERATIONS=1000000 BOLERO_RANDOM_TEST_TIME_MS=300000 cargo test --release --test fuzz -- --nocapture`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use haproxy_supervisor::discovery::consul;
use haproxy_supervisor::live::{self, Layout};
use haproxy_supervisor::model::{
    Catalog, CatalogFile, CatalogFileService, CatalogService, Context, Desired, Instance, BALANCES,
    KNOWN_TAGS,
};
use haproxy_supervisor::model::{HaproxyVars, Secret};
use haproxy_supervisor::runtime;
use haproxy_supervisor::settings::{Cli, Settings};
use haproxy_supervisor::tls;

mod render_check;
use render_check::{check_rendered, fixed_renderer, renderer};

/// Random inputs per target (besides the corpus), unless
/// `BOLERO_RANDOM_ITERATIONS` says otherwise. The render targets cost
/// about a millisecond an input; the parsers a few microseconds.
const RENDER_INPUTS: usize = 10_000;
const PARSER_INPUTS: usize = 100_000;
/// A cap on each target's time, unless `BOLERO_RANDOM_TEST_TIME_MS` says
/// otherwise: a slow machine runs fewer inputs rather than a longer test.
const TIME_CAP: Duration = Duration::from_secs(8);

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/__fuzz__")
        .join(target)
        .join("corpus")
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seed in {}", dir.display());
    seeds
}

/// Runs `prop` on the corpus of `target`, then on random inputs and on
/// mutations of the seeds they pick; prints how many inputs it ran and how
/// many of them `prop` found accepted (parsed, or rendered), so a target
/// whose inputs are all refused shows.
fn fuzz(
    target: &str,
    random_inputs: usize,
    prop: impl Fn(&[u8]) -> bool + std::panic::RefUnwindSafe,
) {
    let seeds = seeds(target);
    let runs = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    let max_len = seeds.iter().map(Vec::len).max().unwrap_or(0).max(256);
    bolero::check!(name = target)
        .with_iterations(random_inputs)
        .with_test_time(TIME_CAP)
        .with_max_len(max_len)
        .for_each(|input: &[u8]| {
            for input in [input, &mutate(&seeds, input)] {
                runs.fetch_add(1, Ordering::Relaxed);
                if prop(input) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    eprintln!(
        "fuzz {target}: {} inputs, {} accepted ({} seeds in {})",
        runs.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed),
        seeds.len(),
        corpus_dir(target)
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
    );
}

/// Reads bytes off a random input; zeros once it is used up.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        let v = u16::from_le_bytes([self.byte(), self.byte()]) as usize;
        if n == 0 {
            0
        } else {
            v % n
        }
    }
    fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        &items[self.below(items.len())]
    }
    /// Up to `max` bytes of the input as (lossy) text.
    fn text(&mut self, max: usize) -> String {
        let n = self.below(max + 1).min(self.0.len());
        let (t, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(t).into_owned()
    }
}

/// Syntax that means something to JSON, HAProxy, map files or terminals.
const TOKENS: &[&str] = &[
    "\n",
    "\r\n",
    "\t",
    " ",
    "\0",
    "\"",
    "\\",
    "\\u0000",
    "\\n",
    "#",
    "%",
    "$",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    ";",
    "=",
    "/",
    ".",
    "-",
    "0",
    "-1",
    "65536",
    "4294967296",
    "99999999999999999999",
    "1e400",
    "null",
    "true",
    "\u{85}",
    "\u{2028}",
    "\u{feff}",
    "é",
    "HAPROXY.",
    "ENABLE=true",
    "-----BEGIN ",
    "-----END ",
    "CERTIFICATE-----",
    "PRIVATE KEY-----",
];

/// A mutation of one of `seeds`, driven by `input`.
fn mutate(seeds: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut r = Bytes(input);
    let mut out = r.pick(seeds).clone();
    for _ in 0..1 + r.below(8) {
        let pos = r.below(out.len() + 1);
        match r.below(6) {
            0 if pos < out.len() => out[pos] ^= 1 << r.below(8),
            1 => out.insert(pos, r.byte()),
            2 => {
                let t = r.pick(TOKENS).as_bytes();
                out.splice(pos..pos, t.iter().copied());
            }
            3 => {
                let end = (pos + 1 + r.below(32)).min(out.len());
                out.drain(pos..end);
            }
            4 => {
                let end = (pos + 1 + r.below(64)).min(out.len());
                let chunk = out[pos..end].to_vec();
                let at = r.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
            _ => {
                let other = r.pick(seeds);
                let from = r.below(other.len() + 1);
                let end = (from + r.below(128)).min(other.len());
                let at = r.below(out.len() + 1);
                out.splice(at..at, other[from..end].iter().copied());
            }
        }
    }
    out
}

fn vars() -> HaproxyVars {
    HaproxyVars {
        dom: Some("example.com".into()),
        ..HaproxyVars::default()
    }
}

/// Builds and renders `catalog`, and checks the result as the property
/// tests do. Panics on a property that does not hold. Returns the config
/// and how many services it has.
fn render_and_check(catalog: &Catalog, vars: &HaproxyVars) -> (String, usize) {
    let (desired, warnings) = Desired::build(catalog, &Context::from(vars));
    let rendered = fixed_renderer()
        .render(&desired, vars)
        .expect("a validated state renders");
    if let Err(e) = check_rendered(vars, catalog, &desired, &warnings, &rendered) {
        panic!(
            "{e}\nvars: {vars:?}\ncatalog: {catalog:?}\n{}",
            rendered.config
        );
    }
    (rendered.config, desired.services.len())
}

/// How many of the inputs a render target accepts go through `haproxy -c`
/// after its run (a sample over the whole run).
const HAPROXY_CHECKS: usize = 16;

/// A reservoir sample of what a run accepted.
struct Sample<T>(Mutex<(usize, Vec<T>)>);

impl<T> Sample<T> {
    fn new() -> Sample<T> {
        Sample(Mutex::new((0, Vec::new())))
    }

    /// Offers the value `input` was accepted as: kept or not, with the same
    /// chance for every offer of the run.
    fn offer(&self, input: &[u8], value: impl FnOnce() -> T) {
        let mut guard = self.0.lock().unwrap();
        let (seen, kept) = &mut *guard;
        *seen += 1;
        // The slot from the input's own bytes (random inputs are).
        let slot = input
            .iter()
            .fold(*seen, |h, b| h.wrapping_mul(31) ^ *b as usize)
            % *seen;
        if kept.len() < HAPROXY_CHECKS {
            kept.push(value());
        } else if slot < HAPROXY_CHECKS {
            kept[slot] = value();
        }
    }

    fn into_vec(self) -> Vec<T> {
        self.0.into_inner().unwrap().1
    }
}

/// Renders each (what, catalog, vars) for a temporary directory and runs
/// `haproxy -c` on it with its maps (root, in a network namespace): what
/// the model and the settings accept, HAProxy accepts.
fn haproxy_accepts<W: std::fmt::Debug>(target: &str, cases: &[(W, Catalog, HaproxyVars)]) {
    testkit::netns::enter();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let r = renderer(&cfg, &dir.path().join("admin.sock"));
    for (what, catalog, vars) in cases {
        let (desired, _) = Desired::build(catalog, &Context::from(vars));
        let rendered = r.render(&desired, vars).unwrap();
        let staged = haproxy_supervisor::files::stage(&cfg, &rendered).expect("stage");
        let (valid, msg) = testkit::haproxy_check(&staged.candidate);
        staged.abort();
        assert!(valid, "{what:?}: haproxy -c: {msg}\n{}", rendered.config);
    }
    eprintln!(
        "fuzz {target}: {} accepted inputs pass haproxy -c",
        cases.len()
    );
}

/// The sample of a render target, through `haproxy -c`.
fn check_sample(target: &str, sample: Sample<Catalog>) {
    let cases: Vec<((), Catalog, HaproxyVars)> = sample
        .into_vec()
        .into_iter()
        .map(|c| ((), c, vars()))
        .collect();
    haproxy_accepts(target, &cases);
}

// ---------------------------------------------------------------- tags

/// Tag keys: every one the model knows, and near misses.
fn tag_keys() -> Vec<&'static str> {
    let near = [
        "HAPROXY.BACKEND.MAXCON",
        "HAPROXY.",
        "haproxy.vhost",
        "HAPROXY.ENABLE ",
    ];
    KNOWN_TAGS.iter().copied().chain(near).collect()
}

const TAG_VALUES: &[&str] = &[
    "true",
    "false",
    "http",
    "tcp",
    "1",
    "0",
    "256",
    "257",
    "65535",
    "65536",
    "1000000",
    "1000001",
    "8080",
    "4444",
    "15432",
    "web.example.com",
    "a.example.com,b.example.com.",
    "/",
    "/api",
    "/a b",
    "/health",
    "-1",
    "+1",
    "01",
    "",
    "TRUE",
];

/// A value for a tag: from the list, with syntax inserted, or any text.
fn tag_value(r: &mut Bytes) -> String {
    match r.below(4) {
        0 => r.pick(TAG_VALUES).to_string(),
        1 => r.pick(BALANCES).to_string(),
        2 => {
            // TAG_VALUES are ASCII: any index is a char boundary.
            let mut v = r.pick(TAG_VALUES).to_string();
            let (at, t) = (r.below(v.len() + 1), *r.pick(TOKENS));
            v.insert_str(at, t);
            v
        }
        _ => r.text(12),
    }
}

/// A catalog from a random input: a catalog file (as the corpus has), or
/// services built from the input, mostly with the tags and names the model
/// knows, with values from a list, mutated, or any text.
fn decode_catalog(input: &[u8]) -> Catalog {
    if let Some(c) = std::str::from_utf8(input)
        .ok()
        .and_then(|t| Catalog::parse_file(t).ok())
    {
        return c;
    }
    let mut r = Bytes(input);
    let keys = tag_keys();
    let tag = |r: &mut Bytes| -> String {
        match r.below(10) {
            0 => r.text(16),
            _ => format!("{}={}", r.pick(keys.as_slice()), tag_value(r)),
        }
    };
    let names = ["web", "api", "db", "a-b", "x.y", "web_1", "", "-x", "Web"];
    let mut file = CatalogFile::default();
    for s in 0..r.below(5) {
        let name = match r.below(6) {
            0 => r.text(10),
            _ => r.pick(&names).to_string(),
        };
        let mut tags = Vec::new();
        for _ in 0..r.below(3) {
            tags.push(tag(&mut r));
        }
        let mut instances = Vec::new();
        for i in 0..r.below(4) {
            let mut itags = vec!["HAPROXY.ENABLE=true".to_string()];
            for _ in 0..r.below(5) {
                itags.push(tag(&mut r));
            }
            let address = match r.below(6) {
                0 => r.text(16),
                1 => "::1".to_string(),
                2 => "host.example.com".to_string(),
                _ => format!("10.0.{s}.{}", r.byte()),
            };
            instances.push(Instance {
                id: match r.below(6) {
                    0 => r.text(10),
                    _ => format!("{name}-{i}"),
                },
                address,
                port: match r.below(6) {
                    0 => i64::from_le_bytes([r.byte(), r.byte(), r.byte(), 0, 0, 0, 0, r.byte()]),
                    _ => 8000 + r.below(100) as i64,
                },
                tags: itags,
                weight: match r.below(4) {
                    0 => r.byte() as i64 * 3 - 100,
                    _ => 1,
                },
                passing: r.below(5) != 0,
            });
        }
        file.services.push(CatalogFileService {
            name,
            tags,
            instances,
        });
    }
    Catalog::from_file(file)
}

/// The tag parser: any catalog builds and renders only validated values.
#[test]
fn fuzz_tags() {
    let vars = vars();
    let sample = Sample::new();
    fuzz("tags", RENDER_INPUTS, |input| {
        let catalog = decode_catalog(input);
        let accepted = render_and_check(&catalog, &vars).1 > 0;
        if accepted {
            sample.offer(input, || catalog);
        }
        accepted
    });
    check_sample("tags", sample);
}

// ---------------------------------------------------------------- catalog file

/// `Catalog::parse_file` (HAPROXY_CATALOG_FILE): any text parses or is
/// refused; what parses renders only validated values.
#[test]
fn fuzz_catalog_file() {
    let vars = vars();
    let sample = Sample::new();
    fuzz("catalog_file", RENDER_INPUTS, |input| {
        // The file source reads it with read_to_string: UTF-8 or an error.
        let Ok(text) = std::str::from_utf8(input) else {
            return false;
        };
        let Ok(catalog) = Catalog::parse_file(text) else {
            return false;
        };
        let accepted = render_and_check(&catalog, &vars).1 > 0;
        if accepted {
            sample.offer(input, || catalog);
        }
        accepted
    });
    check_sample("catalog_file", sample);
}

// ---------------------------------------------------------------- consul

/// `/v1/catalog/services`: any answer decodes or is refused; a decoded one
/// (each service with an instance, as the watcher would fetch) renders
/// only validated values.
#[test]
fn fuzz_consul_catalog_services() {
    let vars = vars();
    let sample = Sample::new();
    fuzz("consul_catalog_services", RENDER_INPUTS, |input| {
        if let Ok(tags) = consul::decode_catalog_services(input) {
            let mut catalog = Catalog::default();
            for (i, (name, tags)) in tags.into_iter().take(16).enumerate() {
                let instance = Instance {
                    id: format!("{i}"),
                    address: format!("10.0.0.{i}"),
                    port: 80,
                    tags: tags.clone(),
                    weight: 1,
                    passing: true,
                };
                catalog.services.insert(
                    name,
                    CatalogService {
                        tags,
                        instances: vec![instance],
                        created: i as u64,
                    },
                );
            }
            let accepted = render_and_check(&catalog, &vars).1 > 0;
            if accepted {
                sample.offer(input, || catalog);
            }
            accepted
        } else {
            false
        }
    });
    check_sample("consul_catalog_services", sample);
}

/// `/v1/health/state/any`: any answer decodes or is refused.
#[test]
fn fuzz_consul_health_state() {
    fuzz("consul_health_state", PARSER_INPUTS, |input| {
        consul::decode_health_state(input).is_ok()
    });
}

/// `/v1/health/service/<name>`: any answer decodes or is refused; the
/// instances decoded render only validated values.
#[test]
fn fuzz_consul_health_service() {
    let vars = vars();
    let sample = Sample::new();
    fuzz("consul_health_service", RENDER_INPUTS, |input| {
        if let Ok((instances, created, _merged)) = consul::decode_health_service(input) {
            let mut tags: Vec<String> = instances.iter().flat_map(|i| i.tags.clone()).collect();
            tags.sort();
            tags.dedup();
            let mut catalog = Catalog::default();
            catalog.services.insert(
                "web".into(),
                CatalogService {
                    tags,
                    instances,
                    created: created.unwrap_or(u64::MAX),
                },
            );
            let accepted = render_and_check(&catalog, &vars).1 > 0;
            if accepted {
                sample.offer(input, || catalog);
            }
            accepted
        } else {
            false
        }
    });
    check_sample("consul_health_service", sample);
}

// ---------------------------------------------------------------- runtime API

/// The servers of the config the `servers_state` corpus was dumped from
/// (the `tags` seed mixed_health.json): `carry_state` matches rows to them.
fn layout() -> &'static Layout {
    static L: OnceLock<Layout> = OnceLock::new();
    L.get_or_init(|| {
        Layout::from_text(
            "backend api\n    server api-1 127.0.0.3:9003 check weight 1\n\
             backend web\n    server web-1 127.0.0.1:9001 check weight 1 maxconn 100\n\
             \x20   server web-2 127.0.0.2:9002 check weight 3 maxconn 100\n",
        )
    })
}

/// `show servers state`: the parser and `carry_state` (which writes the
/// next generation's server-state file from it) take any answer; the state
/// file has the version line, then only the answer's own lines.
#[test]
fn fuzz_servers_state() {
    fuzz("servers_state", PARSER_INPUTS, |input| {
        let text = String::from_utf8_lossy(input);
        let parsed = runtime::parse_servers_state(&text);
        if let Some(st) = &parsed {
            let again = runtime::parse_servers_state(&st.to_file())
                .expect("the state file of a parsed answer parses");
            assert_eq!(again.rows.len(), st.rows.len());
            for row in &st.rows {
                let _ = (row.is_up(), row.draining(), row.in_maintenance());
            }
        }
        let out = live::carry_state(&text, layout(), &Default::default());
        // Its lines as written (a comment's stray '\r' is kept: lines()
        // would drop it from the last).
        let mut lines = out.strip_suffix('\n').unwrap_or(&out).split('\n');
        assert_eq!(lines.next(), Some("1"));
        let input_lines: Vec<&str> = text.lines().collect();
        for l in lines {
            assert!(
                input_lines.contains(&l)
                    || input_lines.iter().any(|i| {
                        let (a, b): (Vec<&str>, Vec<&str>) =
                            (i.split_whitespace().collect(), l.split(' ').collect());
                        a.len() == b.len()
                            && a.iter().zip(&b).enumerate().all(|(n, (x, y))| {
                                x == y || ((n == 7 || n == 8) && y.parse::<u32>().is_ok())
                            })
                    }),
                "carry_state wrote {l:?}, not a line of the answer"
            );
        }
        parsed.is_some()
    });
}

/// `show map <map>`: any answer parses or is refused.
#[test]
fn fuzz_show_map() {
    fuzz("show_map", PARSER_INPUTS, |input| {
        let text = String::from_utf8_lossy(input);
        let parsed = runtime::parse_show_map(&text);
        if let Some(entries) = &parsed {
            assert_eq!(
                entries.len(),
                text.lines().filter(|l| !l.is_empty()).count()
            );
        }
        parsed.is_some()
    });
}

/// `show stat <backend> 4 -1` (CSV), and `haproxy -v` for the version's
/// capabilities: any answer parses or is refused.
#[test]
fn fuzz_show_stat() {
    fuzz("show_stat", PARSER_INPUTS, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = live::Caps::from_version(&text);
        runtime::parse_stat_connections(&text, "web", "web-1").is_some()
    });
}

// ---------------------------------------------------------------- PEM

/// A PEM bundle (HAPROXY_CERTS_DIR): any file is a bundle or refused; a
/// bundle's PEM (what the store writes and `set ssl cert` sends) has no
/// blank line nor carriage return, and is the same bundle read again.
#[test]
fn fuzz_pem_bundle() {
    fuzz("pem_bundle", PARSER_INPUTS / 4, |input| {
        let Ok(b) = tls::parse_bundle("a.pem", input, 1_900_000_000) else {
            return false;
        };
        assert!(!b.pem.contains("\n\n") && !b.pem.contains('\r'), "{b:?}");
        assert!(b.pem.lines().all(|l| !l.trim().is_empty()), "{b:?}");
        let again = tls::parse_bundle("a.pem", b.pem.as_bytes(), 1_900_000_000)
            .expect("a bundle's own PEM is a bundle");
        assert_eq!(again.pem, b.pem);
        assert_eq!(again.dns_names, b.dns_names);
        true
    });
}

// ---------------------------------------------------------------- settings

/// Every variable of the command line that takes a value: (variable, flag).
fn setting_vars() -> &'static [(String, String)] {
    static V: OnceLock<Vec<(String, String)>> = OnceLock::new();
    V.get_or_init(|| {
        Cli::command()
            .get_arguments()
            .filter(|a| a.get_action().takes_values())
            .filter_map(|a| {
                let env = a.get_env()?.to_str()?.to_string();
                let long = a.get_long()?.to_string();
                // Files the supervisor reads at start: not validated here.
                let files = ["HAPROXY_CATALOG_FILE", "HAPROXY_TEMPLATE", "CONSUL_CACERT"];
                (!files.contains(&env.as_str())).then_some((env, long))
            })
            .collect()
    })
}

const SETTING_VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "3",
    "100",
    "65535",
    "65536",
    "10000000",
    "10000001",
    "-1",
    "3s",
    "100ms",
    "1m",
    "24d",
    "999999999d",
    "1000000000",
    "100ms:1s",
    "1s:100ms",
    "example.com",
    "a..b",
    "127.0.0.1",
    "::1",
    "127.0.0.1:514",
    "/dev/log",
    "syslog.example.com",
    "user:pass",
    "u:p:q",
    "50%",
    "off",
    "101%",
    "seamless",
    "syn-drop",
    "plain",
    "json",
    "text",
    "true",
    "false",
    "dc1",
    "http://127.0.0.1:8500",
    "a,b",
];

/// A set of settings from a random input: an environment file
/// (`VAR=value` lines, as the corpus has), or variables picked from the
/// command line's with values from a list, mutated, or any text.
fn decode_settings(input: &[u8]) -> Vec<(String, String)> {
    let all = setting_vars();
    if let Ok(text) = std::str::from_utf8(input) {
        let pairs: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| all.iter().any(|(v, _)| v == k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !pairs.is_empty() {
            return pairs;
        }
    }
    let mut r = Bytes(input);
    (0..r.below(6))
        .map(|_| {
            let var = r.pick(all).0.clone();
            let value = match r.below(4) {
                0 | 1 => r.pick(SETTING_VALUES).to_string(),
                2 => format!("{}{}", r.pick(SETTING_VALUES), r.pick(TOKENS)),
                _ => r.text(16),
            };
            (var, value)
        })
        .collect()
}

/// `vars` with every text value replaced by a harmless one of the same
/// shape (one word): a config rendered from it has the lines a config from
/// `vars` must have.
fn reference(vars: &HaproxyVars) -> HaproxyVars {
    let mut r = vars.clone();
    r.dom = vars.dom.as_ref().map(|_| "example.com".into());
    for t in [
        &mut r.timeout_connect,
        &mut r.timeout_client,
        &mut r.timeout_server,
        &mut r.timeout_http_keep_alive,
        &mut r.timeout_http_request,
        &mut r.timeout_queue,
        &mut r.timeout_tunnel,
        &mut r.hard_stop_after,
    ] {
        *t = "1s".into();
    }
    if !r.log_target.starts_with("stdout ") {
        r.log_target = "127.0.0.1:514".into();
    }
    r.stats_bind = "*".into();
    r.stats_auth = vars.stats_auth.as_ref().map(|_| Secret::new("u:p"));
    r.user = vars.user.as_ref().map(|_| "u".into());
    r.group = vars.group.as_ref().map(|_| "g".into());
    r
}

/// Whether `vars` sends HAProxy's logs to a syslog host by name: HAProxy
/// resolves it when it reads the config, so whether `haproxy -c` takes it
/// depends on the machine's DNS, not on the settings.
fn names_a_syslog_host(vars: &HaproxyVars) -> bool {
    let t = vars.log_target.as_str();
    if t.starts_with("stdout ") || t.starts_with('/') {
        return false;
    }
    let host = match t.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => h,
        _ => t,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_err() && host != "localhost"
}

/// Settings: any values of the variables are accepted or refused through
/// the parse path of the binary (each variable's flag, as clap reads the
/// variable); what is accepted renders a config whose every generated
/// value stays on its own line, in its own word. A sample of the accepted
/// settings then goes through `haproxy -c`: what the settings accept,
/// HAProxy accepts (root, in a network namespace).
#[test]
fn fuzz_settings() {
    let catalog = Catalog::parse_file(
        r#"{"services":[
          {"name":"web","instances":[{"id":"web-1","address":"10.0.0.1","port":80,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.PATH=/w"]}]},
          {"name":"db","instances":[{"id":"db-1","address":"10.0.0.2","port":5432,
            "tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=tcp","HAPROXY.FRONTEND.PORT=15432"]}]}
        ]}"#,
    )
    .unwrap();
    let flags: BTreeMap<&str, &str> = setting_vars()
        .iter()
        .map(|(v, f)| (v.as_str(), f.as_str()))
        .collect();
    let sample = Sample::new();
    fuzz("settings", RENDER_INPUTS, |input| {
        let pairs = decode_settings(input);
        let args = std::iter::once("haproxy-supervisor".to_string()).chain(
            pairs
                .iter()
                .map(|(k, v)| format!("--{}={v}", flags[k.as_str()])),
        );
        let Ok(cli) = Cli::try_parse_from(args) else {
            return false;
        };
        let Ok(settings) = Settings::from_options(&cli.options) else {
            return false;
        };
        if !names_a_syslog_host(&settings.vars) {
            sample.offer(input, || (pairs.clone(), settings.vars.clone()));
        }
        let mut vars = settings.vars.clone();
        // What resolve_user would fill from the machine's users.
        vars.user = Some("haproxy".into());
        vars.group = Some("haproxy".into());
        let (config, _) = render_and_check(&catalog, &vars);
        let (want, _) = render_and_check(&catalog, &reference(&vars));
        let (got, want): (Vec<&str>, Vec<&str>) =
            (config.lines().collect(), want.lines().collect());
        assert_eq!(got.len(), want.len(), "{pairs:?}:\n{config}");
        for (g, w) in got.iter().zip(&want) {
            let words = |l: &str| l.split(' ').count();
            let first = |l: &str| l.split_whitespace().next().map(str::to_string);
            assert!(
                words(g) == words(w) && first(g) == first(w),
                "{pairs:?}: line {g:?} where the template has {w:?}"
            );
        }
        true
    });

    let cases: Vec<_> = sample
        .into_vec()
        .into_iter()
        .map(|(pairs, vars)| (pairs, catalog.clone(), vars))
        .collect();
    haproxy_accepts("settings", &cases);
}
