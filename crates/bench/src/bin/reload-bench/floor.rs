//! The `structural-floor` row: the structural rotation made by the bench
//! itself, with the fewest runtime-API commands that make each change on
//! HAProxy 3.4, on one connection, with no supervisor work in between (the
//! supervisor runs idle beside it, as in `baseline`). What HAProxy itself
//! costs for these changes: the floor under `structural`, as `bare` is
//! under the reload rows.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::changes::Changes;

pub(crate) struct Floor {
    conn: UnixStream,
    buf: Vec<u8>,
    hosts_map: String,
    /// Profile (`defaults` name) per (leastconn, health check, sticky),
    /// from the seeds' backends.
    profiles: BTreeMap<(bool, bool, bool), String>,
    /// The hosts map's entries as rendered, `www` and `new-*` apart.
    base_entries: Vec<(String, String)>,
    /// `www`'s backend now (the rendered `www`, then `www-<step>`).
    www: String,
    www_servers: [(String, SocketAddr); 2],
    seed_addr: SocketAddr,
    step: usize,
    /// Backends taken out whose deletion HAProxy refused for now (a
    /// request still attached): tried again at the next change, as the
    /// supervisor tries its parked ones again.
    draining: Vec<(String, Vec<String>)>,
    /// Commands sent, and those HAProxy refused (the first few kept).
    pub(crate) sent: usize,
    pub(crate) refused: Vec<String>,
}

fn field<'a>(line: &'a str, after: &str) -> Option<&'a str> {
    line.split_whitespace().skip_while(|w| *w != after).nth(1)
}

impl Floor {
    /// Reads what the supervisor rendered into `dir` and connects to its
    /// HAProxy's admin socket.
    pub(crate) fn start(dir: &Path, backends: [SocketAddr; 3]) -> Result<Floor, String> {
        let cfg_path = dir.join("etc/haproxy.cfg");
        let cfg = std::fs::read_to_string(&cfg_path)
            .map_err(|e| format!("read {}: {e}", cfg_path.display()))?;
        let hosts_map = cfg
            .split("map(")
            .skip(1)
            .filter_map(|s| s.split(')').next())
            .find(|p| p.contains("/hosts-"))
            .ok_or("no hosts map in the rendered config")?
            .to_string();
        let mut profiles = BTreeMap::new();
        for line in cfg.lines().filter(|l| l.starts_with("backend seed-")) {
            let (Some(name), Some(profile)) = (line.split_whitespace().nth(1), field(line, "from"))
            else {
                continue;
            };
            let seed = name.split(':').next().unwrap_or(name);
            if let Some((_, lc, hc, st)) = crate::changes::SEEDS.iter().find(|s| s.0 == seed) {
                profiles.insert((*lc, *hc, *st), profile.to_string());
            }
        }
        let base_entries = std::fs::read_to_string(&hosts_map)
            .map_err(|e| format!("read {hosts_map}: {e}"))?
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| !k.starts_with("www.") && !k.starts_with("new-"))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        let sock = dir.join("run/admin.sock");
        let stream =
            UnixStream::connect(&sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut f = Floor {
            conn: stream,
            buf: Vec::new(),
            hosts_map,
            profiles,
            base_entries,
            www: "www".into(),
            www_servers: [("www-1".into(), backends[0]), ("www-2".into(), backends[1])],
            seed_addr: backends[2],
            step: 0,
            draining: Vec::new(),
            sent: 0,
            refused: Vec::new(),
        };
        f.cmd("prompt")?;
        Ok(f)
    }

