//! The ledger's own append-only segment files: the source of truth.
//!
//! Each segment file `seg-<first index, 20 digits>.tzl` holds frames
//! `u32 BE leaf length || leaf bytes || 32-byte leaf hash`. A group of frames is written with one
//! `write` and made durable with one `fdatasync` before any receipt for it is sent.
//!
//! On open every frame is checked: its hash, its index (consecutive) and its `prev_leaf_hash`
//! (the chain). Damage at the end of the last segment that can only be an unfinished write — a
//! frame cut short by the end of the file, or a run of zero bytes to the end of the file (space
//! allocated, data never written) — is a torn tail: never acknowledged, so it is cut. Anything
//! else is data loss, reported with the segment, offset and index, never skipped.

use super::StoreError;
pub use crate::codec::FRAME_OVERHEAD_U64 as FRAME_OVERHEAD;
use crate::codec::{check_frame, frame_into, leaf_hash, FrameError};
use crate::merkle::Hash;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The writer closes a group once its records pass this many bytes; one job (at most a
/// `SubmitBatch` of bounded size) may take it past, by at most `MAX_JOB_BYTES`.
pub const MAX_GROUP_BYTES: u64 = 8 << 20;
/// Largest single job the writer accepts into a group (the gRPC message limit).
pub const MAX_JOB_BYTES: u64 = 64 << 20;
/// A damaged region at the end of the log larger than this cannot be one unfinished group
/// write, so it is data loss, not a torn tail. (A group is at most `MAX_GROUP_BYTES` plus one
/// job, and a job's frames exceed its message size by < 1 KiB per record; 256 MiB leaves a wide
/// margin over that 8 + 64 + 10 MiB.)
pub const MAX_TORN_BYTES: u64 = 256 << 20;

/// Read handles of segment files, by first index.
type OpenFiles = Vec<(u64, Arc<File>)>;

/// Where an entry's frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    /// First index of the segment (its file name).
    pub segment: u64,
    /// Byte offset of the frame in the segment.
    pub offset: u64,
    /// Length of the leaf bytes.
    pub len: u32,
}

/// An entry found while scanning.
pub struct Scanned<'a> {
    pub index: u64,
    pub leaf: &'a [u8],
    pub hash: Hash,
    pub location: Location,
}

/// The point a scan starts from: the first entry not yet known, and the hash before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Number of entries before this point.
    pub entries: u64,
    /// Leaf hash of entry `entries - 1` (zeros when `entries` is 0).
    pub last_hash: Hash,
    /// Segment and offset where entry `entries` begins.
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    pub const START: Position = Position {
        entries: 0,
        last_hash: [0; 32],
        segment: 0,
        offset: 0,
    };
}

/// What opening the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of torn tail cut from the last segment.
    pub torn_bytes_cut: u64,
    /// Entries scanned (from the start position on).
    pub scanned: u64,
}

/// The append-only log.
pub struct SegmentLog {
    dir: PathBuf,
    max_segment_bytes: u64,
    /// First index of each segment, ascending; the last is open for appends.
    segments: Vec<u64>,
    active: Arc<File>,
    active_len: u64,
    end: Position,
    readers: Arc<RwLock<OpenFiles>>,
}

fn seg_name(first: u64) -> String {
    format!("seg-{first:020}.tzl")
}

fn io(op: &'static str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| io("read dir", dir, e))? {
        let ent = ent.map_err(|e| io("read dir", dir, e))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".tzl"))
        {
            let first = num.parse::<u64>().map_err(|_| StoreError::DataLoss {
                what: format!("segment file name `{name}` is not seg-<20 digits>.tzl"),
            })?;
            out.push(first);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync dir", dir, e))
}

