//! A private network namespace per test thread, or per bench process.

use std::cell::Cell;

thread_local! {
    static ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// Moves the calling thread into a new, private network namespace and
/// brings its loopback interface up.
///
/// libtest runs every test on its own thread, and a thread's namespace is
/// inherited by every process it spawns (Consul, HAProxy, the supervisor,
/// iptables), so after this call a test owns all of 127.0.0.1's ports and
/// its own iptables tables. Threads the test spawns afterwards inherit the
/// namespace too. Calling it twice on one thread is a no-op.
///
/// Panics (with a hint) if the namespace cannot be created, e.g. when not
/// running as root.
pub fn enter() {
    if let Err(e) = try_enter() {
        panic!("{e}");
    }
}

/// [`enter`] without the panic. A bench calls it first thing in `main`,
/// before any thread or child exists, so that everything it creates shares
/// the namespace and never touches the host's ports and iptables rules.
pub fn try_enter() -> Result<(), String> {
    if entered() {
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        format!(
            "unshare(CLONE_NEWNET) failed: {e}; this needs root (CAP_SYS_ADMIN) to run in \
             its own network namespace"
        )
    })?;
    loopback_up().map_err(|e| format!("cannot bring `lo` up in the new network namespace: {e}"))?;
    ENTERED.with(|e| e.set(true));
    Ok(())
}

/// Whether [`enter`] has been called on this thread.
pub fn entered() -> bool {
    ENTERED.with(|e| e.get())
}

/// Per-namespace TCP settings for a client that opens ~20k connections a
/// second: a wide ephemeral range and TIME_WAIT reuse on loopback. Failures
/// are harmless (the defaults work, just with less headroom).
pub fn tune_for_load() {
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65000");
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
}

/// `ip link set lo up`, done with SIOCGIFFLAGS/SIOCSIFFLAGS on a socket
/// created in the current (new) namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed, correctly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut result = Ok(());
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            result = Err(std::io::Error::last_os_error());
        } else {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr) < 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
        libc::close(fd);
        result
    }
}
