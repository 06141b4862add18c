//! Per-service rules from tags (issue 21): what operators set per route in
//! Traefik, fabio and the ingress controllers, validated as untrusted input
//! and rendered as **data**: each rule's values live in a map file keyed by
//! the backend name the routing chose (`txn.backend`), so changing a value
//! on a running service is a map swap (`prepare`/`add`/`commit map`), not a
//! process start. The config lines that read a kind of rule are present
//! only while some service uses that kind: the first service to use it
//! reloads once, later ones and every value change are live.
//!
//! | tag | value | rule |
//! |---|---|---|
//! | `HAPROXY.PATH.STRIP` | `true` | the service's `HAPROXY.PATH` is removed from the path sent to the backend |
//! | `HAPROXY.PATH.PREFIX` | a path, e.g. `/v1` | put in front of the path sent to the backend |
//! | `HAPROXY.BACKEND.HOST` | a host name (`:port` allowed) | the `Host` the backend sees |
//! | `HAPROXY.BACKEND.TIMEOUT` | a duration, 1ms..24h | `timeout server` for this service |
//! | `HAPROXY.REDIRECT` | `<301/302/307/308>,<http(s)://host[:port][/path]>` | answer with a redirect to the URL plus the request's path and query |
//! | `HAPROXY.ALLOW` / `HAPROXY.DENY` | IPs or CIDRs, comma separated | 403 for a client address outside / inside them |
//! | `HAPROXY.AUTH` | `user:salt:sha256hex`, comma separated | HTTP basic authentication; HAProxy checks `sha256(salt + password)` |
//! | `HAPROXY.RATE_LIMIT` | requests a second, 1..1000000 | per client address; above it, 429 |
//! | `HAPROXY.REQUEST.HEADER.<Name>` / `HAPROXY.RESPONSE.HEADER.<Name>` | a value without whitespace | header set on the request to the backend / the response to the client |
//! | `HAPROXY.COMPRESS` | `true` | gzip for text types (in the backend's profile: reloads on 2.6) |

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::syntax::{hostname, is_path, strict_int};

/// Rule tags with a fixed name (header tags are prefixes, below).
pub const RULE_TAGS: &[&str] = &[
    "HAPROXY.PATH.STRIP",
    "HAPROXY.PATH.PREFIX",
    "HAPROXY.BACKEND.HOST",
    "HAPROXY.BACKEND.TIMEOUT",
    "HAPROXY.REDIRECT",
    "HAPROXY.ALLOW",
    "HAPROXY.DENY",
    "HAPROXY.AUTH",
    "HAPROXY.RATE_LIMIT",
    "HAPROXY.COMPRESS",
];
pub const REQUEST_HEADER: &str = "HAPROXY.REQUEST.HEADER.";
pub const RESPONSE_HEADER: &str = "HAPROXY.RESPONSE.HEADER.";

/// Longest path prefix `HAPROXY.PATH.STRIP` removes, in segments (the
/// config has one line per depth).
pub const MAX_STRIP_DEPTH: usize = 8;
const MAX_NETS: usize = 64;
const MAX_USERS: usize = 32;
const MAX_HEADER_VALUE: usize = 256;
const MAX_URL: usize = 512;

/// Headers a tag may not set: hop-by-hop and framing headers (HAProxy
/// owns them), `Host` (`HAPROXY.BACKEND.HOST` does), and the forwarding
/// headers the config sets itself, which a client must not be able to
/// claim.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "proxy-connection",
    "proxy-authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
];

/// A service's rules, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Rules {
    /// Path segments removed from the front of the path (the service's
    /// `HAPROXY.PATH`).
    pub strip_depth: Option<usize>,
    pub add_prefix: Option<String>,
    pub set_host: Option<String>,
    pub timeout_server_ms: Option<u64>,
    /// Code and target (no trailing `/`).
    pub redirect: Option<(u16, String)>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub auth: Vec<AuthUser>,
    pub rate_limit: Option<u32>,
    /// Lowercased name → value.
    pub request_headers: BTreeMap<String, String>,
    pub response_headers: BTreeMap<String, String>,
    pub compress: bool,
}

