//! Listening sockets held by the supervisor (`HAPROXY_RELOAD_STRATEGY=inherit`).
//!
//! The supervisor binds every frontend port itself and each HAProxy
//! generation inherits the sockets (`bind fd@<n>`), as GitHub's multibinder
//! and systemd socket activation do. HAProxy never binds a port, so while
//! no generation accepts (a crash, a SIGKILL, a failed start, the gap of a
//! reload) the kernel still completes handshakes into the backlog and the
//! next generation takes them: nothing is refused.
//!
//! A round, per render:
//! 1. [`Listeners::binds`]: every port the render needs gets a socket,
//!    bound but not listening (a port taken by another process is left to
//!    HAProxy: its bind fails as it always did and the failure rules apply).
//! 2. [`Listeners::settle`] with the rendered text: the sockets it names
//!    listen; those bound in step 1 that it does not name (a custom
//!    template that binds by itself) are closed before HAProxy binds.
//! 3. [`Listeners::release`] once a generation serves: sockets the serving
//!    config does not name are closed (a removed TCP service's port).
//!
//! A socket that never listened receives no connection, so closing one in
//! step 2 loses none. The descriptors are close-on-exec here; the HAProxy
//! children that need them get exactly the ones their config names
//! ([`Listeners::fds_for`]), with close-on-exec cleared after the fork.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// What a config line binds for a port: `fd@<n>` for a held socket, else
/// the address HAProxy binds itself (`*:8080`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binds {
    held: BTreeMap<u16, RawFd>,
}

impl Binds {
    /// The bind address for `port` on `ip` (`*` is every IPv4 address, as
    /// HAProxy reads it).
    pub fn address(&self, ip: &str, port: u16) -> String {
        match self.held.get(&port) {
            Some(fd) => format!("fd@{fd}"),
            None => format!("{ip}:{port}"),
        }
    }

    /// The held descriptor of `port`, if any.
    pub fn fd(&self, port: u16) -> Option<RawFd> {
        self.held.get(&port).copied()
    }

    /// Reads the `listeners` file a running supervisor writes (one
    /// `<port> <fd>` line each), for `plan`: it renders the binds the
    /// supervisor would. A missing or unreadable file is no held socket.
    pub fn read(path: &Path) -> Binds {
        let held = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (p, f) = l.split_once(' ')?;
                Some((p.trim().parse().ok()?, f.trim().parse().ok()?))
            })
            .collect();
        Binds { held }
    }
}

/// A socket the supervisor holds.
#[derive(Debug)]
struct Held {
    ip: IpAddr,
    fd: OwnedFd,
    listening: bool,
}

/// The sockets the supervisor holds, by port.
#[derive(Debug, Default)]
pub struct Listeners {
    held: BTreeMap<u16, Held>,
    backlog: i32,
}

/// `*` or an IP address as the template writes it (`[::1]` for IPv6).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if s == "*" || s.is_empty() {
        return Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    s.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The `fd@<n>` descriptors `config`'s bind lines name.
pub fn named_fds(config: &str) -> BTreeSet<RawFd> {
    bind_addresses(config)
        .filter_map(|a| a.strip_prefix("fd@")?.parse().ok())
        .collect()
}

impl Listeners {
    /// `backlog`: the accept queue of each socket (HAProxy sets its own
    /// when it starts listening on an inherited socket).
    pub fn new(backlog: u32) -> Listeners {
        Listeners {
            held: BTreeMap::new(),
            backlog: backlog.clamp(1, i32::MAX as u32) as i32,
        }
    }