/// The bytes of `path` from `base` to its end, and the file's length (a `base` at or past the
/// end reads nothing).
fn read_after(path: &Path, base: u64) -> Result<(Vec<u8>, u64), StoreError> {
    let f = File::open(path).map_err(|e| io("open", path, e))?;
    let len = f.metadata().map_err(|e| io("stat", path, e))?.len();
    let mut data = vec![0u8; len.saturating_sub(base) as usize];
    f.read_exact_at(&mut data, base)
        .map_err(|e| io("read", path, e))?;
    Ok((data, len))
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`, checks every frame after `from`, calls `visit` for
    /// each, cuts a torn tail, and refuses damage with `DataLoss`.
    pub fn open(
        dir: &Path,
        max_segment_bytes: u64,
        from: Position,
        mut visit: impl FnMut(Scanned<'_>) -> Result<(), StoreError>,
    ) -> Result<(SegmentLog, Recovery), StoreError> {
        fs::create_dir_all(dir).map_err(|e| io("create dir", dir, e))?;
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            if from.entries != 0 {
                return Err(StoreError::DataLoss {
                    what: format!(
                        "no segment files, but {} entries were recorded as durable",
                        from.entries
                    ),
                });
            }
            let path = dir.join(seg_name(0));
            File::create(&path).map_err(|e| io("create", &path, e))?;
            sync_dir(dir)?;
            segments.push(0);
        }
        if segments[0] != 0 {
            return Err(StoreError::DataLoss {
                what: format!("the first segment starts at index {}, not 0", segments[0]),
            });
        }
        let start_seg = segments
            .iter()
            .position(|&s| s == from.segment)
            .ok_or_else(|| StoreError::DataLoss {
                what: format!("segment {} recorded as durable is missing", from.segment),
            })?;
        let mut pos = from;
        let mut torn_bytes_cut = 0;
        let mut scanned = 0;
        for (i, &first) in segments.iter().enumerate().skip(start_seg) {
            let last = i + 1 == segments.len();
            let path = dir.join(seg_name(first));
            if i > start_seg && first != pos.entries {
                return Err(StoreError::DataLoss {
                    what: format!(
                        "segment {} starts at index {first}, but the previous segments end at {}",
                        path.display(),
                        pos.entries
                    ),
                });
            }
            // Only the part after `from` is read: the part before it is the scrub's.
            let base = if first == from.segment {
                from.offset
            } else {
                0
            };
            let (data, file_len) = read_after(&path, base)?;
            if base > file_len {
                return Err(StoreError::DataLoss {
                    what: format!(
                        "{} is {file_len} bytes, shorter than its durable length {base}",
                        path.display(),
                    ),
                });
            }
            // `off` is relative to `base`.
            let mut off = 0usize;
            while off < data.len() {
                let at = base + off as u64;
                match check_frame(&data, off, pos.entries, &pos.last_hash) {
                    Ok((leaf, hash)) => {
                        let len = leaf.len();
                        visit(Scanned {
                            index: pos.entries,
                            leaf,
                            hash,
                            location: Location {
                                segment: first,
                                offset: at,
                                len: len as u32,
                            },
                        })?;
                        off += len + FRAME_OVERHEAD as usize;
                        pos.entries += 1;
                        pos.last_hash = hash;
                        scanned += 1;
                    }
                    Err(_) if last && (data.len() - off) as u64 > MAX_TORN_BYTES => {
                        return Err(StoreError::DataLoss {
                            what: format!(
                                "{} at offset {at} (entry {}): {} damaged bytes to the end, more than any unacknowledged group",
                                path.display(),
                                pos.entries,
                                data.len() - off
                            ),
                        })
                    }
                    Err(FrameError::Incomplete) if last => {
                        torn_bytes_cut = (data.len() - off) as u64;
                        break;
                    }
                    Err(FrameError::Damaged(_)) if last && data[off..].iter().all(|&b| b == 0) => {
                        torn_bytes_cut = (data.len() - off) as u64;
                        break;
                    }
                    Err(e) => {
                        return Err(StoreError::DataLoss {
                            what: format!(
                                "{} at offset {at} (entry {}): {}",
                                path.display(),
                                pos.entries,
                                e.describe()
                            ),
                        })
                    }
                }
            }
            let end = base + off as u64;
            pos.segment = first;
            pos.offset = end;
            if last && torn_bytes_cut > 0 {
                // Keep what is cut, for whoever investigates (it was never acknowledged).
                let kept = dir.join(format!("torn-{first:020}-{end}.bin"));
                fs::write(&kept, &data[off..]).map_err(|e| io("write", &kept, e))?;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io("open", &path, e))?;
                f.set_len(end).map_err(|e| io("truncate", &path, e))?;
                f.sync_all().map_err(|e| io("fsync", &path, e))?;
                tracing::warn!(segment = %path.display(), offset = end, bytes = torn_bytes_cut, "cut torn tail");
            }
        }
        let active_first = *segments.last().unwrap_or(&0);
        let path = dir.join(seg_name(active_first));
        let active = Arc::new(
            OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io("open", &path, e))?,
        );
        let active_len = pos.offset;
        let log = SegmentLog {
            dir: dir.to_path_buf(),
            max_segment_bytes,
            segments,
            active,
            active_len,
            end: pos,
            readers: Arc::new(RwLock::new(Vec::new())),
        };
        Ok((
            log,
            Recovery {
                torn_bytes_cut,
                scanned,
            },
        ))
    }

    /// Re-reads and checks every frame before `upto` (the part `open` trusted to the views):
    /// each frame's hash, index and chain link, that `check(index, hash, location)` accepts it
    /// (the tree the views hold; its refusal says why), and that the last one ends at `upto`. Reads each
    /// segment in chunks of [`SCRUB_CHUNK`] bytes, so its memory does not grow with the
    /// segment's size. Returns how many frames it checked.
    pub fn scrub(
        dir: &Path,
        upto: &Position,
        check: impl FnMut(u64, &Hash, Location) -> Result<(), String>,
    ) -> Result<u64, StoreError> {
        Self::scrub_in_chunks(dir, upto, SCRUB_CHUNK, check)
    }

    fn scrub_in_chunks(
        dir: &Path,
        upto: &Position,
        chunk: usize,
        mut check: impl FnMut(u64, &Hash, Location) -> Result<(), String>,
    ) -> Result<u64, StoreError> {
        let segments = list_segments(dir)?;
        let mut index = 0u64;
        let mut prev: Hash = [0; 32];
        let mut buf: Vec<u8> = Vec::new();
        for (i, &first) in segments.iter().enumerate() {
            if index >= upto.entries {
                break;
            }
            let path = dir.join(seg_name(first));
            if first != index {
                return Err(StoreError::DataLoss {
                    what: format!(
                        "{} starts at index {first}, but the previous segments end at {index}",
                        path.display()
                    ),
                });
            }
            let file = File::open(&path).map_err(|e| io("open", &path, e))?;
            let len = file.metadata().map_err(|e| io("stat", &path, e))?.len();
            let end = if first == upto.segment {
                upto.offset
            } else if i + 1 < segments.len() {
                len
            } else {
                return Err(StoreError::DataLoss {
                    what: format!("segment {} recorded as durable is missing", upto.segment),
                });
            };
            if end > len {
                return Err(StoreError::DataLoss {
                    what: format!(
                        "{} is {len} bytes, shorter than its durable length {end}",
                        path.display()
                    ),
                });
            }
            // `buf` holds the file's bytes from `base`; frames are checked from `base + off`.
            buf.clear();
            let (mut base, mut off) = (0u64, 0usize);
            while base + (off as u64) < end && index < upto.entries {
                let at = base + off as u64;
                let damaged = |why: String| StoreError::DataLoss {
                    what: format!("{} at offset {at} (entry {index}): {why}", path.display()),
                };
                let read_to = base + buf.len() as u64;
                match check_frame(&buf, off, index, &prev) {
                    Ok((leaf, hash)) => {
                        let location = Location {
                            segment: first,
                            offset: at,
                            len: leaf.len() as u32,
                        };
                        check(index, &hash, location).map_err(damaged)?;
                        off += leaf.len() + FRAME_OVERHEAD as usize;
                        prev = hash;
                        index += 1;
                    }
                    // The frame runs past what is read: read on (a frame is far smaller than
                    // a chunk), keeping its start.
                    Err(FrameError::Incomplete) if read_to < end => {
                        buf.drain(..off);
                        base += off as u64;
                        off = 0;
                        let more = (end - read_to).min(chunk as u64) as usize;
                        let from = buf.len();
                        buf.resize(from + more, 0);
                        file.read_exact_at(&mut buf[from..], read_to)
                            .map_err(|e| io("read", &path, e))?;
                    }
                    Err(e) => return Err(damaged(e.describe())),
                }
            }
        }
        if index != upto.entries || (upto.entries > 0 && prev != upto.last_hash) {
            return Err(StoreError::DataLoss {
                what: format!(
                    "the log holds {index} checked entries where the views recorded {}",
                    upto.entries
                ),
            });
        }
        Ok(index)
    }

    /// The position after the last entry.
    pub fn end(&self) -> Position {
        self.end
    }

    /// Appends framed leaves (each with its hash) and fdatasyncs before returning their
    /// locations. On error nothing of the group is acknowledged; the caller reloads from disk
    /// (a part written to an earlier segment before a roll may survive, valid but unacknowledged,
    /// and a retry of it then returns its receipt).
    pub fn append(&mut self, leaves: &[(&[u8], Hash)]) -> Result<Vec<Location>, StoreError> {
        let locations = self.write(leaves)?;
        self.sync_handle().sync()?;
        Ok(locations)
    }

    /// Writes framed leaves (each with its hash) with one `write`, without making them
    /// durable: that takes a [`SyncHandle::sync`] of the handle taken after the write. When the
    /// active segment fills, its part is written and synced before the next segment is created
    /// (only the last segment may end in a torn tail). On error the part written to the active
    /// segment is cut off again; a part that reached an earlier segment before a roll stays and
    /// `end` says so, so the caller can tell a group that partly reached the log.
    pub fn write(&mut self, leaves: &[(&[u8], Hash)]) -> Result<Vec<Location>, StoreError> {
        let mut locations = Vec::with_capacity(leaves.len());
        let bytes: usize = leaves
            .iter()
            .map(|(l, _)| l.len() + FRAME_OVERHEAD as usize)
            .sum();
        let mut buf = Vec::with_capacity(bytes.min(MAX_GROUP_BYTES as usize));
        let mut pos = self.end;
        for (leaf, hash) in leaves {
            let frame_len = leaf.len() as u64 + FRAME_OVERHEAD;
            let cur = self.active_len + buf.len() as u64;
            if cur > 0 && cur + frame_len > self.max_segment_bytes {
                self.write_active(&buf)?;
                self.sync_handle().sync()?;
                buf.clear();
                // That part is durable: `end` must say so even if what follows fails, so the
                // caller can tell a group that partly reached the log.
                pos.offset = self.active_len;
                self.end = pos;
                self.roll(pos.entries)?;
                pos.segment = pos.entries;
                pos.offset = 0;
                self.end = pos;
            }
            locations.push(Location {
                segment: pos.segment,
                offset: self.active_len + buf.len() as u64,
                len: leaf.len() as u32,
            });
            frame_into(&mut buf, leaf, hash);
            pos.entries += 1;
            pos.last_hash = *hash;
        }
        self.write_active(&buf)?;
        pos.offset = self.active_len;
        self.end = pos;
        Ok(locations)
    }

    /// What makes everything written to the active segment so far durable.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            file: self.active.clone(),
            path: self.dir.join(seg_name(*self.segments.last().unwrap_or(&0))),
        }
    }

    fn write_active(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&*self.active).write_all(buf) {
            // Cut back whatever part of the group reached the file: it is not acknowledged.
            let _ = self.active.set_len(self.active_len);
            let path = self.dir.join(seg_name(*self.segments.last().unwrap_or(&0)));
            return Err(io("append", &path, e));
        }
        self.active_len += buf.len() as u64;
        Ok(())
    }

    fn roll(&mut self, first: u64) -> Result<(), StoreError> {
        let path = self.dir.join(seg_name(first));
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("create", &path, e))?;
        sync_dir(&self.dir)?;
        self.segments.push(first);
        self.active = Arc::new(f);
        self.active_len = 0;
        Ok(())
    }

    /// A handle that reads frames concurrently with appends.
    pub fn reader(&self) -> SegmentReader {
        SegmentReader {
            dir: self.dir.clone(),
            files: self.readers.clone(),
        }
    }
}

/// Makes what was written to one segment file durable (`fdatasync`); cheap to clone, usable
/// from another thread than the one writing.
/// How much of a segment the scrub reads at a time.
pub const SCRUB_CHUNK: usize = 4 << 20;

#[derive(Clone)]
pub struct SyncHandle {
    file: Arc<File>,
    path: PathBuf,
}

impl SyncHandle {
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| io("fdatasync", &self.path, e))
    }

    /// Whether both handles sync the same file.
    pub fn same_file(&self, other: &SyncHandle) -> bool {
        Arc::ptr_eq(&self.file, &other.file)
    }
}

/// Reads leaves by location; cheap to clone and share across threads.
#[derive(Clone)]
pub struct SegmentReader {
    dir: PathBuf,
    files: Arc<RwLock<OpenFiles>>,
}

impl SegmentReader {
    /// A reader of the segment files in `dir` (for a log being opened, whose frames before
    /// the one at hand are already checked).
    pub fn new(dir: &Path) -> SegmentReader {
        SegmentReader {
            dir: dir.to_path_buf(),
            files: Arc::default(),
        }
    }

    fn file(&self, segment: u64) -> Result<Arc<File>, StoreError> {
        if let Ok(files) = self.files.read() {
            if let Some((_, f)) = files.iter().find(|(s, _)| *s == segment) {
                return Ok(f.clone());
            }
        }
        let path = self.dir.join(seg_name(segment));
        let f = Arc::new(File::open(&path).map_err(|e| io("open", &path, e))?);
        if let Ok(mut files) = self.files.write() {
            files.push((segment, f.clone()));
        }
        Ok(f)
    }

    /// Reads the leaf at `loc`, checking its frame hash.
    pub fn read(&self, loc: Location) -> Result<(Vec<u8>, Hash), StoreError> {
        let f = self.file(loc.segment)?;
        let mut buf = vec![0u8; loc.len as usize + FRAME_OVERHEAD as usize];
        f.read_exact_at(&mut buf, loc.offset)
            .map_err(|e| StoreError::Io {
                op: "read",
                path: self.dir.join(seg_name(loc.segment)).display().to_string(),
                reason: e.to_string(),
            })?;
        let stored_len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let leaf = buf[4..4 + loc.len as usize].to_vec();
        let mut stored = [0u8; 32];
        stored.copy_from_slice(&buf[4 + loc.len as usize..]);
        if stored_len != loc.len || leaf_hash(&leaf) != stored {
            return Err(StoreError::DataLoss {
                what: format!(
                    "segment {} offset {}: frame does not match its hash",
                    loc.segment, loc.offset
                ),
            });
        }
        Ok((leaf, stored))
    }

    /// The locations and stored hashes of the `count` frames from entry `first` on, which
    /// starts at `start`; `end`, if known, is where the frame after them starts. A segment
    /// that ends on the way is followed by the next one (named by the next entry's index).
    /// Frame hashes are returned as stored, not recomputed: the caller checks them together
    /// (against a root).
    pub fn read_frames(
        &self,
        first: u64,
        start: Location,
        end: Option<Location>,
        count: usize,
    ) -> Result<Vec<(Location, Hash)>, StoreError> {
        let mut out: Vec<(Location, Hash)> = Vec::with_capacity(count);
        let (mut segment, mut offset) = (start.segment, start.offset);
        let path = |segment: u64| self.dir.join(seg_name(segment)).display().to_string();
        let damaged = |segment: u64, what: String| StoreError::DataLoss {
            what: format!("segment {}: {what}", path(segment)),
        };
        while out.len() < count {
            let f = self.file(segment)?;
            let upto = match end {
                Some(e) if e.segment == segment => e.offset,
                _ => f
                    .metadata()
                    .map_err(|e| io("stat", &self.dir.join(seg_name(segment)), e))?
                    .len(),
            };
            if upto < offset {
                return Err(damaged(segment, format!("no frame at offset {offset}")));
            }
            let mut buf = vec![0u8; (upto - offset) as usize];
            f.read_exact_at(&mut buf, offset)
                .map_err(|e| io("read", &self.dir.join(seg_name(segment)), e))?;
            let mut at = 0usize;
            while out.len() < count && at < buf.len() {
                let Some(len) = buf
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                else {
                    return Err(damaged(
                        segment,
                        format!("torn frame at {}", offset + at as u64),
                    ));
                };
                let hash_at = at + 4 + len as usize;
                let Some(hash) = buf.get(hash_at..hash_at + 32) else {
                    return Err(damaged(
                        segment,
                        format!("torn frame at {}", offset + at as u64),
                    ));
                };
                let mut stored = [0u8; 32];
                stored.copy_from_slice(hash);
                out.push((
                    Location {
                        segment,
                        offset: offset + at as u64,
                        len,
                    },
                    stored,
                ));
                at = hash_at + 32;
            }
            if out.len() < count {
                // This segment is done: the next one is named by the next entry's index.
                let next = first + out.len() as u64;
                if next <= segment {
                    return Err(damaged(segment, format!("entry {next} is not after it")));
                }
                segment = next;
                offset = 0;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Leaf;

    /// A log of `n` real leaves (bodies of varying length, chained) in segments of at most
    /// `segment_bytes`; their hashes.
    fn log(dir: &Path, n: u64, segment_bytes: u64) -> (Position, Vec<Hash>, Vec<Location>) {
        let (mut log, _) =
            SegmentLog::open(dir, segment_bytes, Position::START, |_| Ok(())).unwrap();
        let (mut hashes, mut locations) = (Vec::new(), Vec::new());
        let mut prev = [0u8; 32];
        for i in 0..n {
            let bytes = Leaf {
                index: i,
                integrated_time_ms: 1_000 + i,
                prev_leaf_hash: prev,
                body: vec![i as u8; 20 + (i % 11) as usize * 17],
                signature: [7; 64],
                cosignatures: vec![],
            }
            .encode();
            prev = leaf_hash(&bytes);
            locations.extend(log.append(&[(&bytes, prev)]).unwrap());
            hashes.push(prev);
        }
        (log.end(), hashes, locations)
    }

    #[test]
    fn the_scrub_reads_in_chunks_of_any_size_and_sees_every_frame_once() {
        let dir = tempfile::tempdir().unwrap();
        let (end, hashes, locations) = log(dir.path(), 300, 4_000);
        assert!(list_segments(dir.path()).unwrap().len() > 3);
        // Chunks smaller than a frame, the size of a few, and larger than a segment.
        for chunk in [1, 37, 500, 4_096, SCRUB_CHUNK] {
            let mut seen = Vec::new();
            let mut at = Vec::new();
            let n = SegmentLog::scrub_in_chunks(dir.path(), &end, chunk, |i, h, l| {
                seen.push((i, *h));
                at.push(l);
                Ok(())
            })
            .unwrap();
            assert_eq!(n, 300, "chunk {chunk}");
            let expected: Vec<(u64, Hash)> = (0..).zip(hashes.iter().copied()).collect();
            assert_eq!(seen, expected, "chunk {chunk}");
            assert_eq!(at, locations, "chunk {chunk}");
        }
    }

    #[test]
    fn the_scrub_names_the_entry_a_flipped_byte_or_a_refusal_is_at() {
        let dir = tempfile::tempdir().unwrap();
        let (end, _, _) = log(dir.path(), 120, 1 << 20);
        // Refused by the caller: its reason, with the entry.
        let e = SegmentLog::scrub_in_chunks(dir.path(), &end, 64, |i, _, _| {
            if i == 77 {
                Err("not the views' hash".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("(entry 77): not the views' hash"),
            "{e}"
        );
        // A flipped byte in the middle of the segment, found with every chunk size.
        let seg = dir.path().join(seg_name(0));
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x20;
        std::fs::write(&seg, &bytes).unwrap();
        for chunk in [1, 64, 4_096, SCRUB_CHUNK] {
            let e =
                SegmentLog::scrub_in_chunks(dir.path(), &end, chunk, |_, _, _| Ok(())).unwrap_err();
            assert!(
                matches!(&e, StoreError::DataLoss { what } if what.contains("(entry ")),
                "chunk {chunk}: {e}"
            );
        }
        // A log cut short of the position the views recorded.
        bytes[at] ^= 0x20;
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&seg, &bytes).unwrap();
        let e = SegmentLog::scrub_in_chunks(dir.path(), &end, 4_096, |_, _, _| Ok(())).unwrap_err();
        assert!(matches!(e, StoreError::DataLoss { .. }), "{e}");
    }

    /// The position just before entry `i`, as the views would record it.
    fn before(i: u64, hashes: &[Hash], locations: &[Location]) -> Position {
        Position {
            entries: i,
            last_hash: if i == 0 {
                [0; 32]
            } else {
                hashes[i as usize - 1]
            },
            segment: locations[i as usize].segment,
            offset: locations[i as usize].offset,
        }
    }

    #[test]
    fn open_from_a_position_scans_only_what_follows_it_and_cuts_a_torn_tail_where_it_is() {
        // 11 entries per segment: the last one holds 6.
        const N: u64 = 193;
        let dir = tempfile::tempdir().unwrap();
        let (end, hashes, locations) = log(dir.path(), N, 3_000);
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() > 3);
        // From the middle of a segment before the last, and from the middle of the last one.
        let in_last = (*segments.last().unwrap() + N) / 2;
        assert!(
            in_last > *segments.last().unwrap() && in_last + 1 < N,
            "{segments:?}"
        );
        for from in [37, in_last] {
            let mut seen = Vec::new();
            let (log, rec) =
                SegmentLog::open(dir.path(), 3_000, before(from, &hashes, &locations), |s| {
                    seen.push((s.index, s.hash, s.location));
                    Ok(())
                })
                .unwrap();
            let expected: Vec<(u64, Hash, Location)> = (from..N)
                .map(|i| (i, hashes[i as usize], locations[i as usize]))
                .collect();
            assert_eq!(seen, expected, "from {from}");
            assert_eq!(rec.scanned, N - from);
            assert_eq!(log.end(), end, "from {from}");
        }
        // A torn group after the end, opened from inside the last segment: cut at its offset,
        // and the same entries follow.
        let last = dir.path().join(seg_name(*segments.last().unwrap()));
        let len = std::fs::metadata(&last).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&[0, 0, 1, 0, 9, 9, 9]).unwrap();
        drop(f);
        let (log, rec) = SegmentLog::open(
            dir.path(),
            3_000,
            before(in_last, &hashes, &locations),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!((rec.torn_bytes_cut, log.end()), (7, end));
        assert_eq!(std::fs::metadata(&last).unwrap().len(), len);
        assert!(dir
            .path()
            .join(format!("torn-{:020}-{len}.bin", segments.last().unwrap()))
            .exists());
        // Damage after the position names the absolute offset; damage before it is the scrub's.
        let mut bytes = std::fs::read(&last).unwrap();
        let at = locations[in_last as usize + 1].offset;
        bytes[at as usize + 8] ^= 1;
        std::fs::write(&last, &bytes).unwrap();
        let e = SegmentLog::open(
            dir.path(),
            3_000,
            before(in_last, &hashes, &locations),
            |_| Ok(()),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .contains(&format!("at offset {at} (entry {})", in_last + 1)),
            "{e}"
        );
        bytes[at as usize + 8] ^= 1;
        std::fs::write(&last, &bytes).unwrap();
        // A last segment shorter than the position the views recorded.
        let mut past = before(in_last, &hashes, &locations);
        past.offset = len + 1;
        let e = SegmentLog::open(dir.path(), 3_000, past, |_| Ok(()))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("shorter than its durable length"),
            "{e}"
        );
    }
}
