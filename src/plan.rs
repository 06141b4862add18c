//! `haproxy-supervisor plan`: what the running supervisor would change for
//! a catalog, and whether live or by a reload (`terraform plan`,
//! `consul-template -dry`).
//!
//! It reads only. What serves is the config the supervisor keeps on disk
//! (`--config-file`: only ever replaced by a config that passed `haproxy
//! -c` and, after live changes, the config applied live) and the map files
//! it names; the catalog is rendered by the same pipeline as `render`, and
//! the two are diffed by [`Running::plan`] (the verdict: what the
//! supervisor does) and [`Running::changes`] (every change, each judged
//! on its own). Nothing is written, and the admin socket is not used.
//!
//! Exit codes: 0 nothing to do, 2 live changes only, 3 a reload, 1 an
//! error (a malformed catalog, no config on disk).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{self, CliError};
use crate::events::Event;
use crate::files;
use crate::live::{proxy_name, Caps, Layout, Op, Plan, Running, SectionChange, Structural};
use crate::render::Rendered;
use crate::settings::{PlanFormat, Settings};

/// Nothing to do.
pub const EXIT_SAME: i32 = 0;
/// Live changes only.
pub const EXIT_LIVE: i32 = 2;
/// A reload.
pub const EXIT_RELOAD: i32 = 3;

/// Why there is no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error("--no-render: the external watcher's config is reloaded as a whole; nothing to plan")]
    NoRender,
    #[error("cannot read the config that serves, {path}: {source} (is --config-file the running supervisor's?)")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read map file {path} that {config} names: {source}")]
    ReadMap {
        path: PathBuf,
        config: PathBuf,
        source: std::io::Error,
    },
    #[error("the config on disk kept changing while it was read; try again")]
    Unsettled,
    #[error("cannot run {bin} -v: {source}")]
    HaproxyVersion {
        bin: PathBuf,
        source: std::io::Error,
    },
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// `+` added, `-` removed, `~` changed.
    pub sign: char,
    /// `service`, `server`, `map`, `section`, `certificate`.
    pub kind: &'static str,
    /// What: `www/www-3`, `api`, `hosts`, `frontend http`, `a.pem`.
    pub name: String,
    /// The change itself: an address, `weight 1 → 5`, a map entry.
    pub detail: String,
    /// Whether it could go live on its own.
    pub live: bool,
    /// Why it needs a reload (empty when live).
    pub reason: String,
}

/// A whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `same`, `live` or `reload`: what the supervisor does.
    pub verdict: &'static str,
    /// Why it reloads (empty otherwise).
    pub reason: String,
    pub exit_code: i32,
    /// The config compared against.
    pub serving_config: String,
    /// Pids in `<run-dir>/haproxy.pids` (the HAProxy processes the
    /// supervisor runs); empty when there is none.
    pub haproxy_pids: Vec<i32>,
    pub changes: Vec<Item>,
}

impl Report {
    /// The human-readable form: one line per change, then the verdict.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let pids = if self.haproxy_pids.is_empty() {
            "no haproxy.pids in the run dir".to_string()
        } else {
            format!(
                "haproxy pid {}",
                self.haproxy_pids
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        out.push_str(&format!("# serving: {} ({pids})\n", self.serving_config));
        for i in &self.changes {
            let how = if i.live {
                "live".to_string()
            } else {
                format!("reload: {}", i.reason)
            };
            let detail = if i.detail.is_empty() {
                String::new()
            } else {
                format!(" {}", i.detail)
            };
            out.push_str(&format!(
                "{} {} {}{detail}  {how}\n",
                i.sign, i.kind, i.name
            ));
        }
        let verdict = match self.verdict {
            "same" => "nothing to change".to_string(),
            "live" => "live changes only, no reload".to_string(),
            _ => format!("a reload: {}", self.reason),
        };
        out.push_str(&format!("plan: {verdict} (exit {})\n", self.exit_code));
        out
    }
}

/// `plan`: prints the plan; the exit code says what it needs.
pub async fn run(settings: &Settings, format: PlanFormat) -> i32 {
    match report(settings).await {
        Ok(r) => {
            match format {
                PlanFormat::Text => print!("{}", r.text()),
                PlanFormat::Json => match serde_json::to_string_pretty(&r) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        crate::log!(error, Event::Fatal, error = %e, "cannot encode the plan: {e}");
                        return 1;
                    }
                },
            }
            r.exit_code
        }
        Err(e) => {
            crate::log!(error, Event::Fatal, error = %e, "{e}");
            1
        }
    }
}

