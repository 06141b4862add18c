//! An async client for HAProxy's runtime API: the admin stats socket
//! (`stats socket <path> level admin`), a unix socket.
//!
//! A plain client opens one connection per call, writes one command line
//! (plus a payload for `add map`), reads the answer until HAProxy closes the
//! connection (non-interactive mode). A [session](RuntimeApi::session) runs
//! all its calls on one connection in interactive mode (`prompt`), which is
//! what one live change uses: about 15 commands, one connect instead of 15.
//! Either way the answer is checked against what success looks
//! like on HAProxy 2.6.12. Anything else is [`RuntimeError::Refused`] with
//! HAProxy's text. Arguments are checked before anything is sent: a token
//! with whitespace, `;`, `\` or a control character could split or change the
//! command line, so it is refused locally.
//!
//! # What 2.6.12 accepts
//!
//! Found by trying each command against `haproxy -db` 2.6.12 (Debian
//! 2.6.12-1+deb12u4); `tests/runtime_api.rs` checks the ones we rely on.
//!
//! - **`add server` keywords**: `check`, `weight N`, `maxconn N`,
//!   `inter 10s`, `rise 2`, `fall 1` are accepted. `cookie X`,
//!   `init-addr libc,none` and `resolvers <r>` are refused ("'cookie' option
//!   is not accepted for dynamic server"). `enabled` and `disabled` are
//!   accepted by HAProxy but must never be passed: `enabled` shows the
//!   server up (op state 2) but it gets no traffic; while it is then in
//!   maintenance the whole roundrobin backend answers 503 ("No server is
//!   available") although other servers are ready, and once it is deleted
//!   the backend stays broken (a ready server got no traffic when the other
//!   one was set to weight 0) until a reload. [`RuntimeApi::add_server`]
//!   refuses both. A dynamic server does not inherit `defaults`'
//!   `pool-purge-delay`/`pool-max-conn`: `show servers conn` shows
//!   `idle_lim 0`, so it keeps no idle connections.
//! - **Host names**: `add server be/s localhost:80` answers "New server
//!   registered." but nothing ever resolves the name (no `resolvers`, no
//!   `init-addr` for dynamic servers): the server has no address
//!   (`srv_addr` `-`), requests get 503, and `set server addr` refuses it
//!   ("Update for the current server address family is only supported
//!   through configuration file"). [`RuntimeApi::add_server`] takes IP
//!   addresses only (IPv6 as `[::1]:80`, which 2.6 accepts).
//! - **`balance` and dynamic servers**: roundrobin, leastconn, first, random,
//!   and source/uri with `hash-type consistent` accept them. static-rr,
//!   source and uri (default map-based hashing) refuse: "Backend must use a
//!   dynamic load balancing to support dynamic servers."
//! - **Removing a server that had traffic**: `del server` answers "Only
//!   servers in maintenance mode can be deleted." unless the server is in
//!   maintenance (drain is not enough), and "Server still has connections
//!   attached to it, cannot remove it." while a request is in flight (entering
//!   maintenance does not end it). The sequence that works: `set server
//!   be/s state maint` → `shutdown sessions server be/s` → poll until `show
//!   stat` has `scur`, `qcur` and `idle_conn_cur` at 0 (immediate here) →
//!   `del server be/s` ("Server deleted."). Entering maintenance closes the
//!   server's idle connections, and a client's keep-alive connection whose
//!   last request went to the server does not block the deletion. A server
//!   from the config file can be deleted the same way.
//! - **`set server addr`** works for a server configured with an IP (and one
//!   configured with a host name resolved at start-up): "IP changed from
//!   'a' to 'b', port changed from 'p' to 'q' by 'stats socket command'", or
//!   "no need to change the addr" / "no need to change the port" for the
//!   parts that did not change. It can change IPv4 to IPv6. Beware: an
//!   invalid `port` after a valid address changes the address and then fails.
//! - **Other answers**: `set server ... weight|state`, `enable health`,
//!   `shutdown sessions server` and `commit map` answer nothing (an empty
//!   line) on success; weights go from 0 to 256, and a static-rr backend
//!   refuses any weight change but to 0 (or `0%`/`100%`). `enable server` works but is marked deprecated in
//!   favour of `set server ... state ready`, which is what this client uses.
//! - **Maps**: `prepare map <file>` answers "New version created: N".
//!   `add map @N <file> <<` takes a payload of `key value` lines (no `+`: that
//!   is the interactive prompt in the docs), ended by an empty line; it works
//!   in non-interactive mode. The command line plus payload must fit in
//!   `tune.bufsize`: 16 284 bytes went through, 19 634 bytes got no answer
//!   at all and added nothing (the same as a payload without its final empty
//!   line). Success is a lone empty line. The payload splits each line at
//!   the first blank; the value runs to the end of the line. `show map
//!   <file>` lists `0x<id> key value` lines in insertion order.
//! - **The socket**: several lines sent on one connection run as several
//!   commands, and a command without a final newline is never run.
//! - **Interactive mode** (`prompt`, 2.6 and 3.4 alike): each answer is the
//!   non-interactive answer followed by the prompt `> `, so an empty answer
//!   reads `\n> `. While a payload (`<<`) is read, 2.6 prints `+ ` for each
//!   line (3.4 prints nothing); the client drops those. The connection closes
//!   after `stats timeout` (10 s by default) of silence, and a reload does not
//!   move it to the new process: a session lives for one change only.
//!
//! # What 3.4.7 adds
//!
//! Backends at run time (Debian 3.4.7-1; the commands and answers are in
//! docs/reloads.md): `add backend`, `publish`/`unpublish backend` and `del
//! backend` need no `experimental-mode on` (management.txt still says
//! they do). `add backend` from a profile whose balance takes no dynamic
//! server succeeds with a longer answer (`backend_registered`); `del
//! backend` prints the thread's pending notices before "Backend deleted."
//! (`backend_deleted`). `add server` with `cookie` is accepted (since
//! 3.0); static balances answer "Backend does not support dynamic servers
//! : backend 'b' uses a non dynamic load balancing method.".

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest `add map` request (command line, payload and final empty line)
/// sent at once; HAProxy's limit is `tune.bufsize` (16 KB by default).
const MAP_CHUNK_BYTES: usize = 8 * 1024;

