//! The segment files: appended to in order, reclaimed whole, oldest first.
//!
//! A segment is a file `NNNNNNNNNNNNNNNN.seg` (its id, hex) in the tier's
//! directory. Records are only ever appended to the newest one, the
//! *active* segment; when it would pass the segment size a new one is
//! started. When the next record would take the tier past its budget, the
//! oldest segment is deleted, with every record in it. So the disk tier
//! evicts first-in, first-out at the grain of a segment: a tensor read from
//! disk often enough is promoted to RAM, and written again (to the newest
//! segment) when RAM evicts it, which keeps what is read in the log's young
//! end.
//!
//! # Budget
//! A segment is counted as the file system allocates it: its length
//! rounded up to whole 4 KiB blocks. The sum over all segments never
//! passes the budget, before or after any write: room is made before the
//! record is written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

/// The file system's allocation unit assumed for the budget.
const BLOCK: u64 = 4096;

/// Where a record lives.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub(crate) segment: u64,
    pub(crate) file: Arc<File>,
    /// A read-only map of the segment, if it has one.
    pub(crate) map: Option<Arc<Mmap>>,
    pub(crate) offset: u64,
}

/// One segment file and the keys whose records start in it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: Arc<File>,
    /// The segment mapped read-only: records are served from it without a
    /// copy. A new segment is mapped at the segment size before anything is
    /// written; records are read only once written, so no page past the
    /// end of the file is ever touched.
    pub(crate) map: Option<Arc<Mmap>>,
    pub(crate) len: u64,
    /// The keys of the tensor records in this segment, with their offsets.
    pub(crate) keys: Vec<(Arc<str>, u64)>,
}

/// The segments of one tier.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// Bytes allocated to all segments, in whole blocks.
    allocated: u64,
    budget: u64,
    segment_size: u64,
    next_id: u64,
    /// The segment appended to; `None` until the first append, which
    /// starts a new one (never appending after a torn tail recovery left).
    active: Option<u64>,
}

/// The bytes a file of `len` bytes occupies.
pub(crate) fn blocks(len: u64) -> u64 {
    len.div_ceil(BLOCK) * BLOCK
}

/// The name of segment `id`.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// The id of a segment's file name, if it is one.
pub(crate) fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

impl Log {
    /// A log over segments already found in `dir` (by recovery), writing
    /// new ones after the last of them.
    pub(crate) fn new(
        dir: &Path,
        budget: u64,
        segment_size: u64,
        segments: BTreeMap<u64, Segment>,
    ) -> Log {
        let allocated = segments.values().map(|s| blocks(s.len)).sum();
        let next_id = segments.keys().next_back().map_or(0, |id| id + 1);
        Log {
            dir: dir.to_owned(),
            segments,
            allocated,
            budget,
            segment_size,
            next_id,
            active: None,
        }
    }

    /// Bytes allocated to segments now.
    pub(crate) fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Appends a record of `head` then `payload`; first deletes the oldest
    /// segments as needed to stay within the budget, handing each one's
    /// keys to `reclaimed`. `Ok(None)` if the record cannot fit even in an
    /// empty tier.
    ///
    /// After an error the active segment's tail may hold part of a record:
    /// the caller stops writing (recovery skips the torn record).
    pub(crate) fn append(
        &mut self,
        key: Option<&Arc<str>>,
        head: &[u8],
        payload: &[u8],
        reclaimed: &mut dyn FnMut(u64, Segment),
    ) -> io::Result<Option<Loc>> {
        let len = (head.len() + payload.len()) as u64;
        if blocks(len) > self.budget {
            return Ok(None);
        }
        let active = match self
            .active
            .and_then(|id| Some((id, self.segments.get(&id)?)))
        {
            Some((id, s)) if s.len == 0 || s.len + len <= self.segment_size => id,
            _ => self.start_segment()?,
        };
        loop {
            let s = &self.segments[&active];
            let growth = blocks(s.len + len) - blocks(s.len);
            if self.allocated + growth <= self.budget {
                break;
            }
            match self.segments.first_key_value() {
                Some((&oldest, _)) if oldest != active => self.reclaim(oldest, reclaimed),
                // Only the active segment is left: start afresh in it.
                _ => {
                    let s = self.segments.remove(&active).expect("the active segment");
                    self.allocated -= blocks(s.len);
                    std::fs::remove_file(self.dir.join(segment_name(active)))?;
                    reclaimed(active, s);
                    return self.append(key, head, payload, reclaimed);
                }
            }
        }
        let s = self.segments.get_mut(&active).expect("the active segment");
        let offset = s.len;
        // Count the space before writing it: a write that fails half-way
        // still took it.
        let grown = blocks(offset + len) - blocks(offset);
        self.allocated += grown;
        s.len += len;
        s.file.write_all_at(head, offset)?;
        s.file.write_all_at(payload, offset + head.len() as u64)?;
        if let Some(key) = key {
            s.keys.push((Arc::clone(key), offset));
        }
        Ok(Some(Loc {
            segment: active,
            file: Arc::clone(&s.file),
            map: s.map.clone(),
            offset,
        }))
    }

