//! Live changes (SPEC §10): the state the serving HAProxy runs, held as a
//! value, and the pure diff that says whether a new render can be applied
//! through the runtime API or needs a reload.
//!
//! The diff works on the rendered text, not on the model, so it holds for
//! any template: a config is split into its *skeleton* (every line except the
//! `server` lines of backends, with map file names replaced by their role)
//! and its *live parts* (the servers of each backend, the content of each
//! map). Two renders with the same skeleton differ only in what the runtime
//! API can change; anything else is structural and reloads.
//!
//! Nothing here performs an effect: [`Running::plan`] returns the operations
//! and the state that holds once they all succeeded, and the supervisor
//! applies them (falling back to a reload on any failure).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use crate::render::Rendered;

/// One `server` line of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLine {
    /// The address as written (`10.0.0.1:80`, `host:80`, ...).
    pub address: String,
    /// The address when it is an IPv4 literal with a port: only those can be
    /// added or moved live (`set server addr` wants an IP).
    pub ip_port: Option<(Ipv4Addr, u16)>,
    pub weight: u32,
    /// `maxconn <n>`: changed live (`set maxconn server`) on every version.
    pub maxconn: Option<u32>,
    /// Every keyword of the line except `weight <n>` and `maxconn <n>`, in
    /// order.
    pub keywords: Vec<String>,
}

/// What a backend says about its servers, besides the servers themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Backend {
    /// Whether its balance algorithm accepts dynamic servers (`add server`).
    pub dynamic: bool,
    /// The keywords of its `default-server` line: an added server does not
    /// inherit them, so they are passed explicitly.
    pub defaults: Vec<String>,
    pub servers: BTreeMap<String, ServerLine>,
    /// `backend <name> from <profile>` with nothing but servers under it:
    /// the profile it is made from. Such a backend is data, not part of
    /// the skeleton: HAProxy 3.4 adds and deletes it at run time.
    pub profile: Option<String>,
}

/// A map file the config refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFile {
    /// The path as written in the config: HAProxy's name for the map.
    pub path: String,
    pub content: String,
}

/// A rendered config split into its skeleton and its live parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    skeleton: String,
    pub backends: BTreeMap<String, Backend>,
    /// Named `defaults` sections (profiles), by name: their significant
    /// lines (no comments, no blank lines).
    pub profiles: BTreeMap<String, String>,
    /// Map role (`hosts`, `paths`: the file name without its content hash) → file.
    pub maps: BTreeMap<String, MapFile>,
}

/// What the running HAProxy can do live, by version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `cookie` on `add server` (HAProxy 3.0 and later).
    pub dynamic_cookie: bool,
    /// `add backend <name> from <defaults>`, `publish backend`, `del
    /// backend` (HAProxy 3.4 and later).
    pub dynamic_backends: bool,
}

impl Caps {
    /// From `haproxy -v` output (`HAProxy version 2.6.12-1+deb12u4 ...`).
    pub fn from_version(v: &str) -> Caps {
        let ver = v
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
            .unwrap_or("");
        let mut it = ver.split(|c: char| !c.is_ascii_digit());
        let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        Caps {
            dynamic_cookie: major >= 3,
            dynamic_backends: (major, minor) >= (3, 4),
        }
    }
}

/// One live operation on the serving HAProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `add server` (keywords include the backend's defaults and the
    /// weight), then enable its health check and put it in rotation.
    AddServer {
        backend: String,
        server: String,
        ip: Ipv4Addr,
        port: u16,
        keywords: Vec<String>,
    },
    SetAddr {
        backend: String,
        server: String,
        ip: Ipv4Addr,
        port: u16,
    },
    SetWeight {
        backend: String,
        server: String,
        weight: u32,
    },
    /// `set maxconn server`: 0 is no limit.
    SetMaxconn {
        backend: String,
        server: String,
        maxconn: u32,
    },
    /// Back into rotation: a parked server the config has again.
    Ready { backend: String, server: String },
    /// Out of rotation (maintenance): a server the config no longer has.
    /// It stays in the process, parked, until it can be deleted.
    Park { backend: String, server: String },
    /// `add backend <backend> from <profile>`: a new backend, not yet
    /// published (no traffic until [`Op::Publish`]).
    AddBackend { backend: String, profile: String },
    /// `publish backend`: its servers are in, traffic may come.
    Publish { backend: String },
    /// A backend the config no longer has: `unpublish backend`, then every
    /// server in maintenance. It stays in the process, parked, until its
    /// servers and then itself can be deleted (no stream left).
    ParkBackend {
        backend: String,
        servers: Vec<String>,
    },
    /// Replaces a map's whole content in one atomic commit.
    ReplaceMap {
        path: String,
        entries: Vec<(String, String)>,
    },
    /// A certificate bundle replaced in place (`set ssl cert`, `commit
    /// ssl cert`): `path` is its file in the store.
    SetCert { path: String, pem: String },
    /// A new bundle: `new ssl cert`, set, commit, `add ssl crt-list`.
    AddCert {
        list: String,
        path: String,
        pem: String,
    },
    /// A bundle gone: `del ssl crt-list`, `del ssl cert`.
    DelCert { list: String, path: String },
}

impl Op {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::AddServer { .. } => "add_server",
            Op::SetAddr { .. } => "set_addr",
            Op::SetWeight { .. } => "set_weight",
            Op::SetMaxconn { .. } => "set_maxconn",
            Op::Ready { .. } => "ready",
            Op::Park { .. } => "park",
            Op::AddBackend { .. } => "add_backend",
            Op::Publish { .. } => "publish",
            Op::ParkBackend { .. } => "park_backend",
            Op::ReplaceMap { .. } => "replace_map",
            Op::SetCert { .. } => "set_cert",
            Op::AddCert { .. } => "add_cert",
            Op::DelCert { .. } => "del_cert",
        }
    }

    /// The server it changes (backend, server), if any.
    pub fn server(&self) -> Option<(String, String)> {
        match self {
            Op::AddServer {
                backend, server, ..
            }
            | Op::SetAddr {
                backend, server, ..
            }
            | Op::SetWeight {
                backend, server, ..
            }
            | Op::SetMaxconn {
                backend, server, ..
            }
            | Op::Ready { backend, server }
            | Op::Park { backend, server } => Some((backend.clone(), server.clone())),
            Op::ReplaceMap { .. }
            | Op::AddBackend { .. }
            | Op::Publish { .. }
            | Op::ParkBackend { .. }
            | Op::SetCert { .. }
            | Op::AddCert { .. }
            | Op::DelCert { .. } => None,
        }
    }
}

/// Why a change cannot be applied live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Structural {
    /// Something outside the servers and maps changed (a backend or
    /// frontend added or removed, an option, a global, the template).
    Skeleton { line: usize },
    /// A map the config refers to appeared or disappeared.
    Maps,
    /// A server's keywords (other than weight) changed.
    ServerKeywords { backend: String, server: String },
    /// The address is not an IPv4 literal the runtime API can take.
    Address { backend: String, server: String },
    /// The backend's balance algorithm refuses dynamic servers.
    StaticBackend { backend: String },
    /// `cookie` on a dynamic server needs HAProxy 3.0.
    Cookie { backend: String, server: String },
    /// A backend made from a profile was added or removed, and this
    /// HAProxy cannot add or delete backends (before 3.4).
    Backend {
        backend: String,
        change: SectionChange,
    },
    /// A profile (a named `defaults` section) is new or changed: profiles
    /// are config text HAProxy reads at start. One that is gone is not a
    /// change: it stays in the process, unused.
    Profile {
        profile: String,
        change: SectionChange,
    },
    /// A backend now made from another profile under the same name.
    Remade { backend: String },
    /// A section of the skeleton (`backend api`, `frontend http`, ...) was
    /// added, removed or changed: what [`Running::changes`] says instead
    /// of [`Structural::Skeleton`].
    Section {
        /// The section's header line, as written.
        header: String,
        change: SectionChange,
    },
}

