//! Sealed memfds: tensors as shared memory.
//!
//! A payload shared through the local door lives in a memfd whose size and
//! contents are sealed (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW`):
//! nobody, not the server nor any client, can change a byte of it or cut it
//! short, so a mapping of it can never see a torn tensor or fault on a
//! truncated page. The client fills a memfd, seals it and hands it over
//! ([`fill`]); the server checks the seals and maps it read-only
//! ([`adopt`]); a reader maps the same pages read-only ([`map`]).
//!
//! The server remembers which stored payloads are such mappings
//! ([`shared_fd`]), so that a GET can hand out the file instead of the
//! bytes.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};
use rustix::fs::{MemfdFlags, SealFlags};

/// The seals that make a memfd immutable.
const IMMUTABLE: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW);

/// Why a file descriptor cannot be taken as a payload.
#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
    /// The file is not a memfd sealed against writes, shrinking and growth.
    #[error("the file descriptor is not a memfd sealed with F_SEAL_WRITE, F_SEAL_SHRINK and F_SEAL_GROW")]
    NotSealed,
    /// The file's size is not the payload's.
    #[error("the memfd holds {actual} bytes, the frame says {expected}")]
    WrongSize {
        /// The payload length the frame claims.
        expected: u64,
        /// The memfd's size.
        actual: u64,
    },
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A read-only mapping of a sealed memfd the server stores (the memfd,
/// to share again, is in the registry). Owns the bytes of a [`Bytes`];
/// dropping the last clone forgets it and unmaps it.
struct Region {
    map: Mmap,
}

impl AsRef<[u8]> for Region {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        registry().remove(&key(&self.map));
    }
}

/// Payloads that are sealed memfd mappings, by (address, length).
type Registry = Mutex<HashMap<(usize, usize), Arc<OwnedFd>>>;

fn registry() -> std::sync::MutexGuard<'static, HashMap<(usize, usize), Arc<OwnedFd>>> {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY
        .get_or_init(Registry::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The sealed memfd `payload` is a whole mapping of, if it is one (a
/// payload put through the local door with a memfd).
pub(crate) fn shared_fd(payload: &Bytes) -> Option<Arc<OwnedFd>> {
    if payload.is_empty() {
        return None;
    }
    registry().get(&key(payload)).cloned()
}

/// Checks that `fd` is a memfd sealed immutable and exactly `len` bytes
/// long, and maps it read-only: the stored payload of a PUT that handed it
/// over. Nothing of it is read here.
pub(crate) fn adopt(fd: OwnedFd, len: u64) -> Result<Bytes, MemfdError> {
    let size = checked(&fd, len)?;
    if size == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the file is sealed against writes, shrinking and growth (the
    // seals were checked above and can never be removed), and it is
    // exactly `size` bytes long: no process can change the mapped bytes
    // or truncate them under the mapping, which is what `Mmap` requires.
    let map = unsafe { MmapOptions::new().len(size).map(&fd)? };
    Ok(register(map, fd))
}

/// How many stored payloads are memfd mappings (each holds a descriptor
/// and a mapping), in this process.
pub(crate) fn shared_count() -> usize {
    registry().len()
}

/// Copies a passed memfd's bytes into an allocation of exactly its size
/// (after the same checks as [`adopt`]) and closes it: the payload of a
/// PUT the server does not keep as a memfd (a small one, or past the
/// door's limit on them).
pub(crate) fn read(fd: OwnedFd, len: u64) -> Result<Bytes, MemfdError> {
    let size = checked(&fd, len)?;
    let mut data = Vec::new();
    data.try_reserve_exact(size).map_err(|_| {
        MemfdError::Io(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("cannot allocate {size} bytes"),
        ))
    })?;
    data.resize(size, 0);
    let mut done = 0;
    while done < size {
        let n =
            rustix::io::pread(&fd, &mut data[done..], done as u64).map_err(std::io::Error::from)?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        done += n;
    }
    Ok(Bytes::from(data))
}

/// Maps a sealed memfd read from a reply, read-only and with its pages
/// already mapped (`MAP_POPULATE`), after the same checks as [`adopt`].
/// The file itself is closed: the mapping keeps its pages.
pub(crate) fn map(fd: OwnedFd, len: u64) -> Result<Mmap, MemfdError> {
    let size = checked(&fd, len)?;
    if size == 0 {
        return Err(MemfdError::WrongSize {
            expected: 0,
            actual: 0,
        });
    }
    // SAFETY: as in `adopt`: sealed immutable, exactly `size` bytes.
    Ok(unsafe { MmapOptions::new().len(size).populate().map(&fd)? })
}

/// The identity of the file `fd` is open on: device, inode and change
/// time. The inode alone names one file among the living (a mapping holds
/// its file, so its number is not given to another while it is mapped);
/// the change time guards against kernels whose inode counter for memfds
/// is 32 bits wide and not checked for uniqueness once it wraps (older
/// kernels; hugetlb memfds).
pub(crate) fn file_id(fd: &OwnedFd) -> std::io::Result<FileId> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(FileId {
        dev: stat.st_dev as u64,
        ino: stat.st_ino as u64,
        ctime: (stat.st_ctime as i64, stat.st_ctime_nsec as i64),
    })
}

/// What [`file_id`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

/// Checks that `fd` is a regular file sealed immutable and exactly `len`
/// bytes long; returns the length.
fn checked(fd: &OwnedFd, len: u64) -> Result<usize, MemfdError> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| MemfdError::NotSealed)?;
    if !seals.contains(IMMUTABLE) {
        return Err(MemfdError::NotSealed);
    }
    let stat = rustix::fs::fstat(fd).map_err(std::io::Error::from)?;
    let actual = u64::try_from(stat.st_size).unwrap_or(0);
    let regular =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    match usize::try_from(len) {
        Ok(size) if regular && actual == len => Ok(size),
        _ => Err(MemfdError::WrongSize {
            expected: len,
            actual,
        }),
    }
}

