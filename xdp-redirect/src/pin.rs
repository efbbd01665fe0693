//! Where the XDP attachments outlive the daemon: BPF links pinned in a bpffs directory.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/nodeplane`):
//!
//! ```text
//!   <dir>/<iface>/link-native     the XDP link of <iface>, attached in native (driver) mode
//!   <dir>/<iface>/link-generic    ... or in generic (SKB) mode
//!   <dir>/prog-<tag>              the program of the build whose object has this tag
//!   <dir>/maps-<tag>/<map>        its maps
//! ```
//!
//! A daemon of the same build reuses `prog-<tag>` and its maps (no load, no verifier, the
//! counters go on); another build loads its own, swaps it into the links and removes the
//! older `prog-*`/`maps-*` ([`remove_other_versions`]).
//!
//! A pinned link keeps the program attached, and the program keeps its maps, after the process
//! that made them has exited (cleanly or not). The kernel removes a closed AF_XDP socket from
//! every XSKMAP (`xsk_delete_from_maps` in `net/xdp/xsk.c`), so while no daemon runs the
//! program finds no socket and does what its `config.no_socket_drop` says (drop or pass).
//! The next daemon takes the link over with `BPF_LINK_UPDATE` (no detach window) and removing
//! the pin file (`nodeplane detach`) detaches once no process holds the link either.
//!
//! Nothing here runs on the packet path.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

use crate::loader::AttachMode;

/// Where systemd (and most distributions) mount the BPF filesystem.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Preparing the pin directory failed.
#[derive(Debug, thiserror::Error)]
pub enum PinDirError {
    /// The directory is not on a BPF filesystem, and one could not (or should not) be mounted.
    #[error("{dir} is not on a BPF filesystem (bpffs){why}")]
    NotBpffs {
        /// The pin directory.
        dir: PathBuf,
        /// Why no bpffs was mounted (empty, or `: ...`).
        why: String,
    },
    /// Creating the directory failed.
    #[error("cannot create the pin directory {dir}: {source}")]
    Create {
        /// The pin directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Whether this process shares PID 1's mount namespace: a bpffs mounted from anywhere else
/// (`ip netns exec`, a systemd unit with `ProtectSystem=`) would vanish with the process, and
/// its pins with it.
fn in_init_mount_ns() -> bool {
    match (
        fs::read_link("/proc/self/ns/mnt"),
        fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Makes `dir` exist on a bpffs. When `dir` is under [`BPFFS_ROOT`] and nothing is mounted
/// there, mounts a bpffs at [`BPFFS_ROOT`] (mode 0700), but only from PID 1's mount namespace
/// (see [`in_init_mount_ns`]); needs CAP_SYS_ADMIN. Returns whether it mounted one.
pub fn ensure_pin_dir(dir: &Path) -> Result<bool, PinDirError> {
    // The nearest existing ancestor tells which filesystem the directory will be on.
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let mut mounted = false;
    if !is_bpffs(existing) {
        let root = Path::new(BPFFS_ROOT);
        let not = |why: String| PinDirError::NotBpffs {
            dir: dir.to_owned(),
            why,
        };
        if !dir.starts_with(root) || is_bpffs(root) {
            return Err(not(String::new()));
        }
        if !in_init_mount_ns() {
            return Err(not(format!(
                " and this process runs in a private mount namespace, where a bpffs mounted at \
                 {BPFFS_ROOT} would vanish with it: mount it on the host (systemd does)"
            )));
        }
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|e| not(format!(" and mounting one at {BPFFS_ROOT} failed: {e}")))?;
        mounted = true;
    }
    fs::create_dir_all(dir).map_err(|source| PinDirError::Create {
        dir: dir.to_owned(),
        source,
    })?;
    if !is_bpffs(dir) {
        return Err(PinDirError::NotBpffs {
            dir: dir.to_owned(),
            why: String::new(),
        });
    }
    Ok(mounted)
}

/// The pin path of `iface`'s link in `mode`.
pub fn link_path(dir: &Path, iface: &str, mode: AttachMode) -> PathBuf {
    dir.join(iface).join(match mode {
        AttachMode::Driver => "link-native",
        AttachMode::Skb => "link-generic",
    })
}

/// A link pinned under `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedAttachment {
    /// Interface name (the directory's name).
    pub iface: String,
    /// Mode (from the file name).
    pub mode: AttachMode,
    /// The pin file.
    pub path: PathBuf,
}

/// Every link pinned under `dir` (none when `dir` does not exist).
pub fn pinned_links(dir: &Path) -> io::Result<Vec<PinnedAttachment>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let iface = e.file_name().to_string_lossy().into_owned();
        for mode in [AttachMode::Driver, AttachMode::Skb] {
            let path = link_path(dir, &iface, mode);
            if path.exists() {
                out.push(PinnedAttachment {
                    iface: iface.clone(),
                    mode,
                    path,
                });
            }
        }
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}

/// Removes every pinned link under `dir`, the pinned programs and maps, and the directory
/// (`nodeplane detach`): each link is detached as soon as no process holds it (a running
/// daemon does: stop it first). Returns the links removed.
pub fn unpin_all(dir: &Path) -> io::Result<Vec<PinnedAttachment>> {
    let links = pinned_links(dir)?;
    for l in &links {
        fs::remove_file(&l.path)?;
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(links)
}

/// Removes the programs and maps pinned under `dir` by other builds than `tag` (once this
/// build's program is in every link, nothing uses them). Returns how many were removed.
pub fn remove_other_versions(dir: &Path, tag: &str) -> usize {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let other = |prefix: &str| name.strip_prefix(prefix).is_some_and(|t| t != tag);
        if other("prog-") {
            n += usize::from(fs::remove_file(e.path()).is_ok());
        } else if other("maps-") {
            n += usize::from(fs::remove_dir_all(e.path()).is_ok());
        }
    }
    n
}