    /// Step 1 of a round: sockets for `wanted` (port → address), bound
    /// and not listening where new. A port already held on another address
    /// is bound anew; one that cannot be bound is left out (logged by the
    /// caller from the returned errors) and HAProxy binds it itself.
    pub fn binds(&mut self, wanted: &BTreeMap<u16, IpAddr>) -> (Binds, Vec<(u16, io::Error)>) {
        let mut errors = Vec::new();
        for (&port, &ip) in wanted {
            if let Some(h) = self.held.get(&port) {
                if h.ip == ip {
                    continue;
                }
                if h.listening {
                    // A generation may still use it; the new address gets
                    // its socket once the old one is released.
                    continue;
                }
                self.held.remove(&port);
            }
            match bind(SocketAddr::new(ip, port)) {
                Ok(fd) => {
                    self.held.insert(
                        port,
                        Held {
                            ip,
                            fd,
                            listening: false,
                        },
                    );
                }
                Err(e) => errors.push((port, e)),
            }
        }
        let held = self
            .held
            .iter()
            .filter(|(p, h)| wanted.get(p) == Some(&h.ip))
            .map(|(p, h)| (*p, h.fd.as_raw_fd()))
            .collect();
        (Binds { held }, errors)
    }

    /// Step 2: the sockets `config` names listen; those that never did and
    /// that it does not name are closed.
    pub fn settle(&mut self, config: &str) -> io::Result<()> {
        let named = named_fds(config);
        self.held
            .retain(|_, h| h.listening || named.contains(&h.fd.as_raw_fd()));
        for h in self.held.values_mut() {
            if !h.listening && named.contains(&h.fd.as_raw_fd()) {
                // SAFETY: a valid socket descriptor we own.
                if unsafe { libc::listen(h.fd.as_raw_fd(), self.backlog) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                h.listening = true;
            }
        }
        Ok(())
    }

    /// Step 3: closes the sockets `serving` (the config of the generation
    /// that serves) does not name. Returns the ports released.
    pub fn release(&mut self, serving: &str) -> Vec<u16> {
        let named = named_fds(serving);
        let gone: Vec<u16> = self
            .held
            .iter()
            .filter(|(_, h)| !named.contains(&h.fd.as_raw_fd()))
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.held.remove(p);
        }
        gone
    }

    /// The held descriptors `config` names: what a child started on it
    /// inherits.
    pub fn fds_for(&self, config: &str) -> Vec<RawFd> {
        let named = named_fds(config);
        self.held
            .values()
            .map(|h| h.fd.as_raw_fd())
            .filter(|fd| named.contains(fd))
            .collect()
    }

    /// Whether every TCP port `config` binds is a held socket (so a new
    /// generation needs nothing from the old one).
    pub fn covers(&self, config: &str) -> bool {
        let named = named_fds(config);
        !named.is_empty()
            && bind_ports(config).is_empty()
            && named
                .iter()
                .all(|fd| self.held.values().any(|h| h.fd.as_raw_fd() == *fd))
    }

    /// The ports held, for `/status` and the `listeners` file.
    pub fn ports(&self) -> Vec<u16> {
        self.held.keys().copied().collect()
    }

    /// The `listeners` file's text: `<port> <fd>` a line.
    pub fn file_text(&self) -> String {
        self.held
            .iter()
            .map(|(p, h)| format!("{p} {}\n", h.fd.as_raw_fd()))
            .collect()
    }
}