/// `map` of `fd` as a stored payload that [`shared_fd`] knows.
fn register(map: Mmap, fd: OwnedFd) -> Bytes {
    registry().insert(key(&map), Arc::new(fd));
    Bytes::from_owner(Region { map })
}

/// A client's read-only mapping of a passed memfd, and what it keeps
/// (its lease): owns the bytes of a [`Bytes`]; [`is_mapping`] knows it
/// while it lives.
pub(crate) struct Mapping<K> {
    map: Mmap,
    _keep: K,
}

impl<K: Send + 'static> Mapping<K> {
    /// `map` as the bytes of a [`Bytes`], holding `keep` until the last
    /// clone is dropped.
    pub(crate) fn into_bytes(map: Mmap, keep: K) -> Bytes {
        mappings().insert(key(&map));
        Bytes::from_owner(Mapping { map, _keep: keep })
    }
}

impl<K> AsRef<[u8]> for Mapping<K> {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl<K> Drop for Mapping<K> {
    fn drop(&mut self) {
        mappings().remove(&key(&self.map));
    }
}

/// What the registries know a buffer by: where it starts and how long it
/// is (unique while the buffer lives).
pub(crate) fn key(bytes: &[u8]) -> (usize, usize) {
    (bytes.as_ptr() as usize, bytes.len())
}

fn mappings() -> std::sync::MutexGuard<'static, std::collections::HashSet<(usize, usize)>> {
    static MAPPINGS: OnceLock<Mutex<std::collections::HashSet<(usize, usize)>>> = OnceLock::new();
    MAPPINGS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Whether `data` is exactly a tensor this process mapped from the local
/// door: read-only shared memory, whose bytes no one can change. The
/// Python client hands such a tensor out as a read-only array instead of
/// copying it.
pub fn is_mapping(data: &[u8]) -> bool {
    !data.is_empty() && mappings().contains(&key(data))
}

/// A new memfd holding `data`, sealed immutable: what a client hands the
/// server with a PUT. One copy, at the speed the kernel allocates the
/// memfd's pages (with huge shmem pages, `shmem_enabled` `within_size` or
/// `always`, several times faster than with 4 KiB ones: the README's
/// "Local door" section).
pub(crate) fn fill(data: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "redstone-tensor",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, data.len() as u64)?;
    // `pwrite`, not a mapping: the kernel fills each new page without
    // zeroing it first or mapping it here (half the time of mmap + copy
    // on 4 KiB pages).
    let mut done = 0;
    while done < data.len() {
        let n = rustix::io::pwrite(&fd, &data[done..], done as u64)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    rustix::fs::fcntl_add_seals(&fd, IMMUTABLE | SealFlags::SEAL)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_filled_memfd_is_adopted_and_shared() {
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let fd = fill(&data).unwrap();
        let stored = adopt(fd, data.len() as u64).unwrap();
        assert!(stored[..] == data[..]);
        let shared = shared_fd(&stored).expect("registered");
        let dup = shared.as_fd().try_clone_to_owned().unwrap();
        let mapped = map(dup, data.len() as u64).unwrap();
        assert!(mapped[..] == data[..]);
        // A slice is not the stored payload; dropping the last clone
        // forgets it.
        assert!(shared_fd(&stored.slice(1..)).is_none());
        let stored_key = key(&stored);
        drop(stored);
        assert!(!registry().contains_key(&stored_key));
    }

    #[test]
    fn unsealed_or_wrong_sized_memfds_are_refused() {
        let fd =
            rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        let again = fd.try_clone().unwrap();
        assert!(matches!(adopt(fd, 4096), Err(MemfdError::NotSealed)));
        rustix::fs::fcntl_add_seals(&again, IMMUTABLE).unwrap();
        assert!(matches!(
            adopt(again, 8192),
            Err(MemfdError::WrongSize {
                expected: 8192,
                actual: 4096
            })
        ));
        // Not a memfd at all: a pipe.
        let (r, _w) = std::io::pipe().unwrap();
        assert!(matches!(adopt(r.into(), 0), Err(MemfdError::NotSealed)));
    }
}