/// Reads what serves, renders the catalog and diffs them.
pub async fn report(settings: &Settings) -> Result<Report, PlanError> {
    if matches!(settings.source, crate::settings::SourceSettings::External) {
        return Err(PlanError::NoRender);
    }
    let catalog = cli::load_catalog(settings).await?;
    let certs = settings
        .certs_dir
        .as_ref()
        .map(|dir| crate::tls::peek(dir, &settings.config_file));
    let tls = certs.as_ref().and_then(|(_, _, f)| f.clone());
    // The sockets the running supervisor holds bind as it renders them.
    let binds = crate::listeners::Binds::read(&settings.run_dir.join("listeners"));
    let (rendered, maps_dir) = cli::render_catalog(settings, &catalog, tls, true, &binds)?;
    let serving = serving(&settings.config_file, &maps_dir)?;
    let caps = caps(&settings.haproxy_bin)?;
    let old = Layout::new(&serving, &maps_dir);
    let new = Layout::new(&rendered, &maps_dir);
    let running = Running::started(old.clone());
    let mut changes = items(&running, &new, caps);
    let live_on = settings.live_changes;
    if !live_on {
        for i in changes.iter_mut().filter(|i| i.live) {
            i.live = false;
            i.reason = LIVE_OFF.into();
        }
    }
    let (mut exit_code, mut reason) = match running.plan(&new, caps) {
        Plan::Same => (EXIT_SAME, String::new()),
        Plan::Live { .. } if !live_on => (EXIT_RELOAD, LIVE_OFF.to_string()),
        Plan::Live { .. } => (EXIT_LIVE, String::new()),
        Plan::Reload(why) => (EXIT_RELOAD, why.to_string()),
    };
    if let Some((served, new_certs, _)) = &certs {
        let crt_list = crate::tls::store_dir(&settings.config_file).join("crt-list");
        let live = live_on && serving.config.contains(&crt_list.display().to_string());
        let d = crate::tls::diff_certs(served, new_certs, live);
        let any = !(d.added.is_empty() && d.replaced.is_empty() && d.removed.is_empty());
        for (sign, list) in [('+', &d.added), ('~', &d.replaced), ('-', &d.removed)] {
            for b in list.iter() {
                changes.push(Item {
                    sign,
                    kind: "certificate",
                    name: b.name.clone(),
                    detail: if sign == '-' {
                        String::new()
                    } else {
                        format!("subject {} serial {}", b.subject, b.serial)
                    },
                    live: d.reload.is_none(),
                    reason: d.reload.clone().unwrap_or_default(),
                });
            }
        }
        if any {
            match &d.reload {
                Some(why) if exit_code != EXIT_RELOAD => {
                    exit_code = EXIT_RELOAD;
                    reason = format!("certificates: {why}");
                }
                None if exit_code == EXIT_SAME => exit_code = EXIT_LIVE,
                _ => {}
            }
        }
    }
    let verdict = match exit_code {
        EXIT_SAME => "same",
        EXIT_LIVE => "live",
        _ => "reload",
    };
    Ok(Report {
        verdict,
        reason,
        exit_code,
        serving_config: files::absolute(&settings.config_file).display().to_string(),
        haproxy_pids: pids(&settings.run_dir),
        changes,
    })
}

const LIVE_OFF: &str = "live changes are off (HAPROXY_NO_LIVE)";

/// The config on disk and the map files it names, read so that both are
/// of the same moment (the supervisor replaces the config, then removes
/// the maps it no longer names).
fn serving(config: &Path, maps_dir: &str) -> Result<Rendered, PlanError> {
    let read_config = || {
        std::fs::read_to_string(config).map_err(|source| PlanError::ReadConfig {
            path: config.to_path_buf(),
            source,
        })
    };
    for _ in 0..5 {
        let text = read_config()?;
        let mut maps = BTreeMap::new();
        let mut missing = None;
        let names: BTreeSet<String> = std::fs::read_dir(maps_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".map"))
                    .collect()
            })
            .unwrap_or_default();
        for name in names {
            let path = Path::new(maps_dir).join(&name);
            if !text.contains(&path.display().to_string()) {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(c) => {
                    maps.insert(name, c);
                }
                Err(source) => missing = Some((path, source)),
            }
        }
        if read_config()? != text {
            continue;
        }
        if let Some((path, source)) = missing {
            return Err(PlanError::ReadMap {
                path,
                config: config.to_path_buf(),
                source,
            });
        }
        return Ok(Rendered { config: text, maps });
    }
    Err(PlanError::Unsettled)
}