/// What became of a section of the skeleton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionChange {
    Added,
    Removed,
    /// Its body changed; `line` is the first line that differs, as in the
    /// new config (or the old one, when the new body is a prefix of it).
    Changed {
        line: String,
    },
    /// Every section is the same but their order is not.
    Moved,
}

impl fmt::Display for Structural {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Structural::Skeleton { line } => {
                write!(
                    f,
                    "the config changed beyond servers and maps (line {line})"
                )
            }
            Structural::Maps => write!(f, "a map file was added or removed"),
            Structural::ServerKeywords { backend, server } => {
                write!(
                    f,
                    "server {backend}/{server} changed beyond address and weight"
                )
            }
            Structural::Address { backend, server } => {
                write!(f, "server {backend}/{server} has no IPv4 address")
            }
            Structural::StaticBackend { backend } => {
                write!(f, "backend {backend} uses a static balance algorithm")
            }
            Structural::Cookie { backend, server } => {
                write!(
                    f,
                    "server {backend}/{server} has a cookie (live only on HAProxy 3.0+)"
                )
            }
            Structural::Backend { backend, change } => match change {
                SectionChange::Removed => {
                    write!(f, "backend {backend} removed (live only on HAProxy 3.4+)")
                }
                _ => write!(f, "new backend {backend} (live only on HAProxy 3.4+)"),
            },
            Structural::Profile { profile, change } => match change {
                SectionChange::Added => write!(f, "new profile `defaults {profile}`"),
                _ => write!(f, "profile `defaults {profile}` changed"),
            },
            Structural::Remade { backend } => {
                write!(f, "backend {backend} is made from another profile")
            }
            Structural::Section { header, change } => {
                let header = header.trim();
                match change {
                    SectionChange::Added => write!(f, "new section `{header}`"),
                    SectionChange::Removed => write!(f, "section `{header}` removed"),
                    SectionChange::Changed { line } => {
                        write!(f, "section `{header}` changed at `{}`", line.trim())
                    }
                    SectionChange::Moved => write!(f, "the sections are in another order"),
                }
            }
        }
    }
}

/// The outcome of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing the serving HAProxy would notice.
    Same,
    /// These operations, in order; `next` is the state once they all succeeded.
    Live {
        ops: Vec<Op>,
        next: Box<Running>,
    },
    Reload(Structural),
}

/// Every change a diff found ([`Running::changes`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// What could go live, in the order [`Running::plan`] would apply it.
    pub live: Vec<Op>,
    /// What needs a reload; each is one change.
    pub reload: Vec<Structural>,
}

/// The diff's result: operations, structural changes (the first one only
/// unless asked for all), and the state once the operations succeeded.
struct Diff {
    ops: Vec<Op>,
    reloads: Vec<Structural>,
    next: Running,
}

/// The name of a `backend` or `listen` section from its header line.
pub fn proxy_name(header: &str) -> Option<&str> {
    let t = tokens(header);
    match t.as_slice() {
        [kind, name, ..] if *kind == "backend" || *kind == "listen" => Some(name),
        _ => None,
    }
}

