//! Rebuilding the index from the segment files a previous server left.
//!
//! Segments are replayed oldest first, records in the order they were
//! written, so a later record of a key replaces an earlier one and a delete
//! record voids what came before it. Only heads are read (with their
//! checksums); payloads are checked when read. A segment's replay stops at
//! the first head that is bad or whose record runs past the end of the
//! file: what a crash in the middle of a write leaves. New records always
//! go to a new segment, never after such a tail.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::index::Index;
use super::log::{segment_id, Loc, Segment};
use super::record::{decode, BadHead, Kind, MAX_HEAD};

/// What recovery found.
pub(crate) struct Recovered {
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// Torn or corrupt records (each ends its segment's replay).
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
    let mut buf = vec![0; MAX_HEAD];
    for id in ids {
        let path = dir.join(super::log::segment_name(id));
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(&path)?);
        let len = file.metadata()?.len();
        let map = super::log::map(&file, len);
        let mut keys = Vec::new();
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(MAX_HEAD as u64) as usize;
            file.read_exact_at(&mut buf[..n], offset)?;
            let head = match decode(&buf[..n]) {
                Ok(head) => head,
                Err(BadHead::Short(_)) | Err(BadHead::Corrupt(_)) => {
                    tracing::warn!(segment = %path.display(), offset, "a torn or corrupt record ends this segment's replay");
                    corrupt += 1;
                    break;
                }
            };
            let end = offset + head.len as u64 + head.payload_len;
            if end > len {
                tracing::warn!(segment = %path.display(), offset, "a torn record ends this segment's replay");
                corrupt += 1;
                break;
            }
            let key: Arc<str> = Arc::from(head.key);
            match head.kind {
                Kind::Tensor => {
                    let loc = Loc {
                        segment: id,
                        file: Arc::clone(&file),
                        map: map.clone(),
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
                Kind::Delete => index.remove(&key),
            }
            offset = end;
        }
        segments.insert(id, Segment { file, map, len, keys });
    }
    Ok(Recovered { segments, corrupt })
}