/// Why a runtime API call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The socket could not be connected (missing, refused, permissions).
    #[error("cannot connect to the HAProxy runtime API at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// Writing the command or reading the answer failed.
    #[error("runtime API `{command}`: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
    /// No complete answer within the client's timeout.
    #[error("runtime API `{command}`: no complete answer within {after:?}")]
    Timeout { command: String, after: Duration },
    /// HAProxy answered something other than the documented success answer,
    /// or the arguments were refused before sending (then `answer` says so).
    #[error("runtime API `{command}` refused: {answer}")]
    Refused { command: String, answer: String },
    /// `del server` refused because the server is not in maintenance or
    /// still has sessions, queued requests or idle connections: retry after
    /// `set server ... state maint` and [`RuntimeApi::shutdown_sessions`].
    #[error("cannot delete server {server} yet: {answer}")]
    Busy { server: String, answer: String },
}

/// A server's administrative state, as set by `set server ... state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In rotation.
    Ready,
    /// Takes no new requests except persistent ones; keeps its sessions.
    Drain,
    /// Out of rotation; existing sessions go on until they end or are shut.
    Maint,
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        })
    }
}

/// The answer of `show servers state`: the format version line, the column
/// header line and one row per server, each with its raw line, so the whole
/// can be written back as a `server-state-file` ([`ServersState::to_file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServersState {
    /// The first line, the format version (`1`).
    pub version: String,
    /// The column header line, `# be_id be_name srv_id ...`.
    pub header: String,
    pub rows: Vec<ServerStateRow>,
}

impl ServersState {
    /// The row of `backend/server`, if listed.
    pub fn server(&self, backend: &str, server: &str) -> Option<&ServerStateRow> {
        self.rows
            .iter()
            .find(|r| r.backend == backend && r.server == server)
    }

    /// The column names of the header, in order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.header
            .strip_prefix("# ")
            .unwrap_or_default()
            .split_whitespace()
    }

    /// The text of a `server-state-file`: version, header, raw rows.
    pub fn to_file(&self) -> String {
        let mut s = format!("{}\n{}\n", self.version, self.header);
        for row in &self.rows {
            s.push_str(&row.raw);
            s.push('\n');
        }
        s
    }
}

/// One server of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStateRow {
    pub backend_id: u32,
    pub backend: String,
    pub server_id: u32,
    pub server: String,
    /// `srv_addr`; None when the server has no address (`-`).
    pub addr: Option<String>,
    pub port: u16,
    /// `srv_op_state`: 0 stopped (down), 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state`, a bit set: 0x01 forced maintenance, 0x02
    /// inherited maintenance, 0x04 maintenance from the config, 0x08 forced
    /// drain, 0x10 inherited drain, 0x20 maintenance after a failed
    /// resolution.
    pub admin_state: u32,
    /// `srv_uweight`, the current user weight.
    pub weight: u32,
    /// `srv_iweight`, the weight it started with.
    pub initial_weight: u32,
    /// `srv_fqdn`; None when `-`.
    pub fqdn: Option<String>,
    /// The line as HAProxy printed it.
    pub raw: String,
}

impl ServerStateRow {
    /// In maintenance, the way `del server` checks it (forced, inherited or
    /// resolution maintenance).
    pub fn in_maintenance(&self) -> bool {
        self.admin_state & 0x23 != 0
    }