/// One `HAPROXY.AUTH` user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthUser {
    pub user: String,
    pub salt: String,
    /// `sha256(salt + password)`, lowercase hex.
    pub hash: String,
}

impl Rules {
    /// True when the service has no rule at all.
    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }

    /// Whether the service has a rule the shared frontend applies: any
    /// but `HAPROXY.COMPRESS`, which is in the backend's profile and so
    /// applies on a frontend port of the service's own too.
    pub fn on_frontend(&self) -> bool {
        Rules {
            compress: false,
            ..self.clone()
        } != Rules::default()
    }
}

/// Whether `key` is a rule tag (fixed or a header prefix).
pub fn is_rule_tag(key: &str) -> bool {
    RULE_TAGS.contains(&key) || key.starts_with(REQUEST_HEADER) || key.starts_with(RESPONSE_HEADER)
}

/// A rule tag's value that is wrong: the tag and why.
pub struct BadRule {
    pub tag: String,
    pub message: String,
}

fn bad(tag: &str, message: impl Into<String>) -> BadRule {
    BadRule {
        tag: tag.to_string(),
        message: message.into(),
    }
}

/// Parses the rule tags of a service. `path` is its `HAPROXY.PATH` (for
/// `HAPROXY.PATH.STRIP`), `http` whether it is an HTTP service (rules
/// apply only there).
pub fn parse(
    values: &BTreeMap<&str, &str>,
    path: Option<&str>,
    http: bool,
) -> Result<Rules, BadRule> {
    let mut r = Rules::default();
    for (&key, &value) in values.iter().filter(|(k, _)| is_rule_tag(k)) {
        if !http {
            return Err(bad(key, "only for HTTP services (HAPROXY.PROTOCOL=http)"));
        }
        match key {
            "HAPROXY.PATH.STRIP" => match value {
                "false" => {}
                "true" => {
                    let p =
                        path.ok_or_else(|| bad(key, "needs HAPROXY.PATH (the prefix it strips)"))?;
                    let depth = p.split('/').filter(|s| !s.is_empty()).count();
                    if depth > MAX_STRIP_DEPTH {
                        return Err(bad(
                            key,
                            format!("HAPROXY.PATH {p:?} has {depth} segments; at most {MAX_STRIP_DEPTH} can be stripped"),
                        ));
                    }
                    if p.split('/').skip(1).any(str::is_empty) {
                        return Err(bad(key, format!("HAPROXY.PATH {p:?} has an empty segment")));
                    }
                    r.strip_depth = Some(depth);
                }
                v => return Err(bad(key, format!("{v:?} is not true or false"))),
            },
            "HAPROXY.PATH.PREFIX" => {
                if !is_path(value) || value == "/" || value.ends_with('/') || value.contains("//") {
                    return Err(bad(
                        key,
                        format!("{value:?} is not a path like /v1 (starts with /, no trailing /)"),
                    ));
                }
                r.add_prefix = Some(value.to_string());
            }
            "HAPROXY.BACKEND.HOST" => {
                r.set_host = Some(host_port(value).ok_or_else(|| {
                    bad(
                        key,
                        format!("{value:?} is not a host name with an optional :port"),
                    )
                })?);
            }
            "HAPROXY.BACKEND.TIMEOUT" => {
                let d = crate::duration::parse(value).map_err(|e| bad(key, e.to_string()))?;
                let ms = d.as_millis() as u64;
                if !(1..=86_400_000).contains(&ms) || d.subsec_micros() % 1000 != 0 {
                    return Err(bad(
                        key,
                        format!("{value:?} is not between 1ms and 24h in whole milliseconds"),
                    ));
                }
                r.timeout_server_ms = Some(ms);
            }
            "HAPROXY.REDIRECT" => {
                let (code, url) = value
                    .split_once(',')
                    .ok_or_else(|| bad(key, format!("{value:?} is not <code>,<url>")))?;
                let code: u16 = match code {
                    "301" | "302" | "307" | "308" => code.parse().unwrap_or(302),
                    c => return Err(bad(key, format!("code {c:?} is not 301, 302, 307 or 308"))),
                };
                let url = redirect_url(url).ok_or_else(|| {
                    bad(
                        key,
                        format!("{url:?} is not an http(s)://host[:port][/path] URL (no query, fragment, credentials or whitespace)"),
                    )
                })?;
                r.redirect = Some((code, url));
            }
            "HAPROXY.ALLOW" => r.allow = nets(key, value)?,
            "HAPROXY.DENY" => r.deny = nets(key, value)?,
            "HAPROXY.AUTH" => r.auth = users(key, value)?,
            "HAPROXY.RATE_LIMIT" => {
                r.rate_limit = Some(strict_int(value, 1, 1_000_000).ok_or_else(|| {
                    bad(
                        key,
                        format!("{value:?} is not an integer 1..=1000000 (requests a second)"),
                    )
                })?);
            }
            "HAPROXY.COMPRESS" => {
                r.compress = match value {
                    "true" => true,
                    "false" => false,
                    v => return Err(bad(key, format!("{v:?} is not true or false"))),
                }
            }
            _ => {
                let (name, response) = match key.strip_prefix(REQUEST_HEADER) {
                    Some(n) => (n, false),
                    None => (key.strip_prefix(RESPONSE_HEADER).unwrap_or_default(), true),
                };
                let name = header_name(name).ok_or_else(|| {
                    bad(key, format!("{name:?} is not a header name a tag may set (letters, digits, '-'; not Host, Connection, X-Forwarded-*, ...)"))
                })?;
                if !header_value(value) {
                    return Err(bad(
                        key,
                        format!("{value:?} is not a header value (printable ASCII, no whitespace, quotes, '#' or backslash, at most {MAX_HEADER_VALUE})"),
                    ));
                }
                let headers = if response {
                    &mut r.response_headers
                } else {
                    &mut r.request_headers
                };
                headers.insert(name, value.to_string());
            }
        }
    }
    Ok(r)
}

