//! The syntax of values that reach haproxy.cfg verbatim: names, host
//! names, paths, syslog addresses. Pure predicates, shared by the settings
//! (environment variables) and the model (catalog tags), so neither needs
//! the other for them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const MAX_NAME: usize = 128;
pub const MAX_PATH: usize = 256;

/// A service or backend name HAProxy and map files can carry verbatim.
pub fn is_service_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// An instance ID usable as an HAProxy server name.
pub fn is_server_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
}

/// A DNS host name (RFC 1123 labels), lowercased; `None` if it is not one.
pub fn hostname(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return None;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    for label in s.split('.') {
        let b = label.as_bytes();
        if b.is_empty()
            || b.len() > 63
            || b[0] == b'-'
            || b[b.len() - 1] == b'-'
            || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// A URL path prefix safe for the config and map files: starts with `/`, no
/// whitespace, quotes, `#`, backslash or control characters.
pub fn is_path(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PATH
        && b[0] == b'/'
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"/._~%!$&*+,;=:@-".contains(c))
}

/// `host[:port]`, `ip:port`, `[ipv6]:port` or an absolute unix socket path.
/// An IPv6 address without a port is bracketed: HAProxy reads the part
/// after the last colon of `::1` as a port (and refuses the address).
pub fn is_syslog_address(s: &str) -> bool {
    if let Some(p) = s.strip_prefix('/') {
        return !p.is_empty() && is_path(s);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (h, Some(p)),
        _ => (s, None),
    };
    if port.is_none() && host.contains(':') && !host.starts_with('[') {
        return false;
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u32>(), Ok(1..=65535)) {
            return false;
        }
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<Ipv4Addr>().is_ok() || host.parse::<Ipv6Addr>().is_ok() || hostname(host).is_some()
}

/// A decimal integer without sign, leading zeros or spaces, in `min..=max`.
pub fn strict_int(s: &str, min: u32, max: u32) -> Option<u32> {
    if s.is_empty()
        || s.len() > 10
        || !s.bytes().all(|b| b.is_ascii_digit())
        || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse::<u32>().ok().filter(|n| (min..=max).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `haproxy -c` (2.6) takes them in `log <address> local0`.
    #[test]
    fn syslog_addresses_are_those_haproxy_reads() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:514",
            "localhost",
            "localhost:514",
            "[::1]",
            "[::1]:514",
            "fd00::1:514",
            "[fd00::1]:514",
            "/dev/log",
        ] {
            assert!(is_syslog_address(ok), "{ok:?}");
        }
        for bad in [
            "::1",
            "fd00::1",
            "",
            "/",
            "host:0",
            "host:65536",
            "a b",
            "127.0.0.1:514 local0",
        ] {
            assert!(!is_syslog_address(bad), "{bad:?}");
        }
    }
}