    /// Draining (forced or inherited).
    pub fn draining(&self) -> bool {
        self.admin_state & 0x18 != 0
    }

    /// Operationally up (starting, running or stopping).
    pub fn is_up(&self) -> bool {
        self.op_state != 0
    }
}

/// A client of one HAProxy admin socket. Cheap to clone. A plain client
/// holds no connection between calls; a [session](RuntimeApi::session)
/// holds one (its clones share it) until it is dropped.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    socket: PathBuf,
    timeout: Duration,
    /// The interactive connection of a session (connected on first use,
    /// dropped after any error so the next call starts clean).
    session: Option<Arc<tokio::sync::Mutex<Option<UnixStream>>>>,
}

/// The interactive prompt that ends every answer of a session.
const PROMPT: &[u8] = b"\n> ";

impl RuntimeApi {
    /// A client for the socket at `socket`; `timeout` bounds each command
    /// (connect, write, read to the end).
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> RuntimeApi {
        RuntimeApi {
            socket: socket.into(),
            timeout,
            session: None,
        }
    }

    /// A client for the same socket whose calls all run on one connection
    /// in interactive mode, opened by the first call and closed when the
    /// last clone is dropped. Use it for one batch of commands (one live
    /// change): it stays with the process it connected to, so a reload in
    /// between would leave it talking to the old one. A failed call closes
    /// the connection; the next call opens a new one.
    pub fn session(&self) -> RuntimeApi {
        RuntimeApi {
            socket: self.socket.clone(),
            timeout: self.timeout,
            session: Some(Arc::new(tokio::sync::Mutex::new(None))),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Runs one command on its own connection (non-interactive mode: writes
    /// `cmd\n`, reads until HAProxy closes), the whole exchange bounded by the
    /// timeout, and returns the raw answer. `cmd` must be one line (a newline
    /// would run a second command): otherwise it is refused unsent. Answers
    /// that mean the CLI itself rejected the command ("Unknown command",
    /// "Permission denied") are [`RuntimeError::Refused`]; checking any other
    /// answer is the caller's job.
    pub async fn command(&self, cmd: &str) -> Result<String, RuntimeError> {
        if cmd.contains(['\n', '\r']) {
            return Err(refused(cmd, "not sent: the command contains a newline"));
        }
        let answer = self.exchange(cmd, format!("{cmd}\n").as_bytes()).await?;
        let text = answer.trim();
        if text.starts_with("Unknown command") || text.starts_with("Permission denied") {
            return Err(refused(cmd, text));
        }
        Ok(answer)
    }

    /// Adds server `backend/name` at `ip:port` with `keywords` (tokens such
    /// as `check`, `weight`, `10`), then `enable health` if `keywords`
    /// contain `check`, then `set server ... state ready` (an added server
    /// starts in maintenance). `ip` must be an IP address (2.6 never
    /// resolves a host name for a dynamic server). Refused unsent: a token
    /// with whitespace, `;`, `\` or a control character, and `enabled` or
    /// `disabled`. If a later step fails the server stays, in maintenance.
    pub async fn add_server(
        &self,
        backend: &str,
        name: &str,
        ip: &str,
        port: u16,
        keywords: &[String],
    ) -> Result<(), RuntimeError> {
        let srv = server_ref(backend, name);
        let addr = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => format!("{v4}:{port}"),
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            Err(_) => {
                let cmd = format!("add server {srv} {ip}:{port}");
                return Err(refused(&cmd, "not sent: the address is not an IP address"));
            }
        };
        let mut cmd = format!("add server {srv} {addr}");
        for kw in keywords {
            cmd.push(' ');
            cmd.push_str(kw);
        }
        check_tokens(&cmd, &[backend, name])?;
        for kw in keywords {
            check_token(&cmd, "keyword", kw)?;
            if kw == "enabled" || kw == "disabled" {
                return Err(refused(
                    &cmd,
                    &format!("not sent: keyword `{kw}` is not allowed (the server is enabled after checks are)"),
                ));
            }
        }
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, |a| a == "New server registered.")?;
        if keywords.iter().any(|k| k == "check") {
            self.expect_empty(&format!("enable health {srv}")).await?;
        }
        self.set_state(backend, name, AdminState::Ready).await
    }

    /// `set server backend/server weight <weight>` (0 to 256).
    pub async fn set_weight(
        &self,
        backend: &str,
        server: &str,
        weight: u32,
    ) -> Result<(), RuntimeError> {
        let cmd = format!("set server {} weight {weight}", server_ref(backend, server));
        check_tokens(&cmd, &[backend, server])?;
        self.expect_empty(&cmd).await
    }

    /// `set maxconn server backend/server <maxconn>` (0: no limit).
    pub async fn set_maxconn(
        &self,
        backend: &str,
        server: &str,
        maxconn: u32,
    ) -> Result<(), RuntimeError> {
        let cmd = format!(
            "set maxconn server {} {maxconn}",
            server_ref(backend, server)
        );
        check_tokens(&cmd, &[backend, server])?;
        self.expect_empty(&cmd).await
    }

    /// `set server backend/server addr <ip> port <port>`. Only servers that
    /// currently have an IP address can be moved.
    pub async fn set_addr(
        &self,
        backend: &str,
        server: &str,
        ip: &str,
        port: u16,
    ) -> Result<(), RuntimeError> {
        let cmd = format!(
            "set server {} addr {ip} port {port}",
            server_ref(backend, server)
        );
        check_tokens(&cmd, &[backend, server])?;
        if ip.parse::<IpAddr>().is_err() {
            return Err(refused(&cmd, "not sent: the address is not an IP address"));
        }
        let answer = self.command(&cmd).await?;
        // 2.6 says what changed and what did not; 3.0 only what changed,
        // or "nothing changed".
        expect(&cmd, &answer, |a| {
            let v26 = (a.starts_with("IP changed from ")
                || a.starts_with("no need to change the addr"))
                && (a.contains(", port changed from ")
                    || a.contains(", no need to change the port"))
                && a.ends_with(" by 'stats socket command'");
            let v30 = a == "nothing changed"
                || ((a.starts_with("IP changed from ") || a.starts_with("port changed from "))
                    && a.ends_with(" by 'stats socket command'"));
            v26 || v30
        })
    }

    /// `set server backend/server state ready|drain|maint`.
    pub async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), RuntimeError> {
        let cmd = format!("set server {} state {state}", server_ref(backend, server));
        check_tokens(&cmd, &[backend, server])?;
        self.expect_empty(&cmd).await
    }