fn host_port(s: &str) -> Option<String> {
    match s.rsplit_once(':') {
        Some((h, p)) => {
            let port = strict_int(p, 1, 65535)?;
            Some(format!("{}:{port}", hostname(h)?))
        }
        None => hostname(s),
    }
}

/// `http(s)://host[:port][/path]`, the path without a trailing `/`.
fn redirect_url(s: &str) -> Option<String> {
    if s.len() > MAX_URL {
        return None;
    }
    let (scheme, rest) = s.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, port) = v6.split_once(']')?;
        let ip: std::net::Ipv6Addr = ip.parse().ok()?;
        let port = match port {
            "" => String::new(),
            p => format!(":{}", strict_int(p.strip_prefix(':')?, 1, 65535)?),
        };
        format!("[{ip}]{port}")
    } else {
        host_port(authority)?
    };
    if !path.is_empty() && (!is_path(path) || path.contains(['?', '#'])) {
        return None;
    }
    Some(format!(
        "{scheme}://{authority}{}",
        path.trim_end_matches('/')
    ))
}

fn nets(tag: &str, value: &str) -> Result<Vec<IpNet>, BadRule> {
    let mut out = BTreeSet::new();
    for part in value.split(',') {
        let net = match part.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match part.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(bad(
                        tag,
                        format!("{part:?} in {value:?} is not an IP address or CIDR"),
                    ))
                }
            },
        };
        if net.trunc() != net {
            return Err(bad(
                tag,
                format!(
                    "{part:?} has host bits set (the network is {})",
                    net.trunc()
                ),
            ));
        }
        out.insert(net);
    }
    if out.len() > MAX_NETS {
        return Err(bad(tag, format!("more than {MAX_NETS} networks")));
    }
    Ok(out.into_iter().collect())
}