/// A TCP socket bound to `addr`, not listening, close-on-exec, with
/// SO_REUSEADDR (a restart while connections linger in TIME_WAIT) and
/// SO_REUSEPORT (as HAProxy sets on its own: a supervisor restarted under
/// HAProxy processes it adopts binds beside their sockets).
fn bind(addr: SocketAddr) -> io::Result<OwnedFd> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain system calls on a descriptor we own from here on.
    unsafe {
        let fd = libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        let (storage, len) = sockaddr(addr);
        if libc::bind(
            fd.as_raw_fd(),
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the family's struct
    // is written into it below, within its size.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// For a child's `pre_exec`: clears close-on-exec on `fds`, so the program
/// it runs inherits them at the same numbers. Async-signal-safe (fcntl only).
pub fn inherit_in_child(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl on a descriptor of this (forked) process.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Every address of `config`'s `bind` lines (`bind *:8080`, `bind
/// 127.0.0.1:9000,[::]:9000 ...`, `bind fd@7`), in order.
pub fn bind_addresses(config: &str) -> impl Iterator<Item = &str> {
    config.lines().flat_map(|line| {
        let mut words = line.split_whitespace();
        let addrs = match words.next() {
            Some("bind") => words.next().unwrap_or(""),
            _ => "",
        };
        addrs.split(',').filter(|a| !a.is_empty())
    })
}

/// The ports a config binds, from its `bind` lines. Unix sockets, ranges
/// and inherited descriptors (`fd@<n>`) are ignored.
pub fn bind_ports(config: &str) -> BTreeSet<u16> {
    bind_addresses(config)
        .filter_map(|a| a.rsplit_once(':')?.1.parse::<u16>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bind_ports() {
        let cfg = "frontend a\n    bind *:8080\n  bind 127.0.0.1:9000,[::]:9001 ssl\n    bind /run/x.sock\n# bind *:1\nlisten s\n    bind :4444\n";
        assert_eq!(
            bind_ports(cfg).into_iter().collect::<Vec<_>>(),
            [4444, 8080, 9000, 9001]
        );
    }

    fn want(ports: &[u16]) -> BTreeMap<u16, IpAddr> {
        ports
            .iter()
            .map(|p| (*p, IpAddr::V4(Ipv4Addr::LOCALHOST)))
            .collect()
    }

    #[test]
    fn named_fds_reads_bind_lines_only() {
        let cfg = "frontend a\n    bind fd@7 ssl crt x\n    bind *:80\n    bind fd@9,fd@10\n# bind fd@11\n    server s fd@12\n";
        assert_eq!(
            named_fds(cfg).into_iter().collect::<Vec<_>>(),
            vec![7, 9, 10]
        );
    }

    #[test]
    fn a_round_binds_listens_on_what_the_config_names_and_releases_the_rest() {
        // Port 0: the kernel picks a free one each time.
        let mut l = Listeners::new(128);
        let (b, errs) = l.binds(&want(&[0]));
        assert!(errs.is_empty());
        let fd = b.fd(0).unwrap();
        assert_eq!(b.address("*", 0), format!("fd@{fd}"));
        assert_eq!(b.address("*", 80), "*:80");
        // A config that does not name it: closed before HAProxy binds.
        l.settle("bind *:80\n").unwrap();
        assert!(l.ports().is_empty());
        let (b, _) = l.binds(&want(&[0]));
        let fd = b.fd(0).unwrap();
        let cfg = format!("    bind fd@{fd}\n");
        l.settle(&cfg).unwrap();
        assert_eq!(l.fds_for(&cfg), vec![fd]);
        assert!(l.covers(&cfg));
        assert!(!l.covers(&format!("{cfg}    bind *:81\n")));
        assert_eq!(l.file_text(), format!("0 {fd}\n"));
        // Held while the serving config names it, released after.
        assert!(l.release(&cfg).is_empty());
        assert_eq!(l.release("bind *:80\n"), vec![0]);
        assert!(l.ports().is_empty());
    }

    #[test]
    fn binds_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("listeners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("listeners");
        std::fs::write(&p, "8080 7\n443 9\nbad line\n").unwrap();
        let b = Binds::read(&p);
        assert_eq!(b.address("*", 8080), "fd@7");
        assert_eq!(b.address("*", 443), "fd@9");
        assert_eq!(b.address("127.0.0.1", 4444), "127.0.0.1:4444");
        assert_eq!(Binds::read(&dir.join("none")), Binds::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_ip_reads_the_template_forms() {
        assert_eq!(parse_ip("*"), Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(parse_ip("127.0.0.1"), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(parse_ip("[::1]"), "::1".parse().ok());
        assert_eq!(parse_ip("example.com"), None);
    }
}
