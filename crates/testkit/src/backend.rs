//! The demo HTTP backend (`crates/demo-backend`) as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::process::{child_wait_timeout, die_with_parent};

/// A running `demo-backend` that answers every request with `<name>\n`
/// (and `/health` with `ok\n`).
pub struct Backend {
    child: Child,
    addr: SocketAddr,
    name: String,
}

impl Backend {
    /// Starts a backend named `name` on 127.0.0.1 with a free port.
    pub fn start(name: &str) -> Backend {
        Backend::start_at(name, "127.0.0.1:0")
    }

    /// Starts a backend named `name` listening on `listen` (e.g. a fixed
    /// port inside a test's network namespace).
    pub fn start_at(name: &str, listen: &str) -> Backend {
        Backend::start_with(name, listen, &[])
    }

    /// [`Backend::start_at`] with more arguments (`--proxy-protocol`).
    pub fn start_with(name: &str, listen: &str, args: &[&str]) -> Backend {
        let mut cmd = Command::new(crate::backend_bin());
        cmd.args(["--listen", listen, "--name", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", crate::backend_bin().display()));
        let stdout = child.stdout.take().expect("backend stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("demo-backend {name} on {listen} did not report its address in 10s");
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match addr {
            Some(addr) => Backend {
                child,
                addr,
                name: name.to_string(),
            },
            None => {
                let status = child_wait_timeout(&mut child, Duration::from_secs(1));
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "demo-backend {name} on {listen} failed to start (first line {line:?}, \
                     status {status:?}; its stderr is above)"
                );
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The address it listens on.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name (the response body without the newline).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Kills it now (SIGKILL) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}