fn users(tag: &str, value: &str) -> Result<Vec<AuthUser>, BadRule> {
    let mut out: Vec<AuthUser> = Vec::new();
    for entry in value.split(',') {
        let mut it = entry.split(':');
        let (Some(user), Some(salt), Some(hash), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad(
                tag,
                "each user is user:salt:sha256hex (never a clear-text password)",
            ));
        };
        let ok_user = !user.is_empty()
            && user.len() <= 64
            && user
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-@".contains(&c));
        let ok_salt = (8..=64).contains(&salt.len())
            && salt
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"./+=-".contains(&c));
        let ok_hash = hash.len() == 64
            && hash
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if !ok_user {
            return Err(bad(
                tag,
                format!("user {user:?} is not 1-64 of letters, digits, '.', '_', '-', '@'"),
            ));
        }
        if !ok_salt {
            return Err(bad(
                tag,
                format!(
                    "the salt of {user:?} is not 8-64 of letters, digits, '.', '/', '+', '=', '-'"
                ),
            ));
        }
        if !ok_hash {
            return Err(bad(tag, format!("the hash of {user:?} is not 64 lowercase hex digits (sha256 of salt + password)")));
        }
        if out.iter().any(|u| u.user == user) {
            return Err(bad(tag, format!("user {user:?} is listed twice")));
        }
        out.push(AuthUser {
            user: user.to_string(),
            salt: salt.to_string(),
            hash: hash.to_string(),
        });
    }
    if out.len() > MAX_USERS {
        return Err(bad(tag, format!("more than {MAX_USERS} users")));
    }
    Ok(out)
}

fn header_name(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    let lower = s.to_ascii_lowercase();
    (ok && !RESERVED_HEADERS.contains(&lower.as_str())).then_some(lower)
}

fn header_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_HEADER_VALUE
        && s.bytes()
            .all(|c| (0x21..0x7f).contains(&c) && !b"\"'\\#".contains(&c))
}

/// The map files the rules of all services make, by role (the map file's
/// name before its hash; roles of header maps carry the header name).
/// Keys are backend names; `nets`/`pairs` are the two steps of an IP list
/// (see [`ip_lists`]).
pub fn maps(services: &[(&str, &Rules)]) -> BTreeMap<String, Entries> {
    let mut m: BTreeMap<String, Entries> = BTreeMap::new();
    let mut put = |role: String, k: String, v: String| m.entry(role).or_default().push((k, v));
    for (be, r) in services {
        let be = be.to_string();
        if let Some(d) = r.strip_depth {
            put("rule_strip".into(), be.clone(), d.to_string());
        }
        if let Some(p) = &r.add_prefix {
            put("rule_prefix".into(), be.clone(), p.clone());
        }
        if let Some(h) = &r.set_host {
            put("rule_host".into(), be.clone(), h.clone());
        }
        if let Some(t) = r.timeout_server_ms {
            put("rule_timeout".into(), be.clone(), t.to_string());
        }
        if let Some((code, url)) = &r.redirect {
            put("rule_redirect".into(), be.clone(), format!("{code}|{url}"));
        }
        if !r.auth.is_empty() {
            put("rule_auth_on".into(), be.clone(), "1".into());
            for u in &r.auth {
                put(
                    "rule_auth".into(),
                    format!("{be}|{}", u.user),
                    format!("{}:{}", u.salt, u.hash),
                );
            }
        }
        if let Some(n) = r.rate_limit {
            put("rule_rate".into(), be.clone(), n.to_string());
        }
        for (name, v) in &r.request_headers {
            put(format!("rule_reqhdr_{name}"), be.clone(), v.clone());
        }
        for (name, v) in &r.response_headers {
            put(format!("rule_reshdr_{name}"), be.clone(), v.clone());
        }
        if !r.allow.is_empty() {
            put("rule_allow_on".into(), be.clone(), "1".into());
        }
    }
    for (kind, lists) in [
        (
            "allow",
            services
                .iter()
                .map(|(b, r)| (*b, &r.allow))
                .collect::<Vec<_>>(),
        ),
        (
            "deny",
            services
                .iter()
                .map(|(b, r)| (*b, &r.deny))
                .collect::<Vec<_>>(),
        ),
    ] {
        if let Some((nets, pairs)) = ip_lists(&lists) {
            m.insert(format!("rule_{kind}_nets"), nets);
            m.insert(format!("rule_{kind}_pairs"), pairs);
        }
    }
    for entries in m.values_mut() {
        entries.sort();
    }
    m
}