/// A skeleton split into sections: (header line, body), the text before
/// the first section under an empty header.
fn sections(skeleton: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![(String::new(), String::new())];
    for line in skeleton.lines() {
        let indented = line.starts_with(char::is_whitespace);
        if !indented && !tokens(line).is_empty() {
            out.push((line.trim_end().to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The first line where `new` differs from `old` (as in `new`; as in `old`
/// when `new` is a prefix of it).
fn first_difference(old: &[String], new: &[String]) -> Option<String> {
    if let Some((_, n)) = old.iter().zip(new).find(|(o, n)| o != n) {
        return Some(n.clone());
    }
    let k = old.len().min(new.len());
    new.get(k).or_else(|| old.get(k)).cloned()
}

/// The sections two different skeletons differ in.
fn section_changes(old: &str, new: &str) -> Vec<Structural> {
    let (o, n) = (sections(old), sections(new));
    let old_by: BTreeMap<&str, &str> = o.iter().map(|(h, b)| (h.as_str(), b.as_str())).collect();
    let new_by: BTreeMap<&str, &str> = n.iter().map(|(h, b)| (h.as_str(), b.as_str())).collect();
    let mut out = Vec::new();
    for (h, b) in &n {
        match old_by.get(h.as_str()) {
            None => out.push(Structural::Section {
                header: h.clone(),
                change: SectionChange::Added,
            }),
            Some(ob) if ob != b => {
                // Named by its first differing line that is not a comment
                // (a template comment beside a new directive is not what
                // changed), else by any.
                let significant = |t: &'_ str| -> Vec<String> {
                    t.lines()
                        .filter(|l| !tokens(l).is_empty())
                        .map(String::from)
                        .collect()
                };
                let raw = |t: &'_ str| -> Vec<String> { t.lines().map(String::from).collect() };
                let line = first_difference(&significant(ob), &significant(b))
                    .or_else(|| first_difference(&raw(ob), &raw(b)))
                    .unwrap_or_default();
                out.push(Structural::Section {
                    header: h.clone(),
                    change: SectionChange::Changed { line },
                });
            }
            Some(_) => {}
        }
    }
    for (h, _) in &o {
        if !new_by.contains_key(h.as_str()) {
            out.push(Structural::Section {
                header: h.clone(),
                change: SectionChange::Removed,
            });
        }
    }
    if out.is_empty() {
        out.push(Structural::Section {
            header: String::new(),
            change: SectionChange::Moved,
        });
    }
    out
}

/// What the serving HAProxy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The layout the process runs (its map paths are those it loaded).
    pub layout: Layout,
    /// Servers the config no longer has, kept in the process in
    /// maintenance until they can be deleted: backend → server → line.
    pub parked: BTreeMap<String, BTreeMap<String, ServerLine>>,
    /// Backends the config no longer has, unpublished and kept until they
    /// can be deleted (their servers are in `parked`): name → backend.
    pub parked_backends: BTreeMap<String, Backend>,
}

fn tokens(line: &str) -> Vec<&str> {
    let mut v = Vec::new();
    for t in line.split_whitespace() {
        if t.starts_with('#') {
            break;
        }
        v.push(t);
    }
    v
}

fn parse_addr(a: &str) -> Option<(Ipv4Addr, u16)> {
    let (ip, port) = a.rsplit_once(':')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    // Only the canonical spelling, so the text and the value agree.
    (format!("{ip}:{port}") == a).then_some((ip, port))
}

/// Balance algorithms that take dynamic servers (HAProxy 2.6's
/// `be_supports_dynamic_srv`); the hashing ones only with consistent hashing.
fn dynamic_balance(balance: &str, hash_consistent: bool) -> bool {
    match balance {
        "roundrobin" | "leastconn" | "first" | "random" => true,
        "static-rr" => false,
        _ => hash_consistent,
    }
}

impl Layout {
    /// Splits a rendered config. `maps_dir` is the directory the config
    /// refers to its maps in (the same the renderer used).
    pub fn new(rendered: &Rendered, maps_dir: &str) -> Layout {
        let mut text = rendered.config.clone();
        let mut maps = BTreeMap::new();
        for (name, content) in &rendered.maps {
            let role = name
                .rsplit_once('-')
                .map(|(r, _)| r)
                .unwrap_or(name.trim_end_matches(".map"));
            let path = format!("{maps_dir}/{name}");
            if text.contains(&path) {
                text = text.replace(&path, &format!("<map:{role}>"));
                maps.insert(
                    role.to_string(),
                    MapFile {
                        path,
                        content: content.clone(),
                    },
                );
            }
        }
        Layout::split(&text, maps)
    }

    fn split(text: &str, maps: BTreeMap<String, MapFile>) -> Layout {
        let mut skeleton = String::with_capacity(text.len());
        let mut backends: BTreeMap<String, Backend> = BTreeMap::new();
        let mut profiles: BTreeMap<String, String> = BTreeMap::new();
        // What each defaults section says about servers: the implicit one
        // (the last seen) and the named ones, by name.
        let mut implicit = ServerDefaults::default();
        let mut named: BTreeMap<String, ServerDefaults> = BTreeMap::new();
        for sec in raw_sections(text) {
            let t = tokens(sec.header);
            let kind = t.first().copied().unwrap_or("");
            let name = t.get(1).copied();
            let from = match t.as_slice() {
                [_, _, "from", f, ..] => Some(*f),
                _ => None,
            };
            let inherited = match from {
                Some(f) => named.get(f).cloned().unwrap_or_default(),
                None => implicit.clone(),
            };
            let own = ServerDefaults::of(&sec.body);
            let merged = own.over(&inherited);
            match kind {
                "defaults" => {
                    if let Some(n) = name.filter(|n| *n != "from") {
                        named.insert(n.to_string(), merged.clone());
                        profiles.insert(n.to_string(), sec.significant());
                    } else {
                        sec.push_to(&mut skeleton);
                    }
                    implicit = merged;
                    continue;
                }
                "backend" | "listen" => {}
                _ => {
                    sec.push_to(&mut skeleton);
                    continue;
                }
            }
            let bname = name.unwrap_or("").to_string();
            let mut b = Backend {
                dynamic: dynamic_balance(
                    merged.balance.as_deref().unwrap_or("roundrobin"),
                    merged.hash_consistent,
                ),
                defaults: merged.default_server.clone(),
                servers: BTreeMap::new(),
                profile: None,
            };
            // A backend made from a profile that holds nothing but its
            // servers is data: HAProxy 3.4 adds it from the profile.
            let only_servers = sec.body.iter().all(|l| {
                let t = tokens(l);
                t.is_empty() || (t[0] == "server" && t.len() >= 3)
            });
            let data = kind == "backend" && only_servers && from.is_some();
            if data {
                b.profile = from.map(String::from);
            } else {
                skeleton.push_str(sec.header);
                skeleton.push('\n');
            }
            for line in &sec.body {
                let t = tokens(line);
                if t.len() >= 3 && t[0] == "server" {
                    b.servers.insert(t[1].to_string(), server_line(&t));
                } else if !data {
                    skeleton.push_str(line);
                    skeleton.push('\n');
                }
            }
            backends.insert(bname, b);
        }
        Layout {
            skeleton,
            backends,
            profiles,
            maps,
        }
    }
}

/// One section of a config: its header line and the lines under it (the
/// text before the first section has an empty header).
struct RawSection<'a> {
    header: &'a str,
    body: Vec<&'a str>,
}

impl RawSection<'_> {
    fn push_to(&self, out: &mut String) {
        if !self.header.is_empty() {
            out.push_str(self.header);
            out.push('\n');
        }
        for l in &self.body {
            out.push_str(l);
            out.push('\n');
        }
    }

    /// The header and every line that says something (no blank line, no
    /// comment): what a profile is compared by.
    fn significant(&self) -> String {
        let mut out = String::new();
        for l in std::iter::once(&self.header).chain(&self.body) {
            let t = tokens(l);
            if !t.is_empty() {
                out.push_str(&t.join(" "));
                out.push('\n');
            }
        }
        out
    }
}

fn raw_sections(text: &str) -> Vec<RawSection<'_>> {
    let mut out = vec![RawSection {
        header: "",
        body: Vec::new(),
    }];
    for line in text.lines() {
        let indented = line.starts_with(char::is_whitespace);
        if !indented && !tokens(line).is_empty() {
            out.push(RawSection {
                header: line,
                body: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.body.push(line);
        }
    }
    out
}

/// What a `defaults` section (or a proxy) says about its servers.
#[derive(Debug, Clone, Default)]
struct ServerDefaults {
    balance: Option<String>,
    hash_consistent: bool,
    default_server: Vec<String>,
}

impl ServerDefaults {
    fn of(body: &[&str]) -> ServerDefaults {
        let mut d = ServerDefaults::default();
        for l in body {
            let t = tokens(l);
            match t.first().copied() {
                Some("balance") => d.balance = t.get(1).map(|s| s.to_string()),
                Some("hash-type") => d.hash_consistent = t.get(1) == Some(&"consistent"),
                Some("default-server") => {
                    d.default_server = t[1..].iter().map(|s| s.to_string()).collect()
                }
                _ => {}
            }
        }
        d
    }

    /// These settings, with what they leave unset taken from `base`.
    fn over(&self, base: &ServerDefaults) -> ServerDefaults {
        ServerDefaults {
            balance: self.balance.clone().or_else(|| base.balance.clone()),
            hash_consistent: self.hash_consistent || base.hash_consistent,
            default_server: if self.default_server.is_empty() {
                base.default_server.clone()
            } else {
                self.default_server.clone()
            },
        }
    }
}

/// A `server <name> <address> [keywords]` line's tokens, parsed.
fn server_line(t: &[&str]) -> ServerLine {
    let mut weight = 1;
    let mut maxconn = None;
    let mut keywords = Vec::new();
    let mut i = 3;
    while i < t.len() {
        if t[i] == "weight" && i + 1 < t.len() {
            weight = t[i + 1].parse().unwrap_or(1);
            i += 2;
        } else if let Some(m) = (t[i] == "maxconn")
            .then(|| t.get(i + 1).and_then(|v| v.parse().ok()))
            .flatten()
        {
            maxconn = Some(m);
            i += 2;
        } else {
            keywords.push(t[i].to_string());
            i += 1;
        }
    }
    ServerLine {
        address: t[2].to_string(),
        ip_port: parse_addr(t[2]),
        weight,
        maxconn,
        keywords,
    }
}

/// The keywords an added server needs: the backend's defaults that an added
/// server does not inherit, then the line's own, then its weight. Keywords
/// that only make sense at start-up (`init-addr`) are left out.
fn add_keywords(defaults: &[String], line: &ServerLine) -> Vec<String> {
    let mut out = Vec::new();
    let mut push_all = |kws: &[String]| {
        let mut i = 0;
        while i < kws.len() {
            match kws[i].as_str() {
                "init-addr" | "weight" => i += 2,
                _ => {
                    out.push(kws[i].clone());
                    i += 1;
                }
            }
        }
    };
    push_all(defaults);
    push_all(&line.keywords);
    if let Some(m) = line.maxconn {
        out.push("maxconn".into());
        out.push(m.to_string());
    }
    out.push("weight".into());
    out.push(line.weight.to_string());
    out
}

fn map_entries(content: &str) -> Vec<(String, String)> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(2, ' ');
            Some((it.next()?.to_string(), it.next()?.trim().to_string()))
        })
        .collect()
}

impl Running {
    /// The state of a process just started on `layout`.
    pub fn started(layout: Layout) -> Running {
        Running {
            layout,
            parked: BTreeMap::new(),
            parked_backends: BTreeMap::new(),
        }
    }

    /// Diffs a new render against what runs.
    pub fn plan(&self, new: &Layout, caps: Caps) -> Plan {
        let d = self.diff(new, caps, false);
        if let Some(why) = d.reloads.into_iter().next() {
            return Plan::Reload(why);
        }
        if d.ops.is_empty() {
            Plan::Same
        } else {
            Plan::Live {
                ops: d.ops,
                next: Box::new(d.next),
            }
        }
    }

    /// Every change between what runs and `new`, for `haproxy-supervisor
    /// plan`: the same diff as [`Running::plan`], but it does not stop at
    /// the first structural change. The skeleton is explained per section
    /// ([`Structural::Section`]) instead of by its first differing line,
    /// and each server and map is judged on its own. What the supervisor
    /// does is still [`Running::plan`]'s verdict: one structural change
    /// makes the whole change a reload.
    pub fn changes(&self, new: &Layout, caps: Caps) -> Changes {
        let d = self.diff(new, caps, true);
        Changes {
            live: d.ops,
            reload: d.reloads,
        }
    }

