//! Rebuilding the index from the segment files a previous server left.
//!
//! Segments are replayed oldest first, records in the order they were
//! written, so a later record of a key replaces an earlier one and a voided
//! record (a delete) forgets the key. Only heads are read (with their
//! checksums); payloads are checked when read. A segment's replay stops at
//! the first head that is bad or whose record runs past the end of the
//! file: what a crash in the middle of a write leaves. New records always
//! go to a new segment, never after such a tail.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::index::Index;
use super::log::{segment_id, segment_name, Loc, Segment};
use super::record::{decode, MAX_HEAD};

/// What recovery found.
pub(crate) struct Recovered {
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// Torn or corrupt records (each ends its segment's replay), and
    /// segments that could not be read (deleted).
    pub(crate) corrupt: u64,
}

/// Replays every segment in `dir` into `index`.
pub(crate) fn recover(dir: &Path, index: &Index, limit: u64) -> io::Result<Recovered> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut corrupt = 0;
    for id in ids {
        let path = dir.join(segment_name(id));
        let replayed = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .and_then(|file| replay(id, Arc::new(file), index, &mut corrupt, limit));
        match replayed {
            Ok(segment) => {
                segments.insert(id, segment);
            }
            Err(e) => {
                // An unreadable segment is worth nothing: delete it. If even
                // that fails, the directory is not usable.
                tracing::warn!(segment = %path.display(), error = %e, "cannot read a disk segment; deleting it");
                corrupt += 1;
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(Recovered { segments, corrupt })
}

/// What one record does to the index.
enum Op {
    Put(Arc<str>, Loc, u32, u64, u64),
    Forget(Arc<str>),
}

/// Replays one segment's records into `index`: read whole first, applied
/// only if the segment could be read (an I/O error leaves no entry behind).
fn replay(
    id: u64,
    file: Arc<File>,
    index: &Index,
    corrupt: &mut u64,
    limit: u64,
) -> io::Result<Segment> {
    let len = file.metadata()?.len();
    let mut buf = vec![0; MAX_HEAD];
    let mut ops = Vec::new();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(MAX_HEAD as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        // A record longer than the whole tier is not one this server wrote.
        let end = decode(&buf[..n]).ok().and_then(|head| {
            let end = offset
                .checked_add(head.len as u64)?
                .checked_add(head.payload_len)?;
            Some((head, end)).filter(|(h, end)| *end <= len && h.payload_len <= limit)
        });
        let Some((head, end)) = end else {
            tracing::warn!(
                segment = id,
                offset,
                "a torn or corrupt record ends this segment's replay"
            );
            *corrupt += 1;
            break;
        };
        let key: Arc<str> = Arc::from(head.key);
        ops.push(if head.voided {
            Op::Forget(key)
        } else {
            let loc = Loc {
                segment: id,
                file: Arc::clone(&file),
                offset,
            };
            Op::Put(key, loc, head.len as u32, head.payload_len, head.digest)
        });
        offset = end;
    }
    let mut keys = Vec::new();
    for op in ops {
        match op {
            Op::Put(key, loc, head_len, payload_len, digest) => {
                keys.push((Arc::clone(&key), loc.offset));
                index.insert_stored(key, loc, head_len, payload_len, digest);
            }
            Op::Forget(key) => index.remove(&key),
        }
    }
    Ok(Segment { file, len, keys })
}