/// A map file's `key value` lines.
pub type Entries = Vec<(String, String)>;

/// Per-service IP lists as two maps HAProxy can read per request:
/// `nets` maps every network named by any list to an id (`map_ip` finds
/// the most specific one holding the client's address), and `pairs` has
/// `<backend>|<id>` for each service whose list covers that network. The
/// networks holding an address are nested, so the most specific one C is
/// inside every other; a service's list covers the address exactly when
/// one of its networks contains C. None when no list has a network.
pub fn ip_lists(lists: &[(&str, &Vec<IpNet>)]) -> Option<(Entries, Entries)> {
    let all: BTreeSet<IpNet> = lists.iter().flat_map(|(_, l)| l.iter().copied()).collect();
    if all.is_empty() {
        return None;
    }
    let ids: BTreeMap<IpNet, String> = all
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, format!("n{i}")))
        .collect();
    let nets = ids
        .iter()
        .map(|(n, id)| (n.to_string(), id.clone()))
        .collect();
    let mut pairs = Vec::new();
    for (be, list) in lists {
        for (c, id) in &ids {
            if list.iter().any(|n| n.contains(c)) {
                pairs.push((format!("{be}|{id}"), "1".to_string()));
            }
        }
    }
    Some((nets, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(tags: &[(&str, &str)], path: Option<&str>) -> Result<Rules, String> {
        let values: BTreeMap<&str, &str> = tags.iter().copied().collect();
        parse(&values, path, true).map_err(|b| format!("{}: {}", b.tag, b.message))
    }

    #[test]
    fn parses_every_rule() {
        let hash = "a".repeat(64);
        let auth = format!("alice:saltsalt:{hash}");
        let r = rules(
            &[
                ("HAPROXY.PATH.STRIP", "true"),
                ("HAPROXY.PATH.PREFIX", "/v1"),
                ("HAPROXY.BACKEND.HOST", "Internal.example:8080"),
                ("HAPROXY.BACKEND.TIMEOUT", "90s"),
                ("HAPROXY.REDIRECT", "308,https://new.example.com/base/"),
                ("HAPROXY.ALLOW", "10.0.0.0/8,192.168.1.5,::1"),
                ("HAPROXY.DENY", "10.1.0.0/16"),
                ("HAPROXY.AUTH", &auth),
                ("HAPROXY.RATE_LIMIT", "100"),
                ("HAPROXY.REQUEST.HEADER.X-Team", "blue"),
                ("HAPROXY.RESPONSE.HEADER.Access-Control-Allow-Origin", "*"),
                ("HAPROXY.COMPRESS", "true"),
            ],
            Some("/api/v2"),
        )
        .unwrap();
        assert_eq!(r.strip_depth, Some(2));
        assert_eq!(r.set_host.as_deref(), Some("internal.example:8080"));
        assert_eq!(r.timeout_server_ms, Some(90_000));
        assert_eq!(
            r.redirect,
            Some((308, "https://new.example.com/base".to_string()))
        );
        assert_eq!(r.allow.len(), 3);
        assert_eq!(r.request_headers["x-team"], "blue");
        assert!(r.compress);
    }

    #[test]
    fn refuses_what_is_not_exactly_of_its_form() {
        for (tag, value, path) in [
            ("HAPROXY.PATH.STRIP", "true", None),
            ("HAPROXY.PATH.STRIP", "yes", Some("/a")),
            ("HAPROXY.PATH.PREFIX", "v1", None),
            ("HAPROXY.PATH.PREFIX", "/v1/", None),
            ("HAPROXY.PATH.PREFIX", "/v 1", None),
            ("HAPROXY.BACKEND.HOST", "a b", None),
            ("HAPROXY.BACKEND.HOST", "x:0", None),
            ("HAPROXY.BACKEND.TIMEOUT", "25h", None),
            ("HAPROXY.BACKEND.TIMEOUT", "0", None),
            ("HAPROXY.REDIRECT", "https://x", None),
            ("HAPROXY.REDIRECT", "300,https://x", None),
            ("HAPROXY.REDIRECT", "301,ftp://x", None),
            ("HAPROXY.REDIRECT", "301,https://x/?a=1", None),
            ("HAPROXY.REDIRECT", "301,https://u@x/", None),
            ("HAPROXY.REDIRECT", "301,https://x/\"", None),
            ("HAPROXY.ALLOW", "10.0.0.1/8", None),
            ("HAPROXY.ALLOW", "10.0.0.0/33", None),
            ("HAPROXY.ALLOW", "", None),
            ("HAPROXY.DENY", "10.0.0.0/8 ", None),
            ("HAPROXY.AUTH", "alice:secret", None),
            ("HAPROXY.AUTH", "alice:short:aaaa", None),
            ("HAPROXY.RATE_LIMIT", "0", None),
            ("HAPROXY.RATE_LIMIT", "1e3", None),
            ("HAPROXY.REQUEST.HEADER.Host", "x", None),
            ("HAPROXY.REQUEST.HEADER.X-Forwarded-For", "1.2.3.4", None),
            ("HAPROXY.REQUEST.HEADER.X_Bad", "x", None),
            ("HAPROXY.RESPONSE.HEADER.X-A", "two words", None),
            ("HAPROXY.RESPONSE.HEADER.X-A", "a\"b", None),
            ("HAPROXY.COMPRESS", "1", None),
        ] {
            assert!(
                rules(&[(tag, value)], path).is_err(),
                "{tag}={value:?} accepted"
            );
        }
        let values: BTreeMap<&str, &str> = [("HAPROXY.RATE_LIMIT", "5")].into_iter().collect();
        assert!(
            parse(&values, None, false).is_err(),
            "a rule on a TCP service"
        );
        // Compression is the backend's: no frontend rule.
        let r = rules(&[("HAPROXY.COMPRESS", "true")], None).unwrap();
        assert!(!r.is_empty() && !r.on_frontend());
        let r = rules(&[("HAPROXY.RATE_LIMIT", "5")], None).unwrap();
        assert!(r.on_frontend());
    }

    #[test]
    fn ip_lists_allow_exactly_the_addresses_of_each_list() {
        let a: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let b: Vec<IpNet> = vec![
            "10.1.2.0/24".parse().unwrap(),
            "192.168.0.1/32".parse().unwrap(),
        ];
        let (nets, pairs) = ip_lists(&[("a", &a), ("b", &b)]).unwrap();
        // What HAProxy does: the most specific network holding the
        // address, then the pair.
        let allowed = |be: &str, ip: &str| -> bool {
            let ip: IpAddr = ip.parse().unwrap();
            let best = nets
                .iter()
                .filter(|(n, _)| n.parse::<IpNet>().unwrap().contains(&ip))
                .max_by_key(|(n, _)| n.parse::<IpNet>().unwrap().prefix_len());
            best.is_some_and(|(_, id)| pairs.iter().any(|(k, _)| *k == format!("{be}|{id}")))
        };
        assert!(allowed("a", "10.1.2.3") && allowed("b", "10.1.2.3"));
        assert!(allowed("a", "10.9.9.9") && !allowed("b", "10.9.9.9"));
        assert!(!allowed("a", "192.168.0.1") && allowed("b", "192.168.0.1"));
        assert!(!allowed("a", "172.16.0.1") && !allowed("b", "172.16.0.1"));
    }
}