    /// `add backend <name> from <profile>` (HAProxy 3.4): a backend with
    /// every setting of the named `defaults` section, unpublished.
    pub async fn add_backend(&self, name: &str, profile: &str) -> Result<(), RuntimeError> {
        let cmd = format!("add backend {name} from {profile}");
        check_tokens(&cmd, &[name, profile])?;
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, backend_registered)
    }

    /// `publish backend <name>`: eligible for traffic.
    pub async fn publish_backend(&self, name: &str) -> Result<(), RuntimeError> {
        let cmd = format!("publish backend {name}");
        check_tokens(&cmd, &[name])?;
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, |t| t == "Backend published.")
    }

    /// `unpublish backend <name>`: no new traffic; streams in it go on.
    pub async fn unpublish_backend(&self, name: &str) -> Result<(), RuntimeError> {
        let cmd = format!("unpublish backend {name}");
        check_tokens(&cmd, &[name])?;
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, |t| t == "Backend unpublished.")
    }

    /// `del backend <name>`. HAProxy refuses while the backend is
    /// published, has servers or streams, has a stick-table, or is named
    /// by a rule (`default_backend`, `use_backend` with a fixed name).
    pub async fn del_backend(&self, name: &str) -> Result<(), RuntimeError> {
        let cmd = format!("del backend {name}");
        check_tokens(&cmd, &[name])?;
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, backend_deleted)
    }

    /// `shutdown sessions server backend/server`: ends every session on the
    /// server now (their clients see an error or a closed connection).
    pub async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<(), RuntimeError> {
        let cmd = format!("shutdown sessions server {}", server_ref(backend, server));
        check_tokens(&cmd, &[backend, server])?;
        self.expect_empty(&cmd).await
    }

    /// `del server backend/server`. [`RuntimeError::Busy`] when HAProxy
    /// says the server is not in maintenance or still has connections: put
    /// it in maintenance, [`shutdown_sessions`](Self::shutdown_sessions) (or
    /// wait), poll [`server_connections`](Self::server_connections) until 0,
    /// then retry.
    pub async fn del_server(&self, backend: &str, server: &str) -> Result<(), RuntimeError> {
        let srv = server_ref(backend, server);
        let cmd = format!("del server {srv}");
        check_tokens(&cmd, &[backend, server])?;
        let answer = self.command(&cmd).await?;
        let text = answer.trim();
        if text == "Server deleted." {
            Ok(())
        } else if text.starts_with("Server still has connections attached")
            || text.starts_with("Only servers in maintenance mode can be deleted")
        {
            Err(RuntimeError::Busy {
                server: srv,
                answer: text.to_string(),
            })
        } else {
            Err(refused(&cmd, text))
        }
    }

    /// `show servers state [backend]`, parsed. Columns are found by the
    /// header's names, so rows from other versions with more columns parse
    /// too; each row keeps its raw line.
    pub async fn servers_state(&self, backend: Option<&str>) -> Result<ServersState, RuntimeError> {
        let cmd = match backend {
            Some(be) => {
                let cmd = format!("show servers state {be}");
                check_tokens(&cmd, &[be])?;
                cmd
            }
            None => "show servers state".to_string(),
        };
        let answer = self.command(&cmd).await?;
        parse_servers_state(&answer).ok_or_else(|| refused(&cmd, answer.trim()))
    }

    /// What keeps `del server` from succeeding, counted from `show stat`:
    /// the server's current sessions (`scur`) plus queued requests (`qcur`)
    /// plus idle connections (`idle_conn_cur`). 0 means it can be deleted
    /// once in maintenance.
    pub async fn server_connections(
        &self,
        backend: &str,
        server: &str,
    ) -> Result<u64, RuntimeError> {
        let cmd = format!("show stat {backend} 4 -1");
        check_tokens(&cmd, &[backend, server])?;
        let answer = self.command(&cmd).await?;
        parse_stat_connections(&answer, backend, server).ok_or_else(|| {
            let text = answer.trim();
            if text.starts_with("# ") {
                refused(&cmd, &format!("no row for server {backend}/{server}"))
            } else {
                refused(&cmd, text)
            }
        })
    }

    /// Replaces the whole content of map `map` (the file path as HAProxy
    /// loaded it) atomically: `prepare map` → `add map @N` with payloads of
    /// `key value` lines, each request under 8 KB → `commit map @N`. Entries
    /// keep their order. Keys and values must be non-empty, without
    /// whitespace or control characters, else nothing is sent. On a failure
    /// after `prepare` the new version is cleared (best effort) and the map
    /// in use is unchanged.
    pub async fn replace_map(
        &self,
        map: &str,
        entries: &[(String, String)],
    ) -> Result<(), RuntimeError> {
        let prepare = format!("prepare map {map}");
        check_tokens(&prepare, &[map])?;
        // The add command's line for the longest version number, so the
        // chunks planned here cannot grow past the limit later.
        let head_len = format!("add map @{} {map} <<\n", u32::MAX).len();
        let mut lines = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            for (what, s) in [("key", key), ("value", value)] {
                if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(refused(
                        &prepare,
                        &format!("not sent: map {what} {s:?} is empty or contains whitespace or a control character"),
                    ));
                }
            }
            let line = format!("{key} {value}\n");
            if head_len + line.len() + 1 > MAP_CHUNK_BYTES {
                return Err(refused(
                    &prepare,
                    &format!("not sent: map entry {key:?} is too long for one request"),
                ));
            }
            lines.push(line);
        }

        let answer = self.command(&prepare).await?;
        let version = answer
            .trim()
            .strip_prefix("New version created: ")
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| refused(&prepare, answer.trim()))?;
        let head = format!("add map @{version} {map} <<\n");
        let result = async {
            let mut chunk = head.clone();
            let mut count = 0;
            for line in &lines {
                if chunk.len() + line.len() + 1 > MAP_CHUNK_BYTES {
                    self.add_map_chunk(&head, chunk, count).await?;
                    chunk = head.clone();
                    count = 0;
                }
                chunk.push_str(line);
                count += 1;
            }
            if count > 0 {
                self.add_map_chunk(&head, chunk, count).await?;
            }
            self.expect_empty(&format!("commit map @{version} {map}"))
                .await
        }
        .await;
        if result.is_err() {
            let _ = self.command(&format!("clear map @{version} {map}")).await;
        }
        result
    }

    /// `show map <map>`, parsed into (key, value) pairs in HAProxy's order.
    pub async fn show_map(&self, map: &str) -> Result<Vec<(String, String)>, RuntimeError> {
        let cmd = format!("show map {map}");
        check_tokens(&cmd, &[map])?;
        let answer = self.command(&cmd).await?;
        parse_show_map(&answer).ok_or_else(|| refused(&cmd, answer.trim()))
    }

    /// Replaces the certificate HAProxy knows as `path` (its name in the
    /// crt-list) with `pem` (chain and key, no blank line): `set ssl cert
    /// <path> <<` then `commit ssl cert <path>`; a failed commit is aborted
    /// so no transaction is left open.
    pub async fn replace_ssl_cert(&self, path: &str, pem: &str) -> Result<(), RuntimeError> {
        let cmd = format!("set ssl cert {path}");
        check_tokens(&cmd, &[path])?;
        if pem.lines().any(|l| l.trim().is_empty()) {
            return Err(refused(&cmd, "not sent: the payload has a blank line"));
        }
        let answer = self
            .exchange(&cmd, format!("{cmd} <<\n{pem}\n").as_bytes())
            .await?;
        if !answer.contains("Transaction created") && !answer.contains("Transaction updated") {
            let _ = self.command(&format!("abort ssl cert {path}")).await;
            return Err(refused(&cmd, answer.trim()));
        }
        let cmd = format!("commit ssl cert {path}");
        let answer = self.command(&cmd).await?;
        if !answer.contains("Success!") {
            let _ = self.command(&format!("abort ssl cert {path}")).await;
            return Err(refused(&cmd, answer.trim()));
        }
        Ok(())
    }

    /// Adds a certificate: `new ssl cert <path>`, [`Self::replace_ssl_cert`],
    /// then `add ssl crt-list <list> <path>` (SNI finds it by its names).
    pub async fn add_ssl_cert(
        &self,
        list: &str,
        path: &str,
        pem: &str,
    ) -> Result<(), RuntimeError> {
        let cmd = format!("new ssl cert {path}");
        check_tokens(&cmd, &[list, path])?;
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, |a| {
            a.starts_with("New empty certificate store")
        })?;
        self.replace_ssl_cert(path, pem).await?;
        let cmd = format!("add ssl crt-list {list} {path}");
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, |a| a.ends_with("Success!"))
    }

    /// Removes a certificate: `del ssl crt-list <list> <path>`, then `del
    /// ssl cert <path>`. 2.6 refuses the default certificate of a bind.
    pub async fn del_ssl_cert(&self, list: &str, path: &str) -> Result<(), RuntimeError> {
        let cmd = format!("del ssl crt-list {list} {path}");
        check_tokens(&cmd, &[list, path])?;
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, |a| {
            a.starts_with("Entry") && a.contains("deleted")
        })?;
        let cmd = format!("del ssl cert {path}");
        let answer = self.command(&cmd).await?;
        expect(&cmd, &answer, |a| a.ends_with("deleted!"))
    }

    /// Sends one `add map @N <map> <<` request: `chunk` is the command line
    /// and `count` payload lines; the empty line that ends the payload is
    /// added here. Success is an empty answer line; no answer at all means
    /// HAProxy dropped the request (too large).
    async fn add_map_chunk(
        &self,
        head: &str,
        mut chunk: String,
        count: usize,
    ) -> Result<(), RuntimeError> {
        let label = format!("{} ({count} entries)", head.trim_end());
        chunk.push('\n');
        let answer = self.exchange(&label, chunk.as_bytes()).await?;
        if answer.is_empty() {
            return Err(refused(
                &label,
                "no answer (payload dropped: larger than tune.bufsize?)",
            ));
        }
        expect(&label, &answer, str::is_empty)
    }

    /// Runs `cmd` and expects an empty answer.
    async fn expect_empty(&self, cmd: &str) -> Result<(), RuntimeError> {
        let answer = self.command(cmd).await?;
        expect(cmd, &answer, str::is_empty)
    }

    /// Writes `request` and reads its answer, all within the timeout:
    /// on a connection of its own (read until EOF), or on the session's
    /// (read until the prompt). `label` names the command in errors.
    async fn exchange(&self, label: &str, request: &[u8]) -> Result<String, RuntimeError> {
        let run = async {
            match &self.session {
                None => {
                    let mut stream = self.connect().await?;
                    stream.write_all(request).await.map_err(|e| io(label, e))?;
                    let mut answer = Vec::new();
                    stream
                        .read_to_end(&mut answer)
                        .await
                        .map_err(|e| io(label, e))?;
                    Ok(String::from_utf8_lossy(&answer).into_owned())
                }
                Some(slot) => {
                    let mut held = slot.lock().await;
                    // Whatever fails below leaves the slot empty: a
                    // half-read answer must not become the next one's.
                    let mut stream = match held.take() {
                        Some(stream) => stream,
                        None => {
                            let mut stream = self.connect().await?;
                            stream
                                .write_all(b"prompt\n")
                                .await
                                .map_err(|e| io("prompt", e))?;
                            read_to_prompt(&mut stream, "prompt").await?;
                            stream
                        }
                    };
                    stream.write_all(request).await.map_err(|e| io(label, e))?;
                    let answer = read_to_prompt(&mut stream, label).await?;
                    *held = Some(stream);
                    Ok(answer)
                }
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(RuntimeError::Timeout {
                command: label.to_string(),
                after: self.timeout,
            }),
        }
    }

    async fn connect(&self) -> Result<UnixStream, RuntimeError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|source| RuntimeError::Connect {
                socket: self.socket.clone(),
                source,
            })
    }
}