    /// The diff. With `every`, it goes on after a structural change (that
    /// part is left out of the operations) and collects them all;
    /// otherwise it stops at the first.
    fn diff(&self, new: &Layout, caps: Caps, every: bool) -> Diff {
        let mut reloads = Vec::new();
        // New backends and servers, then server changes, then publishing,
        // then maps, then removals: a backend has its servers before it is
        // published, and is published before a map entry sends traffic to
        // it; a map entry stops sending traffic before its backend goes.
        let mut adds = Vec::new();
        let mut changes = Vec::new();
        let mut publishes = Vec::new();
        let mut map_ops = Vec::new();
        let mut parks = Vec::new();
        let mut next = Running {
            layout: Layout {
                skeleton: self.layout.skeleton.clone(),
                backends: BTreeMap::new(),
                profiles: self.layout.profiles.clone(),
                maps: self.layout.maps.clone(),
            },
            parked: self.parked.clone(),
            parked_backends: self.parked_backends.clone(),
        };
        let stop = |reloads: Vec<Structural>| Diff {
            ops: Vec::new(),
            reloads,
            next: self.clone(),
        };
        // Backends that are new (or gone) in the skeleton: their sections
        // explain the change, and their servers are not diffed one by one.
        let mut new_backends = std::collections::BTreeSet::new();
        if self.layout.skeleton != new.skeleton {
            if !every {
                let line = self
                    .layout
                    .skeleton
                    .lines()
                    .zip(new.skeleton.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| {
                        self.layout
                            .skeleton
                            .lines()
                            .count()
                            .min(new.skeleton.lines().count())
                    })
                    + 1;
                return stop(vec![Structural::Skeleton { line }]);
            }
            let sections = section_changes(&self.layout.skeleton, &new.skeleton);
            for s in &sections {
                if let Structural::Section {
                    header,
                    change: SectionChange::Added,
                } = s
                {
                    if let Some(name) = proxy_name(header) {
                        new_backends.insert(name.to_string());
                    }
                }
            }
            reloads.extend(sections);
        }
        if !self.layout.maps.keys().eq(new.maps.keys()) {
            if !every {
                return stop(vec![Structural::Maps]);
            }
            reloads.push(Structural::Maps);
        }
        for (name, text) in &new.profiles {
            let change = match self.layout.profiles.get(name) {
                None => SectionChange::Added,
                Some(t) if t != text => SectionChange::Changed {
                    line: first_difference(
                        &t.lines().map(String::from).collect::<Vec<_>>(),
                        &text.lines().map(String::from).collect::<Vec<_>>(),
                    )
                    .unwrap_or_default(),
                },
                Some(_) => continue,
            };
            let why = Structural::Profile {
                profile: name.clone(),
                change,
            };
            if !every {
                return stop(vec![why]);
            }
            reloads.push(why);
        }
        for (bname, nb) in &new.backends {
            if new_backends.contains(bname) {
                continue;
            }
            let running = self.layout.backends.get(bname);
            // A backend removed a moment ago and not deleted yet comes back:
            // published again, its parked servers back in rotation.
            let revived = match running {
                None => self.parked_backends.get(bname),
                Some(_) => None,
            };
            if let Some(profile) = &nb.profile {
                let why = match running.or(revived) {
                    Some(ob) if ob.profile != nb.profile => Some(Structural::Remade {
                        backend: bname.clone(),
                    }),
                    None if !caps.dynamic_backends => Some(Structural::Backend {
                        backend: bname.clone(),
                        change: SectionChange::Added,
                    }),
                    _ => None,
                };
                if let Some(why) = why {
                    if !every {
                        return stop(vec![why]);
                    }
                    reloads.push(why);
                    continue;
                }
                if running.is_none() {
                    if revived.is_some() {
                        next.parked_backends.remove(bname);
                    } else {
                        adds.push(Op::AddBackend {
                            backend: bname.clone(),
                            profile: profile.clone(),
                        });
                    }
                    publishes.push(Op::Publish {
                        backend: bname.clone(),
                    });
                }
            }
            let empty = Backend::default();
            let ob = running.unwrap_or(&empty);
            let parked = next.parked.entry(bname.clone()).or_default();
            for (sname, ns) in &nb.servers {
                let (b, s) = (bname.clone(), sname.clone());
                let old = ob.servers.get(sname).or_else(|| parked.get(sname));
                let why = match old {
                    Some(os) => 'known: {
                        if os.keywords != ns.keywords {
                            break 'known Some(Structural::ServerKeywords {
                                backend: b,
                                server: s,
                            });
                        }
                        let mut these = Vec::new();
                        if os.address != ns.address {
                            let Some((ip, port)) = ns.ip_port.filter(|_| os.ip_port.is_some())
                            else {
                                break 'known Some(Structural::Address {
                                    backend: b,
                                    server: s,
                                });
                            };
                            these.push(Op::SetAddr {
                                backend: b.clone(),
                                server: s.clone(),
                                ip,
                                port,
                            });
                        }
                        if os.weight != ns.weight {
                            these.push(Op::SetWeight {
                                backend: b.clone(),
                                server: s.clone(),
                                weight: ns.weight,
                            });
                        }
                        if os.maxconn != ns.maxconn {
                            these.push(Op::SetMaxconn {
                                backend: b.clone(),
                                server: s.clone(),
                                maxconn: ns.maxconn.unwrap_or(0),
                            });
                        }
                        if parked.remove(sname).is_some() {
                            these.push(Op::Ready {
                                backend: b,
                                server: s,
                            });
                        }
                        changes.extend(these);
                        None
                    }
                    None => 'new: {
                        if !nb.dynamic {
                            break 'new Some(Structural::StaticBackend { backend: b });
                        }
                        let Some((ip, port)) = ns.ip_port else {
                            break 'new Some(Structural::Address {
                                backend: b,
                                server: s,
                            });
                        };
                        if !caps.dynamic_cookie && ns.keywords.iter().any(|k| k == "cookie") {
                            break 'new Some(Structural::Cookie {
                                backend: b,
                                server: s,
                            });
                        }
                        adds.push(Op::AddServer {
                            backend: b,
                            server: s,
                            ip,
                            port,
                            keywords: add_keywords(&nb.defaults, ns),
                        });
                        None
                    }
                };
                if let Some(why) = why {
                    if !every {
                        return stop(vec![why]);
                    }
                    reloads.push(why);
                }
            }
            for (sname, os) in &ob.servers {
                if !nb.servers.contains_key(sname) {
                    parks.push(Op::Park {
                        backend: bname.clone(),
                        server: sname.clone(),
                    });
                    parked.insert(sname.clone(), os.clone());
                }
            }
            next.layout.backends.insert(bname.clone(), nb.clone());
        }
        for (bname, ob) in &self.layout.backends {
            if new.backends.contains_key(bname) || ob.profile.is_none() {
                // A backend of the skeleton is its section's change.
                continue;
            }
            if !caps.dynamic_backends {
                let why = Structural::Backend {
                    backend: bname.clone(),
                    change: SectionChange::Removed,
                };
                if !every {
                    return stop(vec![why]);
                }
                reloads.push(why);
                continue;
            }
            let parked = next.parked.entry(bname.clone()).or_default();
            let mut servers: Vec<String> = ob.servers.keys().cloned().collect();
            for (s, line) in &ob.servers {
                parked.insert(s.clone(), line.clone());
            }
            servers.sort();
            parks.push(Op::ParkBackend {
                backend: bname.clone(),
                servers,
            });
            next.parked_backends.insert(
                bname.clone(),
                Backend {
                    servers: BTreeMap::new(),
                    ..ob.clone()
                },
            );
        }
        next.parked.retain(|_, p| !p.is_empty());
        for (role, nm) in &new.maps {
            // A map that appeared is Structural::Maps above.
            let Some(om) = self.layout.maps.get(role) else {
                continue;
            };
            if om.content != nm.content {
                map_ops.push(Op::ReplaceMap {
                    path: om.path.clone(),
                    entries: map_entries(&nm.content),
                });
                // The process keeps the name it loaded the map under.
                next.layout.maps.insert(
                    role.clone(),
                    MapFile {
                        path: om.path.clone(),
                        content: nm.content.clone(),
                    },
                );
            }
        }
        let mut ops = adds;
        ops.extend(changes);
        ops.extend(publishes);
        ops.extend(map_ops);
        ops.extend(parks);
        Diff { ops, reloads, next }
    }

    /// Forgets a parked server once it was deleted from the process.
    pub fn deleted(&mut self, backend: &str, server: &str) {
        if let Some(p) = self.parked.get_mut(backend) {
            p.remove(server);
            if p.is_empty() {
                self.parked.remove(backend);
            }
        }
    }

    /// Forgets a parked backend once it was deleted from the process.
    pub fn backend_deleted(&mut self, backend: &str) {
        self.parked_backends.remove(backend);
    }

    /// Parked backends with no parked server left: candidates for `del
    /// backend` (once their servers are deleted).
    pub fn parked_backends(&self) -> Vec<String> {
        self.parked_backends.keys().cloned().collect()
    }

    /// Whether anything is parked (servers or backends).
    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty() || !self.parked_backends.is_empty()
    }

    /// Parked servers, as (backend, server): candidates for `del server`.
    pub fn parked(&self) -> Vec<(String, String)> {
        self.parked
            .iter()
            .flat_map(|(b, s)| s.keys().map(move |n| (b.clone(), n.clone())))
            .collect()
    }
}

