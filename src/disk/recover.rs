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
pub(crate) fn recover(dir: &Path, index: &Index) -> io::Result<Recovered> {
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
            .and_then(|file| replay(id, Arc::new(file), index, &mut corrupt));
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

/// Replays one segment's records into `index`.
fn replay(id: u64, file: Arc<File>, index: &Index, corrupt: &mut u64) -> io::Result<Segment> {
    let len = file.metadata()?.len();
    let mut buf = vec![0; MAX_HEAD];
    let mut keys = Vec::new();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(MAX_HEAD as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        let end = decode(&buf[..n]).ok().and_then(|head| {
            let end = offset
                .checked_add(head.len as u64)?
                .checked_add(head.payload_len)?;
            Some((head, end)).filter(|(_, end)| *end <= len)
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
        if head.voided {
            index.remove(&key);
        } else {
            let loc = Loc {
                segment: id,
                file: Arc::clone(&file),
                offset,
            };
            index.insert_stored(
                Arc::clone(&key),
                loc,
                head.len as u32,
                head.payload_len,
                head.digest,
            );
            keys.push((key, offset));
        }
        offset = end;
    }
    Ok(Segment { file, len, keys })
}