fn io(command: &str, source: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        command: command.to_string(),
        source,
    }
}

/// Reads one interactive answer: up to the prompt, which is dropped, as
/// are the `+ ` continuation prompts 2.6 prints while it reads a payload.
/// What is left is the non-interactive answer.
async fn read_to_prompt(stream: &mut UnixStream, label: &str) -> Result<String, RuntimeError> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    while !answer.ends_with(PROMPT) {
        let n = stream.read(&mut buf).await.map_err(|e| io(label, e))?;
        if n == 0 {
            return Err(io(
                label,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "HAProxy closed the connection before its prompt",
                ),
            ));
        }
        answer.extend_from_slice(&buf[..n]);
    }
    answer.truncate(answer.len() - 2);
    Ok(interactive_answer(&String::from_utf8_lossy(&answer)))
}

/// An interactive answer without its leading payload prompts (`+ `).
fn interactive_answer(answer: &str) -> String {
    let mut rest = answer;
    while let Some(r) = rest.strip_prefix("+ ") {
        rest = r;
    }
    rest.to_string()
}

fn server_ref(backend: &str, server: &str) -> String {
    format!("{backend}/{server}")
}

fn refused(command: &str, answer: &str) -> RuntimeError {
    RuntimeError::Refused {
        command: command.to_string(),
        answer: answer.to_string(),
    }
}

