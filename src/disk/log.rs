//! The segment files: appended to in order, reclaimed whole, oldest first.
//!
//! A segment is a file `NNNNNNNNNNNNNNNN.seg` (its id, 16 lowercase hex
//! digits) in the tier's directory. Records are only ever appended to the
//! newest one, the *active* segment; when it would pass the segment size a
//! new one is started. When the next record would take the tier past its
//! budget, the oldest segment is deleted, with every record in it. So the
//! disk tier evicts first-in, first-out at the grain of a segment, by the
//! time a tensor was first written to disk: a tensor promoted back to RAM
//! keeps its record, and RAM evicting it again writes nothing.
//!
//! # Budget
//! A segment is counted as the file system allocates it: its length
//! rounded up to whole 4 KiB blocks. The sum over all segments never
//! passes the budget after any write: room is made before the record is
//! written, and a segment whose file cannot be deleted stays counted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The file system's allocation unit assumed for the budget.
const BLOCK: u64 = 4096;

/// Segment ids stay below this, so that the next one never overflows.
const MAX_SEGMENT_ID: u64 = 1 << 62;

/// Where a record lives.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub(crate) segment: u64,
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
}

/// One segment file and the keys whose records start in it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: Arc<File>,
    pub(crate) len: u64,
    /// The keys of the tensor records in this segment, with their offsets.
    pub(crate) keys: Vec<(Arc<str>, u64)>,
}

/// The segments of one tier.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// Bytes allocated to all segments, in whole blocks (also those of
    /// segments whose files could not be deleted). Written only under the
    /// log's lock; read by stats without it.
    allocated: Arc<AtomicU64>,
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

/// The id of a segment's file name, if it is one (exactly as
/// [`segment_name`] writes it, and below [`MAX_SEGMENT_ID`]).
pub(crate) fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    let lowercase_hex = hex.len() == 16
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let id = u64::from_str_radix(hex, 16)
        .ok()
        .filter(|_| lowercase_hex)?;
    (id < MAX_SEGMENT_ID).then_some(id)
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
            allocated: Arc::new(AtomicU64::new(allocated)),
            budget,
            segment_size,
            next_id,
            active: None,
        }
    }

    /// Bytes allocated to segments now.
    pub(crate) fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// The counter behind [`allocated`](Log::allocated), for readers that
    /// must not wait for the log's lock.
    pub(crate) fn allocated_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.allocated)
    }

    fn add(&self, bytes: u64) {
        self.allocated.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Deletes the oldest segments until the tier is within its budget
    /// (a restart with a smaller `--disk-size`).
    pub(crate) fn trim(&mut self, reclaimed: &mut dyn FnMut(u64, Segment)) {
        while self.allocated() > self.budget {
            let Some((&oldest, _)) = self.segments.first_key_value() else {
                break;
            };
            self.reclaim(oldest, reclaimed);
        }
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
        key: &Arc<str>,
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
            if self.allocated() + growth <= self.budget {
                break;
            }
            match self.segments.first_key_value() {
                Some((&oldest, _)) if oldest != active => self.reclaim(oldest, reclaimed),
                // Only the active segment is left: delete it, and start
                // anew if the record then fits (it may not, beside the
                // space of segments that could not be deleted).
                _ => {
                    std::fs::remove_file(self.dir.join(segment_name(active)))?;
                    if let Some(s) = self.segments.remove(&active) {
                        self.allocated.fetch_sub(blocks(s.len), Ordering::Relaxed);
                        reclaimed(active, s);
                    }
                    if self.allocated() + blocks(len) > self.budget {
                        return Ok(None);
                    }
                    return self.append(key, head, payload, reclaimed);
                }
            }
        }
        let offset = self.segments[&active].len;
        // Count the space before writing it: a write that fails half-way
        // still took it.
        self.add(blocks(offset + len) - blocks(offset));
        let s = self
            .segments
            .get_mut(&active)
            .ok_or_else(|| io::Error::other("the active segment is gone"))?;
        s.len += len;
        s.file.write_all_at(head, offset)?;
        s.file.write_all_at(payload, offset + head.len() as u64)?;
        s.keys.push((Arc::clone(key), offset));
        let file = Arc::clone(&s.file);
        Ok(Some(Loc {
            segment: active,
            file,
            offset,
        }))
    }

    /// Deletes segment `id` whole, forgetting its records. If its file
    /// cannot be deleted, its space stays counted against the budget.
    fn reclaim(&mut self, id: u64, reclaimed: &mut dyn FnMut(u64, Segment)) {
        let Some(s) = self.segments.remove(&id) else {
            return;
        };
        match std::fs::remove_file(self.dir.join(segment_name(id))) {
            // Readers holding the file keep reading it; the space returns
            // when the last one lets go.
            Ok(()) => {
                self.allocated.fetch_sub(blocks(s.len), Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(segment = id, error = %e, "could not delete a disk segment; its space stays counted");
            }
        }
        if self.active == Some(id) {
            self.active = None;
        }
        reclaimed(id, s);
    }

    /// Deletes segment `id` whole: a delete that could not void its record
    /// takes the segment with it, so that a restart cannot bring the
    /// tensor back.
    pub(crate) fn drop_segment(&mut self, id: u64, reclaimed: &mut dyn FnMut(u64, Segment)) {
        self.reclaim(id, reclaimed);
    }

    fn start_segment(&mut self) -> io::Result<u64> {
        let id = self.next_id;
        if id >= MAX_SEGMENT_ID {
            return Err(io::Error::other("segment ids are exhausted"));
        }
        self.next_id += 1;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(segment_name(id)))?;
        self.active = Some(id);
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                len: 0,
                keys: Vec::new(),
            },
        );
        Ok(id)
    }

    /// Flushes every segment, and the directory (so that new segments'
    /// names are durable too), to stable storage.
    pub(crate) fn sync(&self) -> io::Result<()> {
        for s in self.segments.values() {
            s.file.sync_data()?;
        }
        File::open(&self.dir)?.sync_all()
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
        assert_eq!(segment_id("00000000000000FF.seg"), None, "only as written");
        assert_eq!(segment_id("+0000000000000ff.seg"), None);
        assert_eq!(segment_id("ffffffffffffffff.seg"), None, "out of range");
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
                .append(&key, b"head", &payload, &mut |id, _| gone.push(id))
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
            .append(&Arc::from("big"), b"", &vec![0; 65 * 1024], &mut |_, _| ())
            .unwrap()
            .is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
