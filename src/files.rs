//! Files written for HAProxy: the atomic write and the replace, staging a
//! candidate config beside the one in place, sharing files with HAProxy's
//! group, and the paths derived from the config file and the run dir.
//! Every module that writes a file HAProxy reads writes it through here.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What staging writes: a config and the map files it names (file name
/// inside the maps directory → content).
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    pub config: &'a str,
    pub maps: &'a BTreeMap<String, String>,
}

/// The server-state file of the generations using `admin_socket`.
pub fn server_state_path(admin_socket: &Path) -> PathBuf {
    admin_socket.with_file_name("server-state")
}

/// The directory map files live in, beside the config.
pub fn maps_dir(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("maps")
}

/// `p` made absolute against the working directory (HAProxy and its
/// runtime API know files by the path the config names).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The group HAProxy reads our files as, when it starts unprivileged.
static READER_GID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// HAProxy starts as an unprivileged user from its first instant
/// (`HAPROXY_RELOAD_STRATEGY=inherit` with `HAPROXY_USER`): every file we
/// write for it from now on is `0640 root:<gid>` instead of `0600`, and the
/// directories it reads `0750`.
pub fn share_with_group(gid: u32) {
    let _ = READER_GID.set(gid);
}

/// Gives an open file we wrote to the reader group, if any.
fn share(f: &fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = READER_GID.get() {
        std::os::unix::fs::fchown(f, None, Some(*gid))?;
        f.set_permissions(fs::Permissions::from_mode(0o640))?;
    }
    Ok(())
}

/// Gives a directory HAProxy reads to the reader group, if any: `0750`, or
/// `mode` for one it writes in too (the run dir: its admin socket).
pub fn share_dir(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = READER_GID.get() {
        std::os::unix::fs::chown(dir, None, Some(*gid))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    sync_dir(path)
}

/// Replaces `path` with `bytes` (temporary file and rename, no fsync): for
/// files that need to be whole but need not survive a power loss (the pid
/// file, the server state, the config and maps, see [`stage`]). Each fsync
/// costs tens of milliseconds on a busy
/// disk, and a reload would wait on them.
pub fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    write_unsynced(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Files we write are for HAProxy, which reads them as root before it drops
/// privileges: owner only (the config may hold the stats password).
fn create_private(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    share(&f)?;
    Ok(f)
}

fn write_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    create_private(path)?.write_all(bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = create_private(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A candidate written to disk but not yet in place.
#[derive(Debug)]
pub struct Staged {
    /// The candidate config; pass it to `haproxy -c`.
    pub candidate: PathBuf,
    target: PathBuf,
    /// Map files this staging created (removed again on abort).
    new_maps: Vec<PathBuf>,
}

/// Writes the maps (new names only) and a candidate config beside `target`.
///
/// Without fsync, as [`write_replace`]: everything staged here is
/// rendered again from the catalog at every start, so nothing needs to
/// survive a power loss, and HAProxy never sees a partial file (a rename
/// puts each in place; ext4 also flushes a file replaced by rename). Under
/// load each fsync took tens of milliseconds and showed in the clients'
/// tail (reload-bench `structural`, bench/README.md).
pub fn stage<'a>(target: &Path, rendered: impl Into<Output<'a>>) -> io::Result<Staged> {
    let rendered = rendered.into();
    let dir = maps_dir(target);
    fs::create_dir_all(&dir)?;
    share_dir(&dir, 0o750)?;
    let mut new_maps = Vec::new();
    for (name, text) in rendered.maps {
        let p = dir.join(name);
        if fs::read(&p).ok().as_deref() != Some(text.as_bytes()) {
            write_replace(&p, text.as_bytes())?;
            new_maps.push(p);
        }
    }
    let candidate = target.with_file_name(format!(
        "{}.candidate",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    write_unsynced(&candidate, rendered.config.as_bytes())?;
    Ok(Staged {
        candidate,
        target: target.to_path_buf(),
        new_maps,
    })
}

impl Staged {
    /// Puts the candidate in place (one rename) and removes map files that
    /// no longer belong to it. The running HAProxy loaded its maps at start,
    /// so removing their files does not affect it.
    pub fn commit<'a>(self, rendered: impl Into<Output<'a>>) -> io::Result<()> {
        let rendered = rendered.into();
        fs::rename(&self.candidate, &self.target)?;
        if let Ok(entries) = fs::read_dir(maps_dir(&self.target)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".map") && !rendered.maps.contains_key(&name) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Removes the candidate and the maps only it used; the file in place is untouched.
    pub fn abort(self) {
        let _ = fs::remove_file(&self.candidate);
        for m in &self.new_maps {
            let _ = fs::remove_file(m);
        }
    }
}