/// Ok when the trimmed answer passes `ok`, else Refused with it.
fn expect(command: &str, answer: &str, ok: impl Fn(&str) -> bool) -> Result<(), RuntimeError> {
    let text = answer.trim();
    if ok(text) {
        Ok(())
    } else {
        Err(refused(command, text))
    }
}

/// `add backend`'s answer when the backend was made: "New backend
/// registered.", or, from a profile whose balance takes no dynamic server
/// (static-rr, source or uri without `hash-type consistent`), "New backend
/// registered (no support for dynamic servers: backend 'b' uses a non
/// dynamic load balancing method)." (3.4.7): the backend is there, only
/// `add server` into it is refused.
fn backend_registered(answer: &str) -> bool {
    !answer.contains('\n')
        && (answer == "New backend registered."
            || answer.starts_with("New backend registered (no support for dynamic servers"))
}

/// `del backend`'s answer when the backend was deleted: its last line is
/// "Backend deleted.". 3.4.7 prints before it whatever notices its thread
/// logged since its last command answered with them (`del backend` does
/// not clear them first, as `add backend` does): after `set server b/s
/// state maint` and `del server b/s`, "Server b/s is going DOWN for
/// maintenance. ...", "backend 'b' has no server available!", "Server
/// deleted.". A refusal is one line, never that one.
fn backend_deleted(answer: &str) -> bool {
    answer.lines().last().map(str::trim_end) == Some("Backend deleted.")
}