    /// Deletes the oldest segment (tensors first, to keep the newest).
    fn reclaim(&mut self, id: u64, reclaimed: &mut dyn FnMut(u64, Segment)) {
        if let Some(s) = self.segments.remove(&id) {
            self.allocated -= blocks(s.len);
            // Readers holding the file keep reading it; the space returns
            // when the last one lets go.
            if let Err(e) = std::fs::remove_file(self.dir.join(segment_name(id))) {
                tracing::warn!(segment = id, error = %e, "could not delete a disk segment");
            }
            reclaimed(id, s);
        }
    }

    /// Deletes segment `id` whole (a delete that could not be recorded
    /// takes the segment holding the deleted tensor with it).
    pub(crate) fn drop_segment(&mut self, id: u64, reclaimed: &mut dyn FnMut(u64, Segment)) {
        self.reclaim(id, reclaimed);
    }

    fn start_segment(&mut self) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(segment_name(id)))?;
        let map = map(&file, self.segment_size);
        self.active = Some(id);
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                map,
                len: 0,
                keys: Vec::new(),
            },
        );
        Ok(id)
    }

    /// Flushes every segment to stable storage.
    pub(crate) fn sync(&self) -> io::Result<()> {
        for s in self.segments.values() {
            s.file.sync_data()?;
        }
        Ok(())
    }
}

/// Maps the first `len` bytes of a segment read-only; `None` (reads then
/// copy with `pread`) if that fails or `len` is 0.
pub(crate) fn map(file: &File, len: u64) -> Option<Arc<Mmap>> {
    let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
    // SAFETY: the map is read-only, and the bytes behind it never change
    // while it exists: segments are only appended to, by this process,
    // records are never rewritten, and no segment is ever truncated (a
    // reclaimed one is unlinked, which leaves existing maps intact). The
    // directory's LOCK keeps other servers out. Pages past the end of the
    // file (a new segment is mapped at its full size) are never touched:
    // only written records are read.
    let mapped = unsafe { MmapOptions::new().len(len).map(file) };
    match mapped {
        Ok(map) => Some(Arc::new(map)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot map a disk segment; reading it with copies");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(255), "00000000000000ff.seg");
        assert_eq!(segment_id("00000000000000ff.seg"), Some(255));
        assert_eq!(segment_id("ff.seg"), None);
        assert_eq!(segment_id("LOCK"), None);
    }

    #[test]
    fn the_oldest_segments_go_first_and_the_budget_holds() {
        let dir = crate::disk::tests::scratch_dir("log-budget");
        let mut log = Log::new(&dir, 64 * 1024, 16 * 1024, BTreeMap::new());
        let mut gone = Vec::new();
        let payload = vec![7u8; 6000];
        for i in 0..40 {
            let key: Arc<str> = Arc::from(format!("k{i}"));
            let loc = log
                .append(Some(&key), b"head", &payload, &mut |id, _| gone.push(id))
                .unwrap()
                .unwrap();
            assert!(log.allocated() <= 64 * 1024, "budget passed at {i}");
            let mut back = vec![0; 6000];
            loc.file.read_exact_at(&mut back, loc.offset + 4).unwrap();
            assert_eq!(back, payload);
        }
        assert!(!gone.is_empty());
        assert!(
            gone.windows(2).all(|w| w[0] < w[1]),
            "oldest first: {gone:?}"
        );
        let on_disk: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| blocks(e.unwrap().metadata().unwrap().len()))
            .sum();
        assert_eq!(on_disk, log.allocated());
        assert!(log
            .append(None, b"", &vec![0; 65 * 1024], &mut |_, _| ())
            .unwrap()
            .is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
