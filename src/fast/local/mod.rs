//! The local door: the fast-path protocol over a Unix domain socket, with
//! tensors shared through memory instead of copied through the socket.
//!
//! A client on the same host puts a large tensor by filling a memfd,
//! sealing it immutable and passing the descriptor (`SCM_RIGHTS`); the
//! server keeps a read-only mapping of it as the stored payload. A GET of
//! such a tensor is answered with the descriptor, and the client maps the
//! same pages read-only: no byte is copied, and a tensor read by eight
//! processes occupies its size once. Everything else (small tensors,
//! tensors put through the other doors or read back from disk) travels
//! through the socket as on the TCP fast path. Linux only.
//!
//! - `fds`: the socket halves that carry descriptors beside the bytes.
//! - `memfd`: sealed memfds: filled, checked, mapped.
//! - `leases`: what local clients have mapped, counted and bounded.
//!
//! `docs/PROTOCOL.md` ("The local door") specifies the frames.

pub(crate) mod fds;
pub(crate) mod leases;
pub(crate) mod memfd;

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;

pub use memfd::{is_mapping, MemfdError};

/// Payloads at least this large are put through a memfd by the client
/// (smaller ones are cheaper to copy through the socket than to map).
pub const SHARE_THRESHOLD: usize = 256 * 1024;

/// The local door's settings (`server --uds PATH`).
///
/// ```
/// use redstone::fast::local::LocalConfig;
/// use redstone::server::Config;
///
/// let config = Config {
///     local: Some(LocalConfig { mode: 0o660, ..LocalConfig::new("/run/redstone.sock", 8 << 30) }),
///     ..Config::default()
/// };
/// assert_eq!(config.local.unwrap().max_leased, 8 << 30);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The socket's path.
    pub path: PathBuf,
    /// The socket file's permission bits: `0o600` (the server's user
    /// only) by default; `0o660` lets its group in.
    pub mode: u32,
    /// The most bytes of stored payloads local clients may have mapped at
    /// once (each payload counted once, however many map it). A GET that
    /// would pass it is answered `LeaseLimit`.
    pub max_leased: u64,
}

impl LocalConfig {
    /// A door at `path`, mode `0o600`, with up to `max_leased` bytes
    /// mapped.
    pub fn new(path: impl Into<PathBuf>, max_leased: u64) -> LocalConfig {
        LocalConfig {
            path: path.into(),
            mode: 0o600,
            max_leased,
        }
    }
}

/// A bound local door: its listener, the server-wide leases and limits.
#[derive(Debug)]
pub(crate) struct LocalListener {
    pub(crate) listener: UnixListener,
    pub(crate) leases: Arc<leases::Leases>,
    pub(crate) path: PathBuf,
    /// The socket file as bound (device, inode): removed on shutdown only
    /// if the path still names it.
    pub(crate) identity: (u64, u64),
    pub(crate) limits: Arc<Limits>,
}

/// What the local door's file descriptors may add up to, from the
/// process's descriptor limit (raised to its hard limit when the door
/// opens) and the kernel's limit on memory mappings.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Stored payloads kept as memfds (each holds a descriptor and a
    /// mapping); past it, a passed memfd is copied into memory and closed.
    pub(crate) shared: usize,
    /// Descriptors received and not yet claimed, over all connections.
    pub(crate) unclaimed: Arc<fds::FdBudget>,
}

impl Limits {
    fn for_this_process() -> Limits {
        let nofile = raise_nofile();
        let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65_530);
        Limits {
            shared: (nofile / 2).min(maps / 4),
            unclaimed: fds::FdBudget::new((nofile / 8).max(64)),
        }
    }
}

/// Raises this process's soft descriptor limit to its hard limit (every
/// stored shared tensor holds one); returns the soft limit.
fn raise_nofile() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("cannot raise the descriptor limit: {e}");
        }
    }
    let current = getrlimit(Resource::Nofile).current;
    current.map_or(1 << 20, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// The device and inode of the file at `path`.
pub(crate) fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// What a local connection has beyond a TCP one.
#[derive(Debug)]
pub(crate) struct Local {
    /// The door's limits.
    pub(crate) limits: Arc<Limits>,
    /// Descriptors received, for PUTs flagged `FLAG_FD`.
    pub(crate) inbox: fds::Inbox,
    /// Where the write loop puts the descriptors of the frames it sends.
    pub(crate) outbox: fds::Outbox,
    /// The connection's leases.
    pub(crate) leases: leases::ConnLeases,
}

/// Binds the socket at `config.path` with `config.mode`, so that no
/// process the mode leaves out can connect even for an instant: the socket
/// is bound in a new directory only this user can enter, given its mode,
/// then renamed into place. A stale socket file (no server behind it) is
/// replaced; a live one, or any other file, is an error.
pub(crate) fn bind(config: &LocalConfig) -> io::Result<LocalListener> {
    let path = &config.path;
    clear_stale(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let private = parent.join(format!(
        ".redstone-bind-{}-{}",
        std::process::id(),
        path.file_name()
            .map_or("sock".into(), |n| n.to_string_lossy())
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", private.display())))?;
    let inner = private.join("s");
    let bound = (|| -> io::Result<UnixListener> {
        let listener = UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(config.mode & 0o777))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    let listener = bound?;
    let identity = identity(path).unwrap_or_default();
    let limits = Arc::new(Limits::for_this_process());
    tracing::debug!(
        shared = limits.shared,
        unclaimed = limits.unclaimed.limit(),
        "local door limits"
    );
    if let Some(setting) = shmem_huge_pages().filter(|s| s == "never" || s == "deny") {
        tracing::info!(
            shmem_enabled = %setting,
            "local door: shared memory uses 4 KiB pages; with `within_size` in \
             {SHMEM_ENABLED}, large tensors map and fill several times faster (README, \
             \"The local door\")"
        );
    }
    Ok(LocalListener {
        listener,
        leases: leases::Leases::new(config.max_leased, limits.unclaimed.limit() * 2),
        path: path.clone(),
        identity,
        limits,
    })
}

/// Where Linux says whether shared memory (memfds) gets huge pages.
const SHMEM_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// The host's shmem huge page setting (`never`, `within_size`, ...), if
/// it can be read.
fn shmem_huge_pages() -> Option<String> {
    let text = std::fs::read_to_string(SHMEM_ENABLED).ok()?;
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

/// Removes a socket file nobody listens on; refuses to touch a live one or
/// a file of another kind.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    // Only a refused connection means nobody listens: a socket this user
    // may not connect to (EACCES) may well be alive.
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another server listens on {}", path.display()),
        )),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "{} exists and cannot be checked ({e}); remove it if no server uses it",
                path.display()
            ),
        )),
    }
}