/// The server state to load into a new generation (`server-state-file`):
/// the rows of `show servers state` from the serving one, for servers the
/// new config has at the same address and port, with the new config's
/// weight. Health (a server found down) and maintenance carry over; a
/// server that moved or a weight that changed is never overridden by the
/// old state (the traps of haproxy issues 1412, 2103, 3296). Servers in
/// `unconfirmed` (a live operation on them failed or timed out: a stalled
/// process may still run it after we gave up) start from the new config,
/// not from whatever the old process ended up with. The answer is read
/// with [`crate::runtime::parse_servers_state`]; one it refuses carries
/// nothing.
pub fn carry_state(dump: &str, new: &Layout, unconfirmed: &BTreeSet<(String, String)>) -> String {
    let mut out = String::from("1\n");
    // An answer that is not `show servers state` carries nothing.
    let Some(state) = crate::runtime::parse_servers_state(dump) else {
        return out;
    };
    // HAProxy reads the state file by position: an answer whose columns
    // are elsewhere cannot be written back.
    if !state.columns().take(STATE_COLUMNS.len()).eq(STATE_COLUMNS) {
        return out;
    }
    // srv_uweight and srv_iweight.
    let (uweight, iweight) = (7, 8);
    out.push_str(&one_space(state.header.split_whitespace()));
    out.push('\n');
    for row in &state.rows {
        if unconfirmed.contains(&(row.backend.clone(), row.server.clone())) {
            continue;
        }
        let Some(s) = new
            .backends
            .get(&row.backend)
            .and_then(|b| b.servers.get(&row.server))
        else {
            continue;
        };
        let same_place = s.ip_port.is_some_and(|(ip, port)| {
            row.addr.as_deref() == Some(ip.to_string().as_str()) && row.port == port
        });
        if !same_place {
            continue;
        }
        let w = s.weight.to_string();
        let fields = row.raw.split_whitespace().enumerate().map(|(i, f)| {
            if i == uweight || i == iweight {
                w.as_str()
            } else {
                f
            }
        });
        out.push_str(&one_space(fields));
        out.push('\n');
    }
    out
}

/// The first columns of `show servers state` (format version 1), where
/// HAProxy reads them back from a `server-state-file`.
const STATE_COLUMNS: [&str; 19] = [
    "be_id",
    "be_name",
    "srv_id",
    "srv_name",
    "srv_addr",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_iweight",
    "srv_time_since_last_change",
    "srv_check_status",
    "srv_check_result",
    "srv_check_health",
    "srv_check_state",
    "srv_agent_state",
    "bk_f_forced_id",
    "srv_f_forced_id",
    "srv_fqdn",
    "srv_port",
];

/// Fields separated by one space, as a state file's lines are written.
fn one_space<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    fields.collect::<Vec<_>>().join(" ")
}