/// What the installed HAProxy can do live.
fn caps(bin: &Path) -> Result<Caps, PlanError> {
    let out = std::process::Command::new(bin)
        .arg("-v")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| PlanError::HaproxyVersion {
            bin: bin.to_path_buf(),
            source,
        })?;
    Ok(Caps::from_version(&String::from_utf8_lossy(&out.stdout)))
}

/// `<run-dir>/haproxy.pids`, if any.
fn pids(run_dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(run_dir.join("haproxy.pids"))
        .map(|t| {
            t.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn map_lines(content: &str) -> BTreeSet<&str> {
    content.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// Every change of `new` against `running`, as lines.
pub fn items(running: &Running, new: &Layout, caps: Caps) -> Vec<Item> {
    let old = &running.layout;
    let changes = running.changes(new, caps);
    let address = |l: &Layout, b: &str, s: &str| {
        l.backends
            .get(b)
            .and_then(|b| b.servers.get(s))
            .map(|s| s.address.clone())
            .unwrap_or_default()
    };
    let mut reloads: Vec<&Structural> = Vec::new();
    for r in &changes.reload {
        if !reloads.contains(&r) {
            reloads.push(r);
        }
    }
    let mut out = Vec::new();
    let item = |sign, kind, name: String, detail: String| Item {
        sign,
        kind,
        name,
        detail,
        live: true,
        reason: String::new(),
    };
    for op in &changes.live {
        out.push(match op {
            Op::AddServer {
                backend,
                server,
                ip,
                port,
                keywords,
            } => {
                let weight = keywords
                    .iter()
                    .skip_while(|k| *k != "weight")
                    .nth(1)
                    .cloned()
                    .unwrap_or_default();
                item(
                    '+',
                    "server",
                    format!("{backend}/{server}"),
                    format!("{ip}:{port} weight {weight}"),
                )
            }
            Op::SetAddr {
                backend,
                server,
                ip,
                port,
            } => item(
                '~',
                "server",
                format!("{backend}/{server}"),
                format!("address {} → {ip}:{port}", address(old, backend, server)),
            ),
            Op::SetWeight {
                backend,
                server,
                weight,
            } => {
                let was = old
                    .backends
                    .get(backend)
                    .and_then(|b| b.servers.get(server))
                    .map(|s| s.weight.to_string())
                    .unwrap_or_default();
                item(
                    '~',
                    "server",
                    format!("{backend}/{server}"),
                    format!("weight {was} → {weight}"),
                )
            }
            Op::SetMaxconn {
                backend,
                server,
                maxconn,
            } => {
                let shown = |m: Option<u32>| m.map_or("none".to_string(), |m| m.to_string());
                let was = old
                    .backends
                    .get(backend)
                    .and_then(|b| b.servers.get(server))
                    .map(|s| shown(s.maxconn))
                    .unwrap_or_default();
                item(
                    '~',
                    "server",
                    format!("{backend}/{server}"),
                    format!(
                        "maxconn {was} → {}",
                        shown(Some(*maxconn).filter(|m| *m > 0))
                    ),
                )
            }
            Op::Ready { backend, server } => item(
                '~',
                "server",
                format!("{backend}/{server}"),
                "back in rotation".into(),
            ),
            Op::Park { backend, server } => item(
                '-',
                "server",
                format!("{backend}/{server}"),
                format!(
                    "{} (out of rotation, deleted once idle)",
                    address(old, backend, server)
                ),
            ),
            Op::AddBackend { backend, profile } => {
                let n = servers(new.backends.get(backend).map_or(0, |b| b.servers.len()));
                item(
                    '+',
                    "service",
                    backend.clone(),
                    format!("(new backend from {profile}, {n})"),
                )
            }
            Op::ParkBackend {
                backend,
                servers: s,
            } => item(
                '-',
                "service",
                backend.clone(),
                format!("(backend removed, {}; deleted once idle)", servers(s.len())),
            ),
            // Part of the backend's line; certificates are not in a
            // catalog's diff.
            Op::Publish { .. } | Op::SetCert { .. } | Op::AddCert { .. } | Op::DelCert { .. } => {
                continue
            }
            Op::ReplaceMap { path, .. } => {
                // One line per entry added or removed.
                let Some((role, om)) = old.maps.iter().find(|(_, m)| &m.path == path) else {
                    continue;
                };
                let Some(nm) = new.maps.get(role) else {
                    continue;
                };
                let (o, n) = (map_lines(&om.content), map_lines(&nm.content));
                for l in n.difference(&o) {
                    out.push(item('+', "map", role.clone(), entry(l)));
                }
                for l in o.difference(&n) {
                    out.push(item('-', "map", role.clone(), entry(l)));
                }
                continue;
            }
        });
    }
    for why in reloads {
        let reason = why.to_string();
        let mut i = match why {
            Structural::Section { header, change } => {
                let (sign, detail) = match change {
                    SectionChange::Added => ('+', "new".to_string()),
                    SectionChange::Removed => ('-', "removed".to_string()),
                    SectionChange::Changed { .. } | SectionChange::Moved => {
                        ('~', "changed".to_string())
                    }
                };
                match proxy_name(header) {
                    Some(name) => {
                        let count = match sign {
                            '+' => new.backends.get(name),
                            _ => old.backends.get(name),
                        }
                        .map(|b| b.servers.len())
                        .unwrap_or(0);
                        let n = servers(count);
                        let detail = match change {
                            SectionChange::Added => format!("(new backend, {n})"),
                            SectionChange::Removed => format!("(backend removed, {n})"),
                            _ => "(backend options)".to_string(),
                        };
                        item(sign, "service", name.to_string(), detail)
                    }
                    None if header.is_empty() => item(sign, "section", "(top)".into(), detail),
                    None => item(sign, "section", header.trim().to_string(), detail),
                }
            }
            Structural::Maps => {
                // One line per entry of a map that appears or disappears.
                let roles: BTreeSet<&String> = old.maps.keys().chain(new.maps.keys()).collect();
                for role in roles {
                    let (sign, m) = match (old.maps.get(role), new.maps.get(role)) {
                        (None, Some(m)) => ('+', m),
                        (Some(m), None) => ('-', m),
                        _ => continue,
                    };
                    let lines = map_lines(&m.content);
                    if lines.is_empty() {
                        out.push(Item {
                            live: false,
                            reason: reason.clone(),
                            ..item(sign, "map", role.clone(), "(empty)".into())
                        });
                    }
                    for l in lines {
                        out.push(Item {
                            live: false,
                            reason: reason.clone(),
                            ..item(sign, "map", role.clone(), entry(l))
                        });
                    }
                }
                continue;
            }
            Structural::ServerKeywords { backend, server }
            | Structural::Address { backend, server }
            | Structural::Cookie { backend, server } => {
                let known = old
                    .backends
                    .get(backend)
                    .is_some_and(|b| b.servers.contains_key(server));
                item(
                    if known { '~' } else { '+' },
                    "server",
                    format!("{backend}/{server}"),
                    address(new, backend, server),
                )
            }
            Structural::StaticBackend { backend } => {
                // The diff stops at the first new server of such a backend;
                // name the new ones.
                let names: Vec<String> = new
                    .backends
                    .get(backend)
                    .map(|b| {
                        b.servers
                            .keys()
                            .filter(|s| {
                                !old.backends
                                    .get(backend)
                                    .is_some_and(|o| o.servers.contains_key(*s))
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                item(
                    '+',
                    "server",
                    format!("{backend}/{}", names.join(",")),
                    String::new(),
                )
            }
            Structural::Backend { backend, change } => {
                let (sign, b, what) = match change {
                    SectionChange::Removed => ('-', old.backends.get(backend), "backend removed"),
                    _ => ('+', new.backends.get(backend), "new backend"),
                };
                let n = servers(b.map_or(0, |b| b.servers.len()));
                item(sign, "service", backend.clone(), format!("({what}, {n})"))
            }
            Structural::Remade { backend } => item(
                '~',
                "service",
                backend.clone(),
                "(backend options)".to_string(),
            ),
            Structural::Profile { profile, change } => {
                let (sign, detail) = match change {
                    SectionChange::Added => ('+', "new"),
                    _ => ('~', "changed"),
                };
                item(sign, "profile", profile.clone(), detail.to_string())
            }
            Structural::Skeleton { .. } => item('~', "section", "(config)".into(), String::new()),
        };
        i.live = false;
        i.reason = reason;
        out.push(i);
    }
    out
}

/// A map line `key value` as `key → value`.
fn entry(line: &str) -> String {
    match line.split_once(' ') {
        Some((k, v)) => format!("{k} → {}", v.trim()),
        None => line.to_string(),
    }
}

/// "1 server", "3 servers".
fn servers(n: usize) -> String {
    match n {
        1 => "1 server".to_string(),
        n => format!("{n} servers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HaproxyVars;
    use crate::model::{Catalog, Context, Desired};
    use crate::render::Renderer;

    const V26: Caps = Caps {
        dynamic_cookie: false,
        dynamic_backends: false,
    };

    /// The layout of a catalog file text, rendered with the built-in template.
    fn layout(catalog: &str) -> Layout {
        let c = Catalog::parse_file(catalog).unwrap();
        let vars = HaproxyVars {
            dom: Some("example.com".into()),
            ..HaproxyVars::default()
        };
        let (d, _) = Desired::build(&c, &Context::from(&vars));
        let r = Renderer::new(
            None,
            Path::new("/etc/haproxy/haproxy.cfg"),
            Path::new("/run/hs/admin.sock"),
        )
        .unwrap();
        Layout::new(&r.render(&d, &vars).unwrap(), &r.maps_dir_str())
    }

    fn svc(name: &str, tags: &str, insts: &[(&str, &str, u32)]) -> String {
        let insts: Vec<String> = insts
            .iter()
            .map(|(id, addr, w)| {
                let (a, p) = addr.rsplit_once(':').unwrap();
                format!(
                    r#"{{"id":"{id}","address":"{a}","port":{p},"weight":{w},"tags":["HAPROXY.ENABLE=true"{tags}]}}"#
                )
            })
            .collect();
        format!(r#"{{"name":"{name}","instances":[{}]}}"#, insts.join(","))
    }

    fn lines(old: &[String], new: &[String]) -> Vec<String> {
        let cat = |s: &[String]| format!(r#"{{"services":[{}]}}"#, s.join(","));
        let run = Running::started(layout(&cat(old)));
        items(&run, &layout(&cat(new)), V26)
            .iter()
            .map(|i| {
                let how = if i.live { "live" } else { "reload" };
                format!("{} {} {} {} {how}", i.sign, i.kind, i.name, i.detail)
            })
            .collect()
    }

    #[test]
    fn servers_added_removed_reweighted_are_live_lines() {
        let old = [svc(
            "www",
            "",
            &[("www-1", "10.0.0.1:80", 1), ("www-2", "10.0.0.2:80", 1)],
        )];
        let new = [svc(
            "www",
            "",
            &[("www-1", "10.0.0.1:80", 4), ("www-3", "10.0.0.3:80", 1)],
        )];
        assert_eq!(
            lines(&old, &new),
            [
                "+ server www/www-3 10.0.0.3:80 weight 1 live",
                "~ server www/www-1 weight 1 → 4 live",
                "- server www/www-2 10.0.0.2:80 (out of rotation, deleted once idle) live",
            ]
        );
    }

    #[test]
    fn a_new_service_is_a_reload_with_its_map_entries() {
        let www = svc("www", "", &[("www-1", "10.0.0.1:80", 1)]);
        let api = svc(
            "api",
            r#","HAPROXY.PATH=/v1""#,
            &[("api-1", "10.0.1.1:80", 1)],
        );
        let got = lines(std::slice::from_ref(&www), &[www.clone(), api]);
        assert!(
            got.contains(&"+ service api (new backend, 1 server) reload".to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&"+ map paths api.example.com/v1/ → api reload".to_string()),
            "{got:?}"
        );
        assert!(got.iter().all(|l| l.ends_with("reload")), "{got:?}");
    }

    #[test]
    fn the_text_ends_with_the_verdict() {
        let r = Report {
            verdict: "reload",
            reason: "why".into(),
            exit_code: EXIT_RELOAD,
            serving_config: "/etc/haproxy/haproxy.cfg".into(),
            haproxy_pids: vec![7],
            changes: vec![Item {
                sign: '+',
                kind: "service",
                name: "api".into(),
                detail: "(new backend, 1 server)".into(),
                live: false,
                reason: "new section `backend api`".into(),
            }],
        };
        assert_eq!(
            r.text(),
            "# serving: /etc/haproxy/haproxy.cfg (haproxy pid 7)\n\
             + service api (new backend, 1 server)  reload: new section `backend api`\n\
             plan: a reload: why (exit 3)\n"
        );
    }
}