    /// Sends one command (its payload with it) and reads the answer, up
    /// to the prompt (`\n> `).
    fn cmd(&mut self, c: &str) -> Result<String, String> {
        self.conn
            .write_all(format!("{c}\n").as_bytes())
            .map_err(|e| format!("{c}: {e}"))?;
        self.sent += 1;
        let mut chunk = [0u8; 4096];
        let at = loop {
            if let Some(i) = self.buf.windows(3).position(|w| w == b"\n> ") {
                break i;
            }
            let n = self
                .conn
                .read(&mut chunk)
                .map_err(|e| format!("{c}: {e}"))?;
            if n == 0 {
                return Err(format!("{c}: connection closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let answer = String::from_utf8_lossy(&self.buf[..at]).into_owned();
        self.buf.drain(..at + 3);
        // Servers still draining are tried again later, not refusals.
        let refused = ["rror", "Unknown", "not found", "annot", "Can't", "Usage"];
        if refused.iter().any(|w| answer.contains(w))
            && !answer.contains("still has connections")
            && self.refused.len() < 5
        {
            self.refused.push(format!("{c}: {}", answer.trim()));
        }
        Ok(answer)
    }

    fn swap_map(&mut self, changes: &Changes) -> Result<(), String> {
        let prepared = self.cmd(&format!("prepare map {}", self.hosts_map))?;
        let version = prepared
            .split_whitespace()
            .last()
            .ok_or("prepare map: no version")?
            .to_string();
        let mut body = String::new();
        for (k, v) in &self.base_entries {
            body.push_str(&format!("{k} {v}\n"));
        }
        body.push_str(&format!("www.example.com {}\n", self.www));
        if let Some(n) = changes.alt_vhost {
            body.push_str(&format!("alt-{n}.example.com {}\n", self.www));
        }
        if let Some(n) = changes.new_service {
            body.push_str(&format!("new-{n}.example.com new-{n}\n"));
        }
        self.cmd(&format!("add map @{version} {} <<\n{body}", self.hosts_map))?;
        self.cmd(&format!("commit map @{version} {}", self.hosts_map))?;
        Ok(())
    }

    fn add_backend(
        &mut self,
        name: &str,
        key: (bool, bool, bool),
        servers: &[(String, SocketAddr)],
    ) -> Result<(), String> {
        let profile = self
            .profiles
            .get(&key)
            .ok_or_else(|| format!("no seeded profile for {key:?}"))?
            .clone();
        self.cmd(&format!("add backend {name} from {profile}"))?;
        for (s, a) in servers {
            let cookie = if key.2 {
                format!(" cookie {s}")
            } else {
                String::new()
            };
            self.cmd(&format!("add server {name}/{s} {a} check weight 1{cookie}"))?;
            self.cmd(&format!("enable health {name}/{s}"))?;
            self.cmd(&format!("set server {name}/{s} state ready"))?;
        }
        self.cmd(&format!("publish backend {name}"))?;
        Ok(())
    }

    /// Unpublishes, drains and deletes (the static `www` is only taken
    /// out).
    fn remove_backend(&mut self, name: &str, servers: &[String]) -> Result<(), String> {
        self.cmd(&format!("unpublish backend {name}"))?;
        for s in servers {
            self.cmd(&format!("set server {name}/{s} state maint"))?;
        }
        if name != "www" {
            self.draining.push((name.to_string(), servers.to_vec()));
        }
        self.delete_drained()
    }

    /// Deletes the backends taken out whose servers have no request left.
    fn delete_drained(&mut self) -> Result<(), String> {
        let mut still = Vec::new();
        for (name, servers) in std::mem::take(&mut self.draining) {
            let mut left = Vec::new();
            for s in servers {
                if !self
                    .cmd(&format!("del server {name}/{s}"))?
                    .contains("deleted")
                {
                    left.push(s);
                }
            }
            if left.is_empty() {
                self.cmd(&format!("del backend {name}"))?;
            } else {
                still.push((name, left));
            }
        }
        self.draining = still;
        Ok(())
    }

    /// Requests `www`'s backend of now has served (`stot` of its
    /// `BACKEND` row): that the clients' traffic follows the switches.
    pub(crate) fn www_served(&mut self) -> Result<u64, String> {
        let www = self.www.clone();
        let stat = self.cmd(&format!("show stat {www} 2 -1"))?;
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = header
            .iter()
            .position(|h| *h == "stot")
            .ok_or("show stat: no stot column")?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&www.as_str()) && f.get(1) == Some(&"BACKEND"))
            .and_then(|f| f.get(col)?.parse().ok())
            .ok_or_else(|| format!("show stat: no BACKEND row for {www}"))
    }

    /// Makes the change `changes` just advanced to (`kind`).
    pub(crate) fn apply(&mut self, kind: &str, changes: &Changes) -> Result<(), String> {
        self.step += 1;
        let www_names: Vec<String> = self.www_servers.iter().map(|s| s.0.clone()).collect();
        match kind {
            "service-add" => {
                let n = changes.new_service.ok_or("service-add without a service")?;
                let servers = [(format!("new-{n}-1"), self.seed_addr)];
                self.add_backend(&format!("new-{n}"), (false, false, false), &servers)?;
                self.swap_map(changes)
            }
            "service-remove" => {
                // The service was the one of the last round.
                let n = (self.step - 1) / changes.kinds.len().max(1);
                self.swap_map(changes)?;
                self.remove_backend(&format!("new-{n}"), &[format!("new-{n}-1")])
            }
            "balance" | "healthcheck" | "sticky" => {
                let old = std::mem::replace(&mut self.www, format!("www-{}", self.step));
                let servers = self.www_servers.clone();
                let name = self.www.clone();
                self.add_backend(
                    &name,
                    (changes.leastconn, changes.healthcheck, changes.sticky),
                    &servers,
                )?;
                self.swap_map(changes)?;
                self.remove_backend(&old, &www_names)
            }
            "vhost" => self.swap_map(changes),
            other => Err(format!("structural-floor: no commands for {other:?}")),
        }
    }
}