impl Layout {
    /// Splits any config text (no map roles): for [`carry_state`] in
    /// external-watcher mode.
    pub fn from_text(config: &str) -> Layout {
        Layout::split(config, BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HaproxyVars;
    use crate::model::{Catalog, Context, Desired};
    use crate::render::Renderer;
    use std::path::Path;

    const DIR: &str = "/etc/haproxy/maps";
    const V26: Caps = Caps {
        dynamic_cookie: false,
        dynamic_backends: false,
    };

    /// Renders a catalog file text with the built-in template.
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
        .unwrap()
        .render(&d, &vars)
        .unwrap();
        Layout::new(&r, DIR)
    }

    /// An instance: (id, `ip:port`, weight, passing).
    type Inst<'a> = (&'a str, &'a str, u32, bool);

    /// A catalog: per service, (name, tags, instances).
    fn catalog(services: &[(&str, &[&str], &[Inst])]) -> String {
        let svcs: Vec<String> = services
            .iter()
            .map(|(name, tags, insts)| {
                let mut all_tags = vec!["\"HAPROXY.ENABLE=true\"".to_string()];
                all_tags.extend(tags.iter().map(|t| format!("\"{t}\"")));
                let insts: Vec<String> = insts
                    .iter()
                    .map(|(id, addr, w, pass)| {
                        let (a, p) = addr.rsplit_once(':').unwrap();
                        format!(
                            r#"{{"id":"{id}","address":"{a}","port":{p},"weight":{w},"passing":{pass},"tags":[{}]}}"#,
                            all_tags.join(",")
                        )
                    })
                    .collect();
                format!(r#"{{"name":"{name}","instances":[{}]}}"#, insts.join(","))
            })
            .collect();
        format!(r#"{{"services":[{}]}}"#, svcs.join(","))
    }

    fn www(insts: &[(&str, &str, u32, bool)]) -> Layout {
        layout(&catalog(&[
            ("www", &[], insts),
            (
                "api",
                &["HAPROXY.PATH=/v1"],
                &[("api-1", "10.0.1.1:80", 1, true)],
            ),
        ]))
    }

    /// The backend a service's name maps to (`www` or `www:<hash>`).
    fn backend_of(l: &Layout, service: &str) -> String {
        l.backends
            .keys()
            .find(|b| *b == service || b.starts_with(&format!("{service}:")))
            .cloned()
            .unwrap_or_else(|| panic!("no backend for {service}"))
    }

    fn live(p: Plan) -> (Vec<Op>, Running) {
        match p {
            Plan::Live { ops, next } => (ops, *next),
            other => panic!("expected a live plan, got {other:?}"),
        }
    }

    #[test]
    fn the_same_render_is_the_same() {
        let a = www(&[("w1", "10.0.0.1:80", 1, true)]);
        let run = Running::started(a.clone());
        assert_eq!(run.plan(&a, V26), Plan::Same);
    }

    #[test]
    fn a_new_instance_is_added_with_the_backend_defaults() {
        let run = Running::started(www(&[("w1", "10.0.0.1:80", 1, true)]));
        let (ops, next) = live(run.plan(
            &www(&[
                ("w1", "10.0.0.1:80", 1, true),
                ("w2", "10.0.0.2:8080", 3, true),
            ]),
            V26,
        ));
        assert_eq!(
            ops,
            vec![Op::AddServer {
                backend: "www".into(),
                server: "w2".into(),
                ip: "10.0.0.2".parse().unwrap(),
                port: 8080,
                keywords: ["inter", "10s", "rise", "2", "fall", "1", "check", "weight", "3"]
                    .map(String::from)
                    .to_vec(),
            }]
        );
        assert!(next.layout.backends["www"].servers.contains_key("w2"));
        // Applying the same render again changes nothing.
        assert_eq!(
            next.plan(
                &www(&[
                    ("w1", "10.0.0.1:80", 1, true),
                    ("w2", "10.0.0.2:8080", 3, true)
                ]),
                V26
            ),
            Plan::Same
        );
    }

    #[test]
    fn a_critical_instance_is_parked_and_comes_back_ready() {
        let two = [
            ("w1", "10.0.0.1:80", 1, true),
            ("w2", "10.0.0.2:80", 1, true),
        ];
        let run = Running::started(www(&two));
        let (ops, parked) = live(run.plan(&www(&[two[0], ("w2", "10.0.0.2:80", 1, false)]), V26));
        assert_eq!(
            ops,
            vec![Op::Park {
                backend: "www".into(),
                server: "w2".into()
            }]
        );
        assert_eq!(parked.parked(), vec![("www".to_string(), "w2".to_string())]);
        let (ops, back) = live(parked.plan(&www(&two), V26));
        assert_eq!(
            ops,
            vec![Op::Ready {
                backend: "www".into(),
                server: "w2".into()
            }]
        );
        assert!(back.parked.is_empty());
        assert_eq!(back.plan(&www(&two), V26), Plan::Same);
    }

    #[test]
    fn a_parked_server_that_returns_moved_is_moved_then_readied() {
        let run = Running::started(www(&[
            ("w1", "10.0.0.1:80", 1, true),
            ("w2", "10.0.0.2:80", 1, true),
        ]));
        let (_, parked) = live(run.plan(&www(&[("w1", "10.0.0.1:80", 1, true)]), V26));
        let (ops, _) = live(parked.plan(
            &www(&[
                ("w1", "10.0.0.1:80", 1, true),
                ("w2", "10.0.0.9:81", 5, true),
            ]),
            V26,
        ));
        let kinds: Vec<_> = ops.iter().map(Op::kind).collect();
        assert_eq!(kinds, ["set_addr", "set_weight", "ready"]);
    }

    #[test]
    fn a_deleted_parked_server_is_added_again() {
        let run = Running::started(www(&[
            ("w1", "10.0.0.1:80", 1, true),
            ("w2", "10.0.0.2:80", 1, true),
        ]));
        let (_, mut parked) = live(run.plan(&www(&[("w1", "10.0.0.1:80", 1, true)]), V26));
        parked.deleted("www", "w2");
        assert!(parked.parked().is_empty());
        let (ops, _) = live(parked.plan(
            &www(&[
                ("w1", "10.0.0.1:80", 1, true),
                ("w2", "10.0.0.2:80", 1, true),
            ]),
            V26,
        ));
        assert_eq!(ops.iter().map(Op::kind).collect::<Vec<_>>(), ["add_server"]);
    }

    #[test]
    fn weight_and_address_changes_are_live() {
        let run = Running::started(www(&[("w1", "10.0.0.1:80", 1, true)]));
        let (ops, _) = live(run.plan(&www(&[("w1", "10.0.0.7:90", 10, true)]), V26));
        assert_eq!(
            ops,
            vec![
                Op::SetAddr {
                    backend: "www".into(),
                    server: "w1".into(),
                    ip: "10.0.0.7".parse().unwrap(),
                    port: 90
                },
                Op::SetWeight {
                    backend: "www".into(),
                    server: "w1".into(),
                    weight: 10
                },
            ]
        );
    }

    #[test]
    fn adds_come_before_removals() {
        let run = Running::started(www(&[("w1", "10.0.0.1:80", 1, true)]));
        let (ops, _) = live(run.plan(&www(&[("w2", "10.0.0.2:80", 1, true)]), V26));
        assert_eq!(
            ops.iter().map(Op::kind).collect::<Vec<_>>(),
            ["add_server", "park"]
        );
    }

    #[test]
    fn a_new_vhost_replaces_the_map_under_its_loaded_name() {
        let base = |vhost: &str| {
            layout(&catalog(&[(
                "www",
                &[vhost],
                &[("w1", "10.0.0.1:80", 1, true)],
            )]))
        };
        let a = base("HAPROXY.VHOST=a.example.com");
        let run = Running::started(a.clone());
        let loaded = a.maps["hosts"].path.clone();
        let b = base("HAPROXY.VHOST=a.example.com,b.example.com");
        assert_ne!(b.maps["hosts"].path, loaded, "maps are content-addressed");
        let (ops, next) = live(run.plan(&b, V26));
        assert_eq!(
            ops,
            vec![Op::ReplaceMap {
                path: loaded.clone(),
                entries: vec![
                    ("a.example.com".into(), "www".into()),
                    ("b.example.com".into(), "www".into())
                ],
            }]
        );
        assert_eq!(next.layout.maps["hosts"].path, loaded);
        assert_eq!(next.plan(&b, V26), Plan::Same);
    }

    const V34: Caps = Caps {
        dynamic_cookie: true,
        dynamic_backends: true,
    };

    fn kinds(ops: &[Op]) -> Vec<&'static str> {
        ops.iter().map(Op::kind).collect()
    }

    #[test]
    fn on_3_4_a_new_service_is_a_backend_added_published_then_routed() {
        let run = Running::started(www(&[("w1", "10.0.0.1:80", 1, true)]));
        let more = layout(&catalog(&[
            ("www", &[], &[("w1", "10.0.0.1:80", 1, true)]),
            (
                "api",
                &["HAPROXY.PATH=/v1"],
                &[("api-1", "10.0.1.1:80", 1, true)],
            ),
            ("new", &[], &[("n1", "10.0.2.1:80", 1, true)]),
        ]));
        let (ops, next) = live(run.plan(&more, V34));
        assert_eq!(
            kinds(&ops),
            ["add_backend", "add_server", "publish", "replace_map"]
        );
        assert_eq!(
            ops[0],
            Op::AddBackend {
                backend: "new".into(),
                profile: more.backends["new"].profile.clone().unwrap()
            }
        );
        // The added server takes the profile's default-server keywords.
        assert!(matches!(&ops[1], Op::AddServer { keywords, .. }
            if keywords.starts_with(&["inter".to_string(), "10s".into()])));
        assert_eq!(next.plan(&more, V34), Plan::Same);
        // Removed again: routed away first, then parked until deletable.
        let (ops, back) = live(next.plan(&run.layout, V34));
        assert_eq!(kinds(&ops), ["replace_map", "park_backend"]);
        assert_eq!(back.parked_backends(), ["new"]);
        assert_eq!(back.parked(), [("new".to_string(), "n1".to_string())]);
        assert_eq!(back.plan(&run.layout, V34), Plan::Same);
        // Back before it was deleted: published again, its server ready.
        let (ops, again) = live(back.plan(&more, V34));
        assert_eq!(kinds(&ops), ["ready", "publish", "replace_map"]);
        assert!(!again.has_parked());
        assert_eq!(again.plan(&more, V34), Plan::Same);
        // Deleted: forgotten.
        let mut gone = back.clone();
        gone.deleted("new", "n1");
        gone.backend_deleted("new");
        assert!(!gone.has_parked());
        let (ops, _) = live(gone.plan(&more, V34));
        assert_eq!(kinds(&ops)[0], "add_backend");
    }

    #[test]
    fn on_3_4_new_options_are_a_new_backend_switched_to_when_the_profile_runs() {
        let two = |www_tags: &[&str]| {
            layout(&catalog(&[
                ("www", www_tags, &[("w1", "10.0.0.1:80", 1, true)]),
                (
                    "api",
                    &["HAPROXY.BACKEND.BALANCE=leastconn"],
                    &[("api-1", "10.0.1.1:80", 1, true)],
                ),
            ]))
        };
        let run = Running::started(two(&[]));
        let lc = two(&["HAPROXY.BACKEND.BALANCE=leastconn"]);
        let (ops, next) = live(run.plan(&lc, V34));
        assert_eq!(
            kinds(&ops),
            [
                "add_backend",
                "add_server",
                "publish",
                "replace_map",
                "park_backend"
            ]
        );
        let new_name = backend_of(&lc, "www");
        assert_ne!(new_name, "www");
        assert!(matches!(&ops[0], Op::AddBackend { backend, .. } if *backend == new_name));
        assert!(matches!(&ops[4], Op::ParkBackend { backend, .. } if backend == "www"));
        assert_eq!(next.plan(&lc, V34), Plan::Same);
        // A profile no backend runs is config text: one reload.
        let hc = two(&["HAPROXY.BACKEND.HEALTHCHECK=/health"]);
        assert!(matches!(
            run.plan(&hc, V34),
            Plan::Reload(Structural::Profile {
                change: SectionChange::Added,
                ..
            })
        ));
        // A profile left unused stays in the process: no reload to drop it,
        // and it serves a later backend live.
        let only_www = layout(&catalog(&[("www", &[], &[("w1", "10.0.0.1:80", 1, true)])]));
        let (ops, alone) = live(run.plan(&only_www, V34));
        assert!(kinds(&ops).contains(&"park_backend"));
        let (ops, _) = live(alone.plan(&lc, V34));
        assert_eq!(kinds(&ops)[0], "add_backend");
    }

    #[test]
    fn on_3_4_a_tcp_service_still_reloads_for_its_frontend() {
        let tcp = |port: &str| {
            format!(
                r#"{{"services":[{{"name":"pg","instances":[{{"id":"pg-1","address":"10.0.3.1","port":5432,"tags":["HAPROXY.ENABLE=true","HAPROXY.PROTOCOL=tcp","HAPROXY.FRONTEND.PORT={port}"]}}]}}]}}"#
            )
        };
        let run = Running::started(layout(r#"{"services":[]}"#));
        assert!(matches!(
            run.plan(&layout(&tcp("15432")), V34),
            Plan::Reload(Structural::Skeleton { .. })
        ));
    }

    /// What 3.4.7 refuses decides: `add backend` from a static-rr,
    /// source or uri profile is accepted, `add server` into it is not.
    #[test]
    fn on_3_4_a_static_balance_takes_a_backend_live_but_no_server() {
        let src = ["HAPROXY.BACKEND.BALANCE=source"];
        let run = Running::started(layout(&catalog(&[
            ("www", &[], &[("w1", "10.0.0.1:80", 1, true)]),
            ("hashed", &src, &[("h1", "10.0.1.1:80", 1, true)]),
        ])));
        let with = |passing: bool| {
            layout(&catalog(&[
                ("www", &[], &[("w1", "10.0.0.1:80", 1, true)]),
                ("hashed", &src, &[("h1", "10.0.1.1:80", 1, true)]),
                ("ip", &src, &[("i1", "10.0.2.1:80", 1, passing)]),
            ]))
        };
        // No passing instance yet: the backend alone, live.
        let (ops, next) = live(run.plan(&with(false), V34));
        assert_eq!(kinds(&ops), ["add_backend", "publish", "replace_map"]);
        // Its first server: refused by HAProxy, so a reload.
        let ip = backend_of(&with(true), "ip");
        assert_eq!(
            next.plan(&with(true), V34),
            Plan::Reload(Structural::StaticBackend { backend: ip })
        );
        assert!(matches!(
            run.plan(&with(true), V34),
            Plan::Reload(Structural::StaticBackend { .. })
        ));
        // Removed: unpublished, its servers parked and deleted, live.
        let (ops, _) = live(Running::started(with(true)).plan(&run.layout, V34));
        assert_eq!(kinds(&ops), ["replace_map", "park_backend"]);
    }

    /// A sticky TCP service's stick-table is in its backend (no defaults
    /// holds one), so the backend is config, never added or deleted live
    /// (3.4.7: "Cannot remove a backend with stick-table."); its servers
    /// still change live.
    #[test]
    fn on_3_4_a_sticky_tcp_backend_is_config_and_its_servers_live() {
        let pgs = |insts: &[Inst]| {
            let tags = [
                "HAPROXY.PROTOCOL=tcp",
                "HAPROXY.FRONTEND.PORT=15433",
                "HAPROXY.BACKEND.STICKY=true",
            ];
            layout(&catalog(&[
                ("www", &[], &[("w1", "10.0.0.1:80", 1, true)]),
                ("pgs", &tags, insts),
            ]))
        };
        let run = Running::started(pgs(&[("q1", "10.0.3.1:5432", 1, true)]));
        assert_eq!(run.layout.backends["pgs"].profile, None);
        let (ops, _) = live(run.plan(
            &pgs(&[
                ("q1", "10.0.3.1:5432", 1, true),
                ("q2", "10.0.3.2:5432", 1, true),
            ]),
            V34,
        ));
        assert_eq!(kinds(&ops), ["add_server"]);
        let gone = layout(&catalog(&[("www", &[], &[("w1", "10.0.0.1:80", 1, true)])]));
        assert!(matches!(
            run.plan(&gone, V34),
            Plan::Reload(Structural::Skeleton { .. })
        ));
        let c = run.changes(&gone, V34);
        assert!(c.live.iter().all(|o| o.kind() != "park_backend"), "{c:?}");
        assert!(c.reload.iter().any(|r| matches!(r,
            Structural::Section { header, change: SectionChange::Removed }
                if header.starts_with("backend pgs from "))));
    }

    #[test]
    fn a_new_service_reloads() {
        let run = Running::started(www(&[("w1", "10.0.0.1:80", 1, true)]));
        let more = layout(&catalog(&[
            ("www", &[], &[("w1", "10.0.0.1:80", 1, true)]),
            (
                "api",
                &["HAPROXY.PATH=/v1"],
                &[("api-1", "10.0.1.1:80", 1, true)],
            ),
            ("new", &[], &[("n1", "10.0.2.1:80", 1, true)]),
        ]));
        assert_eq!(
            run.plan(&more, V26),
            Plan::Reload(Structural::Backend {
                backend: "new".into(),
                change: SectionChange::Added
            })
        );
    }

    #[test]
    fn changes_lists_every_change_where_plan_stops_at_the_first() {
        let run = Running::started(www(&[("w1", "10.0.0.1:80", 1, true)]));
        let more = layout(&catalog(&[
            (
                "www",
                &[],
                &[
                    ("w1", "10.0.0.1:80", 5, true),
                    ("w2", "10.0.0.2:80", 1, true),
                ],
            ),
            (
                "api",
                &["HAPROXY.PATH=/v1"],
                &[("api-1", "10.0.1.1:80", 1, true)],
            ),
            ("new", &[], &[("n1", "10.0.2.1:80", 1, true)]),
        ]));
        assert!(matches!(
            run.plan(&more, V26),
            Plan::Reload(Structural::Backend { .. })
        ));
        let c = run.changes(&more, V26);
        assert_eq!(
            c.live.iter().map(Op::kind).collect::<Vec<_>>(),
            ["add_server", "set_weight", "replace_map"]
        );
        assert_eq!(
            c.reload,
            vec![Structural::Backend {
                backend: "new".into(),
                change: SectionChange::Added
            }]
        );
        // The servers of a new backend come with it, not as live adds.
        assert!(!c
            .live
            .iter()
            .any(|o| matches!(o, Op::AddServer { backend, .. } if backend == "new")));
        // Nothing changed: nothing listed.
        assert_eq!(run.changes(&run.layout, V26), Changes::default());
    }

    #[test]
    fn changes_goes_on_after_a_server_that_reloads() {
        let st = |insts: &[(&str, &str, u32, bool)]| {
            layout(&catalog(&[(
                "www",
                &["HAPROXY.BACKEND.STICKY=true"],
                insts,
            )]))
        };
        let run = Running::started(st(&[
            ("w1", "10.0.0.1:80", 1, true),
            ("w2", "10.0.0.2:80", 1, true),
        ]));
        let new = st(&[
            ("w2", "10.0.0.2:80", 3, true),
            ("w3", "10.0.0.3:80", 1, true),
        ]);
        let c = run.changes(&new, V26);
        assert_eq!(
            c.reload,
            vec![Structural::Cookie {
                backend: backend_of(&new, "www"),
                server: "w3".into()
            }]
        );
        assert_eq!(
            c.live.iter().map(Op::kind).collect::<Vec<_>>(),
            ["set_weight", "park"]
        );
        assert_eq!(run.plan(&new, V26), Plan::Reload(c.reload[0].clone()));
    }

    #[test]
    fn a_changed_section_names_its_first_different_line() {
        let old = "global\n  maxconn 10\nfrontend f\n  bind :80\n";
        let new = "global\n  maxconn 20\nfrontend f\n  bind :80\nbackend b\n";
        assert_eq!(
            section_changes(old, new),
            vec![
                Structural::Section {
                    header: "global".into(),
                    change: SectionChange::Changed {
                        line: "  maxconn 20".into()
                    }
                },
                Structural::Section {
                    header: "backend b".into(),
                    change: SectionChange::Added
                },
            ]
        );
        assert_eq!(
            section_changes(new, old)[1],
            Structural::Section {
                header: "backend b".into(),
                change: SectionChange::Removed
            }
        );
        // A comment that comes with a new directive does not name the change.
        let commented =
            "global\n  maxconn 10\nfrontend f\n  # about paths\n  use_backend x\n  bind :80\n";
        assert_eq!(
            section_changes(old, commented),
            vec![Structural::Section {
                header: "frontend f".into(),
                change: SectionChange::Changed {
                    line: "  use_backend x".into()
                }
            }]
        );
        assert_eq!(proxy_name("listen _stats"), Some("_stats"));
        assert_eq!(proxy_name("frontend f"), None);
    }

    #[test]
    fn the_first_path_service_reloads() {
        let run = Running::started(layout(&catalog(&[(
            "www",
            &[],
            &[("w1", "10.0.0.1:80", 1, true)],
        )])));
        let with_path = layout(&catalog(&[(
            "www",
            &["HAPROXY.PATH=/v1"],
            &[("w1", "10.0.0.1:80", 1, true)],
        )]));
        assert!(matches!(run.plan(&with_path, V26), Plan::Reload(_)));
    }

    #[test]
    fn backend_options_reload() {
        let run = Running::started(www(&[("w1", "10.0.0.1:80", 1, true)]));
        let lc = layout(&catalog(&[
            (
                "www",
                &["HAPROXY.BACKEND.BALANCE=leastconn"],
                &[("w1", "10.0.0.1:80", 1, true)],
            ),
            (
                "api",
                &["HAPROXY.PATH=/v1"],
                &[("api-1", "10.0.1.1:80", 1, true)],
            ),
        ]));
        // Another balance is another profile: new config text.
        assert!(matches!(
            run.plan(&lc, V26),
            Plan::Reload(Structural::Profile {
                change: SectionChange::Added,
                ..
            })
        ));
        let mc = layout(&catalog(&[
            (
                "www",
                &["HAPROXY.BACKEND.MAXCONN=10"],
                &[("w1", "10.0.0.1:80", 1, true)],
            ),
            (
                "api",
                &["HAPROXY.PATH=/v1"],
                &[("api-1", "10.0.1.1:80", 1, true)],
            ),
        ]));
        // maxconn is a server keyword, changed live on every version.
        let (ops, _) = live(run.plan(&mc, V26));
        assert_eq!(
            ops,
            [Op::SetMaxconn {
                backend: "www".into(),
                server: "w1".into(),
                maxconn: 10
            }]
        );
        let (back, _) =
            live(Running::started(mc).plan(&www(&[("w1", "10.0.0.1:80", 1, true)]), V26));
        assert!(
            matches!(&back[..], [Op::SetMaxconn { maxconn: 0, .. }]),
            "{back:?}"
        );
    }

    #[test]
    fn static_backends_and_host_names_reload() {
        let st = |insts: &[(&str, &str, u32, bool)]| {
            layout(&catalog(&[(
                "www",
                &["HAPROXY.BACKEND.BALANCE=static-rr"],
                insts,
            )]))
        };
        let run = Running::started(st(&[("w1", "10.0.0.1:80", 1, true)]));
        assert_eq!(
            run.plan(
                &st(&[
                    ("w1", "10.0.0.1:80", 1, true),
                    ("w2", "10.0.0.2:80", 1, true)
                ]),
                V26
            ),
            Plan::Reload(Structural::StaticBackend {
                backend: backend_of(&run.layout, "www")
            })
        );
        // Removing and reweighting work on any algorithm.
        assert!(matches!(
            run.plan(&st(&[("w1", "10.0.0.1:80", 1, false)]), V26),
            Plan::Live { .. }
        ));
        let run = Running::started(www(&[("w1", "10.0.0.1:80", 1, true)]));
        assert_eq!(
            run.plan(
                &www(&[
                    ("w1", "10.0.0.1:80", 1, true),
                    ("w2", "backend.local:80", 1, true)
                ]),
                V26
            ),
            Plan::Reload(Structural::Address {
                backend: "www".into(),
                server: "w2".into()
            })
        );
    }

    #[test]
    fn sticky_http_servers_reload_on_2_6_only() {
        let sticky = |insts: &[(&str, &str, u32, bool)]| {
            layout(&catalog(&[(
                "www",
                &["HAPROXY.BACKEND.STICKY=true"],
                insts,
            )]))
        };
        let run = Running::started(sticky(&[("w1", "10.0.0.1:80", 1, true)]));
        let two = sticky(&[
            ("w1", "10.0.0.1:80", 1, true),
            ("w2", "10.0.0.2:80", 1, true),
        ]);
        assert!(matches!(
            run.plan(&two, V26),
            Plan::Reload(Structural::Cookie { .. })
        ));
        let v30 = Caps::from_version("HAProxy version 3.0.11-1 2025/06/11");
        assert!(matches!(run.plan(&two, v30), Plan::Live { .. }));
    }

    #[test]
    fn hash_balance_is_dynamic_only_when_consistent() {
        assert!(!dynamic_balance("source", false));
        assert!(dynamic_balance("source", true));
        assert!(dynamic_balance("roundrobin", false));
        assert!(!dynamic_balance("static-rr", true));
        let l = Layout::split(
            "defaults\n    balance uri\n    hash-type consistent\nbackend b\n    server s 10.0.0.1:80\n",
            BTreeMap::new(),
        );
        assert!(l.backends["b"].dynamic);
    }

    #[test]
    fn state_carries_only_for_servers_in_the_same_place_with_the_new_weight() {
        let dump = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 b 1 s1 10.0.0.1 0 0 3 3 1 6 3 2 6 0 0 0 - 80 - 0 0 - - 0\n\
3 b 2 s2 10.0.0.2 0 0 1 1 2 8 2 0 6 0 0 0 - 80 - 0 0 - - 0\n\
3 b 3 gone 10.0.0.3 0 0 1 1 2 8 2 0 6 0 0 0 - 80 - 0 0 - - 0\n\
4 other 1 s1 10.0.0.1 0 0 1 1 2 8 2 0 6 0 0 0 - 80 - 0 0 - - 0\n";
        let new = Layout::from_text(
            "backend b\n  server s1 10.0.0.1:80 check weight 5\n  server s2 10.0.0.2:81 check\n",
        );
        let out = carry_state(dump, &new, &BTreeSet::new());
        let rows: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rows,
            [
                "1",
                "3 b 1 s1 10.0.0.1 0 0 5 5 1 6 3 2 6 0 0 0 - 80 - 0 0 - - 0"
            ]
        );
    }

    #[test]
    fn version_parsing() {
        assert!(!Caps::from_version("HAProxy version 2.6.12-1+deb12u4 2026/10/17").dynamic_cookie);
        assert!(Caps::from_version("HAProxy version 3.0.11-1 2025").dynamic_cookie);
        assert!(!Caps::from_version("garbage").dynamic_cookie);
        assert!(!Caps::from_version("HAProxy version 3.0.11-1 2025").dynamic_backends);
        assert_eq!(
            Caps::from_version("HAProxy version 3.4.7-1 2026/10/14 - https://haproxy.org/"),
            V34
        );
    }

    #[test]
    fn server_lines_are_parsed_whatever_the_template() {
        let l = Layout::split(
            "backend b\n  balance first\n  server s1 10.0.0.1:80 check weight 7 maxconn 5 # note\n  server s2 h.local:80\n",
            BTreeMap::new(),
        );
        let s1 = &l.backends["b"].servers["s1"];
        assert_eq!(
            (s1.weight, s1.maxconn, s1.keywords.clone()),
            (7, Some(5), vec!["check".into()])
        );
        assert_eq!(s1.ip_port, Some(("10.0.0.1".parse().unwrap(), 80)));
        assert_eq!(l.backends["b"].servers["s2"].ip_port, None);
        assert!(!l.skeleton.contains("server"));
    }
}
