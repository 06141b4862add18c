//! The supervisor's signal policy, as one table (SPEC §11; tini's table is
//! the model). As PID 1 the kernel gives the supervisor no default action
//! for any signal, and when it is not PID 1 the default of most is to end
//! it: every signal it may receive is caught (through signal-hook) and
//! decided here. SIGCHLD is the reaper's, not in this table.

use nix::sys::signal::Signal;

/// What a signal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop: soft-stop HAProxy and wait (`graceful`), or at once. A second
    /// stop signal while stopping forces.
    Stop { graceful: bool },
    /// Check and reload now.
    Reload,
    /// Pass on to the serving HAProxy, which understands it.
    Forward,
    /// Nothing, but a log line.
    Ignore,
}

/// The table.
pub fn action(sig: Signal) -> Action {
    match sig {
        Signal::SIGTERM | Signal::SIGINT => Action::Stop { graceful: true },
        Signal::SIGQUIT => Action::Stop { graceful: false },
        Signal::SIGHUP | Signal::SIGUSR2 => Action::Reload,
        // HAProxy: SIGUSR1 soft stop, SIGTTOU pause listeners, SIGTTIN resume.
        Signal::SIGUSR1 | Signal::SIGTTOU | Signal::SIGTTIN => Action::Forward,
        _ => Action::Ignore,
    }
}

/// Every signal the supervisor catches: those of the table and the ones a
/// terminal, a shell or a careless `kill` sends, whose default would end or
/// stop a process that is not PID 1.
pub const CAUGHT: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTTOU,
    Signal::SIGTTIN,
    Signal::SIGTSTP,
    Signal::SIGWINCH,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGPWR,
    Signal::SIGURG,
    Signal::SIGCONT,
];

/// Delivers caught signals into the async loop: a thread of signal-hook's
/// iterator sends each to the returned channel.
pub fn listen() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<Signal>> {
    let raw: Vec<i32> = CAUGHT.iter().map(|s| *s as i32).collect();
    let mut signals = signal_hook::iterator::Signals::new(&raw)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if let Ok(sig) = Signal::try_from(s) {
                    if tx.send(sig).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        assert_eq!(action(Signal::SIGTERM), Action::Stop { graceful: true });
        assert_eq!(action(Signal::SIGINT), Action::Stop { graceful: true });
        assert_eq!(action(Signal::SIGQUIT), Action::Stop { graceful: false });
        assert_eq!(action(Signal::SIGHUP), Action::Reload);
        assert_eq!(action(Signal::SIGUSR2), Action::Reload);
        assert_eq!(action(Signal::SIGTTOU), Action::Forward);
        assert_eq!(action(Signal::SIGUSR1), Action::Forward);
        assert_eq!(action(Signal::SIGWINCH), Action::Ignore);
        assert_eq!(action(Signal::SIGPWR), Action::Ignore);
        // Every caught signal has a row; SIGCHLD is the reaper's.
        assert!(!CAUGHT.contains(&Signal::SIGCHLD));
        assert!(!CAUGHT.contains(&Signal::SIGKILL));
    }
}