/// Refuses (unsent) a token that is empty or could split or change the
/// command line: whitespace, `;`, `\` (the CLI's escape) or a control
/// character.
fn check_token(command: &str, what: &str, token: &str) -> Result<(), RuntimeError> {
    let bad = token.is_empty()
        || token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ';' || c == '\\');
    if bad {
        return Err(refused(
            command,
            &format!("not sent: {what} {token:?} is empty or contains whitespace, ';', '\\' or a control character"),
        ));
    }
    Ok(())
}

fn check_tokens(command: &str, names: &[&str]) -> Result<(), RuntimeError> {
    names
        .iter()
        .try_for_each(|n| check_token(command, "name", n))
}

/// Parses `show servers state`: version line, `# ` header, rows. None if the
/// answer does not have that shape. Public for the fuzz targets
/// (tests/fuzz.rs), like the other answer parsers here.
pub fn parse_servers_state(answer: &str) -> Option<ServersState> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let version = lines.next()?.trim().to_string();
    version.parse::<u32>().ok()?;
    let header = lines.next()?.trim_end().to_string();
    let names: Vec<&str> = header.strip_prefix("# ")?.split_whitespace().collect();
    let col = |name: &str| names.iter().position(|n| *n == name);
    let (be_id, be_name, srv_id, srv_name) = (
        col("be_id")?,
        col("be_name")?,
        col("srv_id")?,
        col("srv_name")?,
    );
    let (addr, op, admin, uweight, iweight, fqdn, port) = (
        col("srv_addr")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_iweight")?,
        col("srv_fqdn")?,
        col("srv_port")?,
    );
    let dash = |s: &str| (s != "-").then(|| s.to_string());
    let rows = lines
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < names.len() {
                return None;
            }
            Some(ServerStateRow {
                backend_id: f[be_id].parse().ok()?,
                backend: f[be_name].to_string(),
                server_id: f[srv_id].parse().ok()?,
                server: f[srv_name].to_string(),
                addr: dash(f[addr]),
                port: f[port].parse().ok()?,
                op_state: f[op].parse().ok()?,
                admin_state: f[admin].parse().ok()?,
                weight: f[uweight].parse().ok()?,
                initial_weight: f[iweight].parse().ok()?,
                fqdn: dash(f[fqdn]),
                raw: line.trim_end().to_string(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ServersState {
        version,
        header,
        rows,
    })
}

/// scur + qcur + idle_conn_cur of `backend/server` in `show stat` CSV.
pub fn parse_stat_connections(answer: &str, backend: &str, server: &str) -> Option<u64> {
    let mut lines = answer.lines();
    let header: Vec<&str> = lines.next()?.strip_prefix("# ")?.split(',').collect();
    let col = |name: &str| header.iter().position(|n| *n == name);
    let (px, sv) = (col("pxname")?, col("svname")?);
    let counts = [col("scur")?, col("qcur")?, col("idle_conn_cur")?];
    lines.find_map(|line| {
        let f: Vec<&str> = line.split(',').collect();
        if f.get(px) != Some(&backend) || f.get(sv) != Some(&server) {
            return None;
        }
        counts.iter().try_fold(0u64, |sum, &i| {
            let v = f.get(i)?;
            // An empty field is a counter that does not apply: 0.
            let n = if v.is_empty() {
                0
            } else {
                v.parse::<u64>().ok()?
            };
            Some(sum + n)
        })
    })
}

/// Parses `show map <map>` lines `0x<id> key value`. None on any other line.
pub fn parse_show_map(answer: &str) -> Option<Vec<(String, String)>> {
    answer
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (id, rest) = line.split_once(' ')?;
            if !id.starts_with("0x") {
                return None;
            }
            let (key, value) = rest.split_once(' ')?;
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_state() {
        let answer = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 be_rr 1 s1 127.0.0.1 2 0 1 1 42 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0\n\
3 be_rr 2 h1 - 0 1 10 10 3 1 0 0 0 0 0 0 localhost 9002 - 0 0 - - 0\n\n";
        let st = parse_servers_state(answer).unwrap();
        assert_eq!(st.version, "1");
        assert_eq!(st.rows.len(), 2);
        let s1 = st.server("be_rr", "s1").unwrap();
        assert_eq!(s1.addr.as_deref(), Some("127.0.0.1"));
        assert_eq!((s1.port, s1.op_state, s1.weight), (9001, 2, 1));
        assert!(s1.is_up() && !s1.in_maintenance());
        let h1 = st.server("be_rr", "h1").unwrap();
        assert_eq!(
            (h1.addr.as_deref(), h1.fqdn.as_deref()),
            (None, Some("localhost"))
        );
        assert!(h1.in_maintenance());
        assert!(st.to_file().ends_with(" 0 0 - - 0\n"));
        assert!(parse_servers_state("Can't find backend.\n\n").is_none());
        assert!(parse_servers_state(&answer.replace(" 9001 - 0 0 - - 0", " 9001")).is_none());
    }

    #[test]
    fn parses_show_map_and_stat() {
        let map = parse_show_map("0x55 a.example be_rr\n0x56 b.example be x\n\n").unwrap();
        assert_eq!(map[1], ("b.example".into(), "be x".into()));
        assert!(parse_show_map("Unknown map identifier. Please use #<id> or <file>.\n").is_none());
        assert_eq!(parse_show_map("\n"), Some(vec![]));
        let stat = "# pxname,svname,qcur,qmax,scur,idle_conn_cur\nbe,s1,1,0,2,\nbe,s2,0,0,0,3\n";
        assert_eq!(parse_stat_connections(stat, "be", "s1"), Some(3));
        assert_eq!(parse_stat_connections(stat, "be", "s2"), Some(3));
        assert_eq!(parse_stat_connections(stat, "be", "s3"), None);
        assert_eq!(parse_stat_connections("No such proxy.\n", "be", "s1"), None);
    }

    #[test]
    fn backend_answers_as_3_4_7_words_them() {
        assert!(backend_registered("New backend registered."));
        assert!(backend_registered("New backend registered (no support for dynamic servers: backend 'src:6dad5c8897ba' uses a non dynamic load balancing method)."));
        for refused in [
            "Error during backend creation : name is already used by other proxy 'backend www'.",
            "Cannot find default proxy 'nosuch'.",
            "'option forwardfor' ignored for backend 'x' as it requires HTTP mode.\nNew backend registered.",
        ] {
            assert!(!backend_registered(refused), "{refused}");
        }
        assert!(backend_deleted("Backend deleted."));
        assert!(backend_deleted(
            "Server a1/s1 is going DOWN for maintenance. 0 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue.\nbackend 'a1' has no server available!\nBackend deleted."
        ));
        assert!(backend_deleted("Server d1/s1 is UP/READY (leaving forced maintenance).\nServer deleted.\nBackend deleted."));
        for refused in [
            "Backend must be unpublished prior to its deletion.",
            "Only a backend without server can be deleted.",
            "Backend still has attached streams on it.",
            "Cannot remove a backend with stick-table.",
            "This proxy cannot be removed at runtime due to other configuration elements pointing to it.",
            "Cannot delete a listen section.",
            "No such backend.",
        ] {
            assert!(!backend_deleted(refused), "{refused}");
        }
    }

    #[test]
    fn refuses_bad_tokens_unsent() {
        for bad in ["", "a b", "a;b", "a\nb", "a\\b", "a\tb"] {
            assert!(check_token("c", "name", bad).is_err(), "{bad:?}");
        }
        assert!(check_token("c", "name", "web-1.example_2:80").is_ok());
    }
}
